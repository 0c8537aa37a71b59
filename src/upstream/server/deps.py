"""Dependencies shared by routers and pages."""

from __future__ import annotations

from fastapi import Header, Request

from upstream.errors import InvalidInput
from upstream.hub import Hub

# Who is acting, until accounts arrive; the server binds to loopback by default.
UserHeader = Header(None, alias="X-Upstream-User", description="who is acting")


def get_hub(request: Request) -> Hub:
    hub: Hub = request.app.state.hub
    return hub


def acting_user(value: str | None, required: bool = False) -> str:
    """The X-Upstream-User header's user; "anonymous" unless one is required."""
    if value and value.strip():
        return value.strip()[:100]
    if required:
        raise InvalidInput("X-Upstream-User header: say who is acting")
    return "anonymous"
