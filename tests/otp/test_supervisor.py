"""Supervisor: child specs, start and stop order, restart rules, intensity, shutdown, admin calls,
nesting, telemetry, reports and the observer."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from loguru import logger

import otp
from otp import ANY, TIMEOUT, Down, Supervisor, chaos, observer, telemetry
from otp.supervisor import (
    CHILD_EXITED,
    CHILD_RESTARTED,
    CHILD_START_FAILED,
    CHILD_STARTED,
    INTENSITY_EXCEEDED,
    InvalidChildSpec,
    child_spec,
    restart_decision,
)
from otp.testing import wait_down

STRATEGIES = ["one_for_one", "one_for_all", "rest_for_one"]


# -- helpers ------------------------------------------------------------------------------------


class Worker(otp.GenServer):
    """Reports ("started", name, pid) and ("stopped", name, reason) to `to`; exits on request."""

    def init(self, arg: tuple[str, otp.Pid]) -> Any:
        name, to = arg
        otp.trap_exit(True)  # so that terminate runs when the supervisor stops it
        otp.send(to, ("started", name, otp.self()))
        return ("ok", arg)

    def handle_call(self, request: Any, from_: Any, state: Any) -> Any:
        match request:
            case "ping":
                return ("reply", "pong", state)
            case ("exit", reason):
                return ("stop", reason, "ok", state)
        return ("reply", ("unknown", request), state)

    def handle_info(self, msg: Any, state: Any) -> Any:
        return ("noreply", state)  # an exit signal from a stranger: ignore it

    def terminate(self, reason: Any, state: Any) -> None:
        name, to = state
        otp.send(to, ("stopped", name, reason))


def worker(name: str, **spec: Any) -> dict[str, Any]:
    return {"id": name, "start": (Worker.start_link, ((name, otp.self()),)), **spec}


def next_event(kind: str, timeout: float = 5.0) -> tuple[Any, ...]:
    msg = otp.receive((kind, ANY, ANY), timeout=timeout)
    assert msg is not TIMEOUT, f"no {kind} message arrived"
    return msg


def events(kind: str) -> list[tuple[Any, ...]]:
    """Every queued (kind, name, x) message, in order, without waiting."""
    out = []
    while (msg := otp.receive((kind, ANY, ANY), timeout=0)) is not TIMEOUT:
        out.append(msg)
    return out


def pids(sup: Any) -> dict[Any, Any]:
    # A call is served after every Exit already queued at the supervisor, so this also waits
    # for the restarts that an exit we have seen caused.
    return {child_id: pid for child_id, pid, _, _ in Supervisor.which_children(sup)}


def make_exit(pid: otp.Pid, reason: Any) -> Down:
    """Make a Worker exit with `reason` ("kill" kills it) and wait for its Down."""
    ref = otp.monitor(pid)
    if reason == "kill":
        otp.exit(pid, "kill")
    else:
        assert otp.call(pid, ("exit", reason)) == "ok"
    return wait_down(ref)


def names(msgs: list[tuple[Any, ...]]) -> list[Any]:
    return [m[1] for m in msgs]


class Attempts:
    """A start function that fails on the attempts listed (or while `failing` is set)."""

    def __init__(self, name: str, to: otp.Pid, fail_on: set[int] = frozenset()) -> None:  # type: ignore[assignment]
        self.name, self.to, self.fail_on = name, to, fail_on
        self.failing = threading.Event()
        self.lock = threading.Lock()
        self.count = 0

    def __call__(self) -> Any:
        with self.lock:
            self.count += 1
            n = self.count
        if n in self.fail_on or self.failing.is_set():
            if n == 2:
                otp.send(self.to, ("failing", self.name, n))
            otp.sleep(0.002)  # pace the retries of the responsiveness test, not a wait
            return ("error", ("refused", n))
        return Worker.start_link((self.name, self.to))


# -- child specs --------------------------------------------------------------------------------


class TestChildSpecs:
    def test_a_genserver_class_and_a_class_with_an_arg_become_specs_through_child_spec(self) -> None:
        bare = child_spec(Worker)
        with_arg = child_spec((Worker, ("w", otp.self())))
        assert (bare.id, bare.start, bare.restart, bare.shutdown, bare.type) == (
            Worker, (Worker.start_link, (None,)), "permanent", 5.0, "worker",
        )
        assert with_arg.start == (Worker.start_link, (("w", otp.self()),))
        assert with_arg.modules == [Worker]

    def test_a_dict_gets_otp_defaults_and_overrides_replace_fields(self) -> None:
        spec = child_spec({"id": "s", "start": (otp.spawn_link, (print,)), "type": "supervisor"})
        assert (spec.restart, spec.shutdown, spec.type) == ("permanent", "infinity", "supervisor")
        assert child_spec(spec, type="worker").shutdown == 5.0
        assert child_spec((Worker, 1), id="one", restart="transient").id == "one"

    @pytest.mark.parametrize(
        "spec, reason",
        [
            ({"id": 1, "start": print, "restart": "sometimes"}, ("invalid_restart_type", "sometimes")),
            ({"id": 1, "start": print, "shutdown": -1}, ("invalid_shutdown", -1)),
            ({"id": 1, "start": print, "shutdown": True}, ("invalid_shutdown", True)),
            ({"id": 1, "start": print, "type": "boss"}, ("invalid_child_type", "boss")),
            ({"id": 1, "start": (print, "not args")}, ("invalid_mfa", (print, "not args"))),
            ({"start": print}, "missing_id"),
            ({"id": 1}, "missing_start"),
            ({"id": 1, "start": print, "restart_type": "temporary"},
             ("invalid_child_spec", {"id": 1, "start": print, "restart_type": "temporary"})),
            ("not a spec", ("invalid_child_spec", "not a spec")),
        ],
    )
    def test_a_bad_spec_is_a_tagged_error(self, spec: Any, reason: Any) -> None:
        assert Supervisor.check_childspecs([spec]) == ("error", reason)
        with pytest.raises(InvalidChildSpec) as info:
            child_spec(spec)
        assert info.value.reason == reason

    def test_duplicate_ids_make_start_link_fail_with_start_spec(self) -> None:
        with pytest.raises(otp.StartError) as info:
            Supervisor.start_link([worker("a"), worker("a")])
        assert info.value.reason == ("start_spec", ("duplicate_child_name", "a"))
        assert otp.receive(("started", ANY, ANY), timeout=0) is TIMEOUT

    @pytest.mark.parametrize(
        "flags, reason",
        [
            ({"strategy": "one_for_none"}, ("invalid_strategy", "one_for_none")),
            ({"max_restarts": -1}, ("invalid_intensity", -1)),
            ({"max_seconds": 0}, ("invalid_period", 0)),
        ],
    )
    def test_a_bad_flag_makes_start_link_fail_with_supervisor_data(self, flags: dict[str, Any], reason: Any) -> None:
        with pytest.raises(otp.StartError) as info:
            Supervisor.start_link([worker("a")], **flags)
        assert info.value.reason == ("supervisor_data", reason)

    def test_the_restart_decision_table(self) -> None:
        table = {
            (restart, reason): restart_decision(restart, reason)
            for restart in ["permanent", "transient", "temporary"]
            for reason in ["normal", "shutdown", ("shutdown", 1), "boom"]
        }
        assert table == {
            ("permanent", "normal"): ("restart", True),
            ("permanent", "shutdown"): ("restart", True),
            ("permanent", ("shutdown", 1)): ("restart", True),
            ("permanent", "boom"): ("restart", True),
            ("transient", "normal"): ("keep", False),
            ("transient", "shutdown"): ("keep", False),
            ("transient", ("shutdown", 1)): ("keep", False),
            ("transient", "boom"): ("restart", True),
            ("temporary", "normal"): ("remove", False),
            ("temporary", "shutdown"): ("remove", False),
            ("temporary", ("shutdown", 1)): ("remove", False),
            ("temporary", "boom"): ("remove", True),
        }


# -- starting and stopping ----------------------------------------------------------------------


class TestStartAndStop:
    def test_children_start_in_order_and_stop_in_reverse_order(self) -> None:
        sup = Supervisor.start_link([worker("a"), worker("b"), worker("c")])
        assert names(events("started")) == ["a", "b", "c"]
        assert otp.process_info(sup).trap_exit
        Supervisor.stop(sup)
        assert events("stopped") == [("stopped", "c", "shutdown"), ("stopped", "b", "shutdown"),
                                     ("stopped", "a", "shutdown")]

    def test_a_child_failing_to_start_stops_the_started_ones_in_reverse_and_start_link_raises(self) -> None:
        class NoDb(otp.GenServer):
            def init(self, arg: Any) -> Any:
                return ("stop", "no_db")

        children = [worker("a"), worker("b"), {"id": "db", "start": (NoDb.start_link, ())}, worker("c")]
        with pytest.raises(otp.StartError) as info:
            Supervisor.start_link(children)
        assert info.value.reason == ("failed_to_start_child", "db", "no_db")
        assert names(events("started")) == ["a", "b"]
        assert events("stopped") == [("stopped", "b", "shutdown"), ("stopped", "a", "shutdown")]
        assert otp.processes() == [otp.self()]

    @pytest.mark.parametrize(
        "result, reason",
        [(("error", "nope"), "nope"), ("garbage", "garbage"), (None, None)],
    )
    def test_a_start_function_returning_an_error_or_garbage_fails_the_start(self, result: Any, reason: Any) -> None:
        with pytest.raises(otp.StartError) as info:
            Supervisor.start_link([{"id": "x", "start": (lambda: result, ())}])
        assert info.value.reason == ("failed_to_start_child", "x", reason)

    def test_a_start_function_that_raises_fails_the_start_with_the_exception(self) -> None:
        def explode() -> None:
            raise ValueError("kaboom")

        with pytest.raises(otp.StartError) as info:
            Supervisor.start_link([{"id": "x", "start": explode}])
        tag, child_id, reason = info.value.reason
        assert (tag, child_id) == ("failed_to_start_child", "x")
        assert isinstance(reason, ValueError) and str(reason) == "kaboom"

    def test_ignore_keeps_the_spec_without_a_process_unless_temporary(self) -> None:
        sup = Supervisor.start_link([
            {"id": "kept", "start": (lambda: "ignore", ())},
            {"id": "dropped", "start": (lambda: "ignore", ()), "restart": "temporary"},
            worker("a"),
        ])
        assert Supervisor.which_children(sup) == [("a", next_event("started")[2], "worker", [Worker]),
                                                  ("kept", None, "worker", [ANY_FN])]

    def test_which_children_lists_the_last_started_first_and_count_children_counts(self) -> None:
        inner = Supervisor.spec([], id="inner")
        sup = Supervisor.start_link([worker("a"), inner, worker("b")])
        listed = Supervisor.which_children(sup)
        assert [(i, t) for i, _, t, _ in listed] == [("b", "worker"), ("inner", "supervisor"), ("a", "worker")]
        assert Supervisor.count_children(sup) == {"specs": 3, "active": 3, "supervisors": 1, "workers": 2}
        Supervisor.terminate_child(sup, "a")
        assert Supervisor.count_children(sup) == {"specs": 3, "active": 2, "supervisors": 1, "workers": 2}

    def test_a_supervisor_stops_its_children_when_its_linked_parent_dies(self) -> None:
        me = otp.self()
        children = [worker("a"), worker("b")]  # reporting to this test, not to the parent

        def parent() -> None:
            otp.send(me, ("sup", Supervisor.start_link(children)))
            otp.receive("never")

        ppid = otp.spawn(parent)
        sup = otp.receive(("sup", ANY), timeout=5)[1]
        sref = otp.monitor(sup)
        otp.exit(ppid, "boom")
        assert wait_down(sref).reason == "boom"
        # Whatever its own reason, a supervisor stops its children with shutdown.
        assert events("stopped") == [("stopped", "b", "shutdown"), ("stopped", "a", "shutdown")]


class _AnyFunction:
    def __eq__(self, other: object) -> bool:
        return callable(other)


ANY_FN = _AnyFunction()


# -- restart rules --------------------------------------------------------------------------------

RESTART_CASES = [
    ("permanent", "normal", True),
    ("permanent", "shutdown", True),
    ("permanent", "boom", True),
    ("permanent", "kill", True),
    ("transient", "normal", False),
    ("transient", "shutdown", False),
    ("transient", ("shutdown", "bye"), False),
    ("transient", "boom", True),
    ("transient", "kill", True),
    ("temporary", "normal", False),
    ("temporary", ("shutdown", "bye"), False),
    ("temporary", "boom", False),
]


class TestRestartRules:
    @pytest.mark.parametrize("strategy", STRATEGIES)
    @pytest.mark.parametrize("restart, reason, restarted", RESTART_CASES)
    def test_each_restart_type_under_each_strategy(self, strategy: str, restart: str, reason: Any, restarted: bool) -> None:
        sup = Supervisor.start_link([worker("a"), worker("b", restart=restart), worker("c")], strategy=strategy)
        before = pids(sup)
        make_exit(before["b"], reason)
        after = pids(sup)
        if not restarted:
            expected_b = [] if restart == "temporary" else [None]
            assert [after[k] for k in after if k == "b"] == expected_b
            assert (after["a"], after["c"]) == (before["a"], before["c"])
            return
        assert after["b"] not in (before["b"], None) and otp.call(after["b"], "ping") == "pong"
        same_a = after["a"] == before["a"]
        same_c = after["c"] == before["c"]
        assert (same_a, same_c) == {
            "one_for_one": (True, True), "rest_for_one": (True, False), "one_for_all": (False, False),
        }[strategy]

    def test_one_for_all_stops_the_others_in_reverse_order_then_starts_all_in_order(self) -> None:
        sup = Supervisor.start_link([worker("a"), worker("b"), worker("c")], strategy="one_for_all")
        b = pids(sup)["b"]
        events("started")
        make_exit(b, "boom")
        pids(sup)
        assert events("stopped") == [("stopped", "b", "boom"), ("stopped", "c", "shutdown"),
                                     ("stopped", "a", "shutdown")]
        assert names(events("started")) == ["a", "b", "c"]

    def test_rest_for_one_restarts_the_dead_child_and_those_started_after_it(self) -> None:
        sup = Supervisor.start_link([worker("a"), worker("b"), worker("c"), worker("d")], strategy="rest_for_one")
        events("started")
        make_exit(pids(sup)["b"], "boom")
        pids(sup)
        assert events("stopped") == [("stopped", "b", "boom"), ("stopped", "d", "shutdown"),
                                     ("stopped", "c", "shutdown")]
        assert names(events("started")) == ["b", "c", "d"]

    def test_one_for_all_also_starts_a_sibling_that_was_terminated_by_hand(self) -> None:
        # OTP restarts the whole group from the specs, whether or not each child was running.
        sup = Supervisor.start_link([worker("a"), worker("b")], strategy="one_for_all")
        assert Supervisor.terminate_child(sup, "a") == "ok"
        events("started")
        make_exit(pids(sup)["b"], "boom")
        assert None not in pids(sup).values()
        assert names(events("started")) == ["a", "b"]

    def test_a_sibling_that_died_meanwhile_is_restarted_once_with_the_group(self) -> None:
        sup = Supervisor.start_link([worker("a"), worker("b")], strategy="one_for_all")
        before = pids(sup)
        otp.exit(before["a"], "kill")  # both Exits are queued before the supervisor looks
        otp.exit(before["b"], "kill")
        after = pids(sup)
        assert after["a"] not in (before["a"], None) and after["b"] not in (before["b"], None)
        assert otp.observer.snapshot(sup).supervisor.restarts_in_window == 1  # type: ignore[union-attr]

    @pytest.mark.parametrize("strategy", ["one_for_all", "rest_for_one"])
    def test_a_temporary_sibling_stopped_by_the_strategy_is_not_restarted_and_its_spec_is_dropped(self, strategy: str) -> None:
        sup = Supervisor.start_link([worker("a"), worker("t", restart="temporary")], strategy=strategy)
        events("started")
        make_exit(pids(sup)["a"], "boom")
        assert list(pids(sup)) == ["a"]
        assert names(events("started")) == ["a"]

    def test_a_child_that_is_not_ours_exiting_is_ignored(self) -> None:
        def start_and_link_stranger() -> otp.Pid:
            otp.trap_exit(True)
            stranger = otp.spawn_link(otp.receive, "go")
            otp.send(me, ("stranger", stranger))
            return otp.spawn_link(otp.receive, "never")

        me = otp.self()
        sup = Supervisor.start_link([{"id": "x", "start": start_and_link_stranger}])
        stranger = otp.receive(("stranger", ANY), timeout=5)[1]
        before = pids(sup)
        ref = otp.monitor(stranger)
        otp.send(stranger, "go")
        wait_down(ref)
        assert pids(sup) == before


# -- restart intensity ----------------------------------------------------------------------------


class TestAutoShutdown:
    """OTP 24's significant children: one_for_one supervisors that end with their work."""

    def start(self, children: list[Any], auto_shutdown: str) -> tuple[otp.Pid, otp.Ref]:
        sup = Supervisor.start(children, auto_shutdown=auto_shutdown)
        for _ in children:
            next_event("started")
        return sup, otp.monitor(sup)

    def test_any_significant_a_transient_childs_normal_end_shuts_the_supervisor_down(self) -> None:
        sup, ref = self.start([worker("a"), worker("job", restart="transient", significant=True)], "any_significant")
        [(_, job, _, _)] = [c for c in Supervisor.which_children(sup) if c[0] == "job"]
        otp.call(job, ("exit", "normal"))
        assert wait_down(ref).reason == "shutdown"
        assert next_event("stopped") == ("stopped", "job", "normal")
        assert next_event("stopped") == ("stopped", "a", "shutdown"), "the others are stopped in order"

    def test_a_transient_significant_child_that_crashes_is_restarted_instead(self) -> None:
        sup, ref = self.start([worker("job", restart="transient", significant=True)], "any_significant")
        [(_, job, _, _)] = Supervisor.which_children(sup)
        otp.call(job, ("exit", "boom"))
        assert next_event("started")[1] == "job"
        assert otp.receive(lambda m: isinstance(m, otp.Down), timeout=0.05) is TIMEOUT
        Supervisor.stop(sup)

    def test_a_temporary_significant_child_ends_the_supervisor_however_it_ends(self) -> None:
        sup, ref = self.start([worker("job", restart="temporary", significant=True)], "any_significant")
        [(_, job, _, _)] = Supervisor.which_children(sup)
        otp.call(job, ("exit", "boom"))
        assert wait_down(ref).reason == "shutdown"

    def test_all_significant_waits_for_the_last_significant_child(self) -> None:
        sup, ref = self.start(
            [worker("a"), worker("j1", restart="temporary", significant=True),
             worker("j2", restart="transient", significant=True)],
            "all_significant",
        )
        pids = {cid: pid for cid, pid, _, _ in Supervisor.which_children(sup)}
        otp.call(pids["j1"], ("exit", "normal"))
        assert otp.call(pids["a"], "ping") == "pong", "one significant child is still running"
        assert otp.receive(lambda m: isinstance(m, otp.Down), timeout=0.05) is TIMEOUT
        otp.call(pids["j2"], ("exit", ("shutdown", "done")))
        assert wait_down(ref).reason == "shutdown"

    def test_a_non_significant_child_never_ends_the_supervisor(self) -> None:
        sup, ref = self.start([worker("side", restart="temporary"), worker("a")], "any_significant")
        [(_, side, _, _)] = [c for c in Supervisor.which_children(sup) if c[0] == "side"]
        otp.call(side, ("exit", "normal"))
        assert otp.call(Supervisor.which_children(sup)[0][1], "ping") == "pong"
        assert otp.receive(lambda m: isinstance(m, otp.Down), timeout=0.05) is TIMEOUT
        Supervisor.stop(sup)

    def test_terminate_child_does_not_trigger_it(self) -> None:
        sup, ref = self.start([worker("a"), worker("job", restart="transient", significant=True)], "any_significant")
        assert Supervisor.terminate_child(sup, "job") == "ok"
        assert otp.receive(lambda m: isinstance(m, otp.Down), timeout=0.05) is TIMEOUT
        Supervisor.stop(sup)

    @pytest.mark.parametrize(
        ("spec", "flags", "reason"),
        [
            ({"restart": "permanent", "significant": True}, {"auto_shutdown": "any_significant"},
             ("bad_combination", [("restart", "permanent"), ("significant", True)])),
            ({"restart": "transient", "significant": True}, {},
             ("bad_combination", [("auto_shutdown", "never"), ("significant", True)])),
            ({"restart": "transient", "significant": "yes"}, {"auto_shutdown": "any_significant"},
             ("invalid_significant", "yes")),
        ],
    )
    def test_bad_combinations_are_refused_with_otps_reasons(self, spec: dict[str, Any], flags: dict[str, Any], reason: Any) -> None:
        with pytest.raises(otp.StartError) as info:
            Supervisor.start([worker("x", **spec)], **flags)
        assert info.value.reason == ("start_spec", reason)

    def test_start_child_checks_significance_against_the_running_supervisor(self) -> None:
        sup = Supervisor.start([])
        assert Supervisor.start_child(sup, worker("j", restart="temporary", significant=True)) == (
            "error", ("bad_combination", [("auto_shutdown", "never"), ("significant", True)])
        )
        Supervisor.stop(sup)
        with pytest.raises(otp.StartError) as info:
            Supervisor.start([], auto_shutdown="sometimes")
        assert info.value.reason == ("supervisor_data", ("invalid_auto_shutdown", "sometimes"))

    def test_a_dynamic_supervisor_refuses_significant_children(self) -> None:
        dyn = otp.DynamicSupervisor.start()
        assert otp.DynamicSupervisor.start_child(dyn, worker("j", restart="temporary", significant=True)) == (
            "error", ("bad_combination", [("auto_shutdown", "never"), ("significant", True)])
        )
        otp.DynamicSupervisor.stop(dyn)


