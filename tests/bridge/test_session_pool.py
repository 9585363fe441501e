"""SessionPool against real worker subprocesses: the seed failures, affinity, errors, health.

Every test starts its own pool under its own name and stops it (the conftest fails a test that
leaves a thread, a child process or an fd behind). Nothing here waits with a bare sleep: tests
wait on calls, Downs, threading events, or poll a condition with `wait_until`.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from loguru import logger

import otp
import pool
from bridge.session_pool import (
    CallTimeout,
    CircuitOpen,
    PoolUnavailable,
    SessionLost,
    SessionPool,
    WorkerCrashed,
    WorkerError,
)
from bridge.testing import process_gone, reaped_child
from otp import observer, telemetry
from otp.testing import wait_until

HANDLERS = ["bridge.examples"]
# Short close timeouts keep teardown of killed or hung workers quick; generous call and
# checkout timeouts keep the tests honest on a loaded machine.
OPTIONS: dict[str, Any] = {"close_timeout": 0.3, "call_timeout": 10.0, "checkout_timeout": 5.0}


# -- helpers ----------------------------------------------------------------------------------


@contextmanager
def running(name: Any, pool_size: int = 2, **options: Any) -> Iterator[SessionPool]:
    sp = SessionPool.start(name, pool_size, HANDLERS, **{**OPTIONS, **options})
    try:
        yield sp
    finally:
        sp.stop()


def is_full(sp: SessionPool, size: int) -> bool:
    """All `size` workers idle and none starting (False while the pool is being restarted)."""
    try:
        s = sp.stats()
    except otp.ProcessExit:
        return False
    return s.workers == size and s.idle == size and s.starting == 0 and s.busy == 0


def worker_pids(sp: SessionPool) -> dict[str, int]:
    """``{worker_id: os pid}`` of the live workers: the pool's `workers()`, then each actor's
    handle. An actor that dies while we ask is left out."""
    out = {}
    for wid, actor in sp.workers():
        try:
            out[wid] = otp.call(actor, "handle", 5.0).port.os_pid
        except otp.ProcessExit:
            if otp.is_alive(actor):
                raise
    return out


def replaced(sp: SessionPool, size: int, gone: str) -> bool:
    return is_full(sp, size) and gone not in worker_pids(sp)


class Threads:
    """Run functions in plain threads; keep what each returned or raised."""

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []
        self.results: dict[Any, Any] = {}
        self.errors: dict[Any, BaseException] = {}

    def start(self, key: Any, fun: Callable[[], Any]) -> None:
        def body() -> None:
            try:
                self.results[key] = fun()
            except BaseException as exc:  # noqa: BLE001 - reported by join
                self.errors[key] = exc

        t = threading.Thread(target=body, name=f"test-{key}", daemon=True)
        self.threads.append(t)
        t.start()

    def join(self, timeout: float) -> dict[Any, Any]:
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        hung = [t.name for t in self.threads if t.is_alive()]
        assert not hung, f"threads still running after {timeout} s: {hung}"
        assert not self.errors, f"threads failed: {self.errors!r}"
        return self.results


def hold_a_worker(name: Any, held: threading.Event, release: threading.Event) -> Callable[[], str]:
    """A function that checks a worker out of the pool and keeps it until `release` is set."""

    def fun(from_: Any, handle: Any) -> tuple[str, str]:
        held.set()
        assert release.wait(20), "the test never released the worker"
        return handle.worker_id, "ok"

    return lambda: pool.checkout(pool.Pool((name, "pool")), "anonymous", fun, timeout=10)


def write_module(tmp_path: Any, name: str, text: str) -> dict[str, str]:
    (tmp_path / f"{name}.py").write_text(text)
    return {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


# -- 1. the seed failures -----------------------------------------------------------------------


def test_an_invalid_checkout_type_is_refused_at_the_call_site_and_the_pool_keeps_serving() -> None:
    with running("bad_cmd", 1) as sp:
        pool_pid = otp.whereis(("bad_cmd", "pool"))
        ran: list[Any] = []
        with pytest.raises(pool.UnknownCommand) as info:
            pool.checkout(pool.Pool(("bad_cmd", "pool")), "bogus", lambda f, h: (ran.append(h), "ok"))
        text = str(info.value)
        assert "'bogus'" in text and "'anonymous'" in text and "'session'" in text, text
        assert info.value.command == "bogus"
        # Near misses are refused the same way: a session command needs exactly one session id.
        for near_miss in [("session",), ("sessions", "s1"), ("session", "s1", "extra")]:
            with pytest.raises(pool.UnknownCommand):
                pool.checkout(pool.Pool(("bad_cmd", "pool")), near_miss, lambda f, h: (ran.append(h), "ok"))
        assert ran == [], "the refused checkouts must not have run their function"
        assert sp.execute_anonymous("add", [1, 2]) == 3
        assert sp.execute_in_session("s1", "counter_incr") == 1
        assert otp.whereis(("bad_cmd", "pool")) == pool_pid, "the pool must not have crashed"
        s = sp.stats()
        assert (s.workers, s.idle, s.restarts) == (1, 1, 0)


def test_a_session_id_the_protocol_cannot_carry_is_refused_and_harms_no_worker() -> None:
    with running("unhashable", 2) as sp:
        before = worker_pids(sp)
        for bad in [["not", "hashable"], ("a", "tuple"), 1.5, True]:
            with pytest.raises(TypeError, match="session_id must be a str or an int"):
                sp.execute_in_session(bad, "counter_incr")
        with pytest.raises(pool.UnknownCommand):
            pool.checkout(pool.Pool(("unhashable", "pool")), ("session", {"a": 1}), lambda f, h: (None, "ok"))
        assert sp.execute_in_session(7, "counter_incr") == 1 and sp.execute_in_session("7", "counter_incr") == 1
        assert sp.stats().sessions == 2
        assert worker_pids(sp) == before
        assert sp.stats().restarts == 0


def test_a_worker_that_fails_to_import_its_handlers_fails_the_start_at_once_with_the_traceback(tmp_path) -> None:
    env = write_module(tmp_path, "broken_mod", "import no_such_dependency_xyz\n")
    with pytest.raises(otp.StartError) as info:
        # Not after start_timeout (which would outlast the test's own timeout): once every
        # worker failed to start, in a row, the start gives up.
        SessionPool.start("broken", 2, ["broken_mod"], env=env, start_timeout=600, close_timeout=0.3)
    text = str(info.value)
    # In words first, then the worker's own stderr, line by line (not a repr with "\n" in it).
    assert text.startswith(
        "session pool 'broken' did not start: 0 of 2 workers ready; 2 worker starts failed in a row"
    ), text
    assert "exited during startup" in text and "(exit status 3)" in text
    assert "\nModuleNotFoundError: No module named 'no_such_dependency_xyz'" in text, text
    assert "cannot import handler module 'broken_mod'" in text
    # The reason term is still the supervisor's, for code that matches on it.
    assert info.value.reason[0] == "failed_to_start_child" and info.value.reason[1] == "pool"
    assert info.value.reason[2][0] == "min_ready_failed"
    assert "no_such_dependency_xyz" in str(info.value.reason[2][-1])
    assert otp.whereis("broken") is None and otp.whereis(("broken", "pool")) is None
    # The name is free again: a good pool starts under it.
    with running("broken", 1) as sp:
        assert sp.execute_anonymous("echo", ["ok"]) == "ok"


def test_concurrent_first_callers_on_a_fresh_pool_do_not_time_out() -> None:
    go = threading.Event()
    box: dict[str, SessionPool] = {}
    callers = Threads()
    for i in range(8):

        def call(i: int = i) -> Any:
            assert go.wait(30), "the pool never started"
            return box["sp"].execute_anonymous("sleep", [0.05]), box["sp"].execute_anonymous("add", [i, 100])

        callers.start(i, call)
    with running("fresh", 4, checkout_timeout=1.0) as sp:
        box["sp"] = sp
        go.set()
        results = callers.join(20)
        assert results == {i: (0.05, i + 100) for i in range(8)}
        s = sp.stats()
        assert s.ok == 16 and s.refused == 0 and s.restarts == 0


def test_callers_that_find_the_pool_while_its_workers_still_start_are_served() -> None:
    """The pool's name exists before its workers are ready: early callers queue, then get one."""
    name = "early"
    callers = Threads()
    asked_at: list[float] = []

    def call(i: int) -> Any:  # polls for the pool's name and checks out at once, racing the start
        pid = wait_until(lambda: otp.whereis((name, "pool")), 30, "the pool's name")
        asked_at.append(time.monotonic())
        return pool.checkout(pid, "anonymous", lambda f, h: (h.call("add", [i, 1]), "ok"), timeout=20)

    for i in range(8):
        callers.start(i, lambda i=i: call(i))
    with running(name, 2):
        started_at = time.monotonic()
        assert callers.join(30) == {i: i + 1 for i in range(8)}
    assert min(asked_at) < started_at, "some caller must have asked before the workers were ready"


