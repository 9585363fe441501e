"""Ports: a subprocess owned by a process, speaking frames over its stdin and stdout.

Erlang's ``open_port({spawn_executable, ...}, [{packet, 4}, exit_status])`` in Python:

>>> import otp, sys
>>> from bridge.port import Port, PortData
>>> port = Port.open(["cat"], packet=4)
>>> port.command(b"hello")
>>> otp.receive(PortData, timeout=5).data
b'hello'
>>> port.close()

- The calling process becomes the owner. In *active* mode (the default) each frame arrives in
  the owner's mailbox as `PortData`. In *passive* mode (``set_active(False)``) the owner reads
  frames itself with `recv`, without a thread hop — the pool's hot path. In both modes the
  subprocess's exit arrives as `PortExit`, except while the owner is inside `recv`, which raises
  `PortClosed` instead: an idle owner notices the exit at once.
- ``connect(pid)`` hands the port to another owner; a dead `pid` is a clear `PortError`, never a
  race: ownership moves atomically with the death hook that closes the port when its owner dies.
- The owner's death closes the port: stdin is closed (EOF), then SIGTERM after `close_timeout`,
  then SIGKILL; the child is always reaped. Children run in their own process group (a Ctrl-C
  at the terminal reaches the parent, which shuts them down in order) and are forked from the
  long-lived I/O thread, so a worker's parent-death signal fires only when this process dies.
  A child started elsewhere (``spawn=``, a zygote's fork) is reaped by its own parent, which
  reports its status; the port watches it through a pidfd just the same.
- stderr: ``"log"`` (default) logs each line through loguru tagged with the port and its tags,
  ``"pipe"`` sends `PortStderr` messages, ``"merge"`` (line and raw modes only: it would corrupt
  packet framing), ``"inherit"`` or ``"devnull"``. The last lines are kept in every mode that reads
  them and are attached to every `PortError`.
- A frame that cannot be decoded (a length beyond `max_frame`, EOF in mid-frame) kills the port
  with a `PortError` reason: nothing the child writes can hang or flood the owner.
"""

from __future__ import annotations

import itertools
import os
import select
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from loguru import logger

import otp
from bridge._io import service
from bridge.framing import FramingError, make_decoder, make_encoder

__all__ = [
    "Port", "PortClosed", "PortData", "PortError", "PortExit", "PortInfo", "PortStderr",
    "PortTimeout",
]

_STDERR_MODES = ("log", "pipe", "merge", "inherit", "devnull")
_names = itertools.count(1)
_names_lock = threading.Lock()
# How often a passive `recv` looks up from the pipe to see whether its process was killed.
_RECV_SLICE = 0.1


class PortError(Exception):
    """Something went wrong with a port; carries the last lines the subprocess wrote to stderr."""

    def __init__(
        self,
        message: str,
        *,
        port: str | None = None,
        os_pid: int | None = None,
        status: int | None = None,
        stderr_tail: Sequence[str] = (),
    ) -> None:
        self.message = message
        self.port = port
        self.os_pid = os_pid
        self.status = status
        self.stderr_tail = list(stderr_tail)
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f" [port {self.port}, os pid {self.os_pid}]" if self.port else ""
        text = f"{self.message}{where}"
        if self.status is not None:
            text += f" (exit status {self.status})"
        if self.stderr_tail:
            text += "\n--- last stderr lines ---\n" + "\n".join(self.stderr_tail)
        return text


class PortClosed(PortError):
    """The port is closed or its subprocess has exited."""


class PortTimeout(PortError):
    """A passive `recv` saw no frame within its timeout."""


@attrs.frozen(eq=False)
class PortData:
    """One frame from the subprocess (active mode)."""

    port: Port
    data: bytes


@attrs.frozen(eq=False)
class PortExit:
    """The port is gone: the subprocess exited with `status` (negative: killed by that signal),
    or the port was killed because of `error` (a `PortError`). Always the port's last message."""

    port: Port
    status: int | None
    error: PortError | None = None

    def as_error(self, what: str, kind: type[PortError] | None = None) -> PortError:
        """The error this exit stands for: the port's own `error`, else ``kind("{what}
        exited")`` (default `PortClosed`) with the status and the stderr tail."""
        if self.error is not None:
            return self.error
        port = self.port
        return (kind or PortClosed)(
            f"{what} exited", port=port.name, os_pid=port.os_pid, status=self.status,
            stderr_tail=port.stderr_tail,
        )


