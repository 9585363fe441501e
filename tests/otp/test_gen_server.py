"""GenServer, against Elixir's documented behaviour (lib/elixir/lib/gen_server.ex) and OTP's
gen_server: starting, call/cast/info/continue, every return shape, timeouts, terminate, stop."""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from loguru import logger

import otp
from otp import ANY, TIMEOUT, BadReturn, Exit, GenServer, ProcessExit, StartError
from otp.testing import wait_down


def exit_reason_of(fn: Callable[..., Any], *args: Any) -> Any:
    """Run `fn` in a fresh process and return the reason it exited with."""
    _, ref = otp.spawn_monitor(fn, *args)
    return wait_down(ref).reason


def expect(pattern: Any, timeout: float = 5.0) -> Any:
    msg = otp.receive(pattern, timeout=timeout)
    assert msg is not TIMEOUT, f"nothing matching {pattern!r} arrived"
    return msg


def join_thread(pid: otp.Pid) -> None:
    """Wait for the thread behind `pid` to finish (the process itself may be dead long before)."""
    thread = pid._proc.thread
    assert thread is not None
    thread.join(5)
    assert not thread.is_alive()


@pytest.fixture
def logs() -> Iterator[list[str]]:
    lines: list[str] = []
    sink = logger.add(lines.append, level="WARNING", format="{level} {message}")
    try:
        yield lines
    finally:
        logger.remove(sink)


class Echo(GenServer):
    """Replies with its state to "state", and with the request itself otherwise."""

    def handle_call(self, request: Any, from_: otp.From, state: Any) -> Any:
        if request == "state":
            return ("reply", state, state)
        return ("reply", request, state)

    def handle_cast(self, msg: Any, state: Any) -> Any:
        return ("noreply", msg)


class Reporter(GenServer):
    """Tells the test process about every callback: init's arg is the test's pid."""

    def init(self, test: otp.Pid) -> Any:
        return ("ok", test)

    def handle_call(self, request: Any, from_: otp.From, test: otp.Pid) -> Any:
        return request(from_, test)  # the test passes the behaviour in

    def handle_cast(self, fn: Any, test: otp.Pid) -> Any:
        return fn(test)

    def handle_info(self, msg: Any, test: otp.Pid) -> Any:
        otp.send(test, ("info", msg))
        return ("noreply", test)

    def handle_continue(self, arg: Any, test: otp.Pid) -> Any:
        otp.send(test, ("continue", arg))
        return ("noreply", test)

    def terminate(self, reason: Any, test: otp.Pid) -> None:
        otp.send(test, ("terminate", reason))


# -- start / start_link ------------------------------------------------------------------------


