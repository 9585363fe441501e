"""DynamicSupervisor: start_child return values, max_children, restarts, intensity, concurrent
shutdown."""

from __future__ import annotations

import threading
from typing import Any

import pytest

import otp
from otp import ANY, TIMEOUT, Down, DynamicSupervisor, chaos
from otp.testing import wait_down


class Worker(otp.GenServer):
    def init(self, arg: tuple[str, otp.Pid]) -> Any:
        name, to = arg
        otp.trap_exit(True)
        otp.send(to, ("started", name, otp.self()))
        return ("ok", arg)

    def handle_call(self, request: Any, from_: Any, state: Any) -> Any:
        match request:
            case "ping":
                return ("reply", "pong", state)
            case ("exit", reason):
                return ("stop", reason, "ok", state)
        return ("reply", ("unknown", request), state)

    def terminate(self, reason: Any, state: Any) -> None:
        name, to = state
        otp.send(to, ("stopped", name, reason))


def worker(name: str, **spec: Any) -> dict[str, Any]:
    return {"id": name, "start": (Worker.start_link, ((name, otp.self()),)), **spec}


def make_exit(pid: otp.Pid, reason: Any) -> Down:
    ref = otp.monitor(pid)
    if reason == "kill":
        otp.exit(pid, "kill")
    else:
        assert otp.call(pid, ("exit", reason)) == "ok"
    return wait_down(ref)


def children(sup: Any) -> list[Any]:
    return [pid for _, pid, _, _ in DynamicSupervisor.which_children(sup)]


def start(sup: Any, spec: Any) -> otp.Pid:
    status, pid = DynamicSupervisor.start_child(sup, spec)
    assert status == "ok"
    return pid  # type: ignore[no-any-return]


class TestStartChild:
    def test_start_child_starts_a_supervised_child_and_returns_ok_pid(self) -> None:
        sup = DynamicSupervisor.start_link()
        assert DynamicSupervisor.which_children(sup) == []
        pid = start(sup, worker("a"))
        assert otp.call(pid, "ping") == "pong"
        assert DynamicSupervisor.which_children(sup) == [(None, pid, "worker", [Worker])]
        assert pid in otp.process_info(sup).links

    def test_start_child_return_values_for_ignore_errors_info_and_bad_specs(self) -> None:
        sup = DynamicSupervisor.start_link()
        assert DynamicSupervisor.start_child(sup, {"id": "i", "start": (lambda: "ignore", ())}) == "ignore"
        assert DynamicSupervisor.start_child(sup, {"id": "e", "start": (lambda: ("error", "nope"), ())}) == ("error", "nope")

        def raises() -> None:
            raise ValueError("kaboom")

        status, reason = DynamicSupervisor.start_child(sup, {"id": "r", "start": raises})
        assert status == "error" and isinstance(reason, ValueError)
        status, pid, info = DynamicSupervisor.start_child(
            sup, {"id": "x", "start": (lambda: ("ok", otp.spawn_link(otp.receive, "never"), "info"), ())})
        assert (status, info) == ("ok", "info")
        assert DynamicSupervisor.start_child(sup, {"id": "b", "start": print, "restart": "maybe"}) == (
            "error", ("invalid_restart_type", "maybe"))
        assert children(sup) == [pid]

    def test_ids_need_not_be_unique(self) -> None:
        sup = DynamicSupervisor.start_link()
        a1, a2 = start(sup, worker("a")), start(sup, worker("a"))
        assert a1 != a2 and set(children(sup)) == {a1, a2}

    def test_max_children_refuses_more_and_restarts_do_not_count(self) -> None:
        sup = DynamicSupervisor.start_link(max_children=2)
        a = start(sup, worker("a"))
        start(sup, worker("b"))
        assert DynamicSupervisor.start_child(sup, worker("c")) == ("error", "max_children")
        make_exit(a, "kill")
        assert len(children(sup)) == 2 and a not in children(sup)  # restarted, still two
        assert DynamicSupervisor.start_child(sup, worker("c")) == ("error", "max_children")
        assert DynamicSupervisor.terminate_child(sup, children(sup)[0]) == "ok"
        start(sup, worker("c"))

    def test_max_children_zero_refuses_every_child(self) -> None:
        sup = DynamicSupervisor.start_link(max_children=0)
        assert DynamicSupervisor.start_child(sup, worker("a")) == ("error", "max_children")
        assert otp.receive(("started", ANY, ANY), timeout=0) is TIMEOUT

    def test_extra_arguments_are_prepended_to_the_start_arguments(self) -> None:
        me = otp.self()

        def start_tagged(tag: str, name: str) -> otp.Pid:
            return Worker.start_link((f"{tag}:{name}", me))

        sup = DynamicSupervisor.start_link(extra_arguments=["pool"])
        start(sup, {"id": "w", "start": (start_tagged, ("one",))})
        assert otp.receive(("started", ANY, ANY), timeout=5)[1] == "pool:one"

    @pytest.mark.parametrize(
        "option, value, reason",
        [
            ("max_children", -1, ("invalid_max_children", -1)),
            ("max_restarts", "3", ("invalid_intensity", "3")),
            ("max_seconds", 0, ("invalid_period", 0)),
            ("strategy", "one_for_all", ("invalid_strategy", "one_for_all")),
            ("extra_arguments", "x", ("invalid_extra_arguments", "x")),
        ],
    )
    def test_a_bad_option_fails_the_start_with_supervisor_data(self, option: str, value: Any, reason: Any) -> None:
        with pytest.raises(otp.StartError) as info:
            DynamicSupervisor.start_link(**{option: value})
        assert info.value.reason == ("supervisor_data", reason)


