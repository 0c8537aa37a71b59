"""/api/releases and /api/credits: cutting releases, what was released, and who made it
better."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from upstream.access import Actor
from upstream.credits import CreditTable, credits_table, ledger
from upstream.db.schema import Release
from upstream.hub import Hub
from upstream.registry import get_model
from upstream.releases import (
    METHODS,
    ReleaseCut,
    ReleaseDetail,
    ReleaseIn,
    ReleaseList,
    ReleaseSummary,
    cut_release,
    get_release,
    release_summary,
    ship_release,
)
from upstream.server.body import StrictRoute
from upstream.server.deps import BodyId, PathId, get_actor, get_hub

router = APIRouter(tags=["releases"], route_class=StrictRoute)


@router.get("/releases", response_model=ReleaseList)
def list_releases(model: str | None = None, hub: Hub = Depends(get_hub)) -> dict[str, Any]:
    """Releases, newest first: state, tag, method, contributions, verdict."""

    with hub.session() as s:
        q = select(Release).order_by(Release.id.desc())
        if model:
            q = q.where(Release.model_id == get_model(s, model.partition("@")[0]).id)
        return {"releases": [release_summary(r) for r in s.scalars(q)]}


@router.get("/releases/{release_id}", response_model=ReleaseDetail)
def show_release(release_id: PathId, hub: Hub = Depends(get_hub)) -> dict[str, Any]:
    """One release with its reasons, retention and credits ledger."""
    with hub.session() as s:
        return {**release_summary(get_release(s, release_id)), "credits": ledger(s, release_id)}


@router.get("/credits", response_model=CreditTable)
def credits(model: str | None = None, hub: Hub = Depends(get_hub)) -> dict[str, Any]:
    """Points per person over all releases (or one model's)."""
    with hub.session() as s:
        return {"credits": credits_table(s, model)}


class ReleaseRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(max_length=200, description="the model to release")
    contributions: list[BodyId] = Field(
        min_length=1, max_length=50, description="approved contribution ids"
    )
    method: str = Field("linear", description=f"one of {', '.join(METHODS)}")
    weights: list[float] | None = Field(None, max_length=50, description="one per contribution")
    density: float | None = Field(None, gt=0, le=1, description="ties/dare_ties: share kept")
    seed: int | None = Field(None, ge=0, le=2**31 - 1, description="dare_ties: random seed")


@router.post("/releases", status_code=202, response_model=ReleaseCut)
def cut(
    body: ReleaseRequest, actor: Actor = Depends(get_actor), hub: Hub = Depends(get_hub)
) -> dict[str, Any]:
    """Plan a release of approved contributions and queue its build and checks (a
    maintainer of the model); poll /api/jobs/{job}, then GET /api/releases/{id}."""
    data = ReleaseIn(
        body.model, body.contributions, body.method, body.weights, body.density, body.seed
    )
    return cut_release(hub, data, actor)


@router.post("/releases/{release_id}/ship", response_model=ReleaseSummary)
def ship(
    release_id: PathId, actor: Actor = Depends(get_actor), hub: Hub = Depends(get_hub)
) -> dict[str, Any]:
    """Release a candidate that passed its checks (one built without shipping)."""
    return ship_release(hub, release_id, actor)
