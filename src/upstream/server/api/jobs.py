"""/api/jobs: the state and progress of long operations."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from upstream.db.schema import Job
from upstream.hub import Hub
from upstream.server.deps import get_hub

router = APIRouter(tags=["jobs"])


def job_json(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "kind": job.kind,
        "args": job.args,
        "state": job.state,
        "progress": job.progress,
        "total": job.progress_total,
        "message": job.message,
        "attempts": job.attempts,
        "result": job.result,
        "error": job.error,
        "created_at": job.created_at.isoformat(),
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
    }


@router.get("/jobs")
def list_jobs(state: str | None = None, hub: Hub = Depends(get_hub)) -> dict[str, Any]:
    """Recent jobs, newest first."""
    return {"jobs": [job_json(j) for j in hub.jobs.list(state)]}


@router.get("/jobs/{job_id}")
def show_job(job_id: int, hub: Hub = Depends(get_hub)) -> dict[str, Any]:
    return job_json(hub.jobs.get(job_id))
