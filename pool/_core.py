"""The pool's state and every rule that changes it, shared by the pool process and client threads.

One `Core` per pool. Its fields are guarded by ``Core.lock``, and every worker callback runs
while that lock is held: callbacks are serialised exactly as if one process ran them all, but the
thread that runs them is whichever one holds the lock. A client checking out with nobody waiting
runs ``handle_enqueue`` and ``handle_checkout`` itself; a client checking in runs
``handle_checkin`` and, if someone waits, ``handle_checkout`` for them and hands them the worker.
The pool process handles what nobody is waiting on: client deaths, worker starts, idle pings,
unknown messages, stop. That is the whole fast path: no message hop unless a client must wait.

Invariants, kept under the lock:

* every live worker is in exactly one place: ``idle`` (FIFO, checkin at the back), the
  ``worker`` of one GRANTED request, or being started (``inits``);
* ``waiting`` is the number of QUEUED requests in ``queue`` (which may also hold stale entries
  that are skipped); ``held`` is the number of GRANTED requests;
* a QUEUED or GRANTED request is in ``requests`` and in its client's ``Client.requests``, and
  the pool monitors that client process (one monitor per client process, kept until it dies):
  a client that dies is always noticed by the pool process (``on_down``);
* a request leaves QUEUED/GRANTED exactly once, under the lock, by whoever gets there first
  (the client finishing, timing out or crashing; the pool seeing the client's Down; a waiter
  being served, expired or refused). Everyone else then finds it in another state and backs off.

Lock order: ``Core.lock`` before ``otp``'s structure lock before any process's own lock. Callbacks
may use the otp API (it only takes the later locks) but must not check out from their own pool.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from typing import Any, NamedTuple

import attrs
from loguru import logger

from otp import BadReturn, Down, Exit, Pid, ProcessExit, Ref, make_ref, spawn_opt, telemetry
from otp import exit as otp_exit
from otp._api import demonitor_process
from otp._process import STRUCTURE, Process, _local
from pool._errors import CheckoutSkipped, UnknownCommand, WorkerStartError
from pool._worker import PoolWorker, overrides

__all__ = ["Config", "Core", "From", "PoolStats"]

_monotonic = time.monotonic
_execute = telemetry.execute


class _State:
    """A request's state: one object per state, compared by identity."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


QUEUED, GRANTED, DONE = _State("QUEUED"), _State("GRANTED"), _State("DONE")
CANCELLED, SKIPPED, REFUSED = _State("CANCELLED"), _State("SKIPPED"), _State("REFUSED")
# Outcomes of an attempt to serve a request.
GRANT, SKIP, NONE = "grant", "skip", "none"
# Pool statuses.
STARTING, RUNNING, STOPPED, CRASHED = "starting", "running", "stopped", "crashed"

EV_INIT_START = ("pool", "worker", "init", "start")
EV_INIT_STOP = ("pool", "worker", "init", "stop")
EV_INIT_EXCEPTION = ("pool", "worker", "init", "exception")
EV_REMOVED = ("pool", "worker", "removed")
EV_STATS = ("pool", "stats")

_CHECKOUT_SHAPES = (
    "('ok', client_state, worker_state, pool_state), ('remove', reason, pool_state), "
    "('skip', exception, pool_state) or ('pass', pool_state)"
)
_CHECKIN_SHAPES = "('ok', worker_state, pool_state) or ('remove', reason, pool_state)"
_INIT_SHAPES = "('ok', worker_state, pool_state) or ('async', fun, pool_state) with a callable fun"
_ENQUEUE_SHAPES = "('ok', command, pool_state) or ('skip', exception, pool_state)"
_INFO_SHAPES = "('ok', worker_state) or ('remove', reason)"
_PING_SHAPES = "('ok', worker_state), ('remove', reason) or ('stop', reason)"


class From(NamedTuple):
    """Who holds (or asks for) a worker: the client's pid, the checkout's ref, the pool's pid.

    Given to ``handle_checkout``/``handle_checkin`` and to the checkout function; pass it to
    `pool.update` from inside the function.
    """

    pid: Pid
    ref: Ref
    pool: Pid


@attrs.frozen
class PoolStats:
    """A snapshot of a pool, for humans and tests (`pool.stats`)."""

    status: str
    pool_size: int
    idle: int
    checked_out: int
    initialising: int
    waiting: int
    total_started: int
    removed: int
    init_failures: int