class TestTerminateAndCount:
    def test_terminate_child_stops_it_without_restart_and_unknown_pids_are_not_found(self) -> None:
        sup = DynamicSupervisor.start_link()
        pid = start(sup, worker("a"))
        assert DynamicSupervisor.terminate_child(sup, pid) == "ok"
        assert otp.receive(("stopped", "a", ANY), timeout=5) == ("stopped", "a", "shutdown")
        assert children(sup) == []
        assert DynamicSupervisor.terminate_child(sup, pid) == ("error", "not_found")

    def test_count_children(self) -> None:
        sup = DynamicSupervisor.start_link()
        start(sup, worker("a"))
        start(sup, DynamicSupervisor.spec(id="nested"))
        assert DynamicSupervisor.count_children(sup) == {"specs": 2, "active": 2, "supervisors": 1, "workers": 1}


class TestRestarts:
    @pytest.mark.parametrize(
        "restart, reason, restarted",
        [
            ("permanent", "normal", True),
            ("permanent", "kill", True),
            ("transient", "normal", False),
            ("transient", ("shutdown", 1), False),
            ("transient", "boom", True),
            ("temporary", "boom", False),
            ("temporary", "normal", False),
        ],
    )
    def test_restart_types(self, restart: str, reason: Any, restarted: bool) -> None:
        sup = DynamicSupervisor.start_link()
        pid = start(sup, worker("a", restart=restart))
        make_exit(pid, reason)
        now = children(sup)
        if restarted:
            assert len(now) == 1 and now[0] != pid and otp.call(now[0], "ping") == "pong"
        else:
            assert now == []

    def test_exceeding_intensity_stops_every_child_and_exits_shutdown(self) -> None:
        clock = otp.ManualClock()
        sup = DynamicSupervisor.start(max_restarts=1, max_seconds=5, clock=clock)
        ref = otp.monitor(sup)
        a = start(sup, worker("a"))
        b = start(sup, worker("b"))
        make_exit(a, "kill")
        a2 = next(p for p in children(sup) if p != b)
        clock.advance(5)  # the first restart is exactly max_seconds old: it still counts
        make_exit(a2, "kill")
        assert wait_down(ref).reason == "shutdown"
        assert otp.receive(("stopped", "b", ANY), timeout=5) == ("stopped", "b", "shutdown")
        assert not otp.is_alive(b)

    def test_a_failing_restart_shows_as_restarting_and_is_retried(self) -> None:
        failing = threading.Event()
        me = otp.self()
        tries: list[int] = []

        def flaky() -> Any:
            tries.append(1)
            if failing.is_set():
                if len(tries) == 2:
                    otp.send(me, "failed once")
                otp.sleep(0.002)  # pace the retries; not a wait for anything
                return ("error", "not now")
            return Worker.start_link(("f", me))

        sup = DynamicSupervisor.start_link(max_restarts=10**9, clock=otp.ManualClock())
        pid = start(sup, {"id": "f", "start": flaky})
        failing.set()
        make_exit(pid, "kill")
        assert otp.receive("failed once", timeout=5) == "failed once"
        assert DynamicSupervisor.which_children(sup) == [(None, "restarting", "worker", [flaky])]
        assert DynamicSupervisor.count_children(sup)["active"] == 0
        failing.clear()
        view = chaos.wait_until_running(sup)
        assert view.children[0].restarts == 1 and view.children[0].pid != pid

    def test_terminating_a_restarting_child_stops_its_retries(self) -> None:
        starts: list[int] = []

        def refuse_after_first() -> Any:
            starts.append(1)
            if len(starts) > 1:
                otp.sleep(0.002)  # pace the retries; not a wait for anything
                return ("error", "no")
            return otp.spawn_link(otp.receive, "never")

        sup = DynamicSupervisor.start_link(max_restarts=10**9, clock=otp.ManualClock())
        pid = start(sup, {"id": "r", "start": refuse_after_first})
        make_exit(pid, "kill")
        assert DynamicSupervisor.which_children(sup) == [(None, "restarting", "worker", [refuse_after_first])]
        assert DynamicSupervisor.terminate_child(sup, pid) == "ok"  # known by its old pid
        assert DynamicSupervisor.which_children(sup) == []
        tries = len(starts)
        assert DynamicSupervisor.count_children(sup)["specs"] == 0 and otp.is_alive(sup)
        assert len(starts) == tries  # a retry already queued found no child and started nothing


