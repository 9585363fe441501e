"""The I/O service thread: spawns subprocesses, reads port pipes, reaps children, runs timers.

One long-lived daemon thread for the whole Python process, like the BEAM's check_io:

- This process forks its subprocesses here and nowhere else. Linux's parent-death signal fires
  when the *thread* that forked a child exits; forking from this thread, which lives as long as
  the interpreter, means a worker's ``PR_SET_PDEATHSIG`` fires only when the Python process
  dies. (Workers forked by a zygote, `bridge.zygote`, are its children, not ours: they die
  with it, and it dies with us.)
- Readable pipes (active ports' stdout, every port's stderr) and pidfds (child exits) are
  dispatched to callbacks registered by `bridge.port`.
- Timers drive the close sequence (stdin EOF, then SIGTERM, then SIGKILL) without blocking the
  thread that asked for the close.

Callbacks run on this thread, one at a time, and must not block.
"""

from __future__ import annotations

import heapq
import itertools
import os
import selectors
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from loguru import logger

import otp

__all__ = ["IOService", "service"]

SERVICE_THREAD_NAME = "threadotp-service-io"


class IOService:
    """The event loop. Public methods are thread-safe; they queue work for the loop."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._lock = threading.Lock()
        # Guarded by _lock: the queue of calls to run on the loop thread.
        self._calls: deque[Callable[[], None]] = deque()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        # Loop-thread only: timers heap.
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._thread = threading.Thread(target=self._run, name=SERVICE_THREAD_NAME, daemon=True)
        self._thread.start()

    # -- thread-safe entry points -----------------------------------------------------------

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run `fn` on the loop thread."""
        with self._lock:
            self._calls.append(fn)
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:
            pass  # the pipe is full of wake-ups already: the loop will run our call

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        """Run `fn` on the loop thread after `delay` seconds."""
        deadline = time.monotonic() + delay
        self.call_soon(lambda: heapq.heappush(self._timers, (deadline, next(self._seq), fn)))

    def run_sync(self, fn: Callable[[], Any], timeout: float = 30.0) -> Any:
        """Run `fn` on the loop thread and return its result (or raise its exception)."""
        if threading.current_thread() is self._thread:
            return fn()
        done = threading.Event()
        box: list[Any] = []

        def wrapper() -> None:
            try:
                box.append((True, fn()))
            except BaseException as exc:  # noqa: BLE001 - handed back to the caller
                box.append((False, exc))
            done.set()

        self.call_soon(wrapper)
        if not done.wait(timeout):
            raise TimeoutError(f"I/O service did not answer within {timeout} s")
        ok, value = box[0]
        if ok:
            return value
        raise value

    def spawn(self, argv: list[str], **popen_kwargs: Any) -> subprocess.Popen[bytes]:
        """Start a subprocess from the loop thread (see the module doc for why)."""
        return self.run_sync(lambda: subprocess.Popen(argv, **popen_kwargs))  # type: ignore[no-any-return]

    def watch(self, fd: int, callback: Callable[[], None]) -> None:
        """Call `callback()` on the loop thread whenever `fd` is readable."""
        self.call_soon(lambda: self._selector.register(fd, selectors.EVENT_READ, callback))

    def unwatch(self, fd: int, then: Callable[[], None] | None = None) -> None:
        """Stop watching `fd`; `then` runs on the loop thread once it is unregistered."""

        def do() -> None:
            try:
                self._selector.unregister(fd)
            except (KeyError, ValueError):
                pass
            if then is not None:
                then()

        self.call_soon(do)

    def unwatch_now(self, fd: int) -> None:
        """Unregister on the loop thread (only callable from a loop callback)."""
        try:
            self._selector.unregister(fd)
        except (KeyError, ValueError):
            pass

    # -- the loop ------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            timeout = None
            if self._timers:
                timeout = max(0.0, self._timers[0][0] - time.monotonic())
            try:
                events = self._selector.select(timeout)
            except Exception:  # noqa: BLE001 - the loop must survive anything
                logger.opt(exception=True).error("I/O service select failed")
                continue
            for key, _ in events:
                if key.data is None:
                    self._drain_wake()
                else:
                    self._safely(key.data)
            self._run_calls()
            self._run_timers()

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def _run_calls(self) -> None:
        while True:
            with self._lock:
                if not self._calls:
                    return
                fn = self._calls.popleft()
            self._safely(fn)

    def _run_timers(self) -> None:
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, fn = heapq.heappop(self._timers)
            self._safely(fn)

    @staticmethod
    def _safely(fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception:  # noqa: BLE001 - one bad callback must not stop every port
            logger.opt(exception=True).error("I/O service callback {fn!r} failed", fn=fn)


_service: IOService | None = None
_service_lock = threading.Lock()


def service() -> IOService:
    """The process-wide I/O service, started on first use."""
    global _service
    with _service_lock:
        if _service is None:
            # A kill must not land between the thread's start and its recording: a second
            # service would start next time, and the first would run unseen.
            with otp.uninterruptible():
                _service = IOService()
        return _service


def _forget_after_fork() -> None:
    # A forked child (multiprocessing, ProcessPoolExecutor) has the service object but not its
    # thread: it must start its own on first use instead of queueing work nobody runs.
    global _service, _service_lock
    _service = None
    _service_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)
