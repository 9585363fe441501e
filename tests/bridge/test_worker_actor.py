"""WorkerActor against the real worker program: boot, readiness, failures, idle watch, shutdown."""

from __future__ import annotations

import os
import signal
import sys

import pytest

import otp
from bridge.port import PortTimeout
from bridge.protocol import WorkerError
from bridge.worker_actor import WorkerActor, WorkerConfig, WorkerInitError, worker_argv
from otp.testing import wait_down


def config(worker_id: str = "w1", handlers: tuple[str, ...] = ("bridge.examples",), **kw: object) -> WorkerConfig:
    env = kw.pop("env", None)
    return WorkerConfig(worker_id, worker_argv(list(handlers), worker_id), env=env, **kw)  # type: ignore[arg-type]


def start(cfg: WorkerConfig) -> otp.Pid:
    pid = WorkerActor.start(cfg)
    assert isinstance(pid, otp.Pid)
    return pid


def test_a_ready_worker_answers_calls_and_handler_errors_keep_it_usable() -> None:
    actor = start(config())
    handle = WorkerActor.await_ready(actor, 15)
    assert handle.call("add", [2, 3]) == 5
    with pytest.raises(WorkerError) as info:
        handle.call("fail", ["nope"])
    assert info.value.type == "ValueError" and "nope" in str(info.value) and "Traceback" in info.value.traceback
    assert handle.call("echo", ["still here"]) == "still here"
    os_pid = handle.port.os_pid
    otp.stop(actor)
    assert handle.port.wait_closed(10)
    assert handle.port.info().status == 0, f"worker {os_pid} was not shut down cleanly"


def test_an_import_error_at_startup_reaches_the_caller_with_its_traceback(tmp_path) -> None:
    (tmp_path / "broken_handlers.py").write_text("import no_such_dependency_xyz\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    actor = start(config(handlers=("broken_handlers",), env=env))
    with pytest.raises(WorkerInitError) as info:
        WorkerActor.await_ready(actor, 15)
    text = str(info.value)
    assert "exited during startup" in text and "no_such_dependency_xyz" in text
    assert info.value.status == 3


def test_a_worker_that_never_answers_its_first_ping_is_an_init_timeout(tmp_path) -> None:
    (tmp_path / "slow_handlers.py").write_text("import sys, time\nprint('importing slowly', file=sys.stderr, flush=True)\ntime.sleep(30)\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    actor = start(config(handlers=("slow_handlers",), env=env, init_timeout=0.5, close_timeout=0.2))
    with pytest.raises(WorkerInitError) as info:
        WorkerActor.await_ready(actor, 15)
    assert "first ping within 0.5" in str(info.value)
    assert "importing slowly" in str(info.value)


def test_unrelated_messages_during_boot_do_not_confuse_it() -> None:
    actor = start(config())
    for junk in ["hello", ("port", "data"), 42]:
        otp.send(actor, junk)
    handle = WorkerActor.await_ready(actor, 15)
    assert handle.call("echo", [1]) == 1
    otp.stop(actor)


def test_an_idle_workers_death_is_noticed_at_once() -> None:
    actor = start(config())
    handle = WorkerActor.await_ready(actor, 15)
    ref = otp.monitor(actor)
    os.kill(handle.port.os_pid, signal.SIGKILL)
    reason = wait_down(ref, timeout=15).reason
    assert reason[0] == "worker_exited" and reason[1].status == -signal.SIGKILL


def test_a_call_that_times_out_marks_the_worker_broken() -> None:
    actor = start(config(close_timeout=0.2))
    handle = WorkerActor.await_ready(actor, 15)
    with pytest.raises(PortTimeout):
        handle.call("sleep", [5], timeout=0.2)
    assert handle.broken is not None
    with pytest.raises(Exception, match="broken"):
        handle.call("echo", [1])
    otp.stop(actor)
    assert handle.port.wait_closed(10)


def test_killing_the_actor_closes_its_subprocess() -> None:
    actor = start(config(close_timeout=0.2))
    handle = WorkerActor.await_ready(actor, 15)
    otp.exit(actor, "kill")
    assert handle.port.wait_closed(10)


def test_health_ping_stops_an_unresponsive_worker(tmp_path) -> None:
    actor = start(config(ping_timeout=0.3, close_timeout=0.2))
    handle = WorkerActor.await_ready(actor, 15)
    ref = otp.monitor(actor)
    os.kill(handle.port.os_pid, signal.SIGSTOP)  # alive but frozen
    try:
        otp.cast(actor, "health_ping")
        reason = wait_down(ref, timeout=15).reason
        assert isinstance(reason, PortTimeout)
    finally:
        try:
            os.kill(handle.port.os_pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
    assert handle.port.wait_closed(10)


def test_worker_argv_uses_this_interpreter() -> None:
    assert worker_argv(["m"], "w")[0] == sys.executable
