"""The semantics issue 4 lists, one test each, beyond what NimblePool's own suite covers."""

from __future__ import annotations

import threading
from typing import Any

import pytest

import otp
import pool
from otp import ANY, Down
from pool.testing import Script, ScriptedWorker, assert_receive, refute_received


class Recorder(pool.PoolWorker):
    """Workers are ("w", n); every callback is reported to the pool state's `parent`."""

    def init_pool(self, parent: otp.Pid) -> Any:
        return ("ok", {"parent": parent, "n": 0})

    def init_worker(self, ps: Any) -> Any:
        ps["n"] += 1
        otp.send(ps["parent"], ("init_worker", ("w", ps["n"])))
        return ("ok", ("w", ps["n"]), ps)

    def handle_enqueue(self, command: Any, ps: Any) -> Any:
        otp.send(ps["parent"], ("enqueued", command))
        return ("ok", command, ps)

    def handle_cancelled(self, context: str, ps: Any) -> None:
        otp.send(ps["parent"], ("cancelled", context))

    def terminate_worker(self, reason: Any, worker: Any, ps: Any) -> Any:
        otp.send(ps["parent"], ("terminate_worker", reason, worker))
        return ("ok", ps)

    def terminate_pool(self, reason: Any, ps: Any) -> None:
        otp.send(ps["parent"], ("terminate_pool", reason))


def start(worker: type[pool.PoolWorker] = Recorder, **opts: Any) -> otp.Pid:
    opts.setdefault("pool_size", 1)
    opts.setdefault("backoff_initial", 0.001)
    pid = pool.start(worker, otp.self(), **opts)
    assert isinstance(pid, otp.Pid)
    return pid


def hold(p: Any, command: Any = "hold") -> otp.Pid:
    """A process that holds a worker until it receives "release" (or "raise")."""
    parent = otp.self()

    def holder() -> None:
        def fun(from_: pool.From, worker: Any) -> Any:
            otp.send(parent, ("holding", otp.self(), worker))
            if otp.receive("release", "raise") == "raise":
                raise RuntimeError("holder gave up")
            return ("released", worker)

        pool.checkout(p, command, fun)

    pid = otp.spawn(holder)
    assert_receive(("holding", pid, ANY))
    return pid


# -- FIFO ---------------------------------------------------------------------------------------


class TestFifo:
    def test_waiting_clients_are_served_in_arrival_order(self) -> None:
        p = start()
        parent = otp.self()
        holder = hold(p)
        for i in range(5):

            def wait(i: int = i) -> None:
                pool.checkout(p, ("wait", i), lambda f, w: (otp.send(parent, ("admitted", i)), w))

            otp.spawn(wait)
            assert_receive(("enqueued", ("wait", i)))  # queued before the next one asks
        otp.send(holder, "release")
        assert [assert_receive(("admitted", ANY))[1] for _ in range(5)] == [0, 1, 2, 3, 4]
        pool.stop(p)

    def test_idle_workers_are_handed_out_oldest_checkin_first(self) -> None:
        p = start(pool_size=3)
        take = lambda: pool.checkout(p, "x", lambda f, w: (w, w))  # noqa: E731
        assert [take() for _ in range(4)] == [("w", 1), ("w", 2), ("w", 3), ("w", 1)]
        # Check two out, give them back in reverse order: they come out in that order.
        with pool.checkout(p, "x") as a, pool.checkout(p, "x") as b:
            assert (a, b) == (("w", 2), ("w", 3))
        # Context managers exit innermost first: b then a went back, after w1.
        assert [take() for _ in range(3)] == [("w", 1), ("w", 3), ("w", 2)]
        pool.stop(p)


