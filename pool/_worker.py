"""`PoolWorker`: the behaviour a pool's workers implement (NimblePool's callbacks).

A *worker* is a value the pool owns while it is idle - a port, a connection, a counter - not a
process. The pool keeps one `PoolWorker` instance per pool and calls its methods with the
worker's state and the pool's state, exactly as NimblePool calls its module.

Which thread runs a callback
----------------------------
Callbacks never run concurrently: every one of them runs while holding the pool's lock. But
they do not all run in the pool process. To make an uncontended checkout cheap, a client thread
runs ``handle_enqueue``, ``handle_checkout``, ``handle_checkin``, ``handle_update``,
``handle_cancelled`` and ``terminate_worker`` itself when it is the one that triggers them; the
pool process runs them for everything that happens asynchronously (a waiting client served when
a worker comes back is served by whoever brought it back). ``init_pool``, ``init_worker``,
``handle_info``, ``handle_ping`` and ``terminate_pool`` always run in the pool process. So:

* do not use ``otp.self()`` in a callback to mean the pool: use ``self.pool`` (its pid), which
  the pool sets before ``init_pool`` runs;
* keep callbacks short and never block on a worker's I/O: they hold up every client. Work on
  the worker belongs in the checkout function, which runs in the client's thread.

What happens when a callback raises
-----------------------------------
As in NimblePool: an exception in ``init_worker``, ``handle_checkout``, ``handle_checkin``,
``handle_info``, ``handle_ping`` is logged and removes that worker (``terminate_worker`` gets
the exception as its reason, and a replacement is started as usual); an exception in
``terminate_worker`` or ``handle_cancelled`` is logged and ignored. ``init_pool`` raising makes
``start_link`` fail with `otp.StartError`. ``handle_enqueue`` and ``handle_update`` raising
crash the pool, as they do in NimblePool - except `UnknownCommand`, which ``handle_enqueue``
and ``handle_checkout`` may raise to refuse a command: the caller gets it, the worker stays.
A callback that returns a shape not listed in its doc crashes the pool with `otp.BadReturn`
("expected ..., got ...").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from otp import Pid
    from pool._core import From

__all__ = ["PoolWorker"]


class PoolWorker:
    """Subclass this and override the callbacks you need; only `init_worker` is required.

    >>> import pool
    >>> class Counter(pool.PoolWorker):
    ...     commands = frozenset({"add"})
    ...     def init_worker(self, pool_state):
    ...         return ("ok", 0, pool_state)
    ...     def handle_checkout(self, command, from_, count, pool_state):
    ...         return ("ok", count, count, pool_state)          # client_state = the count
    ...     def handle_checkin(self, new_count, from_, count, pool_state):
    ...         return ("ok", new_count, pool_state)
    >>> p = pool.start(Counter, None, pool_size=1)
    >>> pool.checkout(p, "add", lambda from_, n: (n + 1, n + 1))
    1
    >>> pool.checkout(p, "add", lambda from_, n: (n + 1, n + 1))
    2
    >>> pool.stop(p)
    """

    #: The checkout commands this worker accepts, or None to accept any. `checkout` checks a
    #: command against this set in the caller, before anything is queued, and raises
    #: `UnknownCommand` naming the command and the accepted ones.
    commands: ClassVar[frozenset[Any] | None] = None

    #: The pool's pid, set by the pool before `init_pool` runs. Use it (not ``otp.self()``)
    #: wherever a callback needs the pool, e.g. to hand a port back to it.
    pool: Pid

    # -- pool callbacks ------------------------------------------------------------------------

    def init_pool(self, init_arg: Any) -> Any:
        """Initialise the pool; runs in the pool process before any worker starts.

        Return ``("ok", pool_state)``, ``"ignore"`` (`start_link` returns ``"ignore"`` and the
        pool exits normally) or ``("stop", reason)`` (`start_link` raises ``StartError(reason)``).
        An exception also makes `start_link` raise `StartError`. Default: ``("ok", init_arg)``.
        """
        return ("ok", init_arg)

    def init_worker(self, pool_state: Any) -> Any:
        """Create one worker; runs in the pool process.

        Return ``("ok", worker_state, pool_state)``, or ``("async", fun, pool_state)`` to build
        the worker off the pool process: ``fun()`` runs in a task process linked to the pool,
        all such starts run in parallel, and the worker it returns can be checked out only once
        ``fun`` returned. If ``fun`` raises (or the task dies), the start failed.

        A failed start (an exception here or in ``fun``) is logged and retried with exponential
        backoff (``backoff_initial`` .. ``backoff_max``); callers waiting on a pool that has no
        live worker get `WorkerStartError` at once instead of waiting out their timeout.

        Example (``connect`` being your own blocking function)::

            def init_worker(self, pool_state):
                return ("async", lambda: connect(pool_state["url"]), pool_state)

        Ownership: ``fun`` runs in a short-lived task process. A resource that belongs to a
        process (a port) must be handed to ``self.pool`` before ``fun`` returns, and a
        subprocess started there must not rely on a parent-death signal tied to that thread.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement init_worker(pool_state)")

    def handle_enqueue(self, command: Any, pool_state: Any) -> Any:
        """Runs for every checkout request, in the caller's thread, before it is served.

        Return ``("ok", maybe_wrapped_command, pool_state)`` or ``("skip", exception,
        pool_state)`` (the caller raises `exception`). Raising `UnknownCommand` refuses the
        command; any other exception crashes the pool. Default: ``("ok", command, pool_state)``.
        """
        return ("ok", command, pool_state)

    def handle_cancelled(self, context: str, pool_state: Any) -> None:
        """A request left without completing a checkout; context ``"queued"`` or ``"checked_out"``.

        ``"queued"``: the caller timed out, died while waiting, or was refused because no worker
        could be started (a grant that raced the caller's timeout counts as queued: the worker
        never reached the caller and goes back through ``handle_checkin``). ``"checked_out"``: the
        caller raised in its function or died while holding the worker (``terminate_worker``
        follows). Runs in the caller's thread or the pool process; exceptions are logged.
        The return value is ignored.
        """

    def terminate_worker(self, reason: Any, worker_state: Any, pool_state: Any) -> Any:
        """A worker leaves the pool; return ``("ok", pool_state)``.

        `reason` is ``"DOWN"`` (the client died holding it), ``"error"``/``"exit"`` (the client's
        function raised an ``Exception`` / a ``ProcessExit`` or other ``BaseException``), the
        reason of a ``("remove", reason, ...)`` return, the exception a callback raised,
        ``"max_age"``/``"max_checkouts"`` (recycled), or the pool's exit reason at stop.
        `worker_state` is the last state the pool knew: a client that crashed may have changed
        the real thing. Runs in the caller's thread or the pool process; an exception is logged
        and ignored. Default: ``("ok", pool_state)``.
        """
        return ("ok", pool_state)

    def terminate_pool(self, reason: Any, pool_state: Any) -> None:
        """The pool is exiting with `reason`, after ``terminate_worker`` ran for each idle worker.

        Runs in the pool process; an exception is logged. Not called when the pool is killed.
        """

    # -- worker callbacks ----------------------------------------------------------------------

    def handle_checkout(self, command: Any, from_: From, worker_state: Any, pool_state: Any) -> Any:
        """Hand an idle worker to a client; runs in the client's thread or the pool process.

        Return one of:

        * ``("ok", client_state, worker_state, pool_state)``: `client_state` is given to the
          checkout function;
        * ``("remove", reason, pool_state)``: the worker is terminated and the same request
          tries the next idle worker (or waits for a new one);
        * ``("skip", exception, pool_state)``: the caller raises `exception`, the worker stays
          idle, first in line;
        * ``("pass", pool_state)``: this worker does not fit this request (say, it does not hold
          the request's session): the worker keeps its place, the request is offered the next
          idle worker, and if none fits it waits for a checkin - without holding up the requests
          behind it (an extension of NimblePool: selective checkout).

        `command` is the caller's command, as wrapped by ``handle_enqueue``. Raise
        `UnknownCommand` to refuse it (same as skip). Any other exception is logged and removes
        the worker (``terminate_worker`` gets the exception); the request tries the next one.
        Default: ``("ok", worker_state, worker_state, pool_state)`` - the client gets the worker
        state itself.
        """
        return ("ok", worker_state, worker_state, pool_state)

    def handle_checkin(
        self, checkin_state: Any, from_: From, worker_state: Any, pool_state: Any
    ) -> Any:
        """Take a worker back; runs in the client's thread (or the pool process).

        `checkin_state` is the second element the checkout function returned. Return
        ``("ok", worker_state, pool_state)`` (the worker goes to the back of the idle queue and
        may be handed to the next waiting client at once) or ``("remove", reason,
        pool_state)``. An exception is logged and removes the worker; the client is not told
        (its function already returned). Default: ``("ok", worker_state, pool_state)``.
        """
        return ("ok", worker_state, pool_state)

    def handle_update(self, message: Any, worker_state: Any, pool_state: Any) -> Any:
        """`pool.update(from_, message)` was called during a checkout; runs in that client's thread.

        Return ``("ok", worker_state, pool_state)``. The new worker state is what
        ``terminate_worker`` sees if the client then crashes. Default: the message becomes the
        worker state. Raising crashes the pool (as in NimblePool).
        """
        return ("ok", message, pool_state)

    def handle_info(self, message: Any, worker_state: Any) -> Any:
        """A message the pool does not know, offered to each idle worker in turn (pool process).

        Return ``("ok", worker_state)`` or ``("remove", reason)``. Checked-out workers do not
        see messages. An exception is logged and removes that worker. Messages the pool itself
        uses (its clients' and init tasks' Downs and exits, its timers) never come here.
        Default: ``("ok", worker_state)`` (the message is dropped).
        """
        return ("ok", worker_state)

    def handle_ping(self, worker_state: Any, pool_state: Any) -> Any:
        """A worker idle for ``worker_idle_timeout``; runs in the pool process, oldest first.

        Return ``("ok", worker_state)``, ``("remove", reason)`` or ``("stop", reason)`` (the
        pool exits with ``("shutdown", reason)``). At most ``max_idle_pings`` workers are pinged
        per cycle. An exception is logged and removes the worker. Without an override,
        ``worker_idle_timeout`` only logs a warning. Keep it non-blocking: send the ping, and
        judge the answer on the next cycle or at checkout.
        """
        return ("ok", worker_state)

    # -- supervision ---------------------------------------------------------------------------

    @classmethod
    def child_spec(cls, init_arg: Any = None, **options: Any) -> dict[str, Any]:
        """``pool.child_spec(cls, init_arg, **options)``: a pool of this worker in a supervisor."""
        from pool._server import child_spec

        return child_spec(cls, init_arg, **options)


#: The callbacks a pool skips calling when a worker class does not override them.
OPTIONAL_FAST: tuple[str, ...] = ("handle_enqueue", "handle_checkin")


def overrides(cls: type[PoolWorker], name: str) -> bool:
    """True when `cls` defines its own `name` instead of inheriting PoolWorker's default."""
    impl: Callable[..., Any] | None = getattr(cls, name, None)
    return impl is not getattr(PoolWorker, name)
