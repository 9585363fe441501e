"""NimblePool's behaviour suite (test/nimble_pool_test.exs, cancelled_holder_test.exs), ported.

Each test drives a `ScriptedWorker`: the script lists, in order, every callback the pool must
make and what it returns, so a test also checks the exact callback order. Callbacks report to
the test process with messages, and the test waits for those messages (``assert_receive``),
never on sleeps. Idle pings use a `ManualClock`, so "idle for 5 seconds" takes no time.
"""

from __future__ import annotations

from typing import Any

import pytest

import otp
import pool
from otp import ANY, Down
from pool.testing import ManualClock, Script, ScriptedWorker, assert_receive, refute_received


def start_pool(instructions: list[tuple[str, Any]], **opts: Any) -> tuple[Script, otp.Pid]:
    """Start a scripted pool (not linked to the test: a crash must not kill the test)."""
    opts.setdefault("pool_size", 1)
    opts.setdefault("backoff_initial", 0.001)
    script = Script(instructions)
    return script, pool.start(ScriptedWorker, script, **opts)


def tell(parent: otp.Pid, message: Any, result: Any) -> Any:
    otp.send(parent, message)
    return result


def ok_checkout(client_state: Any) -> Any:
    return lambda command, from_, worker, ps: ("ok", client_state, worker, ps)


def ok_checkin() -> Any:
    return lambda checkin_state, from_, worker, ps: ("ok", worker, ps)


def report_terminate(parent: otp.Pid) -> Any:
    return lambda reason, worker, ps: tell(parent, ("terminate", reason), ("ok", ps))


def spawn_holder(p: otp.Pid, command: Any = "checkout", result: Any = "result") -> otp.Pid:
    """A process that checks a worker out, says ("lock", pid), and holds it until "release"."""
    parent = otp.self()

    def holder() -> None:
        def fun(from_: pool.From, client_state: Any) -> Any:
            otp.send(parent, ("lock", otp.self()))
            otp.receive("release")
            return (result, "client_state_in")

        otp.send(parent, ("held_result", otp.self(), pool.checkout(p, command, fun)))

    return otp.spawn(holder)


# -- start_link ---------------------------------------------------------------------------------


class TestStartLink:
    def test_validates_the_worker(self) -> None:
        with pytest.raises(TypeError, match="worker must be a PoolWorker subclass"):
            pool.start_link("not a class")  # type: ignore[arg-type]

    @pytest.mark.parametrize("size", ["not_an_int", 0, -1, True, 2.5])
    def test_validates_pool_size(self, size: Any) -> None:
        with pytest.raises(ValueError, match="pool_size must be a positive integer"):
            pool.start_link(ScriptedWorker, Script([]), pool_size=size)

    def test_starts_the_pool_with_init_pool_checkout_checkin_and_terminate(self) -> None:
        parent = otp.self()
        script, p = start_pool(
            [
                ("init_pool", lambda script: tell(parent, "init_pool", ("ok", "pool_state"))),
                ("init_worker", lambda ps: ("ok", "worker", ps)),
                (
                    "handle_checkout",
                    lambda cmd, from_, w, ps: (
                        ("ok", "client_state_out", w, ps)
                        if cmd == "checkout"
                        else ("skip", ValueError(cmd), ps)
                    ),
                ),
                (
                    "handle_checkin",
                    lambda state, from_, w, ps: (
                        ("ok", w, ps) if state == "client_state_in" else ("remove", state, ps)
                    ),
                ),
                (
                    "terminate_worker",
                    lambda reason, w, ps: tell(parent, ("terminate", reason), ("ok", ps)),
                ),
            ]
        )
        # init_pool ran before start returned: its message is the first one we have.
        assert otp.receive(timeout=0) == "init_pool"
        result = pool.checkout(
            p,
            "checkout",
            lambda ref, cs: (
                ("result", "client_state_in") if cs == "client_state_out" else ("wrong", cs)
            ),
        )
        assert result == "result"
        pool.stop(p, "shutdown")
        assert_receive(("terminate", "shutdown"))
        refute_received(Down)  # the checkout's monitor did not leak
        script.assert_drained()


class TestInit:
    def test_raises_on_invalid_return(self) -> None:
        with pytest.raises(otp.StartError) as info:
            start_pool([("init_worker", lambda ps: ("oops",))])
        assert isinstance(info.value.reason, otp.BadReturn)
        assert "expected ('ok', worker_state, pool_state) or ('async', fun, pool_state)" in str(
            info.value.reason
        )
        assert "got ('oops',)" in str(info.value.reason)


# -- checkout -----------------------------------------------------------------------------------