class TestPass:
    """``("pass", pool_state)``: selective checkout, the pool's counterpart of selective receive."""

    @staticmethod
    def _picky() -> type[Recorder]:
        class Picky(Recorder):
            # Command ("want", n) takes only worker ("w", n); anything else takes any worker.
            def handle_checkout(self, command: Any, from_: Any, worker: Any, ps: Any) -> Any:
                if isinstance(command, tuple) and command[0] == "want" and worker[1] != command[1]:
                    return ("pass", ps)
                return ("ok", worker, worker, ps)

        return Picky

    def test_a_request_skips_workers_that_pass_and_they_keep_their_place(self) -> None:
        p = start(self._picky(), pool_size=3)
        assert pool.checkout(p, ("want", 3), lambda f, w: (w, w)) == ("w", 3)
        # w1 and w2 passed and stayed first in line; w3 went to the back at checkin.
        take = lambda: pool.checkout(p, "any", lambda f, w: (w, w))  # noqa: E731
        assert [take(), take(), take()] == [("w", 1), ("w", 2), ("w", 3)]
        pool.stop(p)

    def test_a_request_nobody_fits_waits_for_its_worker_without_blocking_others(self) -> None:
        p = start(self._picky(), pool_size=2)
        parent = otp.self()
        holder = hold(p, ("want", 2))  # w2 is busy

        def wants_w2() -> None:
            pool.checkout(p, ("want", 2), lambda f, w: (otp.send(parent, ("got", w)), w))

        otp.spawn(wants_w2)
        assert_receive(("enqueued", ("want", 2)))
        # The waiter passed on idle w1, which still serves a later request at once.
        assert pool.checkout(p, "any", lambda f, w: (w, w), timeout=1) == ("w", 1)
        assert pool.stats(p).waiting == 1
        otp.send(holder, "release")
        assert assert_receive(("got", ANY)) == ("got", ("w", 2))
        pool.stop(p)

    def test_a_request_that_passes_on_everything_times_out_cleanly(self) -> None:
        p = start(self._picky(), pool_size=2)
        with pytest.raises(pool.CheckoutTimeout):
            pool.checkout(p, ("want", 9), lambda f, w: (w, w), timeout=0.1)
        assert pool.stats(p).waiting == 0 and pool.stats(p).idle == 2
        pool.stop(p)


# -- timeouts -----------------------------------------------------------------------------------


class TestCheckoutTimeout:
    def test_carries_the_pool_the_timeout_and_the_command_and_cancels_the_request(self) -> None:
        p = start()
        holder = hold(p)
        with pytest.raises(pool.CheckoutTimeout, match="timed out after 0.05 s") as info:
            pool.checkout(p, "late", lambda f, w: pytest.fail("never invoked"), timeout=0.05)
        assert (info.value.pool, info.value.timeout, info.value.command) == (p, 0.05, "late")
        assert isinstance(info.value, TimeoutError)
        assert_receive(("cancelled", "queued"))
        assert pool.stats(p).waiting == 0
        otp.send(holder, "release")
        assert pool.checkout(p, "next", lambda f, w: (w, w)) == ("w", 1)
        refute_received(("cancelled", ANY))  # cancelled exactly once
        refute_received(("terminate_worker", ANY, ANY))
        pool.stop(p)

    def test_a_request_whose_caller_gave_up_is_not_served_later(self) -> None:
        script = Script(
            [
                ("init_worker", lambda ps: ("ok", "w", ps)),
                ("handle_checkout", lambda c, f, w, ps: ("ok", w, w, ps)),
                ("handle_cancelled", lambda context, ps: None),
                ("handle_checkin", lambda s, f, w, ps: ("ok", w, ps)),
                # No handle_checkout for the timed-out request: the next is for "after".
                ("handle_checkout", lambda c, f, w, ps: ("ok", c, w, ps)),
                ("handle_checkin", lambda s, f, w, ps: ("ok", w, ps)),
            ]
        )
        p = pool.start(ScriptedWorker, script, pool_size=1)
        holder = hold(p)
        with pytest.raises(pool.CheckoutTimeout):
            pool.checkout(p, "gave_up", lambda f, w: (w, w), timeout=0.01)
        otp.send(holder, "release")
        assert pool.checkout(p, "after", lambda f, w: (w, w)) == "after"
        pool.stop(p)
        script.assert_drained()

    @pytest.mark.parametrize("bad", [-1, "1", True])
    def test_a_bad_timeout_is_a_clear_error(self, bad: Any) -> None:
        p = start()
        with pytest.raises(ValueError, match="timeout must be None or a number"):
            pool.checkout(p, "x", lambda f, w: (w, w), timeout=bad)
        pool.stop(p)


# -- clients that fail --------------------------------------------------------------------------


