"""/api/jobs: the state and progress of long operations."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from upstream.access import Actor
from upstream.hub import Hub
from upstream.jobs import job_json
from upstream.server.deps import get_actor, get_hub

router = APIRouter(tags=["jobs"])


@router.get("/jobs")
def list_jobs(state: str | None = None, hub: Hub = Depends(get_hub)) -> dict[str, Any]:
    """Recent jobs, newest first."""
    return {"jobs": [job_json(j) for j in hub.jobs.list(state)]}


@router.get("/jobs/{job_id}")
def show_job(job_id: int, hub: Hub = Depends(get_hub)) -> dict[str, Any]:
    return job_json(hub.jobs.get(job_id))


@router.post("/jobs/{job_id}/cancel")
def cancel_job(
    job_id: int, actor: Actor = Depends(get_actor), hub: Hub = Depends(get_hub)
) -> dict[str, Any]:
    """Stop a job (who queued it, or a maintainer): a queued one now, a running one at its
    next progress report."""
    return job_json(hub.jobs.cancel(job_id, actor))
