"""Torch work in threads that end, so that a process keeps one OpenMP team.

libgomp, the OpenMP runtime of PyTorch's CPU builds on Linux, gives every thread that
starts a parallel region a team of worker threads of its own, kept until that thread
ends. Once a process holds more of those workers than it has CPUs, every team stops
spinning between regions and sleeps instead (libgomp's "throttled" spin count), and a
decoding step, hundreds of small parallel regions, pays a wake-up for each: on this
2-core machine a step of 16 rows took 78 ms on the only team and 101 ms once a second
thread had run torch work before (docs/benchmarks.md, serving).

So torch work that happens now and then in a long-lived thread (a model loaded for a
served request in a request thread, a job in the worker's loop, a batch of embeddings)
runs in a fresh thread that ends with it, and the threads that decode for as long as the
process serves (a served model's batcher) own the only lasting team.

`Batched` gathers the calls of many threads into batches of one function (the API's
single report filings: their embeddings, then their transaction).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, cast

T = TypeVar("T")
R = TypeVar("R")


def in_fresh_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`fn(*args, **kwargs)` run in a new thread, waited for; its exception is raised here."""
    out: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            out.append(fn(*args, **kwargs))
        except BaseException as e:  # handed to the caller
            error.append(e)

    thread = threading.Thread(target=run, name=f"fresh-{getattr(fn, '__name__', 'work')}")
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return out[0]


class Batched(Generic[T, R]):
    """One function of a batch (`run(items) -> results`, one result per item, in order),
    called item by item from many threads: whoever calls while no batch is running runs
    the waiting items with theirs; those who call meanwhile wait, and one of them runs the
    next batch. Nothing waits for a timer, so one caller alone is not slowed. An error of
    a batch is raised to every caller in it."""

    def __init__(self, run: Callable[[list[T]], list[R]], max_batch: int = 64):
        self.run = run
        self.max_batch = max_batch
        self._lock = threading.Lock()
        self._waiting: list[_Ticket[T, R]] = []
        self._busy = False

    def __call__(self, item: T) -> R:
        ticket: _Ticket[T, R] = _Ticket(item)
        with self._lock:
            self._waiting.append(ticket)
            ticket.lead = not self._busy
            self._busy = True
        try:
            while True:
                if ticket.lead:
                    ticket.lead = False
                    self._run_next()
                if ticket.done_ok or ticket.error is not None:
                    break
                ticket.done.wait()
                ticket.done.clear()
        except BaseException:  # interrupted while waiting: leave, and let the queue go on
            self._leave(ticket)
            raise
        if ticket.error is not None:
            raise ticket.error
        return cast(R, ticket.result)

    def _leave(self, ticket: _Ticket[T, R]) -> None:
        """Take back a caller's item that has not run; pass on the next batch if it was
        this caller's to run."""
        with self._lock:
            if ticket in self._waiting:
                self._waiting.remove(ticket)
            if ticket.lead:
                ticket.lead = False
                self._hand_on()

    def _hand_on(self) -> None:
        """With the lock held: the next batch to one of those waiting, or none is running."""
        if self._waiting:
            self._waiting[0].lead = True
            self._waiting[0].done.set()
        else:
            self._busy = False

    def _run_next(self) -> None:
        with self._lock:
            batch = self._waiting[: self.max_batch]
            del self._waiting[: self.max_batch]
        try:
            results = self.run([t.item for t in batch])
            if len(results) != len(batch):
                raise AssertionError(f"{len(results)} results for {len(batch)} items")
            for t, r in zip(batch, results, strict=True):
                t.result, t.done_ok = r, True
        except BaseException as e:  # every caller of the batch hears of it
            for t in batch:
                t.error = e
        with self._lock:
            self._hand_on()  # the next batch is run by one of those waiting for it
        for t in batch:
            t.done.set()


@dataclass
class _Ticket(Generic[T, R]):
    item: T
    done: threading.Event = field(default_factory=threading.Event)
    lead: bool = False  # woken to run the next batch, not because its own has run
    done_ok: bool = False
    result: R | None = None
    error: BaseException | None = None