def test_unrelated_messages_arriving_during_init_do_not_break_anything() -> None:
    name = "junk"
    starter = Threads()
    starter.start("sp", lambda: SessionPool.start(name, 3, HANDLERS, **OPTIONS))
    junk = ["hello", ("port", "data"), 42, {"id": 1, "ok": True}, otp.Down(otp.make_ref(), otp.self(), "fake")]
    # An Exit record is junk to the pool and the supervisors (it comes from no child or parent
    # of theirs). Not to a worker actor: it traps exits, and `otp.exit(actor, reason)` - which
    # it sees as this very record - is how the pool tells it to stop, as in Erlang.
    exit_junk = otp.Exit(otp.self(), "fake")
    to_pool = 0
    hit: set[otp.Pid] = set()
    actors: set[otp.Pid] = set()

    def send_junk(target: otp.Pid, *, with_exit: bool = True) -> None:
        for msg in junk + ([exit_junk] if with_exit else []):
            otp.send(target, msg)

    while starter.threads[0].is_alive():
        pool_pid = otp.whereis((name, "pool"))
        if pool_pid is not None:
            send_junk(pool_pid)
            to_pool += 1
        for target in (otp.whereis(name), otp.whereis((name, "workers"))):
            if target is not None and target not in hit:  # once each: supervisors log them
                send_junk(target)
                hit.add(target)
        workers_sup = otp.whereis((name, "workers"))
        if workers_sup is not None:
            try:
                children = otp.DynamicSupervisor.which_children(workers_sup, timeout=1.0)
            except otp.ProcessExit:
                children = []
            for _, pid, _, _ in children:
                if isinstance(pid, otp.Pid) and pid not in actors:
                    send_junk(pid, with_exit=False)
                    actors.add(pid)
        otp.sleep(0.005)
    sp = starter.join(30)["sp"]
    try:
        assert to_pool > 0 and len(hit) == 2 and actors, "the junk must have arrived while the pool started"
        pool_pid = otp.whereis((name, "pool"))
        # And once more, now that it runs.
        send_junk(pool_pid)
        send_junk(sp.supervisor)
        for _, actor in sp.workers():
            send_junk(actor, with_exit=False)
        assert sp.execute_anonymous("add", [2, 2]) == 4
        assert [sp.execute_in_session("j", "counter_incr") for _ in range(3)] == [1, 2, 3]
        assert is_full(sp, 3) and sp.stats().restarts == 0
        assert otp.whereis((name, "pool")) == pool_pid
        assert all(otp.is_alive(pid) for pid in actors), "every actor that got junk is still serving"
        assert actors <= {pid for _, pid in sp.workers()}
    finally:
        sp.stop()


