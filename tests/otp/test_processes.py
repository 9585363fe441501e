"""The process runtime: selective receive, ordering, exit signals, links, monitors, names."""

from __future__ import annotations

import threading
import time

import pytest
from loguru import logger

import otp
from otp import ANY, TIMEOUT, Down, Exit
from otp import _process as otp_process
from otp.testing import fresh_node, wait_down


def blocker() -> None:
    otp.receive(lambda m: False)


# -- selective receive ------------------------------------------------------------------------


class TestReceive:
    def test_takes_oldest_matching_and_leaves_the_rest_in_order(self) -> None:
        me = otp.self()
        for msg in [("b", 1), ("a", 1), ("b", 2), ("a", 2)]:
            otp.send(me, msg)
        assert otp.receive(("a", ANY)) == ("a", 1)
        assert otp.receive(("a", ANY)) == ("a", 2)
        assert otp.flush() == [("b", 1), ("b", 2)]

    def test_patterns_predicate_type_value_and_template(self) -> None:
        me = otp.self()
        for msg in ["text", 42, ("tag", 1, "x"), 3.5]:
            otp.send(me, msg)
        assert otp.receive(lambda m: m == 3.5) == 3.5
        assert otp.receive(int) == 42
        assert otp.receive(("tag", int, ANY)) == ("tag", 1, "x")
        assert otp.receive("text") == "text"

    def test_several_patterns_take_the_oldest_matching_any(self) -> None:
        me = otp.self()
        otp.send(me, "x")
        otp.send(me, 2)
        otp.send(me, "y")
        assert otp.receive(int, "y") == 2

    def test_value_pattern_does_not_match_equal_value_of_other_type(self) -> None:
        otp.send(otp.self(), 1.0)
        assert otp.receive(1, timeout=0) is TIMEOUT
        assert otp.receive(1.0, timeout=0) == 1.0

    def test_timeout_zero_polls(self) -> None:
        assert otp.receive(timeout=0) is TIMEOUT
        otp.send(otp.self(), "m")
        assert otp.receive(timeout=0) == "m"

    def test_timeout_measured_from_entry_even_when_non_matching_messages_arrive(self) -> None:
        me = otp.self()

        def spammer() -> None:
            for i in range(50):
                otp.send(me, ("noise", i))
                otp.sleep(0.005)

        otp.spawn(spammer)
        start = time.monotonic()
        assert otp.receive("never", timeout=0.2) is TIMEOUT
        elapsed = time.monotonic() - start
        assert 0.19 <= elapsed < 1.0
        otp.flush()

    def test_waiting_does_not_rescan_known_non_matching_messages(self) -> None:
        me = otp.self()
        calls: list[object] = []

        def pattern(m: object) -> bool:
            calls.append(m)
            return m == "match"

        for i in range(100):
            otp.send(me, i)

        def later() -> None:
            otp.sleep(0.05)
            otp.send(me, "other")
            otp.send(me, "match")

        otp.spawn(later)
        assert otp.receive(pattern, timeout=5) == "match"
        assert calls.count(0) == 1 and calls.count(99) == 1 and calls.count("other") == 1
        assert len(otp.flush()) == 101

    @pytest.mark.parametrize("bad", [[1, 2], {"a": 1}, {1}])
    def test_bad_pattern_is_a_clear_error(self, bad: object) -> None:
        with pytest.raises(TypeError, match="bad receive pattern"):
            otp.receive(bad, timeout=0)

    @pytest.mark.parametrize("bad", [-1, "5", True])
    def test_bad_timeout_is_a_clear_error(self, bad: object) -> None:
        with pytest.raises(ValueError, match="timeout"):
            otp.receive(timeout=bad)  # type: ignore[arg-type]


# -- ordering ---------------------------------------------------------------------------------


def test_messages_between_a_pair_arrive_in_send_order() -> None:
    me = otp.self()

    def sender() -> None:
        for i in range(1000):
            otp.send(me, ("n", i))

    otp.spawn(sender)
    got = [otp.receive(("n", ANY), timeout=5)[1] for _ in range(1000)]
    assert got == list(range(1000))


