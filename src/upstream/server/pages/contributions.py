"""Contributions: the list, and a pull-request page with its checks and review actions."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, Response
from starlette.datastructures import FormData

from upstream import contributions as domain
from upstream import evals
from upstream.hub import Hub
from upstream.server.deps import PathId, get_hub
from upstream.server.pages.web import (
    Pager,
    Viewer,
    back,
    field,
    get_viewer,
    pager,
    read_form,
    render,
)

router = APIRouter(include_in_schema=False)
PREVIEW_LINES = 5  # of a dataset, shown on its page


@router.get("/contributions", response_class=HTMLResponse)
def contribution_list(
    request: Request,
    state: str = Query("", max_length=20),
    model: str = Query("", max_length=200),
    page: Pager = Depends(pager),
    viewer: Viewer = Depends(get_viewer),
    hub: Hub = Depends(get_hub),
) -> HTMLResponse:
    with hub.session() as s:
        found = [
            domain.contribution_summary(c)
            for c in domain.list_contributions(
                s, model or None, state or None, page.size + 1, page.offset
            )
        ]
    return render(
        request,
        viewer,
        "contributions.html",
        contributions=found[: page.size],
        pages=page.links(request, len(found)),
        states=domain.STATES,
        state=state,
    )


def _dataset_preview(hub: Hub, files: dict[str, Any]) -> list[Any]:
    """The first examples of a dataset contribution, as JSON values."""
    stored = files.get(domain.DATASET_FILE) if files else None
    if not stored:
        return []
    lines: list[Any] = []
    with hub.blobs.open(stored["sha256"]) as f:
        for raw in f:
            if len(lines) >= PREVIEW_LINES:
                break
            try:
                lines.append(json.loads(raw))
            except ValueError:
                lines.append(raw.decode("utf-8", "replace"))
    return lines


@router.get("/contributions/{contribution_id}", response_class=HTMLResponse)
def contribution_page(
    request: Request,
    contribution_id: PathId,
    viewer: Viewer = Depends(get_viewer),
    hub: Hub = Depends(get_hub),
) -> HTMLResponse:
    with hub.session() as s:
        c = domain.get_contribution(s, contribution_id)
        detail = domain.contribution_detail(c, viewer.actor)
        pushes = [
            {
                "number": p.number,
                "verdict": p.verdict,
                "at": p.created_at.isoformat(),
                "reasons": (p.checks or {}).get("reasons", []),
            }
            for p in reversed(c.pushes)
        ]
        changed: dict[str, list[dict[str, Any]]] = {}
        for result in (detail["checks"] or {}).get("suites", []):
            whole = result["splits"].get("all", {})
            how = {i: "knowledge lost" for i in whole.get("knowledge", {}).get("lost", [])}
            how |= {i: "broken" for i in whole.get("broken", [])}
            how |= {i: "fixed" for i in whole.get("fixed", [])}
            base = evals.run_cases(s, result["base_run"], viewer.actor, list(how))
            cand = evals.run_cases(s, result["candidate_run"], viewer.actor, list(how))
            changed[result["suite"]] = [
                {"how": how[i], "base": base[i], "candidate": cand[i]}
                for i in how
                if i in base and i in cand
            ]
    model, author = detail["model"], detail["author"]
    # a dataset can hold served conversations (contribute --from-feedback), which only the
    # model's maintainers read (feedback.read); others see how many examples there are
    own = viewer.signed_in and viewer.actor.name == author
    reads_data = detail["kind"] == "dataset" and (own or viewer.may("feedback.read", model))
    can = {
        "approve": viewer.may("contributions.approve", model, author)
        and detail["state"] in ("passed", "failed"),
        "reject": viewer.may("contributions.reject", model, author)
        and detail["state"] not in domain.FINAL,
        "check": viewer.may("contributions.check", model, author)
        and detail["state"] not in domain.FINAL,
        "close": viewer.may("contributions.close", model, author)
        and detail["state"] not in domain.FINAL,
    }
    return render(
        request,
        viewer,
        "contribution.html",
        c=detail,
        pushes=pushes,
        changed=changed,
        can=can,
        preview=_dataset_preview(hub, detail["files"]) if reads_data else [],
        job=detail["job"] if detail["state"] == "checking" else None,
    )


@router.post("/contributions/{contribution_id}/approve")
def approve(
    contribution_id: PathId,
    form: FormData = Depends(read_form),
    viewer: Viewer = Depends(get_viewer),
    hub: Hub = Depends(get_hub),
) -> Response:
    domain.approve(
        hub,
        contribution_id,
        viewer.actor,
        field(form, "comment", 20_000),
        field(form, "override", 20_000),
    )
    return back(f"/contributions/{contribution_id}", "Approved.")


@router.post("/contributions/{contribution_id}/reject")
def reject(
    contribution_id: PathId,
    form: FormData = Depends(read_form),
    viewer: Viewer = Depends(get_viewer),
    hub: Hub = Depends(get_hub),
) -> Response:
    domain.reject(hub, contribution_id, viewer.actor, field(form, "reason", 20_000))
    return back(f"/contributions/{contribution_id}", "Rejected.")


@router.post("/contributions/{contribution_id}/check")
def check(
    contribution_id: PathId,
    form: FormData = Depends(read_form),
    viewer: Viewer = Depends(get_viewer),
    hub: Hub = Depends(get_hub),
) -> Response:
    domain.queue_checks(hub, contribution_id, viewer.actor)
    return back(f"/contributions/{contribution_id}", "Checking it again.")


@router.post("/contributions/{contribution_id}/close")
def close(
    contribution_id: PathId,
    form: FormData = Depends(read_form),
    viewer: Viewer = Depends(get_viewer),
    hub: Hub = Depends(get_hub),
) -> Response:
    domain.close(hub, contribution_id, viewer.actor, field(form, "reason", 20_000))
    return back(f"/contributions/{contribution_id}", "Closed.")