class TestStart:
    def test_start_link_returns_only_after_init_has_finished(self) -> None:
        finished = threading.Event()

        class Slow(GenServer):
            def init(self, arg: Any) -> Any:
                otp.sleep(0.05)  # widen the window in which a premature return would show
                finished.set()
                return ("ok", arg)

        pid = Slow.start_link("s")
        assert finished.is_set()
        assert otp.is_alive(pid)

    def test_init_state_is_the_first_state(self) -> None:
        pid = Echo.start_link(41)
        assert otp.call(pid, "state") == 41

    def test_the_name_is_registered_before_init_runs(self) -> None:
        class WhoAmI(GenServer):
            def init(self, name: Any) -> Any:
                return ("ok", otp.whereis(name) == otp.self())

            def handle_call(self, request: Any, from_: otp.From, state: Any) -> Any:
                return ("reply", state, state)

        pid = WhoAmI.start_link("who", name="who")
        assert otp.whereis("who") == pid
        assert otp.call("who", "?") is True

    def test_start_link_links_and_start_does_not(self) -> None:
        linked = Echo.start_link()
        unlinked = Echo.start()
        me = otp.process_info(otp.self())
        assert linked in me.links and unlinked not in me.links

    def test_a_taken_name_is_already_started_with_the_holder(self) -> None:
        pid = Echo.start_link(name="taken")
        with pytest.raises(StartError) as info:
            Echo.start_link(name="taken")
        assert info.value.reason == ("already_started", pid)

    def test_init_raising_comes_back_as_start_error_and_frees_the_name(self) -> None:
        class Failing(GenServer):
            def init(self, arg: Any) -> Any:
                if arg == "fail":
                    raise ValueError("bad config")
                return ("ok", arg)

        with pytest.raises(StartError) as info:
            Failing.start_link("fail", name="svc")
        assert isinstance(info.value.reason, ValueError) and str(info.value.reason) == "bad config"
        assert otp.whereis("svc") is None
        assert otp.processes() == [otp.self()]  # the failed server has exited, caller unharmed
        pid = Failing.start_link("fine", name="svc")  # an immediate retry succeeds
        assert otp.whereis("svc") == pid

    def test_init_stop_comes_back_as_start_error_with_the_reason_and_frees_the_name(self) -> None:
        class Stopping(GenServer):
            def init(self, arg: Any) -> Any:
                return ("stop", "no_database") if arg == "stop" else ("ok", arg)

        for _ in range(20):  # the retry must never see already_started
            with pytest.raises(StartError) as info:
                Stopping.start_link("stop", name="svc")
            assert info.value.reason == "no_database"
            otp.stop(Stopping.start_link("ok", name="svc"))
        assert otp.processes() == [otp.self()]

    def test_init_ignore_returns_ignore_and_frees_the_name(self) -> None:
        class Ignoring(GenServer):
            def init(self, arg: Any) -> Any:
                return "ignore" if arg == "ignore" else ("ok", arg)

        assert Ignoring.start_link("ignore", name="svc") == "ignore"
        assert otp.whereis("svc") is None
        assert otp.processes() == [otp.self()]
        assert otp.whereis("svc") is None
        assert isinstance(Ignoring.start_link("ok", name="svc"), otp.Pid)

    def test_init_exiting_comes_back_as_start_error_to_a_linked_caller(self) -> None:
        class Exiting(GenServer):
            def init(self, arg: Any) -> Any:
                otp.exit(("shutdown", "gave up"))

        with pytest.raises(StartError) as info:
            Exiting.start_link(name="svc")
        assert info.value.reason == ("shutdown", "gave up")
        assert otp.is_alive(otp.self()) and otp.whereis("svc") is None
        with pytest.raises(StartError):
            Exiting.start_link(name="svc")

    @pytest.mark.parametrize("bad", [42, ("ok",), ("okay", 1), ("ok", 1, "soon"), ("ok", 1, -1.0)])
    def test_init_returning_a_bad_shape_is_a_start_error_saying_expected_and_got(self, bad: Any) -> None:
        class Bad(GenServer):
            def init(self, arg: Any) -> Any:
                return bad

        with pytest.raises(StartError) as info:
            Bad.start_link(name="bad")
        reason = info.value.reason
        assert isinstance(reason, BadReturn)
        assert "expected" in str(reason) and f"got {bad!r}" in str(reason)
        assert otp.whereis("bad") is None

    def test_a_failing_start_link_does_not_kill_a_non_trapping_caller(self) -> None:
        me = otp.self()

        class Failing(GenServer):
            def init(self, arg: Any) -> Any:
                raise RuntimeError("init blew up")

        def caller() -> None:
            try:
                Failing.start_link()
            except StartError as exc:
                otp.send(me, ("caller got", type(exc.reason).__name__))
            otp.receive("finish")

        pid, ref = otp.spawn_monitor(caller)
        assert expect(("caller got", ANY)) == ("caller got", "RuntimeError")
        otp.send(pid, "finish")
        assert wait_down(ref).reason == "normal"

    def test_a_constructor_that_raises_is_a_start_error_too(self) -> None:
        class Unbuildable(GenServer):
            def __init__(self) -> None:
                raise RuntimeError("no constructing me")

        with pytest.raises(StartError) as info:
            Unbuildable.start_link(name="svc")
        assert str(info.value.reason) == "no constructing me"
        assert otp.whereis("svc") is None and otp.is_alive(otp.self())

    def test_a_start_link_whose_init_does_not_finish_in_time_is_a_timeout_and_the_server_is_gone(self) -> None:
        class Stuck(GenServer):
            def init(self, arg: Any) -> Any:
                otp.receive("never")
                return ("ok", arg)

        with pytest.raises(StartError) as info:
            Stuck.start_link(name="stuck", timeout=0.1)
        assert info.value.reason == ("timeout", "Stuck", 0.1)
        assert otp.whereis("stuck") is None
        assert otp.processes() == [otp.self()]
        assert otp.flush() == []

    def test_init_continue_runs_after_start_link_returned_and_before_the_next_message(self) -> None:
        class Continuing(GenServer):
            def init(self, test: otp.Pid) -> Any:
                return ("ok", ["init"], ("continue", test))

            def handle_continue(self, test: otp.Pid, trail: list[str]) -> Any:
                otp.send(test, "continuing")
                otp.receive("go on")  # still inside handle_continue
                return ("noreply", trail + ["continue"])

            def handle_call(self, request: Any, from_: otp.From, trail: list[str]) -> Any:
                return ("reply", trail, trail)

        pid = Continuing.start_link(otp.self())  # returns while handle_continue waits for us
        expect("continuing")
        otp.send(pid, "go on")
        assert otp.call(pid, "trail") == ["init", "continue"]

    def test_start_requires_a_gen_server_subclass(self) -> None:
        with pytest.raises(TypeError, match="GenServer subclass"):
            otp.gen_server.start_link(int)  # type: ignore[arg-type]


