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
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


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