class TestClientFailures:
    def test_a_client_that_raises_gets_its_own_exception_back_and_the_worker_is_replaced(
        self,
    ) -> None:
        p = start()
        assert_receive(("init_worker", ("w", 1)))
        error = KeyError("mine")

        def fun(from_: Any, w: Any) -> Any:
            raise error

        with pytest.raises(KeyError) as info:
            pool.checkout(p, "x", fun)
        assert info.value is error
        assert_receive(("cancelled", "checked_out"))
        assert_receive(("terminate_worker", "error", ("w", 1)))
        assert_receive(("init_worker", ("w", 2)))
        assert pool.checkout(p, "x", lambda f, w: (w, w)) == ("w", 2)
        pool.stop(p)

    def test_a_base_exception_is_kind_exit(self) -> None:
        p = start()

        def fun(from_: Any, w: Any) -> Any:
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            pool.checkout(p, "x", fun)
        assert_receive(("terminate_worker", "exit", ("w", 1)))
        pool.stop(p)

    def test_a_function_returning_a_bad_shape_is_a_client_error(self) -> None:
        p = start()
        with pytest.raises(TypeError, match=r"must return \(result, checkin_state\), got 42"):
            pool.checkout(p, "x", lambda f, w: 42)
        assert_receive(("terminate_worker", "error", ("w", 1)))
        pool.stop(p)

    def test_a_plain_thread_that_ends_holding_a_worker_is_a_down(self) -> None:
        p = start()
        assert_receive(("init_worker", ("w", 1)))

        def leak() -> None:
            pool.checkout(p, "x").__enter__()  # never exited: the thread ends holding it

        thread = threading.Thread(target=leak)
        thread.start()
        thread.join()
        assert_receive(("cancelled", "checked_out"))
        assert_receive(("terminate_worker", "DOWN", ("w", 1)))
        assert_receive(("init_worker", ("w", 2)))
        pool.stop(p)

    def test_a_spawned_client_killed_while_holding_is_a_down(self) -> None:
        p = start()
        holder = hold(p)
        otp.exit(holder, "kill")
        assert_receive(("terminate_worker", "DOWN", ("w", 1)))
        assert_receive(("init_worker", ("w", 2)))
        assert pool.stats(p).checked_out == 0
        pool.stop(p)

    def test_a_thread_killed_by_a_signal_while_holding_gets_an_exit_after_its_function(
        self,
    ) -> None:
        p = start()
        parent = otp.self()
        done = threading.Event()
        outcome: list[BaseException] = []

        def client() -> None:
            def fun(from_: Any, w: Any) -> Any:
                otp.send(parent, ("holding", otp.self()))
                assert done.wait(5)
                return ("result", w)

            try:
                pool.checkout(p, "x", fun)
            except BaseException as exc:  # noqa: BLE001
                outcome.append(exc)

        thread = threading.Thread(target=client)
        thread.start()
        pid = assert_receive(("holding", ANY))[1]
        otp.exit(pid, "boom")  # an adopted thread is not interrupted; it learns at its next call
        assert_receive(("terminate_worker", "DOWN", ("w", 1)))
        done.set()
        thread.join()
        assert isinstance(outcome[0], otp.ProcessExit) and outcome[0].reason == "boom"
        pool.stop(p)

    def test_a_live_caller_interrupted_while_waiting_withdraws_its_request(self) -> None:
        """Ctrl-C (here: a signal handler raising) while waiting must not strand a worker."""
        import signal

        if threading.current_thread() is not threading.main_thread():
            pytest.skip("signal handlers run in the main thread only")

        class Interrupted(Exception):
            pass

        def handler(signum: int, frame: Any) -> None:
            raise Interrupted()

        p = start()
        holder = hold(p)
        me = otp.self()
        main = threading.main_thread().ident
        assert main is not None

        def interrupter() -> None:
            # Signal only once the main thread is blocked in the checkout's receive.
            for _ in range(5000):
                if (otp.process_info(me).blocked_on or "").startswith("checkout"):
                    signal.pthread_kill(main, signal.SIGUSR1)
                    return
                threading.Event().wait(0.001)

        previous = signal.signal(signal.SIGUSR1, handler)
        try:
            t = threading.Thread(target=interrupter)
            t.start()
            with pytest.raises(Interrupted):
                pool.checkout(p, "wait", lambda f, w: pytest.fail("never admitted"), timeout=10)
            t.join()
        finally:
            signal.signal(signal.SIGUSR1, previous)
        assert_receive(("cancelled", "queued"))
        assert pool.stats(p).waiting == 0
        otp.send(holder, "release")
        assert pool.checkout(p, "x", lambda f, w: (w, w), timeout=1) == ("w", 1)
        refute_received(("terminate_worker", ANY, ANY))
        pool.stop(p)

    def test_a_client_that_dies_while_waiting_is_dropped(self) -> None:
        p = start()
        holder = hold(p)

        def waiter() -> None:
            pool.checkout(p, "wait", lambda f, w: pytest.fail("never admitted"))

        pid = otp.spawn(waiter)
        assert_receive(("enqueued", "wait"))
        ref = otp.monitor(pid)
        otp.exit(pid, "kill")
        assert_receive(Down)
        assert_receive(("cancelled", "queued"))
        assert pool.stats(p).waiting == 0
        otp.send(holder, "release")
        assert pool.checkout(p, "x", lambda f, w: (w, w)) == ("w", 1)  # not terminated
        otp.demonitor(ref, flush=True)
        pool.stop(p)


