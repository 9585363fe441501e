"""SessionPool: a supervised pool of Python worker subprocesses, callable from any thread.

>>> from bridge.session_pool import SessionPool
>>> sp = SessionPool.start("doc_pool", pool_size=2, handlers=["bridge.examples"])
>>> sp.execute_anonymous("add", [1, 2])
3
>>> sp.execute_in_session("s1", "counter_incr", [])
1
>>> sp.execute_in_session("s1", "counter_incr", [])
2
>>> sp.stop()

The tree, under the name the caller chooses (never a global singleton, so tests run isolated
pools side by side)::

    Supervisor one_for_all          name
    ├── ZygoteActor                 (name, "zygote")    only with start_mode="zygote"
    ├── DynamicSupervisor           (name, "workers")   WorkerActor per worker (temporary)
    └── pool (NimblePool-style)     (name, "pool")      worker state = WorkerHandle

- All workers start eagerly and in parallel before `start` returns (``min_ready="all"``).
- ``execute_anonymous`` takes any idle worker; ``execute_in_session`` goes to the worker that
  holds the session's state (it waits for that worker when it is busy). If that worker died,
  the call fails with `SessionLost` — never silently served by a worker without the state —
  and the next call starts the session afresh.
- A call runs in the caller's thread, on the worker's port: no hop through the pool or the
  actor. A handler error comes back as `WorkerError` with the worker's traceback and the worker
  stays; a call that exceeds its timeout (`CallTimeout`) or a worker that dies under it
  (`WorkerCrashed`) gets the worker replaced, so a late reply never reaches the next caller.
- Replacements count against ``max_restarts`` in ``max_seconds``; beyond it the pool gives up
  and the supervisor restarts the whole tree (and, past its own intensity, exits).
- A circuit breaker per command refuses a command that failed ``circuit_failures`` times in a
  row for ``circuit_reset`` seconds (`CircuitOpen`).
- Telemetry for every call: ``["threadotp", "session_pool", "call", "start" | "stop" |
  "exception"]`` with ``duration`` and ``queue_time``, and ``["threadotp", "session_pool",
  "worker", "start" | "exit"]``; metadata ``pool``, ``command``, ``session_id``, ``worker_id``.
"""

from __future__ import annotations

import functools
import itertools
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import attrs
from loguru import logger

import otp
import pool
from bridge.circuit import CircuitBreaker, CircuitOpen
from bridge.codec import DEFAULT_CODEC
from bridge.port import PortError, PortTimeout
from bridge.protocol import WorkerError
from bridge.worker_actor import (
    WorkerActor,
    WorkerConfig,
    WorkerHandle,
    WorkerInitError,
    worker_argv,
)
from bridge.zygote_actor import ZygoteActor, ZygoteConfig
from otp import telemetry
from otp.dynamic_supervisor import DynamicSupervisor
from otp.supervisor import Supervisor

__all__ = [
    "BridgeError", "CallTimeout", "CircuitOpen", "PoolUnavailable", "SessionLost", "SessionPool", "SessionPoolStartError",
    "SessionPoolStats",
    "WorkerCrashed", "WorkerError",
]

ACCEPTED = ("anonymous", ("session", "<session_id>"))


class BridgeError(Exception):
    """A call could not be completed because of the worker, not the handler."""


class SessionLost(BridgeError):
    """The worker holding the session's state died; the session starts afresh on the next call."""

    def __init__(self, session_id: Any, worker_id: str, reason: Any) -> None:
        super().__init__(f"session {session_id!r} was lost with worker {worker_id} ({_short(reason)})")
        self.session_id = session_id
        self.worker_id = worker_id
        self.reason = reason


class PoolUnavailable(BridgeError):
    """The pool is not running: its tree is restarting, or the SessionPool has stopped."""

    def __init__(self, name: Any, reason: Any) -> None:
        super().__init__(f"session pool {name!r} is not available ({_short(reason)}); retry once its tree has restarted")
        self.name = name
        self.reason = reason


