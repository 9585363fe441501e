"""The zygote start mode against real processes: forked workers serve, report their statuses,
carry their stderr, die with the zygote, and a SessionPool built on them recovers from kills."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import pytest

import otp
from bridge.codec import get_codec
from bridge.port import Port, PortClosed, PortExit
from bridge.protocol import request
from bridge.session_pool import SessionPool
from bridge.testing import parent_pid, process_gone
from bridge.zygote_actor import ZygoteActor, ZygoteConfig, ZygoteError
from otp.testing import wait_until

CODEC = get_codec("msgpack")


@pytest.fixture
def zygote() -> Iterator[otp.Pid]:
    pid = ZygoteActor.start(ZygoteConfig("tz", ["bridge.examples"], close_timeout=0.5))
    yield pid
    if otp.is_alive(pid):
        otp.stop(pid)


def forked(zygote: otp.Pid, worker_id: str, **options: object) -> Port:
    return Port.open([worker_id], active=False, spawn=ZygoteActor.spawner(zygote, worker_id), **options)  # type: ignore[arg-type]


def test_a_forked_worker_serves_calls_and_reports_its_identity(zygote: otp.Pid) -> None:
    port = forked(zygote, "z-a")
    reply = request(port, CODEC, 1, "ping", [])
    assert reply["worker_id"] == "z-a" and reply["pid"] == port.os_pid
    assert request(port, CODEC, 2, "add", [2, 3]) == 5
    port.close()
    assert port.wait_closed(10)
    assert port.info().status == 0, "EOF on stdin: a clean exit, reported by the zygote"


def test_a_killed_forked_worker_reports_the_signal(zygote: otp.Pid) -> None:
    port = forked(zygote, "z-k")
    assert request(port, CODEC, 1, "ping", [])["pid"] == port.os_pid
    port.set_active(True)
    port.kill()
    msg = otp.receive(lambda m: isinstance(m, PortExit) and m.port is port, timeout=10)
    assert msg is not otp.TIMEOUT and msg.status == -signal.SIGKILL
    assert port.wait_closed(10)


def test_a_forked_workers_stderr_reaches_the_port(zygote: otp.Pid) -> None:
    port = forked(zygote, "z-e")
    with pytest.raises(Exception, match="boom"):
        request(port, CODEC, 1, "fail", ["boom"])
    assert request(port, CODEC, 2, "noisy", ["printed"]) == "printed"
    wait_until(lambda: any("printed" in line for line in port.stderr_tail), 10, "the worker's print on stderr")
    port.close()
    assert port.wait_closed(10)


def test_a_zygote_whose_handlers_do_not_import_fails_to_start_with_the_traceback(tmp_path) -> None:
    (tmp_path / "zbroken.py").write_text("import no_such_module_for_the_zygote\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    with pytest.raises(otp.StartError) as info:
        ZygoteActor.start(ZygoteConfig("zb", ["zbroken"], env=env, close_timeout=0.3), timeout=15)
    error = info.value.reason
    assert isinstance(error, ZygoteError) and "exited during startup" in str(error)
    assert any("no_such_module_for_the_zygote" in line for line in error.stderr_tail), error.stderr_tail


def test_killing_the_zygote_takes_its_workers_and_its_actor_down(zygote: otp.Pid) -> None:
    port = forked(zygote, "z-d")
    assert request(port, CODEC, 1, "ping", [])
    ref = otp.monitor(zygote)
    probe = ZygoteActor.spawn(zygote, "probe", subprocess.DEVNULL)  # a sibling, kept open
    zygote_pid = parent_pid(probe.pid)
    assert zygote_pid is not None
    os.kill(zygote_pid, signal.SIGKILL)
    down = otp.receive(lambda m: isinstance(m, otp.Down) and m.ref == ref, timeout=10)
    assert down is not otp.TIMEOUT and down.reason[0] == "zygote_exited"
    wait_until(lambda: process_gone(port.os_pid) and process_gone(probe.pid), 10, "the workers to die with their zygote")
    with pytest.raises(PortClosed):
        port.recv(10)
    port.close()
    assert port.wait_closed(10)


def test_a_zygote_pool_serves_recovers_from_kills_and_stops_clean() -> None:
    with SessionPool.start("zpool", 2, ["bridge.examples"], start_mode="zygote", close_timeout=0.5) as sp:
        assert sp.execute_anonymous("add", [1, 2]) == 3
        assert sp.execute_in_session("s", "counter_incr") == 1
        before = sp.worker_os_pids()
        os.kill(before[0], signal.SIGKILL)
        wait_until(lambda: len(set(sp.worker_os_pids()) - set(before)) == 1 and sp.stats().idle == 2, 10,
                   "a forked replacement")
        assert sp.stats().restarts == 1
        assert sp.execute_anonymous("add", [2, 2]) == 4
        workers = sp.worker_os_pids()
    for pid in workers:
        assert process_gone(pid), f"worker {pid} outlived its pool"


def test_an_unknown_start_mode_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="start_mode must be one of spawn, zygote"):
        SessionPool.start("zbad", 1, ["bridge.examples"], start_mode="fork")


def test_forked_workers_do_not_outlive_a_sigkilled_python_process(tmp_path) -> None:
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent("""
        import otp
        from bridge.session_pool import SessionPool
        sp = SessionPool.start("orphans", 2, ["bridge.examples"], start_mode="zygote")
        print(*sp.worker_os_pids(), flush=True)
        otp.receive("never")
    """))
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        workers = [int(p) for p in parent.stdout.readline().split()]
        assert len(workers) == 2
        parent.kill()
        parent.wait(10)
        deadline = time.monotonic() + 10
        while not all(process_gone(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.02)  # polling /proc: these are not our children, we cannot wait on them
        assert all(process_gone(p) for p in workers), "a forked worker outlived its SIGKILLed Python process"
    finally:
        parent.kill()
        parent.wait(10)
        parent.stdout.close()


def zygote_os_pid(zygote: otp.Pid) -> int:
    """The zygote's OS pid: the parent of a worker it forks."""
    pid = parent_pid(ZygoteActor.spawn(zygote, "probe", subprocess.DEVNULL).pid)
    assert pid is not None
    return pid