# -- call --------------------------------------------------------------------------------------


class TestCall:
    def test_call_returns_the_reply_of_handle_call(self) -> None:
        pid = Echo.start_link()
        assert otp.call(pid, ("hello", 1)) == ("hello", 1)

    def test_call_by_registered_name(self) -> None:
        Echo.start_link(7, name="echo")
        assert otp.call("echo", "state") == 7

    def test_calls_and_casts_are_handled_in_the_order_they_were_sent(self) -> None:
        pid = Echo.start_link(0)
        for i in range(1, 50):
            otp.cast(pid, i)
        assert otp.call(pid, "state") == 49

    def test_call_to_a_dead_pid_exits_the_caller_with_noproc_at_once(self) -> None:
        pid = Echo.start()
        otp.stop(pid)
        start = time.monotonic()
        with pytest.raises(ProcessExit) as info:
            otp.call(pid, "hi", timeout=30)
        assert time.monotonic() - start < 1.0
        assert info.value.reason == ("noproc", ("call", pid, "hi", 30))

    def test_call_to_an_unregistered_name_exits_the_caller_with_noproc_at_once(self) -> None:
        start = time.monotonic()
        with pytest.raises(ProcessExit) as info:
            otp.call("nobody", "hi", timeout=30)
        assert time.monotonic() - start < 1.0
        assert info.value.reason == ("noproc", ("call", "nobody", "hi", 30))

    def test_call_timeout_exits_the_caller_with_timeout(self) -> None:
        class Silent(GenServer):
            def handle_call(self, request: Any, from_: otp.From, state: Any) -> Any:
                return ("noreply", state)

        pid = Silent.start_link()

        def caller() -> None:
            otp.call(pid, "anyone?", timeout=0.1)

        assert exit_reason_of(caller) == ("timeout", ("call", pid, "anyone?", 0.1))
        with pytest.raises(ProcessExit) as info:
            otp.call(pid, "anyone?", timeout=0.05)
        assert info.value.reason == ("timeout", ("call", pid, "anyone?", 0.05))
        assert otp.is_alive(pid)  # the server is not affected

    def test_a_late_reply_never_lands_in_the_callers_mailbox(self) -> None:
        class Late(GenServer):
            def handle_call(self, request: Any, from_: otp.From, state: Any) -> Any:
                if request == "slow":
                    otp.receive("release")  # blocks this server until the test says so
                    return ("reply", "too late", state)
                if request == "deferred":
                    return ("noreply", from_)
                return ("reply", "pong", state)

            def handle_cast(self, msg: Any, pending: Any) -> Any:
                otp.reply(pending, "also too late")
                return ("noreply", None)

        pid = Late.start_link()
        with pytest.raises(ProcessExit) as info:
            otp.call(pid, "slow", timeout=0.05)
        assert info.value.reason[0] == "timeout"
        otp.send(pid, "release")
        assert otp.call(pid, "ping") == "pong"  # so the late reply has been sent by now
        with pytest.raises(ProcessExit):
            otp.call(pid, "deferred", timeout=0.05)
        otp.cast(pid, "answer now")
        assert otp.call(pid, "ping") == "pong"
        assert otp.flush() == []

    def test_a_server_that_dies_mid_call_exits_the_caller_with_the_servers_reason(self) -> None:
        class Dying(GenServer):
            def handle_call(self, request: Any, from_: otp.From, state: Any) -> Any:
                otp.exit(("shutdown", "mid-call"))

        pid = Dying.start()
        with pytest.raises(ProcessExit) as info:
            otp.call(pid, "x")
        assert info.value.reason == (("shutdown", "mid-call"), ("call", pid, "x", 5.0))
        assert otp.flush() == []  # no stray Down left behind

    def test_a_server_killed_during_a_call_exits_the_caller_with_killed(self) -> None:
        me = otp.self()

        class Blocking(GenServer):
            def handle_call(self, request: Any, from_: otp.From, state: Any) -> Any:
                otp.send(me, "in call")
                otp.receive("never")
                return ("reply", None, state)

        server = Blocking.start()
        client, ref = otp.spawn_monitor(lambda: otp.call(server, "block", timeout=None))
        expect("in call")
        otp.exit(server, "kill")
        assert wait_down(ref).reason == ("killed", ("call", server, "block", None))

    def test_a_crash_in_handle_call_exits_the_caller_with_the_exception(self) -> None:
        class Crashing(GenServer):
            def handle_call(self, request: Any, from_: otp.From, state: Any) -> Any:
                raise KeyError(request)

        pid = Crashing.start()
        with pytest.raises(ProcessExit) as info:
            otp.call(pid, "missing")
        reason, detail = info.value.reason
        assert isinstance(reason, KeyError) and detail == ("call", pid, "missing", 5.0)

    def test_calling_itself_is_a_clear_error_not_a_hang(self) -> None:
        class Selfish(GenServer):
            def handle_call(self, request: Any, from_: otp.From, state: Any) -> Any:
                return ("reply", otp.call(otp.self(), "again", timeout=None), state)

        pid = Selfish.start()
        ref = otp.monitor(pid)
        with pytest.raises(ProcessExit) as info:
            otp.call(pid, "go", timeout=None)
        reason = info.value.reason[0]
        assert reason[0] == "calling_self"
        assert wait_down(ref).reason == reason

    def test_a_server_without_handle_call_crashes_on_a_call(self) -> None:
        class Quiet(GenServer):
            pass

        pid = Quiet.start()
        with pytest.raises(ProcessExit) as info:
            otp.call(pid, "hi")
        assert isinstance(info.value.reason[0], NotImplementedError)
        assert "handle_call" in str(info.value.reason[0])

    def test_a_trapping_caller_linked_to_a_crashing_server_gets_the_exit_and_the_error(self) -> None:
        class Crashing(GenServer):
            def handle_call(self, request: Any, from_: otp.From, state: Any) -> Any:
                raise ValueError("boom")

        otp.trap_exit(True)
        pid = Crashing.start_link()
        with pytest.raises(ProcessExit) as info:
            otp.call(pid, "x")
        exit_msg = expect(Exit)
        assert exit_msg.pid == pid and exit_msg.reason is info.value.reason[0]


