"""The worker actor: one process that owns one worker subprocess's port.

It opens the port, completes the first ping (readiness), watches the subprocess while idle (the
subprocess's exit arrives as a `PortExit` at once and stops the actor), answers health pings and
shuts the subprocess down cleanly: an explicit ``shutdown`` frame, then stdin EOF, SIGTERM and
SIGKILL. Clients use the port directly for their calls (no hop through this actor): the shared
`WorkerHandle` carries the port and a lock that makes a call and a health ping mutually
exclusive.

>>> import otp
>>> from bridge.worker_actor import WorkerActor, WorkerConfig, worker_argv
>>> actor = WorkerActor.start(WorkerConfig("w1", worker_argv(["bridge.examples"], "w1")))
>>> handle = WorkerActor.await_ready(actor, timeout=10)
>>> handle.call("add", [1, 2])
3
>>> otp.stop(actor)
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import attrs
from loguru import logger

import otp
from bridge.codec import DEFAULT_CODEC, Codec, get_codec
from bridge.port import Port, PortClosed, PortError, PortExit, PortTimeout
from bridge.protocol import WorkerError, request
from bridge.zygote_actor import ZygoteActor

__all__ = ["WorkerActor", "WorkerConfig", "WorkerHandle", "WorkerInitError", "worker_argv"]


class WorkerInitError(PortError):
    """The worker subprocess did not become ready: it exited, timed out, or spoke garbage."""


def worker_argv(
    handlers: Sequence[str], worker_id: str, codec: str = DEFAULT_CODEC, python: str | None = None,
    spin: float = 0.0,
) -> list[str]:
    """The command line of the worker program, on this interpreter (never `python3` from PATH).

    `spin`: seconds the worker looks for its next request after each reply before it blocks.
    """
    argv = [python or sys.executable, "-m", "bridge.worker", "--worker-id", worker_id, "--codec", codec]
    for module in handlers:
        argv += ["--handler", module]
    if spin > 0:
        argv += ["--spin-us", str(round(spin * 1e6))]
    return argv


@attrs.frozen
class WorkerConfig:
    """How to start one worker subprocess."""

    worker_id: str
    argv: list[str]
    codec: str = DEFAULT_CODEC
    init_timeout: float = 10.0
    ping_timeout: float = 5.0
    close_timeout: float = 2.0
    env: dict[str, str] | None = None
    cwd: str | None = None
    #: A `ZygoteActor` (pid or name) to fork the worker from, instead of starting `argv`.
    zygote: Any = None
    #: Seconds a call keeps looking for its reply before it sleeps (see `Port.recv`).
    reply_spin: float = 0.0


@attrs.define(eq=False)
class WorkerHandle:
    """What a pool hands a client: the actor, its port, and the lock that guards the port.

    `call` runs in the caller's thread: it takes the lock, moves the port to the caller for the
    call (so the caller's death closes it), sends the request, reads the reply and gives the port
    back to the actor.
    """

    worker_id: str
    actor: otp.Pid
    port: Port
    codec: Codec
    lock: threading.Lock = attrs.field(factory=threading.Lock)
    started_at: float = attrs.field(factory=time.monotonic)
    _last_id: int = 0  # of the last request sent; guarded by `lock`
    calls: int = 0
    broken: BaseException | None = None
    reply_spin: float = 0.0  # seconds a call keeps looking for its reply before it sleeps

    def call(
        self,
        command: str,
        args: list[Any] | dict[str, Any] | None = None,
        session_id: Any = None,
        timeout: float | None = 5.0,
        caller: otp.Pid | None = None,
    ) -> Any:
        """One request/reply on this worker, in the caller's thread.

        Raises `WorkerError` for a handler error (the worker stays usable), and `PortTimeout`,
        `PortClosed` or `BadReply` when the worker itself failed (it is marked broken: a pool
        must replace it, since a late reply could otherwise reach the next caller). `caller`
        is the calling process's pid, when the caller has it at hand.
        """
        me = otp.self() if caller is None else caller
        lock = self.lock
        if not lock.acquire(False) and not lock.acquire(timeout=-1 if timeout is None else timeout):
            raise PortTimeout(f"worker {self.worker_id} stayed busy for {timeout} s", port=self.port.name)
        try:
            if self.broken is not None:
                raise PortClosed(f"worker {self.worker_id} is broken: {self.broken}", port=self.port.name)
            port = self.port
            port.connect(me)
            try:
                self._last_id = request_id = self._last_id + 1
                self.calls += 1
                return request(
                    port, self.codec, request_id, command, [] if args is None else args,
                    session_id, timeout, self.worker_id, self.reply_spin,
                )
            except WorkerError:
                raise
            except BaseException as exc:
                self.broken = exc
                raise
            finally:
                self._give_back()
        finally:
            lock.release()

    def _give_back(self) -> None:
        port = self.port
        try:
            running = port.connect(self.actor)
        except PortError as exc:
            # The actor died while we held the port: the worker cannot go back to the pool.
            self.broken = self.broken or exc
            port.close()
            running = port.alive
        if not running:
            # The subprocess died during or right after the call. Its PortExit may have come to
            # us (drop it) rather than to the actor, so the actor may never learn of it: mark
            # the worker broken here, and the pool replaces it at checkin.
            self.broken = self.broken or PortClosed(
                f"worker {self.worker_id} exited", port=port.name, os_pid=port.os_pid,
                status=port.info().status, stderr_tail=port.stderr_tail,
            )
            otp.receive(lambda m: m.__class__ is PortExit and m.port is port, timeout=0)


@attrs.define
class _State:
    config: WorkerConfig
    handle: WorkerHandle | None = None
    waiters: list[otp.From] = attrs.field(factory=list)
    failure: BaseException | None = None


class WorkerActor(otp.GenServer):
    """A GenServer owning one worker subprocess. Runs in its own thread; see the module doc.

    Callbacks (all in the actor's thread): `init` returns at once and the boot happens in
    `handle_continue`, so many actors start in parallel; a boot failure stops the actor with a
    `WorkerInitError` carrying the subprocess's stderr tail, and every `await_ready` caller exits
    with it.
    """

    restart = "temporary"

    def init(self, config: WorkerConfig) -> Any:
        if not isinstance(config, WorkerConfig):
            return ("stop", TypeError(f"WorkerActor expects a WorkerConfig, got {config!r}"))
        otp.trap_exit(True)  # so that a supervisor's shutdown runs terminate (clean port close)
        return ("ok", _State(config), ("continue", "boot"))

    def handle_continue(self, arg: Any, state: _State) -> Any:
        try:
            state.handle = _boot(state.config)
        except WorkerInitError as exc:
            state.failure = exc
            return ("stop", exc, state)
        for waiter in state.waiters:
            otp.reply(waiter, state.handle)
        state.waiters.clear()
        return ("noreply", state)

    def handle_call(self, request: Any, from_: otp.From, state: _State) -> Any:
        match request:
            case "await_ready":
                if state.handle is None:
                    state.waiters.append(from_)
                    return ("noreply", state)
                return ("reply", state.handle, state)
            case "handle":
                return ("reply", state.handle, state)
        return ("reply", ("error", ("unknown_call", request)), state)

    def handle_cast(self, msg: Any, state: _State) -> Any:
        if msg == "health_ping" and state.handle is not None:
            problem = _health_ping(state.handle, state.config.ping_timeout)
            if problem is not None:
                return ("stop", problem, state)
        return ("noreply", state)

    def handle_info(self, msg: Any, state: _State) -> Any:
        handle = state.handle
        if msg.__class__ is PortExit and handle is not None and msg.port is handle.port:
            return ("stop", ("worker_exited", msg.as_error(f"worker {handle.worker_id}")), state)
        if msg.__class__ is otp.Exit:
            return ("stop", msg.reason, state)
        return ("noreply", state)  # unrelated messages never confuse the actor

    def terminate(self, reason: Any, state: _State) -> None:
        if state.handle is not None:
            _shutdown(state.handle, state.config.close_timeout)

    # -- client helpers -------------------------------------------------------------------------

    @staticmethod
    def await_ready(actor: otp.Pid, timeout: float | None = 10.0) -> WorkerHandle:
        """Wait until the actor's worker answered its first ping; return its handle.

        Raises `WorkerInitError` (with the worker's stderr) if the boot failed.
        """
        try:
            return otp.call(actor, "await_ready", timeout)  # type: ignore[no-any-return]
        except otp.ProcessExit as exc:
            reason = exc.reason[0] if isinstance(exc.reason, tuple) else exc.reason
            if isinstance(reason, WorkerInitError):
                raise reason from None
            if reason == "timeout":
                raise WorkerInitError(f"worker actor {actor!r} not ready within {timeout} s") from None
            raise WorkerInitError(f"worker actor {actor!r} died before it was ready: {reason!r}") from None


def _boot(config: WorkerConfig) -> WorkerHandle:
    """Open the port and complete the first ping. Passive mode: only this port's bytes matter,
    so unrelated messages arriving meanwhile stay in the mailbox untouched."""
    codec = get_codec(config.codec)
    # One init_timeout for the whole boot: a fork from the zygote, then the first ping.
    deadline = time.monotonic() + config.init_timeout
    spawn = None if config.zygote is None else ZygoteActor.spawner(config.zygote, config.worker_id, config.init_timeout)
    try:
        port = Port.open(
            config.argv, packet=4, active=False, env=config.env, cwd=config.cwd,
            close_timeout=config.close_timeout, name=config.worker_id,
            tags={"worker_id": config.worker_id}, spawn=spawn,
        )
    except PortError as exc:
        raise WorkerInitError(f"cannot start worker {config.worker_id}: {exc.message}") from None
    handle = WorkerHandle(config.worker_id, otp.self(), port, codec, reply_spin=config.reply_spin)
    try:
        request(port, codec, 0, "ping", [], None, max(0.0, deadline - time.monotonic()), config.worker_id)
    except (PortError, WorkerError) as exc:
        port.close()
        port.wait_closed(config.close_timeout * 3)
        message = {
            PortTimeout: f"worker {config.worker_id} did not answer its first ping within {config.init_timeout} s",
            PortClosed: f"worker {config.worker_id} exited during startup",
        }.get(type(exc), f"worker {config.worker_id} failed its first ping: {getattr(exc, 'message', exc)}")
        raise WorkerInitError(
            message, port=port.name, os_pid=port.os_pid, status=port.info().status,
            stderr_tail=port.stderr_tail,
        ) from None
    logger.bind(worker_id=config.worker_id).debug("worker {id} ready (os pid {pid})", id=config.worker_id, pid=port.os_pid)
    return handle


def _health_ping(handle: WorkerHandle, timeout: float) -> BaseException | None:
    if not handle.lock.acquire(blocking=False):
        return None  # a client is using the worker: it is evidently alive
    try:
        if handle.broken is not None:
            return handle.broken
        handle._last_id = request_id = handle._last_id + 1
        request(handle.port, handle.codec, request_id, "ping", [], None, timeout, handle.worker_id)
        return None
    except (PortError, WorkerError) as exc:
        handle.broken = exc
        return exc
    finally:
        handle.lock.release()


def _shutdown(handle: WorkerHandle, close_timeout: float) -> None:
    """The explicit shutdown frame, then close (EOF, SIGTERM, SIGKILL); wait a bounded time."""
    port = handle.port
    if handle.lock.acquire(timeout=close_timeout):
        try:
            if handle.broken is None and port.alive:
                try:
                    port.command(handle.codec.encode({"id": None, "command": "shutdown", "args": []}))
                except PortError:
                    pass
        finally:
            handle.lock.release()
    port.close()
    port.wait_closed(close_timeout * 3)
