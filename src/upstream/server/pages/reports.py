"""The report tracker: the list, a report's page with its triage actions, and the
filing form with its check builder."""

from __future__ import annotations

import json
import math
import re
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, Response
from starlette.datastructures import FormData

from upstream import registry, serving
from upstream import reports as domain
from upstream.errors import InvalidInput, UpstreamError
from upstream.hub import Hub
from upstream.reproduction import expect, queue_reproduction
from upstream.server.deps import MAX_ID, PathId, get_hub
from upstream.server.pages.web import (
    Pager,
    Viewer,
    back,
    field,
    get_viewer,
    pager,
    read_form,
    render,
    whole,
)
from upstream.triage import OPEN_UNCONFIRMED, close, confirm

router = APIRouter(include_in_schema=False)

# The check builder's kinds, and the fields each one reads from the form.
BUILDER = {
    "exact": "the whole answer is this text",
    "one_of": "the whole answer is one of these (one per line)",
    "contains": "the answer contains these (one per line)",
    "not_contains": "the answer contains none of these (one per line)",
    "number": "the answer's number is this",
    "max_words": "at most this many words",
    "similar": "means the same as this text",
    "regex": "matches this regular expression",
}
LISTS = {"one_of", "contains", "not_contains"}


def built_check(form: FormData) -> dict[str, Any] | None:
    """The check spec the builder's fields describe, or None when no kind is picked;
    InvalidInput naming the field that cannot make one."""
    kind = field(form, "check_type", 40)
    if not kind:
        return None
    if kind not in BUILDER:
        raise InvalidInput(f"check type {kind!r}: allowed {', '.join(BUILDER)}", "check_type")
    text = field(form, "check_value", 10_000)
    if not text:
        raise InvalidInput(f"a {kind} check needs its value", field="check_value")
    spec: dict[str, Any] = {"type": kind}
    if kind in LISTS:
        spec["values"] = [line.strip() for line in text.splitlines() if line.strip()]
    elif kind == "max_words":
        if not re.fullmatch(r"[0-9]{1,6}", text):
            raise InvalidInput(f"{text!r}: max_words takes a whole number", field="check_value")
        spec["value"] = int(text)
    elif kind == "number":
        try:
            number = float(text)
        except ValueError:
            number = math.nan
        if not math.isfinite(number) or abs(number) > 1e15:
            raise InvalidInput(f"{text!r} is not a number", field="check_value") from None
        spec["value"] = int(number) if number.is_integer() else number
    elif kind == "regex":
        spec["pattern"] = text
    else:
        spec["value"] = text
    if form.get("check_case_sensitive"):
        spec["case_sensitive"] = True
    return spec


def _filed_from(form: FormData) -> domain.ReportIn:
    """The report the filing form describes (the same model the API validates)."""
    tags = [t.strip() for t in field(form, "tags", 1000).split(",") if t.strip()]
    data: dict[str, Any] = {
        "model": field(form, "model", 200),
        "prompt": field(form, "prompt", 100_000),
        "expected": built_check(form),
        "tags": tags,
        "severity": field(form, "severity", 20) or "medium",
        "description": field(form, "description", 10_000),
        "consent": bool(form.get("consent")),
    }
    if not data["prompt"]:
        raise InvalidInput("the prompt is empty: what did you ask the model?", field="prompt")
    observed = field(form, "observed", 100_000)
    if observed:
        data["observed"] = observed
    return domain.parse_report(data, "report")


@router.get("/reports", response_class=HTMLResponse)
def report_list(
    request: Request,
    model: str = Query("", max_length=200),
    status: str = Query("", max_length=20),
    tag: str = Query("", max_length=50),
    reporter: str = Query("", max_length=100),
    cluster: int | None = Query(None, ge=1, le=MAX_ID),
    q: str = Query("", max_length=200),
    page: Pager = Depends(pager),
    viewer: Viewer = Depends(get_viewer),
    hub: Hub = Depends(get_hub),
) -> HTMLResponse:
    query = domain.ReportQuery(
        model or None,
        status or None,
        tag or None,
        None,
        q or None,
        page.size + 1,
        page.offset,
        viewer.actor,
        reporter or None,
        cluster,
    )
    with hub.session() as s:
        found = [domain.report_summary(r) for r in domain.list_reports(s, query)]
        models = [m.name for m in registry.list_models(s)]
    return render(
        request,
        viewer,
        "reports.html",
        reports=found[: page.size],
        pages=page.links(request, len(found)),
        models=models,
        statuses=domain.STATUSES,
        filters={"model": model, "status": status, "tag": tag, "reporter": reporter, "q": q},
        cluster=cluster,
    )


