"""threadotp's pool: NimblePool's semantics on the otp runtime, callable from any Python thread.

A pool is one process that owns a set of *workers* - values such as ports or connections, not
processes - and lends them to clients. The client runs its own code with the worker in its own
thread; the pool never runs client code and never waits on a worker's I/O. You write the
worker's behaviour by subclassing `PoolWorker`, exactly as you would implement NimblePool's
callbacks::

    import pool

    class Cat(pool.PoolWorker):
        commands = frozenset({"command"})          # what checkout accepts; None = anything

        def init_worker(self, pool_state):           # pool process
            return ("async", lambda: open_port("cat"), pool_state)   # built in a task

        def handle_checkout(self, command, from_, port, pool_state):   # any thread, serialised
            return ("ok", port, port, pool_state)   # (client_state, worker_state, pool_state)

        def handle_checkin(self, outcome, from_, port, pool_state):
            return ("ok", port, pool_state) if outcome == "ok" else ("remove", outcome, pool_state)

        def terminate_worker(self, reason, port, pool_state):
            port.close()
            return ("ok", pool_state)

    p = pool.Pool(pool.start_link(Cat, None, pool_size=4, min_ready="all"))
    answer = p.checkout("command", lambda from_, port: (port.call(b"hi"), "ok"))
    with p.checkout("command") as port:     # the same, as a context manager
        port.call(b"hi")
    p.stop()

The principles, in NimblePool's words where they apply:

* Waiting clients are served first come, first served; idle workers are handed out oldest
  checkin first. A checkout with nobody waiting and a worker idle runs entirely in the caller's
  thread under the pool's lock (callbacks still run one at a time): no round trip to the pool.
* The pool monitors every client process from its first checkout until it dies (one monitor
  per process, not per checkout): a client that dies holding a worker makes the pool call
  ``terminate_worker("DOWN", ...)`` and start a replacement; one that dies waiting is forgotten.
  A client whose function raises gets its exception back after the worker was terminated with
  ``"error"`` (or ``"exit"``).
* A checkout that times out cancels its queued request (``handle_cancelled("queued")``) and
  raises `CheckoutTimeout`; a worker granted in that same instant goes back through
  ``handle_checkin`` unused rather than being restarted.
* Workers start eagerly (all at start, async starts in parallel, optionally waited for with
  ``min_ready``) or lazily (on demand up to ``pool_size``; a freed slot wakes waiting clients).
  Failed starts are retried with exponential backoff; waiting clients of a pool that has no
  worker and cannot start one get `WorkerStartError` at once.
* ``worker_idle_timeout`` + ``handle_ping`` ping idle workers; ``worker_max_age`` /
  ``max_checkouts`` recycle them between checkouts.
* A callback that raises is logged and its worker removed; a callback that returns a shape it
  may not crashes the pool with `otp.BadReturn` ("expected ..., got ..."); `stop` terminates
  the idle workers with the pool's reason, then calls ``terminate_pool``.
* An unknown command never crashes the pool: declare ``commands`` and `checkout` refuses it
  in the caller with `UnknownCommand` naming the accepted ones; ``handle_checkout`` may also
  raise `UnknownCommand` (the worker stays).

Telemetry (`otp.telemetry`), all with ``pool`` in the metadata:

* ``["pool", "checkout", "start" | "stop" | "exception"]`` - ``duration`` and ``queue_time``
  (seconds spent getting the worker); metadata ``command`` (+ ``kind``, ``reason``);
* ``["pool", "worker", "init", "start" | "stop" | "exception"]`` - ``duration``; ``worker``;
* ``["pool", "worker", "removed"]`` - ``lifetime``, ``checkouts``; ``worker``, ``reason``;
* ``["pool", "stats"]`` - the `PoolStats` fields, every ``stats_interval`` seconds.
"""

from pool._client import Checkout, Pool, checkout, stats, update
from pool._core import From, PoolStats
from pool._errors import (
    CheckoutSkipped,
    CheckoutTimeout,
    PoolError,
    UnknownCommand,
    WorkerStartError,
)
from pool._server import ManualClock, child_spec, start, start_link, stop
from pool._worker import PoolWorker

__all__ = [
    "CheckoutSkipped",
    "CheckoutTimeout",
    "Checkout",
    "From",
    "ManualClock",
    "Pool",
    "PoolError",
    "PoolStats",
    "PoolWorker",
    "UnknownCommand",
    "WorkerStartError",
    "checkout",
    "child_spec",
    "start",
    "start_link",
    "stats",
    "stop",
    "update",
]
