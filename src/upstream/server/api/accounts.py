"""/api/users, /api/tokens and /api/me: accounts, their roles and their tokens."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from upstream import accounts
from upstream.access import Actor
from upstream.hub import Hub
from upstream.server.body import StrictRoute
from upstream.server.deps import PathId, get_actor, get_hub, get_signed_in
from upstream.shapes import Shape

router = APIRouter(tags=["accounts"], route_class=StrictRoute)


class UserRequest(BaseModel):
    name: str = Field(max_length=64, description="letters, digits, '.', '_' or '-'")
    role: str = Field(max_length=20, description="reporter, contributor, maintainer or admin")
    model: str | None = Field(None, max_length=200, description="hold the role on this model")


class RoleRequest(BaseModel):
    role: str = Field(max_length=20, description="reporter, contributor, maintainer or admin")
    model: str | None = Field(None, max_length=200, description="change the role on this model")


class TokenRequest(BaseModel):
    user: str | None = Field(None, max_length=64, description="whose token (default: yours)")
    scopes: list[str] = Field(
        default_factory=list, max_length=6, description="narrow it (default: all the role allows)"
    )
    expires: str = Field("90d", max_length=10, description="12h, 30d, … or never")
    note: str = Field("", max_length=200)
    consent: bool = Field(False, description="its served traces may become public reports")
    license: str = Field("CC-BY-4.0", max_length=40, description="their licence")


class MeOut(Shape):
    name: str | None = Field(description="null for an anonymous caller")
    role: str | None
    models: dict[str, str] = Field(description="model name → the role held on it")
    scopes: list[str] | None = Field(description="the token's scopes")


@router.get("/me", response_model=MeOut)
def whoami(actor: Actor = Depends(get_actor)) -> dict[str, Any]:
    """Who this request acts as: name, role, roles on models and the token's scopes."""
    return {
        "name": None if actor.anonymous else actor.name,
        "role": actor.role,
        "models": dict(actor.model_roles),
        "scopes": sorted(actor.scopes) if actor.scopes is not None else None,
    }


@router.get("/users", response_model=accounts.UserList)
def list_users(actor: Actor = Depends(get_actor), hub: Hub = Depends(get_hub)) -> dict[str, Any]:
    """Every account with its roles (admins)."""
    return {"users": accounts.list_users(hub, actor)}


@router.post("/users", status_code=201, response_model=accounts.UserOut)
def add_user(
    body: UserRequest, actor: Actor = Depends(get_actor), hub: Hub = Depends(get_hub)
) -> dict[str, Any]:
    """Add an account (admins)."""
    return accounts.add_user(hub, actor, body.name, body.role, body.model)


@router.put("/users/{name}/role", response_model=accounts.UserOut)
def set_role(
    name: str, body: RoleRequest, actor: Actor = Depends(get_actor), hub: Hub = Depends(get_hub)
) -> dict[str, Any]:
    """Change an account's role, on the hub or on one model (admins)."""
    return accounts.set_role(hub, actor, name, body.role, body.model)


@router.get("/tokens", response_model=accounts.TokenList)
def list_tokens(
    user: str | None = None, actor: Actor = Depends(get_signed_in), hub: Hub = Depends(get_hub)
) -> dict[str, Any]:
    """Your tokens (an admin: everyone's, or one user's); never their secrets."""
    return {"tokens": accounts.list_tokens(hub, actor, user)}


@router.post("/tokens", status_code=201, response_model=accounts.NewToken)
def create_token(
    body: TokenRequest, actor: Actor = Depends(get_signed_in), hub: Hub = Depends(get_hub)
) -> dict[str, Any]:
    """A new token; its secret (`token`) is in this answer and nowhere else, ever."""
    expires = accounts.parse_expiry(body.expires)
    return accounts.create_token(
        hub,
        actor,
        body.user or actor.name,
        body.scopes,
        expires,
        body.note,
        body.consent,
        body.license,
    )


@router.delete("/tokens/{token_id}", response_model=accounts.TokenOut)
def revoke_token(
    token_id: PathId, actor: Actor = Depends(get_signed_in), hub: Hub = Depends(get_hub)
) -> dict[str, Any]:
    """Revoke a token at once (yours, or anyone's for an admin)."""
    return accounts.revoke_token(hub, actor, token_id)