# -- reply -------------------------------------------------------------------------------------


class _Payload:
    """A reply whose lifetime a test can watch (through a weakref)."""


def test_a_reply_nobody_waits_for_any_more_is_not_kept_alive_by_an_idle_server() -> None:
    made: list[weakref.ref[_Payload]] = []
    release = threading.Event()

    class Slow(GenServer):
        def init(self, arg: Any) -> Any:
            return ("ok", None)

        def handle_call(self, request: Any, from_: Any, state: Any) -> Any:
            release.wait(10)  # answers only after the caller has given up
            payload = _Payload()
            made.append(weakref.ref(payload))
            return ("reply", payload, state)

    pid = Slow.start()
    with pytest.raises(ProcessExit):
        otp.call(pid, "make", 0.05)
    release.set()
    deadline = time.monotonic() + 10
    while not (made and made[0]() is None) and time.monotonic() < deadline:
        otp.sleep(0.01)  # the server is idle: no event marks the moment it lets go
    assert made and made[0]() is None, "the idle server still holds the reply it could not deliver"
    otp.stop(pid)


class TestReply:
    def test_a_deferred_reply_from_a_later_callback_answers_the_call(self) -> None:
        me = otp.self()

        class Deferred(GenServer):
            def handle_call(self, request: Any, from_: otp.From, waiting: list[otp.From]) -> Any:
                if request == "wait":
                    otp.send(me, "waiting")
                    return ("noreply", waiting + [from_])
                for f in waiting:
                    otp.reply(f, ("released by", request))
                return ("reply", len(waiting), [])

        pid = Deferred.start_link([])
        for _ in range(3):
            otp.spawn(lambda: otp.send(me, ("got", otp.call(pid, "wait"))))
        for _ in range(3):
            expect("waiting")
        assert otp.call(pid, "release") == 3
        assert [expect(("got", ANY)) for _ in range(3)] == [("got", ("released by", "release"))] * 3

    def test_another_process_can_reply_on_the_servers_behalf(self) -> None:
        class Delegating(GenServer):
            def handle_call(self, request: Any, from_: otp.From, state: Any) -> Any:
                otp.spawn(otp.reply, from_, ("worker says", request))
                return ("noreply", state)

        pid = Delegating.start_link()
        assert otp.call(pid, 5) == ("worker says", 5)

    def test_from_carries_the_callers_pid(self) -> None:
        class Who(GenServer):
            def handle_call(self, request: Any, from_: otp.From, state: Any) -> Any:
                return ("reply", from_.pid, state)

        assert otp.call(Who.start_link(), "who") == otp.self()


