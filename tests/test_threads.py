"""Work run in a fresh thread: its answer or its error comes back, and the thread ends.
Calls batched across threads: each caller gets its own result, or its batch's error."""

import threading
import time
from collections.abc import Callable

import pytest

from upstream.threads import Batched, in_fresh_thread


def test_the_answer_comes_back_and_the_thread_is_gone() -> None:
    seen: list[str] = []

    def work(a: int, b: int = 0) -> int:
        seen.append(threading.current_thread().name)
        return a + b

    before = threading.active_count()
    assert in_fresh_thread(work, 2, b=3) == 5
    assert seen and seen[0] != threading.current_thread().name  # not run here
    assert threading.active_count() == before


def test_its_error_is_raised_in_the_caller() -> None:
    def broken() -> None:
        raise KeyError("nope")

    with pytest.raises(KeyError, match="nope"):
        in_fresh_thread(broken)


def recording(batched: Batched[int, int], outcomes: dict[int, object]) -> Callable[[int], None]:
    """A thread's target: `batched(i)`, its result or its error's text put in `outcomes`."""

    def call(i: int) -> None:
        try:
            outcomes[i] = batched(i)
        except BaseException as e:  # recorded for the test to compare
            outcomes[i] = str(e) or type(e).__name__

    return call


def test_calls_that_arrive_together_run_in_one_batch_each_getting_its_own_result() -> None:
    batches: list[list[int]] = []
    release = threading.Event()

    def square_all(items: list[int]) -> list[int]:
        batches.append(list(items))
        if len(batches) == 1:
            release.wait(10)  # the first batch runs while the others arrive
        return [i * i for i in items]

    batched: Batched[int, int] = Batched(square_all, max_batch=4)
    results: dict[int, int] = {}

    def call(i: int) -> None:
        results[i] = batched(i)

    first = threading.Thread(target=call, args=(0,))
    first.start()
    while not batches:
        time.sleep(0.001)
    rest = [threading.Thread(target=call, args=(i,)) for i in range(1, 7)]
    for t in rest:
        t.start()
    while len(batched._waiting) < 6:
        time.sleep(0.001)
    release.set()
    for t in [first, *rest]:
        t.join(10)
    assert results == {i: i * i for i in range(7)}
    assert batches[0] == [0]
    assert sorted(i for b in batches[1:] for i in b) == list(range(1, 7))
    assert [len(b) for b in batches[1:]] == [4, 2]  # max_batch, then the rest
    assert batched(9) == 81  # alone: runs at once, in its own batch
    assert batches[-1] == [9]


def test_an_error_of_a_batch_reaches_every_caller_in_it_and_the_next_batch_runs() -> None:
    release = threading.Event()
    calls = 0

    def run(items: list[int]) -> list[int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            release.wait(10)
            return items
        if calls == 2:
            raise ValueError(f"bad batch {sorted(items)}")
        return items

    batched: Batched[int, int] = Batched(run)
    outcomes: dict[int, object] = {}

    call = recording(batched, outcomes)
    threads = [threading.Thread(target=call, args=(i,)) for i in range(3)]
    threads[0].start()
    while calls == 0:
        time.sleep(0.001)
    for t in threads[1:]:
        t.start()
    while len(batched._waiting) < 2:
        time.sleep(0.001)
    release.set()
    for t in threads:
        t.join(10)
    assert outcomes == {0: 0, 1: "bad batch [1, 2]", 2: "bad batch [1, 2]"}
    assert batched(5) == 5  # the queue goes on after a failed batch


def test_a_run_that_gives_the_wrong_number_of_results_is_an_error() -> None:
    batched: Batched[int, int] = Batched(lambda items: [])
    with pytest.raises(AssertionError, match="0 results for 1 items"):
        batched(1)


def test_a_caller_interrupted_while_waiting_leaves_and_the_queue_goes_on() -> None:
    import ctypes

    release = threading.Event()

    def run(items: list[int]) -> list[int]:
        if items == [0]:
            release.wait(10)
        return items

    batched: Batched[int, int] = Batched(run)
    outcomes: dict[int, object] = {}

    call = recording(batched, outcomes)
    first = threading.Thread(target=call, args=(0,))
    first.start()
    while not batched._busy:
        time.sleep(0.001)
    second = threading.Thread(target=call, args=(1,))
    second.start()
    while not batched._waiting:  # the first's batch runs; the second waits its turn
        time.sleep(0.001)
    # as Ctrl-C reaches a main thread that waits for its turn
    assert second.ident is not None
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(second.ident), ctypes.py_object(KeyboardInterrupt)
    )
    release.set()
    first.join(10)
    second.join(10)
    assert outcomes == {0: 0, 1: "KeyboardInterrupt"}
    third = threading.Thread(target=call, args=(2,), daemon=True)
    third.start()
    third.join(5)
    assert outcomes[2] == 2 and not batched._busy and batched._waiting == []
