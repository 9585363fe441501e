"""The worker program (python -m bridge.worker), driven over real pipes with packet-4 frames."""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import signal
import struct
import subprocess
import sys
import termios
import textwrap
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.codec import CODECS, available_codecs, get_codec
from bridge.framing import PacketDecoder, encode_frame
from otp.testing import wait_until

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 10.0  # generous: a loaded CI machine can take a while to start an interpreter


class WorkerProcess:
    """One worker program in a subprocess, with helpers to send frames and read replies."""

    def __init__(
        self,
        *extra: str,
        codec: str = "json",
        handlers: tuple[str, ...] = ("bridge.examples",),
        packet: int = 4,
        pythonpath: Path | None = None,
    ) -> None:
        cmd = [sys.executable, "-m", "bridge.worker", "--codec", codec, "--packet", str(packet)]
        for module in handlers:
            cmd += ["--handler", module]
        env = dict(os.environ)
        if pythonpath is not None:
            env["PYTHONPATH"] = os.pathsep.join(
                filter(None, [str(pythonpath), env.get("PYTHONPATH")])
            )
        self.codec = get_codec(codec)
        self.packet = packet
        self.proc = subprocess.Popen(
            [*cmd, *extra],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ROOT,
            env=env,
        )
        self._decoder = PacketDecoder(packet)
        self._frames: deque[bytes] = deque()
        self._stderr = bytearray()
        self._ids = iter(range(1, 1 << 30))

    # -- talking -----------------------------------------------------------------------------

    def send_bytes(self, data: bytes) -> None:
        os.write(self.proc.stdin.fileno(), data)

    def send(self, request: dict[str, Any]) -> None:
        self.send_bytes(encode_frame(self.codec.encode(request), self.packet))

    def recv(self, timeout: float = TIMEOUT) -> Any:
        """Return the next decoded reply; fail the test on timeout or EOF."""
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while not self._frames:
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([fd], [], [], max(remaining, 0))
            if not ready:
                pytest.fail(f"no reply within {timeout}s; stderr: {self.stderr_text(0.1)!r}")
            chunk = os.read(fd, 65536)
            if not chunk:
                pytest.fail(f"worker closed stdout; stderr: {self.stderr_text(1.0)!r}")
            self._frames.extend(self._decoder.feed(chunk))
        return self.codec.decode(self._frames.popleft())

    def call(self, command: str, args: Any = (), session_id: Any = None) -> dict[str, Any]:
        request_id = next(self._ids)
        if isinstance(args, tuple):
            args = list(args)
        self.send({"id": request_id, "command": command, "args": args, "session_id": session_id})
        reply = self.recv()
        assert reply["id"] == request_id
        return reply

    def result(self, command: str, *args: Any, session_id: Any = None) -> Any:
        reply = self.call(command, list(args), session_id)
        assert reply["ok"], reply
        return reply["result"]

    def stdout_is_at_eof(self, timeout: float = TIMEOUT) -> bool:
        fd = self.proc.stdout.fileno()
        ready, _, _ = select.select([fd], [], [], timeout)
        return bool(ready) and os.read(fd, 65536) == b""

    # -- stderr and lifetime ------------------------------------------------------------------

    def stderr_text(self, timeout: float = TIMEOUT, until: str | None = None) -> str:
        """Collect stderr until *until* appears, EOF, or *timeout*; return all of it so far."""
        deadline = time.monotonic() + timeout
        fd = self.proc.stderr.fileno()
        while until is None or until not in self._stderr.decode(errors="replace"):
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([fd], [], [], max(remaining, 0))
            if not ready:
                break
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            self._stderr += chunk
        return self._stderr.decode(errors="replace")

    def stdin_drained(self) -> bool:
        """The worker has read every byte written to its stdin."""
        pending = fcntl.ioctl(self.proc.stdin.fileno(), termios.FIONREAD, b"\0\0\0\0")
        return struct.unpack("i", pending)[0] == 0

    def state(self) -> str:
        """The worker's scheduler state from /proc ("R" running, "S" asleep, ...)."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]

    def close_stdin(self) -> None:
        if not self.proc.stdin.closed:
            self.proc.stdin.close()

    def wait(self, timeout: float = TIMEOUT) -> int:
        return self.proc.wait(timeout)

    def close(self) -> None:
        """Reap the child whatever state it is in and close every pipe."""
        try:
            with contextlib.suppress(OSError):
                self.close_stdin()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(TIMEOUT)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(TIMEOUT)
            for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
                with contextlib.suppress(OSError):
                    pipe.close()


@pytest.fixture
def spawn() -> Iterator[Any]:
    workers: list[WorkerProcess] = []

    def start(*extra: str, **options: Any) -> WorkerProcess:
        worker = WorkerProcess(*extra, **options)
        workers.append(worker)
        return worker

    try:
        yield start
    finally:
        for worker in workers:
            worker.close()


@pytest.fixture
def worker(spawn: Any) -> WorkerProcess:
    return spawn("--worker-id", "w-test")


def write_module(directory: Path, name: str, source: str) -> None:
    (directory / f"{name}.py").write_text(textwrap.dedent(source))


# -- built-ins -----------------------------------------------------------------------------------


def test_ping_reports_worker_id_pid_and_uptime(worker):
    result = worker.result("ping")
    assert result["worker_id"] == "w-test"
    assert result["pid"] == worker.proc.pid
    assert isinstance(result["uptime"], float) and result["uptime"] >= 0


def test_worker_id_defaults_to_one_built_from_the_pid(spawn):
    worker = spawn()
    assert worker.result("ping")["worker_id"] == f"worker-{worker.proc.pid}"


def test_info_describes_the_worker(worker):
    info = worker.result("info")
    assert info["worker_id"] == "w-test"
    assert info["pid"] == worker.proc.pid
    assert info["codec"] == "json"
    assert info["sessions"] == 0
    assert info["python"] == "{}.{}.{}".format(*sys.version_info[:3])
    assert {"ping", "info", "shutdown", "echo", "counter_incr"} <= set(info["commands"])


# -- dispatch ------------------------------------------------------------------------------------


def test_echo_returns_its_argument(worker):
    value = {"text": "héllo", "numbers": [1, 2.5, None, True], "nested": {"k": ["v"]}}
    assert worker.result("echo", value) == value


def test_list_args_are_positional_and_map_args_are_keywords(worker):
    assert worker.call("add", [2, 3])["result"] == 5
    assert worker.call("add", {"a": "x", "b": "y"})["result"] == "xy"


def test_missing_args_mean_no_arguments(worker):
    worker.send({"id": 9, "command": "counter_get", "session_id": "s"})
    assert worker.recv() == {"id": 9, "ok": True, "result": 0}


def test_handler_error_is_a_reply_and_the_worker_keeps_serving(worker):
    reply = worker.call("fail", ["boom"])
    assert reply["ok"] is False
    error = reply["error"]
    assert error["type"] == "ValueError"
    assert error["message"] == "boom"
    assert "raise ValueError(message)" in error["traceback"]
    assert "examples.py" in error["traceback"]
    assert error["traceback"].rstrip().endswith("ValueError: boom")
    # The traceback starts in the handler: the worker's dispatch frames are noise to the caller.
    assert "worker.py" not in error["traceback"]
    assert worker.result("echo", "still here") == "still here"


def test_wrong_arguments_are_a_type_error_reply(worker):
    error = worker.call("add", [1])["error"]
    assert error["type"] == "TypeError"
    assert "add()" in error["message"]


def test_unknown_command_names_the_accepted_commands(worker):
    error = worker.call("no_such_command")["error"]
    assert error["type"] == "UnknownCommand"
    assert "'no_such_command'" in error["message"]
    for command in ("echo", "add", "counter_incr", "ping", "session_put", "shutdown"):
        assert command in error["message"]


def test_requests_written_together_are_answered_in_order(worker):
    batch = b"".join(
        encode_frame(worker.codec.encode({"id": i, "command": "echo", "args": [i]}), 4)
        for i in range(50)
    )
    worker.send_bytes(batch)
    assert [worker.recv()["result"] for _ in range(50)] == list(range(50))


def test_an_undecodable_frame_gives_a_bad_frame_reply_and_the_worker_goes_on(worker):
    worker.send_bytes(encode_frame(b"\xff this is not json", 4))
    reply = worker.recv()
    assert reply["id"] is None
    assert reply["ok"] is False
    assert reply["error"]["type"] == "BadFrame"
    assert worker.result("ping")["worker_id"] == "w-test"


@pytest.mark.parametrize(
    "request_",
    [
        {"id": 5},
        {"id": 5, "command": 42},
        {"id": 5, "command": "echo", "args": "not a list"},
        {"id": 5, "command": "echo", "args": [1], "session_id": [1]},
    ],
)
def test_a_malformed_request_gives_a_bad_request_reply(worker, request_):
    worker.send(request_)
    reply = worker.recv()
    assert reply["id"] == 5
    assert reply["error"]["type"] == "BadRequest"


def test_a_request_that_is_not_a_map_gives_a_bad_request_reply(worker):
    worker.send([1, 2, 3])  # type: ignore[arg-type]
    reply = worker.recv()
    assert (reply["id"], reply["error"]["type"]) == (None, "BadRequest")


# -- stdout discipline ---------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [False, True], ids=["print", "fd-1-write"])
def test_noisy_output_goes_to_stderr_and_never_into_the_frames(worker, raw):
    reply = worker.call("noisy", {"text": "hello from the handler", "raw": raw})
    assert reply == {"id": reply["id"], "ok": True, "result": "hello from the handler"}
    assert "hello from the handler" in worker.stderr_text(until="hello from the handler")
    # The frame stream is still aligned: the next reply decodes and matches its request.
    assert worker.result("echo", "after") == "after"


def test_output_at_handler_import_time_does_not_reach_stdout(spawn, tmp_path):
    write_module(
        tmp_path,
        "chatty_handlers",
        """
        import os
        from bridge.registry import handler

        print("import-time print")
        os.write(1, b"import-time fd write\\n")

        @handler
        def hello():
            return "hi"
        """,
    )
    worker = spawn(handlers=("chatty_handlers",), pythonpath=tmp_path)
    assert worker.result("hello") == "hi"
    stderr = worker.stderr_text(until="import-time fd write")
    assert "import-time print" in stderr
    assert "import-time fd write" in stderr


def test_a_result_the_codec_cannot_encode_gives_an_encode_error_reply(spawn, tmp_path):
    write_module(
        tmp_path,
        "set_handlers",
        """
        from bridge.registry import handler

        @handler
        def a_set():
            return {1, 2}
        """,
    )
    worker = spawn(handlers=("set_handlers",), pythonpath=tmp_path)
    error = worker.call("a_set")["error"]
    assert error["type"] == "EncodeError"
    assert "set" in error["message"]
    assert worker.result("ping")


# -- sessions ------------------------------------------------------------------------------------


def test_session_put_get_and_drop(worker):
    assert worker.result("session_put", "color", "blue", session_id="s1") is None
    assert worker.result("session_get", "color", session_id="s1") == "blue"
    assert worker.result("session_get", "color", session_id="s2") is None
    assert worker.result("session_get", "color", "none", session_id="s2") == "none"
    assert worker.result("info")["sessions"] == 1  # reading s2 did not create it
    assert worker.result("session_drop", session_id="s1") is True
    assert worker.result("session_drop", session_id="s1") is False
    assert worker.result("session_get", "color", session_id="s1") is None


def test_session_handlers_keep_state_per_session(worker):
    assert [worker.result("counter_incr", session_id="a") for _ in range(3)] == [1, 2, 3]
    assert worker.call("counter_incr", {"by": 10}, session_id="b")["result"] == 10
    assert worker.result("counter_get", session_id="a") == 3
    assert worker.result("counter_get", session_id=7) == 0  # int session ids are fine too
    worker.result("session_drop", session_id="a")
    assert worker.result("counter_get", session_id="a") == 0


@pytest.mark.parametrize("command", ["session_put", "session_get", "session_drop", "counter_incr"])
def test_session_commands_need_a_session_id(worker, command):
    args = ["k", "v"] if command == "session_put" else ["k"] if command == "session_get" else []
    error = worker.call(command, args)["error"]
    assert error["type"] == "SessionRequired"
    assert command in error["message"]


# -- lifetime ------------------------------------------------------------------------------------


def test_stdin_eof_exits_0(worker):
    worker.result("ping")
    worker.close_stdin()
    assert worker.wait() == 0
    assert worker.stdout_is_at_eof()


def test_a_spinning_worker_serves_and_still_exits_on_eof_and_sigterm(spawn):
    spinning = spawn("--worker-id", "w-spin", "--spin-us", "200")
    for i in range(20):
        assert spinning.result("add", i, 1) == i + 1
    spinning.close_stdin()  # EOF seen from the spin as from a blocking read
    assert spinning.wait() == 0
    other = spawn("--spin-us", "1000000")  # a second-long spin: SIGTERM still ends it at once
    other.result("ping")
    other.proc.send_signal(signal.SIGTERM)
    assert other.wait() == 0


def test_sigterm_exits_0(worker):
    worker.result("ping")  # the handler is installed before the first reply can be sent
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.wait() == 0


def test_sigterm_interrupts_a_running_handler_and_exits_0(worker):
    worker.result("ping")
    worker.send({"id": 1, "command": "sleep", "args": [60]})
    # Signalled once it sleeps in the handler: CPython sees a signal that lands in the moment
    # before a blocking call only when the call returns (see the worker's module doc).
    wait_until(lambda: worker.stdin_drained() and worker.state() == "S", what="the handler asleep")
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.wait() == 0


def test_sigint_is_left_to_the_parent(worker):
    worker.result("ping")
    worker.proc.send_signal(signal.SIGINT)
    assert worker.result("echo", "unaffected") == "unaffected"


def test_shutdown_frame_replies_then_exits_0_without_eof(worker):
    # stdin stays open, as it would when a forked process holds a copy of its write end.
    reply = worker.call("shutdown")
    assert reply["ok"] is True and reply["result"] is None
    assert worker.wait() == 0
    assert worker.stdout_is_at_eof()


def test_a_handler_that_exits_ends_the_worker_with_its_status(worker):
    worker.send({"id": 1, "command": "crash", "args": [7]})
    assert worker.stdout_is_at_eof()
    assert worker.wait() == 7


def test_eof_in_the_middle_of_a_frame_exits_4_with_a_message(worker):
    worker.result("ping")
    worker.send_bytes(encode_frame(b'{"id": 1}', 4)[:6])
    worker.close_stdin()
    assert worker.wait() == 4
    stderr = worker.stderr_text()
    assert "framing error" in stderr
    assert "mid-frame" in stderr


def test_a_handler_module_that_fails_to_import_exits_3_with_its_traceback(spawn, tmp_path):
    write_module(
        tmp_path,
        "broken_handlers",
        """
        def helper():
            raise ImportError("the native extension is missing")

        helper()
        """,
    )
    worker = spawn(handlers=("bridge.examples", "broken_handlers"), pythonpath=tmp_path)
    assert worker.wait() == 3
    stderr = worker.stderr_text()
    assert "cannot import handler module 'broken_handlers'" in stderr
    assert "Traceback (most recent call last)" in stderr
    assert "broken_handlers.py" in stderr
    assert "in helper" in stderr
    assert "ImportError: the native extension is missing" in stderr
    assert worker.stdout_is_at_eof()  # nothing at all was written to the frame channel


def test_a_missing_handler_module_exits_3(spawn):
    worker = spawn(handlers=("no_such_module_for_bridge_tests",))
    assert worker.wait() == 3
    assert "ModuleNotFoundError" in worker.stderr_text()


def test_a_handler_shadowing_a_builtin_exits_3(spawn, tmp_path):
    write_module(
        tmp_path,
        "shadowing_handlers",
        """
        from bridge.registry import handler

        @handler
        def ping():
            return "mine"
        """,
    )
    worker = spawn(handlers=("shadowing_handlers",), pythonpath=tmp_path)
    assert worker.wait() == 3
    assert "'ping' is a worker built-in" in worker.stderr_text()


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["--codec", "yaml"], "--codec must be one of json, orjson, msgpack, got 'yaml'"),
        (["--packet=3"], "--packet must be 1, 2 or 4, got '3'"),
        (["--handler"], "--handler needs a value"),
        (["--verbose"], "unrecognized argument '--verbose'"),
        (["--spin-us", "-5"], "--spin-us must be a whole number of microseconds >= 0, got '-5'"),
    ],
)
def test_a_bad_command_line_exits_2_with_usage(argv, complaint):
    proc = subprocess.run(
        [sys.executable, "-m", "bridge.worker", *argv],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=TIMEOUT,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.startswith("usage: python -m bridge.worker")
    assert complaint in proc.stderr


# -- codecs and packet sizes ---------------------------------------------------------------------

CODEC_PARAMS = [
    pytest.param(
        name,
        marks=pytest.mark.skipif(name not in available_codecs(), reason=f"{name} is not installed"),
    )
    for name in CODECS
]


@pytest.mark.parametrize("codec", CODEC_PARAMS)
def test_every_codec_round_trips_through_the_worker(spawn, codec):
    worker = spawn(codec=codec)
    value = {"s": "héllo ✓", "i": -(2**40), "f": 0.25, "l": [None, True, False], "d": {"k": []}}
    assert worker.result("echo", value) == value
    assert worker.result("info")["codec"] == codec
    error = worker.call("fail", ["bad"])["error"]
    assert (error["type"], error["message"]) == ("ValueError", "bad")


@pytest.mark.parametrize("packet", [1, 2])
def test_smaller_packet_headers(spawn, packet):
    worker = spawn(packet=packet)
    assert worker.result("echo", "x" * 100) == "x" * 100


def test_a_reply_too_large_for_the_header_becomes_an_error_that_fits(spawn):
    worker = spawn(packet=1)
    reply = worker.call("info")  # a small request whose reply is well over 255 bytes
    assert reply["ok"] is False
    assert reply["error"]["type"] == "FrameTooLarge"
    # An error whose traceback does not fit keeps its type, minus the traceback.
    error = worker.call("fail", ["z" * 150])["error"]
    assert error["type"] == "ValueError"
    assert worker.result("echo", "ok") == "ok"
