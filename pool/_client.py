"""The client side: `checkout` (a function or a context manager), `update`, `stats`, `Pool`.

A checkout runs in the caller's thread from start to end:

1. take the pool's lock; if nobody waits and a worker is idle, run ``handle_enqueue`` and
   ``handle_checkout`` here and now (the fast path: no message, no thread switch);
2. otherwise queue the request and wait for the pool's answer, which whoever frees a worker
   delivers (a grant, or an error), bounded by `timeout`;
3. run ``fun(from_, client_state)`` - always here, never in the pool process;
4. take the lock again and run ``handle_checkin`` (and serve the next waiter), or, if `fun`
   raised, remove the worker with the error kind and re-raise.

The pool monitors the caller's process from its first step 1 on (and keeps that one monitor
until the process dies), so a caller that dies anywhere in between is noticed by the pool
process (``terminate_worker("DOWN", ...)`` for a held worker; a queued request is dropped).
Spawned callers cannot be interrupted by an exit signal while they hold the lock: the signal
takes effect right after, and the pool process does the clean-up.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from typing import Any

from otp import TIMEOUT, Down, Pid, ProcessExit, Ref, make_ref, telemetry
from otp._api import demonitor_process
from otp._process import STRUCTURE, Process, _cancel_interrupt, current
from pool._core import (
    GRANT,
    GRANTED,
    QUEUED,
    REFUSED,
    RUNNING,
    SKIP,
    SKIPPED,
    Core,
    From,
    PoolDown,
    PoolStats,
    Reply,
    Request,
)
from pool._errors import CheckoutTimeout, PoolError, UnknownCommand
from pool._server import lookup, stop

__all__ = ["Checkout", "Pool", "checkout", "stats", "update"]

_monotonic = time.monotonic
_execute = telemetry.execute
_INF = float("inf")
_LOCK_GRACE = 0.01

EV_CHECKOUT_START = ("pool", "checkout", "start")
EV_CHECKOUT_STOP = ("pool", "checkout", "stop")
EV_CHECKOUT_EXCEPTION = ("pool", "checkout", "exception")


class _Hooks:
    """Test seams at points no message marks. Production leaves them None."""

    after_wait_timeout: Callable[[Request], None] | None = None


hooks = _Hooks()


# -- finding the pool ---------------------------------------------------------------------------


def core_for(pool: Any, action: str = "checkout") -> Core:
    """The core of a pool given as a `Pool`, a pid or a registered name.

    Exits the caller (`otp.ProcessExit`) with ``("noproc", (action, pool))`` when no pool runs
    there, like `otp.call`; raises TypeError when the process is not a pool.
    """
    if isinstance(pool, Pool):
        return pool._core(action)
    if pool.__class__ is Pid:
        core = lookup(pool)
        if core is None:
            if pool._proc.dead:
                raise ProcessExit(("noproc", (action, pool)))
            raise TypeError(f"{action}: {pool!r} is not a pool")
        return core
    me = current()
    with STRUCTURE:
        proc = me.node.names.get(pool)
    if proc is None:
        raise ProcessExit(("noproc", (action, pool)))
    core = lookup(proc.pid)
    if core is None:
        raise TypeError(f"{action}: {pool!r} ({proc.pid!r}) is not a pool")
    return core


def _check_timeout(timeout: Any) -> None:
    if timeout is None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0:
        raise ValueError(f"timeout must be None or a number >= 0 (seconds), got {timeout!r}")


def _check_command(core: Core, command: Any) -> None:
    commands = core.commands
    if commands is None:
        return
    try:
        known = command in commands
    except TypeError:  # unhashable: certainly not one of them
        known = False
    if not known:
        raise UnknownCommand(command, core.accepted, core.pid)


# -- keeping exit signals out of critical sections ---------------------------------------------


def _shield(me: Process) -> bool:
    """Stop exit signals from interrupting a spawned caller until `_unshield`.

    The runtime interrupts a killed process's Python code at its next bytecode boundary. Inside
    the pool's lock that would leave the pool's state half-changed, so for the few lines that
    hold the lock the caller is marked as "in runtime code", where the runtime does not interrupt
    (as in `receive`). Adopted threads are never interrupted; nothing to do for them.
    """
    if me.adopted:
        return False
    with me._lock:
        me.in_user = False
        _cancel_interrupt(me)
    return True


def _unshield(me: Process, shielded: bool) -> None:
    if not shielded:
        return
    with me._lock:
        me.in_user = True
    if me.dead:  # killed while shielded: stop now, as the signal would have
        raise ProcessExit(me.reason, f"{me.pid!r} was killed during a pool operation")


def _drop_alias(me: Process, ref: Ref) -> None:
    with me._lock:
        me.aliases.discard(ref)


def _kind(exc: BaseException) -> str:
    """NimblePool's error kinds: an Exception is "error"; exits and interrupts are "exit"."""
    return "error" if isinstance(exc, Exception) else "exit"


