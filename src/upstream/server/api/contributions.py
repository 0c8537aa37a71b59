"""/api/contributions: open model pull requests, read their checks, review them.

Content travels in JSON: a dataset as its JSONL text, an adapter as its config object
and its safetensors file in base64, or, when that is too big for a JSON body, uploaded
first to /api/uploads (streamed to disk within the cap) and named by its sha256. Checks
are queued as a job for the hub's worker.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from upstream import contributions as domain
from upstream.access import Actor
from upstream.errors import InvalidInput, TooLarge
from upstream.hub import Hub
from upstream.server.body import StrictRoute
from upstream.server.deps import BodyId, PathId, get_actor, get_hub
from upstream.shapes import Shape

router = APIRouter(tags=["contributions"], route_class=StrictRoute)


class AdapterIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    config: dict[str, Any] = Field(description="adapter_config.json")
    safetensors_base64: str | None = Field(
        None, description="adapter_model.safetensors, base64 (a small adapter)"
    )
    safetensors_upload: str | None = Field(
        None, description="or the sha256 of adapter_model.safetensors sent to /api/uploads"
    )


UPLOAD_PATH = "/api/uploads"
UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}


class UploadOut(Shape):
    upload: str = Field(description="its sha256: name it as adapter.safetensors_upload")
    size: int


@router.post("/uploads", status_code=201, response_model=UploadOut, openapi_extra=UPLOAD_BODY)
async def upload(
    request: Request, actor: Actor = Depends(get_actor), hub: Hub = Depends(get_hub)
) -> dict[str, Any]:
    """Upload an adapter's weights (adapter_model.safetensors) too big for a JSON body,
    streamed to disk within `adapter_max_mb`; then open or push with its sha256. Uploads
    are the uploader's own, at most 8 waiting, and gone after a day or once used."""
    folder = domain.upload_dir(hub, actor)  # refuses who may not contribute, first
    limit = int(hub.settings.adapter_max_mb * 2**20)
    digest, size = hashlib.sha256(), 0
    with tempfile.NamedTemporaryFile(dir=folder, prefix="part-", delete=False) as out:
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise TooLarge(
                        f"the upload is over adapter_max_mb ({hub.settings.adapter_max_mb:g} MiB)"
                    )
                digest.update(chunk)
                out.write(chunk)
        except BaseException:
            Path(out.name).unlink(missing_ok=True)
            raise
    if size == 0:
        Path(out.name).unlink(missing_ok=True)
        raise InvalidInput("the upload is empty: send the file as the request body")
    return domain.accept_upload(hub, actor, Path(out.name), digest.hexdigest())


class ContentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dataset: str | None = Field(None, description="chat JSONL, OpenAI fine-tuning format")
    adapter: AdapterIn | None = None


class ContributionRequest(ContentIn):
    model: str = Field(description="NAME@REV the change applies to")
    title: str = Field(max_length=domain.MAX_TITLE)
    description: str = Field("", max_length=20_000)
    fixes: list[BodyId] = Field(
        default_factory=list, max_length=1000, description="report ids it claims to fix"
    )
    recipe: dict[str, Any] = Field(default_factory=dict, description="training overrides")


class ReviewRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    comment: str = Field("", max_length=20_000)
    override: str = Field("", max_length=20_000, description="reason to approve a failed one")
    reason: str = Field("", max_length=20_000)


class PushedOut(Shape):
    id: int = Field(description="the contribution")
    push: int = Field(description="the push's number (1 when opened)")
    state: str
    job: int = Field(description="the job checking this push")


class OpenedOut(PushedOut):
    kind: str = Field(description="adapter or dataset")


class CheckOut(Shape):
    contribution: int
    job: int = Field(description="the job checking the newest push again")


@router.post("/contributions", status_code=201, response_model=OpenedOut)
def open_contribution(
    body: ContributionRequest, actor: Actor = Depends(get_actor), hub: Hub = Depends(get_hub)
) -> dict[str, Any]:
    """Open a contribution; its checks are queued as a job."""
    with _content(hub, body, actor) as content:
        data = domain.ContributionIn(
            body.model, body.title, content, body.fixes, body.recipe, body.description
        )
        return domain.open_contribution(hub, data, actor)


@router.get("/contributions", response_model=domain.ContributionList)
def list_contributions(
    model: str | None = None, state: str | None = None, hub: Hub = Depends(get_hub)
) -> dict[str, Any]:
    """Contributions, newest first."""
    with hub.session() as s:
        found = domain.list_contributions(s, model, state)
        return {"contributions": [domain.contribution_summary(c) for c in found]}


