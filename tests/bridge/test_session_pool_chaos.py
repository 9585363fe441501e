"""The chaos test of issue 5: callers in 8 threads while worker subprocesses are SIGKILLed.

Every call must return the right result or one of the bridge's clear errors, no call may hang,
a session must never be served by a worker that lacks its state, the pool must converge back to
full size, and afterwards no worker subprocess may be left (the conftest also checks threads,
children and fds).
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import otp
import pool
from bridge.session_pool import (
    CallTimeout,
    CircuitOpen,
    SessionLost,
    SessionPool,
    WorkerCrashed,
    WorkerError,
)

CLEAR_ERRORS = (
    WorkerError, SessionLost, WorkerCrashed, CallTimeout, CircuitOpen, pool.CheckoutTimeout,
    pool.WorkerStartError,
)
POOL_SIZE = 4
CLIENTS = 8
DURATION = 4.0
KILL_EVERY = 0.3
CALL_TIMEOUT = 3.0
CHECKOUT_TIMEOUT = 2.0


def wait_until(check: Callable[[], Any], timeout: float = 10.0, what: str = "the condition") -> Any:
    """Poll `check` in small otp.sleep steps until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        otp.sleep(0.01)


def is_full(sp: SessionPool, size: int) -> bool:
    s = sp.stats()
    return s.workers == size and s.idle == size and s.starting == 0 and s.busy == 0


def worker_pids(sp: SessionPool) -> dict[str, int]:
    out = {}
    for wid, actor in sp.workers():
        try:
            out[wid] = otp.call(actor, "handle", 5.0).port.os_pid
        except otp.ProcessExit:
            if otp.is_alive(actor):
                raise
    return out


def our_children() -> set[int]:
    pids: set[int] = set()
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/children") as f:
                pids.update(int(p) for p in f.read().split())
        except OSError:
            pass
    return pids


class Session:
    """One client's session counter, and the rule it must follow: each success is the last
    value plus one, except that after `SessionLost` it starts again at 1; and a call that lost
    the worker (WorkerCrashed, CallTimeout) must be followed by SessionLost before any success."""

    def __init__(self, sid: str) -> None:
        self.sid = sid
        self.last = 0
        self.must_be_lost = False
        self.lost = 0

    def success(self, value: int) -> None:
        assert not self.must_be_lost, f"{self.sid}: served ({value}) after its worker failed, without SessionLost"
        assert value == self.last + 1, f"{self.sid}: got {value} after {self.last}: state from another worker?"
        self.last = value

    def failure(self, exc: BaseException) -> None:
        if isinstance(exc, SessionLost):
            assert exc.session_id == self.sid
            self.last = 0
            self.must_be_lost = False
            self.lost += 1
        elif isinstance(exc, (WorkerCrashed, CallTimeout)):
            self.must_be_lost = True


def client(sp: SessionPool, me: int, until: float, problems: list[str]) -> tuple[Session, Counter[str]]:
    session = Session(f"chaos-{me}")
    outcomes: Counter[str] = Counter()
    rng = random.Random(me)
    n = 0
    while time.monotonic() < until:
        n += 1
        op = rng.choice(["add", "add", "echo", "session", "session", "sleep", "fail"])
        try:
            match op:
                case "add":
                    ok = sp.execute_anonymous("add", [me * 1000, n]) == me * 1000 + n
                case "echo":
                    payload = {"client": me, "n": n, "data": "x" * (n % 50)}
                    ok = sp.execute_anonymous("echo", [payload]) == payload
                case "sleep":
                    ok = sp.execute_anonymous("sleep", [0.02]) == 0.02
                case "fail":
                    sp.execute_anonymous("fail", [f"on purpose {n}"])
                    ok = False
                case _:
                    session.success(sp.execute_in_session(session.sid, "counter_incr"))
                    ok = True
        except CLEAR_ERRORS as exc:
            if isinstance(exc, WorkerError) and not (op == "fail" and exc.message == f"on purpose {n}"):
                problems.append(f"client {me}: {op} raised a handler error: {exc!r}")
            if op == "session":
                session.failure(exc)
            outcomes[f"{op}: {type(exc).__name__}"] += 1
            continue
        except BaseException as exc:  # noqa: BLE001 - anything else is a finding
            problems.append(f"client {me}: {op} raised {exc!r}")
            continue
        if not ok:
            problems.append(f"client {me}: {op} returned a wrong result")
        outcomes[f"{op}: ok"] += 1
    return session, outcomes