class TestIntensity:
    def _start(self, clock: otp.ManualClock, max_restarts: int, max_seconds: float = 5) -> tuple[otp.Pid, otp.Ref]:
        sup = Supervisor.start([worker("a"), worker("b")], max_restarts=max_restarts,
                               max_seconds=max_seconds, clock=clock)
        return sup, otp.monitor(sup)

    def _crash_b(self, sup: otp.Pid, *, survives: bool = True) -> None:
        make_exit(pids(sup)["b"], "kill")
        if survives:
            pids(sup)  # the restart is done (and timed) before the test moves the clock

    def test_max_restarts_within_the_window_are_allowed_one_more_is_not(self) -> None:
        clock = otp.ManualClock()
        sup, ref = self._start(clock, max_restarts=3)
        for _ in range(3):
            self._crash_b(sup)
            clock.advance(1)
        assert otp.is_alive(sup) and pids(sup)["b"] is not None
        self._crash_b(sup, survives=False)
        assert wait_down(ref).reason == "shutdown"

    def test_a_restart_exactly_max_seconds_old_still_counts(self) -> None:
        clock = otp.ManualClock()
        sup, ref = self._start(clock, max_restarts=2, max_seconds=5)
        self._crash_b(sup)
        self._crash_b(sup)
        clock.advance(5)
        self._crash_b(sup, survives=False)
        assert wait_down(ref).reason == "shutdown"

    def test_restarts_older_than_the_window_are_forgotten(self) -> None:
        clock = otp.ManualClock()
        sup, ref = self._start(clock, max_restarts=2, max_seconds=5)
        self._crash_b(sup)
        self._crash_b(sup)
        clock.advance(5.001)
        self._crash_b(sup)
        self._crash_b(sup)  # two within the new window: still allowed
        assert otp.call(pids(sup)["b"], "ping") == "pong"
        self._crash_b(sup, survives=False)
        assert wait_down(ref).reason == "shutdown"

    def test_max_restarts_zero_means_the_first_restart_kills_the_supervisor(self) -> None:
        sup, ref = self._start(otp.ManualClock(), max_restarts=0)
        self._crash_b(sup, survives=False)
        assert wait_down(ref).reason == "shutdown"

    def test_a_child_exit_that_needs_no_restart_does_not_count(self) -> None:
        sup = Supervisor.start([worker("t", restart="transient")], max_restarts=0, clock=otp.ManualClock())
        make_exit(pids(sup)["t"], "normal")
        assert pids(sup) == {"t": None} and otp.is_alive(sup)

    def test_exceeding_intensity_stops_the_other_children_in_reverse_order_and_exits_shutdown(self) -> None:
        sup = Supervisor.start([worker("a"), worker("b"), worker("c")], max_restarts=0)
        ref = otp.monitor(sup)
        make_exit(pids(sup)["b"], "boom")
        assert wait_down(ref).reason == "shutdown"
        assert events("stopped") == [("stopped", "b", "boom"), ("stopped", "c", "shutdown"),
                                     ("stopped", "a", "shutdown")]

    def test_a_failing_restart_is_retried_through_the_mailbox_each_retry_counting(self) -> None:
        attempts = Attempts("b", otp.self(), fail_on={2, 3, 4})
        sup = Supervisor.start([worker("a"), {"id": "b", "start": attempts}], max_restarts=5,
                               clock=otp.ManualClock())
        make_exit(pids(sup)["b"], "kill")
        chaos.wait_until_running(sup)
        assert attempts.count == 5  # the first start, three failures, one success: 4 restarts

        attempts.failing.set()
        ref = otp.monitor(sup)
        make_exit(pids(sup)["b"], "kill")
        # The fifth restart is allowed and fails; its retry is the sixth, one too many.
        assert wait_down(ref).reason == "shutdown"
        assert attempts.count == 6

    def test_the_supervisor_answers_calls_between_failed_restart_attempts(self) -> None:
        attempts = Attempts("b", otp.self())
        sup = Supervisor.start([worker("a"), {"id": "b", "start": attempts}], max_restarts=10**9,
                               clock=otp.ManualClock())
        attempts.failing.set()
        make_exit(pids(sup)["b"], "kill")
        assert otp.receive(("failing", "b", 2), timeout=5) == ("failing", "b", 2)
        assert pids(sup)["b"] == "restarting"
        assert Supervisor.restart_child(sup, "b") == ("error", "restarting")
        assert Supervisor.delete_child(sup, "b") == ("error", "restarting")
        assert Supervisor.count_children(sup)["active"] == 1
        attempts.failing.clear()
        view = chaos.wait_until_running(sup)
        assert [c.id for c in view.children] == ["a", "b"]
        assert attempts.count > 2


