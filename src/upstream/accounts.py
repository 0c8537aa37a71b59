"""Accounts: users, their roles, and the API tokens they act with.

A token's secret is `up_` and 43 random URL-safe characters (256 bits), shown once when
it is made; the hub keeps its sha256 (a secret that random needs no slow hash) and its
last four characters, for people to tell their tokens apart. A token has scopes (never
more than its user's role allows when it is made: a token only narrows), an expiry
(default 90 days) and a `last_used` time, written at most once a minute so that reading
it costs no write per request.

The hub's owner is the admin account made when the hub first needs one, named after the
login that ran it; the CLI on the hub's machine acts as the owner unless `--as NAME`
names another account.
"""

from __future__ import annotations

import getpass
import hashlib
import re
import secrets
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from pydantic import Field
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from upstream.access import ANONYMOUS, ROLE_SCOPES, RULES, SCOPES, Actor, check_role, may, require
from upstream.db.schema import ApiToken, ModelRole, User, WebSession, utcnow
from upstream.errors import Conflict, InvalidInput, NotFound, Unauthorized
from upstream.registry import get_model
from upstream.shapes import Shape

if TYPE_CHECKING:
    from upstream.hub import Hub

TOKEN_PREFIX = "up_"
DEFAULT_EXPIRY = timedelta(days=90)
MAX_EXPIRY = timedelta(days=3650)
LAST_USED_EVERY = timedelta(minutes=1)
MAX_TOKEN_CHARS = 200  # anything longer is not one of ours; refused before hashing
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def check_user_name(name: str) -> str:
    if not NAME.match(name) or name == "anonymous":
        raise InvalidInput(
            f"user name {name!r}: 1 to 64 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit (and not 'anonymous')"
        )
    return name


# ---------------------------------------------------------------- shapes
# What the API answers and `--json` prints, one model each (documented in /openapi.json).


class UserOut(Shape):
    name: str
    role: str = Field(description="reporter, contributor, maintainer or admin")
    models: dict[str, str] = Field(description="model name → the role held on it")
    owner: bool = Field(description="the hub's owner (an admin for good)")
    created_at: str


class TokenOut(Shape):
    id: int
    user: str
    scopes: list[str]
    shown_as: str = Field(description="up_… and the last four characters")
    note: str
    created_at: str
    expires_at: str | None
    last_used_at: str | None
    revoked: bool
    consent: bool = Field(description="its served traces may become public reports")
    license: str = Field(description="the licence those traces and reports carry")


class UserList(Shape):
    users: list[UserOut]


class TokenList(Shape):
    tokens: list[TokenOut]


class NewToken(TokenOut):
    token: str = Field(description="the secret: shown in this answer only, never again")


# ---------------------------------------------------------------- users


def actor_of(
    user: User, scopes: frozenset[str] | None = None, token_id: int | None = None
) -> Actor:
    """The Actor a user is, acting through a token with `scopes` (None: the CLI)."""
    return Actor(
        user.name,
        user.role,
        scopes,
        {mr.model.name: mr.role for mr in user.model_roles},
        user.id,
        token_id,
    )


def owner(hub: Hub) -> Actor:
    """The hub's owner, the CLI's default actor; made (an admin) the first time it is needed."""
    with hub.session() as s:
        found = s.scalars(select(User).where(User.owner.is_(True))).first()
        if found is not None:
            return actor_of(found)
    name = _login_name()
    try:
        with hub.session() as s, s.begin():
            existing = s.scalars(select(User).where(User.name == name)).first()
            if existing is None:
                s.add(User(name=name, role="admin", owner=True))
            else:  # an account of that name came first: it becomes the owner
                existing.role, existing.owner = "admin", True
    except IntegrityError:  # another process made it at the same moment
        pass
    with hub.session() as s:
        return actor_of(s.scalars(select(User).where(User.owner.is_(True))).one())


def _login_name() -> str:
    try:
        name = getpass.getuser()
    except (KeyError, OSError):  # a container user with no passwd entry
        name = "owner"
    return name if NAME.match(name) else "owner"