def test_callers_in_eight_threads_survive_workers_killed_at_random() -> None:
    sp = SessionPool.start(
        "chaos", POOL_SIZE, ["bridge.examples"], close_timeout=0.3, call_timeout=CALL_TIMEOUT,
        checkout_timeout=CHECKOUT_TIMEOUT, max_restarts=1000, max_seconds=10,
        circuit_failures=5, circuit_reset=0.3,
    )
    seen: set[int] = set()
    killed: list[int] = []
    outcomes: Counter[str] = Counter()
    problems: list[str] = []
    sessions: dict[int, Session] = {}
    errors: list[BaseException] = []
    lock = threading.Lock()
    try:
        first_pool = otp.whereis(("chaos", "pool"))
        seen.update(worker_pids(sp).values())
        until = time.monotonic() + DURATION

        def run(me: int) -> None:
            try:
                sessions[me], counts = client(sp, me, until, problems)
                with lock:
                    outcomes.update(counts)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [
            threading.Thread(target=run, args=(i,), name=f"chaos-client-{i}", daemon=True) for i in range(CLIENTS)
        ]
        for t in threads:
            t.start()

        rng = random.Random(42)
        while time.monotonic() < until:
            otp.sleep(KILL_EVERY)
            pids = worker_pids(sp)
            seen.update(pids.values())
            if pids:
                victim = rng.choice(sorted(pids.values()))
                try:
                    os.kill(victim, signal.SIGKILL)
                    killed.append(victim)
                except ProcessLookupError:
                    pass

        # No call hangs: a call is bounded by checkout + call timeouts; the clients stop at `until`.
        deadline = until + CHECKOUT_TIMEOUT + CALL_TIMEOUT + 5.0
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        hung = [t.name for t in threads if t.is_alive()]
        assert not hung, f"clients still in a call long after the end: {hung}"
        assert not errors, errors
        assert not problems, "\n".join(problems)

        assert len(set(killed)) >= 8, f"only {len(set(killed))} kills"
        successes = sum(v for k, v in outcomes.items() if k.endswith(": ok"))
        assert successes >= 100, outcomes
        assert any(k.startswith("session") and not k.endswith("ok") for k in outcomes), outcomes

        def converged() -> bool:
            # The pool's count alone can run ahead of a death it has not processed yet.
            if not is_full(sp, POOL_SIZE):
                return False
            live = worker_pids(sp)
            return len(live) == POOL_SIZE and not set(live.values()) & set(killed)

        wait_until(converged, 15, "the pool to converge to full size")
        assert otp.whereis(("chaos", "pool")) == first_pool, "within intensity: never a tree restart"
        seen.update(worker_pids(sp).values())
        # Every worker the pool holds is a working one: none of these calls may fail.
        holders = {sp.execute_anonymous("ping")["worker_id"] for _ in range(POOL_SIZE * 2)}
        for k in range(POOL_SIZE * 2):
            assert sp.execute_anonymous("add", [k, k]) == 2 * k
        assert holders == set(worker_pids(sp)), "idle workers are handed out in turn: all were used"
        wait_until(lambda: not (our_children() & set(killed)), 10, "every killed worker to be reaped")

        # Each session carries on by the same rule: the next call is SessionLost or last + 1.
        for me, session in sessions.items():
            try:
                session.success(sp.execute_in_session(session.sid, "counter_incr"))
            except SessionLost as exc:
                session.failure(exc)
                session.success(sp.execute_in_session(session.sid, "counter_incr"))
        s = sp.stats()
        assert s.restarts >= len(set(killed)) and s.calls >= successes
        assert s.worker_failures == sum(v for k, v in outcomes.items() if k.endswith(("WorkerCrashed", "CallTimeout")))
    finally:
        sp.stop()
    wait_until(lambda: not (our_children() & seen), 10, "every worker subprocess to be gone")
    print(f"\nchaos: {len(set(killed))} kills, {len(seen)} workers seen; outcomes: {dict(sorted(outcomes.items()))}")
