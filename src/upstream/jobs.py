"""Durable jobs: a table of long operations, workers that run them, and progress.

A job is a row (kind, arguments, state, progress, heartbeat, attempts, result). Any
process can run it: the CLI runs its own jobs in the foreground, `upstream up` runs an
in-process worker thread, and `upstream worker` is a separate process. While a job
runs, a heartbeat is written every few seconds; a running job whose heartbeat went
stale lost its worker and is claimed again, up to `max_attempts` times. Handlers must
therefore be safe to re-run (they write content-addressed blobs and idempotent rows).

Workers that are up keep a row in `workers` with a heartbeat and the job they run.
`run_anywhere` queues a job for an idle worker of the same version on the same host when
there is one (its loaded models stay loaded between jobs, so a small evaluation skips
seconds of start-up) and follows the job's progress; a job that worker has not taken
within a few seconds is taken back and run by the caller.

A job can be cancelled (`cancel`): a queued one fails at once; a running one fails at
its next progress report, and a job running longer than `job_time_limit` fails the same
way. Either way the kind's ABANDONED handler puts right what the run left half done.
"""

from __future__ import annotations

import importlib
import logging
import os
import socket
import threading
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from pydantic import Field
from sqlalchemy import delete, or_, select, update
from sqlalchemy.orm import Session

from upstream import __version__
from upstream.access import HUB, Actor, require
from upstream.db.schema import Job, WorkerProcess, utcnow
from upstream.errors import Conflict, NotFound, Unavailable, UpstreamError
from upstream.shapes import Shape
from upstream.threads import in_fresh_thread

if TYPE_CHECKING:
    from upstream.hub import Hub

log = logging.getLogger(__name__)

# kind -> "module:function"; imported only when a job of that kind runs, so that
# claiming and listing jobs stays free of heavy imports.
HANDLERS: dict[str, str] = {
    "models.import": "upstream.guard:run_import_job",
    "reports.reproduce": "upstream.reproduction:run_reproduce_job",
    "evals.run": "upstream.evals:run_eval_job",
    "evals.compare": "upstream.comparisons:run_compare_job",
    "contributions.check": "upstream.ci:run_checks_job",
    "releases.build": "upstream.releases:run_release_job",
}

# kind -> "module:function(hub, job)" that puts the job's domain rows right when the job
# gives up because its worker stopped (a check left `checking`, a release left `merging`).
ABANDONED: dict[str, str] = {
    "contributions.check": "upstream.ci:abandon_checks",
    "releases.build": "upstream.releases:abandon_release",
}

# Kinds whose result is one person's view (a comparison names the held-out cases its
# asker may see): shown to that person and to admins only.
PRIVATE_RESULTS = frozenset({"evals.compare"})

ProgressCallback = Callable[[float, float, str], None]
WORKER_BEAT = 2.0  # seconds between a worker's heartbeats while it waits for jobs
HAND_OVER_WAIT = 3.0  # a handed-over job no worker claimed by then is run by the CLI
FOLLOW_POLL = 0.05  # seconds between looks at a followed job


class JobFailed(UpstreamError):
    """A job ended in the failed state; the message is the job's error."""


class JobStopped(Exception):
    """A running job was cancelled, or ran past its time limit. Not an UpstreamError: a
    handler that turns bad input into a verdict must not turn this into one too."""


class JobContext:
    """What a running handler sees: the hub, its arguments, and a progress reporter."""

    def __init__(self, hub: Hub, job: Job, on_progress: ProgressCallback | None = None):
        self.hub = hub
        self.job_id = job.id
        self.owner = owned(job)
        self.args = dict(job.args)
        self._on_progress = on_progress
        self._last_write = 0.0
        self._total = 0.0
        self._deadline = time.monotonic() + hub.settings.job_time_limit

    def progress(self, done: float, total: float | None = None, message: str = "") -> None:
        """Report progress; stored at most twice a second, shown at once in the foreground."""
        if total is not None:
            self._total = total
        if self._on_progress:
            self._on_progress(done, self._total, message)
        now = time.monotonic()
        if now > self._deadline:
            limit = self.hub.settings.job_time_limit
            raise JobStopped(f"ran longer than job_time_limit ({limit:g} s)")
        if now - self._last_write < 0.5 and done < self._total:
            return
        self._last_write = now
        with self.hub.session() as s, s.begin():
            s.execute(
                update(Job)
                .where(*self.owner)
                .values(
                    progress=done,
                    progress_total=self._total,
                    message=message,
                    heartbeat_at=utcnow(),
                )
            )
            stopper = s.scalar(select(Job.cancelled_by).where(Job.id == self.job_id))
        if stopper:
            raise JobStopped(f"cancelled by {stopper}")


