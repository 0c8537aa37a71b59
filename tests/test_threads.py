"""Work run in a fresh thread: its answer or its error comes back, and the thread ends."""

import threading

import pytest

from upstream.threads import in_fresh_thread


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
