"""A worker process killed with SIGKILL in the middle of an evaluation loses nothing.

A real `upstream worker` process takes an evaluation job and is killed (SIGKILL: no
clean-up of any kind) once some of its outputs are stored. Its job's heartbeat goes
stale; a second worker process claims the job again, generates only what is missing, and
the stored outputs equal, case for case, those of an uninterrupted run on another hub.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import func, select

from upstream.db.schema import EvalOutput
from upstream.evals import STORE_EVERY, run_eval
from upstream.hub import Hub
from upstream.registry import import_model
from upstream.suites import CaseIn, add_cases

CASES = 1024  # about 6 s of generation on the tiny model: time to kill it halfway
TOKENS = 96
STALE = 3.0  # seconds without a heartbeat before the job is claimed again
ENV = {"UPSTREAM_JOB_STALE_AFTER": str(STALE), "UPSTREAM_JOB_HEARTBEAT_EVERY": "1"}


def hub_with_suite(home: Path, model_dir: Path) -> Hub:
    hub = Hub.open(home, job_stale_after=STALE, job_heartbeat_every=1)
    import_model(hub, str(model_dir), "tiny")
    cases = [
        CaseIn(
            [{"role": "user", "content": f"Tell me about item {i}."}],
            {"type": "min_words", "value": 3},
            [],
        )
        for i in range(CASES)
    ]
    add_cases(hub, "many", cases, "tiny", heldout_percent=0)
    return hub


def stored(hub: Hub) -> int:
    with hub.session() as s:
        return s.scalar(select(func.count()).select_from(EvalOutput)) or 0


def outputs(hub: Hub) -> dict[str, tuple[str, str, int]]:
    with hub.session() as s:
        return {
            o.input_hash: (o.output, o.error, o.completion_tokens)
            for o in s.scalars(select(EvalOutput))
        }


def worker(home: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, **ENV, "UPSTREAM_HOME": str(home)}
    return subprocess.Popen(
        [sys.executable, "-m", "upstream", "worker", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_a_killed_worker_s_evaluation_is_finished_by_another_with_the_same_outputs(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    hub = hub_with_suite(tmp_path / "home", tiny_model_dir)
    args = {"ref": "tiny", "suite": "many", "max_new_tokens": TOKENS}
    job_id = hub.jobs.enqueue("evals.run", args)

    first = worker(tmp_path / "home")
    deadline = time.monotonic() + 300
    while (done := stored(hub)) < 4 * STORE_EVERY:
        assert first.poll() is None, f"the worker stopped early: {first.communicate()[0]}"
        assert time.monotonic() < deadline, "the worker stored no outputs in 300 s"
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    assert first.returncode == -signal.SIGKILL
    kept = stored(hub)
    assert done <= kept < CASES, "the kill came too late: the evaluation had finished"
    job = hub.jobs.get(job_id)
    assert (job.state, job.attempts) == ("running", 1)  # as the dead worker left it
    assert 0 < job.progress < CASES

    # once the heartbeat is stale, a second worker claims the job and finishes it
    assert job.heartbeat_at is not None
    time.sleep(STALE + 0.5)
    second = worker(tmp_path / "home", "--once")
    log, _ = second.communicate(timeout=300)
    assert second.returncode == 0, log
    job = hub.jobs.get(job_id)
    assert (job.state, job.attempts) == ("done", 2), job.error
    assert job.result is not None
    assert job.result["generated"] == CASES - kept  # only what the first had not stored
    assert job.result["metrics"]["all"]["n"] == CASES

    # the same evaluation, uninterrupted, on a hub of its own
    reference = hub_with_suite(tmp_path / "reference", tiny_model_dir)
    uninterrupted = run_eval(reference, "tiny", "many", max_new_tokens=TOKENS)
    assert uninterrupted["generated"] == CASES
    expected = outputs(reference)
    assert len(expected) == CASES
    assert outputs(hub) == expected
    assert uninterrupted["metrics"] == job.result["metrics"]
    reference.close()
    hub.close()