# -- the context manager ------------------------------------------------------------------------


class TestContextManager:
    def test_the_with_block_gets_the_client_state_and_checks_in_after(self) -> None:
        script = Script(
            [
                ("init_worker", lambda ps: ("ok", "w", ps)),
                ("handle_checkout", lambda c, f, w, ps: ("ok", ("client", w), w, ps)),
                (
                    "handle_checkin",
                    lambda s, f, w, ps: ("ok", w, ps) if s == ("client", "w") else None,
                ),
                ("handle_checkout", lambda c, f, w, ps: ("ok", ("client", w), w, ps)),
                ("handle_checkin", lambda s, f, w, ps: ("ok", w, ps) if s == "changed" else None),
            ]
        )
        p = pool.Pool(pool.start(ScriptedWorker, script, pool_size=1))
        with p.checkout("anonymous") as worker:
            assert worker == ("client", "w")
        cm = p.checkout("anonymous")
        with cm as worker:
            assert isinstance(cm.from_, pool.From) and cm.from_.pool == p.pid
            cm.checkin_state = "changed"
        p.stop()
        script.assert_drained()

    def test_an_exception_in_the_block_removes_the_worker_and_propagates(self) -> None:
        p = pool.Pool(start())
        with pytest.raises(ZeroDivisionError):
            with p.checkout("x"):
                1 / 0  # noqa: B018
        assert_receive(("terminate_worker", "error", ("w", 1)))
        p.stop()

    def test_a_checkout_object_is_used_once_at_a_time(self) -> None:
        p = pool.Pool(start(pool_size=2))
        cm = p.checkout("x")
        with cm:
            with pytest.raises(pool.PoolError, match="already in use"):
                cm.__enter__()
        with pytest.raises(pool.PoolError, match="only available inside"):
            cm.from_  # noqa: B018
        p.stop()


# -- unknown commands ---------------------------------------------------------------------------


class Sessions(Recorder):
    commands = frozenset({"anonymous", "session"})

    def handle_checkout(self, command: Any, from_: Any, worker: Any, ps: Any) -> Any:
        if command == "session":
            raise pool.UnknownCommand(command)  # refused by the worker itself
        return ("ok", worker, worker, ps)


class TestUnknownCommands:
    def test_an_undeclared_command_is_refused_in_the_caller_before_queuing(self) -> None:
        p = start(Sessions)
        hold(p, "anonymous")  # even with no worker free, the refusal is immediate
        assert_receive(("enqueued", "anonymous"))
        with pytest.raises(pool.UnknownCommand) as info:
            pool.checkout(p, "sing", lambda f, w: (w, w), timeout=None)
        message = str(info.value)
        assert "'sing'" in message and "'anonymous', 'session'" in message and repr(p) in message
        assert (info.value.command, info.value.accepted) == ("sing", ("anonymous", "session"))
        refute_received(("enqueued", "sing"))
        assert pool.stats(p).status == "running"
        with pytest.raises(pool.UnknownCommand):
            pool.checkout(p, ["unhashable"], lambda f, w: (w, w))
        pool.stop(p)

    def test_handle_checkout_refusing_a_command_keeps_the_worker_and_the_pool(self) -> None:
        p = start(Sessions)
        with pytest.raises(pool.UnknownCommand, match="accepted commands: 'anonymous', 'session'"):
            pool.checkout(p, "session", lambda f, w: (w, w))
        refute_received(("terminate_worker", ANY, ANY))
        assert pool.checkout(p, "anonymous", lambda f, w: (w, w)) == ("w", 1)
        pool.stop(p)

    def test_handle_enqueue_may_refuse_a_command_too(self) -> None:
        class Picky(Recorder):
            def handle_enqueue(self, command: Any, ps: Any) -> Any:
                raise pool.UnknownCommand(command, ["only_this"])

        p = start(Picky)
        with pytest.raises(pool.UnknownCommand, match="'nope'.*accepted commands: 'only_this'"):
            pool.checkout(p, "nope", lambda f, w: (w, w))
        assert pool.stats(p).status == "running"
        pool.stop(p)


