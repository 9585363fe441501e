"""DynamicSupervisor: a supervisor that starts with no children and adds them on demand.

Elixir's ``DynamicSupervisor``: children are started one at a time with `start_child`, are all
independent (the only strategy is ``one_for_one``), are known by pid (their ids are ignored), and
are stopped *concurrently* when the supervisor stops, each within its own ``shutdown``.

>>> import otp
>>> sup = otp.DynamicSupervisor.start(max_children=2)
>>> status, pid = otp.DynamicSupervisor.start_child(sup, {"id": "w", "start": (otp.spawn_link, (otp.receive,))})
>>> status, otp.DynamicSupervisor.count_children(sup)["active"]
('ok', 1)
>>> otp.DynamicSupervisor.terminate_child(sup, pid)
'ok'
>>> otp.DynamicSupervisor.stop(sup)

Restarts follow the same table as `otp.supervisor` (`otp.supervisor.restart_decision`) and the
same intensity rule: more than ``max_restarts`` restarts within ``max_seconds`` and the
supervisor stops every child and exits with ``shutdown``. A restart whose start fails is retried
through the mailbox; until it succeeds the child shows as ``"restarting"``. A child whose
restart returns ``"ignore"`` is dropped. ``max_children`` limits `start_child` only; restarts
never count against it. ``extra_arguments`` are prepended to every child's start arguments.

Telemetry and reports are the supervisor's (see `otp.supervisor`); the ``id`` in their metadata
is the child spec's id.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import attrs
from loguru import logger

from otp._api import exit as _exit_signal
from otp._api import monitor, receive, send, trap_exit, unlink
from otp._clock import Clock, monotonic
from otp._process import current
from otp._terms import TIMEOUT, Down, Exit, Pid, Ref
from otp.gen_server import GenServer, call
from otp.gen_server import stop as _gen_stop
from otp.supervisor import (
    CHILD_EXITED,
    CHILD_RESTARTED,
    CHILD_START_FAILED,
    CHILD_STARTED,
    INTENSITY_EXCEEDED,
    RESTARTING,
    ChildSpec,
    InvalidChildSpec,
    Observed,
    ObservedChild,
    SupRef,
    _add_restart,
    _do_start,
    _event,
    _Observe,
    _progress,
    _register_kind,
    _report,
    _stopped_as_asked,
    _TryAgain,
    child_spec,
    restart_decision,
    shutdown_child,
)

__all__ = [
    "DynamicSupervisor", "count_children", "spec", "start", "start_child", "start_link", "stop",
    "terminate_child", "which_children",
]


@attrs.define
class _Child:
    spec: ChildSpec  # start arguments already include extra_arguments
    pid: Pid | str  # a pid, or RESTARTING while a failed restart waits for its retry
    starts: int = 1

    @property
    def restarts(self) -> int:
        return self.starts - 1


@attrs.define
class _State:
    name: Any
    intensity: int
    period: float
    clock: Clock
    max_children: int | None  # None is "infinity"
    extra_arguments: tuple[Any, ...]
    # Keyed by the child's pid; a child waiting to be restarted stays under its old pid.
    children: dict[Pid, _Child] = attrs.field(factory=dict)
    restarts: deque[float] = attrs.field(factory=deque)


def _check_flags(flags: dict[str, Any]) -> None:
    checks = [
        (flags["strategy"] == "one_for_one", ("invalid_strategy", flags["strategy"])),
        (_is_count(flags["max_restarts"]), ("invalid_intensity", flags["max_restarts"])),
        (_is_positive(flags["max_seconds"]), ("invalid_period", flags["max_seconds"])),
        (flags["max_children"] == "infinity" or _is_count(flags["max_children"]),
         ("invalid_max_children", flags["max_children"])),
        (isinstance(flags["extra_arguments"], (list, tuple)),
         ("invalid_extra_arguments", flags["extra_arguments"])),
        (callable(flags["clock"]), ("invalid_clock", flags["clock"])),
    ]
    for ok, error in checks:
        if not ok:
            raise InvalidChildSpec(error)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


class _DynamicSupervisor(GenServer):
    """The dynamic supervisor's server; every callback runs in its own thread."""

    def init(self, flags: dict[str, Any]) -> Any:
        trap_exit(True)
        me = current()
        _register_kind(me, "dynamic_supervisor")  # before anyone can find our name
        try:
            _check_flags(flags)
        except InvalidChildSpec as exc:
            return ("stop", ("supervisor_data", exc.reason))
        self.me = me.pid
        state = _State(
            name=flags["name"] if flags["name"] is not None else me.pid,
            intensity=flags["max_restarts"],
            period=float(flags["max_seconds"]),
            clock=flags["clock"],
            max_children=None if flags["max_children"] == "infinity" else flags["max_children"],
            extra_arguments=tuple(flags["extra_arguments"]),
        )
        return ("ok", state)

    # -- calls ---------------------------------------------------------------------------

    def handle_call(self, request: Any, from_: Any, state: _State) -> Any:
        match request:
            case ("start_child", ChildSpec() as spec):
                return ("reply", self._start_child(state, spec), state)
            case ("terminate_child", Pid() as pid):
                return ("reply", self._terminate_child(state, pid), state)
            case "which_children":
                reply = [(None, c.pid, c.spec.type, c.spec.modules) for c in state.children.values()]
                return ("reply", reply, state)
            case "count_children":
                return ("reply", _count(state), state)
            case _Observe():
                return ("reply", _observed(state), state)
        raise ValueError(f"dynamic supervisor {state.name!r}: unknown call {request!r}")

    def _start_child(self, state: _State, spec: ChildSpec) -> Any:
        if state.max_children is not None and len(state.children) >= state.max_children:
            return ("error", "max_children")
        if state.extra_arguments:
            fn, args = spec.start
            spec = attrs.evolve(spec, start=(fn, state.extra_arguments + args), modules=spec.modules)
        result = self._start(state, spec, None)
        match result:
            case ("ok", Pid() as pid, *_):
                state.children[pid] = _Child(spec, pid)
            case ("ok", None):
                return "ignore"
        return result

    def _terminate_child(self, state: _State, pid: Pid) -> Any:
        child = state.children.pop(pid, None)
        if child is None:
            return ("error", "not_found")
        if child.pid != RESTARTING:
            error = shutdown_child(pid, child.spec.shutdown, child.spec.restart)  # type: ignore[arg-type]
            if error is not None:
                _report("shutdown_error", state.name, child.spec.id, pid, error)
        return "ok"

    def _start(self, state: _State, spec: ChildSpec, child: _Child | None) -> tuple[Any, ...]:
        result = _do_start(spec)
        match result:
            case ("ok", Pid() as pid, *_):
                _progress(state.name, spec.id, pid)
                restarts = 0 if child is None else child.starts
                _event(CHILD_STARTED, self.me, state.name, {"restarts": restarts}, id=spec.id, pid=pid)
            case ("error", reason):
                _report("start_error", state.name, spec.id, None, reason)
                _event(CHILD_START_FAILED, self.me, state.name, {}, id=spec.id, pid=None, reason=reason)
        return result

    # -- exits and restarts ----------------------------------------------------------------

    def handle_info(self, msg: Any, state: _State) -> Any:
        match msg:
            case Exit(pid=pid, reason=reason):
                return self._child_exited(state, pid, reason)
            case _TryAgain(id=key):
                child = state.children.get(key)
                if child is not None and child.pid == RESTARTING:
                    return self._restart(state, key, child, None)
                return ("noreply", state)  # terminated meanwhile
        logger.error("dynamic supervisor {sup} received unexpected message {msg!r}", sup=state.name, msg=msg)
        return ("noreply", state)

    def _child_exited(self, state: _State, pid: Pid, reason: Any) -> Any:
        child = state.children.get(pid)
        if child is None or child.pid != pid:
            return ("noreply", state)
        action, report = restart_decision(child.spec.restart, reason)
        if report:
            _report("child_terminated", state.name, child.spec.id, pid, reason)
        _event(CHILD_EXITED, self.me, state.name, {}, id=child.spec.id, pid=pid, reason=reason, action=action)
        if action == "restart":
            return self._restart(state, pid, child, reason)
        del state.children[pid]  # a dynamic child keeps no spec without a process
        return ("noreply", state)

    def _restart(self, state: _State, key: Pid, child: _Child, reason: Any) -> Any:
        count = _add_restart(state.restarts, state.clock(), state.period)
        if count > state.intensity:
            _report("shutdown", state.name, child.spec.id, key, "reached_max_restart_intensity")
            _event(INTENSITY_EXCEEDED, self.me, state.name, {"restarts": count},
                   id=child.spec.id, pid=key, reason=reason, max_restarts=state.intensity,
                   max_seconds=state.period)
            del state.children[key]
            return ("stop", "shutdown", state)
        old_pid = child.pid
        result = self._start(state, child.spec, child)
        match result:
            case ("ok", Pid() as pid, *_):
                del state.children[key]
                child.pid = pid
                child.starts += 1
                state.children[pid] = child
            case ("ok", None):
                del state.children[key]
            case ("error", _):
                child.pid = RESTARTING
                send(self.me, _TryAgain(key))
        _event(CHILD_RESTARTED, self.me, state.name, {"restarts": count},
               id=child.spec.id, old_pid=old_pid, pid=child.pid)
        return ("noreply", state)

    # -- shutdown: all children at once ----------------------------------------------------

    def terminate(self, reason: Any, state: Any) -> None:
        if isinstance(state, _State):
            _terminate_concurrently(state)


