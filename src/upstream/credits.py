"""Credits: a ledger of who made each release better.

When a release is made, `record_release_credits` writes one `CreditEntry` per person
and deed: a confirmed report (reporter), a report the release fixed (fixed), a
confirmation of such a report (confirmer), a merged contribution (contributor), a
review of one (reviewer). The points per role and the reasons are in docs/credits.md;
`POINTS` is the single place they are set.

The ledger is append-only and idempotent per release: an entry is keyed by
(release, user, role, subject), and recording a release again adds only what is
missing. A report's deeds are credited once across releases: a report confirmed long
ago is credited at the first release after it, and a report fixed again after a
regression does not pay its reporter and confirmers a second time.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from upstream.db import rows_of_model
from upstream.db.schema import (
    Contribution,
    ContributionEvent,
    CreditEntry,
    Release,
    Report,
    ReportConfirmation,
    ReportEvent,
)
from upstream.errors import InvalidInput, NotFound
from upstream.registry import get_model
from upstream.shapes import Shape

POINTS: dict[str, float] = {
    "reporter": 2.0,  # a confirmed failure: a new benchmark case for everyone
    "fixed": 3.0,  # ... that a release fixed: the report changed the model
    "confirmer": 0.5,  # vouched for a report that turned out to be worth fixing
    "contributor": 5.0,  # a merged contribution; plus CONTRIBUTOR_PER_CASE per retained case
    "reviewer": 1.0,  # approved (or overrode a failed check of) a contribution that was merged
}
ROLES = tuple(POINTS)
# A merged contribution also earns this per retained case (a case it fixed on its own
# that the merged revision still passes), for at most CONTRIBUTOR_MAX_CASES cases, so
# one adapter cannot farm points from a heap of near-identical cases.
CONTRIBUTOR_PER_CASE = 1.0
CONTRIBUTOR_MAX_CASES = 20
CONFIRMED = ("confirmed", "fixed")
# A rejected contribution is never merged, so only these reviews of merged ones count.
REVIEW_KINDS = ("approved", "overridden")
# Report roles a report earns once across all releases.
ONCE_PER_REPORT = ("reporter", "fixed", "confirmer")


@dataclass(frozen=True)
class _Deed:
    user: str
    role: str
    points: float
    subject: str
    note: str

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.user, self.role, self.subject)


def record_release_credits(
    session: Session,
    release: Release,
    fixed_reports: Sequence[int],
    merged: Sequence[int],
    retention: dict[int, dict[str, Any]],
) -> list[CreditEntry]:
    """Write the credits of `release` (once) and return all its ledger entries.

    `fixed_reports`: ids of the reports this release fixed; `merged`: ids of the
    contributions it merged; `retention[contribution id]`: {"fixed_alone": cases it
    fixed on its own, "retained": of those, still fixed after the merge, "retention":
    retained / fixed_alone or None}. The caller commits.
    """
    fixed = _reports(session, release, fixed_reports)
    contributions = _contributions(session, release, merged)
    deeds = [
        *_reporter_deeds(session, release),
        *_fixed_deeds(fixed),
        *_confirmer_deeds(session, fixed),
        *_contributor_deeds(contributions, retention),
        *_reviewer_deeds(session, contributions),
    ]
    earlier = _credited_elsewhere(session, release.id)
    present = {
        (e.user, e.role, e.subject)
        for e in session.scalars(select(CreditEntry).where(CreditEntry.release_id == release.id))
    }
    for d in deeds:
        if d.key in present or (d.role in ONCE_PER_REPORT and d.key in earlier):
            continue
        present.add(d.key)
        session.add(
            CreditEntry(
                release_id=release.id,
                model_id=release.model_id,
                user=d.user,
                role=d.role,
                points=d.points,
                subject=d.subject,
                note=d.note,
            )
        )
    session.flush()
    return list(
        session.scalars(
            select(CreditEntry).where(CreditEntry.release_id == release.id).order_by(CreditEntry.id)
        )
    )


class CreditTotal(Shape):
    """One person's credits, summed."""

    user: str
    points: float
    roles: dict[str, int] = Field(description="role → how many entries of it")
    releases: int = Field(description="how many releases credit them")


