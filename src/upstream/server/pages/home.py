"""The dashboard, signing in and out, and a job's live page."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import select
from starlette.datastructures import FormData

from upstream import accounts, contributions, reports
from upstream.db.schema import Release
from upstream.errors import Unauthorized
from upstream.hub import Hub
from upstream.jobs import job_json
from upstream.releases import release_summary
from upstream.server.deps import PathId, get_hub
from upstream.server.pages.web import (
    COOKIE,
    Viewer,
    field,
    get_viewer,
    read_form,
    render,
    safe_path,
)

router = APIRouter(include_in_schema=False)


@router.get("/", response_class=HTMLResponse)
def dashboard(
    request: Request, viewer: Viewer = Depends(get_viewer), hub: Hub = Depends(get_hub)
) -> HTMLResponse:
    with hub.session() as s:
        counts = reports.status_counts(s, viewer.actor)
        groups = reports.open_clusters(s, viewer.actor, limit=8)
        waiting = [
            contributions.contribution_summary(c)
            for state in ("passed", "failed", "checking", "open")
            for c in contributions.list_contributions(s, state=state, limit=10)
        ]
        released = [
            release_summary(r)
            for r in s.scalars(select(Release).order_by(Release.id.desc()).limit(5))
        ]
    jobs = [
        job_json(j, viewer.actor)
        for state in ("running", "queued")
        for j in hub.jobs.list(state, limit=10)
    ]
    return render(
        request,
        viewer,
        "dashboard.html",
        counts=counts,
        clusters=groups,
        waiting=waiting,
        releases=released,
        jobs=jobs,
    )


@router.get("/sign-in", response_class=HTMLResponse)
def sign_in_page(
    request: Request, next: str = "/", viewer: Viewer = Depends(get_viewer)
) -> HTMLResponse:
    return render(request, viewer, "sign_in.html", next=safe_path(next[:2000]))


@router.post("/sign-in")
def sign_in(
    request: Request,
    form: FormData = Depends(read_form),
    viewer: Viewer = Depends(get_viewer),
    hub: Hub = Depends(get_hub),
) -> Response:
    target = safe_path(field(form, "next", 2000) or "/")
    try:
        cookie, _ = accounts.sign_in(hub, field(form, "token", 500))
    except Unauthorized as e:
        return render(request, viewer, "sign_in.html", 401, next=target, error=str(e))
    out = RedirectResponse(target, 303)
    out.set_cookie(
        COOKIE,
        cookie,
        max_age=hub.settings.web_session_hours * 3600,
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
        path="/",
    )
    return out


@router.post("/sign-out")
def sign_out(
    request: Request, form: FormData = Depends(read_form), hub: Hub = Depends(get_hub)
) -> Response:
    accounts.sign_out(hub, request.cookies.get(COOKIE, ""))
    out = RedirectResponse("/", 303)
    out.delete_cookie(COOKIE, path="/")
    return out


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(
    request: Request,
    job_id: PathId,
    viewer: Viewer = Depends(get_viewer),
    hub: Hub = Depends(get_hub),
) -> HTMLResponse:
    job: dict[str, Any] = job_json(hub.jobs.get(job_id), viewer.actor)
    return render(request, viewer, "job.html", job=job)