def owned(job: Job) -> tuple[Any, ...]:
    """WHERE clauses that match this run of the job only, not a later re-claim of it."""
    return (Job.id == job.id, Job.worker == job.worker, Job.attempts == job.attempts)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"


class Queued(Shape):
    """The answer to a request that queued a job: poll /api/jobs/{job} for its result."""

    job: int
    state: str = Field(description="queued")


class JobOut(Shape):
    """A job as the API answers it and `jobs show --json` prints it."""

    id: int
    kind: str
    args: dict[str, Any]
    state: str = Field(description="queued, running, done or failed")
    progress: float
    total: float
    message: str
    attempts: int
    result: dict[str, Any] | None
    error: str = Field(description="why it failed (a crash's traceback for admins only)")
    owner: str | None = Field(description="who queued it; null for the hub's own work")
    created_at: str
    finished_at: str | None


class JobList(Shape):
    jobs: list[JobOut]


def job_json(job: Job, viewer: Actor = HUB) -> dict[str, Any]:
    """The JSON shape of a job, shared by `jobs list --json` and the API. A crash's
    traceback (the lines after its first) is shown to admins only: it names the hub's
    paths and code."""
    error = job.error if viewer.has("admin") else job.error.split("\n", 1)[0]
    private = job.kind in PRIVATE_RESULTS and not (
        viewer.has("admin") or (job.owner and viewer.name == job.owner)
    )
    return {
        "id": job.id,
        "kind": job.kind,
        "args": job.args,
        "state": job.state,
        "progress": job.progress,
        "total": job.progress_total,
        "message": job.message,
        "attempts": job.attempts,
        "result": None if private else job.result,
        "error": error,
        "owner": job.owner or None,
        "created_at": job.created_at.isoformat(),
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
    }


