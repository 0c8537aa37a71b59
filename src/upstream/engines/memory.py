"""Freed memory kept for reuse, so that torch work does not fault its pages in again.

glibc's malloc serves a large allocation (128 KB at first, up to 32 MB as it adapts)
with a fresh `mmap` and gives it back on free, and it trims the free top of its heap
back to the system. A tensor in a training step or a decoding step is such an
allocation, made and freed again at every step: so every step touches new pages, and
the kernel zeroes and maps each one on first touch (a minor fault). In the 2-core VM of
docs/benchmarks.md a fault cost 2.7 us, and a training step of SmolLM2 took 41,000 of
them (about 110 ms of a 1.1 s step).

`keep_freed_memory()` tells malloc to serve every size from its heap and to keep what is
freed there (`mallopt`: no mmap, a trim threshold of 1 GB), so a step reuses the pages
of the step before: 13,000 faults a step, 3 % faster. The cost is memory that is not
given back to the system while the process lives: at most its peak use, plus up to the
trim threshold. `UPSTREAM_KEEP_FREED_MEMORY=0` turns it off; on other C libraries
it does nothing.
"""

from __future__ import annotations

import ctypes
import functools
import os

_M_TRIM_THRESHOLD = -1  # glibc's malloc.h
_M_MMAP_MAX = -4
TRIM_THRESHOLD = 1 << 30


@functools.cache
def keep_freed_memory() -> bool:
    """Set malloc to keep freed memory for reuse (once per process); whether it is set."""
    if os.environ.get("UPSTREAM_KEEP_FREED_MEMORY", "1") == "0":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the interpreter runs on
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to set
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success; both, or neither is worth having
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
