"""The pool process: starting it, its loop, stopping it, and its place in a supervision tree.

The loop is three calls, as in Pykka: `_setup` (``init_pool``, start the workers, optionally wait
for ``min_ready`` of them), `_run` (one message at a time, each handled under the core's lock,
then missing workers are started), `_teardown` (``terminate_worker`` for idle workers, then
``terminate_pool``). The process traps exits: its parent's exit signal stops it with that reason
(as a GenServer's), the exits of its init tasks are bookkeeping, any other one is offered to
``handle_info`` like every unknown message.

Timers are the loop's receive timeout (idle pings, backoff retries, max age, stats); with a
`ManualClock` they fire only when the clock is advanced, which makes tests deterministic.
"""

from __future__ import annotations

import functools
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any, Literal

from loguru import logger

from otp import (
    TIMEOUT,
    AlreadyRegistered,
    BadReturn,
    Down,
    Exit,
    Pid,
    ProcessExit,
    Ref,
    add_death_hook,
    is_normal_exit,
    make_ref,
    proc_lib,
)
from otp._api import demonitor_process
from otp._process import STRUCTURE, Process, current
from pool._core import (
    RUNNING,
    STOPPED,
    Config,
    Core,
    InitResult,
    Poke,
    Stop,
    kill_tasks,
)
from pool._worker import PoolWorker, overrides

__all__ = ["ManualClock", "child_spec", "start", "start_link", "stop"]

_monotonic = time.monotonic
_START_GRACE = 2.0  # seconds the starter waits beyond start_timeout; see `_start`

# -- the registry from pool pid to its core ---------------------------------------------------

_cores: dict[Pid, Core] = {}
_cores_lock = threading.Lock()


def lookup(pid: Pid) -> Core | None:
    with _cores_lock:
        return _cores.get(pid)


def _forget(pid: Pid, _reason: Any) -> None:
    with _cores_lock:
        _cores.pop(pid, None)


# -- messages to the pool process ---------------------------------------------------------------


class StopRequest:
    __slots__ = ("reason",)

    def __init__(self, reason: Any) -> None:
        self.reason = reason


class Crash:
    """A client thread found the pool's state broken; the pool must crash with `exc`."""

    __slots__ = ("exc", "stack")

    def __init__(self, exc: BaseException, stack: str) -> None:
        self.exc = exc
        self.stack = stack


class Tick:
    """A `ManualClock` moved: run due timers, then acknowledge."""

    __slots__ = ("sender", "ref")

    def __init__(self, sender: Pid, ref: Ref) -> None:
        self.sender = sender
        self.ref = ref


class TickAck:
    __slots__ = ("ref",)

    def __init__(self, ref: Ref) -> None:
        self.ref = ref


class _StartFailed(Exception):
    def __init__(self, reason: Any) -> None:
        super().__init__(reason)
        self.reason = reason


class _Ignored(Exception):
    pass


# -- the manual clock ---------------------------------------------------------------------------


class ManualClock:
    """A clock for tests: pool timers (idle pings, backoff, max age, stats) move only when told.

    Pass it as ``clock=`` to `start_link`; `advance` moves it and waits until every pool using
    it has run its due timers. Checkout timeouts always use real time.

    >>> clock = ManualClock()
    >>> clock(), clock.advance(1.5), clock()
    (0.0, None, 1.5)
    """

    def __init__(self, start: float = 0.0) -> None:
        self._lock = threading.Lock()
        self._now = start
        self._pools: list[Pid] = []

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def attach(self, pool: Pid) -> None:
        with self._lock:
            self._pools = [p for p in self._pools if not p._proc.dead] + [pool]

    def advance(self, seconds: float, timeout: float = 5.0) -> None:
        """Move the clock and wait (up to `timeout` each) for every live pool to process it.

        Time moves only once each pool has handled what was already in its mailbox, so a
        test that saw a callback's message and then advances knows the callback's consequences
        (say, a backoff computed from the time of a failure) were settled at the old time.
        """
        if seconds < 0:
            raise ValueError(f"a clock only moves forward, got {seconds!r}")
        self._sync(timeout)
        with self._lock:
            self._now += seconds
        self._sync(timeout)

    def _sync(self, timeout: float) -> None:
        with self._lock:
            pools = [p for p in self._pools if not p._proc.dead]
            self._pools = pools
        if not pools:
            return
        me = current()
        for pid in pools:
            ref = make_ref()
            mon = _monitor(me, pid)
            pid._proc.deliver(Tick(me.pid, ref))
            me.receive(_tick_answer(ref, mon), timeout, label="clock advance")
            demonitor_process(me, mon, True)