def _pool_gone(reason: Any) -> bool:
    """A checkout's exit caused by the pool (``(why, ("checkout", pool))``), not by the caller."""
    return (
        isinstance(reason, tuple) and len(reason) == 2 and isinstance(reason[1], tuple)
        and len(reason[1]) >= 1 and reason[1][0] == "checkout"
    )


class CallTimeout(BridgeError, TimeoutError):
    """The worker did not answer within the call timeout; it is being replaced."""

    def __init__(self, command: str, timeout: float | None, worker_id: str, cause: PortError) -> None:
        super().__init__(f"{command!r} on {worker_id} got no reply within {timeout} s; the worker is replaced\n{cause}")
        self.command = command
        self.timeout = timeout
        self.worker_id = worker_id
        self.stderr_tail = cause.stderr_tail


class WorkerCrashed(BridgeError):
    """The worker died or broke the protocol during the call; it is being replaced."""

    def __init__(self, command: str, worker_id: str, cause: PortError) -> None:
        super().__init__(f"{command!r} on {worker_id}: the worker failed: {cause}")
        self.command = command
        self.worker_id = worker_id
        self.status = cause.status
        self.stderr_tail = cause.stderr_tail


class SessionPoolStartError(otp.StartError):
    """The SessionPool did not start. `reason` is the supervisor's reason term, unchanged; the
    message leads with what went wrong in words and ends with the last worker error, whose
    stderr tail (say, the traceback of a failed import) is printed as the lines it was."""

    def __init__(self, config: SessionPoolConfig, reason: Any) -> None:
        super().__init__(reason)
        self.name = config.name
        self.text = _start_failure_text(config, reason)

    def __str__(self) -> str:
        return self.text


def _start_failure_text(config: SessionPoolConfig, reason: Any) -> str:
    head = f"session pool {config.name!r} did not start"
    detail: Any = reason
    match reason:
        case ("failed_to_start_child", "pool", ("min_ready_timeout", ready, want, last)):
            head += f": {ready} of {want} workers ready within {config.start_timeout} s"
            if last is None:
                return head
            detail = last
        case ("failed_to_start_child", "pool", ("min_ready_failed", ready, want, failures, last)):
            head += f": {ready} of {want} workers ready; {failures} worker starts failed in a row"
            detail = last
        case ("failed_to_start_child", child, why):
            head += f": its child {child!r} failed to start"
            detail = why
    if isinstance(detail, BaseException):
        return f"{head}; the last worker error:\n{detail}"
    return f"{head}: {detail!r}"


_monotonic = time.monotonic
_EV_CALL_START = ("threadotp", "session_pool", "call", "start")
_EV_CALL_STOP = ("threadotp", "session_pool", "call", "stop")
_EV_CALL_EXCEPTION = ("threadotp", "session_pool", "call", "exception")
# Skipping events nobody listens to saves building them (and their metadata) on every call.
_listening = telemetry.listening


class _Failed:
    """What a call's checkout function returns when the call failed (a result is returned
    as is): the outcome, for stats and telemetry, and the error the caller gets."""

    __slots__ = ("error", "outcome")

    def __init__(self, outcome: str, error: BaseException) -> None:
        self.outcome = outcome
        self.error = error


def _runner(
    command: str, args: Any, session_id: Any, timeout: float | None, seen: dict[str, Any] | None
) -> Any:
    """The function a call runs with its checked-out worker, in the caller's thread.

    Returns ``(result or _Failed, checkin_state)``; ``"broken"`` makes the pool replace the
    worker. `seen`, when the call is observed, receives the grant time and the worker id.
    """

    def run(from_: Any, handle: WorkerHandle) -> tuple[Any, str]:
        if seen is not None:
            seen["granted"] = _monotonic()
            seen["worker_id"] = handle.worker_id
        try:
            return handle.call(command, args, session_id, timeout, from_[0]), "ok"
        except WorkerError as exc:
            return _Failed("handler_error", exc), "ok"
        except PortTimeout as exc:
            return _Failed("worker_failure", CallTimeout(command, timeout, handle.worker_id, exc)), "broken"
        except PortError as exc:
            return _Failed("worker_failure", WorkerCrashed(command, handle.worker_id, exc)), "broken"

    return run


