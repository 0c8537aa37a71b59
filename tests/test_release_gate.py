"""The release gate under the default policy: what ships, what stays a candidate, and why.

The model is the keyed tiny Llama (tests/tiny_models.py): a keyed adapter changes only
the answers to prompts that contain its key word, so a contribution can fix its report
and leave the guard exactly as it was, and pass its checks alone as a good fix does.
Two adapters on the same key each fix their own report alone and neither together.
Nothing here relaxes the merge policy: every verdict is the one a new hub would give.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from tests.people import owner, person
from tests.tiny_models import build_keyed_model, keyed_adapter
from upstream import contributions as prs
from upstream import releases
from upstream.access import Actor
from upstream.credits import credits_table
from upstream.db.schema import Job, Tag
from upstream.demo import DATA
from upstream.engines.base import GenRequest
from upstream.errors import Conflict
from upstream.generation import generate_one
from upstream.hub import Hub
from upstream.jobs import JobFailed
from upstream.registry import import_model, resolve
from upstream.reports import get_report, parse_report, submit_one
from upstream.suites import CaseIn, add_cases
from upstream.training import Conversation, Recipe, train_adapter
from upstream.triage import confirm

KEYS = [" swim", " cherry"]
ANY_WORD = {"type": "min_words", "value": 1}
PROMPTS = {  # the report each adapter fixes: its own prompt, containing its key
    "swim-a": "Can a fish swim far?",
    "swim-b": "Do ducks swim in winter?",
    "cherry": "Is a cherry sweet?",
    "harmful": "Name a colour.",
}


@pytest.fixture(scope="session")
def keyed_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_keyed_model(tmp_path_factory.mktemp("keyed"), KEYS)


@pytest.fixture(scope="session")
def adapters(keyed_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The fixes: two on " swim", one on " cherry", and one that answers everything in a
    word (trained on the one-word data set, without replay, as a careless fix would be)."""
    out = tmp_path_factory.mktemp("keyed-adapters")
    lines = (DATA / "one_word_answers.jsonl").read_text().splitlines()
    terse = [Conversation(json.loads(line)["messages"]) for line in lines]
    train_adapter(keyed_dir, terse, Recipe(learning_rate=1e-2, epochs=10, replay=0), out / "terse")
    return {
        "swim-a": keyed_adapter(keyed_dir, out / "swim-a", " swim", seed=0),
        "swim-b": keyed_adapter(keyed_dir, out / "swim-b", " swim", seed=1),
        "swim-c": keyed_adapter(keyed_dir, out / "swim-c", " swim", seed=2),
        "cherry": keyed_adapter(keyed_dir, out / "cherry", " cherry", seed=0),
        "harmful": out / "terse",
    }


@pytest.fixture
def hub(tmp_path: Path, keyed_dir: Path) -> Iterator[Hub]:
    # the default policy; contribution checks generate 32 tokens (not 128) to be quick
    h = Hub.open(tmp_path / "home", check_max_new_tokens=32)
    import_model(h, str(keyed_dir), "tiny")
    yield h
    h.close()


@pytest.fixture
def maintainer(hub: Hub) -> Actor:
    return owner(hub)


def fixable_report(hub: Hub, maintainer: Actor, name: str, adapter: Path) -> int:
    """A confirmed report that the base fails and `adapter` passes: it expects exactly the
    adapter's answer, as the CI generates it."""
    messages = [{"role": "user", "content": PROMPTS[name]}]
    tokens = hub.settings.check_max_new_tokens
    answer = generate_one(hub, "tiny", GenRequest(messages, tokens), [adapter])["text"]
    data = {
        "model": "tiny",
        "messages": messages,
        "expected": {"type": "exact", "value": answer, "strict": True},
        "max_new_tokens": tokens,
    }
    reporter = person(hub, f"reporter-{name}", "reporter")
    filed = submit_one(hub, parse_report(data), reporter, "cli")
    rid = filed.filed[0].id
    assert filed.job is not None  # filing queued its reproduction
    assert hub.jobs.run_now(filed.job)["reports"][str(rid)]["result"] == "reproduced"
    confirm(hub, rid, maintainer)
    return rid