# -- shutdown -------------------------------------------------------------------------------------


class Stubborn(otp.GenServer):
    """Traps exits and takes `hold` (a threading.Event) to finish terminate: foreign code."""

    def init(self, arg: Any) -> Any:
        otp.trap_exit(True)
        return ("ok", arg)

    def terminate(self, reason: Any, state: Any) -> None:
        hold, to = state
        otp.send(to, "terminating")
        hold.wait(10)


class TestShutdown:
    def test_shutdown_sends_shutdown_then_kills_after_the_timeout_and_reports_it(self) -> None:
        hold = threading.Event()
        lines = capture_errors()
        try:
            sup = Supervisor.start_link([{"id": "s", "start": (Stubborn.start_link, ((hold, otp.self()),)),
                                          "shutdown": 0.2}])
            pid = pids(sup)["s"]
            ref = otp.monitor(pid)
            started = time.monotonic()
            assert Supervisor.terminate_child(sup, "s") == "ok"
            elapsed = time.monotonic() - started
            assert otp.receive("terminating", timeout=0) == "terminating"  # it got the shutdown first
            assert wait_down(ref).reason == "killed"
            assert 0.2 <= elapsed < 3
        finally:
            hold.set()
            stop_capture(lines)
        assert any(r["extra"]["context"] == "shutdown_error" and r["extra"]["reason"] == "killed" for r in lines.records)

    def test_brutal_kill_kills_at_once_without_running_terminate(self) -> None:
        sup = Supervisor.start_link([worker("a", shutdown="brutal_kill")])
        ref = otp.monitor(pids(sup)["a"])
        assert Supervisor.terminate_child(sup, "a") == "ok"
        assert wait_down(ref).reason == "killed"
        assert events("stopped") == []

    def test_infinity_waits_for_a_slow_child_to_finish_its_terminate(self) -> None:
        class Slow(Worker):
            def terminate(self, reason: Any, state: Any) -> None:
                otp.sleep(0.3)  # a slow clean-up: the supervisor must wait for it
                super().terminate(reason, state)

        sup = Supervisor.start_link([{"id": "slow", "start": (Slow.start_link, (("slow", otp.self()),)),
                                      "shutdown": "infinity"}])
        assert Supervisor.terminate_child(sup, "slow") == "ok"
        assert events("stopped") == [("stopped", "slow", "shutdown")]

    def test_a_child_that_unlinked_itself_does_not_hang_the_supervisor(self) -> None:
        def naughty(sup: otp.Pid) -> None:
            otp.unlink(sup)
            otp.trap_exit(True)
            otp.send(sup, "unlinked")
            msg = otp.receive(otp.Exit)
            otp.exit(msg.reason)  # it stops when asked, but no Exit will ever reach the supervisor

        def start() -> otp.Pid:
            pid = otp.spawn_link(naughty, otp.self())
            otp.receive("unlinked")  # in the supervisor: start returns once the child unlinked
            return pid

        sup = Supervisor.start_link([{"id": "n", "start": start, "shutdown": 60}])
        started = time.monotonic()
        assert Supervisor.terminate_child(sup, "n") == "ok"
        assert time.monotonic() - started < 5

    def test_a_child_stuck_in_foreign_code_is_killed_and_the_supervisor_carries_on(self) -> None:
        release = threading.Event()
        entered = threading.Event()

        class Stuck(otp.GenServer):
            def init(self, arg: Any) -> Any:
                otp.trap_exit(True)  # so the shutdown signal is a message it never reads
                return ("ok", arg)

            def handle_cast(self, msg: Any, state: Any) -> Any:
                entered.set()
                release.wait(10)  # not a runtime blocking point: exit signals cannot reach it
                return ("noreply", state)

        try:
            sup = Supervisor.start_link([{"id": "s", "start": (Stuck.start_link, ()), "shutdown": 0.1},
                                         worker("a")])
            stuck = pids(sup)["s"]
            otp.cast(stuck, "block")
            assert entered.wait(5)
            ref = otp.monitor(stuck)
            assert Supervisor.terminate_child(sup, "s") == "ok"
            assert wait_down(ref).reason == "killed"
            assert not otp.is_alive(stuck)
            assert otp.call(pids(sup)["a"], "ping") == "pong"
        finally:
            release.set()


