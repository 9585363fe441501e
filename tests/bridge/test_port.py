"""Ports against real subprocesses: framing modes, exit status, stderr, ownership, closing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import otp
from bridge.framing import FrameTooLarge
from bridge.port import Port, PortClosed, PortData, PortError, PortExit, PortStderr, PortTimeout
from bridge.testing import process_gone


def data_msg(port: Port, timeout: float = 5.0) -> bytes:
    msg = otp.receive(lambda m: isinstance(m, PortData) and m.port is port, timeout=timeout)
    assert msg is not otp.TIMEOUT, "no data from the port"
    return msg.data


def exit_msg(port: Port, timeout: float = 5.0) -> PortExit:
    msg = otp.receive(lambda m: isinstance(m, PortExit) and m.port is port, timeout=timeout)
    assert msg is not otp.TIMEOUT, "no PortExit from the port"
    return msg


def py(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def closed(port: Port) -> None:
    port.close()
    assert port.wait_closed(10)


class TestFraming:
    @pytest.mark.parametrize("packet", [1, 2, 4])
    def test_packet_frames_round_trip_through_cat_in_order(self, packet: int) -> None:
        port = Port.open(["cat"], packet=packet)
        frames = [b"", b"a", b"x" * 255, b"hello"]
        for f in frames:
            port.command(f)
        assert [data_msg(port) for _ in frames] == frames
        closed(port)

    def test_line_mode_splits_lines(self) -> None:
        port = Port.open(["cat"], packet="line")
        port.command(b"one")
        port.command(b"two")
        assert [data_msg(port), data_msg(port)] == [b"one", b"two"]
        closed(port)

    def test_raw_mode_delivers_bytes_as_they_come(self) -> None:
        port = Port.open(["cat"], packet="raw")
        port.command(b"abc")
        got = b""
        while len(got) < 3:
            got += data_msg(port)
        assert got == b"abc"
        closed(port)

    def test_oversize_data_for_the_packet_size_is_a_clear_error(self) -> None:
        port = Port.open(["cat"], packet=1)
        with pytest.raises(FrameTooLarge, match="256"):
            port.command(b"x" * 256)
        closed(port)

    def test_a_length_beyond_max_frame_kills_the_port_with_a_clear_reason(self) -> None:
        code = """
            import os, sys
            sys.stderr.write("about to misbehave\\n"); sys.stderr.flush()
            os.write(1, (10**6).to_bytes(4, "big") + b"x")
            import time; time.sleep(30)
        """
        port = Port.open(py(code), packet=4, max_frame=1000, close_timeout=0.2)
        msg = exit_msg(port)
        assert msg.error is not None and "1000" in str(msg.error)
        assert port.wait_closed(10)

    def test_eof_in_the_middle_of_a_frame_is_a_clear_error(self) -> None:
        port = Port.open(py('import os; os.write(1, (50).to_bytes(4, "big") + b"abc")'), packet=4)
        msg = exit_msg(port)
        assert msg.error is not None and "frame" in str(msg.error).lower()
        assert port.wait_closed(10)


    def test_a_frame_larger_than_the_pipe_is_written_as_the_child_reads(self) -> None:
        # Active, so that the I/O thread drains cat's output while we are still writing.
        port = Port.open(["cat"])
        big = os.urandom(3 * 1024 * 1024)  # far beyond a pipe's 64 KiB: many partial writes
        port.command(big)
        port.command(b"after")
        assert data_msg(port, 10) == big
        assert data_msg(port, 10) == b"after"
        assert port.info().bytes_out == len(big) + 4 + len(b"after") + 4
        closed(port)


    def test_big_frames_from_several_threads_never_interleave(self) -> None:
        port = Port.open(["cat"])  # active: the I/O thread drains cat while we write
        errors: list[BaseException] = []

        def writer(byte: bytes) -> None:
            try:
                for _ in range(3):
                    port.command(byte * 300_000)  # several writes each: the pipe holds 64 KiB
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=writer, args=(b,)) for b in (b"a", b"b", b"c")]
        for t in threads:
            t.start()
        frames = [data_msg(port, 20) for _ in range(9)]
        for t in threads:
            t.join(20)
        assert errors == []
        assert sorted(f[:1] for f in frames) == [b"a"] * 3 + [b"b"] * 3 + [b"c"] * 3
        assert all(len(f) == 300_000 and f == f[:1] * len(f) for f in frames), "a frame mixed two writers"
        closed(port)


class TestExitAndStderr:
    def test_exit_status_arrives_after_the_data(self) -> None:
        port = Port.open(py('import os; os.write(1, (2).to_bytes(4, "big") + b"hi"); raise SystemExit(7)'))
        assert data_msg(port) == b"hi"
        assert exit_msg(port).status == 7
        assert port.wait_closed(10)

    def test_a_signal_death_is_a_negative_status(self) -> None:
        port = Port.open(["sleep", "30"], packet=4)
        port.kill()
        assert exit_msg(port).status == -signal.SIGKILL
        assert port.wait_closed(10)

    def test_no_exit_message_without_exit_status(self) -> None:
        port = Port.open(["true"], packet=4, exit_status=False)
        assert port.wait_closed(10)
        assert otp.receive(PortExit, timeout=0.05) is otp.TIMEOUT

    def test_stderr_is_logged_and_kept_as_a_tail(self) -> None:
        from loguru import logger

        lines: list[str] = []
        sink = logger.add(lines.append, level="INFO")
        try:
            port = Port.open(py("import sys; print('boom line', file=sys.stderr)"), tags={"worker_id": 7})
            exit_msg(port)
            assert port.wait_closed(10)
        finally:
            logger.remove(sink)
        assert port.stderr_tail == ["boom line"]
        assert any("boom line" in line for line in lines)

    def test_stderr_pipe_mode_sends_messages(self) -> None:
        port = Port.open(py("import sys; print('to the owner', file=sys.stderr)"), stderr="pipe")
        msg = otp.receive(PortStderr, timeout=5)
        assert msg.line == "to the owner"
        exit_msg(port)
        assert port.wait_closed(10)

    def test_merge_is_refused_for_packet_modes_and_allowed_for_lines(self) -> None:
        with pytest.raises(ValueError, match="corrupt"):
            Port.open(["cat"], packet=4, stderr="merge")
        port = Port.open(["sh", "-c", "echo out; echo err >&2"], packet="line", stderr="merge")
        assert sorted([data_msg(port), data_msg(port)]) == [b"err", b"out"]
        exit_msg(port)
        assert port.wait_closed(10)

    @pytest.mark.parametrize("argv,packet", [(["cat"], 3), ("cat", 4), ([], 4)])
    def test_bad_options_are_clear_errors(self, argv: object, packet: object) -> None:
        with pytest.raises(ValueError):
            Port.open(argv, packet=packet)  # type: ignore[arg-type]

    def test_a_missing_program_is_a_port_error(self) -> None:
        with pytest.raises(PortError, match="cannot start"):
            Port.open(["/nonexistent/program"])


class TestOwnership:
    def test_connect_hands_data_to_the_new_owner(self) -> None:
        me = otp.self()

        def new_owner() -> None:
            port = otp.receive(Port.__instancecheck__ and (lambda m: isinstance(m, Port)))
            port.command(b"for you")
            otp.send(me, ("got", otp.receive(PortData).data))
            otp.receive("done")

        pid = otp.spawn(new_owner)
        port = Port.open(["cat"])
        port.connect(pid)
        assert port.owner == pid
        otp.send(pid, port)
        assert otp.receive(("got", otp.ANY), timeout=5) == ("got", b"for you")
        otp.send(pid, "done")
        assert port.wait_closed(10), "the owner's normal exit closes the port too"

    def test_connect_to_a_dead_process_is_a_clear_error_and_keeps_the_owner(self) -> None:
        pid, ref = otp.spawn_monitor(lambda: None)
        otp.receive(otp.Down, timeout=5)
        port = Port.open(["cat"])
        with pytest.raises(PortError, match="dead"):
            port.connect(pid)
        assert port.owner == otp.self()
        port.command(b"still mine")
        assert data_msg(port) == b"still mine"
        closed(port)

    def test_the_owners_death_closes_the_port_and_reaps_the_child(self) -> None:
        me = otp.self()

        def owner() -> None:
            port = Port.open(["cat"])
            otp.send(me, port)
            otp.receive("never")

        pid, ref = otp.spawn_monitor(owner)
        port = otp.receive(lambda m: isinstance(m, Port), timeout=5)
        otp.exit(pid, "kill")
        assert port.wait_closed(10)
        assert not port.alive and port.info().status == 0

    def test_a_child_that_ignores_eof_and_sigterm_is_killed(self) -> None:
        port = Port.open(["sh", "-c", "trap '' TERM; exec sleep 30"], close_timeout=0.2)
        port.close()
        assert port.wait_closed(10)
        assert port.info().status == -signal.SIGKILL

    def test_close_is_idempotent_and_commands_after_it_fail_clearly(self) -> None:
        port = Port.open(["cat"])
        port.close()
        port.close()
        with pytest.raises(PortClosed):
            port.command(b"late")
        assert port.wait_closed(10)
        assert otp.receive(PortExit, timeout=0.05) is otp.TIMEOUT, "no message after close"


    def test_connect_returns_true_while_the_child_runs_and_refuses_once_closed(self) -> None:
        port = Port.open(["sh", "-c", "head -c 1 >/dev/null; exit 3"], active=False)
        helper = otp.spawn(lambda: otp.receive("stop"))
        assert port.connect(helper) is True
        assert port.connect(otp.self()) is True
        port.command(b"go")
        assert exit_msg(port).status == 3
        with pytest.raises(PortClosed):
            port.connect(helper)  # the exit was reported: the port is closed
        otp.send(helper, "stop")

    def test_a_writer_blocked_on_a_child_that_never_reads_is_killable(self) -> None:
        me = otp.self()

        def writer() -> None:
            port = Port.open(["sleep", "30"], active=False, close_timeout=0.2)
            otp.send(me, port)
            port.command(b"x" * (4 * 1024 * 1024))  # the pipe fills; nobody reads it

        pid, ref = otp.spawn_monitor(writer)
        port = otp.receive(lambda m: isinstance(m, Port), timeout=5)
        assert otp.receive(otp.ANY, timeout=0.3) is otp.TIMEOUT, "still writing: the pipe is full"
        otp.exit(pid, "kill")
        assert otp.receive(otp.Down, timeout=5).reason == "killed"
        assert port.wait_closed(10), "the owner's death closed the port despite the pending write"
        pid._proc.thread.join(5)
        assert not pid._proc.thread.is_alive()


class TestPassive:
    def test_recv_reads_frames_in_the_callers_thread(self) -> None:
        port = Port.open(["cat"], active=False)
        for i in range(100):
            port.command(str(i).encode())
        assert [port.recv(5) for _ in range(100)] == [str(i).encode() for i in range(100)]
        assert otp.receive(timeout=0) is otp.TIMEOUT
        closed(port)

    def test_recv_with_a_spin_gets_frames_and_still_times_out_clearly(self) -> None:
        port = Port.open(["cat"], active=False)
        for i in range(50):
            port.command(str(i).encode())
            assert port.recv(5, spin=0.001) == str(i).encode()
        with pytest.raises(PortTimeout, match="0.05"):
            port.recv(0.05, spin=0.01)  # the spin is part of the wait, not on top of it
        closed(port)

    def test_recv_times_out_clearly(self) -> None:
        port = Port.open(["cat"], active=False)
        with pytest.raises(PortTimeout, match="0.05"):
            port.recv(0.05)
        closed(port)

    def test_recv_after_exit_raises_port_closed_with_status_and_stderr(self) -> None:
        port = Port.open(py("import sys; sys.stderr.write('dying words\\n'); raise SystemExit(5)"), active=False)
        with pytest.raises(PortClosed) as info:
            port.recv(5)
        assert info.value.status == 5
        assert "dying words" in str(info.value)
        assert port.wait_closed(10)

    def test_an_idle_passive_owner_gets_port_exit(self) -> None:
        port = Port.open(["sh", "-c", "exit 4"], active=False)
        assert exit_msg(port).status == 4
        with pytest.raises(PortClosed):
            port.recv(5)
        assert port.wait_closed(10)

    def test_switching_back_to_active_delivers_pending_frames(self) -> None:
        port = Port.open(["cat"], active=False)
        port.command(b"1")
        port.command(b"2")
        assert port.recv(5) == b"1"
        port.set_active(True)
        assert data_msg(port) == b"2"
        closed(port)

    def test_a_process_killed_while_in_recv_stops_waiting(self) -> None:
        me = otp.self()

        def reader() -> None:
            port = Port.open(["cat"], active=False)
            otp.send(me, port)
            port.recv(None)

        pid, ref = otp.spawn_monitor(reader)
        port = otp.receive(lambda m: isinstance(m, Port), timeout=5)
        otp.exit(pid, "kill")
        assert otp.receive(otp.Down, timeout=5).reason == "killed"
        assert port.wait_closed(10)
        pid._proc.thread.join(5)
        assert not pid._proc.thread.is_alive()


@pytest.mark.parametrize("argv", [
    '["cat"]',
    '[sys.executable, "-m", "bridge.worker", "--handler", "bridge.examples"]',
])
def test_children_do_not_outlive_a_sigkilled_parent(tmp_path, argv: str) -> None:
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent(f"""
        import sys, otp
        from bridge.port import Port
        port = Port.open({argv})
        print(port.os_pid, flush=True)
        otp.receive("never")
    """))
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        os.kill(child, 0)
        parent.kill()
        parent.wait(10)
        deadline = time.monotonic() + 10
        while not process_gone(child) and time.monotonic() < deadline:
            time.sleep(0.02)  # polling /proc for a process we cannot wait on (not our child)
        assert process_gone(child), "the port's child outlived its SIGKILLed parent"
    finally:
        parent.kill()
        parent.wait(10)
        parent.stdout.close()


def test_a_forked_child_starts_its_own_io_service(tmp_path) -> None:
    script = tmp_path / "forker.py"
    script.write_text(textwrap.dedent("""
        import os, sys, otp
        from bridge.port import Port, PortData
        port = Port.open(["cat"])            # the parent's I/O thread is running now
        pid = os.fork()
        if pid == 0:
            child_port = Port.open(["cat"])  # would wait for ever on the parent's dead thread
            child_port.command(b"from the child")
            msg = otp.receive(PortData, timeout=10)
            child_port.close()
            child_port.wait_closed(10)
            os._exit(0 if msg is not otp.TIMEOUT and msg.data == b"from the child" else 1)
        _, status = os.waitpid(pid, 0)
        port.close()
        port.wait_closed(10)
        print("child status", os.waitstatus_to_exitcode(status), flush=True)
    """))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "child status 0" in proc.stdout
