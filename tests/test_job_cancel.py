"""Stopping jobs: cancelled while queued or running, or past the time limit; what a
stopped check left half done is put right, so the contribution can be checked again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.people import owner, person
from upstream import contributions as prs
from upstream import suites
from upstream.errors import Conflict, Forbidden
from upstream.evals import queue_eval
from upstream.hub import Hub
from upstream.jobs import worker_name
from upstream.registry import import_model

NEVER = {"type": "exact", "value": "this exact sentence will not be generated"}
DATASET = "\n".join(
    json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
    for q, a in [("hi", "hello"), ("sky?", "blue")]
).encode()


def _suite(hub: Hub) -> None:
    cases = [suites.CaseIn([{"role": "user", "content": f"q{i}"}], NEVER, []) for i in range(6)]
    suites.import_cases(hub, owner(hub), "s", cases, model="tiny")


def test_a_queued_job_is_cancelled_by_its_owner_or_a_maintainer_only(tiny_hub: Hub) -> None:
    _suite(tiny_hub)
    cory = person(tiny_hub, "cory", "contributor")
    other = person(tiny_hub, "dan", "contributor")
    job = queue_eval(tiny_hub, cory, "tiny", "s")
    with pytest.raises(Forbidden, match="only a maintainer or its owner may cancel jobs"):
        tiny_hub.jobs.cancel(job, other)
    assert tiny_hub.jobs.get(job).state == "queued"
    stopped = tiny_hub.jobs.cancel(job, cory)
    assert (stopped.state, stopped.error) == ("failed", "cancelled by cory")
    assert tiny_hub.jobs.claim(worker_name()) is None  # nothing left to run
    with pytest.raises(Conflict, match="is failed"):
        tiny_hub.jobs.cancel(job, owner(tiny_hub))
    mine = queue_eval(tiny_hub, cory, "tiny", "s")
    assert tiny_hub.jobs.cancel(mine, person(tiny_hub, "mia", "maintainer")).state == "failed"


def test_a_running_job_stops_at_its_next_progress_report(tiny_hub: Hub) -> None:
    _suite(tiny_hub)
    cory = person(tiny_hub, "cory", "contributor")
    job_id = queue_eval(tiny_hub, cory, "tiny", "s")
    job = tiny_hub.jobs.claim(worker_name(), job_id=job_id)
    assert job is not None and job.state == "running"
    assert tiny_hub.jobs.cancel(job_id, cory).state == "running"  # asked to stop
    final = tiny_hub.jobs.run(job)
    assert (final.state, final.error) == ("failed", "cancelled by cory")
    assert final.result is None


def _opened_check(hub: Hub) -> tuple[int, int]:
    cory = person(hub, "cory", "contributor")
    data = prs.ContributionIn("tiny", "a fix", prs.Content(dataset=DATASET))
    opened = prs.open_contribution(hub, data, cory, attempts=1)
    return opened["id"], opened["job"]


def test_a_cancelled_check_leaves_the_contribution_open_to_check_again(tiny_hub: Hub) -> None:
    cid, job_id = _opened_check(tiny_hub)
    job = tiny_hub.jobs.claim(worker_name(), job_id=job_id)
    assert job is not None
    tiny_hub.jobs.cancel(job_id, owner(tiny_hub))
    assert tiny_hub.jobs.run(job).error == f"cancelled by {owner(tiny_hub).name}"
    with tiny_hub.session() as s:
        c = prs.get_contribution(s, cid)
        assert c.state == "open", [(e.kind, e.to_state) for e in c.events]
    again = prs.queue_checks(tiny_hub, cid, person(tiny_hub, "cory"), attempts=1)
    assert again != job_id


def test_a_job_past_its_time_limit_fails_and_is_put_right(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    hub = Hub.open(tmp_path / "home", job_time_limit=0.0)
    try:
        import_model(hub, str(tiny_model_dir), "tiny")
        cid, job_id = _opened_check(hub)
        job = hub.jobs.claim(worker_name(), job_id=job_id)
        assert job is not None
        final = hub.jobs.run(job)
        assert final.state == "failed" and "job_time_limit" in final.error, final.error
        with hub.session() as s:
            assert prs.get_contribution(s, cid).state == "open"
    finally:
        hub.close()
