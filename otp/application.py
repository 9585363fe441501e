"""The application entry point: run a supervision tree from a script until Ctrl-C.

`run` starts a top-level supervisor from the main thread, blocks until it exits, stops the whole
tree in order (children in reverse start order, subtree by subtree) on SIGINT or SIGTERM, and
returns a process exit status: 0 when the tree was stopped on request (or exited ``normal``),
1 when it died on its own — typically its restart intensity was exceeded — or failed to start.

A complete program::

    import sys
    import otp

    class Ticker(otp.GenServer):
        def init(self, every):
            return ("ok", every, every)      # a "timeout" message every `every` seconds
        def handle_info(self, msg, every):
            print("tick", flush=True)
            return ("noreply", every, every)

    if __name__ == "__main__":
        sys.exit(otp.run([(Ticker, 1.0)]))

Press Ctrl-C: the tree stops in order and the script exits with status 0. A second Ctrl-C
during the shutdown kills the tree at once (status 1).

How it works, and why: the main thread becomes a process that starts the root supervisor
linked to it and traps exits, so the root sees its parent ask it to stop — exactly how OTP's
application master stops an application. A Python signal handler may run at any bytecode of
the main thread, even while it holds a runtime lock, so the handler only hands the signal to a
small listener process (`otp.post` takes only the listener's lock, which the main thread never
holds); the listener forwards it to the main thread as an ordinary message.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from types import FrameType
from typing import Any

import attrs
from loguru import logger

from otp._api import exit as _exit_signal
from otp._api import monitor, post, receive, send, spawn, trap_exit, unlink
from otp._api import self as _self
from otp._clock import Clock
from otp._errors import StartError
from otp._terms import TIMEOUT, Down, Exit, Pid
from otp.supervisor import ChildSpec, InvalidChildSpec, child_spec
from otp.supervisor import start_link as _supervisor_start_link

__all__ = ["run"]

# How often the main thread wakes up while it waits. Linux delivers a process-directed signal to
# the main thread, which interrupts its wait at once; if the signal lands on another thread, the
# Python handler still runs at the main thread's next bytecode, at most this long after.
_WAKE_EVERY = 0.5


@attrs.frozen
class _Signal:
    signum: int


def _listener(main: Pid) -> None:
    while True:
        msg = receive()
        if msg == "stop":
            return
        send(main, msg)


def run(
    tree: Sequence[Any] | ChildSpec | dict[str, Any] | Callable[[], Pid],
    *,
    strategy: str = "one_for_one",
    max_restarts: int = 3,
    max_seconds: float = 5,
    name: Any = None,
    clock: Clock | None = None,
    shutdown_timeout: float | None = None,
    signals: Sequence[int] = (signal.SIGINT, signal.SIGTERM),
) -> int:
    """Run `tree` until it exits or a signal stops it; returns 0 or 1 for ``sys.exit``.

    `tree` is a list of child specs (the root is then a `Supervisor` with the given strategy
    and intensity), the child spec of a root (``otp.Supervisor.spec(...)``,
    ``otp.DynamicSupervisor.spec(...)``), or a function that starts the root linked to the
    caller and returns its pid.

    On the first signal in `signals` the root is asked to stop (``shutdown`` from its parent);
    after `shutdown_timeout` seconds (None: no limit) or on a second signal it is killed.

    Returns 0 if the tree stopped because it was asked to or exited ``normal``; 1 if it died
    on its own (any other reason, including ``shutdown`` after its restart intensity was
    exceeded), was killed, or failed to start (the error is logged).

    Raises RuntimeError outside the main thread: only the main thread may install signal
    handlers.
    """
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("otp.run must be called from the main thread (it installs signal handlers)")
    main = _self()
    was_trapping = trap_exit(True)
    listener = spawn(_listener, main)
    previous = _install(signals, listener)
    try:
        try:
            root = _start_root(tree, strategy, max_restarts, max_seconds, name, clock)
        except StartError as exc:
            logger.error("application failed to start: {reason!r}", reason=exc.reason)
            return 1
        logger.info("application started: root {root}", root=root)
        return _wait(root, shutdown_timeout)
    finally:
        _restore(previous)
        send(listener, "stop")
        trap_exit(was_trapping)


def _start_root(tree: Any, strategy: str, max_restarts: int, max_seconds: float, name: Any,
                clock: Clock | None) -> Pid:
    if isinstance(tree, (ChildSpec, dict)):
        try:
            fn, args = child_spec(tree).start
        except InvalidChildSpec as exc:
            raise StartError(("bad_root", exc.reason)) from None
        tree = partial(fn, *args)
    if callable(tree):
        pid = tree()
        if not isinstance(pid, Pid):
            raise StartError(("bad_root", pid))
        return pid
    return _supervisor_start_link(
        tree, strategy=strategy, max_restarts=max_restarts, max_seconds=max_seconds, name=name,
        clock=clock,
    )


def _wait(root: Pid, shutdown_timeout: float | None) -> int:
    ref = monitor(root)
    asked_at: float | None = None
    killed = False
    while True:
        msg = receive(lambda m: m.__class__ is _Signal or (m.__class__ is Down and m.ref == ref),
                      timeout=_WAKE_EVERY)
        if msg.__class__ is Down:
            break
        if msg.__class__ is _Signal:
            name = signal.Signals(msg.signum).name
            if asked_at is None:
                logger.info("{signal}: stopping the application", signal=name)
                asked_at = time.monotonic()
                _exit_signal(root, "shutdown")  # from its parent: the root stops its tree in order
            elif not killed:
                logger.warning("{signal} again: killing the application", signal=name)
                _exit_signal(root, "kill")
                killed = True
        elif asked_at is not None and not killed and shutdown_timeout is not None \
                and time.monotonic() - asked_at >= shutdown_timeout:
            logger.warning("the application did not stop within {t}s: killing it", t=shutdown_timeout)
            _exit_signal(root, "kill")
            killed = True
    # The Exit from the link carries the real reason even if the root died before we could
    # monitor it (the Down then says noproc); unlinking first makes sure it has arrived.
    unlink(root)
    echo = receive(lambda m: m.__class__ is Exit and m.pid == root, timeout=0)
    reason = msg.reason if echo is TIMEOUT else echo.reason
    clean = reason == "normal" or (asked_at is not None and not killed and reason == "shutdown")
    log = logger.info if clean else logger.error
    log("application stopped: root {root} exited with {reason!r}", root=root, reason=reason)
    return 0 if clean else 1


_Handler = Callable[[int, FrameType | None], Any] | int | None


def _install(signals: Sequence[int], listener: Pid) -> list[tuple[int, _Handler]]:
    def handler(signum: int, frame: FrameType | None) -> None:
        # Runs in the main thread between any two bytecodes: touch no lock the main thread
        # may hold. post() takes only the listener's mailbox lock.
        post(listener, _Signal(signum))

    previous = []
    for signum in signals:
        previous.append((signum, signal.getsignal(signum)))
        signal.signal(signum, handler)
    return previous


def _restore(previous: list[tuple[int, _Handler]]) -> None:
    for signum, handler in previous:
        signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