def _tick_answer(ref: Ref, mon: Ref) -> Callable[[Any], bool]:
    return lambda m: (
        (m.__class__ is TickAck and m.ref is ref) or (m.__class__ is Down and m.ref is mon)
    )


def _monitor(me: Process, pid: Pid) -> Ref:
    from otp import monitor

    return monitor(pid)  # `me` is the caller: monitor() watches on its behalf


# -- validation (in the caller) -------------------------------------------------------------------


def _number(name: str, value: Any, *, allow_none: bool, positive: bool = True) -> float | None:
    if value is None and allow_none:
        return None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or (positive and value <= 0) or (not positive and value < 0):
        what = "a number > 0" if positive else "a number >= 0"
        raise ValueError(f"{name} must be {what}{' or None' if allow_none else ''}, got {value!r}")
    return float(value)


def _count(name: str, value: Any, *, allow_none: bool) -> int | None:
    if value is None and allow_none:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(
            f"{name} must be a positive integer{' or None' if allow_none else ''}, got {value!r}"
        )
    return value


def validate(worker: Any, options: dict[str, Any]) -> Config:
    """Check `start_link`'s arguments in the caller; TypeError/ValueError names the bad one."""
    if not (isinstance(worker, type) and issubclass(worker, PoolWorker)):
        raise TypeError(f"worker must be a PoolWorker subclass, got {worker!r}")
    if not overrides(worker, "init_worker"):
        raise TypeError(f"{worker.__qualname__} must implement init_worker(pool_state)")
    known = {
        "pool_size",
        "lazy",
        "worker_idle_timeout",
        "max_idle_pings",
        "name",
        "min_ready",
        "start_timeout",
        "max_start_failures",
        "worker_max_age",
        "max_checkouts",
        "backoff_initial",
        "backoff_max",
        "stats_interval",
        "clock",
    }
    unknown = set(options) - known
    if unknown:
        raise TypeError(f"unknown pool option(s) {sorted(unknown)}; known: {sorted(known)}")
    pool_size = _count("pool_size", options.get("pool_size", 10), allow_none=False)
    assert pool_size is not None
    lazy = options.get("lazy", False)
    if not isinstance(lazy, bool):
        raise ValueError(f"lazy must be True or False, got {lazy!r}")
    commands = worker.commands
    if commands is not None and not isinstance(commands, frozenset):
        raise TypeError(
            f"{worker.__qualname__}.commands must be a frozenset or None, got {commands!r}"
        )
    min_ready = options.get("min_ready")
    if min_ready is None:
        min_ready = 0
    elif min_ready == "all":
        min_ready = pool_size
    elif (
        not isinstance(min_ready, int)
        or isinstance(min_ready, bool)
        or not 0 <= min_ready <= pool_size
    ):
        raise ValueError(
            f"min_ready must be None, 'all' or an integer in 0..pool_size ({pool_size}), "
            f"got {min_ready!r}"
        )
    if lazy and min_ready:
        raise ValueError(
            "min_ready needs an eager pool (lazy=False): "
            "a lazy pool starts no worker before a checkout"
        )
    backoff_initial = _number(
        "backoff_initial", options.get("backoff_initial", 0.05), allow_none=False
    )
    backoff_max = _number("backoff_max", options.get("backoff_max", 5.0), allow_none=False)
    assert backoff_initial is not None and backoff_max is not None
    if backoff_max < backoff_initial:
        raise ValueError(
            f"backoff_max ({backoff_max}) must be >= backoff_initial ({backoff_initial})"
        )
    name = options.get("name")
    if isinstance(name, Pid):
        raise TypeError(f"name must be a hashable value other than a Pid, got {name!r}")
    if name is not None:
        hash(name)
    clock = options.get("clock")
    if clock is not None and not callable(clock):
        raise TypeError(f"clock must be a callable returning seconds, got {clock!r}")
    start_timeout = _number("start_timeout", options.get("start_timeout", 5.0), allow_none=False)
    assert start_timeout is not None
    return Config(
        pool_size=pool_size,
        lazy=lazy,
        worker_idle_timeout=_number(
            "worker_idle_timeout", options.get("worker_idle_timeout"), allow_none=True
        ),
        max_idle_pings=_count("max_idle_pings", options.get("max_idle_pings"), allow_none=True),
        min_ready=min_ready,
        start_timeout=start_timeout,
        max_start_failures=_count(
            "max_start_failures", options.get("max_start_failures"), allow_none=True
        ),
        worker_max_age=_number("worker_max_age", options.get("worker_max_age"), allow_none=True),
        max_checkouts=_count("max_checkouts", options.get("max_checkouts"), allow_none=True),
        backoff_initial=backoff_initial,
        backoff_max=backoff_max,
        stats_interval=_number("stats_interval", options.get("stats_interval"), allow_none=True),
        name=name,
        clock=clock,
    )