def test_reply_sent_before_dying_arrives_before_the_down() -> None:
    me = otp.self()
    pid, ref = otp.spawn_monitor(lambda: otp.send(me, "last words"))
    msgs = [otp.receive(timeout=5), otp.receive(timeout=5)]
    assert msgs == ["last words", Down(ref, pid, "normal")]


def test_exit_message_follows_the_senders_last_message() -> None:
    otp.trap_exit(True)
    me = otp.self()
    pid = otp.spawn_link(lambda: otp.send(me, "bye"))
    assert otp.receive(timeout=5) == "bye"
    assert otp.receive(timeout=5) == Exit(pid, "normal")


# -- exit signals -----------------------------------------------------------------------------


class TestExitSignals:
    def test_normal_signal_is_ignored_by_a_non_trapping_process(self) -> None:
        pid, ref = otp.spawn_monitor(blocker)
        otp.exit(pid, "normal")
        assert otp.receive(Down, timeout=0.1) is TIMEOUT
        assert otp.is_alive(pid)

    def test_exit_self_normal_ends_the_caller(self) -> None:
        pid, ref = otp.spawn_monitor(lambda: (otp.exit(otp.self(), "normal"), otp.receive()))
        assert wait_down(ref).reason == "normal"

    def test_kill_is_untrappable_and_the_target_dies_killed(self) -> None:
        def trapper() -> None:
            otp.trap_exit(True)
            otp.receive(lambda m: False)

        pid, ref = otp.spawn_monitor(trapper)
        otp.exit(pid, "kill")
        assert wait_down(ref) == Down(ref, pid, "killed")

    def test_linked_processes_of_a_killed_process_get_killed_not_kill(self) -> None:
        otp.trap_exit(True)
        victim = otp.spawn_link(blocker)
        otp.exit(victim, "kill")
        assert otp.receive(Exit, timeout=5) == Exit(victim, "killed")

    def test_a_process_that_exits_with_kill_propagates_kill_which_is_trappable(self) -> None:
        otp.trap_exit(True)
        me = otp.self()

        def middle() -> None:
            otp.trap_exit(True)
            otp.spawn_link(lambda: otp.exit("kill"))
            msg = otp.receive(Exit, timeout=5)
            otp.send(me, ("middle saw", msg.reason))
            otp.receive(lambda m: False)

        mid = otp.spawn_link(middle)
        assert otp.receive(("middle saw", ANY), timeout=5) == ("middle saw", "kill")
        # A non-trapping process linked to one that exits with kill dies with kill.
        pid, ref = otp.spawn_monitor(lambda: (otp.spawn_link(lambda: otp.exit("kill")), otp.receive()))
        assert wait_down(ref).reason == "kill"
        otp.exit(mid, "kill")
        otp.flush()

    def test_abnormal_signal_kills_non_trapping_and_is_a_message_for_trapping(self) -> None:
        me = otp.self()
        pid, ref = otp.spawn_monitor(blocker)
        otp.exit(pid, "boom")
        assert wait_down(ref).reason == "boom"

        def trapper() -> None:
            otp.trap_exit(True)
            otp.send(me, ("got", otp.receive(Exit)))

        pid = otp.spawn(trapper)
        otp.sleep(0.01)  # let it set trap_exit first (no event to wait on: it only traps)
        otp.exit(pid, "boom")
        assert otp.receive(("got", ANY), timeout=5) == ("got", Exit(me, "boom"))

    @pytest.mark.parametrize("reason", ["shutdown", ("shutdown", "bye"), "boom"])
    def test_shutdown_reasons_propagate_through_links_like_any_abnormal_reason(self, reason: object) -> None:
        me = otp.self()

        def parent() -> None:
            child = otp.spawn_link(blocker)
            otp.send(me, child)
            otp.receive(lambda m: False)

        ppid, pref = otp.spawn_monitor(parent)
        child = otp.receive(otp.Pid, timeout=5)
        cref = otp.monitor(child)
        otp.exit(ppid, reason)
        assert wait_down(pref).reason == reason
        assert wait_down(cref).reason == reason

    def test_exit_with_reason_inside_a_process_ends_it_with_that_reason(self) -> None:
        pid, ref = otp.spawn_monitor(lambda: otp.exit(("shutdown", 7)))
        assert wait_down(ref).reason == ("shutdown", 7)


# -- links and monitors -----------------------------------------------------------------------