# -- callbacks that break the rules -------------------------------------------------------------


class TestBadReturns:
    def test_handle_checkout_returning_a_bad_shape_crashes_the_pool(self) -> None:
        class Bad(Recorder):
            def handle_checkout(self, command: Any, from_: Any, worker: Any, ps: Any) -> Any:
                return ("okay", worker)

        p = start(Bad, pool_size=2)
        ref = otp.monitor(p)
        with pytest.raises(otp.ProcessExit) as info:
            pool.checkout(p, "x", lambda f, w: (w, w))
        reason, detail = info.value.reason
        assert isinstance(reason, otp.BadReturn) and detail == ("checkout", p)
        assert str(reason) == (
            "Bad.handle_checkout: expected ('ok', client_state, worker_state, pool_state), "
            "('remove', reason, pool_state), ('skip', exception, pool_state) or "
            "('pass', pool_state), got ('okay', ('w', 1))"
        )
        down = assert_receive(Down)
        assert down.ref == ref and down.reason is reason
        # The pool terminated its idle workers with its reason, then itself.
        assert {assert_receive(("terminate_worker", reason, ANY))[2] for _ in range(2)} == {
            ("w", 1),
            ("w", 2),
        }
        assert_receive(("terminate_pool", reason))

    def test_handle_info_returning_a_bad_shape_crashes_the_pool(self) -> None:
        class Bad(Recorder):
            def handle_info(self, message: Any, worker: Any) -> Any:
                return "fine"

        p = start(Bad)
        ref = otp.monitor(p)
        otp.send(p, "hello")
        down = assert_receive(Down)
        assert (
            down.ref == ref
            and "Bad.handle_info: expected ('ok', worker_state) or ('remove', reason), got 'fine'"
            in str(down.reason)
        )

    def test_handle_checkin_returning_a_bad_shape_crashes_the_pool_and_exits_the_client(
        self,
    ) -> None:
        class Bad(Recorder):
            def handle_checkin(self, state: Any, from_: Any, worker: Any, ps: Any) -> Any:
                return None

        p = start(Bad)
        with pytest.raises(otp.ProcessExit) as info:
            pool.checkout(p, "x", lambda f, w: (w, w))
        assert isinstance(info.value.reason[0], otp.BadReturn) and info.value.reason[1] == (
            "checkin",
            p,
        )
        with pytest.raises(otp.ProcessExit):
            pool.checkout(p, "x", lambda f, w: (w, w))

    def test_a_raising_handle_enqueue_crashes_the_pool_as_in_nimble_pool(self) -> None:
        class Bad(Recorder):
            def handle_enqueue(self, command: Any, ps: Any) -> Any:
                raise RuntimeError("enqueue broke")

        p = start(Bad)
        ref = otp.monitor(p)
        with pytest.raises(otp.ProcessExit):
            pool.checkout(p, "x", lambda f, w: (w, w))
        assert str(assert_receive(Down).reason) == "enqueue broke"
        otp.demonitor(ref, flush=True)


# -- stopping -----------------------------------------------------------------------------------


