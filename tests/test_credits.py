"""The credits ledger, without a model: who helped is scored from the events of the code.

Models, revisions, reports and contributions are rows built here; every event the
ledger reads (a confirmation, a status move, a check's verdict, an approval, an
override, a merge) is made by the domain function that makes it in use
(`triage.confirm`, `triage.set_status`, `contributions.set_state`, `approve`), with the
actor the release uses.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tests.people import person
from upstream import contributions as prs
from upstream import triage
from upstream.access import Actor
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
    ContributionPush,
    CreditEntry,
    Model,
    Release,
    Report,
    Revision,
)
from upstream.errors import Conflict, Forbidden, InvalidInput, NotFound
from upstream.hub import Hub
from upstream.releases import ACTOR

MAINTAINERS = ("maia", "rex")


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    """Two maintainers; two confirmations by others confirm a report."""
    h = Hub.open(tmp_path / "home", confirmations_needed=2)
    for name in MAINTAINERS:
        person(h, name, "maintainer")
    yield h
    h.close()


def who(hub: Hub, name: str) -> Actor:
    """The account `name` acts as: a maintainer of MAINTAINERS, else a contributor."""
    return person(hub, name, "maintainer" if name in MAINTAINERS else "contributor")


def model(hub: Hub, name: str = "m") -> int:
    with hub.session() as s, s.begin():
        m = Model(name=name)
        s.add(m)
        s.flush()
        s.add(
            Revision(
                model_id=m.id,
                hash=name[0] * 64,
                manifest={"files": {}},
                architecture="LlamaForCausalLM",
            )
        )
        return m.id


def base_revision(s: Session, model_id: int) -> int:
    """The id of the model's one revision (made by `model`)."""
    m = s.get(Model, model_id)
    assert m is not None
    return m.revisions[0].id


def report(hub: Hub, model_id: int, reporter: str, *confirmers: str) -> int:
    """A reproduced report, then confirmed by each of `confirmers` in turn."""
    with hub.session() as s, s.begin():
        n = s.scalar(select(func.count()).select_from(Report)) or 0
        r = Report(
            model_id=model_id,
            revision_id=base_revision(s, model_id),
            messages=[{"role": "user", "content": f"question {n}"}],
            reporter=reporter,
            status="reproduced",
            content_hash=f"{n:064d}",
        )
        s.add(r)
        s.flush()
        rid = r.id
    for user in confirmers:
        triage.confirm(hub, rid, who(hub, user))
    return rid


def move(hub: Hub, rid: int, to: str, note: str) -> None:
    """A status move as a release makes it (fixed in it, or failing again in it)."""
    with hub.session() as s, s.begin():
        r = s.get(Report, rid)
        assert r is not None
        triage.set_status(s, r, to, ACTOR, note)


def contribution(hub: Hub, model_id: int, author: str, fixes: list[int], verdict: str) -> int:
    """An open contribution with one push, which the CI then judged `verdict`."""
    with hub.session() as s, s.begin():
        c = Contribution(
            model_id=model_id,
            revision_id=base_revision(s, model_id),
            author=author,
            title="a fix",
            kind="dataset",
            fixes=fixes,
        )
        s.add(c)
        s.flush()
        s.add(ContributionPush(contribution_id=c.id, number=1, files={}, verdict=verdict))
        s.flush()
        prs.set_state(s, c, verdict, "ci", "push 1")
        return c.id


def merge(hub: Hub, cid: int) -> None:
    with hub.session() as s, s.begin():
        prs.set_state(s, prs.get_contribution(s, cid), "merged", ACTOR, "release v2")


def release(hub: Hub, model_id: int, contributions: Sequence[int] = ()) -> int:
    with hub.session() as s, s.begin():
        r = Release(
            model_id=model_id,
            base_revision_id=base_revision(s, model_id),
            method="linear",
            contributions=list(contributions),
            author="maia",
            state="released",
        )
        s.add(r)
        s.flush()
        return r.id


