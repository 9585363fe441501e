"""The handler registry: command name -> the function that serves it in the worker.

Handler modules register plain functions with :func:`handler`; the worker program
(``python -m bridge.worker --handler mypkg.handlers``) imports those modules and dispatches
each request's ``command`` through :func:`lookup`.

Why a module of its own: ``python -m bridge.worker`` runs ``bridge/worker.py`` as ``__main__``.
A registry defined there would exist twice (``__main__`` and ``bridge.worker``) as soon as a
handler module imported ``bridge.worker``, and the handlers would land in the copy the worker
never reads. Everyone imports *this* module, so there is exactly one registry per process.

Example::

    from bridge.registry import handler

    @handler
    def add(a, b):
        return a + b

    @handler("greet")
    def hello(name, *, greeting="hello"):
        return f"{greeting} {name}"

    @handler(session=True)
    def remember(session, key, value):
        session[key] = value          # the per-session dict of the request's session_id

The names of the worker's built-in commands (:data:`RESERVED`) cannot be registered.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar, overload

__all__ = ["RESERVED", "Handler", "clear", "commands", "handler", "lookup", "register"]

F = TypeVar("F", bound=Callable[..., Any])

#: Commands the worker program answers itself; handlers may not shadow them.
RESERVED: frozenset[str] = frozenset(
    {"ping", "info", "session_put", "session_get", "session_drop", "shutdown"}
)


class Handler:
    """One registered command: its name, the function, and whether it takes the session dict."""

    __slots__ = ("func", "name", "session")

    def __init__(self, name: str, func: Callable[..., Any], session: bool) -> None:
        self.name = name
        self.func = func
        self.session = session

    def __repr__(self) -> str:
        kind = " session" if self.session else ""
        return f"<Handler{kind} {self.name!r} -> {_qualname(self.func)}>"


# Registration normally happens under the import lock, but nothing forbids registering from
# several threads, and the runtime does not rely on the GIL for its invariants.
_lock = threading.Lock()
_handlers: dict[str, Handler] = {}


@overload
def handler(name: F, *, session: bool = False) -> F: ...


@overload
def handler(name: str | None = None, *, session: bool = False) -> Callable[[F], F]: ...


def handler(name: Any = None, *, session: bool = False) -> Any:
    """Register the decorated function as a command; return the function unchanged.

    Usable bare (``@handler``) or called (``@handler("name", session=True)``). The command
    name defaults to the function's ``__name__``. With ``session=True`` the function receives
    the request's per-session ``dict`` as its first argument.

    >>> @handler("double_it")
    ... def double(x):
    ...     return 2 * x
    >>> lookup("double_it").func(21)
    42
    """
    if callable(name):
        return register(name, session=session)

    def decorate(func: F) -> F:
        return register(func, name, session=session)

    return decorate


def register(func: F, name: str | None = None, *, session: bool = False) -> F:
    """Register *func* under *name* (default ``func.__name__``) and return it.

    Registering the same function again (same module and qualified name, e.g. after
    ``importlib.reload``) replaces the entry; a *different* function under a taken name is a
    ``ValueError``, because silently replacing it would route a command to code nobody expected.

    >>> _ = register(lambda: "pong!", "pong_alias")
    >>> lookup("pong_alias").func()
    'pong!'
    """
    command = func.__name__ if name is None else name
    _validate_name(command)
    with _lock:
        current = _handlers.get(command)
        if current is not None and _qualname(current.func) != _qualname(func):
            raise ValueError(
                f"command {command!r} is already registered by {_qualname(current.func)}; "
                f"cannot register {_qualname(func)} under the same name"
            )
        _handlers[command] = Handler(command, func, session)
    return func


def lookup(name: str) -> Handler | None:
    """Return the handler registered under *name*, or ``None``.

    >>> lookup("no such command") is None
    True
    """
    return _handlers.get(name)


def commands() -> list[str]:
    """Return the registered command names, sorted (built-ins not included).

    >>> isinstance(commands(), list)
    True
    """
    with _lock:
        return sorted(_handlers)


def clear() -> None:
    """Forget every registered handler (for tests).

    >>> clear(); commands()
    []
    """
    with _lock:
        _handlers.clear()


def _validate_name(command: object) -> None:
    if not isinstance(command, str) or not command:
        raise ValueError(f"a command name must be a non-empty str, got {command!r}")
    if command in RESERVED:
        raise ValueError(
            f"command {command!r} is a worker built-in and cannot be registered "
            f"(reserved: {', '.join(sorted(RESERVED))})"
        )


def _qualname(func: Callable[..., Any]) -> str:
    module = getattr(func, "__module__", None) or "?"
    return f"{module}.{getattr(func, '__qualname__', repr(func))}"