class TestShutdown:
    def test_children_are_stopped_concurrently(self) -> None:
        me = otp.self()

        class Polite(otp.GenServer):
            def init(self, name: str) -> Any:
                otp.trap_exit(True)
                return ("ok", name)

            def terminate(self, reason: Any, name: str) -> None:
                otp.send(me, ("terminating", name, otp.self()))
                otp.receive("go")  # every child waits here; a sequential shutdown would stall

        sup = DynamicSupervisor.start()
        for name in "abc":
            start(sup, {"id": name, "start": (Polite.start_link, (name,)), "shutdown": 30})
        stopper = otp.Task.async_(DynamicSupervisor.stop, sup)
        waiting = [otp.receive(("terminating", ANY, ANY), timeout=5) for _ in range(3)]
        assert TIMEOUT not in waiting and sorted(w[1] for w in waiting) == ["a", "b", "c"]
        for _, _, pid in waiting:
            otp.send(pid, "go")
        assert stopper.await_(5) is None
        assert not otp.is_alive(sup)

    def test_a_child_that_ignores_shutdown_is_killed_at_its_own_deadline(self) -> None:
        class Deaf(otp.GenServer):
            def init(self, arg: Any) -> Any:
                otp.trap_exit(True)
                return ("ok", arg)

            def terminate(self, reason: Any, state: Any) -> None:
                otp.receive("never")

        sup = DynamicSupervisor.start()
        deaf = start(sup, {"id": "d", "start": (Deaf.start_link, ()), "shutdown": 0.1})
        patient = start(sup, worker("p", shutdown="infinity"))
        deaf_ref, patient_ref = otp.monitor(deaf), otp.monitor(patient)
        DynamicSupervisor.stop(sup)
        assert wait_down(deaf_ref).reason == "killed"
        assert wait_down(patient_ref).reason == "shutdown"

    def test_brutal_kill_children_are_killed(self) -> None:
        sup = DynamicSupervisor.start()
        pid = start(sup, worker("a", shutdown="brutal_kill"))
        ref = otp.monitor(pid)
        DynamicSupervisor.stop(sup)
        assert wait_down(ref).reason == "killed"
        assert otp.receive(("stopped", ANY, ANY), timeout=0) is TIMEOUT

    def test_a_dynamic_supervisor_nests_under_a_supervisor(self) -> None:
        top = otp.Supervisor.start_link([DynamicSupervisor.spec(id="jobs", name="jobs")])
        pid = start("jobs", worker("job"))
        assert otp.Supervisor.which_children(top)[0][0] == "jobs"
        otp.Supervisor.stop(top)
        assert otp.receive(("stopped", "job", ANY), timeout=5) == ("stopped", "job", "shutdown")
        assert not otp.is_alive(pid)