class JobQueue:
    def __init__(self, hub: Hub):
        self.hub = hub

    def enqueue(
        self,
        kind: str,
        args: dict[str, Any],
        max_attempts: int = 3,
        for_worker: str = "",
        owner: Actor = HUB,
    ) -> int:
        """Queue a job for `owner`; with `for_worker`, only that worker (or a claim by id)
        may take it."""
        with self.hub.session() as s, s.begin():
            return self.enqueue_in(s, kind, args, max_attempts, for_worker, owner)

    def enqueue_in(
        self,
        session: Session,
        kind: str,
        args: dict[str, Any],
        max_attempts: int = 3,
        for_worker: str = "",
        owner: Actor = HUB,
    ) -> int:
        """`enqueue` within the caller's transaction: the job exists if and only if what
        it works on was stored (and one commit does both)."""
        if kind not in HANDLERS:
            raise UpstreamError(f"unknown job kind {kind!r}; known: {', '.join(sorted(HANDLERS))}")
        job = Job(
            kind=kind,
            args=args,
            max_attempts=max_attempts,
            for_worker=for_worker,
            owner="" if owner is HUB else owner.name,
        )
        session.add(job)
        session.flush()
        return job.id

    def get(self, job_id: int) -> Job:
        with self.hub.session() as s:
            job = s.get(Job, job_id)
            if job is None:
                raise NotFound(f"no job {job_id}")
            return job

    def list(self, state: str | None = None, limit: int = 50) -> list[Job]:
        with self.hub.session() as s:
            q = select(Job).order_by(Job.id.desc()).limit(limit)
            if state:
                q = q.where(Job.state == state)
            return list(s.scalars(q))

    def _stale(self) -> Any:
        """The WHERE clause of a runnable job: queued, or running with a stale heartbeat."""
        cutoff = utcnow() - timedelta(seconds=self.hub.settings.job_stale_after)
        return or_(
            Job.state == "queued",
            (Job.state == "running") & (Job.heartbeat_at < cutoff),
        )

    def claim(self, worker: str, job_id: int | None = None) -> Job | None:
        """Take one runnable job (queued, or running with a stale heartbeat), or None.

        The claim is a compare-and-set UPDATE, so two workers never run the same job. A
        job queued for one worker is taken only by that worker, or by a claim of its id.
        A runnable job out of attempts is given up instead (`give_up`).
        """
        runnable = self._stale()
        with self.hub.session() as s:
            q = select(Job.id, Job.attempts, Job.max_attempts).where(runnable).order_by(Job.id)
            if job_id is not None:
                q = q.where(Job.id == job_id)
            else:
                q = q.where(or_(Job.for_worker == "", Job.for_worker == worker))
            candidates = list(s.execute(q.limit(20)))
        for cid, attempts, max_attempts in candidates:
            if attempts >= max_attempts:
                self.give_up(cid, attempts)
                continue
            with self.hub.session() as s, s.begin():
                now = utcnow()
                taken = s.execute(  # type: ignore[attr-defined]
                    update(Job)
                    .where(Job.id == cid, runnable, Job.attempts == attempts)
                    .values(
                        state="running",
                        worker=worker,
                        attempts=attempts + 1,
                        heartbeat_at=now,
                        started_at=now,
                        error="",
                    )
                ).rowcount
            if taken == 1:
                return self.get(cid)
        return None

    def cancel(self, job_id: int, actor: Actor) -> Job:
        """Stop a job (who queued it, or a maintainer): a queued one fails now, a running
        one at its next progress report."""
        with self.hub.session() as s, s.begin():
            job = s.get(Job, job_id, with_for_update=True)
            if job is None:
                raise NotFound(f"no job {job_id}; see `upstream jobs list`")
            require(actor, "jobs.cancel", owner=job.owner or None)
            if job.state in ("done", "failed"):
                raise Conflict(f"job {job_id} is {job.state}; only a queued or running job stops")
            job.cancelled_by = actor.name
            if job.state == "queued":
                job.state, job.finished_at = "failed", utcnow()
                job.error = f"cancelled by {actor.name}"
        return self.get(job_id)

    def give_up(self, job_id: int, attempts: int) -> None:
        """Fail a job whose worker stopped and that has no attempt left, and put right what
        its run left half done (the kind's ABANDONED handler)."""
        with self.hub.session() as s, s.begin():
            gone = s.execute(  # type: ignore[attr-defined]
                update(Job)
                .where(Job.id == job_id, self._stale(), Job.attempts == attempts)
                .values(
                    state="failed",
                    finished_at=utcnow(),
                    error=f"gave up after {attempts} attempts (its worker stopped)",
                )
            ).rowcount
        if gone == 1 and attempts > 0:  # never started: nothing was left half done
            self._abandon(self.get(job_id))

    def _abandon(self, job: Job) -> None:
        """Put right what a run that ended without its result left half done."""
        if job.kind in ABANDONED:
            module_name, func_name = ABANDONED[job.kind].split(":")
            getattr(importlib.import_module(module_name), func_name)(self.hub, job)

    def reap(self) -> int:
        """Give up every job whose worker stopped and that has no attempt left; returns how
        many. Called before a step that a half-done run would block (a re-check, a release)."""
        with self.hub.session() as s:
            dead = list(
                s.execute(
                    select(Job.id, Job.attempts).where(
                        Job.state == "running",
                        self._stale(),
                        Job.attempts >= Job.max_attempts,
                    )
                )
            )
        for job_id, attempts in dead:
            self.give_up(job_id, attempts)
        return len(dead)

    def run(self, job: Job, on_progress: ProgressCallback | None = None) -> Job:
        """Run a claimed job to its end, recording result or error; returns the final row."""
        module_name, func_name = HANDLERS[job.kind].split(":")
        handler = getattr(importlib.import_module(module_name), func_name)
        ctx = JobContext(self.hub, job, on_progress)
        stop = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(job, stop), daemon=True)
        beat.start()
        values: dict[str, Any]
        try:
            result = handler(ctx)
            values = {"state": "done", "result": result or {}}
        except JobStopped as e:  # cancelled or out of time: no retry
            values = {"state": "failed", "error": str(e)}
        except Unavailable as e:  # a model server is down: worth another attempt
            retry = job.attempts < job.max_attempts
            values = {"state": "queued" if retry else "failed", "error": str(e)}
        except UpstreamError as e:  # the input is wrong: retrying cannot help
            values = {"state": "failed", "error": str(e)}
        except Exception as e:
            log.exception("job %s (%s) crashed", job.id, job.kind)
            retry = job.attempts < job.max_attempts
            values = {
                "state": "queued" if retry else "failed",
                "error": f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=8)}",
            }
        finally:
            stop.set()
            beat.join()
        with self.hub.session() as s, s.begin():
            # A worker that was presumed dead and replaced must not overwrite the new run.
            s.execute(update(Job).where(*owned(job)).values(finished_at=utcnow(), **values))
        final = self.get(job.id)
        stopped = bool(final.cancelled_by) or "job_time_limit" in final.error
        if final.state == "failed" and stopped:
            self._abandon(final)
        return final

    def run_foreground(
        self, kind: str, args: dict[str, Any], on_progress: ProgressCallback | None = None
    ) -> dict[str, Any]:
        """Enqueue a job and run it here and now (the CLI's way); returns its result."""
        return self.run_now(self.enqueue(kind, args, max_attempts=1), on_progress)

    def run_now(self, job_id: int, on_progress: ProgressCallback | None = None) -> dict[str, Any]:
        """Run a queued job here and now; returns its result, or raises JobFailed."""
        job = self.claim(worker_name(), job_id=job_id)
        # claim() fails only if another worker took the job within microseconds
        job = self.wait(job_id) if job is None else self.run(job, on_progress)
        return _outcome(job)

    def idle_worker(self) -> str | None:
        """An idle worker of this version on this host with a fresh heartbeat, or None."""
        fresh = utcnow() - timedelta(seconds=3 * WORKER_BEAT)
        with self.hub.session() as s:
            return s.scalar(
                select(WorkerProcess.name)
                .where(
                    WorkerProcess.host == socket.gethostname(),
                    WorkerProcess.version == __version__,
                    WorkerProcess.job_id.is_(None),
                    WorkerProcess.heartbeat_at > fresh,
                )
                .order_by(WorkerProcess.heartbeat_at.desc())
                .limit(1)
            )

    def run_anywhere(
        self,
        kind: str,
        args: dict[str, Any],
        on_progress: ProgressCallback | None = None,
        on_hand_over: Callable[[int, str], None] | None = None,
        on_take_back: Callable[[int], None] | None = None,
    ) -> dict[str, Any]:
        """Hand the job to an idle worker on this host if there is one, else run it here.

        `on_hand_over(job_id, worker)` is called when a worker was chosen, and
        `on_take_back(job_id)` if it did not take the job in time and it runs here after
        all. Returns the job's result, or raises JobFailed, wherever it ran. A handed-over
        job is tried once, like a job run here: a crash is not run a second time.
        """
        worker = self.idle_worker() if self.hub.settings.hand_over_jobs else None
        if worker is None:
            return self.run_foreground(kind, args, on_progress)
        job_id = self.enqueue(kind, args, max_attempts=1, for_worker=worker)
        if on_hand_over is not None:
            on_hand_over(job_id, worker)
        return self.follow(job_id, on_progress, on_take_back)

    def follow(
        self,
        job_id: int,
        on_progress: ProgressCallback | None = None,
        on_take_back: Callable[[int], None] | None = None,
    ) -> dict[str, Any]:
        """Wait for a job run elsewhere, passing its progress on; returns its result.

        A job still queued after HAND_OVER_WAIT seconds is claimed and run here. One whose
        worker died fails once its heartbeat is `job_stale_after` old (or is run again,
        if it has attempts left).
        """
        start = time.monotonic()
        while True:
            job = self.get(job_id)
            if job.state in ("done", "failed"):
                if on_progress is not None and job.state == "done" and job.progress_total:
                    on_progress(job.progress_total, job.progress_total, "")
                return _outcome(job)
            if time.monotonic() - start > HAND_OVER_WAIT:
                mine = self.claim(worker_name(), job_id=job_id)  # only if runnable
                if mine is not None:
                    if on_take_back is not None:
                        on_take_back(job_id)
                    return _outcome(self.run(mine, on_progress))
            if on_progress is not None and job.progress_total:
                on_progress(job.progress, job.progress_total, job.message)
            time.sleep(FOLLOW_POLL)

    def wait(self, job_id: int, timeout: float | None = None, poll: float = 0.2) -> Job:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.get(job_id)
            if job.state in ("done", "failed"):
                return job
            if deadline is not None and time.monotonic() > deadline:
                return job
            time.sleep(poll)

    def _heartbeat(self, job: Job, stop: threading.Event) -> None:
        while not stop.wait(self.hub.settings.job_heartbeat_every):
            try:
                with self.hub.session() as s, s.begin():
                    s.execute(update(Job).where(*owned(job)).values(heartbeat_at=utcnow()))
            except Exception:  # a busy database must not silently end the heartbeat
                log.exception("heartbeat of job %s failed; will retry", job.id)