# -- admin calls ----------------------------------------------------------------------------------


class TestAdminCalls:
    def test_start_child_return_values(self) -> None:
        sup = Supervisor.start_link([worker("a")])
        a = pids(sup)["a"]
        status, pid = Supervisor.start_child(sup, worker("b"))
        assert status == "ok" and otp.call(pid, "ping") == "pong"
        assert Supervisor.start_child(sup, worker("a")) == ("error", ("already_started", a))
        Supervisor.terminate_child(sup, "a")
        assert Supervisor.start_child(sup, worker("a")) == ("error", "already_present")
        bad = {"id": "c", "start": (lambda: ("error", "nope"), ())}
        assert Supervisor.start_child(sup, bad) == ("error", ("nope", child_spec(bad)))
        assert Supervisor.start_child(sup, {"id": "d"}) == ("error", "missing_start")
        assert Supervisor.start_child(sup, {"id": "e", "start": (lambda: "ignore", ())}) == ("ok", None)
        assert [i for i, *_ in Supervisor.which_children(sup)] == ["e", "b", "a"]

    def test_start_child_with_info_returns_it(self) -> None:
        def start() -> Any:
            return ("ok", otp.spawn_link(otp.receive, "never"), {"port": 8080})

        sup = Supervisor.start_link([])
        status, pid, info = Supervisor.start_child(sup, {"id": "x", "start": start})
        assert (status, info) == ("ok", {"port": 8080}) and otp.is_alive(pid)

    def test_terminate_child_keeps_the_spec_and_restart_child_starts_it_again(self) -> None:
        sup = Supervisor.start_link([worker("a")])
        a = pids(sup)["a"]
        assert Supervisor.restart_child(sup, "a") == ("error", "running")
        assert Supervisor.terminate_child(sup, "a") == "ok"
        assert not otp.is_alive(a) and pids(sup) == {"a": None}
        assert Supervisor.terminate_child(sup, "a") == "ok"  # no process: nothing to do
        status, new = Supervisor.restart_child(sup, "a")
        assert status == "ok" and new != a and pids(sup) == {"a": new}
        assert Supervisor.terminate_child(sup, "zz") == ("error", "not_found")
        assert Supervisor.restart_child(sup, "zz") == ("error", "not_found")

    def test_terminate_child_drops_a_temporary_childs_spec(self) -> None:
        sup = Supervisor.start_link([worker("t", restart="temporary")])
        assert Supervisor.terminate_child(sup, "t") == "ok"
        assert Supervisor.which_children(sup) == []

    def test_restart_child_reports_a_failed_start(self) -> None:
        attempts = Attempts("a", otp.self(), fail_on={2})
        sup = Supervisor.start_link([{"id": "a", "start": attempts}])
        Supervisor.terminate_child(sup, "a")
        assert Supervisor.restart_child(sup, "a") == ("error", ("refused", 2))
        assert pids(sup) == {"a": None}

    def test_delete_child_return_values(self) -> None:
        sup = Supervisor.start_link([worker("a")])
        assert Supervisor.delete_child(sup, "a") == ("error", "running")
        Supervisor.terminate_child(sup, "a")
        assert Supervisor.delete_child(sup, "a") == "ok"
        assert Supervisor.delete_child(sup, "a") == ("error", "not_found")
        assert Supervisor.which_children(sup) == []

    def test_get_childspec(self) -> None:
        spec = worker("a", restart="transient")
        sup = Supervisor.start_link([spec])
        assert Supervisor.get_childspec(sup, "a") == ("ok", child_spec(spec))
        assert Supervisor.get_childspec(sup, "b") == ("error", "not_found")

    def test_a_named_supervisor_is_reachable_by_name_and_the_name_is_unique(self) -> None:
        sup = Supervisor.start_link([worker("a")], name="root")
        assert Supervisor.count_children("root")["active"] == 1
        with pytest.raises(otp.StartError) as info:
            Supervisor.start_link([], name="root")
        assert info.value.reason == ("already_started", sup)

    def test_calls_to_a_dead_supervisor_exit_with_noproc(self) -> None:
        sup = Supervisor.start([])
        Supervisor.stop(sup)
        with pytest.raises(otp.ProcessExit) as info:
            Supervisor.which_children(sup)
        assert info.value.reason[0] == "noproc"