def actor_named(hub: Hub, name: str) -> Actor:
    """The actor `--as NAME` means: that account, with all its role allows."""
    with hub.session() as s:
        return actor_of(get_user(s, name))


def get_user(session: Session, name: str) -> User:
    user = session.scalars(select(User).where(User.name == name)).first()
    if user is None:
        raise NotFound(f"no user {name!r}; add one with `upstream users add {name} --role R`")
    return user


def add_user(
    hub: Hub, actor: Actor, name: str, role: str, model: str | None = None
) -> dict[str, Any]:
    """Add an account; with `model`, `role` holds on that model only (the global role is
    then reporter)."""
    require(actor, "users.manage")
    check_user_name(name)
    check_role(role)
    if model and role == "admin":
        raise InvalidInput("admin is a role of the whole hub; give it without --model")
    with hub.session() as s, s.begin():
        if s.scalars(select(User).where(User.name == name)).first() is not None:
            raise Conflict(f"user {name!r} exists; change their role with `users set-role`")
        user = User(name=name, role="reporter" if model else role)
        s.add(user)
        if model:
            user.model_roles.append(ModelRole(model=get_model(s, model), role=role))
        s.flush()
        return user_dict(user)


def set_role(
    hub: Hub, actor: Actor, name: str, role: str, model: str | None = None
) -> dict[str, Any]:
    """Change a user's global role, or (with `model`) the role they hold on one model."""
    require(actor, "users.manage")
    check_role(role)
    with hub.session() as s, s.begin():
        user = get_user(s, name)
        if model:
            if role == "admin":
                raise InvalidInput("admin is a role of the whole hub; give it without --model")
            m = get_model(s, model)
            held = next((mr for mr in user.model_roles if mr.model_id == m.id), None)
            if held is None:
                user.model_roles.append(ModelRole(model=m, role=role))
            else:
                held.role = role
        else:
            if user.owner and role != "admin":
                raise Conflict(f"{name} owns this hub and stays an admin")
            user.role = role
        s.flush()
        return user_dict(user)


def list_users(hub: Hub, actor: Actor) -> list[dict[str, Any]]:
    """Every account and its roles (admins: who is who is not public)."""
    require(actor, "users.manage")
    with hub.session() as s:
        return [user_dict(u) for u in s.scalars(select(User).order_by(User.name))]


def user_dict(user: User) -> dict[str, Any]:
    return {
        "name": user.name,
        "role": user.role,
        "models": {mr.model.name: mr.role for mr in user.model_roles},
        "owner": user.owner,
        "created_at": user.created_at.isoformat(),
    }


# ---------------------------------------------------------------- tokens


def parse_expiry(text: str) -> timedelta | None:
    """ "30d", "12h", "never" as a lifetime (None: never expires)."""
    if text.strip().lower() == "never":
        return None
    found = re.fullmatch(r"\s*(\d{1,5})\s*([hd])\s*", text.lower())
    if not found:
        raise InvalidInput(f"expiry {text!r}: give hours or days (12h, 30d) or 'never'")
    n, unit = int(found[1]), found[2]
    life = timedelta(hours=n) if unit == "h" else timedelta(days=n)
    if not timedelta(hours=1) <= life <= MAX_EXPIRY:
        raise InvalidInput(f"expiry {text!r}: from 1h to {MAX_EXPIRY.days}d")
    return life