@attrs.frozen
class Config:
    """Validated `start_link` options (see `pool.start_link` for their meaning)."""

    pool_size: int
    lazy: bool
    worker_idle_timeout: float | None
    max_idle_pings: int | None
    min_ready: int
    start_timeout: float
    max_start_failures: int | None
    worker_max_age: float | None
    max_checkouts: int | None
    backoff_initial: float
    backoff_max: float
    stats_interval: float | None
    name: Any
    clock: Callable[[], float] | None


class Worker:
    """One live worker: its state and its bookkeeping (id for logs, age, use count)."""

    __slots__ = ("id", "state", "born", "idle_since", "checkouts")

    def __init__(self, wid: int, state: Any, now: float) -> None:
        self.id = wid
        self.state = state
        self.born = now
        self.idle_since = now
        self.checkouts = 0


class Request:
    """One checkout, from enqueue to checkin. `value` is the client state, or the error."""

    __slots__ = (
        "ref",
        "owner",
        "client",
        "command",
        "wrapped",
        "deadline",
        "state",
        "worker",
        "value",
        "from_",
    )

    def __init__(self, ref: Ref, client: Process, command: Any, deadline: float, pool: Pid) -> None:
        self.ref = ref
        self.owner: Client | None = None
        self.client = client
        self.command = command
        self.wrapped = command
        self.deadline = deadline
        self.state = DONE
        self.worker: Worker | None = None
        self.value: Any = None
        self.from_ = _new_from(From, (client.pid, ref, pool))


# `From(a, b, c)` runs NamedTuple's Python-level __new__; building the tuple directly is the
# same object for a third of the cost (one per checkout).
_new_from = tuple.__new__


class Client:
    """A client process as the pool sees it: its monitor and its open requests (by ref number:
    an int hashes in C, a Ref through Python, and a ref's number is what makes it equal)."""

    __slots__ = ("proc", "mon", "requests")

    def __init__(self, proc: Process, mon: Ref) -> None:
        self.proc = proc
        self.mon = mon
        self.requests: dict[int, Request] = {}


class Reply:
    """What a waiting client receives: a grant (value = client state) or a refusal (an error)."""

    __slots__ = ("ref", "grant", "value")

    def __init__(self, ref: Ref, grant: bool, value: Any) -> None:
        self.ref = ref
        self.grant = grant
        self.value = value


class InitResult:
    """An async ``init_worker`` task's outcome, sent to the pool."""

    __slots__ = ("key", "ok", "value", "stack")

    def __init__(self, key: Ref, ok: bool, value: Any, stack: str | None) -> None:
        self.key = key
        self.ok = ok
        self.value = value
        self.stack = stack


class Init:
    """An async worker start in flight."""

    __slots__ = ("key", "wid", "pid", "mon", "t0")

    def __init__(self, key: Ref, wid: int, t0: float) -> None:
        self.key = key
        self.wid = wid
        self.t0 = t0
        self.pid: Pid | None = None
        self.mon: Ref | None = None


class Poke:
    """A client's hint that the pool should start workers (sent at most once until handled)."""

    __slots__ = ()


POKE = Poke()


class PoolDown(Exception):
    """Internal: the pool is not running; `reason` is why."""

    def __init__(self, reason: Any) -> None:
        super().__init__(reason)
        self.reason = reason


class Stop(Exception):
    """Internal: the pool process must terminate with `reason`."""

    def __init__(self, reason: Any) -> None:
        super().__init__(reason)
        self.reason = reason


def _pool_died(core: Core, exc: BaseException) -> bool:
    """True when `exc` is the pool process's own death, which no callback wrapper may eat.

    In a client thread the same ProcessExit means the client died: that is the callback's
    failure (the worker is removed) and the client learns of its death right after.
    """
    return (
        exc.__class__ is ProcessExit
        and core.proc.dead
        and getattr(_local, "proc", None) is core.proc
    )


def _hand_off(client: Process, ref: Ref, reply: Reply) -> None:
    """Deliver a waiter's one answer, `Process.deliver_reply` and the waiter's alias removal in
    one lock round trip: only one answer ever goes to a ref, so the alias is spent by it (a late
    or second answer would be dropped, as after the waiter's own removal)."""
    with client._lock:
        if client.dead:
            return
        aliases = client.aliases
        if ref not in aliases:
            return
        aliases.discard(ref)
        client.mailbox.append(reply)
        if client._waiting:
            client._waiting = False
            client._wake.release()


def _init_task(pool: Pid, key: Ref, fun: Callable[[], Any]) -> None:
    """Body of an async worker start: run `fun` off the pool process and report back."""
    try:
        value = fun()
    except Exception as exc:  # noqa: BLE001 - a failed start is reported, then retried
        pool._proc.deliver(InitResult(key, False, exc, traceback.format_exc()))
        return
    pool._proc.deliver(InitResult(key, True, value, None))