# -- cast and info -----------------------------------------------------------------------------


class TestCastAndInfo:
    def test_cast_reaches_handle_cast(self) -> None:
        pid = Reporter.start_link(otp.self())
        otp.cast(pid, lambda test: (otp.send(test, "cast handled"), ("noreply", test))[1])
        expect("cast handled")

    def test_cast_to_a_dead_pid_or_unknown_name_is_ignored(self) -> None:
        pid = Echo.start()
        otp.stop(pid)
        assert otp.cast(pid, "lost") is None
        assert otp.cast("nobody", "lost") is None

    def test_plain_messages_reach_handle_info(self) -> None:
        pid = Reporter.start_link(otp.self())
        otp.send(pid, {"any": "term"})
        assert expect(("info", ANY)) == ("info", {"any": "term"})

    def test_the_default_handle_info_logs_and_keeps_the_server_running(self, logs: list[str]) -> None:
        pid = Echo.start_link(3)
        otp.send(pid, "stray")
        assert otp.call(pid, "state") == 3
        assert any("stray" in line and "WARNING" in line for line in logs)

    def test_the_default_handle_cast_crashes_the_server(self) -> None:
        class NoCast(GenServer):
            pass

        pid = NoCast.start()
        ref = otp.monitor(pid)
        otp.cast(pid, "hi")
        reason = wait_down(ref).reason
        assert isinstance(reason, NotImplementedError) and "handle_cast" in str(reason)

    def test_an_exit_from_a_linked_process_that_is_not_the_parent_goes_to_handle_info(self) -> None:
        me = otp.self()

        class Trapping(Reporter):
            def init(self, test: otp.Pid) -> Any:
                otp.trap_exit(True)
                return ("ok", test)

        pid = Trapping.start_link(me)

        def linked() -> None:
            otp.link(pid)
            otp.exit("goodbye")

        worker, ref = otp.spawn_monitor(linked)
        wait_down(ref)
        assert expect(("info", ANY)) == ("info", Exit(worker, "goodbye"))
        assert otp.is_alive(pid)


# -- return shapes -----------------------------------------------------------------------------


def _noreply(extra: Any = None) -> Callable[[otp.Pid], Any]:
    def behaviour(test: otp.Pid) -> Any:
        return ("noreply", test) if extra is None else ("noreply", test, extra)

    return behaviour