# -- starting -----------------------------------------------------------------------------------


def start_link(
    worker: type[PoolWorker],
    init_arg: Any = None,
    *,
    pool_size: int = 10,
    lazy: bool = False,
    worker_idle_timeout: float | None = None,
    max_idle_pings: int | None = None,
    name: Any = None,
    min_ready: int | Literal["all"] | None = None,
    start_timeout: float = 5.0,
    max_start_failures: int | None = None,
    worker_max_age: float | None = None,
    max_checkouts: int | None = None,
    backoff_initial: float = 0.05,
    backoff_max: float = 5.0,
    stats_interval: float | None = None,
    clock: Callable[[], float] | None = None,
) -> Pid | Literal["ignore"]:
    """Start a pool linked to the caller; return its pid once it is ready (or ``"ignore"``).

    Options (checked here, in the caller, with a TypeError/ValueError naming the bad one):

    * `pool_size` - how many workers (default 10); `lazy` - start them only on demand;
    * `worker_idle_timeout` (seconds) - every that often, ``handle_ping`` the workers idle at
      least that long, oldest first, at most `max_idle_pings` per cycle;
    * `name` - register the pool under this name (`otp.StartError` ``("already_started", pid)``
      if it is taken);
    * `min_ready` - wait until this many workers (``"all"``: pool_size) are ready before
      returning; eager pools only. Async starts run in parallel. If they are not ready within
      `start_timeout` seconds, raise ``StartError(("min_ready_timeout", ready, min_ready,
      last_init_error))``. `start_timeout` also bounds ``init_pool`` and synchronous starts;
    * `max_start_failures` - while waiting for `min_ready`, give up once this many worker
      starts failed in a row (a worker that cannot start at all, say a missing module, fails
      the start at once instead of after `start_timeout`): ``StartError(("min_ready_failed",
      ready, min_ready, failures, last_init_error))``. None (default): retry until the timeout;
    * `worker_max_age` (seconds) / `max_checkouts` - recycle a worker between checkouts once it
      is that old / was checked out that many times (``terminate_worker("max_age")`` /
      ``("max_checkouts")``, then a replacement);
    * `backoff_initial` / `backoff_max` - delay before retrying a failed ``init_worker``,
      doubling per consecutive failure;
    * `stats_interval` - emit a ``["pool", "stats"]`` telemetry event that often;
    * `clock` - a `ManualClock` for tests (pool timers only).

    The pool traps exits: the caller's exit signal stops it with that reason (``terminate_worker``
    then ``terminate_pool``), as a supervisor's shutdown does. Being linked, the caller dies with
    the pool unless it traps exits - a script that wants to survive ``stop(pool, "shutdown")``
    should use `start`.

    The start is `otp.proc_lib.start`'s: when it fails (`otp.StartError`, or ``"ignore"``), the
    pool has exited and its name is free by the time this returns, and a failed pool neither kills
    a linked caller nor leaves an `Exit` in a trapping caller's mailbox. A pool that has not
    answered `start_timeout` + 2 seconds after the start is killed: ``StartError(("timeout",
    worker name, start_timeout))``.

    >>> import pool
    >>> class Echo(pool.PoolWorker):
    ...     def init_worker(self, pool_state):
    ...         return ("ok", "worker", pool_state)
    >>> p = pool.start_link(Echo, None, pool_size=2, min_ready="all")
    >>> pool.stats(p).idle
    2
    >>> pool.stop(p)
    """
    options = dict(
        pool_size=pool_size,
        lazy=lazy,
        worker_idle_timeout=worker_idle_timeout,
        max_idle_pings=max_idle_pings,
        name=name,
        min_ready=min_ready,
        start_timeout=start_timeout,
        max_start_failures=max_start_failures,
        worker_max_age=worker_max_age,
        max_checkouts=max_checkouts,
        backoff_initial=backoff_initial,
        backoff_max=backoff_max,
        stats_interval=stats_interval,
        clock=clock,
    )
    return _start(worker, init_arg, validate(worker, options), link=True)


