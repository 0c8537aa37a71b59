"""Triage: the life of a report and who may move it.

    new -> reproduced | not_reproduced | needs_check     (set by reproduction)
        -> confirmed                                     (a maintainer, or N people)
        -> fixed (in revision R) | wontfix
    any open state -> duplicate (of another report), wontfix

A maintainer of the report's model confirms directly (`access`: reports.triage). Anyone
else who may file reports adds a confirmation;
a report is confirmed once `confirmations_needed` (3) different people other than its
reporter have confirmed it, the rule Dynabench uses for validated examples. Every change
is recorded as an event with who and when.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import Field
from sqlalchemy.orm import Session

from upstream.access import Actor, may, require
from upstream.db.schema import Report, ReportConfirmation, ReportEvent
from upstream.errors import Conflict, InvalidInput
from upstream.reports import get_report, touch
from upstream.shapes import Shape

if TYPE_CHECKING:
    from upstream.hub import Hub

OPEN_UNCONFIRMED = {"new", "reproduced", "not_reproduced", "needs_check"}
REPRODUCED = {"reproduced", "not_reproduced", "needs_check"}  # results of reproduction
TRANSITIONS: dict[str, set[str]] = {
    **{s: REPRODUCED | {"confirmed", "wontfix", "duplicate"} for s in OPEN_UNCONFIRMED},
    "confirmed": {"fixed", "wontfix", "duplicate"},
    "fixed": {"confirmed"},  # a regression reopens it
    "wontfix": {"confirmed"},
    "duplicate": set(),
}


def set_status(session: Session, report: Report, to: str, actor: str, note: str = "") -> None:
    """Move a report to `to`, refusing moves the lifecycle does not allow."""
    allowed = TRANSITIONS[report.status]
    if to not in allowed:
        options = ", ".join(sorted(allowed)) or "none (final)"
        raise Conflict(f"report {report.id} is {report.status}; it can move to: {options}")
    session.add(
        ReportEvent(
            report_id=report.id,
            actor=actor,
            kind="status",
            from_status=report.status,
            to_status=to,
            note=note,
        )
    )
    report.status = to
    touch(report)


def confirm(hub: Hub, report_id: int, actor: Actor) -> dict[str, Any]:
    """Confirm a report: directly for a maintainer, else one confirmation of those needed."""
    needed = hub.settings.confirmations_needed
    with hub.session() as s, s.begin():
        report = get_report(s, report_id)
        model = report.model.name
        direct = may(actor, "reports.triage", model)
        if not direct:  # one confirmation of those needed, never the reporter's own
            require(actor, "reports.confirm", model, owner=report.reporter)
        user = actor.name
        if report.status == "confirmed":
            return _state(report, needed, "already confirmed")
        if report.status not in OPEN_UNCONFIRMED:
            raise Conflict(
                f"report {report_id} is {report.status}; only open reports are confirmed"
            )
        if direct:
            set_status(s, report, "confirmed", user, "confirmed by a maintainer")
            return _state(report, needed, "confirmed by a maintainer")
        if any(c.user == user for c in report.confirmations):
            raise Conflict(f"report {report_id}: {user} has already confirmed it")
        report.confirmations.append(ReportConfirmation(user=user))
        s.add(
            ReportEvent(
                report_id=report.id,
                actor=user,
                kind="confirmation",
                note=f"{len(report.confirmations)} of {needed}",
            )
        )
        if len(report.confirmations) >= needed:
            set_status(
                s,
                report,
                "confirmed",
                user,
                f"{needed} people other than the reporter confirmed it",
            )
        touch(report)
        return _state(report, needed, "confirmation recorded")


def close(
    hub: Hub, report_id: int, actor: Actor, reason: str, duplicate_of: int | None = None
) -> dict[str, Any]:
    """Close a report as wontfix, or as a duplicate of another; maintainers and its reporter."""
    status = "wontfix" if duplicate_of is None else "duplicate"
    with hub.session() as s, s.begin():
        report = get_report(s, report_id)
        require(actor, "reports.close", report.model.name, owner=report.reporter)
        if duplicate_of is not None:
            original = get_report(s, duplicate_of)
            if original.id == report_id or original.model_id != report.model_id:
                raise InvalidInput(
                    f"report {report_id} can only duplicate another report of the same model"
                )
            if original.status == "duplicate":
                raise InvalidInput(
                    f"report {duplicate_of} is itself a duplicate of "
                    f"{original.duplicate_of_id}; point to that one"
                )
            report.duplicate_of_id = duplicate_of
        set_status(s, report, status, actor.name, reason)
        return _state(report, hub.settings.confirmations_needed, f"closed as {status}")


class TriageOut(Shape):
    """The answer to confirming or closing a report."""

    id: int
    status: str
    message: str = Field(description="what happened")
    confirmations: list[str] = Field(description="who confirmed it, besides maintainers")
    needed: int = Field(description="confirmations that make a report confirmed")


def _state(report: Report, needed: int, message: str) -> dict[str, Any]:
    return {
        "id": report.id,
        "status": report.status,
        "message": message,
        "confirmations": sorted(c.user for c in report.confirmations),
        "needed": needed,
    }


def mark_fixed(hub: Hub, report_id: int, revision_id: int, actor: str, note: str = "") -> None:
    """Record that a confirmed report passes in a new revision (called by releases)."""
    with hub.session() as s, s.begin():
        report = get_report(s, report_id)
        set_status(s, report, "fixed", actor, note or "passes in a new revision")
        report.fixed_in_revision_id = revision_id