def contribution(hub: Hub, adapter: Path, fixes: list[int], author: str = "bo") -> int:
    data = prs.ContributionIn("tiny", adapter.name, prs.Content(adapter_dir=adapter), fixes)
    opened = prs.open_contribution(hub, data, person(hub, author), attempts=1)
    hub.jobs.run_now(opened["job"])
    return int(opened["id"])


def claimed_fix(
    hub: Hub, maintainer: Actor, adapters: dict[str, Path], name: str, author: str = "bo"
) -> tuple[int, int]:
    """A fixable report for adapter `name`, and its checked contribution claiming it."""
    rid = fixable_report(hub, maintainer, name, adapters[name])
    return rid, contribution(hub, adapters[name], [rid], author)


def state(hub: Hub, cid: int) -> str:
    with hub.session() as s:
        return prs.get_contribution(s, cid).state


def reasons(hub: Hub, cid: int) -> list[str]:
    with hub.session() as s:
        return list(prs.get_contribution(s, cid).pushes[-1].checks["reasons"])


def suite_line(lines: list[str], suite: str) -> str:
    """The verdict's line about one suite (the claims line comes first, then one a suite)."""
    (line,) = [r for r in lines if r[2:].startswith(f"{suite}:")]
    return line


def release(hub: Hub, maintainer: Actor, ids: list[int], progress: Any = None) -> dict[str, Any]:
    planned = releases.plan_release(hub, releases.ReleaseIn("tiny", ids), maintainer)
    return hub.jobs.run_now(releases.queue_release(hub, planned["id"]), progress)


def report_status(hub: Hub, rid: int) -> str:
    with hub.session() as s:
        return get_report(s, rid).status


def latest(hub: Hub) -> tuple[str, list[str]]:
    with hub.session() as s:
        revision = resolve(s, "tiny")
        tags = s.scalars(select(Tag.name).where(Tag.revision_id == revision.id))
        return revision.hash, sorted(tags)


def nothing_shipped(hub: Hub, base: str, reports: list[int], contributions: list[int]) -> None:
    """What a release that stays a candidate must leave as it was."""
    assert latest(hub) == (base, ["latest"])  # no vN tag, latest unmoved
    assert [report_status(hub, r) for r in reports] == ["confirmed"] * len(reports)
    assert [state(hub, c) for c in contributions] == ["approved"] * len(contributions)
    with hub.session() as s:
        assert credits_table(s, "tiny") == []


# ---------------------------------------------------------------- fixes alone


@contextmanager
def worker_killed_in(hub: Hub, job_id: int) -> Iterator[Session]:
    """A worker claims the job and dies: its heartbeat is long stale when the block ends.

    The block (a transaction) puts the job's object where the worker left it.
    """
    assert hub.jobs.claim("dead-worker", job_id) is not None
    with hub.session() as s, s.begin():
        yield s
        job = s.get(Job, job_id)
        assert job is not None and job.heartbeat_at is not None
        job.heartbeat_at = job.heartbeat_at.replace(year=2000)


