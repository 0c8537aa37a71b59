"""Dependencies shared by routers and pages."""

from __future__ import annotations

from fastapi import Request

from upstream.hub import Hub


def get_hub(request: Request) -> Hub:
    hub: Hub = request.app.state.hub
    return hub