def _terminate_concurrently(state: _State) -> None:
    """Signal every child first, then wait for all of them, killing each at its own deadline."""
    pending: dict[Ref, tuple[Pid, _Child]] = {}
    deadlines: dict[Ref, float] = {}
    for pid, child in state.children.items():
        if child.pid == RESTARTING:
            continue
        ref, signal = _signal_child(state, pid, child)
        if ref is None:
            continue
        pending[ref] = (pid, child)
        if signal == "shutdown" and child.spec.shutdown != "infinity":
            deadlines[ref] = time.monotonic() + float(child.spec.shutdown)  # type: ignore[arg-type]
    state.children.clear()
    while pending:
        timeout = None if not deadlines else max(0.0, min(deadlines.values()) - time.monotonic())
        msg = receive(lambda m: m.__class__ is Down and m.ref in pending, timeout=timeout)
        if msg is TIMEOUT:
            _kill_overdue(pending, deadlines)
            continue
        pid, child = pending.pop(msg.ref)
        deadlines.pop(msg.ref, None)
        signal = "kill" if child.spec.shutdown == "brutal_kill" else "shutdown"
        if not _stopped_as_asked(signal, child.spec.restart, msg.reason):
            _report("shutdown_error", state.name, child.spec.id, pid, msg.reason)


