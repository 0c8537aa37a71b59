"""The people tests act as: accounts with roles, and the bearer headers of their tokens."""

from __future__ import annotations

from sqlalchemy import select

from upstream import accounts
from upstream.access import Actor
from upstream.db.schema import User
from upstream.hub import Hub


def person(hub: Hub, name: str, role: str = "contributor", model: str | None = None) -> Actor:
    """The account `name` (made with `role`, on `model` if given, when it is missing)."""
    with hub.session() as s:
        exists = s.scalars(select(User).where(User.name == name)).first() is not None
    if not exists:
        accounts.add_user(hub, accounts.owner(hub), name, role, model)
    return accounts.actor_named(hub, name)


def owner(hub: Hub) -> Actor:
    """The hub's owner, an admin: who the CLI acts as by default."""
    return accounts.owner(hub)


def bearer(
    hub: Hub,
    name: str,
    role: str = "contributor",
    scopes: list[str] | None = None,
    model: str | None = None,
) -> dict[str, str]:
    """Request headers with a new token of `name` (made as `person` makes them)."""
    person(hub, name, role, model)
    made = accounts.create_token(hub, accounts.owner(hub), name, scopes)
    return {"Authorization": f"Bearer {made['token']}"}


def owner_bearer(hub: Hub) -> dict[str, str]:
    """Request headers with a new token of the hub's owner (an admin)."""
    made = accounts.create_token(hub, accounts.owner(hub), accounts.owner(hub).name)
    return {"Authorization": f"Bearer {made['token']}"}
