"""`upstream users` and `upstream tokens`: the hub's accounts and their API tokens."""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table
from rich.text import Text

from upstream import accounts
from upstream.access import ROLES, SCOPES
from upstream.cli.common import (
    MAX_ID,
    AsOption,
    JsonOption,
    console,
    current_actor,
    emit_json,
    open_hub,
)

users_app = typer.Typer(
    help=f"Accounts and their roles ({' < '.join(ROLES)}).", no_args_is_help=True
)
tokens_app = typer.Typer(
    help="API tokens: `Authorization: Bearer <token>`; shown once, stored hashed.",
    no_args_is_help=True,
)

RoleOption = typer.Option(..., "--role", help=f"One of {', '.join(ROLES)}.")
ModelOption = typer.Option(
    None, "--model", help="Hold the role on this model only (not for admin)."
)


def _on_models(u: dict[str, Any]) -> str:
    """`maintainer of smol, contributor of tiny`: the roles a user holds on models."""
    return ", ".join(f"{r} of {m}" for m, r in u["models"].items())


def _print_user(u: dict[str, Any], verb: str) -> None:
    on = f", and {_on_models(u)}" if u["models"] else ""
    console.print(Text(f"{verb} {u['name']}: {u['role']}{on}"))


@users_app.command("add")
def users_add(
    name: str = typer.Argument(..., help="The account's name (letters, digits, . _ -)."),
    role: str = RoleOption,
    model: str | None = ModelOption,
    as_user: str | None = AsOption,
    json_out: bool = JsonOption,
) -> None:
    """Add an account (admins only). Give it a token with `upstream tokens create`."""
    hub = open_hub()
    user = accounts.add_user(hub, current_actor(hub, as_user), name, role, model)
    if json_out:
        emit_json(user)
        return
    _print_user(user, "added")
    console.print(Text(f"give them a token: upstream tokens create --user {name}", style="dim"))


@users_app.command("set-role")
def users_set_role(
    name: str = typer.Argument(..., help="The account to change."),
    role: str = RoleOption,
    model: str | None = ModelOption,
    as_user: str | None = AsOption,
    json_out: bool = JsonOption,
) -> None:
    """Change an account's role on the hub, or (with --model) on one model."""
    hub = open_hub()
    user = accounts.set_role(hub, current_actor(hub, as_user), name, role, model)
    if json_out:
        emit_json(user)
        return
    _print_user(user, "now")


@users_app.command("list")
def users_list(as_user: str | None = AsOption, json_out: bool = JsonOption) -> None:
    """List the accounts with their roles."""
    hub = open_hub()
    found = accounts.list_users(hub, current_actor(hub, as_user))
    if json_out:
        emit_json({"users": found})
        return
    table = Table("user", "role", "on models", "since")
    for u in found:
        name = Text(u["name"] + (" (owner)" if u["owner"] else ""))
        table.add_row(name, u["role"], Text(_on_models(u) or "-"), u["created_at"][:10])
    console.print(table)


@tokens_app.command("create")
def tokens_create(
    user: str = typer.Option(..., "--user", help="Whose token it is."),
    scope: list[str] = typer.Option(
        [],
        "--scope",
        help=f"Repeat to narrow the token ({', '.join(SCOPES)}); default: all its user's "
        "role allows.",
    ),
    expires: str = typer.Option("90d", "--expires", help="Lifetime: 12h, 30d, … or never."),
    note: str = typer.Option("", "--note", help="What the token is for (shown in lists)."),
    consent: bool = typer.Option(
        False,
        "--consent/--no-consent",
        help="Whether what is served to this token (and reports its feedback files) may be "
        "made public.",
    ),
    license: str = typer.Option(
        "CC-BY-4.0", "--license", help="The licence of those traces and reports."
    ),
    as_user: str | None = AsOption,
    json_out: bool = JsonOption,
) -> None:
    """Make an API token; its secret is printed once (with --json, the `token` field)."""
    hub = open_hub()
    made = accounts.create_token(
        hub,
        current_actor(hub, as_user),
        user,
        list(scope),
        accounts.parse_expiry(expires),
        note,
        consent,
        license,
    )
    if json_out:
        emit_json(made)
        return
    until = made["expires_at"][:10] if made["expires_at"] else "never expires"
    console.print(
        Text(f"token {made['id']} for {user} ({', '.join(made['scopes'])}; expires {until}):")
    )
    console.print(Text(made["token"], style="bold"))
    console.print(
        Text(
            "shown once: the hub keeps only its hash. Send it as `Authorization: Bearer <token>`.",
            style="dim",
        )
    )


@tokens_app.command("list")
def tokens_list(
    user: str | None = typer.Option(None, "--user", help="Only this user's tokens."),
    as_user: str | None = AsOption,
    json_out: bool = JsonOption,
) -> None:
    """List tokens (never their secrets)."""
    hub = open_hub()
    found = accounts.list_tokens(hub, current_actor(hub, as_user), user)
    if json_out:
        emit_json({"tokens": found})
        return
    table = Table("id", "user", "token", "scopes", "expires", "last used", "note")
    for t in found:
        state = "revoked" if t["revoked"] else (t["expires_at"] or "never")[:10]
        table.add_row(
            str(t["id"]),
            Text(t["user"]),
            t["shown_as"],
            ", ".join(t["scopes"]),
            state,
            (t["last_used_at"] or "never")[:16],
            Text(t["note"]),
        )
    console.print(table)


@tokens_app.command("revoke")
def tokens_revoke(
    token_id: int = typer.Argument(
        ..., min=1, max=MAX_ID, help="The token's id (see `tokens list`)."
    ),
    as_user: str | None = AsOption,
    json_out: bool = JsonOption,
) -> None:
    """Revoke a token at once; requests with it get 401 from then on."""
    hub = open_hub()
    revoked = accounts.revoke_token(hub, current_actor(hub, as_user), token_id)
    if json_out:
        emit_json(revoked)
        return
    console.print(Text(f"token {token_id} ({revoked['shown_as']} of {revoked['user']}) revoked"))