class TestLinksAndMonitors:
    def test_link_to_a_dead_pid_raises_noproc_in_a_non_trapping_caller(self) -> None:
        pid, ref = otp.spawn_monitor(lambda: None)
        wait_down(ref)
        with pytest.raises(otp.NoProc):
            otp.link(pid)

    def test_link_to_a_dead_pid_gives_a_trapping_caller_an_exit_message(self) -> None:
        pid, ref = otp.spawn_monitor(lambda: None)
        wait_down(ref)
        otp.trap_exit(True)
        otp.link(pid)
        assert otp.receive(Exit, timeout=5) == Exit(pid, "noproc")

    def test_spawn_link_is_atomic_so_an_instant_death_still_signals(self) -> None:
        otp.trap_exit(True)
        pids = [otp.spawn_link(otp.exit, "instant") for _ in range(20)]
        exits = {otp.receive(Exit, timeout=5) for _ in pids}
        assert exits == {Exit(p, "instant") for p in pids}

    def test_monitor_of_a_dead_pid_delivers_noproc_at_once(self) -> None:
        pid, ref = otp.spawn_monitor(lambda: None)
        wait_down(ref)
        ref2 = otp.monitor(pid)
        assert otp.receive(timeout=0) == Down(ref2, pid, "noproc")

    def test_monitor_of_an_unregistered_name_delivers_noproc(self) -> None:
        ref = otp.monitor("nobody")
        assert otp.receive(timeout=0) == Down(ref, "nobody", "noproc")

    def test_two_monitors_give_two_downs(self) -> None:
        pid = otp.spawn(otp.receive)
        r1, r2 = otp.monitor(pid), otp.monitor(pid)
        otp.send(pid, "go")
        assert {wait_down(r1).ref, wait_down(r2).ref} == {r1, r2}

    def test_demonitor_flush_removes_a_queued_down(self) -> None:
        pid, ref = otp.spawn_monitor(lambda: None)
        other = otp.monitor(otp.spawn(lambda: None))
        wait_down(other)
        # The first Down is already queued once the second arrived? Not necessarily: wait for it.
        otp.receive(lambda m: False, timeout=0)
        while otp.is_alive(pid):
            otp.sleep(0.001)
        otp.demonitor(ref, flush=True)
        assert otp.receive(timeout=0.05) is TIMEOUT

    def test_demonitor_stops_a_future_down(self) -> None:
        pid = otp.spawn(otp.receive)
        ref = otp.monitor(pid)
        otp.demonitor(ref)
        otp.send(pid, "go")
        ref2 = otp.monitor(pid)
        wait_down(ref2)
        assert otp.receive(timeout=0) is TIMEOUT

    def test_unlink_stops_propagation(self) -> None:
        def parent() -> None:
            child = otp.spawn_link(blocker)
            otp.unlink(child)
            otp.exit("boom")

        me = otp.self()
        pid, ref = otp.spawn_monitor(lambda: (otp.send(me, otp.spawn_link(blocker)), otp.receive()))
        child = otp.receive(otp.Pid, timeout=5)
        cref = otp.monitor(child)
        otp.exit(pid, "unrelated")  # kills pid; linked child dies too
        assert wait_down(cref).reason == "unrelated"
        wait_down(ref)
        qpid, qref = otp.spawn_monitor(parent)
        assert wait_down(qref).reason == "boom"

    def test_a_long_chain_of_links_dies_without_recursion_limits(self) -> None:
        me = otp.self()

        def chain(n: int) -> None:
            if n:
                otp.spawn_link(chain, n - 1)
            else:
                otp.send(me, "bottom")
            otp.receive(lambda m: False)

        pid, ref = otp.spawn_monitor(chain, 300)
        assert otp.receive("bottom", timeout=20) == "bottom"
        otp.exit(pid, "boom")
        assert wait_down(ref).reason == "boom"
        deadline = time.monotonic() + 10
        while len(otp.processes()) > 1 and time.monotonic() < deadline:
            otp.sleep(0.01)
        assert otp.processes() == [otp.self()]


# -- names ------------------------------------------------------------------------------------