class TestCheckout:
    def test_exits_with_noproc_for_a_missing_pool(self) -> None:
        with pytest.raises(otp.ProcessExit) as info:
            pool.checkout("unknown", "checkout", lambda ref, state: (state, state))
        assert info.value.reason == ("noproc", ("checkout", "unknown"))

    def test_exits_when_the_pool_terminates_on_checkout(self) -> None:
        def kill_pool(cmd: Any, from_: pool.From, w: Any, ps: Any) -> Any:
            otp.exit(from_.pool, "kill")
            return ("ok", "client", w, ps)

        script, p = start_pool(
            [("init_worker", lambda ps: ("ok", "w", ps)), ("handle_checkout", kill_pool)]
        )
        with pytest.raises(otp.ProcessExit) as info:
            pool.checkout(p, "checkout", lambda ref, state: (state, state))
        assert info.value.reason == ("killed", ("checkout", p))

    def test_restarts_the_worker_when_the_client_raises(self) -> None:
        parent = otp.self()
        started = lambda ps: tell(parent, "started", ("ok", "w", ps))  # noqa: E731
        script, p = start_pool(
            [
                ("init_worker", started),
                ("handle_checkout", ok_checkout("client_state_out")),
                ("terminate_worker", report_terminate(parent)),
                ("init_worker", started),
                ("handle_checkout", ok_checkout("client_state_out")),
                ("handle_checkin", ok_checkin()),
                ("terminate_worker", report_terminate(parent)),
            ]
        )
        assert_receive("started")
        refute_received("started")

        def oops(ref: Any, state: Any) -> Any:
            raise RuntimeError("oops")

        with pytest.raises(RuntimeError, match="oops"):
            pool.checkout(p, "checkout", oops)
        assert_receive(("terminate", "error"))
        assert_receive("started")
        refute_received("started")
        assert (
            pool.checkout(p, "checkout", lambda ref, s: ("result", "client_state_in")) == "result"
        )
        pool.stop(p, "shutdown")
        refute_received(Down)
        assert_receive(("terminate", "shutdown"))
        script.assert_drained()

    def test_restarts_the_worker_when_the_client_exits(self) -> None:
        parent = otp.self()
        script, p = start_pool(
            [
                ("init_worker", lambda ps: ("ok", "w", ps)),
                ("handle_checkout", ok_checkout("client_state_out")),
                ("terminate_worker", report_terminate(parent)),
                ("init_worker", lambda ps: tell(parent, "restarted", ("ok", "w", ps))),
            ]
        )
        with pytest.raises(otp.ProcessExit):
            pool.checkout(p, "checkout", lambda ref, s: otp.exit("bye"))
        assert_receive(("terminate", "exit"))
        assert_receive("restarted")
        script.assert_drained()

    def test_restarts_the_worker_when_the_client_dies_during_checkout(self) -> None:
        parent = otp.self()
        started = lambda ps: tell(parent, "started", ("ok", "w", ps))  # noqa: E731
        script, p = start_pool(
            [
                ("init_worker", started),
                ("handle_checkout", ok_checkout("client_state_out")),
                ("terminate_worker", report_terminate(parent)),
                ("init_worker", started),
                ("handle_checkout", ok_checkout("client_state_out")),
                ("handle_checkin", ok_checkin()),
                ("terminate_worker", report_terminate(parent)),
            ]
        )
        assert_receive("started")
        holder = spawn_holder(p)
        assert_receive(("lock", holder))
        otp.exit(holder, "you_shall_not_pass")
        assert_receive(("terminate", "DOWN"))
        assert_receive("started")
        refute_received("started")
        assert (
            pool.checkout(p, "checkout", lambda ref, s: ("result", "client_state_in")) == "result"
        )
        pool.stop(p, "shutdown")
        refute_received(Down)
        assert_receive(("terminate", "shutdown"))
        script.assert_drained()

    def test_does_not_restart_the_worker_on_client_timeout_during_checkout(self) -> None:
        parent = otp.self()
        script, p = start_pool(
            [
                ("init_worker", lambda ps: tell(parent, "started", ("ok", "w", ps))),
                ("handle_checkout", ok_checkout("client_state_out")),
                ("handle_cancelled", lambda context, ps: otp.send(parent, ("cancelled", context))),
                ("handle_checkin", ok_checkin()),
                ("handle_checkout", ok_checkout("client_state_out2")),
                ("handle_checkin", ok_checkin()),
                ("terminate_worker", report_terminate(parent)),
            ]
        )
        assert_receive("started")
        holder = spawn_holder(p)
        assert_receive(("lock", holder))
        with pytest.raises(pool.CheckoutTimeout) as info:
            pool.checkout(p, "checkout", lambda ref, s: pytest.fail("never invoked"), timeout=0)
        assert (info.value.pool, info.value.timeout) == (p, 0)
        assert_receive(("cancelled", "queued"))
        otp.send(holder, "release")
        assert_receive(("held_result", holder, "result"))
        assert (
            pool.checkout(p, "checkout2", lambda ref, s: ("result", "client_state_in2")) == "result"
        )
        refute_received("started")  # the same worker all along
        pool.stop(p, "shutdown")
        assert_receive(("terminate", "shutdown"))
        script.assert_drained()

    def test_a_grant_that_races_the_timeout_returns_the_worker_unused(self) -> None:
        """The pool hands the worker over in the instant the caller gives up: the worker goes
        back through handle_checkin untouched, with no terminate_worker and no restart."""
        import threading

        from pool import _client

        parent = otp.self()
        timed_out = threading.Event()
        helper: list[otp.Pid] = []

        def wait_for_the_timeout(cmd: Any, from_: pool.From, w: Any, ps: Any) -> Any:
            assert timed_out.wait(5), "the caller never timed out"
            return ("ok", "granted_too_late", w, ps)

        script, p = start_pool(
            [
                ("init_worker", lambda ps: tell(parent, "started", ("ok", "w", ps))),
                ("handle_enqueue", lambda cmd, ps: ("ok", cmd, ps)),
                ("handle_checkout", ok_checkout("holder_state")),
                # The test's own checkout enqueues; that tells the holder to let go.
                ("handle_enqueue", lambda cmd, ps: tell(helper[0], "go", ("ok", cmd, ps))),
                ("handle_checkin", ok_checkin()),
                ("handle_checkout", wait_for_the_timeout),
                ("handle_cancelled", lambda context, ps: otp.send(parent, ("cancelled", context))),
                (
                    "handle_checkin",
                    lambda state, from_, w, ps: tell(
                        parent, ("checked_in_unused", state), ("ok", w, ps)
                    ),
                ),
                ("handle_enqueue", lambda cmd, ps: ("ok", cmd, ps)),
                ("handle_checkout", ok_checkout("fresh")),
                ("handle_checkin", ok_checkin()),
                ("terminate_worker", report_terminate(parent)),
            ]
        )
        assert_receive("started")
        holder = spawn_holder(p)
        assert_receive(("lock", holder))
        # A helper turns "the request is queued" into "release the holder".
        helper.append(otp.spawn(lambda: (otp.receive("go"), otp.send(holder, "release"))))
        _client.hooks.after_wait_timeout = lambda req: timed_out.set()
        try:
            with pytest.raises(pool.CheckoutTimeout):
                pool.checkout(p, "wait", lambda ref, s: pytest.fail("never invoked"), timeout=0.5)
        finally:
            _client.hooks.after_wait_timeout = None
        assert_receive(("cancelled", "queued"))
        assert_receive(("checked_in_unused", "granted_too_late"))
        assert pool.checkout(p, "after", lambda ref, s: (s, s)) == "fresh"
        refute_received("started")
        refute_received(("terminate", ANY))
        assert otp.receive(("held_result", holder, ANY), timeout=5) == (
            "held_result",
            holder,
            "result",
        )
        pool.stop(p, "shutdown")
        assert_receive(("terminate", "shutdown"))
        script.assert_drained()
        assert otp.flush() == []  # no late grant left in our mailbox

    def test_does_not_restart_the_worker_on_client_timeout_during_unused_checkout(self) -> None:
        parent = otp.self()
        script, p = start_pool(
            [
                ("init_worker", lambda ps: tell(parent, "started", ("ok", "w", ps))),
                ("handle_checkout", ok_checkout("client_state_out")),
                ("handle_checkin", ok_checkin()),
                ("handle_checkout", ok_checkout("client_state_out2")),
                ("handle_checkin", ok_checkin()),
                ("terminate_worker", report_terminate(parent)),
            ]
        )
        assert_receive("started")
        holder = spawn_holder(p)
        assert_receive(("lock", holder))
        with pytest.raises(pool.CheckoutTimeout):
            pool.checkout(p, "checkout", lambda ref, s: pytest.fail("never invoked"), timeout=0)
        otp.send(holder, "release")
        assert_receive(("held_result", holder, "result"))
        refute_received(("terminate", "timeout"))
        refute_received("started")
        assert (
            pool.checkout(p, "checkout2", lambda ref, s: ("result", "client_state_in2")) == "result"
        )
        pool.stop(p, "shutdown")
        script.assert_drained()

    def test_queues_checkouts(self) -> None:
        script, p = start_pool(
            [
                ("init_worker", lambda ps: ("ok", "w", ps)),
                ("handle_checkout", ok_checkout("client_state_out")),
                ("handle_checkin", ok_checkin()),
                ("handle_checkout", ok_checkout("client_state_out2")),
                ("handle_checkin", ok_checkin()),
                ("terminate_worker", lambda reason, w, ps: ("ok", ps)),
            ]
        )
        holder = spawn_holder(p)
        assert_receive(("lock", holder))
        task2 = otp.Task.async_(pool.checkout, p, "checkout2", lambda ref, s: ("result2", s))
        otp.send(holder, "release")
        assert_receive(("held_result", holder, "result"))
        assert task2.await_() == "result2"
        pool.stop(p)
        script.assert_drained()

    @pytest.mark.parametrize("lazy", [False, True])
    def test_concurrent_checkouts(self, lazy: bool) -> None:
        script, p = start_pool(
            [
                ("init_worker", lambda ps: ("ok", "w1", ps)),
                ("init_worker", lambda ps: ("ok", "w2", ps)),
                ("handle_checkout", ok_checkout("client_state_out")),
                ("handle_checkout", ok_checkout("client_state_out")),
                ("handle_checkin", ok_checkin()),
                ("handle_checkin", ok_checkin()),
                ("terminate_worker", lambda reason, w, ps: ("ok", ps)),
                ("terminate_worker", lambda reason, w, ps: ("ok", ps)),
            ]
            if not lazy
            else [
                ("init_worker", lambda ps: ("ok", "w1", ps)),
                ("handle_checkout", ok_checkout("client_state_out")),
                ("init_worker", lambda ps: ("ok", "w2", ps)),
                ("handle_checkout", ok_checkout("client_state_out")),
                ("handle_checkin", ok_checkin()),
                ("handle_checkin", ok_checkin()),
                ("terminate_worker", lambda reason, w, ps: ("ok", ps)),
                ("terminate_worker", lambda reason, w, ps: ("ok", ps)),
            ],
            pool_size=2,
            lazy=lazy,
        )
        h1 = spawn_holder(p)
        assert_receive(("lock", h1))
        h2 = spawn_holder(p)
        assert_receive(("lock", h2))
        with pytest.raises(pool.CheckoutTimeout):
            pool.checkout(p, "checkout", lambda ref, s: pytest.fail("never invoked"), timeout=0.001)
        otp.send(h1, "release")
        assert_receive(("held_result", h1, "result"))
        otp.send(h2, "release")
        assert_receive(("held_result", h2, "result"))
        pool.stop(p, "shutdown")
        script.assert_drained()

    def test_eager_checkouts_hand_out_idle_workers_in_checkin_order(self) -> None:
        script, p = start_pool(
            [
                ("init_worker", lambda ps: ("ok", "worker1", ps)),
                ("init_worker", lambda ps: ("ok", "worker2", ps)),
                (
                    "handle_checkout",
                    lambda c, f, w, ps: (
                        ("ok", "client_state_out", w, ps) if w == "worker1" else None
                    ),
                ),
                ("handle_checkin", lambda s, f, w, ps: ("ok", "worker1", ps)),
                (
                    "handle_checkout",
                    lambda c, f, w, ps: (
                        ("ok", "client_state_out", w, ps) if w == "worker2" else None
                    ),
                ),
                ("handle_checkin", lambda s, f, w, ps: ("ok", "worker2", ps)),
                ("terminate_worker", lambda reason, w, ps: ("ok", ps)),
                ("terminate_worker", lambda reason, w, ps: ("ok", ps)),
            ],
            pool_size=2,
        )
        for _ in range(2):
            assert (
                pool.checkout(p, "checkout", lambda ref, s: ("result", "client_state_in"))
                == "result"
            )
        pool.stop(p, "shutdown")
        script.assert_drained()

    def test_lazy_checkouts_reuse_the_idle_worker(self) -> None:
        script, p = start_pool(
            [
                ("init_worker", lambda ps: ("ok", "worker1", ps)),
                ("handle_checkout", ok_checkout("client_state_out")),
                ("handle_checkin", ok_checkin()),
                ("handle_checkout", ok_checkout("client_state_out")),
                ("handle_checkin", ok_checkin()),
                ("terminate_worker", lambda reason, w, ps: ("ok", ps)),
            ],
            pool_size=2,
            lazy=True,
        )
        for _ in range(2):
            assert (
                pool.checkout(p, "checkout", lambda ref, s: ("result", "client_state_in"))
                == "result"
            )
        pool.stop(p, "shutdown")
        script.assert_drained()

    def test_lazy_concurrent_checkouts_start_a_second_worker(self) -> None:
        parent = otp.self()
        script, p = start_pool(
            [
                ("init_worker", lambda ps: ("ok", "worker1", ps)),
                (
                    "handle_checkout",
                    lambda c, f, w, ps: (
                        ("ok", "out1", w, ps) if (c, w) == ("checkout1", "worker1") else None
                    ),
                ),
                ("init_worker", lambda ps: ("ok", "worker2", ps)),
                (
                    "handle_checkout",
                    lambda c, f, w, ps: (
                        ("ok", "out2", w, ps) if (c, w) == ("checkout2", "worker2") else None
                    ),
                ),
                (
                    "handle_checkin",
                    lambda s, f, w, ps: ("ok", w, ps) if (s, w) == ("in1", "worker1") else None,
                ),
                (
                    "handle_checkin",
                    lambda s, f, w, ps: ("ok", w, ps) if (s, w) == ("in2", "worker2") else None,
                ),
                ("terminate_worker", lambda reason, w, ps: ("ok", ps)),
                ("terminate_worker", lambda reason, w, ps: ("ok", ps)),
            ],
            pool_size=2,
            lazy=True,
        )

        def first() -> None:
            def fun(ref: Any, state: Any) -> Any:
                assert state == "out1"
                otp.send(parent, "checked_out")
                otp.receive("resume")
                return ("result", "in1")

            pool.checkout(p, "checkout1", fun)
            otp.send(parent, "checked_in")

        child = otp.spawn(first)
        assert_receive("checked_out")

        def second(ref: Any, state: Any) -> Any:
            assert state == "out2"
            otp.send(child, "resume")
            assert_receive("checked_in")
            return ("result", "in2")

        assert pool.checkout(p, "checkout2", second) == "result"
        pool.stop(p, "shutdown")
        script.assert_drained()