class TestReturnShapes:
    def test_reply_with_a_timeout_delivers_timeout_to_handle_info_when_idle(self) -> None:
        pid = Reporter.start_link(otp.self())
        assert otp.call(pid, lambda f, t: ("reply", "ok", t, 0.05)) == "ok"
        assert expect(("info", ANY)) == ("info", "timeout")

    @pytest.mark.parametrize("where", ["cast", "info", "continue", "init"])
    def test_noreply_with_a_timeout_delivers_timeout_to_handle_info(self, where: str) -> None:
        me = otp.self()

        class Timing(Reporter):
            def init(self, test: otp.Pid) -> Any:
                return ("ok", test, 0.05) if where == "init" else ("ok", test)

            def handle_info(self, msg: Any, test: otp.Pid) -> Any:
                otp.send(test, ("info", msg))
                if msg == "kick":
                    return ("noreply", test, 0.05)
                return ("noreply", test)

            def handle_continue(self, arg: Any, test: otp.Pid) -> Any:
                return ("noreply", test, 0.05)

        pid = Timing.start_link(me)
        if where == "cast":
            otp.cast(pid, _noreply(0.05))
        elif where == "info":
            otp.send(pid, "kick")
            expect(("info", "kick"))
        elif where == "continue":
            otp.cast(pid, lambda t: ("noreply", t, ("continue", None)))
        assert expect(("info", ANY)) == ("info", "timeout")

    def test_a_timeout_of_zero_fires_at_once_when_no_message_is_waiting(self) -> None:
        pid = Reporter.start_link(otp.self())
        otp.cast(pid, _noreply(0))
        assert expect(("info", ANY), timeout=1) == ("info", "timeout")

    def test_a_message_arriving_first_cancels_the_timeout(self) -> None:
        def wait_then_time_out(test: otp.Pid) -> Any:
            otp.receive("release")  # "first" was sent before "release", so it is queued now
            return ("noreply", test, 0.3)

        pid = Reporter.start_link(otp.self())
        otp.cast(pid, wait_then_time_out)
        otp.send(pid, "first")  # handle_info returns plain noreply: no timeout any more
        otp.send(pid, "release")
        assert expect(("info", ANY)) == ("info", "first")
        assert otp.receive(("info", ANY), timeout=0.6) is TIMEOUT

    def test_hibernate_is_accepted(self) -> None:
        pid = Reporter.start_link(otp.self())
        assert otp.call(pid, lambda f, t: ("reply", "zz", t, "hibernate")) == "zz"
        otp.cast(pid, _noreply("hibernate"))
        assert otp.call(pid, lambda f, t: ("reply", "awake", t)) == "awake"

    @pytest.mark.parametrize("via", ["reply", "deferred reply", "cast", "info"])
    def test_continue_runs_handle_continue_before_the_next_message(self, via: str) -> None:
        class Chain(Reporter):
            def handle_info(self, msg: Any, test: otp.Pid) -> Any:
                otp.send(test, ("info", msg))
                return ("noreply", test, ("continue", "first")) if msg == "kick" else ("noreply", test)

            def handle_continue(self, arg: Any, test: otp.Pid) -> Any:
                otp.send(test, ("continue", arg))
                if arg == "first":
                    return ("noreply", test, ("continue", "second"))  # a continue may continue
                return ("noreply", test)

        def deferred(f: otp.From, t: otp.Pid) -> Any:
            otp.reply(f, "r")
            return ("noreply", t, ("continue", "first"))

        pid = Chain.start_link(otp.self())
        if via == "reply":
            assert otp.call(pid, lambda f, t: ("reply", "r", t, ("continue", "first"))) == "r"
        elif via == "deferred reply":
            assert otp.call(pid, deferred) == "r"
        elif via == "cast":
            otp.cast(pid, lambda t: ("noreply", t, ("continue", "first")))
        else:
            otp.send(pid, "kick")
            expect(("info", "kick"))
        otp.send(pid, "after")  # queued behind the continue: handled after the whole chain
        got = [expect(lambda m: isinstance(m, tuple) and m[0] in ("info", "continue")) for _ in range(3)]
        assert got == [("continue", "first"), ("continue", "second"), ("info", "after")]

    def test_stop_with_a_reply_answers_then_terminates_with_the_reason(self) -> None:
        me = otp.self()
        pid = Reporter.start(me)
        ref = otp.monitor(pid)
        assert otp.call(pid, lambda f, t: ("stop", "normal", "bye", t)) == "bye"
        assert expect(("terminate", ANY)) == ("terminate", "normal")
        assert wait_down(ref).reason == "normal"

    def test_stop_without_a_reply_exits_the_caller_with_the_reason(self) -> None:
        pid = Reporter.start(otp.self())
        ref = otp.monitor(pid)
        with pytest.raises(ProcessExit) as info:
            otp.call(pid, lambda f, t: ("stop", ("shutdown", "done"), t))
        assert info.value.reason[0] == ("shutdown", "done")
        assert expect(("terminate", ANY)) == ("terminate", ("shutdown", "done"))
        assert wait_down(ref).reason == ("shutdown", "done")

    @pytest.mark.parametrize("via", ["cast", "info", "continue"])
    def test_stop_from_a_noreply_callback_terminates_with_the_reason(self, via: str) -> None:
        me = otp.self()

        class Stopping(Reporter):
            def handle_info(self, msg: Any, test: otp.Pid) -> Any:
                return ("stop", "info stop", test)

            def handle_continue(self, arg: Any, test: otp.Pid) -> Any:
                return ("stop", "continue stop", test)

        pid = Stopping.start(me)
        ref = otp.monitor(pid)
        if via == "cast":
            otp.cast(pid, lambda t: ("stop", "cast stop", t))
        elif via == "info":
            otp.send(pid, "stop please")
        else:
            otp.cast(pid, lambda t: ("noreply", t, ("continue", None)))
        expected = f"{via} stop"
        assert expect(("terminate", ANY)) == ("terminate", expected)
        assert wait_down(ref).reason == expected


