"""The credits ledger, on rows built directly: no model is needed to score who helped."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from upstream.credits import (
    CONTRIBUTOR_MAX_CASES,
    CONTRIBUTOR_PER_CASE,
    POINTS,
    credits_table,
    ledger,
    record_release_credits,
)
from upstream.db.schema import (
    Contribution,
    ContributionEvent,
    CreditEntry,
    Model,
    Release,
    Report,
    ReportConfirmation,
    ReportEvent,
    Revision,
)
from upstream.errors import InvalidInput, NotFound
from upstream.hub import Hub


@pytest.fixture
def s(hub: Hub) -> Iterator[Session]:
    with hub.session() as session:
        yield session


def model(s: Session, name: str = "m") -> Model:
    m = Model(name=name)
    s.add(m)
    s.flush()
    s.add(
        Revision(
            model_id=m.id,
            hash="a" * 64,
            manifest={"files": {}},
            architecture="LlamaForCausalLM",
        )
    )
    s.flush()
    return m


def report(s: Session, m: Model, reporter: str, status: str = "confirmed") -> Report:
    n = s.scalar(select(func.count()).select_from(Report)) or 0
    r = Report(
        model_id=m.id,
        revision_id=m.revisions[0].id,
        messages=[{"role": "user", "content": f"question {n}"}],
        reporter=reporter,
        status=status,
        content_hash=f"{n:064d}",
    )
    s.add(r)
    s.flush()
    return r


def confirmed_by(s: Session, r: Report, *users: str, maintainer: str | None = None) -> None:
    for u in users:
        s.add(ReportConfirmation(report_id=r.id, user=u))
    if maintainer is not None:
        s.add(
            ReportEvent(
                report_id=r.id,
                actor=maintainer,
                kind="status",
                from_status="reproduced",
                to_status="confirmed",
            )
        )
    s.flush()


def contribution(s: Session, m: Model, author: str, fixes: list[int], *reviews: str) -> int:
    c = Contribution(
        model_id=m.id,
        revision_id=m.revisions[0].id,
        author=author,
        title="a fix",
        kind="dataset",
        fixes=fixes,
        state="merged",
    )
    s.add(c)
    s.flush()
    for review in reviews:  # "actor:kind"
        actor, kind = review.split(":")
        s.add(ContributionEvent(contribution_id=c.id, actor=actor, kind=kind))
    s.add(ContributionEvent(contribution_id=c.id, actor="ci", kind="checked", to_state="passed"))
    s.flush()
    return c.id


def release(s: Session, m: Model, contributions: list[int]) -> Release:
    r = Release(
        model_id=m.id,
        base_revision_id=m.revisions[0].id,
        method="linear",
        contributions=contributions,
        author="maia",
        state="released",
    )
    s.add(r)
    s.flush()
    return r


def by_role(entries: list[CreditEntry]) -> dict[str, set[tuple[str, str]]]:
    out: dict[str, set[tuple[str, str]]] = {}
    for e in entries:
        out.setdefault(e.role, set()).add((e.user, e.subject))
    return out


def test_every_role_is_credited(s: Session) -> None:
    m = model(s)
    fixed = report(s, m, "ana", status="fixed")
    confirmed_by(s, fixed, "bo", "cy", "ana", maintainer="maia")  # ana: her own, not counted
    other = report(s, m, "dee")  # confirmed, not fixed: reporter credit only
    report(s, m, "eve", status="new")  # unconfirmed: nothing
    report(s, m, "fay", status="wontfix")
    cid = contribution(
        s, m, "gil", [fixed.id], "maia:overridden", "maia:approved", "rex:rejected", "gil:approved"
    )
    rel = release(s, m, [cid])
    retention = {cid: {"fixed_alone": 4, "retained": 3, "retention": 0.75}}

    entries = record_release_credits(s, rel, [fixed.id], [cid], retention)

    roles = by_role(entries)
    assert roles["reporter"] == {("ana", f"report:{fixed.id}"), ("dee", f"report:{other.id}")}
    assert roles["fixed"] == {("ana", f"report:{fixed.id}")}
    assert roles["confirmer"] == {(u, f"report:{fixed.id}") for u in ("bo", "cy", "maia")}
    assert roles["contributor"] == {("gil", f"contribution:{cid}")}
    assert roles["reviewer"] == {("maia", f"contribution:{cid}"), ("rex", f"contribution:{cid}")}
    points = {(e.user, e.role): e.points for e in entries}
    assert points[("ana", "reporter")] == POINTS["reporter"]
    assert points[("ana", "fixed")] == POINTS["fixed"]
    assert points[("bo", "confirmer")] == POINTS["confirmer"]
    assert points[("gil", "contributor")] == POINTS["contributor"] + 3 * CONTRIBUTOR_PER_CASE
    assert points[("maia", "reviewer")] == POINTS["reviewer"]  # two events, one review
    note = next(e.note for e in entries if e.role == "contributor")
    assert "3 retained" in note and "75%" in note and str(fixed.id) in note
    assert all(e.model_id == m.id and e.release_id == rel.id for e in entries)


def test_contributor_points_are_capped_and_need_no_retention(s: Session) -> None:
    m = model(s)
    big = contribution(s, m, "gil", [])
    unmeasured = contribution(s, m, "hal", [])
    rel = release(s, m, [big, unmeasured])
    retention = {big: {"fixed_alone": 500, "retained": 500, "retention": 1.0}}

    entries = record_release_credits(s, rel, [], [big, unmeasured], retention)

    points = {e.user: e.points for e in entries if e.role == "contributor"}
    assert points["gil"] == POINTS["contributor"] + CONTRIBUTOR_MAX_CASES * CONTRIBUTOR_PER_CASE
    assert points["hal"] == POINTS["contributor"]


def test_a_report_earns_its_reporter_credit_once(s: Session) -> None:
    m = model(s)
    early = report(s, m, "ana")
    first = release(s, m, [])
    record_release_credits(s, first, [], [], {})
    late = report(s, m, "ana")
    early.status = "fixed"
    confirmed_by(s, early, "bo")
    second = release(s, m, [])

    entries = record_release_credits(s, second, [early.id], [], {})

    roles = by_role(entries)
    assert roles["reporter"] == {("ana", f"report:{late.id}")}  # early was credited in v1
    assert roles["fixed"] == {("ana", f"report:{early.id}")}  # fixing it is new
    assert roles["confirmer"] == {("bo", f"report:{early.id}")}


def test_a_report_fixed_again_is_not_paid_twice(s: Session) -> None:
    m = model(s)
    r = report(s, m, "ana", status="fixed")
    confirmed_by(s, r, "bo")
    record_release_credits(s, release(s, m, []), [r.id], [], {})
    # a regression reopens it (fixed → confirmed): not a new confirmation
    s.add(
        ReportEvent(
            report_id=r.id,
            actor="release",
            kind="status",
            from_status="fixed",
            to_status="confirmed",
        )
    )
    again = record_release_credits(s, release(s, m, []), [r.id], [], {})
    assert again == []


def test_recording_twice_adds_nothing(s: Session) -> None:
    m = model(s)
    r = report(s, m, "ana", status="fixed")
    confirmed_by(s, r, "bo")
    cid = contribution(s, m, "gil", [r.id], "maia:approved")
    rel = release(s, m, [cid])
    args = ([r.id], [cid], {cid: {"fixed_alone": 1, "retained": 1, "retention": 1.0}})

    first = record_release_credits(s, rel, *args)
    second = record_release_credits(s, rel, *args)

    assert [e.id for e in second] == [e.id for e in first]
    assert len(first) == 5  # reporter, fixed, confirmer, contributor, reviewer
    count = s.scalar(select(func.count()).select_from(CreditEntry))
    assert count == 5
    assert [e["role"] for e in ledger(s, rel.id)] == [e.role for e in first]


def test_inputs_of_another_model_or_unknown_are_refused(s: Session) -> None:
    m, other = model(s), model(s, "other")
    foreign = report(s, other, "ana")
    rel = release(s, m, [])
    with pytest.raises(InvalidInput, match="another model"):
        record_release_credits(s, rel, [foreign.id], [], {})
    with pytest.raises(NotFound, match="no report 999"):
        record_release_credits(s, rel, [999], [], {})
    with pytest.raises(NotFound, match="no contribution 999"):
        record_release_credits(s, rel, [], [999], {})
    with pytest.raises(NotFound, match="no release 999"):
        ledger(s, 999)


def test_credits_table_adds_up_per_user_and_filters_by_model(s: Session) -> None:
    m, other = model(s), model(s, "other")
    r1 = report(s, m, "ana", status="fixed")
    confirmed_by(s, r1, "bo")
    cid = contribution(s, m, "bo", [r1.id], "maia:approved")
    record_release_credits(
        s, release(s, m, [cid]), [r1.id], [cid], {cid: {"fixed_alone": 2, "retained": 2}}
    )
    report(s, m, "ana")
    record_release_credits(s, release(s, m, []), [], [], {})
    report(s, other, "zed")
    record_release_credits(s, release(s, other, []), [], [], {})

    table = credits_table(s)

    rows = {row["user"]: row for row in table}
    assert rows["ana"]["points"] == 2 * POINTS["reporter"] + POINTS["fixed"]
    assert rows["ana"]["roles"] == {"reporter": 2, "fixed": 1}
    assert rows["ana"]["releases"] == 2
    assert rows["bo"]["points"] == POINTS["confirmer"] + POINTS["contributor"] + 2
    assert rows["bo"]["roles"] == {"confirmer": 1, "contributor": 1}
    assert rows["maia"]["roles"] == {"reviewer": 1}
    assert [row["points"] for row in table] == sorted(
        (row["points"] for row in table), reverse=True
    )
    assert rows["zed"]["roles"] == {"reporter": 1}

    only_m = credits_table(s, "m")
    assert {row["user"] for row in only_m} == {"ana", "bo", "maia"}
    assert credits_table(s, "other") == [
        {"user": "zed", "points": POINTS["reporter"], "roles": {"reporter": 1}, "releases": 1}
    ]
    with pytest.raises(NotFound, match="unknown model"):
        credits_table(s, "nope")


def test_ties_are_sorted_by_user(s: Session) -> None:
    m = model(s)
    for user in ("cy", "ab", "bo"):
        report(s, m, user)
    record_release_credits(s, release(s, m, []), [], [], {})
    assert [row["user"] for row in credits_table(s, "m")] == ["ab", "bo", "cy"]