class TestNames:
    def test_register_whereis_send_by_name(self) -> None:
        pid = otp.spawn(lambda: otp.send(otp.receive(otp.Pid), "pong"))
        otp.register("svc", pid)
        assert otp.whereis("svc") == pid
        otp.send("svc", otp.self())
        assert otp.receive("pong", timeout=5) == "pong"

    def test_send_to_an_unregistered_name_is_an_error(self) -> None:
        with pytest.raises(otp.NoProc, match="'nobody'"):
            otp.send("nobody", "hi")

    def test_send_to_a_dead_pid_is_silently_dropped(self) -> None:
        pid, ref = otp.spawn_monitor(lambda: None)
        wait_down(ref)
        assert otp.send(pid, "lost") == "lost"

    def test_registering_a_taken_name_names_the_holder(self) -> None:
        a, b = otp.spawn(blocker), otp.spawn(blocker)
        otp.register("x", a)
        with pytest.raises(otp.AlreadyRegistered, match=repr(a)):
            otp.register("x", b)
        with pytest.raises(otp.AlreadyRegistered, match="already registered as 'x'"):
            otp.register("y", a)

    def test_a_dying_process_frees_its_name_before_the_down_is_seen(self) -> None:
        for _ in range(50):
            pid = otp.spawn(otp.receive)
            otp.register("slot", pid)
            ref = otp.monitor(pid)
            otp.send(pid, "die")
            wait_down(ref)
            assert otp.whereis("slot") is None
            otp.register("slot", otp.spawn(otp.receive))
            otp.send("slot", "die")
            ref = otp.monitor("slot")
            wait_down(ref)

    def test_unregister(self) -> None:
        otp.register("me", otp.self())
        otp.unregister("me")
        assert otp.whereis("me") is None
        with pytest.raises(otp.NoProc):
            otp.unregister("me")

    def test_nodes_isolate_names(self, node: otp.Node) -> None:
        otp.register("shared", otp.self())
        result: list[object] = []

        def in_other() -> None:
            result.append(otp.whereis("shared"))

        with fresh_node():
            t = threading.Thread(target=in_other)
            t.start()
            t.join()
        assert result == [None]


# -- death is a state -------------------------------------------------------------------------


