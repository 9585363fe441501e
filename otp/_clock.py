"""Clocks for the parts of the runtime that count time: restart intensity, idle pings.

A clock is any callable returning seconds as a float, on a monotonic scale. Production code uses
`monotonic`; tests inject a `ManualClock` and move time by hand, so a test of "three restarts
within five seconds" needs no sleeping.

>>> clock = ManualClock()
>>> clock()
0.0
>>> clock.advance(5); clock()
5.0
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["Clock", "ManualClock", "monotonic"]

Clock = Callable[[], float]
"""Seconds on a monotonic scale; only differences between two readings mean anything."""

monotonic: Clock = time.monotonic


class ManualClock:
    """A clock that stands still until a test moves it. Safe to read and move from any thread.

    >>> clock = ManualClock(start=100.0)
    >>> clock.advance(0.5)
    >>> clock()
    100.5
    """

    def __init__(self, start: float = 0.0) -> None:
        self._lock = threading.Lock()
        # Guarded by _lock: the supervisor reads it from its thread while the test moves it.
        self._now = float(start)

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        """Move time forward by `seconds` (never backwards: the clock is monotonic)."""
        if seconds < 0:
            raise ValueError(f"a monotonic clock cannot go back: advance({seconds!r})")
        with self._lock:
            self._now += seconds

    def __repr__(self) -> str:
        return f"ManualClock({self():.6f})"