def test_a_client_killed_while_queued_leaves_the_worker_intact() -> None:
    name = "queued"
    held, release = threading.Event(), threading.Event()
    holder = Threads()
    with running(name, 1) as sp:
        before = worker_pids(sp)
        try:
            holder.start("holder", hold_a_worker(name, held, release))
            assert held.wait(10)
            client = otp.spawn(lambda: sp.execute_anonymous("echo", ["never"]))
            ref = otp.monitor(client)
            wait_until(lambda: sp.stats().waiting == 1, what="the client to queue")
            otp.exit(client, "kill")
            down = otp.receive(lambda m: isinstance(m, otp.Down) and m.ref == ref, timeout=10)
            assert down is not otp.TIMEOUT and down.reason == "killed"
            wait_until(lambda: sp.stats().waiting == 0, what="the pool to drop the dead client's request")
        finally:
            release.set()
        assert holder.join(10) == {"holder": next(iter(before))}
        wait_until(lambda: is_full(sp, 1), what="the worker to come back")
        assert worker_pids(sp) == before, "the same worker, same subprocess"
        assert sp.stats().restarts == 0
        assert sp.execute_anonymous("echo", ["after"]) == "after"


def test_a_client_killed_inside_a_call_gets_its_worker_replaced() -> None:
    with running("killed_in_call", 2) as sp:
        before = worker_pids(sp)
        client = otp.spawn(lambda: sp.execute_anonymous("sleep", [30]))
        ref = otp.monitor(client)
        wait_until(lambda: sp.stats().busy == 1, what="the client's call to start")
        otp.exit(client, "kill")
        down = otp.receive(lambda m: isinstance(m, otp.Down) and m.ref == ref, timeout=10)
        assert down is not otp.TIMEOUT and down.reason == "killed"

        def replaced_one() -> bool:
            return is_full(sp, 2) and len(set(worker_pids(sp)) - set(before)) == 1

        wait_until(replaced_one, what="the pool to replace the client's worker")
        (gone,) = set(before) - set(worker_pids(sp))
        wait_until(lambda: reaped_child(before[gone]), what="the worker subprocess to end")
        assert sp.stats().restarts == 1
        assert [sp.execute_anonymous("add", [i, i]) for i in range(4)] == [0, 2, 4, 6]