# -- nesting --------------------------------------------------------------------------------------


class TestNesting:
    def test_an_escalation_travels_up_and_the_parent_restarts_the_subtree(self) -> None:
        inner = Supervisor.spec([worker("w")], id="inner", max_restarts=0)
        outer = Supervisor.start_link([worker("a"), inner])
        before = pids(outer)
        inner_ref = otp.monitor(before["inner"])
        w = pids(before["inner"])["w"]
        make_exit(w, "kill")
        assert wait_down(inner_ref).reason == "shutdown"
        view = chaos.wait_until_running(outer)
        after = pids(outer)
        assert after["a"] == before["a"] and after["inner"] != before["inner"]
        new_w = pids(after["inner"])["w"]
        assert new_w != w and otp.call(new_w, "ping") == "pong"
        assert [c.restarts for c in view.children] == [0, 1]

    def test_an_escalation_that_exceeds_the_parents_intensity_reaches_the_top(self) -> None:
        inner = Supervisor.spec([worker("w")], id="inner", max_restarts=0)
        outer = Supervisor.start([inner], max_restarts=0)
        ref = otp.monitor(outer)
        make_exit(pids(pids(outer)["inner"])["w"], "kill")
        assert wait_down(ref).reason == "shutdown"

    def test_stopping_the_top_stops_every_subtree_in_reverse_order(self) -> None:
        inner = Supervisor.spec([worker("i1"), worker("i2")], id="inner")
        outer = Supervisor.start_link([worker("a"), inner, worker("b")])
        Supervisor.stop(outer)
        assert names(events("stopped")) == ["b", "i2", "i1", "a"]


