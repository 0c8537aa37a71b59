"""/api/models: list, show and import models."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from upstream import registry
from upstream.access import Actor
from upstream.hub import Hub
from upstream.jobs import Queued
from upstream.server.body import StrictRoute
from upstream.server.deps import get_actor, get_hub

router = APIRouter(tags=["models"], route_class=StrictRoute)


class ImportRequest(BaseModel):
    source: str = Field(description="HF model dir, .gguf path, cached repo id or bundled:NAME")
    name: str = Field(description="model name in this hub")


@router.get("/models", response_model=registry.ModelList)
def list_models(hub: Hub = Depends(get_hub)) -> dict[str, Any]:
    """Every model with its latest revision and tags."""
    with hub.session() as s:
        return {"models": [registry.model_summary(m) for m in registry.list_models(s)]}


@router.get("/models/{name}", response_model=registry.ModelDetail)
def show_model(name: str, hub: Hub = Depends(get_hub)) -> dict[str, Any]:
    """One model and all its revisions, newest first."""
    with hub.session() as s:
        return registry.model_detail(registry.get_model(s, name))


@router.get("/models/{name}/revisions/{rev}", response_model=registry.RevisionOut)
def show_revision(name: str, rev: str, hub: Hub = Depends(get_hub)) -> dict[str, Any]:
    """One revision by tag or id prefix."""
    with hub.session() as s:
        revision = registry.resolve(s, f"{name}@{rev}")
        return registry.revision_summary(revision.model, revision)


class TagRequest(BaseModel):
    revision: str = Field(description="a tag or revision id prefix")


@router.put("/models/{name}/tags/{tag}", response_model=registry.TagOut)
def put_tag(
    name: str,
    tag: str,
    body: TagRequest,
    actor: Actor = Depends(get_actor),
    hub: Hub = Depends(get_hub),
) -> dict[str, Any]:
    """Point a tag at a revision (moving it if it exists)."""
    return registry.tag(hub, actor, f"{name}@{body.revision}", tag)


@router.delete("/models/{name}/tags/{tag}", status_code=204)
def delete_tag(
    name: str, tag: str, actor: Actor = Depends(get_actor), hub: Hub = Depends(get_hub)
) -> None:
    """Remove a tag (not `latest`)."""
    registry.untag(hub, actor, name, tag)


@router.post("/models/import", status_code=202, response_model=Queued)
def import_model(
    body: ImportRequest, actor: Actor = Depends(get_actor), hub: Hub = Depends(get_hub)
) -> dict[str, Any]:
    """Queue an import (admins; from bundled models or the `import_dirs` folders only);
    poll /api/jobs/{id} for its progress and result."""
    return {"job": registry.queue_import(hub, actor, body.source, body.name), "state": "queued"}
