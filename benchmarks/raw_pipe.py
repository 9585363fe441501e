"""The baseline: raw packet-4 round trips to the worker program, with no actors in between.

:class:`RawWorker` spawns ``python -m bridge.worker`` and talks to it directly over its pipes from
the calling thread. Whatever the bridge's ports and pools add on top is measured against it.

    >>> with RawWorker(codec="json") as w:       # doctest: +SKIP
    ...     w.call("add", [2, 3])
    5

Run it alone for a quick figure: ``python benchmarks/raw_pipe.py [codec] [calls]``.
"""

from __future__ import annotations

import contextlib
import os
import select
import statistics
import subprocess
import sys
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere, with or without an install
    sys.path.insert(0, str(ROOT))

from bridge.codec import get_codec  # noqa: E402
from bridge.framing import PacketDecoder, encode_frame  # noqa: E402

__all__ = ["RawPipe", "RawWorker", "RemoteError", "time_to_first_ping"]


class RemoteError(Exception):
    """An error reply from the worker: ``.type``, ``.message`` and ``.traceback`` as sent."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(f"{error.get('type')}: {error.get('message')}")
        self.type = error.get("type")
        self.message = error.get("message")
        self.traceback = error.get("traceback")


class RawPipe:
    """Packet-4 request/reply over a worker program's pipes, driven from the calling thread.

    Not thread-safe: one caller at a time, which is exactly the raw pipe's best case. Works on
    any pair of fds, such as those of a worker some pool started (see ``bench_bridge``).
    """

    def __init__(self, fd_in: int, fd_out: int, codec: str = "json", timeout: float = 10.0) -> None:
        self.codec = get_codec(codec)
        self.timeout = timeout
        self._in = fd_in
        self._out = fd_out
        self._decoder = PacketDecoder(4)
        self._frames: deque[bytes] = deque()
        self._next_id = 0

    def call(self, command: str, args: list[Any] | dict[str, Any] | None = None) -> Any:
        """Send one request and return its result; raise :class:`RemoteError` on an error reply.

        >>> RawWorker().call("echo", [1])      # doctest: +SKIP
        1
        """
        self._next_id += 1
        request = {"id": self._next_id, "command": command, "args": args or [], "session_id": None}
        os.write(self._in, encode_frame(self.codec.encode(request), 4))
        reply: Any = self.codec.decode(self._next_frame())
        if reply["ok"]:
            return reply["result"]
        raise RemoteError(reply["error"])

    def _next_frame(self) -> bytes:
        while not self._frames:
            # select gives the read a timeout; a port reader pays the same extra syscall.
            ready, _, _ = select.select([self._out], [], [], self.timeout)
            if not ready:
                raise TimeoutError(f"no reply on fd {self._out} within {self.timeout}s")
            try:
                chunk = os.read(self._out, 65536)
            except BlockingIOError:  # a non-blocking fd whose data someone else took
                continue
            if not chunk:
                raise EOFError(f"the worker on fd {self._out} exited")
            self._frames.extend(self._decoder.feed(chunk))
        return self._frames.popleft()


class RawWorker(RawPipe):
    """A worker program in a subprocess of its own, driven with :class:`RawPipe`."""

    def __init__(
        self,
        codec: str = "json",
        handlers: Sequence[str] = ("bridge.examples",),
        worker_id: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        cmd = [sys.executable, "-m", "bridge.worker", "--codec", codec]
        for module in handlers:
            cmd += ["--handler", module]
        if worker_id is not None:
            cmd += ["--worker-id", worker_id]
        # stderr is inherited: the examples rarely write to it, and a pipe nobody reads would
        # eventually block a chatty worker.
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT, bufsize=0
        )
        super().__init__(self.proc.stdin.fileno(), self.proc.stdout.fileno(), codec, timeout)

    def close(self) -> int:
        """Stop the worker (``shutdown``, then EOF, then kill), reap it and return its status."""
        try:
            if self.proc.poll() is None:
                with contextlib.suppress(OSError, EOFError, TimeoutError, RemoteError):
                    self.call("shutdown")
            self.proc.stdin.close()
            return self.proc.wait(self.timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
        finally:
            self.proc.stdout.close()

    def __enter__(self) -> RawWorker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def time_to_first_ping(
    codec: str = "json", handlers: Sequence[str] = ("bridge.examples",)
) -> float:
    """Seconds from spawning a worker to its first ping reply (its readiness)."""
    start = time.perf_counter()
    worker = RawWorker(codec=codec, handlers=handlers)
    try:
        worker.call("ping")
        return time.perf_counter() - start
    finally:
        worker.close()


def echo_round_trips(worker: RawWorker, payload: Any, calls: int) -> list[float]:
    """Time *calls* echo round trips (after a short warm-up); return each one in seconds."""
    for _ in range(min(200, calls)):
        worker.call("echo", [payload])
    times = []
    clock = time.perf_counter
    for _ in range(calls):
        start = clock()
        worker.call("echo", [payload])
        times.append(clock() - start)
    return times


def main(argv: Sequence[str]) -> None:
    codec = argv[0] if argv else "json"
    calls = int(argv[1]) if len(argv) > 1 else 5000
    with RawWorker(codec=codec) as worker:
        times = echo_round_trips(worker, {"user": "alice", "items": [1, 2, 3], "ok": True}, calls)
    us = sorted(t * 1e6 for t in times)
    print(
        f"{codec}: {calls} echo round trips, mean {statistics.fmean(us):.1f} us, "
        f"p50 {us[len(us) // 2]:.1f} us, p99 {us[int(len(us) * 0.99)]:.1f} us"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
