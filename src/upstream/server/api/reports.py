"""/api/reports: file, list, show, confirm, close, reproduce, rescore and give checks to
failure reports."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from upstream import reports as domain
from upstream.access import Actor
from upstream.hub import Hub
from upstream.reproduction import (
    ExpectedOut,
    ReproducingOut,
    RescoredOut,
    expect,
    queue_reproduction,
    rescore,
)
from upstream.server.body import StrictRoute
from upstream.server.deps import MAX_ID, BodyId, PathId, get_actor, get_hub
from upstream.shapes import Shape
from upstream.triage import TriageOut
from upstream.triage import close as close_report
from upstream.triage import confirm as confirm_report

router = APIRouter(tags=["reports"], route_class=StrictRoute)


class FiledOut(Shape):
    id: int = Field(description="the report (an existing one when the same content was filed)")
    created: bool = Field(description="false: the same content was reported; a filing counted")
    similar_to: int | None = Field(description="a likely duplicate among the open reports")
    distance: float | None = Field(description="its cosine distance")
    reproduction_job: int | None = Field(description="the job reproducing a new report")


@router.post("/reports", status_code=201, response_model=FiledOut)
def file_report(
    body: domain.ReportIn, actor: Actor = Depends(get_actor), hub: Hub = Depends(get_hub)
) -> dict[str, Any]:
    """File a report (the JSONL line format); its reproduction is queued as a job."""
    submission = domain.submit_one(hub, body, actor, "api")
    [filed] = submission.filed
    return {**filed.as_dict(), "reproduction_job": submission.job}


@router.get("/reports", response_model=domain.ReportList, response_model_exclude_unset=True)
def list_reports(
    model: str | None = None,
    status: str | None = None,
    tag: str | None = None,
    severity: str | None = None,
    text: str | None = None,
    clusters: bool = False,
    limit: int = Query(100, ge=1, le=1000),
    offset: int = Query(0, ge=0, le=MAX_ID),
    actor: Actor = Depends(get_actor),
    hub: Hub = Depends(get_hub),
) -> dict[str, Any]:
    """Reports matching the filters, newest first; or, with clusters, likely duplicates.
    Reports filed without consent, or behind held-out cases, only for their reporter and
    the model's maintainers."""
    with hub.session() as s:
        if clusters:
            everything = domain.ReportQuery(
                model, status, tag, severity, text, limit=1_000_000, viewer=actor
            )
            return {
                "clusters": domain.clusters(domain.list_reports(s, everything))[
                    offset : offset + limit
                ]
            }
        query = domain.ReportQuery(model, status, tag, severity, text, limit, offset, actor)
        return {"reports": [domain.report_summary(r) for r in domain.list_reports(s, query)]}


@router.get("/reports/{report_id}", response_model=domain.ReportDetail)
def show_report(
    report_id: PathId, actor: Actor = Depends(get_actor), hub: Hub = Depends(get_hub)
) -> dict[str, Any]:
    """The whole report: input, check, reproduction outputs, history (404 for one hidden
    from the caller, as for one that does not exist)."""
    with hub.session() as s:
        return domain.report_detail(s, domain.get_report(s, report_id, actor))


@router.post("/reports/{report_id}/confirm", response_model=TriageOut)
def confirm(
    report_id: PathId, actor: Actor = Depends(get_actor), hub: Hub = Depends(get_hub)
) -> dict[str, Any]:
    """Confirm (a maintainer) or add a confirmation (anyone but the reporter)."""
    return confirm_report(hub, report_id, actor)


class CloseRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field("", max_length=10_000)
    duplicate_of: BodyId | None = Field(None, description="close as a duplicate of this report")


@router.post("/reports/{report_id}/close", response_model=TriageOut)
def close(
    report_id: PathId,
    body: CloseRequest,
    actor: Actor = Depends(get_actor),
    hub: Hub = Depends(get_hub),
) -> dict[str, Any]:
    """Close as wontfix, or as a duplicate with {"duplicate_of": ID}."""
    return close_report(hub, report_id, actor, body.reason, body.duplicate_of)


@router.post("/reports/{report_id}/reproduce", status_code=202, response_model=ReproducingOut)
def reproduce(
    report_id: PathId, actor: Actor = Depends(get_actor), hub: Hub = Depends(get_hub)
) -> dict[str, Any]:
    """Queue reproducing the report again (a maintainer of its model); poll the job."""
    return {"report": report_id, "job": queue_reproduction(hub, actor, [report_id])}


class RescoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    expected: dict[str, Any] | None = Field(None, description="replace the report's check first")


@router.post("/reports/{report_id}/rescore", response_model=RescoredOut)
def rescore_report(
    report_id: PathId,
    body: RescoreRequest,
    actor: Actor = Depends(get_actor),
    hub: Hub = Depends(get_hub),
) -> dict[str, Any]:
    """Judge the stored outputs again, under a new check if given; nothing is generated."""
    return rescore(hub, [report_id], actor, body.expected)


class ExpectRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    check: dict[str, Any] = Field(description="a check spec, e.g. {'type': 'exact', 'value': 'x'}")


@router.post("/reports/{report_id}/expect", response_model=ExpectedOut)
def expect_report(
    report_id: PathId,
    body: ExpectRequest,
    actor: Actor = Depends(get_actor),
    hub: Hub = Depends(get_hub),
) -> dict[str, Any]:
    """Give a report its check (a maintainer, or its reporter): judged at once on the
    outputs it has, else its reproduction is queued."""
    return expect(hub, actor, report_id, body.check)