@router.get("/contributions/{contribution_id}", response_model=domain.ContributionDetail)
def show_contribution(
    contribution_id: PathId, actor: Actor = Depends(get_actor), hub: Hub = Depends(get_hub)
) -> dict[str, Any]:
    """A contribution with its check report (held-out cases as counts unless maintainer)."""
    with hub.session() as s:
        return domain.contribution_detail(domain.get_contribution(s, contribution_id), actor)


@router.post("/contributions/{contribution_id}/push", response_model=PushedOut)
def push(
    contribution_id: PathId,
    body: ContentIn,
    actor: Actor = Depends(get_actor),
    hub: Hub = Depends(get_hub),
) -> dict[str, Any]:
    """New content for a contribution (its author); checks are queued again."""
    with _content(hub, body, actor) as content:
        return domain.push(hub, contribution_id, content, actor)


@router.post("/contributions/{contribution_id}/check", status_code=202, response_model=CheckOut)
def check(
    contribution_id: PathId, actor: Actor = Depends(get_actor), hub: Hub = Depends(get_hub)
) -> dict[str, Any]:
    """Queue the checks of the newest push again (its author or a maintainer)."""
    return {
        "contribution": contribution_id,
        "job": domain.queue_checks(hub, contribution_id, actor),
    }


@router.post("/contributions/{contribution_id}/approve", response_model=domain.ContributionSummary)
def approve(
    contribution_id: PathId,
    body: ReviewRequest,
    actor: Actor = Depends(get_actor),
    hub: Hub = Depends(get_hub),
) -> dict[str, Any]:
    """Approve (a maintainer, not the author); a failed one needs {"override": reason}."""
    return domain.approve(hub, contribution_id, actor, body.comment, body.override)


@router.post("/contributions/{contribution_id}/reject", response_model=domain.ContributionSummary)
def reject(
    contribution_id: PathId,
    body: ReviewRequest,
    actor: Actor = Depends(get_actor),
    hub: Hub = Depends(get_hub),
) -> dict[str, Any]:
    """Reject with {"reason": ...} (a maintainer)."""
    return domain.reject(hub, contribution_id, actor, body.reason)


@router.post("/contributions/{contribution_id}/close", response_model=domain.ContributionSummary)
def close(
    contribution_id: PathId,
    body: ReviewRequest,
    actor: Actor = Depends(get_actor),
    hub: Hub = Depends(get_hub),
) -> dict[str, Any]:
    """Withdraw (its author or a maintainer)."""
    return domain.close(hub, contribution_id, actor, body.reason)


class _content:
    """The request's content as a `Content`, an adapter written to a temporary directory."""

    def __init__(self, hub: Hub, body: ContentIn, actor: Actor):
        self.hub, self.body, self.actor = hub, body, actor
        self.tmp: tempfile.TemporaryDirectory[str] | None = None

    def __enter__(self) -> domain.Content:
        body = self.body
        if (body.dataset is None) == (body.adapter is None):
            raise InvalidInput('give exactly one of "dataset" or "adapter"')
        if body.dataset is not None:
            return domain.Content(dataset=body.dataset.encode("utf-8"))
        adapter = body.adapter
        assert adapter is not None
        if (adapter.safetensors_base64 is None) == (adapter.safetensors_upload is None):
            raise InvalidInput(
                'adapter: give exactly one of "safetensors_base64" or "safetensors_upload"'
            )
        self.tmp = tempfile.TemporaryDirectory(dir=self.hub.settings.work_dir)
        folder = Path(self.tmp.name)
        (folder / "adapter_config.json").write_text(json.dumps(adapter.config))
        weights = folder / "adapter_model.safetensors"
        if adapter.safetensors_upload is not None:
            domain.take_upload(self.hub, self.actor, adapter.safetensors_upload, weights)
            return domain.Content(adapter_dir=folder)
        try:
            weights.write_bytes(base64.b64decode(adapter.safetensors_base64 or "", validate=True))
        except (binascii.Error, ValueError) as e:
            raise InvalidInput(f"adapter.safetensors_base64: not base64 ({e})") from e
        return domain.Content(adapter_dir=folder)

    def __exit__(self, *exc: object) -> None:
        if self.tmp is not None:
            self.tmp.cleanup()
