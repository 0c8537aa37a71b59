import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from upstream import __version__
from upstream import jobs as jobs_module
from upstream.db.schema import Job, WorkerProcess, utcnow
from upstream.errors import InvalidInput
from upstream.hub import Hub
from upstream.jobs import JobContext, JobFailed, Worker

calls: list[dict[str, Any]] = []


def echo_job(ctx: JobContext) -> dict[str, Any]:
    """A test handler: reports progress, then returns its arguments."""
    calls.append(ctx.args)
    for i in range(3):
        ctx.progress(i + 1, 3, f"step {i + 1}")
    if ctx.args.get("fail") == "user":
        raise InvalidInput("bad argument x")
    if ctx.args.get("fail") == "crash":
        raise RuntimeError("boom")
    return {"echo": ctx.args}


@pytest.fixture(autouse=True)
def echo_handler(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(jobs_module.HANDLERS, "test.echo", "tests.test_jobs:echo_job")
    calls.clear()


def test_foreground_job_reports_progress_and_result(hub: Hub) -> None:
    seen: list[tuple[float, float, str]] = []
    result = hub.jobs.run_foreground("test.echo", {"a": 1}, lambda *p: seen.append(p))
    assert result == {"echo": {"a": 1}}
    assert seen == [(1, 3, "step 1"), (2, 3, "step 2"), (3, 3, "step 3")]
    [job] = hub.jobs.list()
    assert (job.state, job.progress, job.progress_total, job.attempts) == ("done", 3, 3, 1)
    assert job.finished_at is not None


def test_user_errors_fail_without_retry_and_crashes_are_retried(hub: Hub) -> None:
    with pytest.raises(JobFailed, match="bad argument x"):
        hub.jobs.run_foreground("test.echo", {"fail": "user"})
    crash = hub.jobs.enqueue("test.echo", {"fail": "crash"}, max_attempts=2)
    worker = Worker(hub)
    assert worker.run_once().state == "queued"  # first crash: back in the queue
    final = worker.run_once()
    assert final is not None and final.id == crash
    assert (final.state, final.attempts) == ("failed", 2)
    assert "RuntimeError: boom" in final.error
    assert worker.run_once() is None


def test_racing_workers_never_claim_the_same_job(hub: Hub) -> None:
    ids = {hub.jobs.enqueue("test.echo", {"i": i}) for i in range(40)}
    claimed: dict[str, list[int]] = {}
    barrier = threading.Barrier(4)

    def claim_all(name: str) -> None:
        barrier.wait()
        mine = claimed.setdefault(name, [])
        while (job := hub.jobs.claim(name)) is not None:
            mine.append(job.id)

    threads = [threading.Thread(target=claim_all, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [j for js in claimed.values() for j in js]
    assert sorted(every) == sorted(ids)  # each job claimed exactly once
    assert sum(1 for js in claimed.values() if js) > 1  # and the workers really raced


def test_a_job_whose_worker_died_is_picked_up_again(hub: Hub) -> None:
    job_id = hub.jobs.enqueue("test.echo", {"n": 7})
    dead = hub.jobs.claim("worker-that-dies")
    assert dead is not None
    assert hub.jobs.claim("other") is None  # heartbeat still fresh
    stale = utcnow() - timedelta(seconds=hub.settings.job_stale_after + 5)
    with hub.session() as s, s.begin():
        s.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=stale))
    rescued = Worker(hub).run_once()
    assert rescued is not None and rescued.id == job_id
    assert (rescued.state, rescued.attempts, rescued.result) == ("done", 2, {"echo": {"n": 7}})


def test_stale_job_out_of_attempts_is_failed(hub: Hub) -> None:
    job_id = hub.jobs.enqueue("test.echo", {}, max_attempts=1)
    hub.jobs.claim("dies")
    stale = utcnow() - timedelta(seconds=hub.settings.job_stale_after + 5)
    with hub.session() as s, s.begin():
        s.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=stale))
    assert hub.jobs.claim("other") is None
    job = hub.jobs.get(job_id)
    assert job.state == "failed" and "gave up after 1 attempts" in job.error


def slow_job(ctx: JobContext) -> dict[str, Any]:
    """Works without reporting progress, so only the heartbeat thread keeps it alive."""
    with ctx.hub.session() as s:
        started = s.get(Job, ctx.job_id).heartbeat_at  # type: ignore[union-attr]
    time.sleep(0.5)
    with ctx.hub.session() as s:
        later = s.get(Job, ctx.job_id).heartbeat_at  # type: ignore[union-attr]
    return {"beat_moved": later > started}