def start(
    worker: type[PoolWorker], init_arg: Any = None, **options: Any
) -> Pid | Literal["ignore"]:
    """Like `start_link` without the link: for scripts that must not die with the pool."""
    return _start(worker, init_arg, validate(worker, options), link=False)


def _start(
    worker: type[PoolWorker], init_arg: Any, cfg: Config, *, link: bool
) -> Pid | Literal["ignore"]:
    """proc_lib's synchronous start, with `_pool_main` as the child (trapping exits)."""
    # The pool bounds its own start by start_timeout and reports the failure itself; the grace
    # covers its clean-up (terminating the workers it started) before we give up and kill it.
    return proc_lib.start(
        _pool_main,
        worker,
        init_arg,
        cfg,
        link=link,
        timeout=cfg.start_timeout,
        grace=_START_GRACE,
        what=worker.__qualname__,
        label=f"start pool {worker.__qualname__}",
        trap_exit=True,
    )


def child_spec(
    worker: type[PoolWorker],
    init_arg: Any = None,
    *,
    id: Any = None,
    restart: str = "permanent",
    shutdown: float | str = 5.0,
    **options: Any,
) -> dict[str, Any]:
    """A supervisor child spec for a pool: ``{"id", "start": (fn, args), "restart", "shutdown",
    "type"}``, the same contract as ``otp.GenServer.child_spec``. Options are checked now.

    >>> import pool
    >>> class W(pool.PoolWorker):
    ...     def init_worker(self, ps):
    ...         return ("ok", None, ps)
    >>> spec = pool.child_spec(W, None, pool_size=2, name="w_pool")
    >>> spec["id"] is W, spec["type"], spec["restart"]
    (True, 'worker', 'permanent')
    """
    validate(worker, options)
    if restart not in ("permanent", "transient", "temporary"):
        raise ValueError(
            f"restart must be 'permanent', 'transient' or 'temporary', got {restart!r}"
        )
    return {
        "id": worker if id is None else id,
        "start": (functools.partial(start_link, **options), (worker, init_arg)),
        "restart": restart,
        "shutdown": shutdown,
        "type": "worker",
    }


def stop(pool: Any, reason: Any = "normal", timeout: float | None = None) -> None:
    """Stop the pool with `reason` and wait until it has exited.

    The pool runs ``terminate_worker(reason, ...)`` for every idle worker, then
    ``terminate_pool(reason, ...)``. Raises `otp.ProcessExit` with ``("noproc", ...)`` if it is
    not running, ``("timeout", ...)`` if it does not stop in time, or the reason it actually
    exited with if that differs.

    Exit signals are OTP's: a caller linked to the pool (it called `start_link`) and not
    trapping exits dies with any reason other than ``"normal"``; a plain thread learns it as a
    `otp.ProcessExit` at its next runtime call (this one). Scripts use `start`, or stop with
    the default ``"normal"``.
    """
    from otp import monitor

    me = current()
    pid = resolve_pid(pool)
    detail = ("stop", pool, reason)
    if pid is None:
        raise ProcessExit(("noproc", detail))
    mon = monitor(pid)
    pid._proc.deliver(StopRequest(reason))
    msg = me.receive(
        lambda m: m.__class__ is Down and m.ref is mon, timeout, label=f"stop {pool!r}"
    )
    if msg is TIMEOUT:
        demonitor_process(me, mon, True)
        raise ProcessExit(("timeout", detail))
    if msg.reason == "noproc" and reason != "noproc":
        raise ProcessExit(("noproc", detail))
    if msg.reason != reason:
        raise ProcessExit(msg.reason)


