"""Task, against Elixir's documented behaviour (lib/elixir/lib/task.ex): async, await, yield,
shutdown and await_many."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

import otp
from otp import ANY, TIMEOUT, Exit, ProcessExit, Task
from otp.task import async_nolink
from otp.testing import wait_down


def expect(pattern: Any, timeout: float = 5.0) -> Any:
    msg = otp.receive(pattern, timeout=timeout)
    assert msg is not TIMEOUT, f"nothing matching {pattern!r} arrived"
    return msg


def crash(message: str) -> None:
    raise ValueError(message)


def wait_for(message: Any) -> Any:
    """A task body that blocks until the test sends it `message`."""
    otp.receive(message)
    return message


class TestAsyncAwait:
    def test_await_returns_the_result(self) -> None:
        assert Task.async_(sum, [1, 2, 3]).await_() == 6

    def test_the_task_is_linked_to_and_monitored_by_the_caller(self) -> None:
        task = Task.async_(wait_for, "go")
        me = otp.process_info(otp.self())
        assert task.pid in me.links and task.ref in me.monitors
        assert task.owner == otp.self()
        otp.send(task.pid, "go")
        assert task.await_() == "go"

    def test_await_consumes_the_reply_and_the_down(self) -> None:
        task = Task.async_(lambda: "done")
        assert task.await_() == "done"
        assert otp.receive(timeout=0.05) is TIMEOUT

    def test_many_tasks_each_get_their_own_result(self) -> None:
        tasks = [Task.async_(pow, i, 2) for i in range(20)]
        assert [t.await_() for t in reversed(tasks)] == [i * i for i in reversed(range(20))]

    def test_await_timeout_exits_the_caller_and_its_linked_task(self) -> None:
        me = otp.self()

        def caller() -> None:
            task = Task.async_(otp.receive, "never")
            otp.send(me, ("task", task))
            task.await_(0.05)

        pid, ref = otp.spawn_monitor(caller)
        _, task = expect(("task", ANY))
        task_ref = otp.monitor(task.pid)
        assert wait_down(ref).reason == ("timeout", ("await", task, 0.05))
        # The caller's exit reaches the linked task, which dies with the same reason.
        assert wait_down(task_ref).reason == ("timeout", ("await", task, 0.05))

    def test_a_caller_that_catches_the_await_timeout_never_gets_the_late_result(self) -> None:
        task = Task.async_(wait_for, "finish")
        with pytest.raises(ProcessExit) as info:
            task.await_(0.05)
        assert info.value.reason == ("timeout", ("await", task, 0.05))
        watch = otp.monitor(task.pid)
        otp.send(task.pid, "finish")  # the task now replies and exits normally
        assert wait_down(watch).reason == "normal"
        assert otp.flush() == []

    def test_a_crashing_task_crashes_a_linked_caller_that_does_not_trap(self) -> None:
        def caller() -> None:
            Task.async_(crash, "task failed").await_()

        _, ref = otp.spawn_monitor(caller)
        reason = wait_down(ref).reason
        assert isinstance(reason, ValueError) and str(reason) == "task failed"

    def test_a_crashing_task_crashes_the_caller_even_before_it_awaits(self) -> None:
        def caller() -> None:
            Task.async_(crash, "early")
            otp.receive("never")

        _, ref = otp.spawn_monitor(caller)
        assert str(wait_down(ref).reason) == "early"

    def test_a_trapping_caller_gets_an_exit_from_await_with_the_tasks_reason(self) -> None:
        otp.trap_exit(True)
        task = Task.async_(crash, "trapped")
        with pytest.raises(ProcessExit) as info:
            task.await_()
        reason, detail = info.value.reason
        assert isinstance(reason, ValueError) and detail == ("await", task, 5.0)
        assert expect(Exit) == Exit(task.pid, reason)

    def test_a_task_that_exits_abnormally_exits_the_awaiting_caller_with_that_reason(self) -> None:
        otp.trap_exit(True)
        task = Task.async_(otp.exit, ("shutdown", "early"))
        with pytest.raises(ProcessExit) as info:
            task.await_()
        assert info.value.reason == (("shutdown", "early"), ("await", task, 5.0))
        otp.flush()

    def test_only_the_owner_may_await(self) -> None:
        task = Task.async_(wait_for, "go")
        me = otp.self()

        def stranger() -> None:
            try:
                task.await_(1)
            except RuntimeError as exc:
                otp.send(me, ("refused", str(exc)))

        otp.spawn(stranger)
        _, text = expect(("refused", ANY))
        assert "owner" in text and repr(task.pid) in text
        otp.send(task.pid, "go")
        assert task.await_() == "go"

    def test_async_requires_a_callable(self) -> None:
        with pytest.raises(TypeError, match="callable"):
            Task.async_(42)  # type: ignore[arg-type]


class TestYield:
    def test_yield_returns_ok_with_the_result(self) -> None:
        assert Task.async_(str.upper, "hi").yield_() == ("ok", "HI")

    def test_yield_returns_none_on_timeout_and_the_task_keeps_running(self) -> None:
        task = Task.async_(wait_for, "go")
        assert task.yield_(0.05) is None
        assert otp.is_alive(task.pid)
        assert task.yield_(0) is None
        otp.send(task.pid, "go")
        assert task.yield_(5) == ("ok", "go")
        assert otp.receive(timeout=0.05) is TIMEOUT

    def test_yield_returns_exit_when_the_task_died_and_the_caller_traps(self) -> None:
        otp.trap_exit(True)
        task = Task.async_(otp.exit, "bad")
        assert task.yield_() == ("exit", "bad")
        assert expect(Exit) == Exit(task.pid, "bad")

    def test_yield_on_an_unlinked_task_reports_its_crash_and_leaves_the_caller_alive(self) -> None:
        task = async_nolink(crash, "nolink")
        status, reason = task.yield_()
        assert status == "exit" and isinstance(reason, ValueError)
        assert otp.is_alive(otp.self())


class TestShutdown:
    def test_shutdown_stops_a_running_task_and_returns_none(self) -> None:
        task = Task.async_(otp.receive, "never")
        watch = otp.monitor(task.pid)
        assert task.shutdown() is None
        assert wait_down(watch).reason == "shutdown"
        assert otp.is_alive(otp.self())  # unlinked first: the caller survives
        assert otp.receive(timeout=0.05) is TIMEOUT

    def test_shutdown_returns_ok_when_the_task_had_already_finished(self) -> None:
        task = Task.async_(lambda: "finished")
        watch = otp.monitor(task.pid)
        wait_down(watch)  # the result is in our mailbox by now
        assert task.shutdown() == ("ok", "finished")
        assert otp.receive(timeout=0.05) is TIMEOUT

    def test_brutal_kill_kills_at_once(self) -> None:
        task = Task.async_(otp.receive, "never")
        watch = otp.monitor(task.pid)
        assert task.shutdown("brutal_kill") is None
        assert wait_down(watch).reason == "killed"

    def test_a_task_that_ignores_shutdown_is_killed_after_the_timeout(self) -> None:
        me = otp.self()

        def stubborn() -> None:
            otp.trap_exit(True)
            otp.send(me, "trapping")
            otp.receive("never")

        task = Task.async_(stubborn)
        expect("trapping")
        start = time.monotonic()
        assert task.shutdown(0.1) == ("exit", "killed")
        assert time.monotonic() - start >= 0.09

    def test_shutdown_reports_a_task_that_had_crashed(self) -> None:
        otp.trap_exit(True)
        task = Task.async_(otp.exit, "crashed before")
        expect(Exit)  # it is dead
        assert task.shutdown() == ("exit", "crashed before")

    def test_shutdown_after_await_is_exit_noproc(self) -> None:
        task = Task.async_(lambda: 1)
        assert task.await_() == 1
        assert task.shutdown() == ("exit", "noproc")

    def test_shutdown_rejects_a_bad_timeout(self) -> None:
        task = Task.async_(lambda: 1)
        with pytest.raises(ValueError, match="brutal_kill"):
            task.shutdown("soon")
        assert task.await_() == 1


class TestAwaitMany:
    def test_results_come_back_in_the_tasks_order(self) -> None:
        gate = threading.Event()

        def slow_first() -> str:
            gate.wait(5)
            return "first"

        tasks = [Task.async_(slow_first), Task.async_(lambda: "second")]
        watch = otp.monitor(tasks[1].pid)
        wait_down(watch)  # the second finished before the first
        gate.set()
        assert Task.await_many(tasks) == ["first", "second"]
        assert otp.receive(timeout=0.05) is TIMEOUT

    def test_timeout_is_for_all_tasks_together_and_exits_the_caller(self) -> None:
        tasks = [Task.async_(wait_for, "go"), Task.async_(wait_for, "go")]
        start = time.monotonic()
        with pytest.raises(ProcessExit) as info:
            Task.await_many(tasks, 0.1)
        assert time.monotonic() - start < 1.0
        assert info.value.reason == ("timeout", ("await_many", tasks, 0.1))
        for task in tasks:
            otp.send(task.pid, "go")
        for task in tasks:
            wait_down(otp.monitor(task.pid))
        assert otp.flush() == []  # the late results were dropped

    def test_a_dying_task_exits_the_caller_at_once_with_its_reason(self) -> None:
        otp.trap_exit(True)
        tasks = [Task.async_(otp.receive, "never"), Task.async_(otp.exit, "second died")]
        with pytest.raises(ProcessExit) as info:
            Task.await_many(tasks, 5)
        assert info.value.reason == ("second died", ("await_many", tasks, 5))
        tasks[0].shutdown("brutal_kill")
        otp.flush()

    def test_an_empty_list_is_an_empty_result(self) -> None:
        assert Task.await_many([]) == []


class TestAsyncStream:
    def test_results_come_in_input_order_with_at_most_max_concurrency_running(self) -> None:
        lock = threading.Lock()
        now = [0]
        peak = [0]
        first_three = threading.Barrier(3, timeout=10)  # passes only if three run at once

        def work(x: int) -> int:
            with lock:
                now[0] += 1
                peak[0] = max(peak[0], now[0])
            if x < 3:
                first_three.wait()
            otp.sleep(0.002 * (5 - x % 5))  # later items often finish first
            with lock:
                now[0] -= 1
            return x * x

        results = list(Task.async_stream(range(10), work, max_concurrency=3))
        assert results == [("ok", x * x) for x in range(10)]
        assert peak[0] == 3

    def test_unordered_yields_each_result_as_its_task_finishes(self) -> None:
        me = otp.self()

        def work(x: str) -> str:
            if x == "slow":
                otp.send(me, ("slow", otp.self()))
                otp.receive("go")
            return x

        stream = Task.async_stream(["slow", "fast"], work, ordered=False, max_concurrency=2)
        assert next(stream) == ("ok", "fast")
        _, slow = expect(("slow", ANY))
        otp.send(slow, "go")
        assert list(stream) == [("ok", "slow")]

    def test_the_input_is_consumed_lazily(self) -> None:
        taken: list[int] = []

        def source():  # type: ignore[no-untyped-def]
            for i in range(100):
                taken.append(i)
                yield i

        stream = Task.async_stream(source(), lambda x: x, max_concurrency=2)
        assert next(stream) == ("ok", 0)
        assert len(taken) <= 3, taken  # the running two, and the one that replaced the first
        stream.close()

    def test_kill_task_yields_a_timeout_exit_for_the_late_task_and_goes_on(self) -> None:
        pids: list[otp.Pid] = []

        def work(x: str) -> str:
            pids.append(otp.self())
            if x == "hang":
                otp.receive("never")
            return x

        results = list(Task.async_stream(["a", "hang", "b"], work, timeout=0.1, on_timeout="kill_task"))
        assert results == [("ok", "a"), ("exit", "timeout"), ("ok", "b")]
        assert all(not otp.is_alive(p) for p in pids)
        assert otp.flush() == []

    def test_zip_input_on_exit_says_which_item_timed_out(self) -> None:
        stream = Task.async_stream(
            ["hang"], lambda x: otp.receive("never"), timeout=0.05, on_timeout="kill_task",
            zip_input_on_exit=True,
        )
        assert list(stream) == [("exit", ("hang", "timeout"))]

    def test_a_timeout_exits_the_caller_by_default_and_stops_every_task(self) -> None:
        me = otp.self()

        def caller() -> None:
            def work(x: int) -> None:
                otp.send(me, ("task", otp.self()))
                otp.receive("never")

            list(Task.async_stream([1, 2], work, timeout=0.05))

        _, ref = otp.spawn_monitor(caller)
        tasks = [expect(("task", ANY))[1], expect(("task", ANY))[1]]
        watches = [otp.monitor(t) for t in tasks]
        assert wait_down(ref).reason == ("timeout", ("async_stream", 0.05))
        for watch in watches:
            assert wait_down(watch).reason in ("killed", ("timeout", ("async_stream", 0.05)))

    def test_a_crashing_task_takes_a_non_trapping_caller_with_it(self) -> None:
        def caller() -> None:
            list(Task.async_stream([1], lambda x: crash("in the stream")))

        _, ref = otp.spawn_monitor(caller)
        assert str(wait_down(ref).reason) == "in the stream"

    def test_a_trapping_caller_sees_the_crash_as_an_exit_element(self) -> None:
        otp.trap_exit(True)
        results = list(Task.async_stream([1, 2], lambda x: crash("bad") if x == 1 else x))
        assert results[1] == ("ok", 2)
        tag, reason = results[0]
        assert tag == "exit" and isinstance(reason, ValueError) and str(reason) == "bad"
        # The links' signals, as messages: the crash's, and the other task's normal exit.
        crashed = expect(lambda m: isinstance(m, Exit) and m.reason != "normal")
        assert isinstance(crashed.reason, ValueError)
        assert expect(lambda m: isinstance(m, Exit)).reason == "normal"

    def test_breaking_out_early_kills_the_tasks_still_running(self) -> None:
        me = otp.self()

        def work(x: int) -> int:
            if x > 0:
                otp.send(me, ("task", otp.self()))
                otp.receive("never")
            return x

        stream = Task.async_stream(range(3), work, max_concurrency=3)
        assert next(stream) == ("ok", 0)
        tasks = [expect(("task", ANY))[1], expect(("task", ANY))[1]]
        watches = [otp.monitor(t) for t in tasks]
        stream.close()
        assert [wait_down(w).reason for w in watches] == ["killed", "killed"]

    @pytest.mark.parametrize(
        ("options", "match"),
        [
            ({"max_concurrency": 0}, "max_concurrency"),
            ({"on_timeout": "ignore"}, "on_timeout"),
            ({"timeout": -1}, "timeout"),
        ],
    )
    def test_bad_options_are_refused_before_anything_runs(self, options: dict[str, Any], match: str) -> None:
        with pytest.raises(ValueError, match=match):
            Task.async_stream([1], lambda x: x, **options)  # type: ignore[arg-type]