class Core:
    """The state of one pool; see the module doc for who calls what and the invariants."""

    def __init__(self, worker: PoolWorker, config: Config, proc: Process) -> None:
        cls = type(worker)
        self.lock = threading.Lock()
        self.worker = worker
        self.cls = cls
        self.config = config
        self.proc = proc
        self.pid = proc.pid
        self.clock: Callable[[], float] = config.clock or _monotonic
        self.pool_size = config.pool_size
        self.lazy = config.lazy
        self.max_age = config.worker_max_age
        self.max_checkouts = config.max_checkouts
        self.commands = cls.commands
        self.accepted = None if cls.commands is None else tuple(sorted(cls.commands, key=repr))
        # Skipping a callback that was not overridden changes nothing but the cost.
        self.call_enqueue = overrides(cls, "handle_enqueue")
        self.call_checkin = overrides(cls, "handle_checkin")
        self.call_cancelled = overrides(cls, "handle_cancelled")
        self.call_terminate = overrides(cls, "terminate_worker")
        self.call_info = overrides(cls, "handle_info")
        self.label = f"{cls.__qualname__} pool {self.pid!r}"
        # Guarded by `lock` from here on.
        self.status = STARTING
        self.exit_reason: Any = None
        self.pool_state: Any = None
        self.idle: deque[Worker] = deque()
        self.queue: deque[Request] = deque()
        self.waiting = 0
        self.held = 0
        self.requests: dict[int, Request] = {}  # by ref number, as Client.requests
        self.clients: dict[Process, Client] = {}  # every live process that used the pool
        self.by_mon: dict[Ref, Client] = {}  # the same, by the pool's monitor on it
        self.inits: dict[Ref, Init] = {}
        self.init_by_mon: dict[Ref, Init] = {}
        self.init_pids: set[Pid] = set()  # tasks whose Exit is still to come
        self.failures = 0
        self.init_failures = 0
        self.last_init_error: BaseException | None = None
        self.retry_at: float | None = None
        self.want_refill = False
        self.poked = False
        self.total_started = 0
        self.removed = 0
        self.next_id = 1
        self.idle_check_at: float | None = None
        self.stats_at: float | None = None

    def __repr__(self) -> str:
        return f"<Core {self.label} {self.status}>"

    # -- status --------------------------------------------------------------------------------

    def check_running(self) -> None:
        """Raise `PoolDown` unless requests may be served (lock held)."""
        if self.proc.dead:
            raise PoolDown("noproc")
        if self.status is not RUNNING:
            raise PoolDown(self.exit_reason if self.status is not STARTING else "starting")

    def crash(self, exc: BaseException, stack: str) -> None:
        """A client thread found the pool broken (a bad return, a raising ``handle_enqueue``).

        The state can no longer be trusted: nobody may use it from now on, and the pool process
        is told to crash with the same reason, running ``terminate_worker``/``terminate_pool``.
        """
        from pool._server import Crash

        if self.status is RUNNING or self.status is STARTING:
            self.status = CRASHED
            self.exit_reason = exc
            self.proc.deliver(Crash(exc, stack))

    def live(self) -> int:
        return len(self.idle) + self.held + len(self.inits)

    def stats(self) -> PoolStats:
        return PoolStats(
            status="dead" if self.proc.dead else self.status,
            pool_size=self.pool_size,
            idle=len(self.idle),
            checked_out=self.held,
            initialising=len(self.inits),
            waiting=self.waiting,
            total_started=self.total_started,
            removed=self.removed,
            init_failures=self.init_failures,
        )

    # -- monitors the pool holds on its clients -----------------------------------------------

    def watch(self, client: Process, ref: Ref) -> None:
        """Make the pool monitor `client` under `ref`, from any thread (a monitor on its behalf)."""
        me = self.proc
        with STRUCTURE:
            if not client.dead:
                client.monitored_by[ref] = me
                me.monitors[ref] = client
                return
        me.deliver(Down(ref, client.pid, "noproc"))

    def watched_by(self, client: Process, ref: Ref | None = None) -> Ref:
        """Make `client` monitor the pool, without `otp.monitor`'s `current()` (which raises
        in a client that was just killed: inside the lock that must not happen).

        `ref` may be a fresh ref the caller already made for something else (a waiter's
        request ref: its Down and its Reply differ by class), which saves making another."""
        if ref is None:
            ref = make_ref()
        me = self.proc
        with STRUCTURE:
            if not me.dead:
                me.monitored_by[ref] = client
                client.monitors[ref] = me
                return ref
        client.deliver(Down(ref, self.pid, "noproc"))
        return ref

    def register(self, req: Request) -> None:
        """Track `req` under its client, monitoring the client process on its first request.

        The monitor stays until the client process dies, however many checkouts it makes: a
        thread that checks out in a loop pays for one monitor, not one per checkout, and its
        death (one Down) settles every request it still has.
        """
        proc = req.client
        client = self.clients.get(proc)
        if client is None:
            client = Client(proc, make_ref())
            self.clients[proc] = client
            self.by_mon[client.mon] = client
            self.watch(proc, client.mon)
        key = req.ref.number
        client.requests[key] = req
        req.owner = client
        self.requests[key] = req

    def unregister(self, req: Request) -> None:
        key = req.ref.number
        if self.requests.pop(key, None) is not None:
            owner = req.owner
            assert owner is not None
            owner.requests.pop(key, None)

    # -- callbacks with NimblePool's error rules -----------------------------------------------

    def _log_callback_error(self, callback: str, exc: BaseException, wid: int | None) -> None:
        logger.opt(exception=exc).bind(pool=repr(self.pid), worker=wid, callback=callback).error(
            "error in {cls}.{callback} (pool {pool}, worker {worker}); {what}",
            cls=self.cls.__name__,
            callback=callback,
            pool=self.pid,
            worker=wid,
            what="the worker is removed" if wid is not None else "ignored",
        )

    def _bad(self, callback: str, shapes: str, result: Any) -> BadReturn:
        return BadReturn(f"{self.cls.__name__}.{callback}: expected {shapes}, got {result!r}")

    def cancelled(self, context: str) -> None:
        if not self.call_cancelled:
            return
        try:
            self.worker.handle_cancelled(context, self.pool_state)
        except (Exception, ProcessExit) as exc:
            if _pool_died(self, exc):
                raise
            self._log_callback_error("handle_cancelled", exc, None)

    def enqueue(self, req: Request) -> bool:
        """Run ``handle_enqueue``; False (with ``req.value`` set) when the request is skipped."""
        if not self.call_enqueue:
            return True
        try:
            result = self.worker.handle_enqueue(req.command, self.pool_state)
        except UnknownCommand as exc:
            req.value = exc.with_context(self.pid, self.accepted)
            return False
        if result.__class__ is tuple and len(result) == 3 and result[0] == "ok":  # every checkout
            self.pool_state = result[2]
            req.wrapped = result[1]
            return True
        match result:
            case ("ok", wrapped, pool_state):
                self.pool_state = pool_state
                req.wrapped = wrapped
                return True
            case ("skip", reason, pool_state):
                self.pool_state = pool_state
                req.value = self.skip_error(req, reason)
                return False
        raise self._bad("handle_enqueue", _ENQUEUE_SHAPES, result)

    def skip_error(self, req: Request, reason: Any) -> BaseException:
        if isinstance(reason, type) and issubclass(reason, BaseException):
            try:
                reason = reason()  # NimblePool raises an exception module with its defaults
            except Exception:  # noqa: BLE001 - a class that needs arguments: wrap the class
                return CheckoutSkipped(self.pid, req.command, reason)
        if isinstance(reason, UnknownCommand):
            return reason.with_context(self.pid, self.accepted)
        if isinstance(reason, BaseException):
            return reason
        return CheckoutSkipped(self.pid, req.command, reason)

    def try_checkout(self, req: Request) -> str:
        """Offer idle workers to `req`, oldest first, until one is handed out or skipped.

        Returns GRANT (``req.worker``/``req.value`` set, ``held`` counted), SKIP (``req.value``
        is the error; the worker stays first in line) or NONE (no idle worker left, or every
        one of them passed). Workers that passed keep their place in the idle queue.
        """
        # One function, `passed` made only when a worker passes: this runs on every checkout.
        passed: list[Worker] | None = None
        idle = self.idle
        worker = self.worker
        max_age = self.max_age
        try:
            while idle:
                w = idle.popleft()
                if max_age is not None and self.clock() - w.born >= max_age:
                    self.remove_worker(w, "max_age")
                    continue
                try:
                    result = worker.handle_checkout(
                        req.wrapped, req.from_, w.state, self.pool_state
                    )
                except UnknownCommand as exc:
                    idle.appendleft(w)
                    req.value = exc.with_context(self.pid, self.accepted)
                    req.state = SKIPPED
                    return SKIP
                except (Exception, ProcessExit) as exc:
                    if _pool_died(self, exc):
                        raise
                    self._log_callback_error("handle_checkout", exc, w.id)
                    self.remove_worker(w, exc)
                    continue
                if result.__class__ is tuple and len(result) == 4 and result[0] == "ok":
                    w.state = result[2]
                    self.pool_state = result[3]
                    w.checkouts += 1
                    req.worker = w
                    req.value = result[1]
                    req.state = GRANTED
                    self.held += 1
                    return GRANT
                match result:
                    case ("remove", reason, pool_state):
                        self.pool_state = pool_state
                        self.remove_worker(w, reason)
                        continue
                    case ("skip", reason, pool_state):
                        self.pool_state = pool_state
                        idle.appendleft(w)
                        req.value = self.skip_error(req, reason)
                        req.state = SKIPPED
                        return SKIP
                    case ("pass", pool_state):
                        # Not for this request (e.g. not the worker holding its session): the
                        # request looks further, and waits for a checkin if nobody fits.
                        self.pool_state = pool_state
                        if passed is None:
                            passed = []
                        passed.append(w)
                        continue
                idle.appendleft(w)
                raise self._bad("handle_checkout", _CHECKOUT_SHAPES, result)
            return NONE
        finally:
            if passed:
                self.idle.extendleft(reversed(passed))

    def checkin_worker(self, req: Request, checkin_state: Any) -> None:
        """``handle_checkin`` for a request that just left GRANTED; the worker goes back or away."""
        w = req.worker
        assert w is not None
        if self.call_checkin:
            try:
                result = self.worker.handle_checkin(
                    checkin_state, req.from_, w.state, self.pool_state
                )
            except (Exception, ProcessExit) as exc:
                if _pool_died(self, exc):
                    raise
                self._log_callback_error("handle_checkin", exc, w.id)
                self.remove_worker(w, exc)
                return
            if result.__class__ is tuple and len(result) == 3 and result[0] == "ok":
                w.state = result[1]
                self.pool_state = result[2]
            else:
                match result:
                    case ("remove", reason, pool_state):
                        self.pool_state = pool_state
                        self.remove_worker(w, reason)
                        return
                raise self._bad("handle_checkin", _CHECKIN_SHAPES, result)
        now = self.clock()
        # Recycling happens here, between checkouts, never under a client's feet.
        if self.max_checkouts is not None and w.checkouts >= self.max_checkouts:
            self.remove_worker(w, "max_checkouts")
            return
        if self.max_age is not None and now - w.born >= self.max_age:
            self.remove_worker(w, "max_age")
            return
        w.idle_since = now
        self.idle.append(w)
        if self.waiting:
            self.serve()

    def remove_worker(self, w: Worker, reason: Any, *, replace: bool = True) -> None:
        """``terminate_worker`` and forget the worker; a replacement is wanted (unless stopping)."""
        self.removed += 1
        if self.call_terminate:
            try:
                result = self.worker.terminate_worker(reason, w.state, self.pool_state)
            except (Exception, ProcessExit) as exc:
                if _pool_died(self, exc):
                    raise
                self._log_callback_error("terminate_worker", exc, None)
            else:
                match result:
                    case ("ok", pool_state):
                        self.pool_state = pool_state
                    case _:
                        raise self._bad("terminate_worker", "('ok', pool_state)", result)
        _execute(
            EV_REMOVED,
            {"lifetime": self.clock() - w.born, "checkouts": w.checkouts},
            {"pool": self.pid, "worker": w.id, "reason": reason},
        )
        if replace:
            self.want_refill = True

    # -- serving waiting clients ---------------------------------------------------------------

    def serve(self) -> None:
        """Hand idle workers to waiting clients, oldest request first (lock held, any thread).

        A request that passed on every idle worker keeps its place and waits; the requests
        behind it are still offered the idle workers. Without ``pass`` outcomes this is strict
        FIFO; with them, it is FIFO among the requests a worker fits.
        """
        # One function, `passed` made only when a request passes: a checkin that finds
        # waiters runs this every time.
        queue = self.queue
        passed: deque[Request] | None = None
        npassed = 0
        try:
            while self.waiting > npassed and self.idle and self.status is RUNNING:
                req = queue.popleft()
                if req.state is not QUEUED:
                    continue
                self.waiting -= 1
                if req.deadline <= _monotonic():
                    # NimblePool's deadline check: a caller that already gave up is not served.
                    req.state = CANCELLED
                    self.unregister(req)
                    self.cancelled("queued")
                    continue
                outcome = self.try_checkout(req)
                if outcome is NONE:
                    req.state = QUEUED
                    self.waiting += 1
                    if not self.idle:
                        queue.appendleft(req)
                        break
                    if passed is None:
                        passed = deque()
                    passed.append(req)
                    npassed += 1
                    continue
                if outcome is GRANT:
                    _hand_off(req.client, req.ref, Reply(req.ref, True, req.value))
                else:
                    self.unregister(req)
                    _hand_off(req.client, req.ref, Reply(req.ref, False, req.value))
        finally:
            if passed:
                passed.extend(self.queue)
                self.queue = passed
        queue = self.queue
        if queue and (queue[0].state is not QUEUED or len(queue) > 2 * self.waiting + 64):
            self._compact_queue()

    def _compact_queue(self) -> None:
        queue = self.queue
        while queue and queue[0].state is not QUEUED:
            queue.popleft()
        if len(queue) > 2 * self.waiting + 64:
            self.queue = deque(r for r in queue if r.state is QUEUED)

    def refuse_waiters(self, error: BaseException) -> None:
        """Fail every waiting client with `error` (no worker can be started for them)."""
        queue, self.queue = self.queue, deque()
        for req in queue:
            if req.state is not QUEUED:
                continue
            self.waiting -= 1
            req.state = REFUSED
            req.value = error
            self.unregister(req)
            self.cancelled("queued")
            _hand_off(req.client, req.ref, Reply(req.ref, False, error))

    # -- client-side transitions (lock held, in the client's thread) ---------------------------

    def finish(self, req: Request, checkin_state: Any) -> None:
        """The client's function returned: check the worker in."""
        if req.state is not GRANTED:
            return  # reclaimed already: the pool saw the client die, or it stopped
        req.state = DONE
        self.held -= 1
        key = req.ref.number  # unregister(req), inline: this is every checkin
        if self.requests.pop(key, None) is not None:
            req.owner.requests.pop(key, None)  # type: ignore[union-attr]
        if self.status is not RUNNING or self.proc.dead:
            return  # a stopped pool has no place for it; terminate_pool already ran
        self.checkin_worker(req, checkin_state)

    def abandon(self, req: Request, kind: str) -> None:
        """The client's function raised: the worker is removed with the error kind."""
        if req.state is not GRANTED:
            return
        req.state = DONE
        self.held -= 1
        self.unregister(req)
        if self.status is not RUNNING or self.proc.dead:
            return
        self.cancelled("checked_out")
        assert req.worker is not None
        self.remove_worker(req.worker, kind)

    def give_up(self, req: Request) -> None:
        """The client's wait timed out. A queued request is cancelled; a grant that raced the
        timeout never reached the client, so its worker goes back through ``handle_checkin``
        untouched instead of being terminated (NimblePool's checkin-of-unused path)."""
        if req.state is QUEUED:
            req.state = CANCELLED
            self.waiting -= 1
            self.unregister(req)
            self.cancelled("queued")
        elif req.state is GRANTED:
            req.state = DONE
            self.held -= 1
            self.unregister(req)
            self.cancelled("queued")
            if self.status is RUNNING and not self.proc.dead:
                self.checkin_worker(req, req.value)

    def maybe_poke(self) -> None:
        """After a client changed demand, wake the pool process if workers should be started."""
        self.want_refill = False
        if not self.poked and self.status is RUNNING and self.deficit() > 0:
            self.poked = True
            self.proc.deliver(POKE)

    # -- starting workers (pool process) -------------------------------------------------------

    def deficit(self) -> int:
        """How many workers to start now: up to pool_size (eager) or up to demand (lazy)."""
        room = self.pool_size - self.live()
        if room <= 0:
            return 0
        if not self.lazy:
            return room
        demand = self.waiting - len(self.inits) - len(self.idle)
        return min(room, demand) if demand > 0 else 0

    def refill(self) -> None:
        """Start missing workers unless backing off after failures; serve whoever waits."""
        self.want_refill = False
        if self.status is not RUNNING:
            return
        while self.deficit() > 0:
            if self.retry_at is not None and self.clock() < self.retry_at:
                break
            if not self.start_worker():
                break
            if self.waiting:
                self.serve()
        if self.waiting:
            self.serve()

    def start_worker(self) -> bool:
        """Call ``init_worker`` once. False when it failed (a retry is scheduled)."""
        wid = self.next_id
        self.next_id += 1
        t0 = _monotonic()
        _execute(EV_INIT_START, {"monotonic_time": t0}, {"pool": self.pid, "worker": wid})
        try:
            result = self.worker.init_worker(self.pool_state)
        except (Exception, ProcessExit) as exc:
            if _pool_died(self, exc):
                raise
            self.init_failed(wid, exc, t0, traceback.format_exc())
            return False
        match result:
            case ("ok", worker_state, pool_state):
                self.pool_state = pool_state
                self.add_ready(wid, worker_state, t0)
                return True
            case ("async", fun, pool_state) if callable(fun):
                self.pool_state = pool_state
                self.spawn_init(wid, fun, t0)
                return True
        raise self._bad("init_worker", _INIT_SHAPES, result)

    def spawn_init(self, wid: int, fun: Callable[[], Any], t0: float) -> None:
        # Linked so that the task dies with the pool; monitored so that its death is a failure.
        key = make_ref()
        init = Init(key, wid, t0)
        pid, mon = spawn_opt(_init_task, self.pid, key, fun, link=True, monitor=True)
        assert mon is not None
        init.pid, init.mon = pid, mon
        self.inits[key] = init
        self.init_by_mon[mon] = init
        self.init_pids.add(pid)

    def add_ready(self, wid: int, worker_state: Any, t0: float) -> None:
        now = self.clock()
        self.idle.append(Worker(wid, worker_state, now))
        self.total_started += 1
        self.failures = 0
        self.retry_at = None
        self.last_init_error = None
        _execute(EV_INIT_STOP, {"duration": _monotonic() - t0}, {"pool": self.pid, "worker": wid})

    def init_failed(self, wid: int, reason: Any, t0: float, stack: str | None) -> None:
        self.failures += 1
        self.init_failures += 1
        self.last_init_error = reason if isinstance(reason, BaseException) else RuntimeError(reason)
        cfg = self.config
        delay = min(cfg.backoff_initial * 2 ** (self.failures - 1), cfg.backoff_max)
        self.retry_at = self.clock() + delay
        logger.bind(pool=repr(self.pid), worker=wid).error(
            "{cls}.init_worker failed (pool {pool}, worker {worker}, {n} in a row): {reason!r}; "
            "retrying in {delay:.3f} s\n{stack}",
            cls=self.cls.__name__,
            pool=self.pid,
            worker=wid,
            n=self.failures,
            reason=reason,
            delay=delay,
            stack=stack or "",
        )
        _execute(
            EV_INIT_EXCEPTION,
            {"duration": _monotonic() - t0},
            {"pool": self.pid, "worker": wid, "reason": reason},
        )
        if self.live() == 0 and self.waiting:
            self.refuse_waiters(WorkerStartError(self.pid, reason))

    def init_result(self, msg: InitResult) -> None:
        init = self.inits.pop(msg.key, None)
        if init is None:
            return
        assert init.mon is not None
        self.init_by_mon.pop(init.mon, None)
        # Its Down is no longer news; its Exit (we trap exits) will be absorbed by on_exit.
        demonitor_process(self.proc, init.mon, True)
        if msg.ok:
            self.add_ready(init.wid, msg.value, init.t0)
        else:
            self.init_failed(init.wid, msg.value, init.t0, msg.stack)

    # -- asynchronous events (pool process) ----------------------------------------------------

    def on_down(self, msg: Down) -> bool:
        """A Down for a client or an init task; False when it is nobody's (fan it out)."""
        client = self.by_mon.pop(msg.ref, None)
        if client is not None:
            self.clients.pop(client.proc, None)
            for req in list(client.requests.values()):
                self.requests.pop(req.ref.number, None)
                if req.state is QUEUED:
                    req.state = CANCELLED
                    self.waiting -= 1
                    self.cancelled("queued")
                elif req.state is GRANTED:
                    req.state = DONE
                    self.held -= 1
                    self.cancelled("checked_out")
                    assert req.worker is not None
                    self.remove_worker(req.worker, "DOWN")
            client.requests.clear()
            return True
        init = self.init_by_mon.pop(msg.ref, None)
        if init is not None:
            self.inits.pop(init.key, None)
            self.init_failed(init.wid, ("init task died", msg.reason), init.t0, None)
            return True
        return False

    def on_exit(self, msg: Exit) -> bool:
        """Absorb the Exit of an init task (we trap exits); False when it is nobody's."""
        if msg.pid in self.init_pids:
            self.init_pids.discard(msg.pid)
            return True
        return False

    def fan_out(self, msg: Any) -> None:
        """Offer an unknown message to every idle worker's ``handle_info``, in queue order."""
        if not self.call_info or not self.idle:
            return
        kept: deque[Worker] = deque()
        workers, self.idle = self.idle, kept
        for w in workers:
            try:
                result = self.worker.handle_info(msg, w.state)
            except (Exception, ProcessExit) as exc:
                if _pool_died(self, exc):
                    raise
                self._log_callback_error("handle_info", exc, w.id)
                self.remove_worker(w, exc)
                continue
            match result:
                case ("ok", worker_state):
                    w.state = worker_state
                    kept.append(w)
                case ("remove", reason):
                    self.remove_worker(w, reason)
                case _:
                    raise self._bad("handle_info", _INFO_SHAPES, result)

    def check_idle(self, now: float) -> None:
        """One ping cycle: oldest idle workers first, at most max_idle_pings of them."""
        timeout = self.config.worker_idle_timeout
        assert timeout is not None
        budget = self.config.max_idle_pings or len(self.idle)
        pinged: deque[Worker] = deque()
        idle = self.idle
        while idle and budget > 0:
            w = idle[0]
            if now - w.idle_since < timeout:
                break  # the rest went idle later still
            idle.popleft()
            budget -= 1
            try:
                result = self.worker.handle_ping(w.state, self.pool_state)
            except (Exception, ProcessExit) as exc:
                if _pool_died(self, exc):
                    raise
                self._log_callback_error("handle_ping", exc, w.id)
                self.remove_worker(w, exc)
                continue
            match result:
                case ("ok", worker_state):
                    w.state = worker_state  # idle_since unchanged: it is still idle
                    pinged.append(w)
                case ("remove", reason):
                    self.remove_worker(w, reason)
                case ("stop", reason):
                    idle.appendleft(w)
                    idle.extendleft(reversed(pinged))
                    raise Stop(("shutdown", reason))
                case _:
                    idle.appendleft(w)
                    idle.extendleft(reversed(pinged))
                    raise self._bad("handle_ping", _PING_SHAPES, result)
        idle.extendleft(reversed(pinged))

    def expire_idle(self, now: float) -> None:
        max_age = self.max_age
        if max_age is None or not self.idle:
            return
        keep: deque[Worker] = deque()
        workers, self.idle = self.idle, keep
        for w in workers:
            if now - w.born >= max_age:
                self.remove_worker(w, "max_age")
            else:
                keep.append(w)

    def run_timers(self) -> None:
        now = self.clock()
        cfg = self.config
        if self.retry_at is not None and now >= self.retry_at:
            self.retry_at = None
        if self.idle_check_at is not None and now >= self.idle_check_at:
            assert cfg.worker_idle_timeout is not None
            self.idle_check_at = now + cfg.worker_idle_timeout
            self.check_idle(now)
        if self.max_age is not None:
            self.expire_idle(now)
        if self.stats_at is not None and now >= self.stats_at:
            assert cfg.stats_interval is not None
            self.stats_at = now + cfg.stats_interval
            _execute(EV_STATS, attrs.asdict(self.stats()), {"pool": self.pid})

    def next_timer(self) -> float | None:
        """Seconds until the next timer is due, or None."""
        due = [t for t in (self.idle_check_at, self.stats_at) if t is not None]
        if self.retry_at is not None and self.deficit() > 0:
            due.append(self.retry_at)
        if self.max_age is not None and self.idle:
            due.append(min(w.born for w in self.idle) + self.max_age)
        if not due:
            return None
        return max(0.0, min(due) - self.clock())

    # -- stopping ------------------------------------------------------------------------------

    def terminate(self, reason: Any) -> list[Pid]:
        """``terminate_worker(reason)`` for every idle worker, then ``terminate_pool(reason)``.

        Returns the init tasks still running, for the caller to kill outside the lock. Workers
        checked out at this moment are not terminated (as in NimblePool): their checkin finds
        the pool stopped and drops them.
        """
        if self.status is not CRASHED:
            self.exit_reason = reason
        self.status = STOPPED
        workers = list(self.idle)
        self.idle.clear()
        for w in workers:
            try:
                self.remove_worker(w, reason, replace=False)
            except Exception as exc:  # noqa: BLE001 - a bad return must not stop the others
                self._log_callback_error("terminate_worker", exc, None)
        try:
            self.worker.terminate_pool(reason, self.pool_state)
        except (Exception, ProcessExit) as exc:
            if _pool_died(self, exc):
                raise
            self._log_callback_error("terminate_pool", exc, None)
        tasks = [i.pid for i in self.inits.values() if i.pid is not None]
        self.inits.clear()
        self.init_by_mon.clear()
        return tasks


def kill_tasks(pids: list[Pid]) -> None:
    for pid in pids:
        otp_exit(pid, "kill")