class Worker:
    """Claims and runs jobs until stopped; used in a thread by `up`, alone by `worker`."""

    def __init__(self, hub: Hub, poll: float = 0.1):
        self.hub = hub
        self.queue = JobQueue(hub)
        self.poll = poll  # seconds between looks at the queue while idle: a job's latency
        self.name = worker_name()
        self.stopping = threading.Event()
        self.listed = False  # in `workers`, where CLIs look for an idle worker

    def run_once(self) -> Job | None:
        job = self.queue.claim(self.name)
        if job is None:
            return None
        log.info("worker %s runs job %s (%s)", self.name, job.id, job.kind)
        self._beat(job.id)
        try:
            # a thread of its own, which ends with the job: its OpenMP team goes with it
            # and does not slow a served model's decoding thread (upstream.threads)
            return in_fresh_thread(self.queue.run, job)
        finally:
            self._beat(None)

    def run_forever(self) -> None:
        """Run jobs until `stopping` is set, keeping this worker's row in `workers`."""
        self.listed = True
        self._forget_the_dead()
        self._beat(None)
        last_beat = time.monotonic()
        try:
            while not self.stopping.is_set():
                try:
                    ran = self.run_once()
                except Exception:
                    log.exception("worker loop error")
                    ran = None
                if ran is not None or time.monotonic() - last_beat >= WORKER_BEAT:
                    self._beat(None)
                    last_beat = time.monotonic()
                if ran is None:
                    self.stopping.wait(self.poll)
        finally:
            self._leave()

    def _beat(self, job_id: int | None) -> None:
        """Say this worker is alive, and which job it runs (None: it is idle)."""
        if not self.listed:  # `worker --once` runs what is queued and is gone
            return
        try:
            with self.hub.session() as s, s.begin():
                s.merge(
                    WorkerProcess(
                        name=self.name,
                        host=socket.gethostname(),
                        version=__version__,
                        job_id=job_id,
                        heartbeat_at=utcnow(),
                    )
                )
        except Exception:  # a busy database must not stop the worker
            log.exception("worker %s could not record its heartbeat", self.name)

    def _forget_the_dead(self) -> None:
        """Remove the rows of workers that were killed without leaving."""
        gone = utcnow() - timedelta(seconds=self.hub.settings.job_stale_after)
        try:
            with self.hub.session() as s, s.begin():
                s.execute(delete(WorkerProcess).where(WorkerProcess.heartbeat_at < gone))
        except Exception:
            log.exception("worker %s could not clean up the workers table", self.name)

    def _leave(self) -> None:
        self.listed = False
        try:
            with self.hub.session() as s, s.begin():
                s.execute(delete(WorkerProcess).where(WorkerProcess.name == self.name))
        except Exception:
            log.exception("worker %s could not remove its row", self.name)

    def start_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self.run_forever, name="upstream-worker", daemon=True)
        thread.start()
        return thread


def _outcome(job: Job) -> dict[str, Any]:
    """A finished job's result, or JobFailed with the first line of its error."""
    if job.state != "done":
        raise JobFailed(job.error.splitlines()[0] if job.error else f"job {job.id} failed")
    return job.result or {}
