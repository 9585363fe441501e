"""The demo workload: client threads calling a SessionPool while a chaos thread kills workers.

Every call ends in exactly one of three buckets, and the demo's verdict rests on them:

- ``ok`` — a result, and for session calls the *right* result (each client checks its session
  counters against what it expects);
- ``clear error`` — an exception that names what happened (`WorkerError` from a handler,
  `SessionLost`, `WorkerCrashed`, `CallTimeout`, `CheckoutTimeout`, `CircuitOpen`, ...);
- ``lost`` — anything else: an unexpected exception, or a session counter that silently lost
  state. Lost must stay 0. A call still running long after every timeout is counted as hung.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections import Counter
from typing import Any

import attrs

import otp
import pool
from bridge.circuit import CircuitOpen
from bridge.protocol import WorkerError
from bridge.session_pool import BridgeError, SessionLost, SessionPool

__all__ = ["DemoOptions", "Workload"]

CLEAR_ERRORS = (WorkerError, BridgeError, CircuitOpen, pool.CheckoutTimeout, pool.WorkerStartError, pool.CheckoutSkipped)


@attrs.frozen
class DemoOptions:
    duration: float = 20.0
    workers: int = 4
    clients: int = 8
    kill_every: float | None = 2.0
    flaky_rate: float = 0.02
    call_timeout: float = 5.0
    seed: int | None = None


class Workload:
    """Runs the clients and the chaos thread; all counters are guarded by one lock."""

    def __init__(self, sp: SessionPool, options: DemoOptions) -> None:
        self.sp = sp
        self.options = options
        self._lock = threading.Lock()
        self.outcomes: Counter[str] = Counter()  # guarded by _lock
        self.errors: Counter[str] = Counter()  # guarded by _lock
        self.lost_examples: list[str] = []  # guarded by _lock
        self.latencies: list[float] = []  # guarded by _lock
        self.kills = 0  # guarded by _lock
        self._in_flight: dict[int, float] = {}  # guarded by _lock: client -> call start
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.started_at = 0.0
        self.rng = random.Random(options.seed)

    # -- running ----------------------------------------------------------------------------

    def start(self) -> None:
        self.started_at = time.monotonic()
        for i in range(self.options.clients):
            # Seeds drawn here, in one thread: the shared generator is not used concurrently.
            seed = self.rng.random()
            self._threads.append(threading.Thread(target=self._client, args=(i, seed), name=f"demo-client-{i}", daemon=True))
        if self.options.kill_every:
            self._threads.append(threading.Thread(target=self._chaos, name="demo-chaos", daemon=True))
        for t in self._threads:
            t.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started_at

    def hung(self) -> int:
        """Calls in flight for longer than any timeout could explain."""
        limit = self.options.call_timeout + self.sp.config.checkout_timeout + 10.0
        now = time.monotonic()
        with self._lock:
            return sum(1 for t in self._in_flight.values() if now - t > limit)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            lat = sorted(self.latencies[-5000:])
            total = sum(self.outcomes.values())
            return {
                "calls": total,
                "ok": self.outcomes["ok"],
                "clear_errors": self.outcomes["clear"],
                "lost": self.outcomes["lost"],
                "kills": self.kills,
                "errors": dict(self.errors.most_common(6)),
                "p50_ms": lat[len(lat) // 2] * 1000 if lat else None,
                "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000 if lat else None,
                "calls_per_s": total / max(self.elapsed, 1e-9),
                "lost_examples": list(self.lost_examples[:3]),
            }

    # -- the clients ------------------------------------------------------------------------

    def _client(self, index: int, seed: float) -> None:
        rng = random.Random(seed)
        sessions: dict[str, int] = {}  # session id -> the counter value we expect
        while not self._stop.is_set():
            self._one_call(index, rng, sessions)

    def _one_call(self, index: int, rng: random.Random, sessions: dict[str, int]) -> None:
        kind = rng.random()
        started = time.monotonic()
        with self._lock:
            self._in_flight[index] = started
        try:
            if kind < 0.4:
                sid = f"c{index}-s{rng.randrange(3)}"
                value = self.sp.execute_in_session(sid, "counter_incr", [], timeout=self.options.call_timeout)
                expected = sessions.get(sid, 0) + 1
                sessions[sid] = value
                if value != expected:
                    self._count("lost", f"session {sid} returned {value}, expected {expected}")
                    return
            elif kind < 0.7:
                a, b = rng.randrange(1000), rng.randrange(1000)
                if self.sp.execute_anonymous("add", [a, b], timeout=self.options.call_timeout) != a + b:
                    self._count("lost", "add returned a wrong sum")
                    return
            else:
                self.sp.execute_anonymous("flaky", [self.options.flaky_rate], timeout=self.options.call_timeout)
            self._count("ok", duration=time.monotonic() - started)
        except SessionLost as exc:
            sessions.pop(exc.session_id, None)  # the next call starts the session afresh
            self._count("clear", kind=type(exc).__name__)
        except CLEAR_ERRORS as exc:
            self._count("clear", kind=type(exc).__name__)
        except Exception as exc:  # noqa: BLE001 - anything unexpected is what "lost" means
            self._count("lost", f"{type(exc).__name__}: {exc}")
        finally:
            with self._lock:
                self._in_flight.pop(index, None)

    def _count(self, outcome: str, example: str | None = None, *, kind: str | None = None, duration: float | None = None) -> None:
        with self._lock:
            self.outcomes[outcome] += 1
            if kind is not None:
                self.errors[kind] += 1
            if example is not None and len(self.lost_examples) < 20:
                self.lost_examples.append(example)
            if duration is not None:
                self.latencies.append(duration)

    # -- chaos ------------------------------------------------------------------------------

    def _chaos(self) -> None:
        interval = self.options.kill_every or 0.0
        while not self._stop.wait(interval):
            victims = self._worker_os_pids()
            if not victims:
                continue
            try:
                os.kill(self.rng.choice(victims), signal.SIGKILL)
            except ProcessLookupError:
                continue
            with self._lock:
                self.kills += 1

    def _worker_os_pids(self) -> list[int]:
        try:
            return self.sp.worker_os_pids()
        except otp.ProcessExit:
            return []  # the tree is restarting: try again next round
