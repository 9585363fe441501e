"""A circuit breaker per worker command: stop hammering a command that keeps failing.

Closed: calls go through; `failure_threshold` failures in a row open the circuit. Open: calls
fail at once with `CircuitOpen` for `reset_timeout` seconds. Half-open: one trial call goes
through; success closes the circuit, failure opens it again.

>>> breaker = CircuitBreaker(failure_threshold=2, reset_timeout=60)
>>> breaker.before("parse"); breaker.failure("parse")
>>> breaker.before("parse"); breaker.failure("parse")
>>> breaker.state("parse")
'open'
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import attrs

__all__ = ["CircuitBreaker", "CircuitOpen"]


class CircuitOpen(RuntimeError):
    """The command failed too often; calls are refused until the circuit half-opens."""

    def __init__(self, command: str, failures: int, retry_in: float) -> None:
        super().__init__(
            f"circuit for command {command!r} is open after {failures} failures in a row; "
            f"retry in {retry_in:.1f} s"
        )
        self.command = command
        self.failures = failures
        self.retry_in = retry_in


@attrs.define
class _Circuit:
    failures: int = 0
    opened_at: float | None = None
    trial_running: bool = False


class CircuitBreaker:
    """Per-command circuits; thread-safe. `clock` is injectable for tests."""

    def __init__(
        self,
        failure_threshold: int = 5,
        reset_timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError(f"failure_threshold must be >= 1, got {failure_threshold!r}")
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self._clock = clock
        self._lock = threading.Lock()
        self._circuits: dict[str, _Circuit] = {}  # guarded by _lock
        # The commands that have a circuit, republished (a new frozenset) under _lock whenever
        # one is added or dropped: every call checks it, and for the usual command (no failure
        # on record) that one read, without the lock, is all there is to do. A concurrent
        # failure it does not see yet is one the call raced, and either order is a valid one.
        self._tracked: frozenset[str] = frozenset()

    def before(self, command: str) -> None:
        """Raise `CircuitOpen` if `command` may not run now."""
        if command not in self._tracked:
            return
        with self._lock:
            c = self._circuits.get(command)
            if c is None or c.opened_at is None:
                return
            left = c.opened_at + self.reset_timeout - self._clock()
            if left > 0 or c.trial_running:
                raise CircuitOpen(command, c.failures, max(left, 0.0))
            c.trial_running = True  # half-open: this caller is the trial

    def success(self, command: str) -> None:
        if command not in self._tracked:
            return
        with self._lock:
            if self._circuits.pop(command, None) is not None:
                self._tracked = frozenset(self._circuits)

    def failure(self, command: str) -> None:
        with self._lock:
            c = self._circuits.get(command)
            if c is None:
                c = self._circuits[command] = _Circuit()
                self._tracked = frozenset(self._circuits)
            c.failures += 1
            c.trial_running = False
            if c.failures >= self.failure_threshold:
                c.opened_at = self._clock()

    def state(self, command: str) -> str:
        """"closed", "open" or "half_open"."""
        with self._lock:
            c = self._circuits.get(command)
            if c is None or c.opened_at is None:
                return "closed"
            return "open" if self._clock() < c.opened_at + self.reset_timeout else "half_open"

    def open_circuits(self) -> list[str]:
        with self._lock:
            return sorted(cmd for cmd, c in self._circuits.items() if c.opened_at is not None)