class TestStop:
    def test_stop_terminates_each_idle_worker_with_the_reason_then_the_pool(self) -> None:
        p = start(pool_size=3)
        holder = hold(p)  # w1 is out: not an idle worker at stop
        pool.stop(p, ("shutdown", "bye"))
        msgs = [
            otp.receive(("terminate_worker", ANY, ANY), ("terminate_pool", ANY), timeout=5)
            for _ in range(3)
        ]
        assert msgs == [
            ("terminate_worker", ("shutdown", "bye"), ("w", 2)),
            ("terminate_worker", ("shutdown", "bye"), ("w", 3)),
            ("terminate_pool", ("shutdown", "bye")),
        ]
        otp.send(holder, "release")  # its checkin finds the pool gone: dropped, no callback
        refute_received(("terminate_worker", ANY, ANY))

    def test_stop_of_a_pool_that_is_not_running_exits_with_noproc(self) -> None:
        p = start()
        pool.stop(p)
        with pytest.raises(otp.ProcessExit) as info:
            pool.stop(p)
        assert info.value.reason[0] == "noproc"
        with pytest.raises(otp.ProcessExit) as info:
            pool.checkout(p, "x", lambda f, w: (w, w))
        assert info.value.reason == ("noproc", ("checkout", p))

    def test_the_parents_exit_signal_stops_the_pool_with_terminate(self) -> None:
        parent = otp.self()

        def supervisor_like() -> None:
            otp.send(parent, ("pool", pool.start_link(Recorder, parent, pool_size=1)))
            otp.receive(lambda m: False)

        sup = otp.spawn(supervisor_like)
        p = assert_receive(("pool", ANY))[1]
        ref = otp.monitor(p)
        otp.exit(sup, "shutdown")
        assert_receive(("terminate_worker", "shutdown", ("w", 1)))
        assert_receive(("terminate_pool", "shutdown"))
        assert assert_receive(Down).reason == "shutdown"
        otp.demonitor(ref, flush=True)

    def test_a_killed_pool_runs_no_callbacks(self) -> None:
        p = start()
        otp.monitor(p)
        otp.exit(p, "kill")
        assert assert_receive(Down).reason == "killed"
        refute_received(("terminate_worker", ANY, ANY))
        with pytest.raises(otp.ProcessExit) as info:
            pool.checkout(p, "x", lambda f, w: (w, w))
        assert info.value.reason[0] == "noproc"


# -- supervision --------------------------------------------------------------------------------


class TestSupervision:
    def test_child_spec_is_a_supervisor_child_spec(self) -> None:
        spec = pool.child_spec(
            Recorder, otp.self(), pool_size=2, name="sup_pool", restart="transient"
        )
        assert set(spec) == {"id", "start", "restart", "shutdown", "type"}
        assert (spec["id"], spec["restart"], spec["shutdown"], spec["type"]) == (
            Recorder,
            "transient",
            5.0,
            "worker",
        )
        fn, args = spec["start"]
        pid = fn(*args)
        assert otp.whereis("sup_pool") == pid
        assert pool.Pool("sup_pool").checkout("x", lambda f, w: (w, w)) == ("w", 1)
        assert Recorder.child_spec(otp.self(), pool_size=1)["id"] is Recorder
        pool.stop(pid)

    def test_child_spec_checks_options_in_the_caller(self) -> None:
        with pytest.raises(ValueError, match="pool_size must be a positive integer"):
            pool.child_spec(Recorder, None, pool_size=0)
        with pytest.raises(TypeError, match="unknown pool option"):
            pool.child_spec(Recorder, None, pool_sise=3)
        with pytest.raises(ValueError, match="restart must be"):
            pool.child_spec(Recorder, None, restart="always")

    def test_a_supervised_pool_is_restarted_and_a_named_handle_follows_it(self) -> None:
        supervisor = pytest.importorskip("otp.supervisor")
        sup = supervisor.start_link(
            [pool.child_spec(Recorder, otp.self(), pool_size=1, name="supervised")]
        )
        handle = pool.Pool("supervised")
        first = handle.pid
        assert handle.checkout("x", lambda f, w: (w, w)) == ("w", 1)
        ref = otp.monitor(first)
        otp.exit(first, "kill")
        assert_receive(Down)
        otp.demonitor(ref, flush=True)
        for _ in range(500):  # the supervisor restarts it asynchronously
            if handle.pid not in (None, first):
                break
            otp.receive(timeout=0.01)
        assert handle.pid not in (None, first)
        assert handle.checkout("x", lambda f, w: (w, w)) == ("w", 1)
        otp.unlink(sup)
        otp.exit(sup, "shutdown")


# -- where things run ---------------------------------------------------------------------------