def _signal_child(state: _State, pid: Pid, child: _Child) -> tuple[Ref | None, str]:
    ref = monitor(pid)
    unlink(pid)  # from here on the Down tells us everything; no Exit can arrive any more
    early = receive(lambda m: m.__class__ is Exit and m.pid == pid, timeout=0)
    if early is not TIMEOUT:  # it died before we asked: report it if that was a failure
        receive(lambda m: m.__class__ is Down and m.ref == ref)
        if not _stopped_as_asked("shutdown", child.spec.restart, early.reason):
            _report("shutdown_error", state.name, child.spec.id, pid, early.reason)
        return None, ""
    signal = "kill" if child.spec.shutdown == "brutal_kill" else "shutdown"
    _exit_signal(pid, signal)
    return ref, signal


def _kill_overdue(pending: dict[Ref, tuple[Pid, _Child]], deadlines: dict[Ref, float]) -> None:
    now = time.monotonic()
    for ref, deadline in list(deadlines.items()):
        if deadline <= now:
            _exit_signal(pending[ref][0], "kill")
            del deadlines[ref]


def _count(state: _State) -> dict[str, int]:
    counts = {"specs": len(state.children), "active": 0, "supervisors": 0, "workers": 0}
    for child in state.children.values():
        counts["supervisors" if child.spec.type == "supervisor" else "workers"] += 1
        if child.pid != RESTARTING:
            counts["active"] += 1
    return counts


def _observed(state: _State) -> Observed:
    now = state.clock()
    return Observed(
        kind="dynamic_supervisor",
        strategy="one_for_one",
        max_restarts=state.intensity,
        max_seconds=state.period,
        restarts_in_window=len([t for t in state.restarts if t >= now - state.period]),
        children=tuple(ObservedChild(c.spec.id, c.pid, c.spec.type, c.restarts) for c in state.children.values()),
    )


# -- the public API ----------------------------------------------------------------------------


def _flags(name: Any, strategy: str, max_restarts: int, max_seconds: float, max_children: int | str,
           extra_arguments: Sequence[Any], clock: Clock | None) -> dict[str, Any]:
    return {
        "name": name, "strategy": strategy, "max_restarts": max_restarts,
        "max_seconds": max_seconds, "max_children": max_children,
        "extra_arguments": extra_arguments, "clock": monotonic if clock is None else clock,
    }