class CreditTable(Shape):
    credits: list[CreditTotal] = Field(description="highest points first")


def credits_table(
    session: Session, model: str | None = None, release_id: int | None = None
) -> list[dict[str, Any]]:
    """Points per user, highest first: {"user", "points", "roles": {role: n}, "releases": n};
    over every release, one model's, or one release's."""
    q = select(CreditEntry)
    if release_id is not None:
        q = q.where(CreditEntry.release_id == release_id)
    if model is not None:
        q = q.where(CreditEntry.model_id == get_model(session, model.partition("@")[0]).id)
    points: dict[str, float] = defaultdict(float)
    roles: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    releases: dict[str, set[int]] = defaultdict(set)
    for e in session.scalars(q):
        points[e.user] += e.points
        roles[e.user][e.role] += 1
        releases[e.user].add(e.release_id)
    rows = [
        {
            "user": user,
            "points": round(total, 2),  # sums of halves and wholes: no float noise shown
            "roles": {r: roles[user][r] for r in ROLES if r in roles[user]},
            "releases": len(releases[user]),
        }
        for user, total in points.items()
    ]
    return sorted(rows, key=lambda r: (-r["points"], r["user"]))


def ledger(session: Session, release_id: int) -> list[dict[str, Any]]:
    """The credit entries of one release, in the order they were written."""
    if session.get(Release, release_id) is None:
        raise NotFound(f"no release {release_id}")
    entries = session.scalars(
        select(CreditEntry).where(CreditEntry.release_id == release_id).order_by(CreditEntry.id)
    )
    return [entry_dict(e) for e in entries]


class CreditEntryOut(Shape):
    """One line of the credits ledger."""

    id: int
    release: int
    user: str
    role: str = Field(description=", ".join(ROLES))
    points: float
    subject: str = Field(description='what earned it: "report:3", "contribution:2"')
    note: str
    created_at: str


def entry_dict(e: CreditEntry) -> dict[str, Any]:
    return {
        "id": e.id,
        "release": e.release_id,
        "user": e.user,
        "role": e.role,
        "points": e.points,
        "subject": e.subject,
        "note": e.note,
        "created_at": e.created_at.isoformat(),
    }


def contributor_points(retained: int) -> float:
    """A merged contribution's points: the base plus a capped amount per retained case."""
    return POINTS["contributor"] + CONTRIBUTOR_PER_CASE * min(
        max(retained, 0), CONTRIBUTOR_MAX_CASES
    )


# ---------------------------------------------------------------- deeds


def _reporter_deeds(session: Session, release: Release) -> list[_Deed]:
    reports = session.scalars(
        select(Report)
        .where(Report.model_id == release.model_id, Report.status.in_(CONFIRMED))
        .order_by(Report.id)
    )
    return [
        _Deed(r.reporter, "reporter", POINTS["reporter"], f"report:{r.id}", f"{r.status} report")
        for r in reports
    ]


def _fixed_deeds(fixed: list[Report]) -> list[_Deed]:
    return [
        _Deed(r.reporter, "fixed", POINTS["fixed"], f"report:{r.id}", "fixed by this release")
        for r in fixed
    ]


def _confirmer_deeds(session: Session, fixed: list[Report]) -> list[_Deed]:
    """People who confirmed a fixed report: confirmations, and a maintainer's direct move."""
    deeds = []
    for r in fixed:
        users = set(
            session.scalars(
                select(ReportConfirmation.user).where(ReportConfirmation.report_id == r.id)
            )
        )
        # The move to confirmed is by a maintainer, or by the last of the confirmers (then
        # already in `users`). A move back from fixed is a reopened regression, not a
        # confirmation of the finding.
        users |= set(
            session.scalars(
                select(ReportEvent.actor).where(
                    ReportEvent.report_id == r.id,
                    ReportEvent.to_status == "confirmed",
                    ReportEvent.from_status != "fixed",
                )
            )
        )
        users.discard(r.reporter)
        deeds += [
            _Deed(u, "confirmer", POINTS["confirmer"], f"report:{r.id}", "confirmed a fixed report")
            for u in sorted(users)
        ]
    return deeds