def _short(reason: Any) -> str:
    text = str(reason)
    return text.splitlines()[0] if text else repr(reason)


# -- configuration and shared state ----------------------------------------------------------


#: "spawn": each worker is a fresh interpreter; "zygote": each is a fork of a warm template
#: process that has imported the handlers already (first ping ~2.5 ms after the request instead of ~28 ms).
START_MODES = ("spawn", "zygote")


@attrs.frozen
class SessionPoolConfig:
    """Everything a SessionPool needs; see `SessionPool.start_link` for the meaning."""

    name: Any
    pool_size: int = 4
    handlers: tuple[str, ...] = ("bridge.examples",)
    codec: str = DEFAULT_CODEC
    checkout_timeout: float = 5.0
    call_timeout: float = 30.0
    init_timeout: float = 10.0
    close_timeout: float = 2.0
    start_timeout: float = 30.0
    max_start_failures: int | None = None  # None: pool_size, at least 2
    worker_idle_timeout: float | None = None
    max_restarts: int = 10
    max_seconds: float = 10.0
    circuit_failures: int = 5
    circuit_reset: float = 10.0
    python: str | None = None
    env: dict[str, str] | None = None
    cwd: str | None = None
    start_mode: str = "spawn"  # or "zygote": fork workers from a warm template process
    reply_spin: float = 50e-6  # seconds a call keeps looking for its reply before it sleeps
    worker_spin: float = 100e-6  # most seconds a worker looks for its next request after a reply

    def __attrs_post_init__(self) -> None:
        if self.start_mode not in START_MODES:
            raise ValueError(f"start_mode must be one of {', '.join(START_MODES)}, got {self.start_mode!r}")


@attrs.frozen
class _Lost:
    worker_id: str
    reason: Any


class _Sessions:
    """Which worker holds which session. Shared by the pool's callbacks (under the pool's
    lock) and by stats readers, so it has its own lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._home: dict[Any, str | _Lost] = {}  # guarded by _lock

    def home(self, session_id: Any) -> str | _Lost | None:
        with self._lock:
            return self._home.get(session_id)

    def assign(self, session_id: Any, worker_id: str) -> None:
        with self._lock:
            self._home[session_id] = worker_id

    def forget(self, session_id: Any) -> None:
        with self._lock:
            self._home.pop(session_id, None)

    def lose_worker(self, worker_id: str, reason: Any) -> None:
        with self._lock:
            for sid, home in self._home.items():
                if home == worker_id:
                    self._home[sid] = _Lost(worker_id, reason)

    def lose_all(self, reason: Any) -> None:
        with self._lock:
            for sid, home in self._home.items():
                if isinstance(home, str):
                    self._home[sid] = _Lost(home, reason)

    def count(self) -> int:
        with self._lock:
            return sum(1 for h in self._home.values() if isinstance(h, str))


class _Metrics:
    """Counters and recent latencies for `stats()`."""

    def __init__(self, keep: int = 4096) -> None:
        self._lock = threading.Lock()
        self.calls = 0
        self.ok = 0
        self.handler_errors = 0
        self.worker_failures = 0
        self.refused = 0
        self.restarts = 0
        self._latencies: deque[float] = deque(maxlen=keep)

    _COUNTERS = {"ok": "ok", "handler_error": "handler_errors", "worker_failure": "worker_failures", "refused": "refused"}

    def record_ok(self, duration: float) -> None:
        """`record("ok", duration)`, the hot path's outcome, without the name lookups."""
        with self._lock:
            self.calls += 1
            self.ok += 1
            self._latencies.append(duration)

    def record(self, outcome: str, duration: float | None = None) -> None:
        counter = self._COUNTERS[outcome]
        with self._lock:
            self.calls += 1
            setattr(self, counter, getattr(self, counter) + 1)
            if duration is not None:
                self._latencies.append(duration)

    def restarted(self) -> None:
        with self._lock:
            self.restarts += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            lat = sorted(self._latencies)
            counts = {k: getattr(self, k) for k in ("calls", "ok", "handler_errors", "worker_failures", "refused", "restarts")}
        return {**counts, "p50": _pct(lat, 0.50), "p99": _pct(lat, 0.99)}