class TestThreads:
    def test_the_function_runs_in_the_callers_thread_and_never_in_the_pool(self) -> None:
        p = start()
        here = threading.get_ident()
        assert pool.checkout(p, "x", lambda f, w: (threading.get_ident(), w)) == here
        holder = hold(p)  # now the next checkout must wait and be served by another thread
        otp.spawn(lambda: (otp.receive(timeout=0.05), otp.send(holder, "release")))
        assert pool.checkout(p, "x", lambda f, w: (threading.get_ident(), w)) == here
        pool.stop(p)

    def test_callbacks_never_run_concurrently(self) -> None:
        inside = [0]
        overlaps = [0]
        guard = threading.Lock()

        class Careful(pool.PoolWorker):
            def _enter(self) -> None:
                with guard:
                    inside[0] += 1
                    if inside[0] > 1:
                        overlaps[0] += 1
                for _ in range(50):  # give another thread the chance to barge in
                    pass

            def _leave(self) -> None:
                with guard:
                    inside[0] -= 1

            def init_worker(self, ps: Any) -> Any:
                return ("ok", 0, ps)

            def handle_checkout(self, command: Any, from_: Any, w: Any, ps: Any) -> Any:
                self._enter()
                self._leave()
                return ("ok", w, w, ps)

            def handle_checkin(self, state: Any, from_: Any, w: Any, ps: Any) -> Any:
                self._enter()
                self._leave()
                return ("ok", w + 1, ps)

        p = pool.start(Careful, None, pool_size=2)

        def client() -> None:
            for _ in range(300):
                pool.checkout(p, "x", lambda f, w: (w, w))

        threads = [threading.Thread(target=client) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert overlaps[0] == 0
        pool.stop(p)

    def test_the_pool_keeps_serving_while_an_async_init_is_stuck(self) -> None:
        parent = otp.self()

        class HalfSlow(pool.PoolWorker):
            def init_pool(self, arg: Any) -> Any:
                return ("ok", {"n": 0})

            def init_worker(self, ps: Any) -> Any:
                ps["n"] += 1
                if ps["n"] == 1:
                    return ("ok", "fast", ps)

                def slow() -> Any:
                    otp.send(parent, ("slow_started", otp.self()))
                    otp.receive("go")
                    return "slow"

                return ("async", slow, ps)

            def handle_info(self, message: Any, worker: Any) -> Any:
                otp.send(parent, ("info", worker, message))
                return ("ok", worker)

        p = pool.start(HalfSlow, None, pool_size=2)
        task = assert_receive(("slow_started", ANY))[1]
        assert pool.stats(p).initialising == 1
        for _ in range(3):
            assert pool.checkout(p, "x", lambda f, w: (w, w)) == "fast"
        otp.send(p, "ping")
        assert_receive(("info", "fast", "ping"))
        otp.send(task, "go")
        with pool.checkout(p, "x") as a, pool.checkout(p, "x") as b:
            assert {a, b} == {"fast", "slow"}
        pool.stop(p)


# -- stats, update and odd inputs ---------------------------------------------------------------


class TestStatsAndUpdate:
    def test_stats_count_every_state(self) -> None:
        p = start(pool_size=2)
        s = pool.stats(p)
        assert (
            s.status,
            s.pool_size,
            s.idle,
            s.checked_out,
            s.waiting,
            s.total_started,
            s.removed,
        ) == ("running", 2, 2, 0, 0, 2, 0)
        with pool.checkout(p, "x"):
            s = pool.stats(p)
            assert (s.idle, s.checked_out) == (1, 1)
        with pytest.raises(RuntimeError):
            with pool.checkout(p, "x"):
                raise RuntimeError("x")
        assert_receive(("init_worker", ("w", 3)))
        s = pool.stats(p)
        assert (s.idle, s.total_started, s.removed) == (2, 3, 1)
        pool.stop(p)
        with pytest.raises(otp.ProcessExit):
            pool.stats(p)

    def test_update_outside_a_checkout_is_an_error(self) -> None:
        p = start()
        saved: list[pool.From] = []
        pool.checkout(p, "x", lambda f, w: (saved.append(f), w))
        with pytest.raises(pool.PoolError, match="not a checkout in progress"):
            pool.update(saved[0], "late")
        with pytest.raises(TypeError, match="update expects the From"):
            pool.update(("not", "a", "from"), "x")  # type: ignore[arg-type]
        pool.stop(p)

    def test_a_process_that_is_not_a_pool_is_a_clear_error(self) -> None:
        with pytest.raises(TypeError, match="is not a pool"):
            pool.checkout(otp.self(), "x", lambda f, w: (w, w))
