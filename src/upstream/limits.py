"""Rate limits: how many writes one token, or one client address, may send per minute.

A sliding window per key, in this process's memory: the hub's API is one process per
machine (`upstream up`); limits across machines come with the scale-out work. The table
of keys is bounded: past `max_keys`, the keys idle longest are forgotten first.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque


class RateLimiter:
    """At most `per_minute` events per key in any 60 s; `hit` says how long to wait."""

    def __init__(self, per_minute: int, max_keys: int = 100_000, window: float = 60.0):
        self.per_minute = per_minute
        self.window = window
        self.max_keys = max_keys
        self._seen: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def hit(self, key: str, now: float | None = None) -> float:
        """Count one event for `key`; 0 if allowed, else the seconds until one would be."""
        if self.per_minute <= 0:
            return 0.0
        now = time.monotonic() if now is None else now
        with self._lock:
            times = self._seen.pop(key, None) or deque()
            self._seen[key] = times  # the most recently used key goes last
            while times and times[0] <= now - self.window:
                times.popleft()
            if len(times) >= self.per_minute:
                return max(times[0] + self.window - now, 0.001)
            times.append(now)
            while len(self._seen) > self.max_keys:
                self._seen.popitem(last=False)
            return 0.0
