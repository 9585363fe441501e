"""Exceptions of the runtime.

`ProcessExit` is how an exit travels through Python code: raising it ends the process with its
reason (Erlang's ``exit/1``), and the runtime raises it in a process that an exit signal killed.
It derives from `BaseException`, like `SystemExit`, so that ``except Exception`` in user code
does not swallow an exit by accident.
"""

from __future__ import annotations

from typing import Any

__all__ = ["AlreadyRegistered", "BadReturn", "NoProc", "ProcessExit", "StartError"]


class ProcessExit(BaseException):
    """The current process exits with `reason`.

    >>> import otp
    >>> try:
    ...     otp.exit("shutdown")
    ... except otp.ProcessExit as e:
    ...     e.reason
    'shutdown'
    """

    def __init__(self, reason: Any, detail: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        text = f"process exited: {self.reason!r}"
        return f"{text} ({self.detail})" if self.detail else text


class NoProc(LookupError):
    """No process is registered under a name, or the pid is dead, where one is required."""

    def __init__(self, target: Any, action: str) -> None:
        super().__init__(f"{action}: no process {target!r} (noproc)")
        self.target = target


class AlreadyRegistered(ValueError):
    """The name is taken (by `pid`), or the process already has another name."""

    def __init__(self, name: Any, pid: Any, detail: str = "") -> None:
        super().__init__(f"cannot register {name!r}: {detail or f'already registered to {pid!r}'}")
        self.name = name
        self.pid = pid


class StartError(RuntimeError):
    """A process could not be started; `reason` is the Erlang-style reason term.

    Examples of reasons: ``("already_started", pid)``, the exception `init` raised, or the reason
    of an ``("stop", reason)`` returned by `init`.
    """

    def __init__(self, reason: Any) -> None:
        super().__init__(f"start failed: {reason!r}")
        self.reason = reason


class BadReturn(TypeError):
    """A callback returned a shape the behaviour does not accept: "expected ..., got ..."."""