def test_two_pools_of_the_same_worker_module_run_side_by_side_with_isolated_sessions() -> None:
    with running("pool_a", 2) as a, running("pool_b", 2) as b:
        assert [a.execute_in_session("s", "counter_incr") for _ in range(3)] == [1, 2, 3]
        assert b.execute_in_session("s", "counter_incr") == 1
        pa, pb = worker_pids(a), worker_pids(b)
        assert all(w.startswith("pool_a-") for w in pa) and all(w.startswith("pool_b-") for w in pb)
        assert not set(pa.values()) & set(pb.values())

        threads = Threads()
        threads.start("a", lambda: [a.execute_in_session("s", "counter_incr") for _ in range(20)])
        threads.start("b", lambda: [b.execute_in_session("s", "counter_incr") for _ in range(20)])
        results = threads.join(30)
        assert results["a"] == list(range(4, 24)) and results["b"] == list(range(2, 22))
        assert a.execute_in_session("s", "counter_get") == 23
        assert b.execute_in_session("s", "counter_get") == 21

        with pytest.raises(otp.StartError, match="already_started"):
            SessionPool.start("pool_a", 1, HANDLERS, **OPTIONS)
        a.stop()
        assert b.execute_anonymous("add", [1, 1]) == 2 and b.execute_in_session("s", "counter_get") == 21


# -- 2. session affinity ----------------------------------------------------------------------


def test_a_session_keeps_its_worker_while_others_run_and_is_lost_with_it() -> None:
    with running("affinity", 3) as sp:
        sessions = [f"s{i}" for i in range(4)]
        stop = threading.Event()
        homes_before = {sid: sp.execute_in_session(sid, "ping")["worker_id"] for sid in sessions}
        threads = Threads()
        for sid in sessions:
            threads.start(sid, lambda sid=sid: [sp.execute_in_session(sid, "counter_incr") for _ in range(25)])

        def anonymous(k: int) -> int:
            n = 0
            while not stop.is_set():
                assert sp.execute_anonymous("add", [k, n]) == k + n
                n += 1
            return n

        threads.start("anon-1", lambda: anonymous(1000))
        threads.start("anon-2", lambda: anonymous(2000))
        for t in threads.threads[: len(sessions)]:
            t.join(30)
        stop.set()
        results = threads.join(30)
        for sid in sessions:
            assert results[sid] == list(range(1, 26)), f"session {sid} saw {results[sid]}"
        assert results["anon-1"] > 0 and results["anon-2"] > 0
        homes = {sid: sp.execute_in_session(sid, "ping") for sid in sessions}
        assert {sid: h["worker_id"] for sid, h in homes.items()} == homes_before, "affinity"
        assert sp.stats().sessions == len(sessions)

        # SIGKILL the worker that holds s0 (found through the pool's own view of its workers).
        victim = homes["s0"]["worker_id"]
        victim_pid = worker_pids(sp)[victim]
        assert victim_pid == homes["s0"]["pid"]
        os.kill(victim_pid, signal.SIGKILL)
        wait_until(lambda: replaced(sp, 3, victim), what="the killed worker to be replaced")
        with pytest.raises(SessionLost) as info:
            sp.execute_in_session("s0", "counter_incr")
        assert info.value.session_id == "s0" and info.value.worker_id == victim
        assert "'s0'" in str(info.value) and victim in str(info.value)
        assert sp.execute_in_session("s0", "counter_incr") == 1, "a lost session starts afresh"
        for sid in sessions[1:]:
            if homes[sid]["worker_id"] == victim:
                with pytest.raises(SessionLost):
                    sp.execute_in_session(sid, "counter_get")
            else:
                assert sp.execute_in_session(sid, "counter_get") == 25
        assert reaped_child(victim_pid)