def _contributor_deeds(
    contributions: list[Contribution], retention: dict[int, dict[str, Any]]
) -> list[_Deed]:
    deeds = []
    for c in contributions:
        kept = retention.get(c.id)
        fixes = ", ".join(map(str, c.fixes))
        note = f"fixes report(s) {fixes}; " if fixes else ""
        if kept is None:
            retained, note = 0, note + "retention not measured"
        else:
            retained = int(kept.get("retained") or 0)
            alone = int(kept.get("fixed_alone") or 0)
            rate = kept.get("retention")
            share = f" ({rate:.0%})" if isinstance(rate, int | float) else ""
            note += f"fixed {alone} case(s) alone, {retained} retained after the merge{share}"
        deeds.append(
            _Deed(
                c.author, "contributor", contributor_points(retained), f"contribution:{c.id}", note
            )
        )
    return deeds


def _reviewer_deeds(session: Session, contributions: list[Contribution]) -> list[_Deed]:
    deeds = []
    for c in contributions:
        kinds: dict[str, list[str]] = defaultdict(list)
        for e in session.scalars(
            select(ContributionEvent)
            .where(
                ContributionEvent.contribution_id == c.id,
                ContributionEvent.kind.in_(REVIEW_KINDS),
            )
            .order_by(ContributionEvent.id)
        ):
            if e.actor != c.author and e.kind not in kinds[e.actor]:
                kinds[e.actor].append(e.kind)
        deeds += [
            _Deed(u, "reviewer", POINTS["reviewer"], f"contribution:{c.id}", ", ".join(k))
            for u, k in sorted(kinds.items())
        ]
    return deeds


# ---------------------------------------------------------------- internals


def _credited_elsewhere(session: Session, release_id: int) -> set[tuple[str, str, str]]:
    """(user, role, subject) of the report roles already credited by another release."""
    rows = session.execute(
        select(CreditEntry.user, CreditEntry.role, CreditEntry.subject).where(
            CreditEntry.release_id != release_id, CreditEntry.role.in_(ONCE_PER_REPORT)
        )
    )
    return {(u, r, s) for u, r, s in rows}


def _reports(session: Session, release: Release, ids: Sequence[int]) -> list[Report]:
    wanted = sorted(set(ids))
    found, other = rows_of_model(
        session, Report, wanted, release.model_id, "fixed reports: no report"
    )
    if other:
        raise InvalidInput(
            f"fixed reports: report(s) {', '.join(map(str, other))} are of another model "
            f"than release {release.id}"
        )
    _refuse_unless(found, wanted, "fixed", "fixed reports: report")
    return [found[i] for i in wanted]


def _contributions(session: Session, release: Release, ids: Sequence[int]) -> list[Contribution]:
    wanted = list(dict.fromkeys(ids))  # release order, no repeats
    found, other = rows_of_model(
        session, Contribution, wanted, release.model_id, "merged contributions: no contribution"
    )
    if other:
        raise InvalidInput(
            f"merged contributions: contribution(s) {', '.join(map(str, other))} are of "
            f"another model than release {release.id}"
        )
    _refuse_unless(found, wanted, "merged", "merged contributions: contribution")
    return [found[i] for i in wanted]


def _refuse_unless(found: dict[int, Any], ids: list[int], state: str, what: str) -> None:
    """Only what the release did is credited: a report it fixed, a contribution it merged."""
    for i in ids:
        row = found[i]
        now = row.status if isinstance(row, Report) else row.state
        if now != state:
            raise InvalidInput(f"{what} {i} is {now}, not {state}; it earns no credit")
