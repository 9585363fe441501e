"""proc_lib.start, against OTP 26's proc_lib:start/start_link: each answer the child can give,
the failures it cannot report itself, and what the caller's mailbox and links look like after."""

from __future__ import annotations

import time
from typing import Any

import pytest

import otp
from otp import TIMEOUT, Down, StartError, proc_lib


def expect(pattern: Any, timeout: float = 5.0) -> Any:
    msg = otp.receive(pattern, timeout=timeout)
    assert msg is not TIMEOUT, f"nothing matching {pattern!r} arrived"
    return msg


def acking(starter: proc_lib.Starter, test: otp.Pid) -> None:
    otp.send(test, ("parent", starter.parent))
    starter.ack()
    otp.receive("stop")


def failing(starter: proc_lib.Starter, reason: Any) -> None:
    starter.fail(reason)


def ignoring(starter: proc_lib.Starter) -> None:
    starter.ignore()


def hanging(starter: proc_lib.Starter) -> None:
    otp.receive("never")


class TestAck:
    def test_ack_returns_the_pid_of_the_running_child_linked_to_the_caller(self) -> None:
        pid = proc_lib.start(acking, otp.self(), link=True, name="child")
        assert expect(("parent", otp.ANY)) == ("parent", otp.self())
        assert otp.is_alive(pid) and otp.whereis("child") == pid
        assert pid in otp.process_info(otp.self()).links
        assert otp.flush() == []  # neither the answer nor a Down is left behind
        otp.send(pid, "stop")

    def test_without_link_the_child_has_no_parent_and_no_link(self) -> None:
        pid = proc_lib.start(acking, otp.self(), link=False)
        assert expect(("parent", otp.ANY)) == ("parent", None)
        assert pid not in otp.process_info(otp.self()).links
        otp.send(pid, "stop")

    def test_the_child_can_start_trapping_exits(self) -> None:
        def report(starter: proc_lib.Starter, test: otp.Pid) -> None:
            otp.send(test, ("trapping", otp.trap_exit(True)))
            starter.ack()

        proc_lib.start(report, otp.self(), link=True, trap_exit=True)
        assert expect(("trapping", otp.ANY)) == ("trapping", True)

    def test_answering_twice_is_a_runtime_error_in_the_child(self) -> None:
        def twice(starter: proc_lib.Starter, test: otp.Pid) -> None:
            starter.ack()
            try:
                starter.ack()
            except RuntimeError as exc:
                otp.send(test, ("second answer", "already answered" in str(exc)))

        proc_lib.start(twice, otp.self(), link=False)
        assert expect(("second answer", otp.ANY)) == ("second answer", True)
        assert otp.flush() == []


class TestFailAndIgnore:
    def test_fail_is_a_start_error_once_the_child_has_exited_and_freed_its_name(self) -> None:
        for _ in range(20):  # an immediate retry must never see already_started
            with pytest.raises(StartError) as info:
                proc_lib.start(failing, ("no", "db"), link=True, name="svc")
            assert info.value.reason == ("no", "db")
            assert otp.whereis("svc") is None
            assert otp.processes() == [otp.self()]

    def test_ignore_returns_ignore_once_the_child_has_exited_and_freed_its_name(self) -> None:
        assert proc_lib.start(ignoring, link=True, name="svc") == "ignore"
        assert otp.whereis("svc") is None
        assert otp.processes() == [otp.self()]

    def test_a_failed_child_does_not_kill_a_linked_non_trapping_caller(self) -> None:
        me = otp.self()

        def caller() -> None:
            try:
                proc_lib.start(failing, "boom", link=True)
            except StartError as exc:
                otp.send(me, ("caller got", exc.reason))

        _, ref = otp.spawn_monitor(caller)
        assert expect(("caller got", otp.ANY)) == ("caller got", "boom")
        assert expect(lambda m: isinstance(m, Down) and m.ref == ref).reason == "normal"

    def test_a_trapping_caller_finds_no_exit_from_a_failed_child(self) -> None:
        otp.trap_exit(True)
        with pytest.raises(StartError):
            proc_lib.start(failing, "boom", link=True)
        assert proc_lib.start(ignoring, link=True) == "ignore"
        assert otp.flush() == []


class TestFailuresTheChildCannotReport:
    def test_a_taken_name_is_already_started_with_the_holder_and_nothing_is_spawned(self) -> None:
        holder = proc_lib.start(acking, otp.self(), link=True, name="taken")
        expect(("parent", otp.ANY))
        with pytest.raises(StartError) as info:
            proc_lib.start(acking, otp.self(), link=True, name="taken")
        assert info.value.reason == ("already_started", holder)
        assert set(otp.processes()) == {otp.self(), holder}
        otp.send(holder, "stop")

    def test_a_child_exiting_before_it_answers_is_a_start_error_with_its_reason(self) -> None:
        def crashing(starter: proc_lib.Starter) -> None:
            otp.exit("crashed early")

        otp.trap_exit(True)  # else the link would kill us, as in OTP
        with pytest.raises(StartError) as info:
            proc_lib.start(crashing, link=True)
        assert info.value.reason == "crashed early"
        assert otp.flush() == []  # its Exit was flushed

    def test_no_answer_in_time_kills_the_child_and_names_it_in_the_timeout(self) -> None:
        otp.trap_exit(True)
        with pytest.raises(StartError) as info:
            proc_lib.start(hanging, link=True, name="slow", timeout=0.05, what="Slow")
        assert info.value.reason == ("timeout", "Slow", 0.05)
        assert otp.whereis("slow") is None and otp.processes() == [otp.self()]
        assert otp.flush() == []  # no Down, no Exit from the killed child

    def test_the_timeout_names_the_function_by_default(self) -> None:
        with pytest.raises(StartError) as info:
            proc_lib.start(hanging, link=False, timeout=0.01)
        assert info.value.reason == ("timeout", "hanging", 0.01)

    def test_grace_lengthens_the_wait_but_not_the_reported_timeout(self) -> None:
        began = time.monotonic()
        with pytest.raises(StartError) as info:
            proc_lib.start(hanging, link=True, timeout=0.05, grace=0.1)
        assert time.monotonic() - began >= 0.15
        assert info.value.reason == ("timeout", "hanging", 0.05)

    def test_an_answer_after_the_caller_gave_up_is_dropped(self) -> None:
        test = otp.self()

        def late_acker(starter: proc_lib.Starter) -> None:
            otp.receive("go")
            starter.ack()
            otp.send(test, "acked")

        def hands_off(starter: proc_lib.Starter) -> None:
            otp.send(test, ("helper", otp.spawn(late_acker, starter)))
            otp.receive("never")

        with pytest.raises(StartError):
            proc_lib.start(hands_off, link=True, timeout=0.05)
        _, helper = expect(("helper", otp.ANY))
        otp.send(helper, "go")
        expect("acked")
        assert otp.flush() == []