# -- handle_info --------------------------------------------------------------------------------


class TestHandleInfo:
    def _pool(self, parent: otp.Pid) -> tuple[Script, otp.Pid]:
        return start_pool(
            [
                ("init_worker", lambda ps: ("ok", "w1", ps)),
                ("init_worker", lambda ps: ("ok", "w2", ps)),
                ("handle_info", lambda msg, w: tell(parent, ("info", w, msg), ("ok", w))),
                ("handle_info", lambda msg, w: tell(parent, ("info", w, msg), ("ok", w))),
            ],
            pool_size=2,
        )

    def test_is_invoked_for_all_idle_workers(self) -> None:
        script, p = self._pool(otp.self())
        otp.send(p, "handle_info")
        assert_receive(("info", "w1", "handle_info"))
        assert_receive(("info", "w2", "handle_info"))
        script.assert_drained()

    @pytest.mark.parametrize("kind", ["down", "ref", "exit"])
    def test_forwards_messages_the_pool_does_not_own(self, kind: str) -> None:
        parent = otp.self()
        script, p = self._pool(parent)
        stranger = otp.spawn(otp.receive)
        message = {
            "down": Down(otp.make_ref(), parent, "shutdown"),
            "ref": (otp.make_ref(), "ok"),
            "exit": otp.Exit(stranger, "normal"),
        }[kind]
        otp.send(p, message)
        assert_receive(("info", "w1", message))
        assert_receive(("info", "w2", message))
        otp.send(stranger, "done")
        script.assert_drained()