def record(
    hub: Hub,
    release_id: int,
    fixed: Sequence[int] = (),
    merged: Sequence[int] = (),
    retention: dict[int, dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Record a release's credits as `_ship` does; its entries as plain dicts."""
    with hub.session() as s, s.begin():
        rel = s.get(Release, release_id)
        assert rel is not None
        entries = record_release_credits(s, rel, list(fixed), list(merged), retention or {})
        return [_entry(e) for e in entries]


def _entry(e: CreditEntry) -> dict[str, Any]:
    keys = ("id", "user", "role", "subject", "points", "note", "model_id", "release_id")
    return {k: getattr(e, k) for k in keys}


def by_role(entries: list[dict[str, Any]]) -> dict[str, set[tuple[str, str]]]:
    out: dict[str, set[tuple[str, str]]] = {}
    for e in entries:
        out.setdefault(e["role"], set()).add((e["user"], e["subject"]))
    return out


def test_every_role_is_credited(hub: Hub) -> None:
    m = model(hub)
    fixed = report(hub, m, "ana", "bo")
    with pytest.raises(Forbidden, match="ana may not confirm their own report"):
        triage.confirm(hub, fixed, who(hub, "ana"))  # nobody confirms their own report
    triage.confirm(hub, fixed, who(hub, "cy"))  # the second of two others: confirmed
    move(hub, fixed, "fixed", "passes in release 1")
    other = report(hub, m, "dee", "maia")  # a maintainer confirms: reporter credit only
    report(hub, m, "eve", "bo")  # one confirmation of two: unconfirmed, nothing
    closed = report(hub, m, "fay")
    triage.close(hub, closed, who(hub, "maia"), "not a bug")
    cid = contribution(hub, m, "gil", [fixed], "failed")
    with pytest.raises(Forbidden, match="only a maintainer of m may approve"):
        prs.approve(hub, cid, who(hub, "bo"), override="looks fine to me")
    with pytest.raises(Forbidden, match="gil may not approve their own work"):
        prs.approve(hub, cid, who(hub, "gil"), override="mine")
    prs.approve(
        hub, cid, who(hub, "maia"), override="the guard case is flaky"
    )  # overridden, approved
    merge(hub, cid)
    rel = release(hub, m, [cid])
    retention = {cid: {"fixed_alone": 4, "retained": 3, "retention": 0.75}}

    entries = record(hub, rel, [fixed], [cid], retention)

    roles = by_role(entries)
    assert roles == {
        "reporter": {("ana", f"report:{fixed}"), ("dee", f"report:{other}")},
        "fixed": {("ana", f"report:{fixed}")},
        "confirmer": {("bo", f"report:{fixed}"), ("cy", f"report:{fixed}")},
        "contributor": {("gil", f"contribution:{cid}")},
        "reviewer": {("maia", f"contribution:{cid}")},
    }
    points = {(e["user"], e["role"]): e["points"] for e in entries}
    assert points[("ana", "reporter")] == POINTS["reporter"]
    assert points[("ana", "fixed")] == POINTS["fixed"]
    assert points[("bo", "confirmer")] == POINTS["confirmer"]
    assert points[("gil", "contributor")] == POINTS["contributor"] + 3 * CONTRIBUTOR_PER_CASE
    assert points[("maia", "reviewer")] == POINTS["reviewer"]  # two events, one review
    review = next(e["note"] for e in entries if e["role"] == "reviewer")
    assert review == "overridden, approved"
    note = next(e["note"] for e in entries if e["role"] == "contributor")
    assert (
        note == f"fixes report(s) {fixed}; fixed 4 case(s) alone, 3 retained after the merge (75%)"
    )
    assert {(e["model_id"], e["release_id"]) for e in entries} == {(m, rel)}


def test_maintainers_are_credited_for_confirming_and_reviewing_others_work(hub: Hub) -> None:
    m = model(hub)
    fixed = report(hub, m, "ana", "bo", "rex")  # rex's confirmation is a maintainer's move
    move(hub, fixed, "fixed", "passes in release 1")
    first = contribution(hub, m, "gil", [fixed], "passed")
    second = contribution(hub, m, "rex", [], "passed")  # a maintainer's own
    with pytest.raises(Forbidden, match="rex may not approve their own work"):
        prs.approve(hub, second, who(hub, "rex"))
    prs.approve(hub, first, who(hub, "rex"))
    prs.approve(hub, second, who(hub, "maia"))
    merge(hub, first)
    merge(hub, second)
    rel = release(hub, m, [first, second])

    roles = by_role(record(hub, rel, [fixed], [first, second]))

    assert roles["confirmer"] == {("bo", f"report:{fixed}"), ("rex", f"report:{fixed}")}
    assert roles["reviewer"] == {
        ("rex", f"contribution:{first}"),
        ("maia", f"contribution:{second}"),
    }


def test_only_merged_contributions_and_fixed_reports_earn_credit(hub: Hub) -> None:
    m = model(hub)
    cid = contribution(hub, m, "gil", [], "passed")
    prs.reject(hub, cid, who(hub, "rex"), "it teaches the wrong answer")
    with pytest.raises(Conflict, match="rejected; it cannot"):
        prs.close(hub, cid, who(hub, "gil"))
    rel = release(hub, m, [cid])
    with pytest.raises(InvalidInput, match=f"contribution {cid} is rejected, not merged"):
        record(hub, rel, [], [cid])
    reopened = report(hub, m, "ana", "maia")  # confirmed, never fixed
    with pytest.raises(InvalidInput, match=f"report {reopened} is confirmed, not fixed"):
        record(hub, rel, [reopened])
    # the refused calls wrote nothing; rex's rejection earns no reviewer credit
    assert by_role(record(hub, rel)) == {"reporter": {("ana", f"report:{reopened}")}}


def test_contributor_points_are_capped_and_need_no_retention(hub: Hub) -> None:
    m = model(hub)
    big = contribution(hub, m, "gil", [], "passed")
    unmeasured = contribution(hub, m, "hal", [], "passed")
    for cid in (big, unmeasured):
        prs.approve(hub, cid, who(hub, "maia"))
        merge(hub, cid)
    rel = release(hub, m, [big, unmeasured])
    retention = {big: {"fixed_alone": 500, "retained": 500, "retention": 1.0}}

    entries = record(hub, rel, [], [big, unmeasured], retention)

    points = {e["user"]: e["points"] for e in entries if e["role"] == "contributor"}
    assert points == {
        "gil": POINTS["contributor"] + CONTRIBUTOR_MAX_CASES * CONTRIBUTOR_PER_CASE,
        "hal": POINTS["contributor"],
    }


def test_a_report_earns_its_reporter_credit_once(hub: Hub) -> None:
    m = model(hub)
    early = report(hub, m, "ana", "maia")
    record(hub, release(hub, m))
    late = report(hub, m, "ana", "bo", "cy")
    move(hub, early, "fixed", "passes in release 2")

    entries = record(hub, release(hub, m), [early])

    assert by_role(entries) == {
        "reporter": {("ana", f"report:{late}")},  # early was credited in the first
        "fixed": {("ana", f"report:{early}")},  # fixing it is new
        "confirmer": {("maia", f"report:{early}")},
    }


def test_a_report_fixed_again_is_not_paid_twice(hub: Hub) -> None:
    m = model(hub)
    r = report(hub, m, "ana", "bo", "cy")
    move(hub, r, "fixed", "passes in release 1")
    first = record(hub, release(hub, m), [r])
    assert {e["role"] for e in first} == {"reporter", "fixed", "confirmer"}
    # a later release breaks its case (fixed → confirmed, by the release), another fixes it
    move(hub, r, "confirmed", "fails again in release v3")
    move(hub, r, "fixed", "passes in release 4")

    again = record(hub, release(hub, m), [r])

    assert again == []  # neither the reporter, nor the confirmers, nor the release's actor


def test_recording_twice_adds_nothing(hub: Hub) -> None:
    m = model(hub)
    r = report(hub, m, "ana", "bo", "cy")
    move(hub, r, "fixed", "passes in release 1")
    cid = contribution(hub, m, "gil", [r], "passed")
    prs.approve(hub, cid, who(hub, "maia"))
    merge(hub, cid)
    rel = release(hub, m, [cid])
    retention = {cid: {"fixed_alone": 1, "retained": 1, "retention": 1.0}}

    first = record(hub, rel, [r], [cid], retention)
    second = record(hub, rel, [r], [cid], retention)

    assert second == first
    # reporter, fixed, two confirmers, contributor, reviewer
    assert sorted(e["role"] for e in first) == sorted(
        ["reporter", "fixed", "confirmer", "confirmer", "contributor", "reviewer"]
    )
    with hub.session() as s:
        assert s.scalar(select(func.count()).select_from(CreditEntry)) == 6
        assert [e["role"] for e in ledger(s, rel)] == [e["role"] for e in first]


def test_inputs_of_another_model_or_unknown_are_refused(hub: Hub) -> None:
    m, other = model(hub), model(hub, "other")
    foreign = report(hub, other, "ana")
    rel = release(hub, m)
    with pytest.raises(InvalidInput, match="another model"):
        record(hub, rel, [foreign])
    with pytest.raises(NotFound, match="no report 999"):
        record(hub, rel, [999])
    with pytest.raises(NotFound, match="no contribution 999"):
        record(hub, rel, [], [999])
    with hub.session() as s, pytest.raises(NotFound, match="no release 999"):
        ledger(s, 999)
    with hub.session() as s:  # nothing was written by the refused calls
        assert s.scalar(select(func.count()).select_from(CreditEntry)) == 0


def test_credits_table_adds_up_per_user_and_filters_by_model(hub: Hub) -> None:
    m, other = model(hub), model(hub, "other")
    r1 = report(hub, m, "ana", "bo", "cy")
    move(hub, r1, "fixed", "passes in release 1")
    cid = contribution(hub, m, "bo", [r1], "passed")
    prs.approve(hub, cid, who(hub, "maia"))
    merge(hub, cid)
    record(hub, release(hub, m, [cid]), [r1], [cid], {cid: {"fixed_alone": 2, "retained": 2}})
    report(hub, m, "ana", "rex")
    record(hub, release(hub, m))
    report(hub, other, "zed", "maia")
    record(hub, release(hub, other))

    with hub.session() as s:
        table = credits_table(s)
        only_m = credits_table(s, "m")
        only_other = credits_table(s, "other")
        with pytest.raises(NotFound, match="unknown model"):
            credits_table(s, "nope")

    rows = {row["user"]: row for row in table}
    assert rows["ana"]["points"] == 2 * POINTS["reporter"] + POINTS["fixed"]
    assert rows["ana"]["roles"] == {"reporter": 2, "fixed": 1}
    assert rows["ana"]["releases"] == 2
    bo = POINTS["confirmer"] + POINTS["contributor"] + 2 * CONTRIBUTOR_PER_CASE
    assert rows["bo"]["points"] == bo
    assert rows["bo"]["roles"] == {"confirmer": 1, "contributor": 1}
    assert rows["maia"]["roles"] == {"reviewer": 1}
    assert [row["points"] for row in table] == sorted(
        (row["points"] for row in table), reverse=True
    )
    assert rows["zed"]["roles"] == {"reporter": 1}
    assert {row["user"] for row in only_m} == {"ana", "bo", "cy", "maia"}
    assert only_other == [
        {"user": "zed", "points": POINTS["reporter"], "roles": {"reporter": 1}, "releases": 1}
    ]


def test_ties_are_sorted_by_user(hub: Hub) -> None:
    m = model(hub)
    for user in ("cy", "ab", "bo"):
        report(hub, m, user, "maia")
    record(hub, release(hub, m))
    with hub.session() as s:
        assert [row["user"] for row in credits_table(s, "m")] == ["ab", "bo", "cy"]