# -- the checkout steps -------------------------------------------------------------------------


def _acquire(core: Core, me: Process, command: Any, timeout: float | None) -> Request:
    """Steps 1-2: return a GRANTED request, or raise the reason there is none."""
    deadline = _INF if timeout is None else _monotonic() + timeout
    req = Request(make_ref(), me, command, deadline, core.pid)
    shielded = False if me.adopted else _shield(me)
    try:
        lock = core.lock
        # Callbacks hold the lock only briefly; a caller is not refused (even with timeout=0,
        # which means "do not queue") because another thread is in it for a microsecond.
        if not lock.acquire(False) and not lock.acquire(
            True, -1 if timeout is None else max(timeout, _LOCK_GRACE)
        ):
            raise CheckoutTimeout(core.pid, timeout, command)
        try:
            outcome = _enter(core, me, req)
        finally:
            lock.release()
    finally:
        if shielded:
            _unshield(me, shielded)
    if outcome is GRANT:
        return req
    if outcome is SKIP:
        raise req.value
    return _wait(core, me, req, outcome, timeout)


def _enter(core: Core, me: Process, req: Request) -> Any:
    """Under the lock: serve `req` now, or queue it (and prepare to receive the answer)."""
    try:
        if core.status is not RUNNING or core.proc.dead:
            core.check_running()
        if core.call_enqueue and not core.enqueue(req):
            return SKIP
        # Idle workers beside waiters means every waiter passed on them (serve() leaves no
        # other such state): a new request may take one without jumping anyone's place.
        if core.idle:
            outcome = core.try_checkout(req)
            if outcome is GRANT:
                core.register(req)
                if core.proc.dead:  # a callback killed the pool under our feet
                    raise PoolDown(core.proc.reason)
                return GRANT
            if outcome is SKIP:
                return SKIP
        # Wait: registered and queued first, so that whoever frees a worker finds us; the
        # alias before the lock is released, so that the answer cannot arrive before it.
        req.state = QUEUED
        core.register(req)
        core.queue.append(req)
        core.waiting += 1
        ref = req.ref
        with me._lock:
            mark = len(me.mailbox)
            me.aliases.add(ref)
        # The pool monitor shares the request's fresh ref: a Down and a Reply differ by class.
        core.watched_by(me, ref)
        core.want_refill = True
        return mark
    except PoolDown as down:
        raise ProcessExit((down.reason, ("checkout", core.pid))) from None
    except BaseException as exc:  # noqa: BLE001 - the state is broken: crash the pool
        core.crash(exc, traceback.format_exc())
        raise ProcessExit((exc, ("checkout", core.pid))) from exc
    finally:
        if core.want_refill:
            core.maybe_poke()


def _wait(core: Core, me: Process, req: Request, mark: int, timeout: float | None) -> Request:
    # The answer is a Reply (whose delivery also spent the alias) or the pool's Down, both
    # under the request's ref (see `_enter`).
    ref = pool_mon = req.ref

    def answer(m: Any) -> bool:
        cls = m.__class__
        return (cls is Reply or cls is Down) and m.ref is ref

    remaining = None if timeout is None else max(0.0, req.deadline - _monotonic())
    try:
        msg = me.receive(answer, remaining, mark, f"checkout from pool {core.pid!r}")
    except BaseException:
        if me.dead:
            # Killed while waiting: the pool sees our Down and drops (or reclaims) the request.
            _drop_alias(me, ref)
            raise
        # Alive but interrupted (a signal handler's exception, KeyboardInterrupt): withdraw the
        # request as a timeout would, or a later grant would strand a worker with us.
        _withdraw(core, me, req, pool_mon, timeout)
        raise
    if msg is TIMEOUT:
        if hooks.after_wait_timeout is not None:
            hooks.after_wait_timeout(req)
        raise _withdraw(core, me, req, pool_mon, timeout)
    demonitor_process(me, pool_mon, True)
    if msg.__class__ is Reply:  # its delivery removed the alias (`_core._hand_off`)
        if msg.grant:
            return req
        raise msg.value
    _drop_alias(me, ref)
    raise ProcessExit((msg.reason, ("checkout", core.pid)))


