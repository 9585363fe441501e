"""Beyond NimblePool: parallel eager start with min_ready, backoff, recycling, lazy freed slots,
telemetry. Time-based behaviour runs on a ManualClock: no test waits for real seconds to pass."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

import otp
import pool
from otp import ANY, telemetry
from pool.testing import ManualClock, assert_receive, refute_received


class Steps(pool.PoolWorker):
    """init_worker follows a list of outcomes: "ok", "async", "fail", "async_fail", "hang"."""

    def init_pool(self, arg: dict[str, Any]) -> Any:
        return ("ok", {"n": 0, **arg})

    def init_worker(self, ps: Any) -> Any:
        ps["n"] += 1
        n = ps["n"]
        steps = ps.get("steps", [])
        step = steps[n - 1] if n <= len(steps) else ps.get("then", "ok")
        parent = ps["parent"]
        otp.send(parent, ("init", n, step))
        if step == "ok":
            return ("ok", ("w", n), ps)
        if step == "fail":
            raise RuntimeError(f"init {n} failed")
        barrier: threading.Barrier | None = ps.get("barrier")

        def build() -> Any:
            if barrier is not None:
                barrier.wait(5)  # only passes if every start runs at the same time
            if step == "async_fail":
                raise RuntimeError(f"async init {n} failed")
            if step == "hang":
                otp.receive("never")
            return ("w", n)

        return ("async", build, ps)

    def handle_enqueue(self, command: Any, ps: Any) -> Any:
        otp.send(ps["parent"], ("enqueued", command))
        return ("ok", command, ps)

    def terminate_worker(self, reason: Any, worker: Any, ps: Any) -> Any:
        otp.send(ps["parent"], ("terminate_worker", reason, worker))
        return ("ok", ps)


def boom(from_: Any, worker: Any) -> Any:
    raise RuntimeError("client failed")


def start(steps: list[str] | None = None, **opts: Any) -> otp.Pid:
    arg = {"parent": otp.self(), "steps": steps or []}
    for key in ("then", "barrier"):
        if key in opts:
            arg[key] = opts.pop(key)
    opts.setdefault("pool_size", 1)
    pid = pool.start(Steps, arg, **opts)
    assert isinstance(pid, otp.Pid)
    return pid


@pytest.fixture
def events() -> Iterator[list[tuple[tuple[str, ...], dict[str, Any], dict[str, Any]]]]:
    seen: list[tuple[tuple[str, ...], dict[str, Any], dict[str, Any]]] = []
    names = [
        ["pool", "checkout", "start"],
        ["pool", "checkout", "stop"],
        ["pool", "checkout", "exception"],
        ["pool", "worker", "init", "start"],
        ["pool", "worker", "init", "stop"],
        ["pool", "worker", "init", "exception"],
        ["pool", "worker", "removed"],
        ["pool", "stats"],
    ]
    lock = threading.Lock()

    def handler(event: Any, measurements: Any, metadata: Any, config: Any) -> None:
        with lock:
            seen.append((event, measurements, metadata))

    telemetry.attach_many("pool-test", names, handler)
    try:
        yield seen
    finally:
        telemetry.detach("pool-test")


# -- eager start in parallel, min_ready ---------------------------------------------------------


class TestMinReady:
    def test_async_starts_run_in_parallel_and_start_link_waits_for_all(self) -> None:
        barrier = threading.Barrier(4)
        p = start(["async"] * 4, pool_size=4, min_ready="all", barrier=barrier, start_timeout=5)
        s = pool.stats(p)
        assert (s.idle, s.initialising) == (4, 0)
        pool.stop(p)

    def test_without_min_ready_start_link_returns_before_async_starts_finish(self) -> None:
        p = start(["hang"], pool_size=1)
        assert pool.stats(p).initialising == 1
        pool.stop(p)

    def test_min_ready_counts_and_the_rest_keep_starting(self) -> None:
        p = start(["ok", "hang"], pool_size=2, min_ready=1)
        s = pool.stats(p)
        assert (s.idle, s.initialising) == (1, 1)
        pool.stop(p)

    def test_not_ready_in_time_is_a_start_error_and_nothing_is_left_behind(self) -> None:
        with pytest.raises(otp.StartError) as info:
            start(["ok", "hang"], pool_size=2, min_ready="all", start_timeout=0.2)
        assert info.value.reason == ("min_ready_timeout", 1, 2, None)
        reason = assert_receive(("terminate_worker", ANY, ("w", 1)))[1]
        assert reason == ("min_ready_timeout", 1, 2, None)
        # The hung start was killed with the pool (the fixture checks no thread is left).

    def test_failing_starts_are_retried_during_the_wait_and_reported_if_it_ends(self) -> None:
        with pytest.raises(otp.StartError) as info:
            start(then="fail", pool_size=1, min_ready=1, start_timeout=0.2, backoff_initial=0.01)
        tag, ready, wanted, last = info.value.reason
        assert (tag, ready, wanted) == ("min_ready_timeout", 0, 1)
        assert isinstance(last, RuntimeError) and "failed" in str(last)
        assert assert_receive(("init", 2, "fail"))  # it did retry (with backoff, not in a loop)

    def test_a_failing_start_that_recovers_within_the_wait_is_fine(self) -> None:
        p = start(["fail", "async_fail", "ok"], pool_size=1, min_ready=1, backoff_initial=0.001)
        assert pool.stats(p).idle == 1
        pool.stop(p)

    def test_max_start_failures_in_a_row_end_the_wait_at_once(self) -> None:
        with pytest.raises(otp.StartError) as info:
            # Without the limit this would wait the full minute.
            start(then="async_fail", pool_size=2, min_ready="all", start_timeout=60,
                  max_start_failures=3, backoff_initial=0.001)
        tag, ready, wanted, failures, last = info.value.reason
        assert (tag, ready, wanted, failures) == ("min_ready_failed", 0, 2, 3)
        assert isinstance(last, RuntimeError) and "async init 3 failed" in str(last)

    def test_a_success_resets_the_count_of_failures_in_a_row(self) -> None:
        p = start(["async_fail", "async_fail", "ok", "async_fail", "async_fail", "ok"], pool_size=2,
                  min_ready="all", max_start_failures=3, backoff_initial=0.001)
        assert pool.stats(p).idle == 2
        pool.stop(p)

    def test_max_start_failures_is_validated(self) -> None:
        with pytest.raises(ValueError, match="max_start_failures must be a positive integer"):
            start(pool_size=1, max_start_failures=0)

    @pytest.mark.parametrize("bad", [-1, 3, "some", 1.5])
    def test_min_ready_is_validated(self, bad: Any) -> None:
        with pytest.raises(ValueError, match="min_ready must be"):
            start(pool_size=2, min_ready=bad)

    def test_min_ready_needs_an_eager_pool(self) -> None:
        with pytest.raises(ValueError, match="min_ready needs an eager pool"):
            start(pool_size=2, lazy=True, min_ready=1)


class TestStartOptions:
    def test_a_taken_name_is_already_started(self) -> None:
        p = start(name="taken")
        with pytest.raises(otp.StartError) as info:
            start(name="taken")
        assert info.value.reason == ("already_started", p)
        pool.stop(p)

    @pytest.mark.parametrize("result, expected", [("ignore", "ignore"), (("stop", "nope"), "nope")])
    def test_init_pool_can_ignore_or_stop(self, result: Any, expected: Any) -> None:
        class Refuse(pool.PoolWorker):
            def init_pool(self, arg: Any) -> Any:
                return result

            def init_worker(self, ps: Any) -> Any:
                raise AssertionError("no worker may start")

        if expected == "ignore":
            assert pool.start(Refuse, None, name="refused") == "ignore"
        else:
            with pytest.raises(otp.StartError) as info:
                pool.start(Refuse, None, name="refused")
            assert info.value.reason == expected
        assert otp.whereis("refused") is None

    def test_init_pool_raising_is_a_start_error(self) -> None:
        class Broken(pool.PoolWorker):
            def init_pool(self, arg: Any) -> Any:
                raise LookupError("no config")

            def init_worker(self, ps: Any) -> Any:
                return ("ok", None, ps)

        with pytest.raises(otp.StartError) as info:
            pool.start(Broken, None)
        assert isinstance(info.value.reason, LookupError)

    @pytest.mark.parametrize(
        "option, value, message",
        [
            ("lazy", "yes", "lazy must be True or False"),
            ("worker_idle_timeout", 0, "worker_idle_timeout must be a number > 0"),
            ("max_idle_pings", 0, "max_idle_pings must be a positive integer"),
            ("worker_max_age", -1, "worker_max_age must be a number > 0"),
            ("max_checkouts", 1.5, "max_checkouts must be a positive integer"),
            ("backoff_initial", 0, "backoff_initial must be a number > 0"),
            ("start_timeout", "5", "start_timeout must be a number > 0"),
            ("clock", 3, "clock must be a callable"),
        ],
    )
    def test_options_are_validated_in_the_caller(
        self, option: str, value: Any, message: str
    ) -> None:
        with pytest.raises((ValueError, TypeError), match=message):
            start(**{option: value})

    def test_unknown_options_and_bad_workers_are_refused(self) -> None:
        with pytest.raises(TypeError, match="unknown pool option"):
            start(size=3)

        class NoInit(pool.PoolWorker):
            pass

        with pytest.raises(TypeError, match="must implement init_worker"):
            pool.start(NoInit, None)
        with pytest.raises(ValueError, match="backoff_max"):
            start(backoff_initial=2, backoff_max=1)

    def test_start_link_links_and_start_does_not(self) -> None:
        linked = pool.start_link(Steps, {"parent": otp.self()}, pool_size=1)
        assert linked in otp.process_info(otp.self()).links
        unlinked = start()
        assert unlinked not in otp.process_info(otp.self()).links
        pool.stop(linked)
        pool.stop(unlinked)


# -- backoff and start errors -------------------------------------------------------------------


class TestBackoff:
    def test_failed_starts_back_off_exponentially_instead_of_looping(self) -> None:
        clock = ManualClock()
        p = start(then="fail", clock=clock, backoff_initial=1.0, backoff_max=4.0)
        assert_receive(("init", 1, "fail"))
        for wait, attempt in [(1.0, 2), (2.0, 3), (4.0, 4), (4.0, 5)]:
            clock.advance(wait - 0.5)
            refute_received(("init", ANY, ANY))  # not yet: no tight loop
            clock.advance(0.5)
            assert_receive(("init", attempt, "fail"))
        assert pool.stats(p).init_failures == 5
        pool.stop(p)

    def test_a_success_resets_the_backoff(self) -> None:
        clock = ManualClock()
        p = start(["fail", "fail", "ok", "fail"], clock=clock, backoff_initial=1.0, backoff_max=8.0)
        clock.advance(1.0)
        clock.advance(2.0)
        assert_receive(("init", 3, "ok"))
        # Kill the good worker through a client error: the next failure waits 1 s again, not 4.
        with pytest.raises(RuntimeError):
            pool.checkout(p, "x", boom)
        assert_receive(("init", 4, "fail"))
        clock.advance(1.0)
        assert_receive(("init", 5, "ok"))
        pool.stop(p)

    def test_waiting_callers_get_a_clear_error_when_no_worker_can_be_started(self) -> None:
        clock = ManualClock()
        p = start(then="fail", clock=clock, lazy=True, backoff_initial=1.0)
        with pytest.raises(
            pool.WorkerStartError, match="has no worker and could not start one"
        ) as info:
            pool.checkout(p, "x", lambda f, w: (w, w), timeout=None)  # would hang without the error
        assert info.value.pool == p and isinstance(info.value.reason, RuntimeError)
        assert pool.stats(p).waiting == 0
        pool.stop(p)

    def test_a_timeout_while_starts_fail_names_the_init_error(self) -> None:
        clock = ManualClock()
        p = start(then="fail", clock=clock, backoff_initial=1.0)
        assert_receive(("init", 1, "fail"))
        with pytest.raises(pool.CheckoutTimeout, match="workers are failing to start") as info:
            pool.checkout(p, "x", lambda f, w: (w, w), timeout=0.01)
        assert isinstance(info.value.last_init_error, RuntimeError)
        pool.stop(p)

    def test_a_pool_that_recovers_serves_again(self) -> None:
        clock = ManualClock()
        p = start(["fail"], then="ok", clock=clock, backoff_initial=1.0)
        assert_receive(("init", 1, "fail"))
        clock.advance(1.0)
        assert pool.checkout(p, "x", lambda f, w: (w, w)) == ("w", 2)
        pool.stop(p)


# -- recycling ----------------------------------------------------------------------------------


class TestRecycling:
    def test_max_checkouts_recycles_a_worker_after_its_last_checkin(self) -> None:
        p = start(max_checkouts=2)
        take = lambda: pool.checkout(p, "x", lambda f, w: (w, w))  # noqa: E731
        assert [take(), take()] == [("w", 1), ("w", 1)]
        assert_receive(("terminate_worker", "max_checkouts", ("w", 1)))
        assert take() == ("w", 2)
        pool.stop(p)

    def test_max_age_recycles_idle_workers_on_the_timer(self) -> None:
        clock = ManualClock()
        p = start(pool_size=2, worker_max_age=10, clock=clock)
        clock.advance(9)
        refute_received(("terminate_worker", ANY, ANY))
        clock.advance(1)
        assert {assert_receive(("terminate_worker", "max_age", ANY))[2] for _ in range(2)} == {
            ("w", 1),
            ("w", 2),
        }
        assert pool.stats(p).idle == 2  # replaced
        pool.stop(p)

    def test_max_age_never_takes_a_worker_from_its_client(self) -> None:
        clock = ManualClock()
        p = start(worker_max_age=10, clock=clock)

        def long_job(from_: Any, w: Any) -> Any:
            clock.advance(30)  # the worker ages while checked out...
            refute_received(("terminate_worker", ANY, ANY))  # ...and is not taken away
            return (w, w)

        assert pool.checkout(p, "x", long_job) == ("w", 1)
        assert_receive(("terminate_worker", "max_age", ("w", 1)))  # recycled at checkin
        assert pool.checkout(p, "x", lambda f, w: (w, w)) == ("w", 2)
        pool.stop(p)


# -- lazy pools ---------------------------------------------------------------------------------


class TestLazy:
    def test_a_lazy_pool_starts_workers_on_demand_up_to_pool_size(self) -> None:
        p = start(lazy=True, pool_size=2)
        assert pool.stats(p).total_started == 0
        with pool.checkout(p, "x") as a:
            with pool.checkout(p, "x") as b:
                assert (a, b) == (("w", 1), ("w", 2))
                with pytest.raises(pool.CheckoutTimeout):
                    pool.checkout(p, "x", lambda f, w: (w, w), timeout=0.01)
        assert pool.stats(p).total_started == 2
        pool.stop(p)

    def test_a_freed_slot_wakes_a_waiting_client(self) -> None:
        """NimblePool leaves this waiter hanging until a checkin; here the removed worker's slot
        starts a new worker for it at once."""
        p = start(lazy=True, pool_size=1)
        parent = otp.self()
        release = threading.Event()

        def holder() -> None:
            def fun(f: Any, w: Any) -> Any:
                otp.send(parent, "holding")
                assert release.wait(5)
                raise RuntimeError("gave up")

            with pytest.raises(RuntimeError):
                pool.checkout(p, "hold", fun)

        t = threading.Thread(target=holder)
        t.start()
        assert_receive("holding")
        waiter = otp.Task.async_(pool.checkout, p, "wait", lambda f, w: (w, w), None)
        assert_receive(("enqueued", "wait"))
        release.set()
        assert waiter.await_() == ("w", 2)
        t.join()
        pool.stop(p)


# -- telemetry ----------------------------------------------------------------------------------


def named(events: list[Any], *name: str) -> list[Any]:
    return [(m, md) for e, m, md in events if e == name]


class TestTelemetry:
    def test_checkout_start_and_stop_carry_the_queue_time(self, events: list[Any]) -> None:
        p = start()
        pool.checkout(p, "cmd", lambda f, w: (w, w))
        ((start_m, start_md),) = named(events, "pool", "checkout", "start")
        ((stop_m, stop_md),) = named(events, "pool", "checkout", "stop")
        assert start_md == stop_md == {"pool": p, "command": "cmd"}
        assert 0 <= stop_m["queue_time"] <= stop_m["duration"]
        pool.stop(p)

    def test_the_context_manager_form_emits_the_same_events(self, events: list[Any]) -> None:
        p = start()
        with pool.checkout(p, "cm"):
            pass
        with pytest.raises(KeyError), pool.checkout(p, "cm"):
            raise KeyError("k")
        names = [e[-1] for e, m, md in events if e[:2] == ("pool", "checkout")]
        assert names == ["start", "stop", "start", "exception"]
        ((m, md),) = named(events, "pool", "checkout", "exception")
        assert (md["command"], md["kind"], type(md["reason"])) == ("cm", "error", KeyError)
        pool.stop(p)

    def test_no_handler_no_cost_but_a_handler_attached_later_sees_events(self) -> None:
        p = start()
        pool.checkout(p, "quiet", lambda f, w: (w, w))  # nobody listens: nothing is built
        seen: list[Any] = []
        telemetry.attach("late", ["pool", "checkout", "stop"], lambda e, m, md, c: seen.append(md))
        try:
            pool.checkout(p, "heard", lambda f, w: (w, w))
        finally:
            telemetry.detach("late")
        assert [md["command"] for md in seen] == ["heard"]
        pool.stop(p)

    def test_checkout_exception_on_a_raising_function_and_on_a_timeout(
        self, events: list[Any]
    ) -> None:
        p = start()

        def fails(f: Any, w: Any) -> Any:
            raise ValueError("v")

        with pytest.raises(ValueError):
            pool.checkout(p, "cmd", fails)
        with pool.checkout(p, "hold"):
            with pytest.raises(pool.CheckoutTimeout):
                pool.checkout(p, "late", lambda f, w: (w, w), timeout=0.01)
        (m1, md1), (m2, md2) = named(events, "pool", "checkout", "exception")
        assert (md1["kind"], type(md1["reason"])) == ("error", ValueError)
        assert (md2["command"], type(md2["reason"])) == ("late", pool.CheckoutTimeout)
        assert m2["queue_time"] >= 0.01
        pool.stop(p)

    def test_worker_init_and_removal_events(self, events: list[Any]) -> None:
        p = start(["fail", "async"], backoff_initial=0.001, min_ready=1)
        assert len(named(events, "pool", "worker", "init", "start")) == 2
        ((exc_m, exc_md),) = named(events, "pool", "worker", "init", "exception")
        assert isinstance(exc_md["reason"], RuntimeError) and exc_m["duration"] >= 0
        ((stop_m, stop_md),) = named(events, "pool", "worker", "init", "stop")
        assert stop_md == {"pool": p, "worker": 2}
        pool.stop(p, "shutdown")
        ((rm_m, rm_md),) = named(events, "pool", "worker", "removed")
        assert rm_md == {"pool": p, "worker": 2, "reason": "shutdown"}
        assert rm_m["checkouts"] == 0

    def test_stats_are_emitted_every_stats_interval(self, events: list[Any]) -> None:
        clock = ManualClock()
        p = start(pool_size=2, stats_interval=5, clock=clock)
        clock.advance(5)
        ((m, md),) = named(events, "pool", "stats")
        assert (m["idle"], m["pool_size"], md["pool"]) == (2, 2, p)
        pool.stop(p)