def resolve_pid(pool: Any) -> Pid | None:
    from pool._client import Pool

    if pool.__class__ is Pool:
        pool = pool.target
    if isinstance(pool, Pid):
        return pool
    me = current()
    with STRUCTURE:
        proc = me.node.names.get(pool)
    return proc.pid if proc is not None else None


# -- the pool process ---------------------------------------------------------------------------


def _pool_main(
    starter: proc_lib.Starter, cls: type[PoolWorker], init_arg: Any, cfg: Config
) -> None:
    me = current()
    parent = starter.parent
    try:
        worker = cls()
        worker.pool = me.pid
        core = Core(worker, cfg, me)
    except Exception as exc:  # noqa: BLE001 - the starter gets it
        starter.fail(exc)
    with _cores_lock:
        _cores[me.pid] = core
    add_death_hook(me.pid, _forget)
    if isinstance(cfg.clock, ManualClock):
        cfg.clock.attach(me.pid)
    try:
        _setup(core, me, parent, init_arg)
    except _Ignored:
        starter.ignore()
    except _StartFailed as failed:
        starter.fail(failed.reason)
    starter.ack()
    reason = _run(core, me, parent)
    _teardown(core, reason)
    raise ProcessExit(reason)


def _setup(core: Core, me: Process, parent: Pid | None, init_arg: Any) -> None:
    from otp import register

    cfg = core.config
    deadline = _monotonic() + cfg.start_timeout
    try:
        with core.lock:
            # The name is taken under the lock: a client that finds it waits for the lock, and
            # so never sees a pool that has not run init_pool yet.
            if cfg.name is not None:
                try:
                    register(cfg.name, me.pid)
                except AlreadyRegistered as exc:
                    raise _StartFailed(("already_started", exc.pid)) from None
            _init_pool(core, init_arg)
            core.status = RUNNING
            _arm_timers(core)
            core.refill()
        _wait_ready(core, me, parent, deadline)
    except (_StartFailed, _Ignored) as failed:
        _abandon(core, failed.reason if isinstance(failed, _StartFailed) else "normal")
        raise
    except _Crashed as crashed:  # a client thread broke the state while we were starting
        _report(core, "a client thread", crashed.exc, crashed.stack)
        _abandon(core, crashed.exc)
        raise _StartFailed(crashed.exc) from None
    except Exception as exc:  # noqa: BLE001 - a failed start is the starter's error
        _report(core, "start", exc, traceback.format_exc())
        _abandon(core, exc)
        raise _StartFailed(exc) from None


def _abandon(core: Core, reason: Any) -> None:
    """A start that failed: terminate what was started (init_pool had run), else just close."""
    with core.lock:
        running = core.status is RUNNING
        if not running:
            core.status = STOPPED
            core.exit_reason = reason
    if running:
        _teardown(core, reason)


def _init_pool(core: Core, init_arg: Any) -> None:
    result = core.worker.init_pool(init_arg)
    match result:
        case ("ok", pool_state):
            core.pool_state = pool_state
            return
        case "ignore":
            raise _Ignored()
        case ("stop", reason):
            raise _StartFailed(reason)
    raise BadReturn(
        f"{core.cls.__name__}.init_pool: expected ('ok', pool_state), 'ignore' or "
        f"('stop', reason), got {result!r}"
    )


