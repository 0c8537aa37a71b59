"""Freed memory kept for reuse (`engines.memory`): a step's pages are not faulted in again."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# Allocates and frees the same 40 MB (above glibc's largest adaptive mmap threshold,
# so by default each one is a fresh mapping), writing every page, in the main thread
# and in fresh threads as jobs run; prints the page faults of the repeats per page.
PROBE = """
import resource, threading
from upstream.engines.memory import keep_freed_memory
print(keep_freed_memory())
SIZE, PAGE = 40 << 20, 4096

def touch():
    buffer = bytearray(SIZE)
    buffer[::PAGE] = b"x" * (SIZE // PAGE)

def faults_per_page(run):
    run()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(4):
        run()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / (4 * SIZE // PAGE)

def in_thread():
    t = threading.Thread(target=touch)
    t.start()
    t.join()

print(faults_per_page(touch), faults_per_page(in_thread))
"""


def _probe(keep: bool) -> tuple[str, float, float]:
    env = {**os.environ, "UPSTREAM_KEEP_FREED_MEMORY": "1" if keep else "0"}
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0], float(out[1]), float(out[2])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_memory_is_reused_without_faulting_its_pages_again() -> None:
    kept, main_thread, fresh_thread = _probe(keep=False)
    assert kept == "False"
    assert main_thread > 0.9 and fresh_thread > 0.9  # every page faulted in each time
    kept, main_thread, fresh_thread = _probe(keep=True)
    assert kept == "True"
    assert main_thread < 0.05 and fresh_thread < 0.05
