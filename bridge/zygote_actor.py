"""The zygote actor: one process that owns a zygote (`bridge.zygote`) and forks workers from it.

A worker started this way answers its first ping about 2.5 ms after the request, against the
~28 ms a fresh interpreter needs (on our development VM), so a pool starts, and recovers from a
crash, that much sooner. The actor opens the zygote as a port (its stderr logged, its lifetime
tied to the actor's), hands each new worker's pipes to it over a Unix socket, and turns the
zygote's reports into the exit statuses of the workers it forked. `spawner` gives `Port.open`
what it needs to start a worker this way:

>>> import otp
>>> from bridge.codec import get_codec
>>> from bridge.port import Port
>>> from bridge.protocol import request
>>> from bridge.zygote_actor import ZygoteActor, ZygoteConfig
>>> zygote = ZygoteActor.start(ZygoteConfig("doc", ["bridge.examples"]))
>>> port = Port.open(["doc-w1"], active=False, spawn=ZygoteActor.spawner(zygote, "doc-w1"))
>>> request(port, get_codec("msgpack"), 1, "add", [1, 2])
3
>>> port.close()
>>> otp.stop(zygote)

Workers forked from a zygote share its handler modules, codec, interpreter, environment and
working directory: one zygote per worker configuration. If the zygote dies, its workers die too
(their parent-death signal), so whoever supervises the actor should restart the workers with it.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import attrs

import otp
from bridge.codec import DEFAULT_CODEC
from bridge.port import Port, PortClosed, PortData, PortError, PortExit, PortTimeout

__all__ = ["ZygoteActor", "ZygoteChild", "ZygoteConfig", "ZygoteError"]


class ZygoteError(PortError):
    """The zygote did not start (its stderr tail says why), or could not fork a worker."""


@attrs.frozen
class ZygoteConfig:
    """How to start a zygote: the same handlers, codec, interpreter, env and cwd as its workers."""

    name: str
    handlers: Sequence[str] = ("bridge.examples",)
    codec: str = DEFAULT_CODEC
    python: str | None = None
    env: dict[str, str] | None = None
    cwd: str | None = None
    init_timeout: float = 10.0
    spawn_timeout: float = 5.0
    close_timeout: float = 2.0
    worker_spin: float = 0.0  # the workers' --spin-us (see bridge.worker.serve)

    def argv(self, socket_fd: int) -> list[str]:
        argv = [self.python or sys.executable, "-m", "bridge.zygote", "--socket", str(socket_fd), "--codec", self.codec]
        for module in self.handlers:
            argv += ["--handler", module]
        if self.worker_spin > 0:
            argv += ["--spin-us", str(round(self.worker_spin * 1e6))]
        return argv


class _ExitBox:
    """Where a forked worker's status arrives (from the zygote's report), for any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._exited = threading.Event()
        self.status: int | None = None  # written once, under _lock, before _exited is set
        self._on_exit: list[Callable[[], None]] = []  # guarded by _lock

    def wait(self, timeout: float | None) -> int | None:
        """The status, once it is known within `timeout` seconds; else None."""
        return self.status if self._exited.wait(timeout) else None

    def notify(self, callback: Callable[[], None]) -> None:
        """Call `callback()` once the status is known (now, if it is already)."""
        with self._lock:
            if not self._exited.is_set():
                self._on_exit.append(callback)
                return
        callback()

    def set(self, status: int) -> None:
        with self._lock:
            if self._exited.is_set():
                return
            self.status = status
            self._exited.set()
            callbacks, self._on_exit = self._on_exit, []
        for callback in callbacks:
            callback()


class ZygoteChild:
    """A worker the zygote forked, seen as `Port` sees a `subprocess.Popen`, plus `pidfd`
    (the zygote's, opened before it could reap the worker).

    Its status arrives when the zygote reports reaping it; `wait` reads it from any thread (the
    port's I/O thread asks as soon as the pidfd says the worker exited). A worker whose zygote
    went away first dies of its parent-death signal: its status then reads ``-SIGKILL``. The
    actor keeps only the status box: a child nobody took (its caller gave up) is collected, its
    pipes close, and the worker exits on the EOF.
    """

    def __init__(self, pid: int, pidfd: int, stdin: Any, stdout: Any, stderr: Any, box: _ExitBox) -> None:
        self.pid = pid
        self.pidfd = pidfd
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        self._box = box

    def wait(self, timeout: float | None = None) -> int:
        """The exit status (negative: killed by that signal); `subprocess.TimeoutExpired` if
        the zygote has not reported it within `timeout` seconds."""
        status = self._box.wait(timeout)
        if status is None:
            raise subprocess.TimeoutExpired(f"zygote child {self.pid}", timeout or 0.0)
        return status

    def notify_exit(self, callback: Callable[[], None]) -> None:
        """Call `callback()` once the status is known (now, if it is already)."""
        self._box.notify(callback)

    def __del__(self) -> None:
        # Never handed to a port (its caller gave up): the pidfd is ours to close. A port that
        # took the child took the pidfd too (and set `pidfd` to -1).
        if self.pidfd >= 0:
            try:
                os.close(self.pidfd)
            except OSError:
                pass


