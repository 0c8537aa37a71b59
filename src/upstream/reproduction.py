"""Reproduction: run a report's revision on its prompt and variants, and judge the check.

A job (`reports.reproduce`) over a list of reports. Each revision is loaded once and
every input of its reports is generated in one batched pass with the reports'
generation settings (greedy, so a reproduction is exact). Results:

- `reproduced`: the check fails on at least one input (the rate says on how many);
- `not_reproduced`: the check passes on every input;
- `needs_check`: the report has no expectation to judge.

Outputs are stored per input, so they can be re-scored later without generating.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any

from pydantic import Field
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from upstream.access import Actor, require
from upstream.checks import parse_check
from upstream.db.schema import Report, ReportEvent, ReportReproduction, utcnow
from upstream.embeddings import embed  # loads its model only when a check needs it
from upstream.engines.base import GenRequest, GenResult
from upstream.errors import InvalidInput
from upstream.reports import REPRODUCE_JOB, content_hash, get_report
from upstream.shapes import Shape
from upstream.triage import OPEN_UNCONFIRMED, set_status

if TYPE_CHECKING:
    from upstream.hub import Hub
    from upstream.jobs import JobContext


def reproduce(hub: Hub, report_ids: list[int], progress: Any = None) -> dict[str, Any]:
    """Reproduce these reports; returns each one's status and rate."""
    from upstream.engines.hf import HFEngine

    with hub.session() as s:
        reports = list(
            s.scalars(
                select(Report)
                .where(Report.id.in_(report_ids))
                .options(selectinload(Report.variants), selectinload(Report.revision))
            )
        )
    by_revision: dict[int, list[Report]] = defaultdict(list)
    for r in reports:
        by_revision[r.revision_id].append(r)
    total = sum(len(r.variants) for r in reports)
    done = 0
    results: dict[int, dict[str, Any]] = {}
    for group in by_revision.values():
        engine = HFEngine.for_revision(hub, group[0].revision)
        inputs = [(r, v) for r in group for v in r.variants]
        requests = [
            GenRequest(
                messages=v.messages, max_new_tokens=int(r.settings.get("max_new_tokens", 256))
            )
            for r, v in inputs
        ]

        def step(_index: int, _result: GenResult) -> None:
            nonlocal done
            done += 1
            if progress:
                progress(done, total, "generating")

        outputs = engine.generate(requests, step)
        with hub.session() as s, s.begin():
            for r in group:
                report = s.get(Report, r.id)
                assert report is not None
                mine = [o for (rr, _), o in zip(inputs, outputs, strict=True) if rr.id == r.id]
                results[r.id] = _judge(s, report, [o.text for o in mine])
    return {"reports": results}


class JudgedOut(Shape):
    status: str = Field(description="the report's status after judging")
    result: str = Field(description="reproduced, not_reproduced or needs_check")
    rate: float | None = Field(description="share of its checked inputs failing")
    failing: int
    checked: int


class RescoredOut(Shape):
    reports: dict[int, JudgedOut] = Field(description="report id → how it was judged")


class ReproducingOut(Shape):
    report: int
    job: int = Field(description="the job reproducing it")


def _judge(
    session: Any, report: Report, outputs: list[str], generated: bool = True
) -> dict[str, Any]:
    """Score each input's output with its check; set the report's result. Freshly
    `generated` outputs are kept as one more reproduction in the report's history."""
    failing = checked = 0
    for variant, output in zip(report.variants, outputs, strict=True):
        variant.output = output
        spec = variant.expected or report.expected
        if spec is None:
            variant.passed, variant.score, variant.explanation = None, None, "no check"
            continue
        outcome = parse_check(spec).score(output, embed)
        variant.passed, variant.score = outcome.passed, outcome.score
        variant.explanation = outcome.explanation
        checked += 1
        failing += not outcome.passed
    if report.observed is None:
        report.observed = outputs[0]
    report.reproduced_at = utcnow()
    if checked == 0:
        result, report.reproduction_rate = "needs_check", None
    else:
        report.reproduction_rate = failing / checked
        result = "reproduced" if failing else "not_reproduced"
    if generated:
        report.reproductions.append(
            ReportReproduction(
                rate=report.reproduction_rate,
                outputs=[
                    {
                        "position": v.position,
                        "output": v.output,
                        "passed": v.passed,
                        "explanation": v.explanation,
                    }
                    for v in report.variants
                ],
            )
        )
    if report.status in OPEN_UNCONFIRMED and report.status != result:
        set_status(
            session,
            report,
            result,
            "reproduction",
            f"failed on {failing} of {checked} checked inputs" if checked else "no check",
        )
    return {
        "status": report.status,
        "result": result,
        "rate": report.reproduction_rate,
        "failing": failing,
        "checked": checked,
    }


