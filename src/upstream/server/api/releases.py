"""/api/releases and /api/credits: what was released, and who made it better (read only).

Releases are cut with `upstream release` (a maintainer's command); the hub's API shows
them and the credits ledger.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from sqlalchemy import select

from upstream.credits import credits_table, ledger
from upstream.db.schema import Release
from upstream.hub import Hub
from upstream.releases import get_release, release_summary
from upstream.server.deps import get_hub

router = APIRouter(tags=["releases"])


@router.get("/releases")
def list_releases(model: str | None = None, hub: Hub = Depends(get_hub)) -> dict[str, Any]:
    """Releases, newest first: state, tag, method, contributions, verdict."""
    from upstream.registry import get_model

    with hub.session() as s:
        q = select(Release).order_by(Release.id.desc())
        if model:
            q = q.where(Release.model_id == get_model(s, model.partition("@")[0]).id)
        return {"releases": [release_summary(r) for r in s.scalars(q)]}


@router.get("/releases/{release_id}")
def show_release(release_id: int, hub: Hub = Depends(get_hub)) -> dict[str, Any]:
    """One release with its reasons, retention and credits ledger."""
    with hub.session() as s:
        return {**release_summary(get_release(s, release_id)), "credits": ledger(s, release_id)}


@router.get("/credits")
def credits(model: str | None = None, hub: Hub = Depends(get_hub)) -> dict[str, Any]:
    """Points per person over all releases (or one model's)."""
    with hub.session() as s:
        return {"credits": credits_table(s, model)}
