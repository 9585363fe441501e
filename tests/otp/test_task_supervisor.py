"""Task.Supervisor: async (linked), async_nolink (monitored only), start_child, shutdown."""

from __future__ import annotations

import pytest

import otp
from otp import ANY, TIMEOUT, Down, TaskSupervisor
from otp.testing import wait_down, wait_until


def crash(message: str) -> None:
    raise ValueError(message)


class TestAsyncNolink:
    def test_the_caller_gets_the_result_then_a_down_with_normal(self) -> None:
        sup = TaskSupervisor.start_link()
        task = TaskSupervisor.async_nolink(sup, sum, [1, 2, 3])
        reply = otp.receive(timeout=5)
        assert (reply.ref, reply.value) == (task.ref, 6)  # tagged with the monitor's ref
        assert otp.receive(timeout=5) == Down(task.ref, task.pid, "normal")
        assert task.pid not in otp.process_info(otp.self()).links

    def test_await_returns_the_result_and_leaves_no_message_behind(self) -> None:
        sup = TaskSupervisor.start_link()
        assert TaskSupervisor.async_nolink(sup, pow, 2, 10).await_(5) == 1024
        assert otp.receive(timeout=0.05) is TIMEOUT

    def test_a_crashing_task_leaves_the_caller_alive_with_only_the_down(self) -> None:
        sup = TaskSupervisor.start_link()
        task = TaskSupervisor.async_nolink(sup, crash, "kaboom")
        result = task.yield_(5)
        assert result is not None
        status, reason = result
        assert status == "exit" and isinstance(reason, ValueError) and str(reason) == "kaboom"
        assert otp.is_alive(otp.self())
        assert otp.receive(timeout=0.05) is TIMEOUT
        assert TaskSupervisor.children(sup) == [] and otp.is_alive(sup)

    def test_a_task_is_a_temporary_child_of_the_supervisor(self) -> None:
        sup = TaskSupervisor.start_link()
        task = TaskSupervisor.async_nolink(sup, otp.receive, "go")
        assert TaskSupervisor.children(sup) == [task.pid]
        assert task.pid in otp.process_info(sup).links
        ref = otp.monitor(task.pid)
        otp.send(task.pid, "go")
        assert task.await_(5) == "go"
        wait_down(ref)  # the reply comes before the exit; the supervisor sees the exit first
        assert TaskSupervisor.children(sup) == []


class TestAsync:
    def test_async_is_linked_so_a_crash_takes_the_caller_down(self) -> None:
        sup = TaskSupervisor.start_link()
        me = otp.self()

        def caller() -> None:
            task = TaskSupervisor.async_(sup, crash, "linked")
            otp.send(me, ("task", task.pid))
            task.await_(5)

        _, ref = otp.spawn_monitor(caller)
        task_pid = otp.receive(("task", ANY), timeout=5)[1]
        reason = wait_down(ref).reason
        assert isinstance(reason, ValueError) and str(reason) == "linked"
        assert not otp.is_alive(task_pid) and otp.is_alive(sup)

    def test_async_await_returns_the_result(self) -> None:
        sup = TaskSupervisor.start_link()
        task = TaskSupervisor.async_(sup, lambda a, b: a * b, 6, 7)
        assert task.pid in otp.process_info(otp.self()).links
        assert task.await_(5) == 42

    def test_a_refused_task_raises_start_error(self) -> None:
        sup = TaskSupervisor.start_link(max_children=1)
        TaskSupervisor.async_nolink(sup, otp.receive, "never")
        with pytest.raises(otp.StartError) as info:
            TaskSupervisor.async_nolink(sup, sum, [1])
        assert info.value.reason == "max_children"