def _arm_timers(core: Core) -> None:
    cfg = core.config
    now = core.clock()
    if cfg.worker_idle_timeout is not None:
        if overrides(core.cls, "handle_ping"):
            core.idle_check_at = now + cfg.worker_idle_timeout
        else:
            logger.warning(
                "worker_idle_timeout was given but {cls} does not override handle_ping; no pings",
                cls=core.cls.__name__,
            )
    if cfg.stats_interval is not None:
        core.stats_at = now + cfg.stats_interval


def _wait_ready(core: Core, me: Process, parent: Pid | None, deadline: float) -> None:
    """Handle messages until min_ready workers are ready (async starts run meanwhile)."""
    want = core.config.min_ready
    manual = isinstance(core.config.clock, ManualClock)
    while True:
        with core.lock:
            ready = len(core.idle) + core.held
            delay = None if manual else core.next_timer()
            last = core.last_init_error
        if ready >= want:
            return
        remaining = deadline - _monotonic()
        if remaining <= 0:
            raise _StartFailed(("min_ready_timeout", ready, want, last))
        msg = me.receive(
            None, remaining if delay is None else min(delay, remaining), label="pool start"
        )
        try:
            _handle(core, msg, parent)
        except Stop as stop:
            raise _StartFailed(stop.reason) from None
        limit = core.config.max_start_failures
        if limit is not None:
            with core.lock:
                failures, ready, last = core.failures, len(core.idle) + core.held, core.last_init_error
            if failures >= limit and ready < want:
                raise _StartFailed(("min_ready_failed", ready, want, failures, last))


def _run(core: Core, me: Process, parent: Pid | None) -> Any:
    """Serve messages until told to stop; return the exit reason."""
    manual = isinstance(core.config.clock, ManualClock)
    try:
        while True:
            if manual:
                delay = None
            else:
                with core.lock:
                    delay = core.next_timer()
            msg = me.receive(None, delay, label="pool loop")
            _handle(core, msg, parent)
    except Stop as stop:
        return stop.reason
    except _Crashed as crashed:
        _report(core, "a client thread", crashed.exc, crashed.stack)
        return crashed.exc
    except Exception as exc:  # noqa: BLE001 - a crash of the pool is its exit reason
        _report(core, "the pool process", exc, traceback.format_exc())
        return exc


class _Crashed(Exception):
    def __init__(self, exc: BaseException, stack: str) -> None:
        super().__init__(exc)
        self.exc = exc
        self.stack = stack


def _handle(core: Core, msg: Any, parent: Pid | None) -> None:
    """One message, under the lock; afterwards start missing workers and serve waiters."""
    kind = msg.__class__
    with core.lock:
        if msg is TIMEOUT or kind is Tick:
            core.run_timers()
        elif kind is InitResult:
            core.init_result(msg)
        elif kind is Down:
            if not core.on_down(msg):
                core.fan_out(msg)
        elif kind is Exit:
            if parent is not None and msg.pid == parent:
                raise Stop(msg.reason)  # only as a trapped exit: the parent tells us to go
            if not core.on_exit(msg):
                core.fan_out(msg)
        elif kind is Poke:
            core.poked = False
        elif kind is StopRequest:
            raise Stop(msg.reason)
        elif kind is Crash:
            raise _Crashed(msg.exc, msg.stack)
        else:
            core.fan_out(msg)
        core.refill()
    if kind is Tick:
        msg.sender._proc.deliver(TickAck(msg.ref))


def _teardown(core: Core, reason: Any) -> None:
    try:
        with core.lock:
            tasks = core.terminate(reason)
    except Exception as exc:  # noqa: BLE001 - a broken terminate must not hide the exit reason
        _report(core, "terminate", exc, traceback.format_exc())
        tasks = []
    kill_tasks(tasks)


def _report(core: Core, where: str, exc: BaseException, stack: str) -> None:
    if is_normal_exit(exc):
        return
    logger.bind(pool=repr(core.pid), registered_name=core.config.name).error(
        "pool {pool} ({cls}) crashed in {where}: {reason!r}\n{stack}",
        pool=core.pid,
        cls=core.cls.__name__,
        where=where,
        reason=exc,
        stack=stack,
    )