class TestBadReturns:
    @pytest.mark.parametrize(
        ("callback", "bad"),
        [
            ("handle_call", "garbage"),
            ("handle_call", ("reply", 1)),
            ("handle_call", ("noreply", 1, 2, 3)),
            ("handle_cast", ("reply", 1, 2)),
            ("handle_info", None),
            ("handle_continue", ("noreply",)),
            ("handle_cast", ("noreply", 1, "later")),
            ("handle_info", ("noreply", 1, -5)),
        ],
    )
    def test_an_unknown_shape_crashes_the_server_with_bad_return(self, callback: str, bad: Any) -> None:
        me = otp.self()

        class Bad(Reporter):
            def handle_call(self, request: Any, from_: otp.From, test: otp.Pid) -> Any:
                return bad

            def handle_cast(self, msg: Any, test: otp.Pid) -> Any:
                return ("noreply", test, ("continue", None)) if callback == "handle_continue" else bad

            def handle_info(self, msg: Any, test: otp.Pid) -> Any:
                return bad

            def handle_continue(self, arg: Any, test: otp.Pid) -> Any:
                return bad

        pid = Bad.start(me)
        ref = otp.monitor(pid)
        if callback == "handle_call":
            with pytest.raises(ProcessExit):
                otp.call(pid, "x")
        elif callback == "handle_info":
            otp.send(pid, "x")
        else:
            otp.cast(pid, "x")
        reason = wait_down(ref).reason
        assert isinstance(reason, BadReturn)
        assert str(reason).startswith(f"{callback}: expected")
        assert f"got {bad!r}" in str(reason)
        assert expect(("terminate", ANY)) == ("terminate", reason)


# -- terminate ---------------------------------------------------------------------------------


class TestTerminate:
    def test_terminate_runs_on_a_callback_crash_with_the_exception_and_a_crash_report(self, logs: list[str]) -> None:
        pid = Reporter.start(otp.self())
        ref = otp.monitor(pid)

        def explode(test: otp.Pid) -> Any:
            raise ZeroDivisionError("kaboom in cast")

        otp.cast(pid, explode)
        _, reason = expect(("terminate", ANY))
        assert isinstance(reason, ZeroDivisionError)
        assert wait_down(ref).reason is reason
        text = "\n".join(logs)
        assert repr(pid) in text and "kaboom in cast" in text
        assert "Traceback" in text and "explode" in text

    def test_stop_runs_terminate_and_returns_after_the_server_has_exited(self) -> None:
        pid = Reporter.start(otp.self())
        otp.stop(pid, ("shutdown", "asked"))
        assert not otp.is_alive(pid)
        assert otp.receive(timeout=0) == ("terminate", ("shutdown", "asked"))

    def test_stop_defaults_to_normal(self) -> None:
        pid = Reporter.start(otp.self())
        ref = otp.monitor(pid)
        otp.stop(pid)
        assert expect(("terminate", ANY)) == ("terminate", "normal")
        assert wait_down(ref).reason == "normal"

    def test_stop_by_name(self) -> None:
        Reporter.start(otp.self(), name="rep")
        otp.stop("rep")
        assert otp.whereis("rep") is None

    def test_stop_of_a_dead_server_exits_with_noproc(self) -> None:
        with pytest.raises(ProcessExit) as info:
            otp.stop("nobody")
        assert info.value.reason[0] == "noproc"

    def test_stop_exits_with_timeout_when_terminate_takes_too_long(self) -> None:
        class SlowTerminate(GenServer):
            def terminate(self, reason: Any, state: Any) -> None:
                otp.receive("never")

        pid = SlowTerminate.start()
        with pytest.raises(ProcessExit) as info:
            otp.stop(pid, timeout=0.05)
        assert info.value.reason[0] == "timeout"
        otp.exit(pid, "kill")

    def test_stop_exits_with_the_actual_reason_when_terminate_crashes(self, logs: list[str]) -> None:
        class BadTerminate(GenServer):
            def terminate(self, reason: Any, state: Any) -> None:
                raise RuntimeError("terminate failed")

        pid = BadTerminate.start()
        ref = otp.monitor(pid)
        with pytest.raises(ProcessExit) as info:
            otp.stop(pid)
        reason = wait_down(ref).reason
        assert isinstance(reason, RuntimeError)
        assert info.value.reason[0] is reason
        assert any("terminate failed" in line for line in logs)

    def test_terminate_runs_on_the_parents_exit_signal_when_trapping(self) -> None:
        me = otp.self()

        class Trapping(Reporter):
            def init(self, test: otp.Pid) -> Any:
                otp.trap_exit(True)
                return ("ok", test)

        def parent() -> None:
            otp.send(me, ("server", Trapping.start_link(me)))
            otp.receive("never")

        ppid, pref = otp.spawn_monitor(parent)
        _, server = expect(("server", ANY))
        sref = otp.monitor(server)
        otp.exit(ppid, "shutdown")
        assert wait_down(pref).reason == "shutdown"
        assert expect(("terminate", ANY)) == ("terminate", "shutdown")
        assert wait_down(sref).reason == "shutdown"

    def test_terminate_does_not_run_when_the_parent_exits_and_the_server_does_not_trap(self) -> None:
        me = otp.self()
        terminated = threading.Event()

        class NotTrapping(GenServer):
            def terminate(self, reason: Any, state: Any) -> None:
                terminated.set()

        def parent() -> None:
            otp.send(me, ("server", NotTrapping.start_link()))
            otp.receive("never")

        ppid, pref = otp.spawn_monitor(parent)
        _, server = expect(("server", ANY))
        sref = otp.monitor(server)
        otp.exit(ppid, "shutdown")
        assert wait_down(sref).reason == "shutdown"
        join_thread(server)
        assert not terminated.is_set()

    @pytest.mark.parametrize("trapping", [False, True])
    def test_terminate_does_not_run_when_the_server_is_killed(self, trapping: bool) -> None:
        terminated = threading.Event()

        class Victim(GenServer):
            def init(self, arg: Any) -> Any:
                otp.trap_exit(trapping)
                return ("ok", arg)

            def terminate(self, reason: Any, state: Any) -> None:
                terminated.set()

        pid = Victim.start()
        ref = otp.monitor(pid)
        otp.exit(pid, "kill")
        assert wait_down(ref).reason == "killed"
        join_thread(pid)
        assert not terminated.is_set()

    def test_terminate_receives_the_last_state(self) -> None:
        me = otp.self()

        class Counting(GenServer):
            def handle_cast(self, n: int, state: int) -> Any:
                return ("noreply", state + n)

            def terminate(self, reason: Any, state: int) -> None:
                otp.send(me, ("final", state))

        pid = Counting.start(0)
        for n in (1, 2, 3):
            otp.cast(pid, n)
        otp.stop(pid)
        assert otp.receive(timeout=0) == ("final", 6)

    def test_a_crash_report_names_the_registered_name(self, logs: list[str]) -> None:
        pid = Reporter.start(otp.self(), name="named_crasher")
        ref = otp.monitor(pid)
        otp.cast(pid, lambda t: 1 / 0)
        wait_down(ref)
        assert any("Reporter" in line and repr(pid) in line and "'named_crasher'" in line for line in logs)

    def test_a_normal_stop_logs_no_crash_report(self, logs: list[str]) -> None:
        pid = Reporter.start(otp.self())
        otp.stop(pid, "shutdown")
        assert not [line for line in logs if "ERROR" in line]