def test_heartbeat_is_refreshed_while_a_job_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(jobs_module.HANDLERS, "test.slow", "tests.test_jobs:slow_job")
    hub = Hub.open(tmp_path / "h", job_heartbeat_every=0.05, job_stale_after=1)
    assert hub.jobs.run_foreground("test.slow", {}) == {"beat_moved": True}


def test_a_replaced_worker_cannot_overwrite_the_new_run(hub: Hub) -> None:
    job_id = hub.jobs.enqueue("test.echo", {"n": 1})
    old = hub.jobs.claim("presumed-dead")
    assert old is not None
    stale = utcnow() - timedelta(seconds=hub.settings.job_stale_after + 5)
    with hub.session() as s, s.begin():
        s.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=stale))
    new = hub.jobs.claim("rescuer")
    assert new is not None and new.attempts == 2
    hub.jobs.run(old)  # the old worker wakes up and finishes: its writes must not land
    row = hub.jobs.get(job_id)
    assert (row.state, row.worker) == ("running", "rescuer")
    assert hub.jobs.run(new).state == "done"


def test_upstream_worker_process_runs_queued_jobs(tiny_model_dir: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    hub = Hub.open(home)
    job_id = hub.jobs.enqueue("models.import", {"source": str(tiny_model_dir), "name": "tiny"})
    env = {**os.environ, "UPSTREAM_HOME": str(home)}
    proc = subprocess.run(
        [sys.executable, "-m", "upstream", "worker", "--once"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    job = hub.jobs.get(job_id)
    assert job.state == "done", job.error
    assert job.result is not None and job.result["new"] is True


@contextmanager
def running_worker(hub: Hub) -> Iterator[Worker]:
    """A worker thread, once it is listed as idle; stopped afterwards."""
    worker = Worker(hub, poll=0.02)
    thread = worker.start_thread()
    try:
        deadline = time.monotonic() + 10
        while hub.jobs.idle_worker() != worker.name and time.monotonic() < deadline:
            time.sleep(0.02)
        assert hub.jobs.idle_worker() == worker.name
        yield worker
    finally:
        worker.stopping.set()
        thread.join(timeout=10)


seen_while_running: list[tuple[str | None, int | None]] = []


def peek_job(ctx: JobContext) -> dict[str, Any]:
    """A test handler: what the workers table says while it runs."""
    with ctx.hub.session() as s:
        busy = s.scalar(select(WorkerProcess.job_id))
    seen_while_running.append((ctx.hub.jobs.idle_worker(), busy))
    return {}


def test_a_worker_lists_itself_while_up_and_says_when_it_is_busy(
    hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(jobs_module.HANDLERS, "test.peek", "tests.test_jobs:peek_job")
    seen_while_running.clear()
    assert hub.jobs.idle_worker() is None
    with running_worker(hub) as worker:
        job_id = hub.jobs.enqueue("test.peek", {})
        assert hub.jobs.wait(job_id, timeout=10).state == "done"
        assert seen_while_running == [(None, job_id)]  # busy with that job, so not idle
        deadline = time.monotonic() + 10
        while hub.jobs.idle_worker() != worker.name and time.monotonic() < deadline:
            time.sleep(0.02)
        assert hub.jobs.idle_worker() == worker.name  # idle again
    with hub.session() as s:  # a worker that stopped is no longer listed
        assert s.query(WorkerProcess).count() == 0


def listed(
    hub: Hub, name: str, host: str | None = None, age: float = 0.0, version: str = __version__
) -> None:
    with hub.session() as s, s.begin():
        s.merge(
            WorkerProcess(
                name=name,
                host=host or socket.gethostname(),
                version=version,
                heartbeat_at=utcnow() - timedelta(seconds=age),
            )
        )


def test_only_a_fresh_idle_worker_on_this_host_gets_jobs(hub: Hub) -> None:
    listed(hub, "elsewhere", host="another-host")  # cannot see this host's files
    listed(hub, "gone", age=3 * jobs_module.WORKER_BEAT + 1)  # stopped beating
    listed(hub, "older", version="0.0.1")  # other code: its jobs could mean other things
    assert hub.jobs.idle_worker() is None
    listed(hub, "here")
    assert hub.jobs.idle_worker() == "here"


def test_a_cli_job_goes_to_the_running_worker(hub: Hub) -> None:
    handed: list[tuple[int, str]] = []
    seen: list[tuple[float, float, str]] = []
    with running_worker(hub) as worker:
        result = hub.jobs.run_anywhere(
            "test.echo", {"x": 1}, lambda *p: seen.append(p), lambda *h: handed.append(h)
        )
    assert result == {"echo": {"x": 1}}
    [(job_id, name)] = handed
    assert name == worker.name and hub.jobs.get(job_id).worker == worker.name
    assert seen[-1][:2] == (3, 3)  # the bar ends full


def test_a_job_nobody_takes_is_run_by_the_cli(hub: Hub, monkeypatch: pytest.MonkeyPatch) -> None:
    listed(hub, "hung")  # listed as idle, but never claims anything
    monkeypatch.setattr(jobs_module, "HAND_OVER_WAIT", 0.2)
    handed: list[tuple[int, str]] = []
    taken_back: list[int] = []
    result = hub.jobs.run_anywhere(
        "test.echo", {"y": 2}, None, lambda *h: handed.append(h), taken_back.append
    )
    assert result == {"echo": {"y": 2}}
    [(job_id, name)] = handed
    assert taken_back == [job_id]
    assert name == "hung" and hub.jobs.get(job_id).worker == jobs_module.worker_name()


def test_a_job_for_one_worker_is_not_taken_by_another(hub: Hub) -> None:
    job_id = hub.jobs.enqueue("test.echo", {}, for_worker="chosen")
    assert hub.jobs.claim("someone-else") is None
    taken = hub.jobs.claim("chosen")
    assert taken is not None and taken.id == job_id
    other = hub.jobs.enqueue("test.echo", {}, for_worker="chosen")
    by_id = hub.jobs.claim("the-cli", job_id=other)  # taking it back by its id
    assert by_id is not None and by_id.worker == "the-cli"


def test_a_crash_on_the_worker_is_not_run_again(hub: Hub) -> None:
    with running_worker(hub), pytest.raises(JobFailed, match="boom"):
        hub.jobs.run_anywhere("test.echo", {"fail": "crash"})
    assert calls == [{"fail": "crash"}]  # once, as when the CLI runs it itself


def test_hand_over_can_be_turned_off(tmp_path: Path) -> None:
    hub = Hub.open(tmp_path / "home", hand_over_jobs=False)
    listed(hub, "idle")
    handed: list[tuple[int, str]] = []
    assert hub.jobs.run_anywhere("test.echo", {}, None, lambda *h: handed.append(h))
    assert handed == []


def test_a_failed_job_on_the_worker_fails_the_cli(hub: Hub) -> None:
    with running_worker(hub), pytest.raises(JobFailed, match="bad argument x"):
        hub.jobs.run_anywhere("test.echo", {"fail": "user"})


def test_upstream_eval_hands_its_job_to_a_running_worker_process(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from upstream.registry import import_model
    from upstream.suites import CaseIn, add_cases

    home = tmp_path / "home"
    hub = Hub.open(home)
    import_model(hub, str(tiny_model_dir), "tiny")
    check = {"type": "contains", "value": "zzz"}
    add_cases(
        hub, "s", [CaseIn([{"role": "user", "content": f"q{i}"}], check, []) for i in range(6)]
    )
    env = {**os.environ, "UPSTREAM_HOME": str(home)}
    worker = subprocess.Popen(
        [sys.executable, "-m", "upstream", "worker"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while hub.jobs.idle_worker() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert hub.jobs.idle_worker() is not None, "the worker did not list itself"
        command = ["eval", "tiny", "--suite", "s", "--json", "--max-new-tokens", "4"]
        run = subprocess.run(
            [sys.executable, "-m", "upstream", *command],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    assert run.returncode == 0, run.stderr
    assert f"runs on the worker already running here (pid {worker.pid}" in run.stderr
    result = json.loads(run.stdout)
    assert result["generated"] == 6 and result["metrics"]["all"]["n"] == 6
    [job] = [j for j in hub.jobs.list() if j.kind == "evals.run"]
    assert job.worker.split(":")[1] == str(worker.pid)  # run there, not in the CLI