def _withdraw(
    core: Core, me: Process, req: Request, pool_mon: Ref, timeout: float | None
) -> BaseException:
    """Settle a wait that ends without an answer, under the lock: whatever the pool did
    meanwhile is final now. Returns the error the caller should see."""
    error: BaseException
    shielded = _shield(me)
    try:
        with core.lock:
            # Answers are delivered under this lock: from here on none can arrive.
            _drop_alias(me, req.ref)
            try:
                if req.state is SKIPPED or req.state is REFUSED:
                    error = req.value  # answered in the same instant: the answer is better news
                else:
                    core.give_up(req)
                    error = CheckoutTimeout(
                        core.pid,
                        timeout,
                        req.command,
                        core.last_init_error if core.failures else None,
                    )
            except BaseException as exc:  # noqa: BLE001 - a callback broke the state
                core.crash(exc, traceback.format_exc())
                error = ProcessExit((exc, ("checkout", core.pid)))
            finally:
                if core.want_refill:
                    core.maybe_poke()
    finally:
        _unshield(me, shielded)
    ref = req.ref
    me.flush_matching(lambda m: m.__class__ is Reply and m.ref is ref)
    demonitor_process(me, pool_mon, True)
    return error


def _release(
    core: Core, me: Process, req: Request, checkin_state: Any, exc: BaseException | None
) -> None:
    """Step 4: check the worker in (or remove it after `exc`)."""
    if me.dead:
        # Killed while holding it: the pool process handles our Down ("DOWN"). A thread that
        # has not yet seen its exit gets it now, at this runtime call (as OTP would).
        if exc is None:
            current()
        return
    crashed: BaseException | None = None
    shielded = False if me.adopted else _shield(me)
    try:
        with core.lock:
            try:
                if exc is None:
                    core.finish(req, checkin_state)
                else:
                    core.abandon(req, _kind(exc))
            except BaseException as broken:  # noqa: BLE001 - a callback broke the state
                core.crash(broken, traceback.format_exc())
                crashed = broken
            finally:
                if core.want_refill:
                    core.maybe_poke()
    finally:
        if shielded:
            _unshield(me, shielded)
    if crashed is not None and exc is None:
        raise ProcessExit((crashed, ("checkin", core.pid)))


def _bad_fun_result(out: Any) -> TypeError:
    return TypeError(f"the checkout function must return (result, checkin_state), got {out!r}")


# -- the public functions -----------------------------------------------------------------------


def checkout(
    pool: Any,
    command: Any,
    fun: Callable[[From, Any], tuple[Any, Any]] | None = None,
    timeout: float | None = 5.0,
) -> Any:
    """Check a worker out, run ``fun(from_, client_state)`` in this thread, check it back in.

    `fun` returns ``(result, checkin_state)``: `result` is returned, `checkin_state` goes to
    ``handle_checkin``. `timeout` (seconds, None for ever) bounds the wait for a worker, not
    `fun`. Without `fun`, returns a `Checkout` context manager instead.

    Raises `UnknownCommand` (before queuing) if the worker class declares `commands` and
    `command` is not one; `CheckoutTimeout` if no worker came in time; the skip exception if
    the checkout was skipped; `WorkerStartError` if the pool has no worker and cannot start one.
    If `fun` raises, the worker is removed (``terminate_worker("error" | "exit", ...)``) and
    replaced, and the exception propagates. If the pool is not running (or dies while we wait),
    exits the caller (`otp.ProcessExit`) with ``(reason, ("checkout", pool))``.

    >>> import pool
    >>> class Conn(pool.PoolWorker):
    ...     def init_worker(self, pool_state):
    ...         return ("ok", {"uses": 0}, pool_state)
    >>> p = pool.start(Conn, None, pool_size=1)
    >>> def use(from_, conn):
    ...     conn["uses"] += 1
    ...     return conn["uses"], conn
    >>> pool.checkout(p, "query", use)
    1
    >>> pool.stop(p)
    """
    if fun is None:
        return Checkout(pool, command, timeout)
    # The common cases inline (a cached Pool handle, no declared commands, a plain timeout);
    # everything else through the general helpers, which raise the same errors as before.
    core = pool._cached if pool.__class__ is Pool else None
    if core is None or core.proc.dead:
        core = core_for(pool)
    if core.commands is not None:
        _check_command(core, command)
    if timeout is not None and not (
        (timeout.__class__ is float or timeout.__class__ is int) and timeout >= 0
    ):
        _check_timeout(timeout)
    me = current()
    if _listening():
        return _checkout_observed(core, me, command, fun, timeout)
    return _use(core, me, _acquire(core, me, command, timeout), fun)