# -- 3. call outcomes ---------------------------------------------------------------------------


def test_a_call_over_its_timeout_raises_call_timeout_and_its_worker_is_replaced() -> None:
    with running("slow", 2) as sp:
        before = worker_pids(sp)
        started = time.monotonic()
        with pytest.raises(CallTimeout) as info:
            sp.execute_anonymous("sleep", [30], timeout=0.3)
        assert time.monotonic() - started < 5
        exc = info.value
        assert exc.command == "sleep" and exc.timeout == 0.3 and exc.worker_id in before
        assert "'sleep'" in str(exc) and "0.3 s" in str(exc)
        wait_until(lambda: replaced(sp, 2, exc.worker_id), what="the hung worker to be replaced")
        after = worker_pids(sp)
        assert len(after) == 2 and len(set(after) - set(before)) == 1
        wait_until(lambda: reaped_child(before[exc.worker_id]), what="the hung subprocess to end")
        s = sp.stats()
        assert s.restarts == 1 and s.worker_failures == 1
        assert sp.execute_anonymous("echo", ["next"]) == "next"


def test_a_handler_error_raises_worker_error_and_the_worker_stays() -> None:
    with running("handler_error", 1) as sp:
        before = worker_pids(sp)
        with pytest.raises(WorkerError) as info:
            sp.execute_anonymous("fail", ["bad input"])
        exc = info.value
        assert exc.type == "ValueError" and exc.message == "bad input" and exc.command == "fail"
        assert exc.traceback.startswith("Traceback") and "in fail" in exc.traceback and "ValueError: bad input" in exc.traceback
        assert exc.worker_id in before
        assert sp.execute_anonymous("add", [2, 3]) == 5
        assert worker_pids(sp) == before
        s = sp.stats()
        assert s.restarts == 0 and s.handler_errors == 1 and s.worker_failures == 0


def test_a_noisy_handler_works_and_its_output_goes_to_the_log() -> None:
    lines: list[tuple[str, dict[str, Any]]] = []
    sink = logger.add(lambda m: lines.append((m.record["message"], dict(m.record["extra"]))), level="INFO")
    try:
        with running("noisy", 1) as sp:
            (worker_id,) = worker_pids(sp)
            assert sp.execute_anonymous("noisy", ["printed-by-handler"]) == "printed-by-handler"
            assert sp.execute_anonymous("noisy", {"text": "written-to-fd-1", "raw": True}) == "written-to-fd-1"
            assert sp.execute_anonymous("echo", ["frames intact"]) == "frames intact"

            def logged(text: str) -> bool:
                return any(text in msg and extra.get("worker_id") == worker_id for msg, extra in list(lines))

            wait_until(lambda: logged("printed-by-handler") and logged("written-to-fd-1"), what="the log lines")
            assert sp.stats().restarts == 0
    finally:
        logger.remove(sink)


def test_a_worker_crash_mid_call_raises_worker_crashed_with_the_exit_status() -> None:
    with running("crashy", 2) as sp:
        before = worker_pids(sp)
        with pytest.raises(WorkerCrashed) as info:
            sp.execute_anonymous("crash", [7])
        exc = info.value
        assert exc.status == 7 and exc.command == "crash" and exc.worker_id in before
        assert "'crash'" in str(exc) and "exit status 7" in str(exc)
        wait_until(lambda: replaced(sp, 2, exc.worker_id), what="the crashed worker to be replaced")
        assert sp.stats().restarts == 1
        assert sp.execute_anonymous("add", [1, 1]) == 2


# -- 4. circuit breaker ----------------------------------------------------------------------


