"""Dependencies shared by routers and pages: the hub, and who is acting."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import Field

from upstream import accounts
from upstream.access import ANONYMOUS, Actor
from upstream.db.schema import MAX_ID
from upstream.errors import Unauthorized
from upstream.hub import Hub

PathId = Annotated[int, Path(ge=1, le=MAX_ID, description="an id")]
QueryNumber = Annotated[int | None, Query(ge=1, le=MAX_ID)]
BodyId = Annotated[int, Field(ge=1, le=MAX_ID)]

# auto_error off: no header is an anonymous visitor (who reads public data), not an error.
bearer = HTTPBearer(
    auto_error=False, description="An API token: `upstream tokens create --user NAME`"
)


def get_hub(request: Request) -> Hub:
    hub: Hub = request.app.state.hub
    return hub


def get_actor(
    request: Request,
    credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
) -> Actor:
    """The actor of a request: its bearer token's user, or anonymous without one.

    A header that is there but is not a valid bearer token is refused (401), never read
    as anonymous: a client with a typo in its token should hear about it.
    """
    if credentials is None:
        if request.headers.get("authorization"):
            raise Unauthorized("Authorization: give `Bearer <token>`")
        return ANONYMOUS
    return accounts.authenticate(get_hub(request), credentials.credentials)


def get_signed_in(actor: Actor = Depends(get_actor)) -> Actor:
    """An actor that must not be anonymous (for routes only users use, such as tokens)."""
    if actor.anonymous:
        raise Unauthorized("sign in: send `Authorization: Bearer <token>`")
    return actor