def create_token(
    hub: Hub,
    actor: Actor,
    user_name: str,
    scopes: list[str] | None = None,
    expires: timedelta | None = DEFAULT_EXPIRY,
    note: str = "",
    consent: bool = False,
    license: str = "CC-BY-4.0",
) -> dict[str, Any]:
    """A new token for `user_name`; the returned `token` is the only copy of its secret.

    A user may make tokens for themselves within their own (token's) rights; an admin
    for anyone. No scope beyond the user's role is granted. `consent` says whether what
    is served to this token may become public reports, under `license`.
    """
    require(actor, "tokens.manage", owner=user_name)
    asked = list(dict.fromkeys(scopes or []))
    unknown = [x for x in asked if x not in SCOPES]
    if unknown:
        raise InvalidInput(f"scope {unknown[0]!r}: allowed {', '.join(SCOPES)}")
    if len(note) > 200:
        raise InvalidInput("note: at most 200 characters")
    if not license.strip() or len(license) > 40:
        raise InvalidInput("license: 1 to 40 characters (an SPDX id such as CC-BY-4.0)")
    with hub.session() as s, s.begin():
        user = get_user(s, user_name)
        target = actor_of(user)
        rights = {x for x in SCOPES if _held_anywhere(target, x)}
        if actor.scopes is not None:  # a token makes no token broader than itself
            rights &= actor.scopes
        granted = asked or sorted(rights, key=SCOPES.index)
        beyond = [x for x in granted if x not in rights]
        if beyond:
            raise InvalidInput(
                f"scope {beyond[0]!r} is beyond what {user_name} may do "
                f"({', '.join(sorted(rights, key=SCOPES.index))}); a token can only narrow"
            )
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
        token = ApiToken(
            user_id=user.id,
            digest=_digest(secret),
            last_chars=secret[-4:],
            scopes=granted,
            note=note,
            expires_at=utcnow() + expires if expires else None,
            consent=consent,
            license=license.strip(),
        )
        s.add(token)
        s.flush()
        return {**token_dict(token, user.name), "token": secret}


def _held_anywhere(actor: Actor, scope: str) -> bool:
    roles = [r for r in (actor.role, *actor.model_roles.values()) if r]
    return any(scope in ROLE_SCOPES[r] for r in roles)


def list_tokens(hub: Hub, actor: Actor, user_name: str | None = None) -> list[dict[str, Any]]:
    """Tokens (never their secrets): an admin sees all or one user's, others their own."""
    name = user_name or (None if actor.has("admin") else actor.name)
    if name is not None:
        require(actor, "tokens.manage", owner=name)
    with hub.session() as s:
        q = select(ApiToken, User.name).join(User).order_by(ApiToken.id)
        if name is not None:
            q = q.where(User.name == name)
        return [token_dict(t, n) for t, n in s.execute(q)]


def revoke_token(hub: Hub, actor: Actor, token_id: int) -> dict[str, Any]:
    """Revoke a token at once (its owner or an admin); a revoked token stays listed."""
    with hub.session() as s, s.begin():
        token = s.get(ApiToken, token_id)
        if token is None:
            raise NotFound(f"no token {token_id}; list them with `upstream tokens list`")
        require(actor, "tokens.manage", owner=token.user.name)
        if token.revoked_at is None:
            token.revoked_at = utcnow()
        return token_dict(token, token.user.name)


def token_dict(token: ApiToken, user_name: str) -> dict[str, Any]:
    return {
        "id": token.id,
        "user": user_name,
        "scopes": list(token.scopes),
        "shown_as": f"{TOKEN_PREFIX}…{token.last_chars}",
        "note": token.note,
        "created_at": token.created_at.isoformat(),
        "expires_at": token.expires_at.isoformat() if token.expires_at else None,
        "last_used_at": token.last_used_at.isoformat() if token.last_used_at else None,
        "revoked": token.revoked_at is not None,
        "consent": token.consent,
        "license": token.license,
    }


def authenticate(hub: Hub, secret: str) -> Actor:
    """The actor a bearer token stands for, or Unauthorized (unknown, expired, revoked)."""
    if not secret.startswith(TOKEN_PREFIX) or len(secret) > MAX_TOKEN_CHARS:
        raise Unauthorized("not an Upstream token (they start with up_)")
    now = utcnow()
    with hub.session() as s:
        token = s.scalars(select(ApiToken).where(ApiToken.digest == _digest(secret))).first()
        if token is None or token.revoked_at is not None:
            raise Unauthorized("unknown or revoked token")
        if token.expires_at is not None and _aware(token.expires_at) <= now:
            raise Unauthorized(f"token {TOKEN_PREFIX}…{token.last_chars} has expired")
        actor = actor_of(token.user, frozenset(token.scopes), token.id)
        last = token.last_used_at
        if last is None or now - _aware(last) > LAST_USED_EVERY:
            token.last_used_at = now
            s.commit()
        return actor


