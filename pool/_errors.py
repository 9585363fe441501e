"""The errors a pool's callers see.

Every error names the pool, and where it helps, the command and the timeout. They all derive
from `PoolError` (an `Exception`), so ``except pool.PoolError`` catches them. A pool that is not
running is different: like `otp.call`, `checkout` then *exits* the caller (raises
`otp.ProcessExit`) with ``(reason, ("checkout", pool))``, because that is a failure of the
system around the caller, not of its request.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["CheckoutSkipped", "CheckoutTimeout", "PoolError", "UnknownCommand", "WorkerStartError"]


class PoolError(Exception):
    """Base class of the errors a checkout can raise at the call site."""


class CheckoutTimeout(PoolError, TimeoutError):
    """No worker was handed to the caller within `timeout` seconds.

    The queued request has been cancelled (``handle_cancelled("queued")`` ran); a worker granted
    in the same instant was given back unused. `last_init_error` is the most recent
    ``init_worker`` failure when the pool was short of workers because of it, else None.

    >>> str(CheckoutTimeout("db", 0.5, "run"))
    "checkout of 'run' from pool 'db' timed out after 0.5 s waiting for a worker"
    """

    def __init__(
        self,
        pool: Any,
        timeout: float | None,
        command: Any = None,
        last_init_error: BaseException | None = None,
    ) -> None:
        text = (
            f"checkout of {command!r} from pool {pool!r} timed out after {timeout} s "
            "waiting for a worker"
        )
        if last_init_error is not None:
            text += f" (workers are failing to start: {last_init_error!r})"
        super().__init__(text)
        self.pool = pool
        self.timeout = timeout
        self.command = command
        self.last_init_error = last_init_error


class UnknownCommand(PoolError, ValueError):
    """The pool's worker does not accept this checkout command.

    Raised in the caller, before anything is queued, when the worker class declares `commands`
    and `command` is not among them; or when ``handle_checkout``/``handle_enqueue`` raise it
    (the pool treats that as a skip: the worker stays, nothing crashes).

    >>> str(UnknownCommand("sing", ["anonymous", "session"], pool="db"))
    "unknown checkout command 'sing' for pool 'db'; accepted commands: 'anonymous', 'session'"
    """

    def __init__(
        self, command: Any, accepted: Iterable[Any] | None = None, pool: Any = None
    ) -> None:
        self.command = command
        self.accepted: tuple[Any, ...] | None = None if accepted is None else tuple(accepted)
        self.pool = pool
        super().__init__(self._text())

    def _text(self) -> str:
        where = f" for pool {self.pool!r}" if self.pool is not None else ""
        if self.accepted is None:
            return f"unknown checkout command {self.command!r}{where}"
        listed = ", ".join(repr(c) for c in self.accepted) or "none"
        return f"unknown checkout command {self.command!r}{where}; accepted commands: {listed}"

    def with_context(self, pool: Any, accepted: Iterable[Any] | None) -> UnknownCommand:
        """A copy that names the pool and, if it did not already, the accepted commands."""
        return UnknownCommand(
            self.command, self.accepted if self.accepted is not None else accepted, pool
        )


class CheckoutSkipped(PoolError):
    """``handle_checkout`` or ``handle_enqueue`` returned ``("skip", reason, pool_state)``.

    When `reason` is an exception the caller gets that exception itself (as NimblePool raises
    it); any other value is wrapped in this error.
    """

    def __init__(self, pool: Any, command: Any, reason: Any) -> None:
        super().__init__(f"checkout of {command!r} from pool {pool!r} was skipped: {reason!r}")
        self.pool = pool
        self.command = command
        self.reason = reason


class WorkerStartError(PoolError):
    """The pool has no worker and could not start one; `reason` is the last init failure.

    Waiting callers get this as soon as an ``init_worker`` attempt fails while the pool has no
    live worker and no other start in flight: they do not wait out their timeout for a pool that
    cannot serve them. The pool keeps retrying with backoff.
    """

    def __init__(self, pool: Any, reason: Any) -> None:
        super().__init__(f"pool {pool!r} has no worker and could not start one: {reason!r}")
        self.pool = pool
        self.reason = reason