def _form_page(
    request: Request,
    viewer: Viewer,
    hub: Hub,
    values: dict[str, Any],
    status: int = 200,
    **extra: Any,
) -> HTMLResponse:
    with hub.session() as s:
        models = [m.name for m in registry.list_models(s)]
    return render(
        request,
        viewer,
        "report_new.html",
        status,
        models=models,
        kinds=BUILDER,
        values=values,
        severities=domain.SEVERITIES,
        **extra,
    )


@router.get("/reports/new", response_class=HTMLResponse)
def new_report(
    request: Request,
    model: str = Query("", max_length=200),
    viewer: Viewer = Depends(get_viewer),
    hub: Hub = Depends(get_hub),
) -> HTMLResponse:
    return _form_page(request, viewer, hub, {"model": model, "consent": "on"})


@router.post("/reports/new", response_class=HTMLResponse)
def file_report(
    request: Request,
    form: FormData = Depends(read_form),
    viewer: Viewer = Depends(get_viewer),
    hub: Hub = Depends(get_hub),
) -> Response:
    """File the form's report, or (the Preview button) show the model's answer and the
    check's verdict on it without filing; a field that cannot be taken is shown beside
    the form, which keeps what was typed."""
    values = {k: v for k, v in form.items() if isinstance(v, str) and k != "csrf"}
    try:
        item = _filed_from(form)
        if form.get("action") == "preview":
            shown = serving.preview(hub, viewer.actor, item)
            return _form_page(request, viewer, hub, values, preview=shown)
        submission = domain.submit_one(hub, item, viewer.actor, "web")
    except UpstreamError as e:
        return _form_page(request, viewer, hub, values, e.status_code, error=str(e), at=e.field)
    [filed] = submission.filed
    note = "Filed; reproducing it now." if filed.created else "The same report was filed before."
    return back(f"/reports/{filed.id}", note)


@router.get("/reports/{report_id}", response_class=HTMLResponse)
def report_page(
    request: Request,
    report_id: PathId,
    viewer: Viewer = Depends(get_viewer),
    hub: Hub = Depends(get_hub),
) -> HTMLResponse:
    with hub.session() as s:
        report = domain.get_report(s, report_id, viewer.actor)
        detail = domain.report_detail(s, report)
        members = domain.visible_ids(
            s, domain.cluster_ids(s, report_id) - {report_id}, viewer.actor
        )
        job = next(
            (
                j.id
                for j in hub.jobs.list("running", 20) + hub.jobs.list("queued", 20)
                if j.kind == domain.REPRODUCE_JOB and report_id in j.args.get("reports", [])
            ),
            None,
        )
    model, owner, status = detail["model"], detail["reporter"], detail["status"]
    can = {
        "confirm": status in OPEN_UNCONFIRMED
        and (viewer.may("reports.triage", model) or viewer.may("reports.confirm", model, owner)),
        "close": viewer.may("reports.close", model, owner) and status not in domain.CLOSED,
        "reproduce": viewer.may("reports.reproduce", model),
        "expect": viewer.may("reports.expect", model, owner),
    }
    return render(
        request,
        viewer,
        "report.html",
        r=detail,
        cluster=members,
        job=job,
        can=can,
        kinds=BUILDER,
        check_text=json.dumps(detail["expected"]) if detail["expected"] else "",
    )


@router.post("/reports/{report_id}/confirm")
def confirm_report(
    report_id: PathId,
    form: FormData = Depends(read_form),
    viewer: Viewer = Depends(get_viewer),
    hub: Hub = Depends(get_hub),
) -> Response:
    out = confirm(hub, report_id, viewer.actor)
    return back(f"/reports/{report_id}", out.get("message") or f"Report {out['status']}.")


@router.post("/reports/{report_id}/close")
def close_report(
    report_id: PathId,
    form: FormData = Depends(read_form),
    viewer: Viewer = Depends(get_viewer),
    hub: Hub = Depends(get_hub),
) -> Response:
    duplicate = whole(form, "duplicate_of", 1, MAX_ID)
    close(hub, report_id, viewer.actor, field(form, "reason", 10_000), duplicate)
    return back(f"/reports/{report_id}", "Closed.")


@router.post("/reports/{report_id}/reproduce")
def reproduce_report(
    report_id: PathId,
    form: FormData = Depends(read_form),
    viewer: Viewer = Depends(get_viewer),
    hub: Hub = Depends(get_hub),
) -> Response:
    queue_reproduction(hub, viewer.actor, [report_id])
    return back(f"/reports/{report_id}", "Reproducing it again.")


@router.post("/reports/{report_id}/expect")
def expect_report(
    report_id: PathId,
    form: FormData = Depends(read_form),
    viewer: Viewer = Depends(get_viewer),
    hub: Hub = Depends(get_hub),
) -> Response:
    spec = built_check(form)
    if spec is None:
        raise InvalidInput("pick a check type", field="check_type")
    expect(hub, viewer.actor, report_id, spec)
    return back(f"/reports/{report_id}", "The check is set.")