# -- telemetry and reports --------------------------------------------------------------------------


def capture_errors() -> Any:
    class Sink:
        def __init__(self) -> None:
            self.records: list[dict[str, Any]] = []
            self.lock = threading.Lock()

        def write(self, message: Any) -> None:
            with self.lock:
                self.records.append(message.record)

    sink = Sink()
    sink.id = logger.add(sink.write, level="ERROR")  # type: ignore[attr-defined]
    return sink


def stop_capture(sink: Any) -> None:
    logger.remove(sink.id)


class TestObservability:
    def test_child_started_exited_and_restarted_events(self) -> None:
        me = otp.self()
        telemetry.attach_many(
            "test-sup", [CHILD_STARTED, CHILD_EXITED, CHILD_RESTARTED],
            lambda event, measurements, metadata, _: otp.post(me, ("event", event[-1], (measurements, metadata))),
        )
        try:
            sup = Supervisor.start_link([worker("a")], name="observed")
            started = otp.receive(("event", "started", ANY), timeout=5)[2]
            a = pids(sup)["a"]
            make_exit(a, "boom")
            new_a = pids(sup)["a"]
        finally:
            telemetry.detach("test-sup")
        assert started[1] == {"supervisor": sup, "supervisor_name": "observed", "id": "a", "pid": a}
        assert started[0]["restarts"] == 0
        kinds = [(m[1], m[2][1]) for m in events("event")]
        exited, started_again, restarted = kinds
        assert exited == ("exited", {"supervisor": sup, "supervisor_name": "observed", "id": "a",
                                     "pid": a, "reason": "boom", "action": "restart"})
        assert started_again[0] == "started" and started_again[1]["pid"] == new_a
        assert restarted == ("restarted", {"supervisor": sup, "supervisor_name": "observed", "id": "a",
                                           "old_pid": a, "pid": new_a})

    def test_intensity_exceeded_and_failed_starts_emit_events(self) -> None:
        me = otp.self()
        telemetry.attach_many(
            "test-sup-2", [INTENSITY_EXCEEDED, CHILD_START_FAILED],
            lambda event, measurements, metadata, _: otp.post(me, ("event", event[-1], (measurements, metadata))),
        )
        attempts = Attempts("b", me, fail_on={2})
        try:
            sup = Supervisor.start([{"id": "b", "start": attempts}], max_restarts=1, clock=otp.ManualClock())
            ref = otp.monitor(sup)
            b = pids(sup)["b"]
            make_exit(b, "kill")
            assert wait_down(ref).reason == "shutdown"
        finally:
            telemetry.detach("test-sup-2")
        failed, exceeded = events("event")
        assert failed[1] == "start_failed" and failed[2][1]["reason"] == ("refused", 2)
        assert exceeded[1] == "intensity_exceeded"
        assert exceeded[2][0]["restarts"] == 2
        assert exceeded[2][1]["max_restarts"] == 1 and exceeded[2][1]["id"] == "b"

    def test_abnormal_termination_and_giving_up_are_reported(self) -> None:
        sink = capture_errors()
        try:
            sup = Supervisor.start([worker("a")], name="reporting", max_restarts=0)
            ref = otp.monitor(sup)
            a = pids(sup)["a"]
            make_exit(a, "boom")
            wait_down(ref)
        finally:
            stop_capture(sink)
        contexts = [(r["extra"]["context"], r["extra"]["child_id"], r["extra"]["reason"]) for r in sink.records]
        assert contexts == [("child_terminated", "a", "boom"),
                            ("shutdown", "a", "reached_max_restart_intensity")]
        first = sink.records[0]
        assert first["extra"]["supervisor"] == "reporting" and first["extra"]["child_pid"] == a
        assert "boom" in first["message"] and repr(a) in first["message"]

    def test_a_normal_exit_of_a_transient_child_is_not_reported(self) -> None:
        sink = capture_errors()
        try:
            sup = Supervisor.start_link([worker("t", restart="transient")])
            make_exit(pids(sup)["t"], "normal")
            pids(sup)
        finally:
            stop_capture(sink)
        assert sink.records == []