def _set_check(session: Any, report: Report, actor: str, check: dict[str, Any]) -> None:
    """Replace a report's check, recorded as an event; its content hash follows."""
    session.add(
        ReportEvent(
            report_id=report.id,
            actor=actor,
            kind="check",
            note=f"check changed from {report.expected} to {check}",
        )
    )
    report.expected = check
    report.content_hash = content_hash(
        report.model.name,
        report.revision.hash,
        report.messages,
        [v.messages for v in report.variants[1:]],
        check,
    )


class ExpectedOut(Shape):
    report: int
    status: str = Field(description="the report's status now")
    judged: JudgedOut | None = Field(description="its stored outputs judged by the new check")
    job: int | None = Field(description="the reproduction queued, when it had no outputs yet")


def expect(hub: Hub, actor: Actor, report_id: int, check: dict[str, Any]) -> dict[str, Any]:
    """Give a report its check (a maintainer, or its reporter): the outputs it has are
    judged at once; one not reproduced yet is queued for reproduction."""
    parse_check(check, "check")
    with hub.session() as s, s.begin():
        report = get_report(s, report_id)
        require(actor, "reports.expect", report.model.name, owner=report.reporter)
        outputs = [v.output for v in report.variants]
        _set_check(s, report, actor.name, check)
        if all(o is not None for o in outputs):
            judged = _judge(s, report, [o or "" for o in outputs], generated=False)
            return {"report": report_id, "status": report.status, "judged": judged, "job": None}
        job = hub.jobs.enqueue_in(s, REPRODUCE_JOB, {"reports": [report_id]}, owner=actor)
        return {"report": report_id, "status": report.status, "judged": None, "job": job}


JOB_KIND = REPRODUCE_JOB


def queue_reproduction(hub: Hub, actor: Actor, report_ids: list[int]) -> int:
    """Queue reproducing these stored reports again (after their check or model changed)."""
    if not report_ids:
        raise InvalidInput("name at least one report to reproduce")
    with hub.session() as s:
        for rid in report_ids:
            require(actor, "reports.reproduce", get_report(s, rid).model.name)
    return hub.jobs.enqueue(JOB_KIND, {"reports": report_ids}, owner=actor)


def run_reproduce_job(ctx: JobContext) -> dict[str, Any]:
    """Job handler for `reports.reproduce`."""
    return reproduce(ctx.hub, list(ctx.args["reports"]), ctx.progress)


def rescore(
    hub: Hub, report_ids: list[int], actor: Actor, new_check: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Judge stored outputs again, optionally under a new check; nothing is generated."""
    if new_check is not None:
        parse_check(new_check, "expected")
    results: dict[int, dict[str, Any]] = {}
    with hub.session() as s, s.begin():
        for rid in report_ids:
            report = get_report(s, rid)
            require(actor, "reports.rescore", report.model.name)
            outputs = [v.output for v in report.variants]
            if any(o is None for o in outputs):
                raise InvalidInput(
                    f"report {rid} has not been reproduced yet; run "
                    "`upstream reports reproduce` first"
                )
            if new_check is not None:
                _set_check(s, report, actor.name, new_check)
            results[rid] = _judge(s, report, [o or "" for o in outputs], generated=False)
    return {"reports": results}