def start_link(
    *,
    name: Any = None,
    strategy: str = "one_for_one",
    max_restarts: int = 3,
    max_seconds: float = 5,
    max_children: int | str = "infinity",
    extra_arguments: Sequence[Any] = (),
    clock: Clock | None = None,
    timeout: float | None = None,
) -> Pid:
    """Start a dynamic supervisor linked to the caller and return its pid.

    Raises `StartError` with ``("supervisor_data", reason)`` for a bad option (reason such as
    ``("invalid_max_children", -1)``) or ``("already_started", pid)`` if `name` is taken.
    """
    flags = _flags(name, strategy, max_restarts, max_seconds, max_children, extra_arguments, clock)
    return _DynamicSupervisor.start_link(flags, name=name, timeout=timeout)  # type: ignore[no-any-return]


def start(
    *,
    name: Any = None,
    strategy: str = "one_for_one",
    max_restarts: int = 3,
    max_seconds: float = 5,
    max_children: int | str = "infinity",
    extra_arguments: Sequence[Any] = (),
    clock: Clock | None = None,
    timeout: float | None = None,
) -> Pid:
    """Like `start_link`, without the link."""
    flags = _flags(name, strategy, max_restarts, max_seconds, max_children, extra_arguments, clock)
    return _DynamicSupervisor.start(flags, name=name, timeout=timeout)  # type: ignore[no-any-return]


def spec(
    *,
    id: Any = "dynamic_supervisor",
    restart: str = "permanent",
    shutdown: float | str = "infinity",
    name: Any = None,
    max_restarts: int = 3,
    max_seconds: float = 5,
    max_children: int | str = "infinity",
    extra_arguments: Sequence[Any] = (),
    clock: Clock | None = None,
) -> ChildSpec:
    """A child spec that starts a dynamic supervisor under another supervisor.

    >>> spec(id="jobs", max_children=10).type
    'supervisor'
    """
    flags = _flags(name, "one_for_one", max_restarts, max_seconds, max_children, extra_arguments, clock)
    return ChildSpec(
        id=id, start=(_start_nested, (flags,)), restart=restart, shutdown=shutdown,
        type="supervisor", modules=[DynamicSupervisor],
    )


def _start_nested(flags: dict[str, Any]) -> Pid:
    return _DynamicSupervisor.start_link(flags, name=flags["name"], timeout=None)  # type: ignore[no-any-return]


def start_child(sup: SupRef, spec: Any, *, timeout: float | None = None) -> Any:
    """Start a child from a spec (any form `otp.supervisor.child_spec` accepts).

    Returns ``("ok", pid)``, ``("ok", pid, info)``, ``"ignore"`` (nothing is kept),
    ``("error", "max_children")``, or ``("error", reason)`` with the start function's error or
    the `InvalidChildSpec` reason.
    """
    try:
        normalized = child_spec(spec)
    except InvalidChildSpec as exc:
        return ("error", exc.reason)
    if normalized.significant:
        # As Elixir's DynamicSupervisor: no automatic shutdown, so no significant children.
        return ("error", ("bad_combination", [("auto_shutdown", "never"), ("significant", True)]))
    return call(sup, ("start_child", normalized), timeout)


def terminate_child(sup: SupRef, pid: Pid, *, timeout: float | None = None) -> Any:
    """Stop the child `pid` (no restart). ``"ok"`` or ``("error", "not_found")``."""
    if not isinstance(pid, Pid):
        raise TypeError(f"DynamicSupervisor.terminate_child expects a child's pid, got {pid!r}")
    return call(sup, ("terminate_child", pid), timeout)


def which_children(sup: SupRef, *, timeout: float | None = None) -> list[tuple[Any, Any, str, Any]]:
    """``[(None, pid or "restarting", type, modules)]``; ids are always None, as in Elixir."""
    return call(sup, "which_children", timeout)  # type: ignore[no-any-return]


def count_children(sup: SupRef, *, timeout: float | None = None) -> dict[str, int]:
    """``{"specs", "active", "supervisors", "workers"}``; a restarting child is not active."""
    return call(sup, "count_children", timeout)  # type: ignore[no-any-return]


def stop(sup: SupRef, reason: Any = "normal", timeout: float | None = None) -> None:
    """Stop the supervisor, all children concurrently, and wait until it has exited."""
    _gen_stop(sup, reason, timeout)


class DynamicSupervisor:
    """Elixir's ``DynamicSupervisor`` as a namespace; each name is a function of this module."""

    start_link = staticmethod(start_link)
    start = staticmethod(start)
    spec = staticmethod(spec)
    start_child = staticmethod(start_child)
    terminate_child = staticmethod(terminate_child)
    which_children = staticmethod(which_children)
    count_children = staticmethod(count_children)
    stop = staticmethod(stop)