class TestObserver:
    def test_snapshot_shows_ids_pids_statuses_restarts_and_mailboxes_through_the_tree(self) -> None:
        def idle() -> otp.Pid:
            return otp.spawn_link(otp.receive, "never")

        inner = Supervisor.spec([{"id": "deep", "start": idle}], id="inner", strategy="one_for_all")
        sup = Supervisor.start_link([{"id": "idle", "start": idle}, inner, worker("t", restart="transient")],
                                    name="top")
        idle_pid = pids(sup)["idle"]
        for i in range(3):
            otp.send(idle_pid, ("unread", i))
        make_exit(pids(sup)["idle"], "kill")
        make_exit(pids(sup)["t"], "normal")
        view = observer.snapshot("top")
        assert (view.pid, view.registered_name, view.type) == (sup, "top", "supervisor")
        assert view.supervisor is not None and view.supervisor.strategy == "one_for_one"
        assert view.supervisor.restarts_in_window == 1
        rows = [(c.id, c.type, c.status, c.restarts) for c in view.children]
        assert rows == [("idle", "worker", "waiting", 1), ("inner", "supervisor", "waiting", 0),
                        ("t", "worker", "undefined", 0)]
        new_idle = view.children[0].pid
        otp.send(new_idle, "one")
        otp.send(new_idle, "two")
        assert observer.snapshot(sup).children[0].message_queue_len == 2
        deep = view.children[1].children[0]
        assert (deep.id, deep.status) == ("deep", "waiting")
        assert view.children[1].supervisor.strategy == "one_for_all"  # type: ignore[union-attr]

    def test_render_draws_one_line_per_process_with_its_details(self) -> None:
        inner = Supervisor.spec([worker("deep")], id="inner")
        sup = Supervisor.start_link([worker("a"), inner], name="drawn")
        text = observer.render(sup)
        lines = text.splitlines()
        assert len(lines) == 4
        assert lines[0].startswith("'drawn' " + repr(sup) + " supervisor one_for_one")
        assert lines[1].startswith("├── 'a'  " + repr(pids(sup)["a"]) + "  worker  waiting  restarts 0  mailbox 0")
        assert lines[2].startswith("└── 'inner'  ") and "supervisor" in lines[2]
        assert lines[3].startswith("    └── 'deep'  ")

    def test_as_dict_gives_plain_data(self) -> None:
        sup = Supervisor.start_link([worker("a")])
        data = observer.as_dict(observer.snapshot(sup))
        assert data["pid"] == repr(sup)
        assert data["children"][0]["id"] == "a" and data["children"][0]["pid"] == repr(pids(sup)["a"])

    def test_the_observer_refuses_a_process_that_is_not_a_supervisor(self) -> None:
        pid = Worker.start_link(("x", otp.self()))
        with pytest.raises(TypeError, match="not a supervisor"):
            observer.snapshot(pid)
        assert otp.call(pid, "ping") == "pong"  # it was never sent our request