def _pct(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


@attrs.define
class _PoolState:
    config: SessionPoolConfig
    sessions: _Sessions
    metrics: _Metrics
    workers_sup: Any
    numbers: Any = attrs.field(factory=lambda: itertools.count(1))
    # Guarded by failures_lock: worker removals are counted under the pool's lock, but failed
    # starts are counted in the task that ran them.
    failures: deque[float] = attrs.field(factory=deque)
    giving_up: bool = False  # this pool has asked to be stopped (restart intensity)
    failures_lock: threading.Lock = attrs.field(factory=threading.Lock)
    # Set once the tree first came up: before that, failed starts end in start_link's own
    # error (with the workers' stderr) rather than in a restart of the tree.
    ready: bool = False


@attrs.frozen
class _ActorDown:
    """Posted to the pool by a death hook when a worker actor dies (the pool process cannot
    monitor an actor that a task started, so the hook plays the monitor's part)."""

    actor: otp.Pid
    reason: Any


# -- the pool's worker behaviour ---------------------------------------------------------------


def _zygote_spec(config: SessionPoolConfig) -> dict[str, Any]:
    """The zygote goes first in the tree: the workers are forked from it, and stop before it."""
    zcfg = ZygoteConfig(
        str(config.name), config.handlers, config.codec, config.python, config.env, config.cwd,
        init_timeout=config.init_timeout, close_timeout=config.close_timeout, worker_spin=config.worker_spin,
    )
    # Its init may wait init_timeout for the zygote, then close it (up to 3 close_timeouts):
    # the start must wait longer, or a failure's stderr would be lost to a start timeout.
    timeout = config.init_timeout + 3 * config.close_timeout + 1.0
    start = functools.partial(ZygoteActor.start_link, name=(config.name, "zygote"), timeout=timeout)
    return {"id": "zygote", "start": (start, (zcfg,)), "restart": "permanent", "shutdown": config.close_timeout * 3 + 1.0}


class _SessionWorker(pool.PoolWorker):
    """Worker state: a `WorkerHandle`. Client state: the same handle."""

    def init_pool(self, init_arg: _PoolState) -> Any:
        # The state outlives a restart of the tree. A fresh pool starts, as a restarted
        # supervisor does, with an empty failure window (else one failure would restart the tree
        # again at once), and no session may stay homed on a worker of the old pool (a worker
        # checked out when the old pool stopped never reached terminate_worker: its sessions
        # would wait for it for ever).
        with init_arg.failures_lock:
            init_arg.failures.clear()
            init_arg.giving_up = False
        init_arg.sessions.lose_all("the session pool was restarted")
        return ("ok", init_arg)

    def init_worker(self, ps: _PoolState) -> Any:
        cfg = ps.config
        worker_id = f"{cfg.name}-w{next(ps.numbers)}"
        the_pool = self.pool

        def boot() -> WorkerHandle:
            try:
                return start_worker()
            except BaseException:
                # Workers that keep failing to start escalate like workers that keep dying.
                if ps.ready:
                    _count_failure(ps, the_pool)
                raise

        def start_worker() -> WorkerHandle:
            started = time.monotonic()
            meta = {"pool": cfg.name, "worker_id": worker_id}
            telemetry.execute(["threadotp", "session_pool", "worker", "start"], {"monotonic_time": started}, meta)
            wcfg = WorkerConfig(
                worker_id, worker_argv(cfg.handlers, worker_id, cfg.codec, cfg.python, cfg.worker_spin), cfg.codec,
                init_timeout=cfg.init_timeout, close_timeout=cfg.close_timeout, env=cfg.env, cwd=cfg.cwd,
                zygote=(cfg.name, "zygote") if cfg.start_mode == "zygote" else None,
                reply_spin=cfg.reply_spin,
            )
            spec = {
                "id": worker_id, "start": (WorkerActor.start_link, (wcfg,)), "restart": "temporary",
                "shutdown": cfg.close_timeout * 3 + 1.0,
            }
            result = DynamicSupervisor.start_child(ps.workers_sup, spec)
            if not (isinstance(result, tuple) and result[0] == "ok"):
                raise WorkerInitError(f"cannot start worker actor {worker_id}: {result!r}")
            actor = result[1]
            handle = WorkerActor.await_ready(actor, cfg.init_timeout + 1.0)

            def on_death(pid: otp.Pid, reason: Any) -> None:
                otp.post(the_pool, _ActorDown(pid, reason))
                telemetry.execute(["threadotp", "session_pool", "worker", "exit"], {}, {**meta, "reason": reason})

            if not otp.add_death_hook(actor, on_death):
                raise WorkerInitError(f"worker actor {worker_id} died right after it became ready")
            return handle

        return ("async", boot, ps)

    def handle_enqueue(self, command: Any, ps: _PoolState) -> Any:
        if command == "anonymous":
            return ("ok", command, ps)
        match command:
            case ("session", session_id) if _hashable(session_id):
                return ("ok", command, ps)
        # Refused here, in the caller: an unhashable session id reaching handle_checkout would
        # raise there, and the pool would remove (and replace) one worker after another.
        raise pool.UnknownCommand(command, ACCEPTED)

    def handle_checkout(self, command: Any, from_: Any, handle: WorkerHandle, ps: _PoolState) -> Any:
        if handle.broken is not None or not otp.is_alive(handle.actor):
            return ("remove", ("worker_dead", handle.broken), ps)
        if command == "anonymous":
            return ("ok", handle, handle, ps)
        session_id = command[1]
        home = ps.sessions.home(session_id)
        if home is None:
            ps.sessions.assign(session_id, handle.worker_id)
        elif isinstance(home, _Lost):
            ps.sessions.forget(session_id)
            return ("skip", SessionLost(session_id, home.worker_id, home.reason), ps)
        elif home != handle.worker_id:
            return ("pass", ps)  # not the session's worker: try the next one, or wait for it
        return ("ok", handle, handle, ps)

    def handle_checkin(self, outcome: Any, from_: Any, handle: WorkerHandle, ps: _PoolState) -> Any:
        if outcome == "ok" and handle.broken is None:
            return ("ok", handle, ps)
        return ("remove", ("worker_failed", handle.broken), ps)

    def handle_info(self, msg: Any, handle: WorkerHandle) -> Any:
        if msg.__class__ is _ActorDown and msg.actor == handle.actor:
            return ("remove", ("worker_exited", msg.reason))
        return ("ok", handle)

    def handle_ping(self, handle: WorkerHandle, ps: _PoolState) -> Any:
        # The actor pings its subprocess; the pool never waits on a worker's I/O. An
        # unresponsive worker stops its actor, whose death hook removes it from the pool.
        otp.cast(handle.actor, "health_ping")
        return ("ok", handle)

    def terminate_worker(self, reason: Any, handle: WorkerHandle, ps: _PoolState) -> Any:
        ps.sessions.lose_worker(handle.worker_id, reason)
        # Asynchronous on purpose: the actor shuts its subprocess down cleanly in its own thread.
        otp.exit(handle.actor, "shutdown")
        if _is_failure(reason):
            ps.metrics.restarted()
            _count_failure(ps, self.pool)
        return ("ok", ps)


def _count_failure(ps: _PoolState, pool_pid: otp.Pid) -> None:
    """One more worker failure (removed, or failed to start); past intensity, stop the pool."""
    with ps.failures_lock:
        if not _over_intensity(ps) or ps.giving_up:
            return
        ps.giving_up = True
    cfg = ps.config
    logger.error(
        "session pool {name}: more than {n} worker failures in {s} s; restarting the pool",
        name=cfg.name, n=cfg.max_restarts, s=cfg.max_seconds,
    )
    _stop_soon(pool_pid, ("shutdown", "worker_restart_intensity"))


def _stop_soon(pool_pid: otp.Pid, reason: Any) -> None:
    """Stop the pool with `reason` without waiting for it.

    Not ``otp.exit(pool_pid, reason)``: the pool traps exits, so that signal would only reach it
    as an ``Exit`` message, which it offers to its workers' ``handle_info`` and otherwise ignores.
    Not ``pool.stop`` here either: this runs in a pool callback (in the pool process, or in a
    client thread holding the pool's lock), and stop waits for the pool to exit. A short-lived
    process makes the request and waits instead.
    """

    def stopper() -> None:
        try:
            pool.stop(pool_pid, reason, None)
        except otp.ProcessExit:
            pass  # the pool went down for another reason meanwhile: nothing left to do

    otp.spawn(stopper)


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def _check_session_id(session_id: Any) -> None:
    # What the worker protocol carries (bridge.worker refuses anything else, but only after a
    # worker was checked out and the session assigned to it).
    if session_id.__class__ is not str and (session_id.__class__ is not int):
        raise TypeError(f"session_id must be a str or an int, got {session_id!r}")


def _is_failure(reason: Any) -> bool:
    return not (otp.is_normal_exit(reason) or reason in ("max_age", "max_checkouts"))


def _over_intensity(ps: _PoolState) -> bool:
    now = time.monotonic()
    window = ps.failures
    window.append(now)
    while window and window[0] < now - ps.config.max_seconds:
        window.popleft()
    return len(window) > ps.config.max_restarts


# -- the public handle ----------------------------------------------------------------------


@attrs.frozen
class SessionPoolStats:
    """What `SessionPool.stats` reports."""

    workers: int
    idle: int
    busy: int
    starting: int
    waiting: int
    sessions: int
    calls: int
    ok: int
    handler_errors: int
    worker_failures: int
    refused: int
    restarts: int
    p50: float | None
    p99: float | None
    open_circuits: tuple[str, ...]


class SessionPool:
    """A running session pool, addressed by its name. Methods are safe from any thread."""

    def __init__(self, config: SessionPoolConfig, supervisor: otp.Pid, shared: _PoolState) -> None:
        self.config = config
        self.name = config.name
        self.supervisor = supervisor
        self._shared = shared
        self._pool = pool.Pool((config.name, "pool"))
        self._pool_by_pid: pool.Pool | None = None  # see _pool_now
        self._breaker = CircuitBreaker(config.circuit_failures, config.circuit_reset)

    # -- starting -----------------------------------------------------------------------------

    @classmethod
    def start_link(cls, name: Any, pool_size: int = 4, handlers: Sequence[str] = ("bridge.examples",), **options: Any) -> SessionPool:
        """Start the tree linked to the caller; returns once every worker answered its first ping.

        Options: `codec`, `checkout_timeout` (waiting for a worker), `call_timeout` (default for
        calls), `init_timeout` (a worker's first ping), `close_timeout`, `start_timeout` (all
        workers ready), `max_start_failures` (worker starts that may fail in a row before the
        start gives up; default pool_size and at least 2, so a worker that cannot start at all,
        say a handler module that does not import, fails the start at once),
        `worker_idle_timeout` (health pings), `max_restarts`/`max_seconds` (worker replacement
        intensity), `circuit_failures`/`circuit_reset`, `python`, `env`,
        `cwd`, `start_mode` (``"spawn"``, or ``"zygote"`` to fork workers from a warm template
        process: see `bridge.zygote`), `reply_spin` (seconds a call keeps looking for its reply,
        yielding the CPU between looks, before it sleeps: default 50 us, which spares a wake-up
        when the worker answers fast from another CPU; 0 to always sleep at once), `worker_spin`
        (most seconds each worker looks for its next request after a reply before it blocks:
        default 100 us, which makes back-to-back calls about twice as fast with the worker on
        another CPU; the worker stops spinning for a while when the budget runs out or when its
        CPU is wanted by someone else, see `bridge.spin`; 0 to always block at once). Raises
        `otp.StartError` when the workers do not come up (with their stderr).
        """
        return cls._start(name, pool_size, handlers, options, link=True)

    @classmethod
    def start(cls, name: Any, pool_size: int = 4, handlers: Sequence[str] = ("bridge.examples",), **options: Any) -> SessionPool:
        """Like `start_link`, without the link: for scripts that must survive the pool."""
        return cls._start(name, pool_size, handlers, options, link=False)

    @classmethod
    def _start(cls, name: Any, pool_size: int, handlers: Sequence[str], options: dict[str, Any], *, link: bool) -> SessionPool:
        if name is None:
            raise ValueError("a SessionPool needs a name (any hashable value): pools are never global")
        if isinstance(handlers, str):
            raise TypeError(f"handlers is a list of module names, got the string {handlers!r}")
        config = SessionPoolConfig(name=name, pool_size=pool_size, handlers=tuple(handlers), **options)
        if not isinstance(pool_size, int) or pool_size < 1:
            raise ValueError(f"pool_size must be a positive int, got {pool_size!r}")
        shared = _PoolState(config, _Sessions(), _Metrics(), (name, "workers"))
        children = [] if config.start_mode != "zygote" else [_zygote_spec(config)]
        children += [
            DynamicSupervisor.spec(id="workers", name=(name, "workers"), max_restarts=0, max_seconds=1),
            pool.child_spec(
                _SessionWorker, shared, id="pool", name=(name, "pool"), pool_size=pool_size,
                min_ready="all", start_timeout=config.start_timeout,
                max_start_failures=max(2, pool_size) if config.max_start_failures is None else config.max_start_failures,
                worker_idle_timeout=config.worker_idle_timeout, shutdown=config.close_timeout * 3 + 2.0,
            ),
        ]
        starter = Supervisor.start_link if link else Supervisor.start
        try:
            sup = starter(children, strategy="one_for_all", max_restarts=3, max_seconds=30, name=name)
        except otp.StartError as exc:
            raise SessionPoolStartError(config, exc.reason) from None
        shared.ready = True
        return cls(config, sup, shared)

    # -- calls ---------------------------------------------------------------------------------

    def execute_anonymous(self, command: str, args: Any = None, timeout: float | None = None) -> Any:
        """Run `command(*args)` on any worker; returns its result.

        Raises `WorkerError` (the handler raised), `CallTimeout`, `WorkerCrashed`,
        `CircuitOpen`, and the pool's `CheckoutTimeout` / `WorkerStartError`.
        """
        return self._execute("anonymous", None, command, args, timeout)

    def execute_in_session(self, session_id: Any, command: str, args: Any = None, timeout: float | None = None) -> Any:
        """Run `command` on the worker that holds `session_id`'s state (assigned on first use).

        `session_id` is a str or an int (what the worker protocol carries; anything else is a
        `TypeError` here, before any worker is involved). Raises `SessionLost` if that worker
        died, and everything `execute_anonymous` raises.
        """
        if session_id is None:
            raise ValueError("execute_in_session needs a session_id")
        _check_session_id(session_id)
        return self._execute(("session", session_id), session_id, command, args, timeout)

    def _execute(self, checkout_cmd: Any, session_id: Any, command: str, args: Any, timeout: float | None) -> Any:
        if command.__class__ is not str and not isinstance(command, str):
            raise TypeError(f"command must be a str, got {command!r}")
        if timeout is None:
            timeout = self.config.call_timeout
        try:
            self._breaker.before(command)
        except CircuitOpen:
            self._shared.metrics.record("refused")
            raise
        started = _monotonic()
        seen: dict[str, Any] | None = None
        if _listening(_EV_CALL_START, _EV_CALL_STOP, _EV_CALL_EXCEPTION):
            seen = {"worker_id": None}
            telemetry.execute(_EV_CALL_START, {"monotonic_time": started}, self._meta(command, session_id, seen))
        try:
            value = pool.checkout(
                self._pool_now(), checkout_cmd, _runner(command, args, session_id, timeout, seen),
                self.config.checkout_timeout,
            )
        except otp.ProcessExit as exc:
            if not _pool_gone(exc.reason):
                raise  # this caller's own exit, not the pool's: let it travel
            error = PoolUnavailable(self.name, exc.reason[0])
            self._finish(command, session_id, started, seen, "refused", error)
            raise error from None
        except BaseException as exc:
            self._finish(command, session_id, started, seen, "refused", exc)
            raise
        if value.__class__ is not _Failed:
            if seen is None:  # `_finish` for a success nobody observes: the same, fewer steps
                self._breaker.success(command)
                self._shared.metrics.record_ok(_monotonic() - started)
            else:
                self._finish(command, session_id, started, seen, "ok", None)
            return value
        self._finish(command, session_id, started, seen, value.outcome, value.error)
        raise value.error

    def _pool_now(self) -> pool.Pool:
        """A handle on the running pool by its pid, which caches the pool's state (no name
        lookup per call); resolved by name again once that pool has died (a restarted tree
        registers a new one). With nothing registered, the by-name handle raises as usual."""
        by_pid = self._pool_by_pid
        if by_pid is not None and otp.is_alive(by_pid.target):
            return by_pid
        pid = otp.whereis(self._pool.target)
        if pid is None:
            return self._pool
        self._pool_by_pid = by_pid = pool.Pool(pid)
        return by_pid

    def _meta(self, command: str, session_id: Any, seen: dict[str, Any]) -> dict[str, Any]:
        return {"pool": self.name, "command": command, "session_id": session_id, "worker_id": seen["worker_id"]}

    def _finish(
        self, command: str, session_id: Any, started: float, seen: dict[str, Any] | None, outcome: str,
        error: BaseException | None,
    ) -> None:
        """Stats, circuit and (if observed) telemetry for a finished call."""
        now = _monotonic()
        duration = now - started
        if outcome == "ok":
            self._breaker.success(command)
        elif outcome != "refused" or isinstance(error, CallTimeout):
            self._breaker.failure(command)
        if seen is not None:
            measurements = {"duration": duration, "queue_time": seen.get("granted", now) - started}
            meta = self._meta(command, session_id, seen)
            if outcome == "ok":
                telemetry.execute(_EV_CALL_STOP, measurements, meta)
            else:
                telemetry.execute(_EV_CALL_EXCEPTION, measurements, {**meta, "kind": outcome, "reason": error})
        self._shared.metrics.record(outcome, duration if outcome in ("ok", "handler_error") else None)

    # -- observation and lifecycle ------------------------------------------------------------

    def stats(self) -> SessionPoolStats:
        """Workers, calls, failures, restarts, latency percentiles (seconds), open circuits."""
        ps = self._pool.stats()
        m = self._shared.metrics.snapshot()
        return SessionPoolStats(
            workers=ps.idle + ps.checked_out, idle=ps.idle, busy=ps.checked_out, starting=ps.initialising,
            waiting=ps.waiting, sessions=self._shared.sessions.count(), open_circuits=tuple(self._breaker.open_circuits()),
            **m,
        )

    def workers(self) -> list[tuple[Any, otp.Pid]]:
        """``[(worker_id, actor_pid)]`` of the live worker actors."""
        return [(handle.worker_id, handle.actor) for handle in self._handles()]

    def worker_os_pids(self) -> list[int]:
        """OS pids of the live worker subprocesses (for chaos tests and monitoring)."""
        return [handle.port.os_pid for handle in self._handles() if handle.port.alive]

    def _handles(self) -> list[WorkerHandle]:
        handles = []
        for _, pid, _, _ in DynamicSupervisor.which_children(self._shared.workers_sup):
            if isinstance(pid, otp.Pid):
                try:
                    handle = otp.call(pid, "handle", 5.0)
                except otp.ProcessExit:
                    continue  # it died since the supervisor answered
                if handle is not None:
                    handles.append(handle)
        return handles

    def stop(self, reason: Any = "normal", timeout: float | None = 30.0) -> None:
        """Stop the tree: workers get an explicit shutdown frame, then EOF, SIGTERM, SIGKILL."""
        if otp.is_alive(self.supervisor):
            otp.unlink(self.supervisor)  # a linked caller must not die of the pool's own stop
            Supervisor.stop(self.supervisor, reason, timeout)

    def __enter__(self) -> SessionPool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