class TestDeath:
    def test_a_busy_python_loop_is_interrupted_at_a_bytecode_boundary(self) -> None:
        started = threading.Event()
        stopped = threading.Event()

        def busy() -> None:
            started.set()
            try:
                while True:
                    pass
            finally:
                stopped.set()

        pid, ref = otp.spawn_monitor(busy)
        assert started.wait(5)
        otp.exit(pid, "kill")
        assert wait_down(ref).reason == "killed"
        assert stopped.wait(5)
        assert pid not in otp.processes()

    def test_a_process_killed_while_it_starts_plain_threads_always_stops(self) -> None:
        # CPython 3.11 gives a thread being started its starter's id until it runs: a kill
        # injected then landed in the new thread, and the starter waited in start() for ever.
        stop = threading.Event()  # ends the loops if a kill ever fails to
        try:
            for _ in range(150):
                started = threading.Event()

                def starter(started: threading.Event = started) -> None:
                    while not stop.is_set():
                        thread = threading.Thread(target=started.set)
                        thread.start()
                        thread.join()

                pid, ref = otp.spawn_monitor(starter)
                assert started.wait(5)
                otp.exit(pid, "kill")
                assert wait_down(ref).reason == "killed"
                thread = pid._proc.thread
                assert thread is not None
                thread.join(5)
                assert not thread.is_alive(), "the killed starter's thread is stuck in Thread.start"
        finally:
            stop.set()

    @pytest.mark.skipif(otp_process._NEW_THREADS_TAKE_THEIR_OWN_ID, reason="CPython 3.11 only")
    @pytest.mark.parametrize("killer_waits", ["until start() is done", "only its patience"])
    def test_a_kill_waits_while_its_target_is_inside_thread_start(
        self, killer_waits: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        go, in_start = threading.Event(), threading.Event()

        class HeldAtTheDoor(threading.Thread):
            def _bootstrap(self) -> None:  # the starter stays inside start() until `go`
                in_start.set()
                go.wait(10)
                super()._bootstrap()  # type: ignore[misc]

        def starter() -> None:
            thread = HeldAtTheDoor(target=lambda: None)
            thread.start()
            thread.join()
            while True:  # pure Python, no runtime call: only an injection stops this
                pass

        lines: list[str] = []
        sink = logger.add(lines.append, level="WARNING", format="{message}")
        try:
            pid, ref = otp.spawn_monitor(starter)
            assert in_start.wait(5)
            if killer_waits == "only its patience":
                monkeypatch.setattr(otp_process, "INTERRUPT_PATIENCE", 0.05)
                otp.exit(pid, "kill")  # returns after the patience, having injected nothing
                assert any("a background thread keeps trying" in line for line in lines), lines
            else:
                killer = threading.Thread(target=otp.exit, args=(pid, "kill"))
                killer.start()  # it keeps trying from its own thread
            assert wait_down(ref).reason == "killed", "dead for everyone at once"
            go.set()
            thread = pid._proc.thread
            assert thread is not None
            thread.join(5)
            assert not thread.is_alive(), "the deferred injection stopped the loop"
            if killer_waits == "until start() is done":
                killer.join(5)
                assert not killer.is_alive() and lines == []
        finally:
            go.set()
            logger.remove(sink)

    def test_an_uninterruptible_block_runs_whole_and_the_kill_takes_effect_after_it(self) -> None:
        inside, release, finished = threading.Event(), threading.Event(), threading.Event()
        after: list[str] = []
        raised: list[BaseException] = []

        def body() -> None:
            try:
                with otp.uninterruptible():
                    with otp.uninterruptible():  # nested: only the outermost block raises
                        inside.set()
                        while not release.is_set():  # pure Python: a kill would land here
                            pass
                    after.append("inner block ended")
                after.append("outer block ended")  # never: the kill takes effect before
            except BaseException as exc:
                raised.append(exc)
                raise
            finally:
                finished.set()

        pid, ref = otp.spawn_monitor(body)
        assert inside.wait(5)
        otp.exit(pid, "kill")
        assert wait_down(ref).reason == "killed", "dead for everyone at once"
        assert not finished.is_set()
        release.set()
        assert finished.wait(5)
        assert after == ["inner block ended"]
        assert isinstance(raised[0], otp.ProcessExit) and raised[0].reason == "killed"

    def test_a_kill_during_an_uninterruptible_block_that_raises_lands_right_after_it(self) -> None:
        inside, release = threading.Event(), threading.Event()

        def body() -> None:
            try:
                with otp.uninterruptible():
                    inside.set()
                    while not release.is_set():
                        pass
                    raise ValueError("the block's own error")
            except ValueError:
                pass
            while True:  # pure Python: only the kill, landing after the block, stops this
                pass

        pid, ref = otp.spawn_monitor(body)
        assert inside.wait(5)
        otp.exit(pid, "kill")
        assert wait_down(ref).reason == "killed"
        release.set()
        thread = pid._proc.thread
        assert thread is not None
        thread.join(5)
        assert not thread.is_alive(), "a zombie left running pure Python after the block"

    def test_uninterruptible_changes_nothing_outside_a_process(self) -> None:
        with otp.uninterruptible():
            value = 42
        assert value == 42

    def test_a_zombie_in_foreign_code_is_dead_at_once_and_its_sends_are_dropped(self) -> None:
        me = otp.self()
        release = threading.Event()
        entered = threading.Event()
        done = threading.Event()

        outcome: list[BaseException] = []

        def stuck() -> None:
            entered.set()
            try:
                release.wait(10)  # "foreign" blocking code: not a runtime blocking point
            except BaseException:  # noqa: BLE001 - a zombie that swallows its interruption
                pass
            try:
                otp.send(me, "from the grave")
            except BaseException as exc:  # noqa: BLE001
                outcome.append(exc)
            finally:
                done.set()

        pid, ref = otp.spawn_monitor(stuck)
        assert entered.wait(5)
        otp.exit(pid, "kill")
        assert wait_down(ref).reason == "killed"
        assert not otp.is_alive(pid)
        release.set()
        assert done.wait(5)
        assert otp.receive(timeout=0.05) is TIMEOUT
        assert isinstance(outcome[0], otp.ProcessExit) and outcome[0].reason == "killed"

    @pytest.mark.parametrize("where", ["receive", "sleep", "call", "await"])
    def test_every_runtime_blocking_point_is_interruptible(self, where: str) -> None:
        class Silent(otp.GenServer):
            def handle_call(self, request, from_, state):  # type: ignore[override]
                return ("noreply", state)

        server = Silent.start()

        def body() -> None:
            if where == "receive":
                otp.receive("never")
            elif where == "sleep":
                otp.sleep(60)
            elif where == "call":
                otp.call(server, "x", timeout=None)
            else:
                otp.Task.async_(otp.sleep, 60).await_(None)

        pid, ref = otp.spawn_monitor(body)
        deadline = time.monotonic() + 5
        while otp.process_info(pid).status != "waiting" and time.monotonic() < deadline:
            otp.sleep(0.005)
        otp.exit(pid, "boom")
        assert wait_down(ref).reason == "boom"
        otp.stop(server)

    def test_self_in_a_finished_process_is_a_clear_error(self) -> None:
        release = threading.Event()
        result: list[BaseException] = []
        done = threading.Event()

        def zombie() -> None:
            try:
                release.wait(10)
            except BaseException:  # noqa: BLE001 - swallow the interruption to reach self()
                pass
            try:
                otp.self()
            except BaseException as exc:  # noqa: BLE001
                result.append(exc)
                done.set()
                raise

        pid, ref = otp.spawn_monitor(zombie)
        otp.exit(pid, "kill")
        wait_down(ref)
        release.set()
        assert done.wait(5)
        assert isinstance(result[0], otp.ProcessExit)
        assert "zombie" in str(result[0])


# -- adopted threads --------------------------------------------------------------------------


class TestAdoption:
    def test_a_plain_thread_is_adopted_and_its_end_is_a_normal_exit(self) -> None:
        got: list[otp.Pid] = []
        go = threading.Event()

        def worker() -> None:
            got.append(otp.self())
            go.wait(5)

        t = threading.Thread(target=worker)
        t.start()
        while not got:
            otp.sleep(0.001)
        ref = otp.monitor(got[0])
        otp.trap_exit(True)
        otp.link(got[0])
        go.set()
        t.join()
        assert wait_down(ref).reason == "normal"
        assert otp.receive(Exit, timeout=5) == Exit(got[0], "normal")

    def test_an_adopted_thread_killed_by_a_signal_gets_process_exit_at_its_next_call(self) -> None:
        me = otp.self()
        pid = otp.spawn(blocker)
        otp.link(pid)
        # The signal comes back through the link at once, so exit/2 itself raises.
        with pytest.raises(otp.ProcessExit) as info:
            otp.exit(pid, "boom")
        assert info.value.reason == "boom"
        assert not otp.is_alive(me)

        def killer(target: otp.Pid) -> None:
            otp.exit(target, "bang")

        me = otp.self()
        otp.spawn(killer, me)
        with pytest.raises(otp.ProcessExit) as info:
            otp.receive("never", timeout=5)
        assert info.value.reason == "bang"
        # Carrying on, the thread is a fresh process.
        assert otp.self() != me

    def test_a_crash_report_names_pid_reason_and_stack(self) -> None:
        lines: list[str] = []
        sink = logger.add(lines.append, level="ERROR")
        try:
            def crasher() -> None:
                raise ValueError("kaboom")

            pid, ref = otp.spawn_monitor(crasher)
            down = wait_down(ref)
        finally:
            logger.remove(sink)
        assert isinstance(down.reason, ValueError)
        text = "".join(lines)
        assert repr(pid) in text and "kaboom" in text and "crasher" in text


def test_process_info_and_processes() -> None:
    otp.register("info_me", otp.self())
    otp.trap_exit(True)
    pid = otp.spawn_link(blocker)
    deadline = time.monotonic() + 5
    while otp.process_info(pid).status != "waiting" and time.monotonic() < deadline:
        otp.sleep(0.001)
    info = otp.process_info(pid)
    assert info.status == "waiting" and info.blocked_on == "receive"
    assert info.links == frozenset({otp.self()})
    mine = otp.process_info(otp.self())
    assert mine.registered_name == "info_me" and mine.trap_exit and pid in mine.links
    otp.send(pid, "x")
    assert otp.process_info(pid).message_queue_len == 1
    assert set(otp.processes()) == {otp.self(), pid}
    otp.exit(pid, "kill")
    otp.receive(Exit, timeout=5)
    assert otp.process_info(pid).status == "dead"
    assert otp.process_info(pid).reason == "killed"