def children_of(os_pid: int) -> list[int]:
    with open(f"/proc/{os_pid}/task/{os_pid}/children") as f:
        return [int(p) for p in f.read().split()]


def test_a_worker_forked_after_its_caller_gave_up_is_not_left_running(zygote: otp.Pid) -> None:
    zpid = zygote_os_pid(zygote)
    wait_until(lambda: children_of(zpid) == [], 10, "the probe to exit (nobody holds its pipes)")
    os.kill(zpid, signal.SIGSTOP)  # a zygote that is slow to fork
    try:
        with pytest.raises(ZygoteError, match="did not fork late within 0.2 s"):
            Port.open(["late"], active=False, spawn=ZygoteActor.spawner(zygote, "late", 0.2))
    finally:
        os.kill(zpid, signal.SIGCONT)
    # The fork happens now, for nobody: the actor keeps only its status box, the pipes are
    # closed with the dropped reply, and the worker exits on the EOF.
    assert otp.call(zygote, ("spawn", "after", subprocess.DEVNULL), 10)[0] == "ok"
    wait_until(lambda: children_of(zpid) == [], 10, "the late worker to exit")


@pytest.mark.parametrize("start_mode", ["spawn", "zygote"])
def test_spinning_workers_serve_in_either_start_mode(start_mode: str) -> None:
    with SessionPool.start(f"spin-{start_mode}", 2, ["bridge.examples"], start_mode=start_mode,
                           worker_spin=100e-6, reply_spin=0.0, close_timeout=0.5) as sp:
        assert [sp.execute_anonymous("add", [i, i]) for i in range(50)] == [2 * i for i in range(50)]
        with open(f"/proc/{sp.worker_os_pids()[0]}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        # A spawned worker has it on its own command line; a forked one, on its zygote's.
        assert b"--spin-us" in argv and argv[argv.index(b"--spin-us") + 1] == b"100"