def _use(core: Core, me: Process, req: Request, fun: Callable[[From, Any], tuple[Any, Any]]) -> Any:
    """Step 3 and 4: run `fun` with the worker, then check it in (or remove it if `fun` raised)."""
    try:
        out = fun(req.from_, req.value)
        if out.__class__ is not tuple or len(out) != 2:
            raise _bad_fun_result(out)
    except BaseException as exc:
        _release(core, me, req, None, exc)
        raise
    _release(core, me, req, out[1], None)
    return out[0]


def _listening() -> bool:
    """Is any telemetry handler attached to the checkout events? If not, skip building them."""
    return telemetry.listening(EV_CHECKOUT_START, EV_CHECKOUT_STOP, EV_CHECKOUT_EXCEPTION)


def _checkout_observed(
    core: Core,
    me: Process,
    command: Any,
    fun: Callable[[From, Any], tuple[Any, Any]],
    timeout: float | None,
) -> Any:
    meta = {"pool": core.pid, "command": command}
    t0 = _monotonic()
    _execute(EV_CHECKOUT_START, {"monotonic_time": t0}, meta)
    try:
        req = _acquire(core, me, command, timeout)
    except BaseException as exc:
        t = _monotonic() - t0
        _execute(
            EV_CHECKOUT_EXCEPTION,
            {"duration": t, "queue_time": t},
            {**meta, "kind": _kind(exc), "reason": exc},
        )
        raise
    queue_time = _monotonic() - t0
    try:
        result = _use(core, me, req, fun)
    except BaseException as exc:
        _execute(
            EV_CHECKOUT_EXCEPTION,
            {"duration": _monotonic() - t0, "queue_time": queue_time},
            {**meta, "kind": _kind(exc), "reason": exc},
        )
        raise
    _execute(EV_CHECKOUT_STOP, {"duration": _monotonic() - t0, "queue_time": queue_time}, meta)
    return result


_UNSET: Any = object()


class Checkout:
    """``with checkout(pool, command) as client_state:`` - the common case, as a context manager.

    The block runs in this thread holding the worker; `client_state` is what ``handle_checkout``
    returned (by default the worker state itself). On a normal exit the worker is checked in
    with `checkin_state` (default: the client state); if the block raises, the worker is
    removed with the error kind and the exception propagates. `from_` is available inside the
    block for `update`.

    >>> import pool
    >>> class Conn(pool.PoolWorker):
    ...     def init_worker(self, pool_state):
    ...         return ("ok", "conn-1", pool_state)
    >>> p = pool.Pool(pool.start(Conn, None, pool_size=1))
    >>> with p.checkout("anonymous") as conn:
    ...     conn
    'conn-1'
    >>> p.stop()
    """

    __slots__ = (
        "pool",
        "command",
        "timeout",
        "checkin_state",
        "_core",
        "_me",
        "_req",
        "_t0",
        "_tq",
        "_meta",
    )

    def __init__(self, pool: Any, command: Any, timeout: float | None = 5.0) -> None:
        _check_timeout(timeout)
        self.pool = pool
        self.command = command
        self.timeout = timeout
        self.checkin_state: Any = _UNSET
        self._req: Request | None = None

    @property
    def from_(self) -> From:
        if self._req is None:
            raise PoolError("from_ is only available inside the with block")
        return self._req.from_

    def __enter__(self) -> Any:
        if self._req is not None:
            raise PoolError("this Checkout is already in use; make a new one per with block")
        target = self.pool
        core = target._cached if target.__class__ is Pool else None
        if core is None or core.proc.dead:
            core = core_for(target)
        if core.commands is not None:
            _check_command(core, self.command)
        me = current()
        self._core, self._me = core, me
        if not _listening():
            self._meta = None
            self._req = _acquire(core, me, self.command, self.timeout)
            return self._req.value
        self._meta = {"pool": core.pid, "command": self.command}
        self._t0 = _monotonic()
        _execute(EV_CHECKOUT_START, {"monotonic_time": self._t0}, self._meta)
        try:
            req = _acquire(core, me, self.command, self.timeout)
        except BaseException as exc:
            t = _monotonic() - self._t0
            _execute(
                EV_CHECKOUT_EXCEPTION,
                {"duration": t, "queue_time": t},
                {**self._meta, "kind": _kind(exc), "reason": exc},
            )
            raise
        self._tq = _monotonic() - self._t0
        self._req = req
        return req.value

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        req = self._req
        if req is None:
            return
        self._req = None
        state = req.value if self.checkin_state is _UNSET else self.checkin_state
        meta = self._meta
        try:
            _release(self._core, self._me, req, state if exc is None else None, exc)
        except BaseException as crash:
            if meta is not None:
                self._emit(EV_CHECKOUT_EXCEPTION, {**meta, "kind": _kind(crash), "reason": crash})
            raise
        if meta is None:
            return
        if exc is None:
            self._emit(EV_CHECKOUT_STOP, meta)
        else:
            self._emit(EV_CHECKOUT_EXCEPTION, {**meta, "kind": _kind(exc), "reason": exc})

    def _emit(self, event: tuple[str, ...], metadata: dict[str, Any]) -> None:
        _execute(event, {"duration": _monotonic() - self._t0, "queue_time": self._tq}, metadata)