def test_the_circuit_opens_after_consecutive_failures_of_one_command_only() -> None:
    with running("circuit", 2, circuit_failures=3, circuit_reset=0.5) as sp:
        for _ in range(3):
            with pytest.raises(WorkerError):
                sp.execute_anonymous("flaky", [1.0])
        with pytest.raises(CircuitOpen) as info:
            sp.execute_anonymous("flaky", [0.0])  # would succeed: refused anyway
        assert info.value.command == "flaky" and info.value.failures == 3
        assert "'flaky'" in str(info.value)
        assert sp.execute_anonymous("add", [1, 2]) == 3, "other commands still work"
        assert sp.execute_in_session("c", "counter_incr") == 1
        s = sp.stats()
        assert s.open_circuits == ("flaky",) and s.refused == 1 and s.handler_errors == 3
        assert s.restarts == 0, "handler errors never cost a worker"

        def half_open_trial_succeeds() -> bool:
            try:
                return sp.execute_anonymous("flaky", [0.0]) is True
            except CircuitOpen:
                return False

        started = time.monotonic()
        wait_until(half_open_trial_succeeds, 10, "the circuit to half-open")
        assert time.monotonic() - started >= 0.3
        assert sp.stats().open_circuits == ()
        with pytest.raises(WorkerError):  # closed again: a single failure does not open it
            sp.execute_anonymous("flaky", [1.0])
        assert sp.execute_anonymous("flaky", [0.0]) is True


# -- 5. telemetry -----------------------------------------------------------------------------