# -- links with the caller ---------------------------------------------------------------------


class TestLinks:
    def test_a_crashing_server_kills_the_non_trapping_process_that_started_it(self) -> None:
        class Crashing(GenServer):
            def handle_cast(self, msg: Any, state: Any) -> Any:
                raise ValueError("server crash")

        def starter() -> None:
            otp.cast(Crashing.start_link(), "boom")
            otp.receive("never")

        reason = exit_reason_of(starter)
        assert isinstance(reason, ValueError) and str(reason) == "server crash"

    def test_a_server_started_without_a_link_leaves_the_caller_alive(self) -> None:
        class Crashing(GenServer):
            def handle_cast(self, msg: Any, state: Any) -> Any:
                raise ValueError("server crash")

        pid = Crashing.start()
        ref = otp.monitor(pid)
        otp.cast(pid, "boom")
        wait_down(ref)
        assert otp.is_alive(otp.self())

    def test_a_server_dies_with_its_parent(self) -> None:
        me = otp.self()

        def parent() -> None:
            otp.send(me, Echo.start_link())
            otp.receive("never")

        ppid, pref = otp.spawn_monitor(parent)
        server = expect(otp.Pid)
        sref = otp.monitor(server)
        otp.exit(ppid, "boom")
        assert wait_down(sref).reason == "boom"
        wait_down(pref)


def test_child_spec_has_elixirs_shape() -> None:
    assert Echo.child_spec(5) == {
        "id": Echo,
        "start": (Echo.start_link, (5,)),
        "restart": "permanent",
        "shutdown": 5.0,
        "type": "worker",
    }