@attrs.frozen(eq=False)
class PortStderr:
    """One line the subprocess wrote to stderr (``stderr="pipe"``)."""

    port: Port
    line: str


@attrs.frozen
class PortInfo:
    """A snapshot of a port (``port.info()``)."""

    name: str
    os_pid: int
    owner: otp.Pid
    active: bool
    alive: bool
    closed: bool
    status: int | None
    bytes_in: int
    bytes_out: int


class Port:
    """A subprocess owned by a process. Create with `Port.open`."""

    def __init__(self) -> None:  # use Port.open
        raise TypeError("use Port.open(argv, ...) to start a port")

    # -- opening -------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        argv: Sequence[str],
        *,
        packet: int | str = 4,
        exit_status: bool = True,
        stderr: str = "log",
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        name: str | None = None,
        max_frame: int = 64 * 1024 * 1024,
        stderr_lines: int = 50,
        close_timeout: float = 2.0,
        active: bool = True,
        tags: dict[str, Any] | None = None,
        pass_fds: Sequence[int] = (),
        spawn: Callable[[Any], Any] | None = None,
    ) -> Port:
        """Start `argv` as a subprocess owned by the calling process.

        `pass_fds` are kept open in the child (as `subprocess.Popen`'s). `spawn` starts the
        child some other way, such as a fork of a warm zygote (`bridge.zygote_actor`): it is
        called with the stderr target (``subprocess.PIPE``, ``STDOUT``, ``DEVNULL`` or None)
        and returns a handle like a `subprocess.Popen`'s (``pid``, ``stdin``, ``stdout``,
        ``stderr``, ``wait(timeout)``) for a child that has those pipes; `argv` then only names
        the port.

        Raises `ValueError` for bad options (``stderr="merge"`` with a packet mode, an unknown
        framing) and `PortError` if the program cannot be started.
        """
        _check_options(argv, packet, stderr)
        owner = otp.self()
        self = object.__new__(cls)
        self._init_fields(list(argv), packet, exit_status, stderr, name, max_frame, stderr_lines, close_timeout, active, tags)
        self._owner = owner
        stderr_target = {
            "log": subprocess.PIPE, "pipe": subprocess.PIPE, "merge": subprocess.STDOUT,
            "inherit": None, "devnull": subprocess.DEVNULL,
        }[stderr]
        try:
            if spawn is None:
                child_env = dict(os.environ if env is None else env)
                child_env["THREADOTP_PARENT_PID"] = str(os.getpid())
                popen = service().spawn(
                    self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr_target,
                    env=child_env, cwd=cwd, bufsize=0, close_fds=True, process_group=0,
                    pass_fds=tuple(pass_fds),
                )
            else:
                popen = spawn(stderr_target)
        except OSError as exc:
            raise PortError(f"cannot start {self.argv[0]!r}: {exc}") from exc
        self._popen = popen
        self.os_pid = popen.pid
        assert popen.stdin is not None and popen.stdout is not None
        self._stdin = popen.stdin
        self._stdout = popen.stdout
        self._stderr = popen.stderr
        # Non-blocking, so the loop thread and a passive owner can never block on an empty pipe,
        # and a writer never blocks on a full one while it holds the lock (see `command`).
        self._stdin_fd = self._stdin.fileno()
        self._stdout_fd = self._stdout.fileno()
        os.set_blocking(self._stdout_fd, False)
        os.set_blocking(self._stdin_fd, False)
        try:
            self._pidfd = _pidfd_of(popen)
        except OSError as exc:
            _abandon(popen)
            raise PortError(f"cannot watch {self.argv[0]!r} (os pid {popen.pid}): {exc}", port=self.name) from exc
        io = service()
        io.watch(self._pidfd, self._on_child_exit)
        if self._stderr is not None:
            io.watch(self._stderr.fileno(), self._on_stderr)
        if active:
            self._watching = True
            io.watch(self._stdout_fd, self._on_stdout)
        if not otp.add_death_hook(owner, self._death_hook):
            # The owner died while the port opened: close as its death would have, through the
            # watches above, which see the child through to its end.
            self.close()
            raise PortError("port owner died while the port was opening", port=self.name, os_pid=self.os_pid)
        return self

    def _init_fields(
        self, argv: list[str], packet: int | str, exit_status: bool, stderr: str, name: str | None,
        max_frame: int, stderr_lines: int, close_timeout: float, active: bool, tags: dict[str, Any] | None,
    ) -> None:
        with _names_lock:
            number = next(_names)
        self.argv = argv
        self.name = name or f"{os.path.basename(argv[0])}#{number}"
        self.packet = packet
        self.tags = dict(tags or {})
        self._exit_status = exit_status
        self._stderr_mode = stderr
        self._close_timeout = close_timeout
        self._encode = make_encoder(packet)
        self._decoder = make_decoder(packet, max_frame)
        # Guarded by _lock: owner, active, pending, closed, eof, status, counters, failure,
        # in_recv, finishing.
        self._lock = threading.Lock()
        # Held across read + decode, so frames keep their order when the loop thread and a
        # passive owner both read. Ranks above _lock.
        self._read_lock = threading.Lock()
        # Held by a writer for a whole frame, so frames from several threads never interleave.
        # Ranks above _lock (never taken with _lock or _read_lock held).
        self._write_lock = threading.Lock()
        self._in_recv = False  # the owner is blocked in a passive recv
        # One bound method for every add/remove: no allocation per connect, and the hook
        # lists find it by identity.
        self._death_hook = self._owner_died
        self._finishing = False
        self._stderr_eof = False
        self._owner: otp.Pid
        self._active = active
        self._watching = False  # loop thread only: is stdout registered with the selector
        self._pending: deque[bytes] = deque()  # frames read but not yet delivered (passive)
        self._closed = False
        self._eof = False
        self._reaped = False
        self._finished = threading.Event()  # reaped and every fd closed
        self._status: int | None = None
        self._failure: PortError | None = None
        self._stderr_tail: deque[str] = deque(maxlen=stderr_lines)
        self._stderr_partial = b""
        self.bytes_in = 0
        self.bytes_out = 0

    def __repr__(self) -> str:
        return f"#Port<{self.name} os_pid={getattr(self, 'os_pid', '?')}>"

    # -- commands from any thread ----------------------------------------------------------------

    def command(self, data: bytes) -> None:
        """Write one frame to the subprocess's stdin; frames from several threads never mix.

        Raises `FrameTooLarge` (a `ValueError`) for data beyond the packet size, and
        `PortClosed` if the port is closed or the subprocess is gone. A frame the pipe cannot
        take at once is written as the subprocess reads it (checking every 0.1 s that the
        calling process was not killed meanwhile).
        """
        frame = self._encode(data if data.__class__ is bytes else bytes(data))
        # One writer at a time, for a whole frame (a big one takes several writes); waiting in
        # slices, so that a writer stuck behind a child that does not read can still be killed.
        wlock = self._write_lock
        if not wlock.acquire(False):
            while not wlock.acquire(timeout=_RECV_SLICE):
                otp.self()
        try:
            written = self._write_some(frame)  # a small frame fits in one write
            if written == len(frame):
                return
            if written is None:
                raise self._error(PortClosed, "command on a closed port")
            if isinstance(written, OSError):
                raise self._error(PortClosed, f"the subprocess is gone ({written.__class__.__name__})")
            self._write_rest(memoryview(frame)[written:])
        finally:
            wlock.release()

    def _write_some(self, data: bytes | memoryview) -> int | OSError | None:
        """One non-blocking write: the bytes written (0 when the pipe is full), None when the
        port is closed, or the error the write raised.

        The write happens under the lock, and stdin is closed only after `_closed` was set under
        it: a write can never reach a closed fd, or a number the OS has reused since. The pipe
        is non-blocking, so the lock is never held waiting for the reader.
        """
        with self._lock:
            if self._closed:
                return None
            try:
                written = os.write(self._stdin_fd, data)
            except BlockingIOError:
                return 0
            except OSError as exc:
                return exc
            self.bytes_out += written
            return written

    def _write_rest(self, rest: memoryview) -> None:
        poller = select.poll()
        poller.register(self._stdin_fd, select.POLLOUT)
        while rest:
            poller.poll(_RECV_SLICE * 1000)
            otp.self()  # raises in a process that was killed meanwhile
            written = self._write_some(rest)
            if written is None or isinstance(written, OSError):
                raise self._error(PortClosed, "the subprocess is gone while a frame was being written")
            rest = rest[written:]

    def connect(self, pid: otp.Pid) -> bool:
        """Make `pid` the owner. Raises `PortError` if `pid` is dead (the owner is unchanged).

        Returns whether the subprocess is still running: False in the moment between its exit
        and the port's closing, when its `PortExit` may already be in the previous owner's
        mailbox. A closed port raises `PortClosed`.
        """
        problem = None
        with self._lock:
            old = self._owner
            if self._closed:
                problem = (PortClosed, f"connect({pid!r}) on a closed port")
            elif pid is old or pid == old:
                return not self._reaped
            # The death hook moves with ownership in one step: whichever of the two owners dies,
            # the port is closed exactly when its *current* owner is dead.
            elif not otp.move_death_hook(old, pid, self._death_hook):
                problem = (PortError, f"connect: process {pid!r} is dead; the port stays with {old!r}")
            else:
                self._owner = pid
                return not self._reaped
        raise self._error(*problem)

    def set_active(self, active: bool) -> None:
        """Switch between active (frames as messages) and passive (`recv`) mode."""
        with self._lock:
            if self._active == active:
                return
            self._active = active
            if active:
                owner = self._owner
                while self._pending:
                    otp.post(owner, PortData(self, self._pending.popleft()))
        if active:
            service().call_soon(self._watch_stdout)
        else:
            service().call_soon(self._unwatch_stdout)

    def recv(self, timeout: float | None = 5.0, spin: float = 0.0) -> bytes:
        """Passive mode: the next frame, read in the caller's thread.

        With `spin` (seconds), keeps looking for that long before it blocks, as the BEAM's
        schedulers busy-wait: a frame that comes within it spares the sleep and the wake-up,
        which on a VM cost more than the look. Raises `PortTimeout` after `timeout` seconds,
        `PortClosed` when the subprocess has exited (with its status and stderr tail), and the
        process's exit if it is killed while waiting (checked every 0.1 s).
        """
        # The reply is often in the pipe already (the worker ran while we wrote): one look,
        # without setting up a wait, before the general loop.
        frame = self._recv_ready()
        if frame is not None:
            return frame
        deadline = None if timeout is None else time.monotonic() + timeout
        if spin > 0:  # part of the wait, not on top of it
            until = time.perf_counter() + (spin if timeout is None else min(spin, timeout))
            while time.perf_counter() < until:
                os.sched_yield()  # a worker on this CPU runs now, not after our spin
                frame = self._recv_ready()
                if frame is not None:
                    return frame
        try:
            return self._recv_loop(deadline, timeout)
        except BaseException:
            with self._lock:
                self._in_recv = False
            raise

    def _recv_ready(self) -> bytes | None:
        """A frame that is pending or already in the pipe, else None (the loop decides why)."""
        with self._read_lock, self._lock:
            if self._active or self._failure is not None:
                return None
            pending = self._pending
            if not pending:
                if self._eof or self._closed:
                    return None
                try:  # non-blocking: holding the locks costs no wait
                    data = os.read(self._stdout_fd, 65536)
                except (BlockingIOError, InterruptedError):
                    return None
                except (OSError, ValueError):
                    return None
                if not data or not self._absorb_locked(data, deliver=False):
                    return None  # EOF stays readable: the loop's read handles it
            if pending:
                return pending.popleft()
        return None

    def _recv_loop(self, deadline: float | None, timeout: float | None) -> bytes:
        # `_in_recv` is set and cleared in the same critical sections that look for a frame
        # (one lock round per look, not three): it is True exactly while we may block.
        poller: select.poll | None = None
        lock = self._lock
        while True:
            with lock:
                if self._active:
                    raise PortError("recv on an active port: call set_active(False) first", port=self.name)
                if self._pending:
                    self._in_recv = False
                    return self._pending.popleft()
                if self._failure is not None:
                    raise self._failure
                if self._eof or self._closed:
                    self._in_recv = True  # cleared when the PortClosed below is raised
                    break
                self._in_recv = True
            otp.self()  # raises in a process that was killed meanwhile
            left = _RECV_SLICE if deadline is None else min(_RECV_SLICE, deadline - time.monotonic())
            if left <= 0:
                raise self._error(PortTimeout, f"no frame within {timeout} s")
            if poller is None:
                poller = select.poll()
                with self._read_lock:
                    if self._stdout.closed:  # closed by the loop thread since we looked
                        break
                    poller.register(self._stdout_fd, select.POLLIN | select.POLLHUP | select.POLLERR)
            if poller.poll(left * 1000):
                self._read_stdout(deliver=False)
        self._finished.wait(self._close_timeout)
        raise self._error(PortClosed, "the subprocess has exited")

    def close(self) -> None:
        """Close the port: stdin EOF now, SIGTERM after `close_timeout`, then SIGKILL.

        Returns at once; no message from the port reaches the owner afterwards. Idempotent.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            owner = self._owner
        otp.remove_death_hook(owner, self._death_hook)
        try:
            self._stdin.close()
        except OSError:
            pass
        io = service()
        io.call_soon(self._watch_stdout)  # keep draining so the child never blocks on a full pipe
        io.call_later(self._close_timeout, lambda: self._signal(signal.SIGTERM))
        io.call_later(2 * self._close_timeout, lambda: self._signal(signal.SIGKILL))

    def kill(self) -> None:
        """SIGKILL the subprocess now (chaos tests, a hung call); the port then closes."""
        self._signal(signal.SIGKILL)

    def wait_closed(self, timeout: float | None = None) -> bool:
        """Wait until the child is reaped and every fd is closed."""
        return self._finished.wait(timeout)

    # -- observation -----------------------------------------------------------------------------

    @property
    def owner(self) -> otp.Pid:
        with self._lock:
            return self._owner

    @property
    def stderr_tail(self) -> list[str]:
        with self._lock:
            return list(self._stderr_tail)

    @property
    def alive(self) -> bool:
        with self._lock:
            return not self._reaped

    def info(self) -> PortInfo:
        with self._lock:
            return PortInfo(
                name=self.name, os_pid=self.os_pid, owner=self._owner, active=self._active,
                alive=not self._reaped, closed=self._closed, status=self._status,
                bytes_in=self.bytes_in, bytes_out=self.bytes_out,
            )

    def _error(self, kind: type[PortError], message: str) -> PortError:
        """Build an error carrying the stderr tail. Never call with `_lock` held."""
        with self._lock:
            tail, status = list(self._stderr_tail), self._status
        return kind(message, port=self.name, os_pid=self.os_pid, status=status, stderr_tail=tail)

    # -- loop-thread callbacks -------------------------------------------------------------------

    def _watch_stdout(self) -> None:
        if not self._watching and not self._eof:
            self._watching = True
            service().watch(self._stdout.fileno(), self._on_stdout)

    def _unwatch_stdout(self) -> None:
        with self._lock:
            still_passive = not self._active and not self._closed
        if self._watching and still_passive:
            self._watching = False
            service().unwatch_now(self._stdout.fileno())

    def _on_stdout(self) -> None:
        with self._lock:
            passive = not self._active and not self._closed
        if passive:
            # Switched to passive after this wake-up was queued: the owner reads now.
            self._unwatch_stdout()
            return
        self._read_stdout(deliver=True)

    def _read_stdout(self, *, deliver: bool) -> bool:
        """Read what is there and decode it. Runs on the loop thread, or in a passive owner.

        True when data was read and more may follow; False on an empty pipe, EOF or a closed port.
        """
        with self._read_lock:
            if self._stdout.closed:
                return False  # fds are closed under this lock: never read a number reused since
            try:
                data = os.read(self._stdout_fd, 65536)
            except (BlockingIOError, InterruptedError):
                return False
            except (OSError, ValueError):
                data = b""
            with self._lock:
                if not self._absorb_locked(data, deliver):
                    return False
        if not data:
            service().call_soon(self._after_eof)
        return bool(data)

    def _absorb_locked(self, data: bytes, deliver: bool) -> bool:
        """Decode `data` (b"" is EOF): frames go to an active owner's mailbox when `deliver`,
        else to the pending queue. False if the port was past reading, or the data was bad
        (the port is then killed). Caller holds `_read_lock` and `_lock`."""
        if self._eof:
            return False
        try:
            if data:
                self.bytes_in += len(data)
                frames = self._decoder.feed(data)
            else:
                self._eof = True
                frames = self._decoder.eof()
        except FramingError as exc:
            self._fail_locked(f"bad data from the subprocess: {exc}")
            return False
        if self._closed:
            return True
        if deliver and self._active:
            owner = self._owner
            for frame in frames:
                otp.post(owner, PortData(self, frame))
        else:
            self._pending.extend(frames)
        return True

    def _after_eof(self) -> None:
        if self._watching:
            self._watching = False
            service().unwatch_now(self._stdout.fileno())
        self._maybe_finish()

    def _fail_locked(self, message: str) -> None:
        error = PortError(message, port=self.name, os_pid=self.os_pid, stderr_tail=list(self._stderr_tail))
        self._failure = error
        if not self._closed:
            otp.post(self._owner, PortExit(self, None, error))
        self._eof = True
        logger.bind(port=self.name, **self.tags).error("port killed: {error}", error=error)
        service().call_soon(self._kill_after_failure)

    def _kill_after_failure(self) -> None:
        with self._lock:
            already = self._closed
            self._closed = True
        if not already:
            try:
                self._stdin.close()
            except OSError:
                pass
        if self._watching:
            self._watching = False
            service().unwatch_now(self._stdout.fileno())
        self._signal(signal.SIGKILL)

    def _on_stderr(self) -> None:
        assert self._stderr is not None
        fd = self._stderr.fileno()
        try:
            data = os.read(fd, 65536)
        except (BlockingIOError, InterruptedError):
            return
        except (OSError, ValueError):
            data = b""
        if not data:
            service().unwatch_now(fd)
            lines = [self._stderr_partial] if self._stderr_partial else []
            self._stderr_partial = b""
            with self._lock:
                self._stderr_eof = True
        else:
            chunk = self._stderr_partial + data
            *lines, self._stderr_partial = chunk.split(b"\n")
            if len(self._stderr_partial) > 65536:  # a "line" without end: cut it
                lines.append(self._stderr_partial)
                self._stderr_partial = b""
        for raw in lines:
            self._stderr_line(raw.decode("utf-8", "replace").rstrip("\r"))
        if not data:
            self._maybe_finish()

    def _stderr_line(self, line: str) -> None:
        with self._lock:
            self._stderr_tail.append(line)
            owner = self._owner
        if self._stderr_mode == "pipe":
            otp.post(owner, PortStderr(self, line))
        else:
            logger.bind(port=self.name, os_pid=self.os_pid, **self.tags).info(
                "[{port} stderr] {line}", port=self.name, line=line
            )

    def _on_child_exit(self) -> None:
        service().unwatch_now(self._pidfd)
        try:
            status = self._popen.wait(0)
        except subprocess.TimeoutExpired:
            # Exited, but its status is not known yet: a zygote's child, whose status comes
            # from the zygote that reaps it. Ask again as soon as it is known.
            notify = getattr(self._popen, "notify_exit", None)
            if notify is not None:
                notify(lambda: service().call_soon(self._on_child_exit))
            else:
                service().call_later(0.001, self._on_child_exit)
            return
        with self._lock:
            self._status = status
            self._reaped = True
            passive = not self._active
        if passive:
            # Nobody watches a passive port's stdout: read what the child left, up to its EOF,
            # so that the exit is reported now rather than after close_timeout.
            while self._read_stdout(deliver=False):
                pass

        # A grandchild may hold stdout open: do not wait for an EOF that never comes.
        service().call_later(self._close_timeout, lambda: self._maybe_finish(force=True))
        self._maybe_finish()

    def _maybe_finish(self, force: bool = False) -> None:
        """Once the child is reaped and its pipes drained: the final PortExit, then close fds.

        Loop thread only. An owner blocked in a passive `recv` is not sent PortExit: its `recv`
        raises PortClosed instead. Any other owner, active or passive, gets the message.
        """
        with self._lock:
            if self._finishing or not self._reaped:
                return
            stderr_done = self._stderr is None or self._stderr_eof
            if not force and not ((self._eof or self._closed) and stderr_done):
                return
            self._finishing = True
            report = not self._closed and self._exit_status and self._failure is None
            if report and self._in_recv:
                report = False  # the passive owner's recv raises PortClosed instead
            self._closed = True
            self._eof = True
            owner, status = self._owner, self._status
        if report:
            otp.post(owner, PortExit(self, status))
        otp.remove_death_hook(owner, self._death_hook)
        io = service()
        for stream in (self._stdout, self._stderr):
            if stream is not None and not stream.closed:
                io.unwatch_now(stream.fileno())
        self._watching = False
        with self._read_lock:
            for stream in (self._stdin, self._stdout, self._stderr):
                try:
                    if stream is not None:
                        stream.close()
                except OSError:
                    pass
        try:
            os.close(self._pidfd)
        except OSError:
            pass
        self._finished.set()

    def _signal(self, sig: int) -> None:
        # Through the pidfd, under the lock that `_maybe_finish` closes it after: never a
        # signal to another process that got the pid since (a zygote's child is reaped by
        # the zygote, before we hear of its exit).
        with self._lock:
            if self._reaped or self._finishing:
                return
            try:
                signal.pidfd_send_signal(self._pidfd, sig)
            except OSError:  # gone already (or the stand-in eventfd): nothing to signal
                pass

    def _owner_died(self, pid: otp.Pid, reason: Any) -> None:
        with self._lock:
            if pid != self._owner:
                return  # ownership moved on before this hook ran
        self.close()


def _pidfd_of(popen: Any) -> int:
    """A pidfd for the child: the one its starter opened (a zygote, before it could reap it),
    else a new one."""
    pidfd = getattr(popen, "pidfd", None)
    if pidfd is not None and pidfd >= 0:
        popen.pidfd = -1  # the port's now: it closes it when it finishes
        return pidfd  # type: ignore[no-any-return]
    try:
        return os.pidfd_open(popen.pid)
    except ProcessLookupError:
        # Reaped already by someone else: a readable eventfd stands in for its pidfd, and its
        # status comes from `wait` as usual.
        return os.eventfd(1, os.EFD_CLOEXEC)


def _abandon(popen: Any) -> None:
    """A child the port could not take on: close its pipes (EOF) and, if it is ours, kill and
    reap it."""
    for stream in (popen.stdin, popen.stdout, popen.stderr):
        if stream is not None:
            stream.close()
    if isinstance(popen, subprocess.Popen):
        popen.kill()
        popen.wait()


def _check_options(argv: Sequence[str], packet: int | str, stderr: str) -> None:
    if isinstance(argv, str) or not argv or not all(isinstance(a, str) for a in argv):
        raise ValueError(f"argv must be a non-empty list of strings, got {argv!r}")
    if packet not in (1, 2, 4, "line", "raw"):
        raise ValueError(f"packet must be 1, 2, 4, 'line' or 'raw', got {packet!r}")
    if stderr not in _STDERR_MODES:
        raise ValueError(f"stderr must be one of {', '.join(_STDERR_MODES)}, got {stderr!r}")
    if stderr == "merge" and packet in (1, 2, 4):
        raise ValueError(
            f"stderr='merge' with packet={packet} would interleave stderr text with length-prefixed "
            "frames and corrupt them; use stderr='log' (default) or 'pipe'"
        )