# -- async init ---------------------------------------------------------------------------------


def async_init(parent: otp.Pid, worker: Any) -> Any:
    """An init_worker that builds the worker in a task, which waits for ("release", how)."""

    def init(ps: Any) -> Any:
        def build() -> Any:
            otp.send(parent, ("async", otp.self()))
            how = otp.receive(("release", ANY))[1]
            if how == "error":
                raise RuntimeError("oops")
            return worker

        return ("async", build, ps)

    return init


class TestAsync:
    def test_a_worker_is_checked_out_only_once_its_async_init_finished(self) -> None:
        parent = otp.self()
        script, p = start_pool(
            [
                ("init_worker", async_init(parent, "w")),
                ("handle_checkout", ok_checkout("client_state_out")),
                ("handle_checkin", ok_checkin()),
                ("terminate_worker", report_terminate(parent)),
            ]
        )
        task = assert_receive(("async", ANY))[1]
        with pytest.raises(pool.CheckoutTimeout):
            pool.checkout(p, "checkout", lambda ref, s: pytest.fail("never invoked"), timeout=0.05)
        otp.send(task, ("release", "ok"))
        assert pool.checkout(p, "checkout", lambda ref, s: ("result", "in")) == "result"
        pool.stop(p, "shutdown")
        assert_receive(("terminate", "shutdown"))
        script.assert_drained()

    def test_reinitializes_the_worker_if_its_async_init_fails(self) -> None:
        parent = otp.self()
        script, p = start_pool(
            [
                ("init_worker", async_init(parent, "w")),
                ("init_worker", async_init(parent, "w")),
                ("handle_checkout", ok_checkout("client_state_out")),
                ("handle_checkin", ok_checkin()),
            ]
        )
        task = assert_receive(("async", ANY))[1]
        otp.send(task, ("release", "error"))
        task = assert_receive(("async", ANY))[1]
        otp.send(task, ("release", "ok"))
        assert pool.checkout(p, "checkout", lambda ref, s: ("result", "in")) == "result"
        pool.stop(p)
        script.assert_drained()