# ---------------------------------------------------------------- web sessions
# A browser signs in with an API token once; the hub answers with a session cookie whose
# secret it keeps only as a sha256, like a token's. The session acts as that token
# (its scopes, its user's role now), ends when signed out, at web_session_hours, or as
# soon as the token is revoked or expires. Forms carry a CSRF value derived from the
# cookie's secret, which another site can neither read nor guess.

SESSION_PREFIX = "ws_"


def sign_in(hub: Hub, secret: str) -> tuple[str, Actor]:
    """Open a web session for the token `secret` (Unauthorized as for the API): the
    cookie's value, and who it acts as."""
    actor = authenticate(hub, secret.strip())
    cookie = SESSION_PREFIX + secrets.token_urlsafe(32)
    now = utcnow()
    with hub.session() as s, s.begin():
        token = s.get(ApiToken, actor.token_id)
        assert token is not None
        ends = now + timedelta(hours=hub.settings.web_session_hours)
        if token.expires_at is not None:
            ends = min(ends, _aware(token.expires_at))
        s.add(WebSession(digest=_digest(cookie), token_id=token.id, expires_at=ends))
    return cookie, actor


def session_actor(hub: Hub, cookie: str) -> Actor | None:
    """Who a session cookie acts as, or None when it is unknown, ended or its token is
    no longer good (the browser then reads as anonymous and may sign in again)."""
    if not cookie.startswith(SESSION_PREFIX) or len(cookie) > MAX_TOKEN_CHARS:
        return None
    now = utcnow()
    with hub.session() as s:
        found = s.scalars(select(WebSession).where(WebSession.digest == _digest(cookie))).first()
        if found is None or _aware(found.expires_at) <= now:
            return None
        token = found.token
        if token.revoked_at is not None or (
            token.expires_at is not None and _aware(token.expires_at) <= now
        ):
            return None
        return actor_of(token.user, frozenset(token.scopes), token.id)


def sign_out(hub: Hub, cookie: str) -> None:
    """End the session of `cookie` (nothing happens for one that is not a session), and
    drop sessions that have ended on their own."""
    with hub.session() as s, s.begin():
        for found in s.scalars(
            select(WebSession).where(
                (WebSession.digest == _digest(cookie)) | (WebSession.expires_at <= utcnow())
            )
        ):
            s.delete(found)


def csrf_value(cookie: str) -> str:
    """The value a form of the session `cookie` must carry."""
    return hashlib.sha256(f"csrf:{cookie}".encode()).hexdigest()[:32]


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def exposure_problems(hub: Hub, host: str) -> list[str]:
    """Why serving on `host` would be unsafe or useless (none for a loopback address).

    Beyond loopback, strangers can reach the hub: no write may be open to anonymous
    visitors, someone must be able to sign in as an admin, and the Host names clients
    will use must be allowed."""
    if host in LOOPBACK or host.startswith("127."):
        return []
    problems = [
        f"the rule book lets anonymous visitors {RULES[a].what} ({a})"
        for a in RULES
        if may(ANONYMOUS, a)
    ]
    now = utcnow()
    with hub.session() as s:
        admins = s.scalars(
            select(ApiToken).join(User).where(User.role == "admin", ApiToken.revoked_at.is_(None))
        ).all()
        live = [t for t in admins if t.expires_at is None or _aware(t.expires_at) > now]
        if not any("admin" in t.scopes for t in live):
            problems.append(
                "no admin can sign in yet: create the first admin token with "
                f"`upstream tokens create --user {owner(hub).name}` and keep it safe"
            )
    if not hub.settings.allowed_hosts.strip():
        problems.append(
            "allowed_hosts is not set: requests naming this machine would be refused; set "
            "UPSTREAM_ALLOWED_HOSTS to the names clients use (e.g. hub.example.org)"
        )
    return problems


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def _aware(t: datetime) -> datetime:
    """SQLite hands back naive datetimes for what was stored in UTC."""
    return t if t.tzinfo else t.replace(tzinfo=UTC)