class TestAsyncStream:
    def test_results_come_in_order_from_supervised_tasks(self) -> None:
        sup = TaskSupervisor.start_link()
        seen: list[otp.Pid] = []

        def work(x: int) -> int:
            seen.append(otp.self())
            return x + 1

        assert list(TaskSupervisor.async_stream(sup, range(5), work, max_concurrency=2)) == [
            ("ok", x + 1) for x in range(5)
        ]
        assert len(set(seen)) == 5
        # Each task exits just after its reply: the supervisor hears of it a moment later.
        wait_until(lambda: TaskSupervisor.children(sup) == [], 5, "the tasks to leave the supervisor")
        assert otp.receive(timeout=0.05) is TIMEOUT

    def test_nolink_turns_a_crash_into_an_element_and_the_caller_lives_on(self) -> None:
        sup = TaskSupervisor.start_link()
        results = list(TaskSupervisor.async_stream_nolink(sup, [1, 2, 3], lambda x: crash("odd") if x % 2 else x))
        assert results[1] == ("ok", 2)
        assert [tag for tag, _ in results] == ["exit", "ok", "exit"]
        assert all(isinstance(r, ValueError) and str(r) == "odd" for tag, r in results if tag == "exit")
        assert otp.receive(timeout=0.05) is TIMEOUT, "no Down or Exit left behind"

    def test_the_linked_stream_takes_a_non_trapping_caller_down_with_a_crash(self) -> None:
        sup = TaskSupervisor.start_link()

        def caller() -> None:
            list(TaskSupervisor.async_stream(sup, [1], lambda x: crash("linked")))

        _, ref = otp.spawn_monitor(caller)
        assert str(wait_down(ref).reason) == "linked"

    def test_kill_task_on_supervised_tasks(self) -> None:
        sup = TaskSupervisor.start_link()
        results = list(TaskSupervisor.async_stream_nolink(
            sup, ["hang", "ok"], lambda x: otp.receive("never") if x == "hang" else x,
            timeout=0.1, on_timeout="kill_task",
        ))
        assert results == [("exit", "timeout"), ("ok", "ok")]
        assert TaskSupervisor.children(sup) == []


class TestStartChild:
    def test_start_child_runs_a_fire_and_forget_supervised_process(self) -> None:
        sup = TaskSupervisor.start_link()
        me = otp.self()
        status, pid = TaskSupervisor.start_child(sup, otp.send, me, "done")
        assert status == "ok"
        assert otp.receive("done", timeout=5) == "done"
        assert pid not in otp.process_info(me).links

    def test_a_transient_child_is_run_again_after_a_crash(self) -> None:
        sup = TaskSupervisor.start_link()
        me = otp.self()
        runs: list[int] = []

        def flaky() -> None:
            runs.append(1)
            otp.send(me, ("run", len(runs)))
            if len(runs) == 1:
                raise RuntimeError("first run fails")

        TaskSupervisor.start_child(sup, flaky, restart="transient")
        assert otp.receive(("run", 1), timeout=5) == ("run", 1)
        assert otp.receive(("run", 2), timeout=5) == ("run", 2)
        assert otp.receive(("run", ANY), timeout=0.05) is TIMEOUT

    def test_terminate_child_stops_a_task(self) -> None:
        sup = TaskSupervisor.start_link()
        _, pid = TaskSupervisor.start_child(sup, otp.receive, "never")
        ref = otp.monitor(pid)
        assert TaskSupervisor.terminate_child(sup, pid) == "ok"
        assert wait_down(ref).reason == "shutdown"
        assert TaskSupervisor.terminate_child(sup, pid) == ("error", "not_found")

    def test_a_bad_restart_value_is_an_error(self) -> None:
        sup = TaskSupervisor.start_link()
        assert TaskSupervisor.start_child(sup, print, restart="often") == (
            "error", ("invalid_restart_type", "often"))


def test_stopping_the_supervisor_stops_its_tasks_and_the_owner_sees_shutdown() -> None:
    sup = TaskSupervisor.start_link()
    task = TaskSupervisor.async_nolink(sup, otp.receive, "never")
    TaskSupervisor.stop(sup)
    assert task.yield_(5) == ("exit", "shutdown")


def test_a_task_supervisor_nests_under_a_supervisor_by_name() -> None:
    otp.Supervisor.start_link([TaskSupervisor.spec(id="tasks", name="tasks")])
    assert TaskSupervisor.async_nolink("tasks", str.upper, "ok").await_(5) == "OK"