# -- remove -------------------------------------------------------------------------------------


class TestRemove:
    def _script(self, parent: otp.Pid, middle: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
        return [
            ("init_worker", lambda ps: tell(parent, "started", ("ok", "w", ps))),
            *middle,
            ("terminate_worker", report_terminate(parent)),
            ("init_worker", lambda ps: tell(parent, "restarted", ("ok", "w", ps))),
            ("handle_checkout", ok_checkout("client_state_out")),
            ("handle_checkin", ok_checkin()),
            ("terminate_worker", report_terminate(parent)),
        ]

    def test_removes_and_restarts_on_checkout(self) -> None:
        parent = otp.self()
        script, p = start_pool(
            self._script(
                parent,
                [
                    ("handle_checkout", lambda c, f, w, ps: ("remove", "restarting", ps)),
                ],
            )
        )
        assert_receive("started")
        assert pool.checkout(p, "checkout", lambda ref, s: ("result", "in")) == "result"
        assert_receive(("terminate", "restarting"))
        assert_receive("restarted")
        pool.stop(p, "shutdown")
        assert_receive(("terminate", "shutdown"))
        script.assert_drained()

    def test_removes_and_restarts_on_checkin(self) -> None:
        parent = otp.self()
        script, p = start_pool(
            self._script(
                parent,
                [
                    ("handle_checkout", ok_checkout("client_state_out")),
                    ("handle_checkin", lambda s, f, w, ps: ("remove", "restarting", ps)),
                ],
            )
        )
        assert_receive("started")
        assert pool.checkout(p, "checkout", lambda ref, s: ("result", "in")) == "result"
        assert_receive("restarted")
        assert pool.checkout(p, "checkout2", lambda ref, s: ("result", "in2")) == "result"
        pool.stop(p, "shutdown")
        assert_receive(("terminate", "shutdown"))
        script.assert_drained()

    def test_removes_and_restarts_on_handle_info(self) -> None:
        parent = otp.self()
        script, p = start_pool(
            self._script(
                parent,
                [
                    ("handle_info", lambda msg, w: ("remove", "restarting")),
                ],
            )
        )
        assert_receive("started")
        otp.send(p, "remove")
        assert_receive("restarted")
        assert pool.checkout(p, "checkout", lambda ref, s: ("result", "in")) == "result"
        pool.stop(p, "shutdown")
        assert_receive(("terminate", "shutdown"))
        script.assert_drained()


# -- errors -------------------------------------------------------------------------------------


class TestErrors:
    def test_the_worker_is_terminated_with_the_state_handle_checkout_gave_it(self) -> None:
        parent = otp.self()
        script, p = start_pool(
            [
                ("init_worker", lambda ps: ("ok", "w", ps)),
                (
                    "handle_checkout",
                    lambda c, f, w, ps: ("ok", "client_state_out", "server_state_out", ps),
                ),
                (
                    "terminate_worker",
                    lambda reason, w, ps: tell(parent, ("terminate", reason, w), ("ok", ps)),
                ),
                ("init_worker", lambda ps: ("ok", "w", ps)),
                (
                    "terminate_worker",
                    lambda reason, w, ps: tell(parent, ("terminate", reason, w), ("ok", ps)),
                ),
            ]
        )

        def oops(ref: Any, state: Any) -> Any:
            raise RuntimeError("oops")

        with pytest.raises(RuntimeError):
            pool.checkout(p, "checkout", oops)
        assert_receive(("terminate", "error", "server_state_out"))
        pool.stop(p, "shutdown")
        assert_receive(("terminate", "shutdown", "w"))
        script.assert_drained()

    def test_the_worker_is_terminated_with_its_updated_state(self) -> None:
        parent = otp.self()
        script, p = start_pool(
            [
                ("init_worker", lambda ps: ("ok", "w", ps)),
                (
                    "handle_checkout",
                    lambda c, f, w, ps: ("ok", "client_state_out", "server_state_out", ps),
                ),
                (
                    "handle_update",
                    lambda msg, w, ps: ("ok", "updated_state", ps) if msg == "update" else None,
                ),
                (
                    "terminate_worker",
                    lambda reason, w, ps: tell(parent, ("terminate", reason, w), ("ok", ps)),
                ),
                ("init_worker", lambda ps: ("ok", "w", ps)),
                (
                    "terminate_worker",
                    lambda reason, w, ps: tell(parent, ("terminate", reason, w), ("ok", ps)),
                ),
            ]
        )

        def fun(from_: pool.From, state: Any) -> Any:
            pool.update(from_, "update")
            raise RuntimeError("oops")

        with pytest.raises(RuntimeError):
            pool.checkout(p, "checkout", fun)
        assert_receive(("terminate", "error", "updated_state"))
        pool.stop(p, "shutdown")
        assert_receive(("terminate", "shutdown", "w"))
        script.assert_drained()

    def test_restarts_on_init_failure_without_blocking_the_main_loop(self) -> None:
        parent = otp.self()

        def failing_init(ps: Any) -> Any:
            otp.send(parent, "initialising")
            otp.receive("release")  # runs in the pool process: its own mailbox
            raise RuntimeError("oops")

        script, p = start_pool(
            [
                ("init_worker", lambda ps: ("ok", "w1", ps)),
                ("init_worker", lambda ps: ("ok", "w2", ps)),
                ("handle_checkout", ok_checkout("client_state_out")),
                ("handle_checkin", lambda s, f, w, ps: ("remove", "checkin", ps)),
                ("terminate_worker", report_terminate(parent)),
                ("init_worker", failing_init),
                ("handle_info", lambda msg, w: tell(parent, ("info", msg), ("ok", w))),
                ("init_worker", failing_init),
                ("init_worker", lambda ps: tell(parent, "init", ("ok", "w3", ps))),
                ("terminate_worker", report_terminate(parent)),
                ("terminate_worker", report_terminate(parent)),
            ],
            pool_size=2,
        )
        assert pool.checkout(p, "checkout", lambda ref, s: ("result", "in")) == "result"
        assert_receive(("terminate", "checkin"))
        assert_receive("initialising")
        otp.send(p, "not_blocked")
        otp.send(p, "release")
        assert_receive(("info", "not_blocked"))  # served while the replacement backs off
        assert_receive("initialising")
        otp.send(p, "release")
        assert_receive("init")
        pool.stop(p, "shutdown")
        assert_receive(("terminate", "shutdown"))
        assert_receive(("terminate", "shutdown"))
        script.assert_drained()

    @pytest.mark.parametrize("where", ["handle_checkout", "handle_checkin", "handle_info"])
    def test_restarts_the_worker_when_a_callback_raises(self, where: str) -> None:
        parent = otp.self()

        def boom(*args: Any) -> Any:
            raise RuntimeError("oops")

        first = {
            "handle_checkout": [("handle_checkout", boom)],
            "handle_checkin": [
                ("handle_checkout", ok_checkout("client_state_out")),
                ("handle_checkin", boom),
            ],
            "handle_info": [("handle_info", boom)],
        }[where]
        script, p = start_pool(
            [
                ("init_worker", lambda ps: ("ok", "w", ps)),
                *first,
                ("terminate_worker", report_terminate(parent)),
                ("init_worker", lambda ps: ("ok", "w", ps)),
                ("handle_checkout", ok_checkout("client_state_out")),
                ("handle_checkin", ok_checkin()),
                ("terminate_worker", report_terminate(parent)),
            ]
        )
        if where == "handle_info":
            otp.send(p, "oops")
        else:
            # A raising handle_checkout removes that worker and the same request gets the next.
            assert pool.checkout(p, "checkout", lambda ref, s: ("result", "in")) == "result"
        reason = assert_receive(("terminate", ANY))[1]
        assert isinstance(reason, RuntimeError) and str(reason) == "oops"
        if where != "handle_checkout":
            assert pool.checkout(p, "checkout", lambda ref, s: ("result", "in")) == "result"
        pool.stop(p, "shutdown")
        assert_receive(("terminate", "shutdown"))
        script.assert_drained()

    def test_discards_a_terminate_failure(self) -> None:
        parent = otp.self()

        def boom(reason: Any, w: Any, ps: Any) -> Any:
            raise RuntimeError("oops")

        script, p = start_pool(
            [
                ("init_worker", lambda ps: ("ok", "w", ps)),
                ("handle_info", lambda msg, w: ("remove", "unused")),
                ("terminate_worker", boom),
                ("init_worker", lambda ps: tell(parent, "init", ("ok", "w", ps))),
                ("handle_checkout", ok_checkout("client_state_out")),
                ("handle_checkin", ok_checkin()),
                ("terminate_worker", report_terminate(parent)),
            ]
        )
        otp.send(p, "oops")
        assert_receive("init")
        assert pool.checkout(p, "checkout", lambda ref, s: ("result", "in")) == "result"
        pool.stop(p, "shutdown")
        assert_receive(("terminate", "shutdown"))
        script.assert_drained()


# -- handle_enqueue and skip --------------------------------------------------------------------


class TestHandleEnqueue:
    def test_wraps_the_command_and_threads_the_pool_state(self) -> None:
        script, p = start_pool(
            [
                ("init_pool", lambda script: ("ok", "parent")),
                ("init_worker", lambda ps: ("ok", "child1", "parent1") if ps == "parent" else None),
                (
                    "handle_enqueue",
                    lambda cmd, ps: (
                        ("ok", "wrapped_command", "parent2")
                        if (cmd, ps) == ("command", "parent1")
                        else None
                    ),
                ),
                (
                    "handle_checkout",
                    lambda c, f, w, ps: (
                        ("ok", "client_command", "child2", "parent3")
                        if (c, w, ps) == ("wrapped_command", "child1", "parent2")
                        else None
                    ),
                ),
                (
                    "handle_checkin",
                    lambda s, f, w, ps: (
                        ("ok", "child3", "parent4")
                        if (s, w, ps) == ("checkin_command", "child2", "parent3")
                        else None
                    ),
                ),
            ]
        )
        assert (
            pool.checkout(
                p,
                "command",
                lambda ref, s: ("ok", "checkin_command") if s == "client_command" else ("wrong", s),
            )
            == "ok"
        )
        pool.stop(p, "shutdown")
        script.assert_drained()


class SkippedCheckout(Exception):
    def __init__(self, message: str = "skipped checkout!") -> None:
        super().__init__(message)


class TestSkip:
    def test_handle_checkout_skip_raises_in_the_caller_and_keeps_the_worker(self) -> None:
        parent = otp.self()
        script, p = start_pool(
            [
                ("init_worker", lambda ps: tell(parent, "init_worker", ("ok", "w", ps))),
                ("handle_checkout", lambda c, f, w, ps: ("skip", SkippedCheckout, ps)),
                ("handle_checkout", ok_checkout("w")),
                ("handle_checkin", ok_checkin()),
            ]
        )
        assert_receive("init_worker")
        with pytest.raises(SkippedCheckout, match="skipped checkout!"):
            pool.checkout(p, "skip", lambda ref, s: (s, s))
        refute_received("init_worker")
        assert pool.checkout(p, "checkout", lambda ref, s: ("result", s)) == "result"
        refute_received("init_worker")
        pool.stop(p)
        script.assert_drained()

    def test_handle_enqueue_skip_never_reaches_handle_checkout(self) -> None:
        script, p = start_pool(
            [
                ("init_pool", lambda script: ("ok", "init")),
                ("init_worker", lambda ps: ("ok", "client", "will_skip")),
                (
                    "handle_enqueue",
                    lambda cmd, ps: (
                        ("skip", SkippedCheckout, "will_checkout")
                        if (cmd, ps) == ("skip", "will_skip")
                        else None
                    ),
                ),
                (
                    "handle_enqueue",
                    lambda cmd, ps: (
                        ("ok", "command", "handle_checkout")
                        if (cmd, ps) == ("checkout", "will_checkout")
                        else None
                    ),
                ),
                (
                    "handle_checkout",
                    lambda c, f, w, ps: (
                        ("ok", "client_command", w, "checked_out")
                        if (c, ps) == ("command", "handle_checkout")
                        else None
                    ),
                ),
                ("handle_checkin", ok_checkin()),
            ]
        )
        with pytest.raises(SkippedCheckout, match="skipped checkout"):
            pool.checkout(p, "skip", lambda ref, s: pytest.fail("this will never be called"))
        assert pool.checkout(p, "checkout", lambda ref, s: ("ok", "ok")) == "ok"
        pool.stop(p)
        script.assert_drained()

    def test_a_skip_reason_that_is_not_an_exception_becomes_checkout_skipped(self) -> None:
        script, p = start_pool(
            [
                ("init_worker", lambda ps: ("ok", "w", ps)),
                ("handle_checkout", lambda c, f, w, ps: ("skip", "busy", ps)),
            ]
        )
        with pytest.raises(pool.CheckoutSkipped, match="'busy'") as info:
            pool.checkout(p, "cmd", lambda ref, s: (s, s))
        assert (info.value.pool, info.value.command, info.value.reason) == (p, "cmd", "busy")
        pool.stop(p)


# -- handle_ping --------------------------------------------------------------------------------


def pong(parent: otp.Pid, result: Any = None) -> Any:
    return lambda w, ps: tell(parent, ("pong", w), ("ok", w) if result is None else result)


class TestHandlePing:
    def test_pings_only_workers_idle_for_the_timeout(self) -> None:
        parent, clock = otp.self(), ManualClock()
        script, p = start_pool(
            [
                ("init_worker", lambda ps: ("ok", "worker1", ps)),
                ("init_worker", lambda ps: ("ok", "worker2", ps)),
                ("init_worker", lambda ps: ("ok", "worker3", ps)),
                ("handle_checkout", ok_checkout("client_state_out")),
                ("handle_checkin", ok_checkin()),
                ("handle_ping", pong(parent)),
                ("handle_ping", pong(parent)),
            ],
            pool_size=3,
            worker_idle_timeout=5,
            clock=clock,
        )
        clock.advance(3)
        assert pool.checkout(p, "checkout", lambda ref, s: ("result", "in")) == "result"  # worker1
        clock.advance(2)  # the cycle at t=5: worker1 was idle only 2 s
        assert_receive(("pong", "worker2"))
        assert_receive(("pong", "worker3"))
        refute_received(("pong", "worker1"))
        pool.stop(p, "shutdown")
        script.assert_drained()

    def test_handle_ping_ok_updates_the_worker_state(self) -> None:
        parent, clock = otp.self(), ManualClock()
        script, p = start_pool(
            [
                ("init_worker", lambda ps: ("ok", "worker1", ps)),
                ("handle_ping", lambda w, ps: tell(parent, "pong", ("ok", "new_worker_state"))),
                ("handle_checkout", lambda c, f, w, ps: ("ok", w, w, ps)),
                ("handle_checkin", ok_checkin()),
            ],
            worker_idle_timeout=5,
            clock=clock,
        )
        clock.advance(5)
        assert_receive("pong")
        assert pool.checkout(p, "checkout", lambda ref, s: (s, s)) == "new_worker_state"
        pool.stop(p, "shutdown")
        script.assert_drained()

    def test_handle_ping_remove_terminates_the_worker_and_the_pool_lives_on(self) -> None:
        parent, clock = otp.self(), ManualClock()
        script, p = start_pool(
            [
                ("init_worker", lambda ps: ("ok", "w", ps)),
                ("handle_ping", lambda w, ps: tell(parent, "pong", ("remove", "some_reason"))),
                ("terminate_worker", report_terminate(parent)),
                ("init_worker", lambda ps: tell(parent, "replaced", ("ok", "w2", ps))),
                ("terminate_worker", report_terminate(parent)),
            ],
            worker_idle_timeout=5,
            clock=clock,
        )
        ref = otp.monitor(p)
        clock.advance(5)
        assert_receive("pong")
        assert_receive(("terminate", "some_reason"))
        assert_receive("replaced")
        refute_received(Down)
        otp.demonitor(ref, flush=True)
        pool.stop(p)
        script.assert_drained()

    def test_handle_ping_stop_terminates_the_pool(self) -> None:
        parent, clock = otp.self(), ManualClock()
        script, p = start_pool(
            [
                ("init_worker", lambda ps: ("ok", "w", ps)),
                ("handle_ping", lambda w, ps: tell(parent, "pong", ("stop", "some_reason"))),
                ("terminate_worker", report_terminate(parent)),
            ],
            worker_idle_timeout=5,
            clock=clock,
        )
        ref = otp.monitor(p)
        clock.advance(5)
        assert_receive("pong")
        assert_receive(("terminate", ("shutdown", "some_reason")))
        assert assert_receive(Down).reason == ("shutdown", "some_reason")
        otp.demonitor(ref, flush=True)
        script.assert_drained()

    def test_pings_workers_in_order_without_changing_their_order(self) -> None:
        parent, clock = otp.self(), ManualClock()
        pings = [("handle_ping", pong(parent)) for _ in range(6)]
        script, p = start_pool(
            [
                ("init_worker", lambda ps: ("ok", "worker1", ps)),
                ("init_worker", lambda ps: ("ok", "worker2", ps)),
                ("init_worker", lambda ps: ("ok", "worker3", ps)),
                *pings,
            ],
            pool_size=3,
            worker_idle_timeout=5,
            clock=clock,
        )
        for _ in range(2):
            clock.advance(5)
            for w in ("worker1", "worker2", "worker3"):
                assert otp.receive(timeout=5) == ("pong", w)
        pool.stop(p)
        script.assert_drained()

    def test_pings_at_most_max_idle_pings_workers_per_cycle(self) -> None:
        parent, clock = otp.self(), ManualClock()
        script, p = start_pool(
            [
                ("init_worker", lambda ps: ("ok", "worker1", ps)),
                ("init_worker", lambda ps: ("ok", "worker2", ps)),
                ("init_worker", lambda ps: ("ok", "worker3", ps)),
                ("handle_ping", pong(parent)),
                ("handle_ping", pong(parent)),
            ],
            pool_size=3,
            worker_idle_timeout=5,
            max_idle_pings=2,
            clock=clock,
        )
        clock.advance(5)
        assert_receive(("pong", "worker1"))
        assert_receive(("pong", "worker2"))
        refute_received(("pong", "worker3"))
        pool.stop(p)
        script.assert_drained()

    def test_a_lazy_pool_pings_its_worker_after_a_checkout(self) -> None:
        """NimblePool's "Bug - Do not remove worker on verification cycle"."""
        parent, clock = otp.self(), ManualClock()
        script, p = start_pool(
            [
                ("init_worker", lambda ps: ("ok", "worker1", ps)),
                ("handle_checkout", ok_checkout("client_state_out")),
                ("handle_checkin", ok_checkin()),
                ("handle_ping", lambda w, ps: tell(parent, "pong", ("stop", "some_reason"))),
                ("terminate_worker", lambda reason, w, ps: ("ok", ps)),
            ],
            lazy=True,
            worker_idle_timeout=5,
            clock=clock,
        )
        ref = otp.monitor(p)
        assert pool.checkout(p, "checkout", lambda ref, s: ("result", "in")) == "result"
        clock.advance(5)
        assert_receive("pong")
        down = assert_receive(Down)
        assert (down.ref, down.reason) == (ref, ("shutdown", "some_reason"))
        script.assert_drained()

    def test_without_handle_ping_worker_idle_timeout_only_warns(self) -> None:
        class NoPing(pool.PoolWorker):
            def init_worker(self, ps: Any) -> Any:
                return ("ok", "w", ps)

        from loguru import logger

        warnings: list[str] = []
        sink = logger.add(lambda m: warnings.append(str(m)), level="WARNING")
        try:
            p = pool.start(NoPing, None, pool_size=1, worker_idle_timeout=5, clock=ManualClock())
        finally:
            logger.remove(sink)
        assert any("does not override handle_ping" in w for w in warnings)
        pool.stop(p)


# -- cancelled holders (cancelled_holder_test.exs) ----------------------------------------------


@pytest.mark.parametrize("lazy", [True, False])
@pytest.mark.parametrize("cancellation", ["down", "exit"])
def test_a_queued_caller_progresses_after_the_holder_is_cancelled(
    lazy: bool, cancellation: str
) -> None:
    parent = otp.self()

    class Worker(pool.PoolWorker):
        def init_worker(self, ps: Any) -> Any:
            return ("ok", "resource", ps)

        def handle_enqueue(self, command: Any, ps: Any) -> Any:
            otp.send(parent, ("enqueued", command))
            return ("ok", command, ps)

    p = pool.start(Worker, None, pool_size=1, lazy=lazy)

    def hold() -> None:
        def fun(ref: Any, resource: Any) -> Any:
            otp.send(parent, "held")
            otp.receive("cancel")
            otp.exit("cancelled")

        pool.checkout(p, "hold", fun)

    holder = otp.spawn(hold)
    assert_receive("held")

    def wait() -> None:
        pool.checkout(p, "wait", lambda ref, resource: (otp.send(parent, "admitted"), resource))

    otp.spawn(wait)
    assert_receive(("enqueued", "wait"))
    if cancellation == "down":
        otp.exit(holder, "kill")
    else:
        otp.send(holder, "cancel")
    assert_receive("admitted", timeout=1.0)
    pool.stop(p)