class _Children:
    """Status boxes of the workers forked and not yet reported, by the tag of the request that
    forked each (never by pid: a pid can be reused). The actor adds and pops; its death hook,
    which may run in whichever thread killed it, settles the rest: hence the lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_tag: dict[int, _ExitBox] = {}

    def add(self, tag: int) -> _ExitBox:
        box = _ExitBox()
        with self._lock:
            self._by_tag[tag] = box
        return box

    def pop(self, tag: Any) -> _ExitBox | None:
        with self._lock:
            return self._by_tag.pop(tag, None)

    def orphaned(self, _pid: otp.Pid, _reason: Any) -> None:
        """The actor died: nobody will report these workers, and their parent-death signal
        (the zygote goes with its actor) is what ends them."""
        with self._lock:
            rest, self._by_tag = list(self._by_tag.values()), {}
        for box in rest:
            box.set(-signal.SIGKILL)


@attrs.define
class _State:
    config: ZygoteConfig
    port: Port
    sock: socket.socket
    children: _Children
    tags: Any = attrs.field(factory=lambda: itertools.count(1))


_PIPE, _STDOUT, _DEVNULL = subprocess.PIPE, subprocess.STDOUT, subprocess.DEVNULL


class ZygoteActor(otp.GenServer):
    """A GenServer owning one zygote subprocess. Callbacks run in the actor's own thread.

    `init` starts the zygote and waits for its ready frame (a failure, say a handler module
    that does not import, stops the actor with a `ZygoteError` carrying the zygote's stderr);
    ``("spawn", worker_id, stderr)`` forks a worker and replies a `ZygoteChild`; the zygote's
    exit stops the actor with ``("zygote_exited", error)``.
    """

    def init(self, config: ZygoteConfig) -> Any:
        if not isinstance(config, ZygoteConfig):
            return ("stop", TypeError(f"ZygoteActor expects a ZygoteConfig, got {config!r}"))
        otp.trap_exit(True)  # a supervisor's shutdown runs terminate: the zygote closes cleanly
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            port = Port.open(
                config.argv(theirs.fileno()), packet=4, active=False, env=config.env, cwd=config.cwd,
                close_timeout=config.close_timeout, name=f"{config.name}-zygote",
                tags={"zygote": config.name}, pass_fds=[theirs.fileno()],
            )
        except PortError as exc:
            ours.close()
            return ("stop", ZygoteError(f"cannot start zygote {config.name}: {exc.message}"))
        finally:
            theirs.close()
        try:
            ready = json.loads(port.recv(config.init_timeout))
            if not isinstance(ready, dict) or "ready" not in ready:
                raise ValueError(f"expected the ready frame, got {ready!r}")
        except (PortError, ValueError) as exc:
            port.close()
            port.wait_closed(config.close_timeout * 3)
            ours.close()
            what = {PortTimeout: f"did not get ready within {config.init_timeout} s", PortClosed: "exited during startup"}
            return ("stop", ZygoteError(
                f"zygote {config.name} {what.get(type(exc), f'failed to start: {exc}')}",
                port=port.name, os_pid=port.os_pid, status=port.info().status, stderr_tail=port.stderr_tail,
            ))
        port.set_active(True)
        children = _Children()
        otp.add_death_hook(otp.self(), children.orphaned)
        return ("ok", _State(config, port, ours, children))

    def handle_call(self, request: Any, from_: otp.From, state: _State) -> Any:
        match request:
            case ("spawn", worker_id, stderr):
                try:
                    return ("reply", ("ok", self._spawn(state, str(worker_id), stderr)), state)
                except (OSError, ZygoteError) as exc:
                    return ("reply", ("error", exc), state)
        return ("reply", ("error", ("unknown_call", request)), state)

    def _spawn(self, state: _State, worker_id: str, stderr: Any) -> ZygoteChild:
        tag = next(state.tags)
        ours: list[int] = []  # our ends of the worker's pipes: stdin's write end, stdout's read end, stderr's
        theirs: list[int] = []  # its ends, passed to the zygote, then closed here
        try:
            # Each fd goes into its list as soon as it exists, so that a failure closes it.
            stdin_r, stdin_w = os.pipe()
            theirs.append(stdin_r)
            ours.append(stdin_w)
            stdout_r, stdout_w = os.pipe()
            ours.append(stdout_r)
            theirs.append(stdout_w)
            if stderr == _PIPE:
                stderr_r, stderr_w = os.pipe()
                ours.append(stderr_r)
                theirs.append(stderr_w)
            elif stderr == _STDOUT:
                theirs.append(os.dup(stdout_w))
            elif stderr == _DEVNULL:
                theirs.append(os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC))
            else:  # None: inherit ours
                theirs.append(os.dup(2))
            request = json.dumps({"spawn": tag, "worker_id": worker_id}).encode()
            socket.send_fds(state.sock, [request], theirs)
            answer, pidfd = self._await_spawned(state, tag, worker_id)
        except BaseException:
            for fd in ours:
                os.close(fd)
            raise
        finally:
            for fd in theirs:
                os.close(fd)  # the worker has its own copies now (or never will)
        if pidfd is None:
            for fd in ours:
                os.close(fd)
            raise ZygoteError(f"zygote {state.config.name} could not fork {worker_id}: {answer.get('error')}")
        box = state.children.add(tag)
        files = [os.fdopen(ours[0], "wb", buffering=0), os.fdopen(ours[1], "rb", buffering=0)]
        stderr_file = os.fdopen(ours[2], "rb", buffering=0) if len(ours) > 2 else None
        return ZygoteChild(answer["pid"], pidfd, files[0], files[1], stderr_file, box)

    def _await_spawned(self, state: _State, tag: int, worker_id: str) -> tuple[dict[str, Any], int | None]:
        """The zygote's reply to request `tag`, and the new worker's pidfd (None on an error).

        Replies to earlier requests that timed out are dropped on the way (their workers get
        EOF at once: nobody holds their pipes)."""
        timeout = state.config.spawn_timeout
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ZygoteError(f"zygote {state.config.name} did not fork {worker_id} within {timeout} s")
            state.sock.settimeout(left)
            try:
                data, fds, _, _ = socket.recv_fds(state.sock, 4096, 1)
            except TimeoutError:
                continue
            if not data:
                raise ZygoteError(f"zygote {state.config.name} is gone", port=state.port.name,
                                  stderr_tail=state.port.stderr_tail)
            answer = json.loads(data)
            if answer.get("spawned") == tag:
                return answer, (fds[0] if fds else None)
            for fd in fds:
                os.close(fd)

    def _report(self, state: _State, msg: PortData) -> None:
        report = json.loads(msg.data)
        box = state.children.pop(report.get("exited"))
        if box is not None:
            box.set(int(report["status"]))

    def handle_info(self, msg: Any, state: _State) -> Any:
        if msg.__class__ is PortData and msg.port is state.port:
            self._report(state, msg)
            return ("noreply", state)
        if msg.__class__ is PortExit and msg.port is state.port:
            return ("stop", ("zygote_exited", msg.as_error(f"zygote {state.config.name}", ZygoteError)), state)
        if msg.__class__ is otp.Exit:
            return ("stop", msg.reason, state)
        return ("noreply", state)

    def terminate(self, reason: Any, state: _State) -> None:
        # EOF: the zygote exits, and the workers it forked die with it (parent-death signal).
        state.port.close()
        state.port.wait_closed(state.config.close_timeout * 3)
        state.sock.close()

    # -- client helpers -------------------------------------------------------------------------

    @staticmethod
    def spawn(zygote: Any, worker_id: str, stderr: Any = _PIPE, timeout: float = 10.0) -> ZygoteChild:
        """Fork a worker from `zygote` (a pid or a registered name); raises `ZygoteError`."""
        try:
            result = otp.call(zygote, ("spawn", worker_id, stderr), timeout)
        except otp.ProcessExit as exc:
            # The call's own exits, ``(why, ("call", ...))``; anything else is the caller's.
            why = exc.reason[0] if isinstance(exc.reason, tuple) and len(exc.reason) == 2 else None
            if why is None or not (isinstance(exc.reason[1], tuple) and exc.reason[1][:1] == ("call",)):
                raise
            if why == "timeout":
                raise ZygoteError(f"zygote {zygote!r} did not fork {worker_id} within {timeout} s") from None
            raise ZygoteError(f"no zygote to fork {worker_id} from ({zygote!r}: {why!r})") from None
        if result[0] != "ok":
            raise result[1] if isinstance(result[1], BaseException) else ZygoteError(repr(result[1]))
        return result[1]  # type: ignore[no-any-return]

    @staticmethod
    def spawner(zygote: Any, worker_id: str, timeout: float = 10.0) -> Callable[[Any], ZygoteChild]:
        """What `Port.open(spawn=...)` takes, to start worker `worker_id` from `zygote`."""
        return lambda stderr: ZygoteActor.spawn(zygote, worker_id, stderr, timeout)