def test_fixes_that_break_nothing_pass_alone_and_ship_together(
    hub: Hub, maintainer: Actor, adapters: dict[str, Path]
) -> None:
    swim, a = claimed_fix(hub, maintainer, adapters, "swim-a")
    cherry, b = claimed_fix(hub, maintainer, adapters, "cherry", author="cy")
    assert (state(hub, a), state(hub, b)) == ("passed", "passed"), reasons(hub, a)
    lines = reasons(hub, a)
    assert lines[0] == "✓ fixes 1 of 1 claimed cases (at least 1 needed)"
    guard = suite_line(lines, "guard-tiny")
    assert guard.startswith("✓ guard-tiny: 0 fixed, 0 broken, knowledge lost on 0;"), guard
    for cid in (a, b):
        prs.approve(hub, cid, maintainer)
    base, _ = latest(hub)

    result = release(hub, maintainer, [a, b])

    assert (result["state"], result["tag"], result["passed"]) == ("released", "v2", True)
    assert all(r.startswith(("✓", "ℹ")) for r in result["reasons"]), result["reasons"]
    assert result["retention"] == {
        str(a): {"fixed_alone": 1, "retained": 1, "retention": 1.0},
        str(b): {"fixed_alone": 1, "retained": 1, "retention": 1.0},
    }
    assert latest(hub) == (result["revision"], ["latest", "v2"]) and result["revision"] != base
    assert [report_status(hub, r) for r in (swim, cherry)] == ["fixed", "fixed"]
    assert [state(hub, c) for c in (a, b)] == ["merged", "merged"]
    with hub.session() as s:
        table = {row["user"]: row["roles"] for row in credits_table(s, "tiny")}
    assert table == {
        "reporter-swim-a": {"reporter": 1, "fixed": 1},
        "reporter-cherry": {"reporter": 1, "fixed": 1},
        "bo": {"contributor": 1},
        "cy": {"contributor": 1},
        maintainer.name: {"confirmer": 2, "reviewer": 2},
    }


# ---------------------------------------------------------------- the gate holds


def test_fixes_that_pass_alone_but_not_together_stay_a_candidate(
    hub: Hub, maintainer: Actor, adapters: dict[str, Path]
) -> None:
    first, a = claimed_fix(hub, maintainer, adapters, "swim-a")
    second, b = claimed_fix(hub, maintainer, adapters, "swim-b", author="cy")
    assert (state(hub, a), state(hub, b)) == ("passed", "passed")
    for cid in (a, b):
        prs.approve(hub, cid, maintainer)
    base, _ = latest(hub)

    result = release(hub, maintainer, [a, b])

    assert (result["state"], result["tag"], result["passed"]) == ("candidate", "", False)
    assert result["reasons"][0] == "✗ fixes 0 of 2 claimed cases (at least 1 needed)"
    assert result["retention"][str(a)]["retention"] == 0.0
    assert result["retention"][str(b)]["retention"] == 0.0
    nothing_shipped(hub, base, [first, second], [a, b])
    with pytest.raises(Conflict, match="a candidate that failed; only a passing candidate"):
        releases.ship_release(hub, result["id"], maintainer)
    nothing_shipped(hub, base, [first, second], [a, b])


def test_a_release_that_breaks_the_guard_stays_a_candidate(
    hub: Hub, maintainer: Actor, adapters: dict[str, Path]
) -> None:
    # the terse adapter fixes its report, and cuts every guard answer to a word or two
    rid, cid = claimed_fix(hub, maintainer, adapters, "harmful")
    assert state(hub, cid) == "failed", reasons(hub, cid)
    assert reasons(hub, cid)[0].startswith("✓ fixes 1 of 1")
    assert suite_line(reasons(hub, cid), "guard-tiny").startswith("✗ guard-tiny")
    prs.approve(hub, cid, maintainer, override="the maintainer wants to see the release refuse")
    base, _ = latest(hub)

    result = release(hub, maintainer, [cid])

    assert (result["state"], result["tag"], result["passed"]) == ("candidate", "", False)
    assert result["reasons"][0].startswith("✓ fixes 1 of 1")  # the fix is there ...
    guard = suite_line(result["reasons"], "guard-tiny")
    assert guard.startswith("✗ guard-tiny")  # ... and so is the harm
    assert "beyond what the -10% margin allows" in guard, guard
    assert result["figures"]["guard_broken"] > 2
    nothing_shipped(hub, base, [rid], [cid])
    with hub.session() as s:
        card = releases.get_release(s, result["id"]).revision.card
    assert "candidate" in card


# ---------------------------------------------------------------- changes and crashes


