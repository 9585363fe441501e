"""Supervisor: a process that starts, watches and restarts other processes (OTP's ``supervisor``).

A supervisor keeps its children alive. It starts them in order when it starts, restarts them by
a *strategy* when they die, and stops them in reverse order when it stops. It traps exits, so a
child's death reaches it as an `Exit` message rather than killing it.

>>> import otp
>>> class Counter(otp.GenServer):
...     def handle_call(self, request, from_, n):
...         return ("reply", n, n + 1)
>>> sup = otp.Supervisor.start([(Counter, 0)], strategy="one_for_one")
>>> [(child_id.__name__, kind) for child_id, _pid, kind, _mods in otp.Supervisor.which_children(sup)]
[('Counter', 'worker')]
>>> otp.Supervisor.stop(sup)

Principles (as in OTP's supervision principles):

- **Child specs.** A child is described by a `ChildSpec`: ``id``, ``start`` (a callable and its
  arguments; it must start a process *linked to the caller* and return its pid, ``("ok", pid)``,
  ``("ok", pid, info)``, ``"ignore"`` or ``("error", reason)``), ``restart``, ``shutdown`` and
  ``type``. A dict with those keys, a `GenServer` subclass or ``(cls, arg)`` are accepted too:
  the latter two become specs through ``cls.child_spec(arg)``, as in Elixir.
- **Restart types.** ``permanent`` children are always restarted; ``temporary`` ones never (their
  spec is dropped, even when a sibling's failure is what stopped them); ``transient`` ones only
  after an abnormal exit: ``normal``, ``shutdown`` and ``("shutdown", term)`` are normal.
- **Strategies.** ``one_for_one`` restarts the child that died; ``one_for_all`` stops all other
  children (reverse order) and restarts all of them (in order); ``rest_for_one`` does the same
  for the children started after the one that died.
- **Restart intensity.** At most ``max_restarts`` restarts within ``max_seconds`` (defaults 3 and
  5, as in Elixir). Restart times inside the window (inclusive) are kept; one more than allowed
  makes the supervisor stop all children in reverse order and exit with ``shutdown``, which its
  own supervisor then handles. ``max_restarts=0`` means the first restart is one too many. A
  restart whose start fails is retried by the supervisor sending itself a message, never by a
  loop: other requests are served in between, and every retry counts against the intensity.
- **Automatic shutdown** (OTP 24). A transient or temporary child may be ``significant``; with
  ``auto_shutdown="any_significant"`` the supervisor stops (reason ``shutdown``) once such a
  child ends for good (a transient one normally, a temporary one in any way), and with
  ``"all_significant"`` once the last of them has. A child stopped by the supervisor itself
  (`terminate_child`, a sibling's restart) never triggers it. With ``"never"`` (the default)
  significant children are refused.
- **Shutdown of a child.** Monitor it, send ``shutdown``, wait up to the spec's ``shutdown``
  seconds for the ``Down``, then ``kill``. ``"brutal_kill"`` kills at once; ``"infinity"`` waits
  (the default for supervisors, so that a subtree has the time it needs). The supervisor waits
  for a monitor, not for the ``Exit``: a child that unlinked itself cannot hang it, and a child
  stuck in foreign code is killed (its thread becomes a detached zombie, see DESIGN.md).
- **Failed start.** If a child fails to start while the supervisor starts, the children already
  started are stopped in reverse order and `start_link` raises `StartError` with the reason
  ``("failed_to_start_child", id, reason)``. (OTP wraps that in ``("shutdown", ...)``; the
  supervisor process does exit with the wrapped reason, so no crash is logged, but the error
  the caller sees is unwrapped.)

Reports: a child that terminates abnormally, a child that fails to start and a supervisor that
gives up are logged through loguru at ERROR with structured context (``supervisor``,
``child_id``, ``child_pid``, ``reason``, ``context``); successful starts at TRACE (OTP hides its
progress reports by default too).

Telemetry events (`otp.telemetry`), each with ``monotonic_time`` in the measurements and
``supervisor`` (pid), ``supervisor_name``, ``id`` and ``pid`` in the metadata:

- `CHILD_STARTED` — a child process started (first start, restart, `start_child`,
  `restart_child`); measurement ``restarts`` (how often that child was restarted).
- `CHILD_EXITED` — a child exited on its own or was killed; metadata ``reason`` and ``action``
  (``"restart"``, ``"keep"``, ``"remove"``).
- `CHILD_RESTARTED` — a restart attempt finished; measurement ``restarts`` (restarts now in
  the intensity window), metadata ``old_pid`` and ``pid`` (the new pid, ``"restarting"`` when
  the start failed and will be retried, or None when it returned ``"ignore"``).
- `CHILD_START_FAILED` — a start failed; metadata ``reason``.
- `INTENSITY_EXCEEDED` — the supervisor gives up; measurement ``restarts``, metadata
  ``max_restarts``, ``max_seconds``, ``reason`` (the exit that was one too many).

Not supported (yet): OTP's ``significant`` children and ``auto_shutdown``, module-based
supervisors (Elixir's ``use Supervisor``; start a tree with `start_link` or `spec` instead) and
code upgrades. Calls to a supervisor wait for ever by default, as OTP's do: a supervisor busy
stopping a child with ``shutdown="infinity"`` answers when it is done.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final

import attrs
from loguru import logger

from otp import telemetry
from otp._api import exit as _exit_signal
from otp._api import is_alive, monitor, receive, send, trap_exit, unlink
from otp._clock import Clock, monotonic
from otp._errors import ProcessExit, StartError
from otp._process import Process, current, is_normal_exit
from otp._terms import TIMEOUT, Down, Exit, Pid
from otp.gen_server import GenServer, call
from otp.gen_server import stop as _gen_stop

__all__ = [
    "CHILD_EXITED", "CHILD_RESTARTED", "CHILD_STARTED", "CHILD_START_FAILED",
    "INTENSITY_EXCEEDED", "RESTARTING", "ChildSpec", "InvalidChildSpec", "Supervisor",
    "check_childspecs", "child_spec", "count_children", "delete_child", "get_childspec",
    "restart_child", "restart_decision", "start", "start_child", "start_link", "stop",
    "terminate_child", "which_children",
]

CHILD_STARTED: Final = ("otp", "supervisor", "child", "started")
CHILD_EXITED: Final = ("otp", "supervisor", "child", "exited")
CHILD_RESTARTED: Final = ("otp", "supervisor", "child", "restarted")
CHILD_START_FAILED: Final = ("otp", "supervisor", "child", "start_failed")
INTENSITY_EXCEEDED: Final = ("otp", "supervisor", "intensity_exceeded")

RESTARTING: Final = "restarting"
"""The child field of a child whose restart failed and will be retried (OTP's ``restarting``)."""

_RESTART_TYPES = ("permanent", "transient", "temporary")
_CHILD_TYPES = ("worker", "supervisor")
_STRATEGIES = ("one_for_one", "one_for_all", "rest_for_one")
_AUTO_SHUTDOWNS = ("never", "any_significant", "all_significant")

SupRef = Any
"""A supervisor's pid or registered name."""


# -- child specs -------------------------------------------------------------------------------


class InvalidChildSpec(ValueError):
    """A child spec that cannot be used; `reason` is OTP's tagged term, e.g.
    ``("invalid_restart_type", "sometimes")``."""

    def __init__(self, reason: Any) -> None:
        super().__init__(f"invalid child spec: {reason!r}")
        self.reason = reason


def _to_start(value: Any) -> tuple[Callable[..., Any], tuple[Any, ...]]:
    if callable(value) and not isinstance(value, tuple):
        return (value, ())
    match value:
        case (fn, (tuple() | list()) as args) if callable(fn):
            return (fn, tuple(args))
    raise InvalidChildSpec(("invalid_mfa", value))


def _default_modules(start: tuple[Callable[..., Any], tuple[Any, ...]]) -> list[Any]:
    fn = start[0]
    owner = getattr(fn, "__self__", None)  # GenServer.start_link is bound to its class
    return [owner if isinstance(owner, type) else fn]


@attrs.frozen
class ChildSpec:
    """How to start, restart and stop one child.

    - ``id``: any hashable term, unique within a supervisor.
    - ``start``: ``(callable, args)`` (or a bare callable). Called in the supervisor's thread; it
      must start a process linked to the caller and return its pid, ``("ok", pid)``,
      ``("ok", pid, info)``, ``"ignore"`` or ``("error", reason)``. `StartError`, a raised
      exception or an exit become ``("error", reason)``.
    - ``restart``: ``"permanent"`` (default), ``"transient"`` or ``"temporary"``.
    - ``significant``: True for a child whose end may end the supervisor (see `start_link`'s
      ``auto_shutdown``); only for transient or temporary children. Default False.
    - ``shutdown``: seconds (``>= 0``), ``"brutal_kill"`` or ``"infinity"``; defaults to 5.0 for
      a worker and ``"infinity"`` for a supervisor.
    - ``type``: ``"worker"`` (default) or ``"supervisor"``.
    - ``modules``: for humans and tools; defaults to the GenServer class or the start callable.

    Raises `InvalidChildSpec` with OTP's tagged reason when a field is wrong.

    >>> import otp
    >>> spec = ChildSpec(id="echo", start=(otp.spawn_link, (print,)), restart="transient")
    >>> spec.shutdown, spec.type
    (5.0, 'worker')
    """

    id: Any
    start: tuple[Callable[..., Any], tuple[Any, ...]] = attrs.field(converter=_to_start)
    restart: str = "permanent"
    shutdown: float | str | None = None
    type: str = "worker"
    modules: Any = None
    significant: bool = False

    def __attrs_post_init__(self) -> None:
        if self.restart not in _RESTART_TYPES:
            raise InvalidChildSpec(("invalid_restart_type", self.restart))
        if not isinstance(self.significant, bool):
            raise InvalidChildSpec(("invalid_significant", self.significant))
        if self.significant and self.restart == "permanent":
            # A permanent child is restarted whatever its end: it can never end the supervisor.
            raise InvalidChildSpec(("bad_combination", [("restart", "permanent"), ("significant", True)]))
        if self.type not in _CHILD_TYPES:
            raise InvalidChildSpec(("invalid_child_type", self.type))
        if self.shutdown is None:
            object.__setattr__(self, "shutdown", "infinity" if self.type == "supervisor" else 5.0)
        elif not _valid_shutdown(self.shutdown):
            raise InvalidChildSpec(("invalid_shutdown", self.shutdown))
        if self.modules is None:
            object.__setattr__(self, "modules", _default_modules(self.start))
        elif not (self.modules == "dynamic" or isinstance(self.modules, list)):
            raise InvalidChildSpec(("invalid_modules", self.modules))
        try:
            hash(self.id)
        except TypeError:
            raise InvalidChildSpec(("invalid_child_id", self.id)) from None


def _valid_shutdown(value: Any) -> bool:
    if value in ("brutal_kill", "infinity"):
        return True
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0


_SPEC_KEYS = frozenset(attrs.fields_dict(ChildSpec))


def child_spec(spec: Any, **overrides: Any) -> ChildSpec:
    """Turn any accepted child description into a `ChildSpec`, then apply `overrides`.

    Accepted: a `ChildSpec`; a dict with the `ChildSpec` keys (``id`` and ``start`` required);
    a class with a ``child_spec`` classmethod (a `GenServer` subclass), called with no
    argument; ``(cls, arg)``, giving ``cls.child_spec(arg)``. This is Elixir's
    ``Supervisor.child_spec/2``.

    Raises `InvalidChildSpec`: ``("invalid_child_spec", spec)``, ``"missing_id"``,
    ``"missing_start"``, or a tagged reason naming the bad field.

    >>> import otp
    >>> child_spec(otp.GenServer, id="plain", restart="temporary").restart
    'temporary'
    """
    base = _normalize(spec)
    if not overrides:
        return base
    unknown = set(overrides) - _SPEC_KEYS
    if unknown:
        raise InvalidChildSpec(("invalid_child_spec", overrides))
    fields = attrs.asdict(base, recurse=False)
    if "type" in overrides and "shutdown" not in overrides and base.type != overrides["type"]:
        fields["shutdown"] = None  # the default depends on the type
    if "start" in overrides and "modules" not in overrides:
        fields["modules"] = None
    fields.update(overrides)
    return ChildSpec(**fields)


def _normalize(spec: Any) -> ChildSpec:
    match spec:
        case ChildSpec():
            return spec
        case dict():
            return _from_dict(spec)
        case type() if callable(generate := getattr(spec, "child_spec", None)):
            return _from_generated(spec, generate())
        case (type() as cls, arg) if callable(generate := getattr(cls, "child_spec", None)):
            return _from_generated(spec, generate(arg))
    raise InvalidChildSpec(("invalid_child_spec", spec))


def _from_generated(source: Any, generated: Any) -> ChildSpec:
    if isinstance(generated, ChildSpec):
        return generated
    if isinstance(generated, dict):
        return _from_dict(generated)
    raise InvalidChildSpec(("invalid_child_spec", (source, generated)))


def _from_dict(spec: dict[str, Any]) -> ChildSpec:
    if "id" not in spec:
        raise InvalidChildSpec("missing_id")
    if "start" not in spec:
        raise InvalidChildSpec("missing_start")
    if not set(spec) <= _SPEC_KEYS:
        raise InvalidChildSpec(("invalid_child_spec", spec))
    return ChildSpec(**spec)


def check_childspecs(specs: Iterable[Any]) -> Any:
    """``"ok"`` if every spec is valid and the ids are unique, else ``("error", reason)``.

    >>> check_childspecs([{"id": 1, "start": print}, {"id": 1, "start": print}])
    ('error', ('duplicate_child_name', 1))
    """
    try:
        _check_startspec(specs)
    except InvalidChildSpec as exc:
        return ("error", exc.reason)
    return "ok"


def _check_startspec(specs: Iterable[Any]) -> list[ChildSpec]:
    if isinstance(specs, (str, bytes, dict)) or not isinstance(specs, Iterable):
        raise InvalidChildSpec(("invalid_child_spec", specs))
    out: list[ChildSpec] = []
    seen: set[Any] = set()
    for item in specs:
        spec = _normalize(item)
        if spec.id in seen:
            # OTP keeps the old word "name" here for compatibility; so do we.
            raise InvalidChildSpec(("duplicate_child_name", spec.id))
        seen.add(spec.id)
        out.append(spec)
    return out


# -- the policy tables -------------------------------------------------------------------------


def restart_decision(restart: str, reason: Any) -> tuple[str, bool]:
    """What a supervisor does when a child exits: ``(action, report)``.

    `action` is ``"restart"``, ``"keep"`` (the spec stays, with no process) or ``"remove"``
    (the spec is dropped). `report` says whether a ``child_terminated`` report is logged.
    One clause per (restart type, exit reason) pair, in OTP's order.

    >>> restart_decision("transient", ("shutdown", "bye"))
    ('keep', False)
    >>> restart_decision("temporary", "boom")
    ('remove', True)
    """
    match (restart, reason):
        case ("permanent", _):
            return ("restart", True)
        case ("transient", r) if is_normal_exit(r):
            return ("keep", False)
        case ("transient", _):
            return ("restart", True)
        case ("temporary", r) if is_normal_exit(r):
            return ("remove", False)
        case ("temporary", _):
            return ("remove", True)
    raise ValueError(f"unknown restart type {restart!r}")


def _stopped_as_asked(signal: str, restart: str, reason: Any) -> bool:
    """Did a child we stopped with `signal` ("kill" or "shutdown") die as expected?

    Anything else is a ``shutdown_error`` report: e.g. ``killed`` after the shutdown timeout.
    """
    match (signal, reason):
        case ("kill", "killed"):
            return True
        case ("shutdown", "shutdown"):
            return True
        case (_, r) if restart != "permanent" and is_normal_exit(r):
            return True
    return False


def _add_restart(restarts: deque[float], now: float, period: float) -> int:
    """Record a restart at `now`; forget those older than the window; return how many remain.

    The window is inclusive: a restart exactly `period` seconds old still counts. `restarts`
    is newest first and clocks are monotonic, so the expired ones are all at the end: this is
    O(1) amortised however large `max_restarts` is.
    """
    threshold = now - period
    restarts.appendleft(now)
    while restarts[-1] < threshold:
        restarts.pop()
    return len(restarts)


# -- reports and events ------------------------------------------------------------------------


def _report(context: str, sup_name: Any, child_id: Any, pid: Any, reason: Any) -> None:
    # Keyword arguments are loguru's structured context: they land in `extra` as values (not
    # strings) and fill the template only if a sink wants the message. A reason containing
    # braces is safe: it is an argument, never part of the template.
    logger.error(
        "supervisor report: supervisor {supervisor!r} context {context}: child {child_id!r} "
        "({child_pid!r}) reason {reason!r}",
        supervisor=sup_name, context=context, child_id=child_id, child_pid=pid, reason=reason,
    )


def _progress(sup_name: Any, child_id: Any, pid: Pid) -> None:
    logger.trace(
        "progress report: supervisor {supervisor!r} started child {child_id!r} at {child_pid!r}",
        supervisor=sup_name, child_id=child_id, child_pid=pid,
    )


def _event(event: tuple[str, ...], me: Pid, sup_name: Any, measurements: dict[str, Any],
           **metadata: Any) -> None:
    telemetry.execute(
        event,
        {"monotonic_time": time.monotonic(), **measurements},
        {"supervisor": me, "supervisor_name": sup_name, **metadata},
    )


# -- which processes are supervisors (for the observer) ------------------------------------------

_kinds_lock = threading.Lock()
# Guarded by _kinds_lock. Weak keys: a dead supervisor's control block may be collected.
_kinds: weakref.WeakKeyDictionary[Process, str] = weakref.WeakKeyDictionary()


def _register_kind(me: Process, kind: str) -> None:
    with _kinds_lock:
        _kinds[me] = kind


def supervisor_kind(pid: Pid) -> str | None:
    """``"supervisor"`` or ``"dynamic_supervisor"`` for a live supervisor of ours, else None.

    Tools ask this before sending an introspection call, so that they never send an unknown
    request to a user's GenServer (whose default ``handle_call`` would crash it).
    """
    proc = pid._proc
    with _kinds_lock:
        kind = _kinds.get(proc)
    return None if proc.dead else kind


@attrs.frozen
class ObservedChild:
    """One child as its supervisor sees it (the observer's raw material)."""

    id: Any
    pid: Pid | str | None  # a pid, RESTARTING or None
    type: str
    restarts: int


@attrs.frozen
class Observed:
    """A supervisor's answer to the observer: its kind, policy and children in start order."""

    kind: str
    strategy: str
    max_restarts: int
    max_seconds: float
    restarts_in_window: int
    children: tuple[ObservedChild, ...]


class _Observe:
    """The introspection request; a class of its own so no user request can look like it."""

    __slots__ = ()


OBSERVE = _Observe()


# -- starting and stopping one child -----------------------------------------------------------


def _do_start(spec: ChildSpec) -> tuple[Any, ...]:
    """Run the start function: ``("ok", pid)``, ``("ok", pid, info)``, ``("ok", None)`` for
    ``"ignore"``, or ``("error", reason)``."""
    fn, args = spec.start
    try:
        result = fn(*args)
    except StartError as exc:
        return ("error", exc.reason)
    except ProcessExit as exc:
        current()  # re-raises if it is this supervisor that was killed meanwhile
        return ("error", exc.reason)
    except Exception as exc:  # noqa: BLE001 - a start function's failure is a start error
        return ("error", exc)
    match result:
        case Pid():
            return ("ok", result)
        case ("ok", Pid()):
            return result  # type: ignore[no-any-return]
        case ("ok", Pid(), _):
            return result  # type: ignore[no-any-return]
        case "ignore":
            return ("ok", None)
        case ("error", reason):
            return ("error", reason)
    return ("error", result)


def _await_down(ref: Any, timeout: float | None) -> Any:
    return receive(lambda m: m.__class__ is Down and m.ref == ref, timeout=timeout)


def _unlink_flush(pid: Pid, default: Any) -> Any:
    # Unlinking takes the structure lock, which the dying process holds while it queues both
    # its Down and its Exit: after unlink returns, an Exit from `pid` is in the mailbox if it
    # will ever be. Its reason is the more precise one (a Down may only say noproc).
    unlink(pid)
    msg = receive(lambda m: m.__class__ is Exit and m.pid == pid, timeout=0)
    return default if msg is TIMEOUT else msg.reason


def shutdown_child(pid: Pid, shutdown: float | str, restart: str) -> Any:
    """Stop one child as OTP does; None if it stopped as asked, else the reason to report.

    Monitor (not the ``Exit``: a child that unlinked itself would hang us), send ``shutdown``,
    wait up to `shutdown` seconds, then ``kill``. ``"brutal_kill"`` kills at once.
    """
    ref = monitor(pid)
    signal = "kill" if shutdown == "brutal_kill" else "shutdown"
    _exit_signal(pid, signal)
    if signal == "kill":
        down = _await_down(ref, None)
    else:
        down = _await_down(ref, None if shutdown == "infinity" else float(shutdown))
        if down is TIMEOUT:
            _exit_signal(pid, "kill")
            down = _await_down(ref, None)
    reason = _unlink_flush(pid, down.reason)
    return None if _stopped_as_asked(signal, restart, reason) else reason


# -- the supervisor process ------------------------------------------------------------------


@attrs.define
class _Child:
    spec: ChildSpec
    # The lifecycle in one field: a pid, None (not running) or RESTARTING.
    pid: Pid | str | None = None
    starts: int = 0

    @property
    def restarts(self) -> int:
        return max(0, self.starts - 1)


@attrs.define
class _State:
    name: Any
    strategy: str
    intensity: int
    period: float
    clock: Clock
    children: list[_Child]  # in start order
    auto_shutdown: str = "never"
    restarts: deque[float] = attrs.field(factory=deque)  # restart times in the window, newest first


@attrs.frozen
class _TryAgain:
    """A restart that failed is retried through the mailbox, never by looping."""

    id: Any


def _check_flags(flags: dict[str, Any]) -> None:
    strategy, intensity, period = flags["strategy"], flags["max_restarts"], flags["max_seconds"]
    if strategy not in _STRATEGIES:
        raise InvalidChildSpec(("invalid_strategy", strategy))
    if not (isinstance(intensity, int) and not isinstance(intensity, bool) and intensity >= 0):
        raise InvalidChildSpec(("invalid_intensity", intensity))
    if not (isinstance(period, (int, float)) and not isinstance(period, bool) and period > 0):
        raise InvalidChildSpec(("invalid_period", period))
    if not callable(flags["clock"]):
        raise InvalidChildSpec(("invalid_clock", flags["clock"]))
    if flags["auto_shutdown"] not in _AUTO_SHUTDOWNS:
        raise InvalidChildSpec(("invalid_auto_shutdown", flags["auto_shutdown"]))


def _check_significant(spec: ChildSpec, auto_shutdown: str) -> None:
    """A significant child under a supervisor that never shuts down by itself is a mistake."""
    if spec.significant and auto_shutdown == "never":
        raise InvalidChildSpec(("bad_combination", [("auto_shutdown", "never"), ("significant", True)]))


class _Supervisor(GenServer):
    """The supervisor's server. Every callback runs in the supervisor's own thread."""

    def init(self, arg: Any) -> Any:
        flags, children = arg
        trap_exit(True)
        me = current()
        # Known as a supervisor from the start: a name may be looked up while we still init.
        _register_kind(me, "supervisor")
        try:
            _check_flags(flags)
        except InvalidChildSpec as exc:
            return ("stop", ("supervisor_data", exc.reason))
        try:
            specs = _check_startspec(children)
            for spec in specs:
                _check_significant(spec, flags["auto_shutdown"])
        except InvalidChildSpec as exc:
            return ("stop", ("start_spec", exc.reason))
        self.me = me.pid
        state = _State(
            name=flags["name"] if flags["name"] is not None else me.pid,
            strategy=flags["strategy"],
            intensity=flags["max_restarts"],
            period=float(flags["max_seconds"]),
            clock=flags["clock"],
            children=[_Child(spec) for spec in specs],
            auto_shutdown=flags["auto_shutdown"],
        )
        failed = self._start_children(state, list(state.children))
        if failed is not None:
            self._terminate_children(state, list(state.children))
            return ("stop", ("shutdown", ("failed_to_start_child", failed[0].spec.id, failed[1])))
        return ("ok", state)

    # -- starting ------------------------------------------------------------------------

    def _start_one(self, state: _State, child: _Child) -> tuple[Any, ...]:
        result = _do_start(child.spec)
        spec = child.spec
        if result[0] == "ok" and result[1] is not None:
            child.pid = result[1]
            child.starts += 1
            _progress(state.name, spec.id, result[1])
            _event(CHILD_STARTED, self.me, state.name, {"restarts": child.restarts},
                   id=spec.id, pid=result[1])
        elif result[0] == "error":
            _report("start_error", state.name, spec.id, None, result[1])
            _event(CHILD_START_FAILED, self.me, state.name, {}, id=spec.id, pid=None,
                   reason=result[1])
        return result

    def _start_children(self, state: _State, group: list[_Child]) -> tuple[_Child, Any] | None:
        """Start `group` in order; on a failure stop there and return (child, reason)."""
        for child in group:
            result = self._start_one(state, child)
            match result:
                case ("ok", None) if child.spec.restart == "temporary":
                    state.children.remove(child)
                case ("ok", None):
                    child.pid = None
                case ("error", reason):
                    return (child, reason)
        return None

    # -- stopping ------------------------------------------------------------------------

    def _terminate(self, state: _State, child: _Child) -> None:
        if isinstance(child.pid, Pid):
            error = shutdown_child(child.pid, child.spec.shutdown, child.spec.restart)  # type: ignore[arg-type]
            if error is not None:
                _report("shutdown_error", state.name, child.spec.id, child.pid, error)
        self._del_child(state, child)

    def _terminate_children(self, state: _State, group: list[_Child]) -> None:
        """Stop `group` in reverse start order; temporary children lose their spec."""
        for child in reversed(group):
            self._terminate(state, child)

    @staticmethod
    def _del_child(state: _State, child: _Child) -> None:
        if child.spec.restart == "temporary":
            if child in state.children:
                state.children.remove(child)
        else:
            child.pid = None

    def terminate(self, reason: Any, state: Any) -> None:
        if isinstance(state, _State):
            self._terminate_children(state, list(state.children))

    # -- restarting ----------------------------------------------------------------------

    def handle_info(self, msg: Any, state: _State) -> Any:
        match msg:
            case Exit(pid=pid, reason=reason):
                return self._child_exited(state, pid, reason)
            case _TryAgain(id=child_id):
                child = _find(state, child_id)
                if child is not None and child.pid == RESTARTING:
                    return self._restart(state, child, None)
                return ("noreply", state)
        logger.error("supervisor {sup} received unexpected message {msg!r}", sup=state.name, msg=msg)
        return ("noreply", state)

    def _child_exited(self, state: _State, pid: Pid, reason: Any) -> Any:
        child = _find_pid(state, pid)
        if child is None:
            return ("noreply", state)  # an old incarnation, or a link that is not a child
        action, report = restart_decision(child.spec.restart, reason)
        if report:
            _report("child_terminated", state.name, child.spec.id, pid, reason)
        _event(CHILD_EXITED, self.me, state.name, {}, id=child.spec.id, pid=pid, reason=reason,
               action=action)
        match action:
            case "restart":
                return self._restart(state, child, reason)
            case "keep":
                child.pid = None
            case "remove":
                state.children.remove(child)
        if self._auto_shutdown(state, child):
            logger.bind(supervisor=repr(state.name)).info(
                "supervisor {sup} shuts down: significant child {id} ended ({how})",
                sup=state.name, id=child.spec.id, how=state.auto_shutdown,
            )
            return ("stop", "shutdown", state)
        return ("noreply", state)

    @staticmethod
    def _auto_shutdown(state: _State, ended: _Child) -> bool:
        """OTP's do_auto_shutdown: does this child's end (one not restarted) end us too?"""
        if state.auto_shutdown == "never" or not ended.spec.significant:
            return False
        if state.auto_shutdown == "any_significant":
            return True
        # all_significant: when the last significant child still running has ended.
        return not any(c.spec.significant and isinstance(c.pid, Pid) for c in state.children)

    def _restart(self, state: _State, child: _Child, reason: Any) -> Any:
        count = _add_restart(state.restarts, state.clock(), state.period)
        old_pid = child.pid
        if count > state.intensity:
            _report("shutdown", state.name, child.spec.id, old_pid, "reached_max_restart_intensity")
            _event(INTENSITY_EXCEEDED, self.me, state.name, {"restarts": count},
                   id=child.spec.id, pid=old_pid, reason=reason, max_restarts=state.intensity,
                   max_seconds=state.period)
            self._del_child(state, child)
            return ("stop", "shutdown", state)
        child.pid = None
        group = self._restart_group(state, child)
        self._terminate_children(state, [c for c in group if c is not child])
        group = [c for c in group if c in state.children]  # temporary ones are gone now
        failed = self._start_children(state, group)
        if failed is not None:
            failed[0].pid = RESTARTING
            send(self.me, _TryAgain(failed[0].spec.id))
        _event(CHILD_RESTARTED, self.me, state.name, {"restarts": count},
               id=child.spec.id, old_pid=old_pid, pid=child.pid)
        return ("noreply", state)

    @staticmethod
    def _restart_group(state: _State, child: _Child) -> list[_Child]:
        match state.strategy:
            case "one_for_one":
                return [child]
            case "rest_for_one":
                return state.children[state.children.index(child):]
            case "one_for_all":
                return list(state.children)
        raise AssertionError(state.strategy)

    # -- the admin calls -----------------------------------------------------------------

    def handle_call(self, request: Any, from_: Any, state: _State) -> Any:
        match request:
            case ("start_child", ChildSpec() as spec):
                return ("reply", self._handle_start_child(state, spec), state)
            case ("terminate_child", child_id):
                child = _find(state, child_id)
                if child is None:
                    return ("reply", ("error", "not_found"), state)
                self._terminate(state, child)
                return ("reply", "ok", state)
            case ("restart_child", child_id):
                return ("reply", self._handle_restart_child(state, child_id), state)
            case ("delete_child", child_id):
                return ("reply", self._handle_delete_child(state, child_id), state)
            case ("get_childspec", child_id):
                child = _find(state, child_id)
                return ("reply", ("error", "not_found") if child is None else ("ok", child.spec), state)
            case "which_children":
                # OTP lists children in termination order: the last started comes first.
                reply = [(c.spec.id, c.pid, c.spec.type, c.spec.modules) for c in reversed(state.children)]
                return ("reply", reply, state)
            case "count_children":
                return ("reply", _count(state.children), state)
            case _Observe():
                return ("reply", self._observed(state), state)
        raise ValueError(f"supervisor {state.name!r}: unknown call {request!r}")

    def _handle_start_child(self, state: _State, spec: ChildSpec) -> Any:
        try:
            _check_significant(spec, state.auto_shutdown)
        except InvalidChildSpec as exc:
            return ("error", exc.reason)
        existing = _find(state, spec.id)
        if existing is not None:
            if isinstance(existing.pid, Pid):
                return ("error", ("already_started", existing.pid))
            return ("error", "already_present")
        child = _Child(spec)
        state.children.append(child)
        result = self._start_one(state, child)
        match result:
            case ("ok", None) if spec.restart == "temporary":
                state.children.remove(child)
            case ("error", ("already_started", _) as why):
                state.children.remove(child)
                return ("error", why)
            case ("error", why):
                state.children.remove(child)
                return ("error", (why, spec))
        return result

    def _handle_restart_child(self, state: _State, child_id: Any) -> Any:
        child = _find(state, child_id)
        match child:
            case None:
                return ("error", "not_found")
            case _Child(pid=None):
                result = self._start_one(state, child)
                if result[0] == "ok" and result[1] is None:
                    child.pid = None
                return result
            case _Child(pid="restarting"):
                return ("error", "restarting")
        return ("error", "running")

    @staticmethod
    def _handle_delete_child(state: _State, child_id: Any) -> Any:
        child = _find(state, child_id)
        match child:
            case None:
                return ("error", "not_found")
            case _Child(pid=None):
                state.children.remove(child)
                return "ok"
            case _Child(pid="restarting"):
                return ("error", "restarting")
        return ("error", "running")

    @staticmethod
    def _observed(state: _State) -> Observed:
        window = [t for t in state.restarts if t >= state.clock() - state.period]
        return Observed(
            kind="supervisor",
            strategy=state.strategy,
            max_restarts=state.intensity,
            max_seconds=state.period,
            restarts_in_window=len(window),
            children=tuple(ObservedChild(c.spec.id, c.pid, c.spec.type, c.restarts) for c in state.children),
        )


def _find(state: _State, child_id: Any) -> _Child | None:
    for child in state.children:
        if child.spec.id == child_id:
            return child
    return None


def _find_pid(state: _State, pid: Pid) -> _Child | None:
    for child in state.children:
        if child.pid == pid:
            return child
    return None


def _count(children: Iterable[_Child]) -> dict[str, int]:
    counts = {"specs": 0, "active": 0, "supervisors": 0, "workers": 0}
    for child in children:
        counts["specs"] += 1
        counts["supervisors" if child.spec.type == "supervisor" else "workers"] += 1
        if isinstance(child.pid, Pid) and is_alive(child.pid):
            counts["active"] += 1
    return counts


# -- the public API ----------------------------------------------------------------------------


def _flags(
    strategy: str, max_restarts: int, max_seconds: float, name: Any, clock: Clock | None,
    auto_shutdown: str = "never",
) -> dict[str, Any]:
    return {
        "strategy": strategy, "max_restarts": max_restarts, "max_seconds": max_seconds,
        "name": name, "clock": monotonic if clock is None else clock, "auto_shutdown": auto_shutdown,
    }


def _start(children: Sequence[Any], flags: dict[str, Any], *, link: bool, timeout: float | None) -> Pid:
    starter = _Supervisor.start_link if link else _Supervisor.start
    try:
        pid = starter((flags, list(children)), name=flags["name"], timeout=timeout)
    except StartError as exc:
        match exc.reason:
            case ("shutdown", ("failed_to_start_child", _, _) as why):
                raise StartError(why) from None
        raise
    return pid  # type: ignore[no-any-return]


def start_link(
    children: Sequence[Any],
    *,
    strategy: str = "one_for_one",
    max_restarts: int = 3,
    max_seconds: float = 5,
    name: Any = None,
    clock: Clock | None = None,
    timeout: float | None = None,
    auto_shutdown: str = "never",
) -> Pid:
    """Start a supervisor linked to the caller; returns its pid once every child has started.

    `children` are child specs in any form `child_spec` accepts. `clock` (seconds, monotonic)
    measures the intensity window; tests pass an `otp.ManualClock`. `auto_shutdown` (OTP 24's):
    ``"never"`` (default; significant children are refused), ``"any_significant"`` (the
    supervisor shuts down, reason ``"shutdown"``, when a significant child ends for good: a
    transient one normally, a temporary one in any way) or ``"all_significant"`` (when the last
    running significant child does).

    Raises `StartError` with reason:

    - ``("failed_to_start_child", id, reason)`` — a child failed; the others were stopped;
    - ``("start_spec", reason)`` — a bad or duplicate child spec (``reason`` as in
      `check_childspecs`);
    - ``("supervisor_data", reason)`` — a bad flag, e.g. ``("invalid_strategy", s)``;
    - ``("already_started", pid)`` — `name` is taken.

    >>> import otp
    >>> sup = start_link([{"id": "idle", "start": (otp.spawn_link, (otp.receive,))}])
    >>> count_children(sup)
    {'specs': 1, 'active': 1, 'supervisors': 0, 'workers': 1}
    >>> stop(sup)
    """
    flags = _flags(strategy, max_restarts, max_seconds, name, clock, auto_shutdown)
    return _start(children, flags, link=True, timeout=timeout)


def start(
    children: Sequence[Any],
    *,
    strategy: str = "one_for_one",
    max_restarts: int = 3,
    max_seconds: float = 5,
    name: Any = None,
    clock: Clock | None = None,
    timeout: float | None = None,
    auto_shutdown: str = "never",
) -> Pid:
    """Like `start_link` without the link: for scripts and tests that must outlive a
    supervisor giving up. Same return value and errors."""
    flags = _flags(strategy, max_restarts, max_seconds, name, clock, auto_shutdown)
    return _start(children, flags, link=False, timeout=timeout)


def spec(
    children: Sequence[Any],
    *,
    id: Any = "supervisor",
    restart: str = "permanent",
    shutdown: float | str = "infinity",
    strategy: str = "one_for_one",
    max_restarts: int = 3,
    max_seconds: float = 5,
    name: Any = None,
    clock: Clock | None = None,
    auto_shutdown: str = "never",
    significant: bool = False,
) -> ChildSpec:
    """A child spec that starts a supervisor of `children`: how supervisors nest.

    >>> inner = spec([], id="inner", strategy="one_for_all")
    >>> inner.type, inner.shutdown
    ('supervisor', 'infinity')
    """
    flags = _flags(strategy, max_restarts, max_seconds, name, clock, auto_shutdown)
    return ChildSpec(
        id=id, start=(_start_nested, (list(children), flags)), restart=restart,
        shutdown=shutdown, type="supervisor", modules=[Supervisor], significant=significant,
    )


def _start_nested(children: list[Any], flags: dict[str, Any]) -> Pid:
    return _start(children, flags, link=True, timeout=None)


def _call(sup: SupRef, request: Any, timeout: float | None) -> Any:
    return call(sup, request, timeout)


def start_child(sup: SupRef, spec: Any, *, timeout: float | None = None) -> Any:
    """Add a child spec to a running supervisor and start it (it goes last in start order).

    Returns ``("ok", pid)``, ``("ok", pid, info)``, ``("ok", None)`` if the start function
    returned ``"ignore"`` (the spec is kept unless temporary), or ``("error", reason)`` where
    reason is ``("already_started", pid)``, ``"already_present"`` (the id exists with no
    process), ``(reason, spec)`` when the start failed, or the `InvalidChildSpec` reason.
    """
    try:
        normalized = child_spec(spec)
    except InvalidChildSpec as exc:
        return ("error", exc.reason)
    return _call(sup, ("start_child", normalized), timeout)


def terminate_child(sup: SupRef, child_id: Any, *, timeout: float | None = None) -> Any:
    """Stop a child (its spec stays, unless temporary). ``"ok"`` or ``("error", "not_found")``."""
    return _call(sup, ("terminate_child", child_id), timeout)


def restart_child(sup: SupRef, child_id: Any, *, timeout: float | None = None) -> Any:
    """Start a child whose spec is kept but has no process.

    Returns ``("ok", pid)``, ``("ok", pid, info)``, ``("ok", None)`` (ignored), or
    ``("error", reason)``: ``"running"``, ``"restarting"``, ``"not_found"`` or the start error.
    """
    return _call(sup, ("restart_child", child_id), timeout)


def delete_child(sup: SupRef, child_id: Any, *, timeout: float | None = None) -> Any:
    """Forget a stopped child's spec. ``"ok"``, or ``("error", r)`` with r ``"running"``,
    ``"restarting"`` or ``"not_found"``."""
    return _call(sup, ("delete_child", child_id), timeout)


def get_childspec(sup: SupRef, child_id: Any, *, timeout: float | None = None) -> Any:
    """``("ok", ChildSpec)`` or ``("error", "not_found")``."""
    return _call(sup, ("get_childspec", child_id), timeout)


def which_children(sup: SupRef, *, timeout: float | None = None) -> list[tuple[Any, Any, str, Any]]:
    """``[(id, child, type, modules)]``, the last started child first (as OTP).

    ``child`` is the pid, ``"restarting"`` when a failed restart will be retried, or None when
    there is no process.
    """
    return _call(sup, "which_children", timeout)  # type: ignore[no-any-return]


def count_children(sup: SupRef, *, timeout: float | None = None) -> dict[str, int]:
    """``{"specs", "active", "supervisors", "workers"}`` counts; active means a live process."""
    return _call(sup, "count_children", timeout)  # type: ignore[no-any-return]


def stop(sup: SupRef, reason: Any = "normal", timeout: float | None = None) -> None:
    """Stop the supervisor (children in reverse order) and wait until it has exited.

    Exits the caller (`ProcessExit`) with ``noproc`` if it is not running, ``timeout`` if it
    did not stop in time, or its actual exit reason if that differs from `reason`.
    """
    _gen_stop(sup, reason, timeout)


class Supervisor:
    """Elixir's ``Supervisor`` module as a namespace: ``Supervisor.start_link(children, ...)``.

    Every name is also a function of `otp.supervisor`; see each for its return values.
    """

    start_link = staticmethod(start_link)
    start = staticmethod(start)
    spec = staticmethod(spec)
    child_spec = staticmethod(child_spec)
    check_childspecs = staticmethod(check_childspecs)
    start_child = staticmethod(start_child)
    terminate_child = staticmethod(terminate_child)
    restart_child = staticmethod(restart_child)
    delete_child = staticmethod(delete_child)
    get_childspec = staticmethod(get_childspec)
    which_children = staticmethod(which_children)
    count_children = staticmethod(count_children)
    stop = staticmethod(stop)
