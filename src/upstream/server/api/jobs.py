"""/api/jobs: the state and progress of long operations."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends

from upstream.access import Actor
from upstream.hub import Hub
from upstream.jobs import JobList, JobOut, job_json
from upstream.server.body import StrictRoute
from upstream.server.deps import PathId, get_actor, get_hub

router = APIRouter(tags=["jobs"], route_class=StrictRoute)


@router.get("/jobs", response_model=JobList)
def list_jobs(
    state: Literal["queued", "running", "done", "failed"] | None = None,
    actor: Actor = Depends(get_actor),
    hub: Hub = Depends(get_hub),
) -> dict[str, Any]:
    """Recent jobs, newest first (a crash's traceback for admins only)."""
    return {"jobs": [job_json(j, actor) for j in hub.jobs.list(state)]}


@router.get("/jobs/{job_id}", response_model=JobOut)
def show_job(
    job_id: PathId, actor: Actor = Depends(get_actor), hub: Hub = Depends(get_hub)
) -> dict[str, Any]:
    """One job: state, progress, result, error (a crash's traceback for admins only)."""
    return job_json(hub.jobs.get(job_id), actor)


@router.post("/jobs/{job_id}/cancel", response_model=JobOut)
def cancel_job(
    job_id: PathId, actor: Actor = Depends(get_actor), hub: Hub = Depends(get_hub)
) -> dict[str, Any]:
    """Stop a job (who queued it, or a maintainer): a queued one now, a running one at its
    next progress report."""
    return job_json(hub.jobs.cancel(job_id, actor), actor)