def update(from_: From, message: Any) -> None:
    """During a checkout, run ``handle_update(message, worker_state, pool_state)`` for it.

    The new worker state is the one ``terminate_worker`` gets if the client then crashes, and
    the one ``handle_checkin`` gets. Raises `PoolError` when `from_` is not a checkout in
    progress. Runs in this thread; ``handle_update`` raising crashes the pool (as in NimblePool).
    """
    if not isinstance(from_, From):
        raise TypeError(f"update expects the From given to the checkout function, got {from_!r}")
    core = core_for(from_.pool, "update")
    me = current()
    crashed: BaseException | None = None
    shielded = _shield(me)
    try:
        with core.lock:
            try:
                core.check_running()
                ref = from_.ref
                req = core.requests.get(ref.number) if ref.__class__ is Ref else None
                if req is None or req.state is not GRANTED:
                    raise PoolError(
                        f"update: {from_!r} is not a checkout in progress on pool {core.pid!r}"
                    )
                assert req.worker is not None
                result = core.worker.handle_update(message, req.worker.state, core.pool_state)
                match result:
                    case ("ok", worker_state, pool_state):
                        req.worker.state = worker_state
                        core.pool_state = pool_state
                    case _:
                        raise core._bad("handle_update", "('ok', worker_state, pool_state)", result)
            except (PoolError, PoolDown):
                raise
            except BaseException as exc:  # noqa: BLE001 - as in NimblePool: the pool crashes
                core.crash(exc, traceback.format_exc())
                crashed = exc
    except PoolDown as down:
        raise ProcessExit((down.reason, ("update", core.pid))) from None
    finally:
        _unshield(me, shielded)
    if crashed is not None:
        raise ProcessExit((crashed, ("update", core.pid)))


def stats(pool: Any) -> PoolStats:
    """Idle, checked out, initialising and waiting counts, totals started and removed.

    Read under the pool's lock from this thread: no message to the pool, so it is safe to call
    often (tests poll it). A dead pool's stats say ``status="dead"``.
    """
    core = core_for(pool, "stats")
    with core.lock:
        return core.stats()


class Pool:
    """A handle on a pool given by pid or registered name, with the API as methods.

    A handle on a name resolves it at each call, so it follows a pool that a supervisor
    restarted; a handle on a pid caches the pool's state and skips the lookup.

    >>> import pool
    >>> class W(pool.PoolWorker):
    ...     def init_worker(self, ps):
    ...         return ("ok", "w", ps)
    >>> _ = pool.start(W, None, pool_size=1, name="doc_pool")
    >>> p = pool.Pool("doc_pool")
    >>> p.checkout("anything", lambda from_, w: (w.upper(), w))
    'W'
    >>> p.stop()
    """

    __slots__ = ("target", "_cached")

    def __init__(self, target: Pid | Any) -> None:
        if isinstance(target, Pool):
            target = target.target
        self.target: Any = target
        self._cached: Core | None = None

    def __repr__(self) -> str:
        return f"Pool({self.target!r})"

    def _core(self, action: str) -> Core:
        core = self._cached
        if core is not None and not core.proc.dead:
            return core
        if self.target.__class__ is Pid:
            core = core_for(self.target, action)
            self._cached = core
            return core
        return core_for(self.target, action)

    @property
    def pid(self) -> Pid | None:
        """The pool's current pid, or None if nothing is registered under the name."""
        from pool._server import resolve_pid

        return resolve_pid(self)

    def checkout(
        self,
        command: Any,
        fun: Callable[[From, Any], tuple[Any, Any]] | None = None,
        timeout: float | None = 5.0,
    ) -> Any:
        """`pool.checkout` on this pool (a `Checkout` context manager when `fun` is None)."""
        return checkout(self, command, fun, timeout)

    def stats(self) -> PoolStats:
        return stats(self)

    def stop(self, reason: Any = "normal", timeout: float | None = None) -> None:
        stop(self, reason, timeout)