def test_a_contribution_pushed_while_its_release_is_built_is_not_merged(
    hub: Hub, maintainer: Actor, adapters: dict[str, Path]
) -> None:
    rid, cid = claimed_fix(hub, maintainer, adapters, "swim-a")
    prs.approve(hub, cid, maintainer)
    base, _ = latest(hub)
    pushed: list[int] = []

    def push_while_checking(done: float, total: float, message: str) -> None:
        if message.startswith("guard-tiny") and not pushed:  # merged, now being checked
            content = prs.Content(adapter_dir=adapters["swim-c"])
            pushed.append(prs.push(hub, cid, content, person(hub, "bo"))["push"])

    result = release(hub, maintainer, [cid], push_while_checking)

    assert pushed == [2]
    assert (result["state"], result["tag"], result["passed"]) == ("candidate", "", False)
    # the merge itself passed: the new push is the only reason it does not ship
    failed = [r for r in result["reasons"] if r.startswith("✗")]
    assert failed == [f"✗ contribution #{cid} has a new push since the release was planned"]
    assert latest(hub) == (base, ["latest"]) and report_status(hub, rid) == "confirmed"
    assert state(hub, cid) == "open"  # the push cleared the approval
    with hub.session() as s:
        assert credits_table(s, "tiny") == []
    with pytest.raises(Conflict, match="only a passing candidate can ship"):
        releases.ship_release(hub, result["id"], maintainer)


def test_a_crashed_release_leaves_nothing_half_done_and_runs_again(
    hub: Hub, maintainer: Actor, adapters: dict[str, Path]
) -> None:
    rid, cid = claimed_fix(hub, maintainer, adapters, "swim-a")
    prs.approve(hub, cid, maintainer)
    base, _ = latest(hub)

    def power_cut(done: float, total: float, message: str) -> None:
        if message.startswith("guard-tiny"):
            raise RuntimeError("power cut")

    planned = releases.plan_release(hub, releases.ReleaseIn("tiny", [cid]), maintainer)
    with pytest.raises(JobFailed, match="RuntimeError: power cut"):
        hub.jobs.run_now(releases.queue_release(hub, planned["id"]), power_cut)
    with hub.session() as s:
        assert releases.get_release(s, planned["id"]).state == "failed"
    nothing_shipped(hub, base, [rid], [cid])

    # the same release runs again (the merge is recognised, outputs are cached) ...
    again = hub.jobs.run_now(releases.queue_release(hub, planned["id"]))
    assert (again["id"], again["state"], again["tag"]) == (planned["id"], "released", "v2")
    assert latest(hub) == (again["revision"], ["latest", "v2"])
    assert report_status(hub, rid) == "fixed" and state(hub, cid) == "merged"


def test_a_release_whose_worker_died_does_not_hold_its_contributions(
    hub: Hub, maintainer: Actor, adapters: dict[str, Path]
) -> None:
    _, cid = claimed_fix(hub, maintainer, adapters, "swim-a")
    prs.approve(hub, cid, maintainer)
    planned = releases.plan_release(hub, releases.ReleaseIn("tiny", [cid]), maintainer)
    job_id = releases.queue_release(hub, planned["id"])  # one attempt
    # a worker took it, began merging and was killed: its job gives up once stale
    with worker_killed_in(hub, job_id) as s:
        releases.get_release(s, planned["id"]).state = "merging"
    assert hub.jobs.claim("another-worker") is None  # out of attempts: failed, not run
    assert hub.jobs.get(job_id).state == "failed"

    with hub.session() as s:
        assert releases.get_release(s, planned["id"]).state == "failed"
    second = release(hub, maintainer, [cid])
    assert (second["state"], second["tag"]) == ("released", "v2")


