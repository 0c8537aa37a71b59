"""Accounts, roles and tokens: what is stored, what a token may do, how it ends."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select, update

from tests.people import owner, person
from upstream import accounts
from upstream.access import ANONYMOUS, RULES, Actor, may
from upstream.db.schema import ApiToken, utcnow
from upstream.errors import Conflict, Forbidden, InvalidInput, Unauthorized
from upstream.hub import Hub


def test_a_token_is_random_shown_once_and_stored_hashed(hub: Hub) -> None:
    person(hub, "ana", "reporter")
    made = accounts.create_token(hub, owner(hub), "ana", note="laptop")
    secret = made["token"]
    assert secret.startswith("up_") and len(secret) == 3 + 43
    assert made["shown_as"] == f"up_…{secret[-4:]}" and made["scopes"] == ["read", "report"]
    with hub.session() as s:
        row = s.scalars(select(ApiToken)).one()
        stored = " ".join(str(v) for v in row.__dict__.values())
    assert secret not in stored and secret[3:-4] not in stored  # only a hash, last 4
    listed = accounts.list_tokens(hub, owner(hub))
    assert "token" not in listed[0] and listed[0]["note"] == "laptop"
    other = accounts.create_token(hub, owner(hub), "ana")["token"]
    assert other != secret
    actor = accounts.authenticate(hub, secret)
    assert (actor.name, actor.role, actor.scopes) == ("ana", "reporter", {"read", "report"})


def test_a_token_only_narrows_and_follows_its_users_role(hub: Hub) -> None:
    person(hub, "bo", "contributor")
    with pytest.raises(InvalidInput, match="scope 'review' is beyond what bo may do"):
        accounts.create_token(hub, owner(hub), "bo", ["review"])
    with pytest.raises(InvalidInput, match="scope 'fly': allowed read, report"):
        accounts.create_token(hub, owner(hub), "bo", ["fly"])
    narrow = accounts.create_token(hub, owner(hub), "bo", ["read"])["token"]
    bo = accounts.authenticate(hub, narrow)
    assert bo.has("read") and not bo.has("contribute")
    assert not may(bo, "contributions.open", "m")
    full = accounts.create_token(hub, owner(hub), "bo")["token"]
    assert may(accounts.authenticate(hub, full), "contributions.open", "m")
    accounts.set_role(hub, owner(hub), "bo", "reporter")  # lowering the role lowers the token
    assert not may(accounts.authenticate(hub, full), "contributions.open", "m")
    # a user makes their own tokens, within what their token allows, never for others
    me = accounts.authenticate(hub, narrow)
    mine = accounts.create_token(hub, me, "bo")
    assert mine["scopes"] == ["read"]
    person(hub, "cy", "reporter")
    with pytest.raises(Forbidden):
        accounts.create_token(hub, me, "cy")


def test_expired_and_revoked_tokens_are_refused(hub: Hub) -> None:
    person(hub, "ana", "reporter")
    made = accounts.create_token(hub, owner(hub), "ana", expires=timedelta(hours=1))
    with hub.session() as s, s.begin():
        s.execute(update(ApiToken).values(expires_at=utcnow() - timedelta(seconds=1)))
    with pytest.raises(Unauthorized, match="has expired"):
        accounts.authenticate(hub, made["token"])
    live = accounts.create_token(hub, owner(hub), "ana", expires=None)
    assert live["expires_at"] is None
    accounts.authenticate(hub, live["token"])
    revoked = accounts.revoke_token(hub, owner(hub), live["id"])
    assert revoked["revoked"] is True
    with pytest.raises(Unauthorized, match="unknown or revoked"):
        accounts.authenticate(hub, live["token"])
    for bad in ("", "Bearer x", "up_" + "x" * 300, "up_nope"):
        with pytest.raises(Unauthorized):
            accounts.authenticate(hub, bad)
    for text in ("0h", "99999d", "soon", "3w"):
        with pytest.raises(InvalidInput, match="expiry"):
            accounts.parse_expiry(text)
    assert accounts.parse_expiry("30d") == timedelta(days=30)


def test_last_used_is_written_at_most_once_a_minute(hub: Hub) -> None:
    person(hub, "ana", "reporter")
    made = accounts.create_token(hub, owner(hub), "ana")
    assert made["last_used_at"] is None
    accounts.authenticate(hub, made["token"])
    first = accounts.list_tokens(hub, owner(hub), "ana")[0]["last_used_at"]
    accounts.authenticate(hub, made["token"])
    assert accounts.list_tokens(hub, owner(hub), "ana")[0]["last_used_at"] == first
    with hub.session() as s, s.begin():
        s.execute(update(ApiToken).values(last_used_at=utcnow() - timedelta(minutes=2)))
    accounts.authenticate(hub, made["token"])
    assert accounts.list_tokens(hub, owner(hub), "ana")[0]["last_used_at"] != first


def test_roles_on_one_model_and_the_owner(hub: Hub) -> None:
    boss = owner(hub)
    assert boss.role == "admin" and owner(hub).name == boss.name  # made once
    with pytest.raises(Conflict, match="stays an admin"):
        accounts.set_role(hub, boss, boss.name, "reporter")
    with pytest.raises(InvalidInput, match="role 'god'"):
        accounts.add_user(hub, boss, "neo", "god")
    for bad in ("anonymous", "a b", "", "x" * 65, "-x"):
        with pytest.raises(InvalidInput, match="user name"):
            accounts.add_user(hub, boss, bad, "reporter")
    person(hub, "tom", "reporter")
    with pytest.raises(Forbidden, match="only an admin may manage users"):
        accounts.add_user(hub, accounts.actor_named(hub, "tom"), "x", "admin")
    with pytest.raises(Conflict, match="exists"):
        accounts.add_user(hub, boss, "tom", "reporter")
    assert [u["name"] for u in accounts.list_users(hub, boss)] == sorted([boss.name, "tom"])


def test_an_actors_role_on_a_model_is_the_higher_of_its_roles() -> None:
    tom = Actor("tom", "reporter", None, {"m": "maintainer"})
    assert tom.role_on("m") == "maintainer" and tom.role_on("other") == "reporter"
    assert may(tom, "contributions.approve", "m", owner="bo")
    assert not may(tom, "contributions.approve", "other", owner="bo")
    assert not may(tom, "contributions.approve", "m", owner="tom")  # never one's own
    narrowed = Actor("tom", "reporter", frozenset({"read"}), {"m": "maintainer"})
    assert not may(narrowed, "contributions.approve", "m", owner="bo")
    assert not any(may(ANONYMOUS, action) for action in RULES)  # anonymous writes nothing


def test_serving_beyond_loopback_needs_an_admin_token_and_host_names(
    hub: Hub, tmp_path: object
) -> None:
    assert accounts.exposure_problems(hub, "127.0.0.1") == []
    problems = accounts.exposure_problems(hub, "0.0.0.0")
    assert any("create the first admin token" in p for p in problems)
    assert any("allowed_hosts is not set" in p for p in problems)
    accounts.create_token(hub, owner(hub), owner(hub).name)
    assert not any("admin token" in p for p in accounts.exposure_problems(hub, "0.0.0.0"))
    ready = Hub.open(hub.settings.home, allowed_hosts="hub.example.org")
    try:
        assert accounts.exposure_problems(ready, "0.0.0.0") == []
    finally:
        ready.close()
