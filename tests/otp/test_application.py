"""otp.run: a script's supervision tree stops in order on SIGINT/SIGTERM; its status says how it
ended. Each test runs a real script in a subprocess and waits on its output, with timeouts."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import otp

ROOT = Path(__file__).resolve().parents[2]

PRELUDE = """
import sys
import otp

def say(*words):
    # One write per line: print() writes its pieces separately, and log lines from other
    # threads share this pipe.
    sys.stdout.write(" ".join(map(str, words)) + "\\n")
    sys.stdout.flush()

class Worker(otp.GenServer):
    def init(self, name):
        otp.trap_exit(True)
        say("start", name)
        return ("ok", name)

    def terminate(self, reason, name):
        say("stop", name, reason)

def worker(name, **spec):
    return {"id": name, "start": (Worker.start_link, (name,)), **spec}
"""


class Script:
    """A running script; lines of its stdout (and stderr) are read with a deadline."""

    def __init__(self, body: str) -> None:
        source = PRELUDE + textwrap.dedent(body)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", source], cwd=ROOT, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert self.proc.stdout is not None
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.proc.stdout, selectors.EVENT_READ)
        self.buffer = b""
        self.lines: list[str] = []

    def wait_for(self, line: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while line not in self.lines:
            left = deadline - time.monotonic()
            assert left > 0, f"no line {line!r} within {timeout}s; got:\n" + "\n".join(self.lines)
            if self.selector.select(left):
                chunk = os.read(self.proc.stdout.fileno(), 65536)  # type: ignore[union-attr]
                if not chunk:
                    assert False, f"script ended before {line!r}:\n" + "\n".join(self.lines)
                self.buffer += chunk
                *complete, self.buffer = self.buffer.split(b"\n")
                self.lines += [c.decode() for c in complete]

    def finish(self, timeout: float = 10.0) -> int:
        out, _ = self.proc.communicate(timeout=timeout)
        self.lines += (self.buffer + out).decode().splitlines()
        self.buffer = b""
        return self.proc.returncode

    def ours(self) -> list[str]:
        """Our script's own lines (log lines from loguru start with a date)."""
        return [line for line in self.lines if line.startswith(("start ", "stop ", "result "))]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate()
        self.selector.close()


@pytest.fixture
def script() -> object:
    started: list[Script] = []

    def run(body: str) -> Script:
        started.append(Script(body))
        return started[-1]

    yield run
    for s in started:
        s.close()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_the_tree_in_reverse_order_and_the_status_is_zero(script, signum: int) -> None:  # type: ignore[no-untyped-def]
    s = script("""
        inner = otp.Supervisor.spec([worker("i1"), worker("i2")], id="inner")
        sys.exit(otp.run([worker("a"), inner, worker("b")]))
    """)
    s.wait_for("start b")
    s.proc.send_signal(signum)
    assert s.finish() == 0
    assert s.ours() == [
        "start a", "start i1", "start i2", "start b",
        "stop b shutdown", "stop i2 shutdown", "stop i1 shutdown", "stop a shutdown",
    ]


def test_a_child_spec_can_be_the_root(script) -> None:  # type: ignore[no-untyped-def]
    s = script("""
        root = otp.Supervisor.spec([worker("a"), worker("b")], strategy="one_for_all")
        sys.exit(otp.run(root))
    """)
    s.wait_for("start b")
    s.proc.send_signal(signal.SIGTERM)
    assert s.finish() == 0
    assert s.ours() == ["start a", "start b", "stop b shutdown", "stop a shutdown"]


def test_a_tree_that_exceeds_its_restart_intensity_exits_with_a_non_zero_status(script) -> None:  # type: ignore[no-untyped-def]
    s = script("""
        def crash_soon():
            return otp.spawn_link(otp.exit, "boom")

        sys.exit(otp.run([worker("a"), {"id": "crasher", "start": crash_soon}], max_restarts=2))
    """)
    assert s.finish() == 1
    assert s.ours() == ["start a", "stop a shutdown"]
    assert any("reached_max_restart_intensity" in line for line in s.lines)


def test_a_tree_that_fails_to_start_exits_with_a_non_zero_status(script) -> None:  # type: ignore[no-untyped-def]
    s = script("""
        sys.exit(otp.run([worker("a"), {"id": "bad", "start": lambda: ("error", "no_db")}]))
    """)
    assert s.finish() == 1
    assert s.ours() == ["start a", "stop a shutdown"]
    assert any("failed_to_start_child" in line and "no_db" in line for line in s.lines)


def test_a_root_that_exits_normally_gives_status_zero(script) -> None:  # type: ignore[no-untyped-def]
    s = script("""
        def root():
            return otp.spawn_link(say, "result", "done")

        sys.exit(otp.run(root))
    """)
    assert s.finish() == 0
    assert s.ours() == ["result done"]


def test_a_second_signal_kills_a_tree_that_is_slow_to_stop(script) -> None:  # type: ignore[no-untyped-def]
    s = script("""
        class Slow(Worker):
            def terminate(self, reason, name):
                say("stop", name, "waiting")
                otp.receive("never")

        sys.exit(otp.run([{"id": "slow", "start": (Slow.start_link, ("slow",)), "shutdown": "infinity"}]))
    """)
    s.wait_for("start slow")
    s.proc.send_signal(signal.SIGINT)
    s.wait_for("stop slow waiting")
    s.proc.send_signal(signal.SIGINT)
    assert s.finish() == 1


def test_run_refuses_to_run_outside_the_main_thread() -> None:
    errors: list[BaseException] = []

    def body() -> None:
        try:
            otp.run([])
        except RuntimeError as exc:
            errors.append(exc)

    thread = threading.Thread(target=body)
    thread.start()
    thread.join(5)
    assert len(errors) == 1 and "main thread" in str(errors[0])