def test_a_crashed_check_runs_again_to_a_verdict(
    hub: Hub, maintainer: Actor, adapters: dict[str, Path]
) -> None:
    rid = fixable_report(hub, maintainer, "swim-a", adapters["swim-a"])
    data = prs.ContributionIn("tiny", "swim", prs.Content(adapter_dir=adapters["swim-a"]), [rid])
    bo = person(hub, "bo")
    opened = prs.open_contribution(hub, data, bo, attempts=1)
    cid = opened["id"]

    def power_cut(done: float, total: float, message: str) -> None:
        if message.startswith("guard-tiny"):
            raise RuntimeError("power cut")

    with pytest.raises(JobFailed, match="power cut"):
        hub.jobs.run_now(opened["job"], power_cut)
    assert state(hub, cid) == "open"  # back to open, not stuck checking
    with pytest.raises(Conflict, match="only a passed"):
        prs.approve(hub, cid, maintainer)
    hub.jobs.run_now(prs.queue_checks(hub, cid, bo))
    assert state(hub, cid) == "passed"

    # a worker killed in the middle of a check: its job gives up, and the author checks again
    pushed = prs.push(hub, cid, prs.Content(adapter_dir=adapters["swim-c"]), bo, attempts=1)
    second, job_id = pushed["push"], pushed["job"]
    with worker_killed_in(hub, job_id) as s:
        prs.set_state(s, prs.get_contribution(s, cid), "checking", "ci", f"push {second}")
    # no other worker came: the author's re-check finds the job given up, the state open
    hub.jobs.run_now(prs.queue_checks(hub, cid, bo))
    assert hub.jobs.get(job_id).state == "failed"
    with hub.session() as s:
        c = prs.get_contribution(s, cid)
        assert (c.state, c.pushes[-1].number, c.pushes[-1].verdict) == ("failed", 2, "failed")
    # swim-c fixes a report it does not claim: 0 of 1 claimed cases
    assert reasons(hub, cid)[0] == "✗ fixes 0 of 1 claimed cases (at least 1 needed)"


# ---------------------------------------------------------------- regressions


def test_a_release_that_breaks_a_fixed_report_within_the_margin_reopens_it(
    hub: Hub, maintainer: Actor, adapters: dict[str, Path]
) -> None:
    first, a = claimed_fix(hub, maintainer, adapters, "swim-a")
    prs.approve(hub, a, maintainer)
    assert release(hub, maintainer, [a])["tag"] == "v2"
    assert report_status(hub, first) == "fixed"
    # the fixed report's case in a community suite, among forty that no swim fix changes:
    # one broken case of 41 is within the 10% margin
    with hub.session() as s:
        r = get_report(s, first)
        fixed_case = CaseIn(r.messages, dict(r.expected or {}), ["swim"], r.id, "report")
    others = [
        CaseIn([{"role": "user", "content": f"Tell me about item {i}."}], ANY_WORD, ["item"])
        for i in range(40)
    ]
    add_cases(hub, "everyday", [fixed_case, *others], "tiny", heldout_percent=0)

    # a second fix on the same key, made on v2: it fixes its report and breaks the first
    second, b = claimed_fix(hub, maintainer, adapters, "swim-b", author="cy")
    assert state(hub, b) == "passed", reasons(hub, b)
    assert suite_line(reasons(hub, b), "everyday").startswith("✓ everyday: 0 fixed, 1 broken")
    prs.approve(hub, b, maintainer)

    result = release(hub, maintainer, [b])

    assert (result["state"], result["tag"]) == ("released", "v3")
    assert [report_status(hub, r) for r in (first, second)] == ["confirmed", "fixed"]
    with hub.session() as s:
        reopened = get_report(s, first)
        assert reopened.fixed_in_revision_id is None
        last = reopened.events[-1]
        assert (last.actor, last.from_status, last.to_status, last.note) == (
            "ci",
            "fixed",
            "confirmed",
            "fails again in release v3",
        )
        # its reporter was credited for the fix in v2, and is not credited again in v3
        table = {row["user"]: row["roles"] for row in credits_table(s, "tiny")}
    assert table["reporter-swim-a"] == {"reporter": 1, "fixed": 1}
    assert table["reporter-swim-b"] == {"reporter": 1, "fixed": 1}