def test_every_call_emits_telemetry_with_durations_and_metadata() -> None:
    events: list[tuple[tuple[str, ...], dict[str, Any], dict[str, Any]]] = []
    handler_id = f"test-session-pool-{id(events)}"
    prefix = ["threadotp", "session_pool"]
    telemetry.attach_many(
        handler_id,
        [prefix + ["call", k] for k in ("start", "stop", "exception")]
        + [prefix + ["worker", k] for k in ("start", "exit")],
        lambda e, m, md, cfg: events.append((e, dict(m), dict(md))),
    )
    try:
        with running("tel", 2) as sp:
            assert sp.execute_anonymous("add", [1, 2]) == 3
            assert sp.execute_in_session("sess-9", "counter_incr") == 1
            with pytest.raises(WorkerError):
                sp.execute_anonymous("fail", ["told to"])
            ids = set(worker_pids(sp))
    finally:
        telemetry.detach(handler_id)

    def of(kind: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        return [(m, md) for e, m, md in events if e == tuple(prefix) + tuple(kind.split("."))]

    assert len(of("call.start")) == 3
    stops = of("call.stop")
    assert [(md["command"], md["session_id"]) for _, md in stops] == [("add", None), ("counter_incr", "sess-9")]
    for m, md in stops + of("call.exception"):
        assert md["pool"] == "tel" and md["worker_id"] in ids
        assert 0 <= m["queue_time"] <= m["duration"] < 5
    ((m, md),) = of("call.exception")
    assert md["command"] == "fail" and md["kind"] == "handler_error" and isinstance(md["reason"], WorkerError)
    assert {md["worker_id"] for _, md in of("worker.start")} == ids
    assert {md["worker_id"] for _, md in of("worker.exit")} == ids, "stop ends every worker"


# -- 6. stats ---------------------------------------------------------------------------------


def test_stats_count_what_happened() -> None:
    name = "stats"
    with running(name, 2) as sp:
        s = sp.stats()
        assert (s.workers, s.idle, s.busy, s.waiting, s.calls, s.p50, s.p99) == (2, 2, 0, 0, 0, None, None)
        for i in range(5):
            assert sp.execute_anonymous("add", [i, 1]) == i + 1
        assert sp.execute_in_session("st", "counter_incr") == 1
        for _ in range(2):
            with pytest.raises(WorkerError):
                sp.execute_anonymous("fail", ["x"])
        with pytest.raises(CallTimeout):
            sp.execute_anonymous("sleep", [30], timeout=0.2)
        wait_until(lambda: is_full(sp, 2), what="the replacement")

        # Both workers held: busy 2; one more caller: waiting 1.
        held = [threading.Event(), threading.Event()]
        release = threading.Event()
        threads = Threads()
        try:
            for k in range(2):
                threads.start(f"hold{k}", hold_a_worker(name, held[k], release))
                assert held[k].wait(10)
            threads.start("waiter", lambda: sp.execute_anonymous("echo", ["waited"]))
            wait_until(lambda: sp.stats().waiting == 1, what="the waiter to queue")
            s = sp.stats()
            assert (s.busy, s.idle, s.waiting) == (2, 0, 1)
        finally:
            release.set()
        assert threads.join(10)["waiter"] == "waited"

        s = sp.stats()
        assert s.calls == 10 and s.ok == 7 and s.handler_errors == 2 and s.worker_failures == 1
        assert s.refused == 0 and s.restarts == 1 and s.sessions == 1
        assert (s.workers, s.idle, s.busy, s.waiting, s.starting) == (2, 2, 0, 0, 0)
        assert s.p50 is not None and s.p99 is not None and 0 < s.p50 <= s.p99 < 10


# -- 7. restart intensity ---------------------------------------------------------------------


def kill_one_worker(sp: SessionPool, size: int) -> str:
    """SIGKILL one worker's subprocess; return its id."""
    worker_id, os_pid = next(iter(worker_pids(sp).items()))
    os.kill(os_pid, signal.SIGKILL)
    return worker_id


def test_workers_failing_beyond_the_intensity_restart_the_tree_and_callers_get_clear_errors() -> None:
    name = "intensity"
    with running(name, 2, max_restarts=2, max_seconds=60, checkout_timeout=1.0) as sp:
        sup = sp.supervisor
        first_pool = otp.whereis((name, "pool"))
        assert sp.execute_in_session("kept", "counter_incr") == 1
        stop = threading.Event()
        outcomes: list[Any] = []

        def caller() -> int:
            n = 0
            while not stop.is_set():
                n += 1
                try:
                    assert sp.execute_anonymous("add", [n, 1]) == n + 1
                    outcomes.append("ok")
                except (WorkerCrashed, pool.CheckoutTimeout, pool.WorkerStartError) as exc:
                    outcomes.append(exc)
                except PoolUnavailable as exc:
                    # While the tree restarts there is no pool under the name (noproc), or the
                    # caller was queued in the pool that gave up.
                    assert exc.reason in ("noproc", ("shutdown", "worker_restart_intensity")), exc
                    outcomes.append(exc)
                otp.sleep(0.005)
            return n

        threads = Threads()
        threads.start("caller", caller)
        try:
            for _ in range(2):  # within intensity: the same pool replaces them
                victim = kill_one_worker(sp, 2)
                wait_until(lambda: replaced(sp, 2, victim), what="a replacement")
                assert otp.whereis((name, "pool")) == first_pool
            kill_one_worker(sp, 2)  # the third in 60 s: the pool gives up, the tree restarts

            def new_pool_ready() -> bool:
                pid = otp.whereis((name, "pool"))
                return pid is not None and pid != first_pool and is_full(sp, 2)

            wait_until(new_pool_ready, 15, "the tree to restart")
            # A fresh pool starts with a fresh failure window: one more failure is replaced.
            second_pool = otp.whereis((name, "pool"))
            victim = kill_one_worker(sp, 2)
            wait_until(lambda: replaced(sp, 2, victim), what="a replacement in the new pool")
            assert otp.whereis((name, "pool")) == second_pool
        finally:
            stop.set()
        threads.join(15)
        assert sp.supervisor == sup and otp.is_alive(sup)
        view = observer.snapshot(sup)
        assert view.supervisor is not None and view.supervisor.restarts_in_window == 1
        assert {c.id: c.pid for c in view.children}["pool"] == second_pool
        assert all(c.alive for c in view.children)
        assert sp.stats().restarts == 4
        assert "ok" in outcomes
        assert sp.execute_anonymous("add", [20, 22]) == 42
        # The session's worker belonged to the old pool: lost, never served without its state.
        with pytest.raises(SessionLost):
            sp.execute_in_session("kept", "counter_incr")
        assert sp.execute_in_session("kept", "counter_incr") == 1


def test_a_tree_that_keeps_failing_escalates_and_the_session_pool_exits() -> None:
    name = "escalating"
    with running(name, 1, max_restarts=0, max_seconds=60) as sp:
        ref = otp.monitor(sp.supervisor)
        for attempt in range(4):  # the tree's own intensity is 3 restarts in 30 s
            pool_pid = otp.whereis((name, "pool"))
            kill_one_worker(sp, 1)
            if attempt < 3:
                wait_until(
                    lambda: otp.whereis((name, "pool")) not in (None, pool_pid) and is_full(sp, 1),
                    15, f"restart {attempt + 1}",
                )
        down = otp.receive(lambda m: isinstance(m, otp.Down) and m.ref == ref, timeout=15)
        assert down is not otp.TIMEOUT and down.reason == "shutdown"
        with pytest.raises(PoolUnavailable, match="not available") as info:
            sp.execute_anonymous("add", [1, 1])
        assert info.value.reason == "noproc"


def test_workers_that_keep_failing_to_start_escalate_through_the_supervisor(tmp_path) -> None:
    """Once the pool was up, failed starts count against restart intensity like crashes."""
    marker = tmp_path / "broken"
    (tmp_path / "breakable_handlers.py").write_text(
        "import os\n"
        f"if os.path.exists({str(marker)!r}):\n"
        "    raise ImportError('the deployment broke this module')\n"
        "from bridge.examples import *  # noqa\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    sp = SessionPool.start(
        "breakable", 1, ["breakable_handlers"], env=env, max_restarts=2, max_seconds=60,
        start_timeout=1.0, init_timeout=5.0, close_timeout=0.2,
    )
    try:
        assert sp.execute_anonymous("add", [1, 2]) == 3
        ref = otp.monitor(sp.supervisor)
        marker.write_text("")
        kill_one_worker(sp, 1)  # its replacements cannot import the handlers any more
        errors: list[BaseException] = []

        def gone() -> bool:
            try:
                sp.execute_anonymous("add", [1, 2])
            except (pool.WorkerStartError, pool.CheckoutTimeout, PoolUnavailable, WorkerCrashed) as exc:
                errors.append(exc)
            return not otp.is_alive(sp.supervisor)

        wait_until(gone, 30, "the SessionPool's supervisor to give up")
        down = otp.receive(lambda m: isinstance(m, otp.Down) and m.ref == ref, timeout=15)
        assert down is not otp.TIMEOUT and down.reason == "shutdown"
        assert errors, "callers got clear errors while the pool could not start workers"
    finally:
        sp.stop()


def test_killing_a_worker_actor_closes_its_subprocess_and_the_pool_replaces_it() -> None:
    with running("actor_kill", 2) as sp:
        worker_id, actor = sp.workers()[0]
        os_pid = otp.call(actor, "handle", 5.0).port.os_pid
        ref = otp.monitor(actor)
        otp.exit(actor, "kill")  # untrappable: no terminate, the owner's death closes the port
        assert otp.receive(lambda m: isinstance(m, otp.Down) and m.ref == ref, timeout=10).reason == "killed"
        wait_until(lambda: replaced(sp, 2, worker_id), 15, "a replacement worker")
        wait_until(lambda: reaped_child(os_pid), 15, "the subprocess to be reaped")
        assert sp.execute_anonymous("add", [20, 22]) == 42
        assert sp.stats().restarts == 1


# -- chaos (issue 5) --------------------------------------------------------------------------
# The chaos test of issue 5: callers in 8 threads while worker subprocesses are SIGKILLed.
# 
# Every call must return the right result or one of the bridge's clear errors, no call may hang,
# a session must never be served by a worker that lacks its state, the pool must converge back to
# full size, and afterwards no worker subprocess may be left (the conftest also checks threads,
# children and fds).

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


@pytest.mark.parametrize("start_mode", ["spawn", "zygote"])
def test_callers_in_eight_threads_survive_workers_killed_at_random(start_mode: str) -> None:
    sp = SessionPool.start(
        "chaos", POOL_SIZE, ["bridge.examples"], close_timeout=0.3, call_timeout=CALL_TIMEOUT,
        checkout_timeout=CHECKOUT_TIMEOUT, max_restarts=1000, max_seconds=10,
        circuit_failures=5, circuit_reset=0.3, start_mode=start_mode,
    )
    # Our own children are gone once reaped; a zygote's are reaped by the zygote.
    gone = reaped_child if start_mode == "spawn" else process_gone
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
        wait_until(lambda: all(gone(p) for p in set(killed)), 10, "every killed worker to be reaped")

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
    wait_until(lambda: all(gone(p) for p in seen), 10, "every worker subprocess to be gone")
    print(f"\nchaos: {len(set(killed))} kills, {len(seen)} workers seen; outcomes: {dict(sorted(outcomes.items()))}")
