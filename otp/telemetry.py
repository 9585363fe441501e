"""Telemetry in the shape of Erlang's ``telemetry``: events are lists of names, handlers attach.

>>> from otp import telemetry
>>> seen = []
>>> telemetry.attach("doc", ["pool", "checkout"], lambda e, m, md, cfg: seen.append(m))
>>> telemetry.execute(["pool", "checkout"], {"duration": 0.1}, {})
>>> telemetry.detach("doc"); seen
[{'duration': 0.1}]

Handlers run synchronously in the thread that executes the event. A handler that raises is
detached and logged, and the caller never sees the error.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from loguru import logger

__all__ = ["attach", "attach_many", "detach", "execute", "list_handlers", "span"]

Handler = Callable[[tuple[str, ...], dict[str, Any], dict[str, Any], Any], None]

_lock = threading.Lock()
# Guarded by _lock; readers take a snapshot (copy-on-write), so execute never holds the lock
# while a handler runs.
_by_event: dict[tuple[str, ...], tuple[tuple[str, Handler, Any], ...]] = {}
_ids: dict[str, list[tuple[str, ...]]] = {}


class AlreadyExists(ValueError):
    """A handler with this id is already attached."""


def _key(event: Sequence[str]) -> tuple[str, ...]:
    if isinstance(event, str):
        raise TypeError(f"an event is a sequence of names such as ['pool', 'checkout'], got {event!r}")
    return tuple(event)


def attach(handler_id: str, event: Sequence[str], handler: Handler, config: Any = None) -> None:
    """Call ``handler(event, measurements, metadata, config)`` on every `execute` of `event`."""
    attach_many(handler_id, [event], handler, config)


def attach_many(handler_id: str, events: Iterable[Sequence[str]], handler: Handler, config: Any = None) -> None:
    """Attach one handler to several events under one id."""
    keys = [_key(e) for e in events]
    if not callable(handler):
        raise TypeError(f"telemetry handler must be callable, got {handler!r}")
    with _lock:
        if handler_id in _ids:
            raise AlreadyExists(f"telemetry handler {handler_id!r} is already attached")
        _ids[handler_id] = keys
        for key in keys:
            _by_event[key] = _by_event.get(key, ()) + ((handler_id, handler, config),)


def detach(handler_id: str) -> bool:
    """Detach a handler; False if no handler had that id."""
    with _lock:
        keys = _ids.pop(handler_id, None)
        if keys is None:
            return False
        for key in keys:
            rest = tuple(h for h in _by_event.get(key, ()) if h[0] != handler_id)
            if rest:
                _by_event[key] = rest
            else:
                _by_event.pop(key, None)
        return True


def list_handlers(prefix: Sequence[str] = ()) -> list[tuple[str, tuple[str, ...]]]:
    """``(handler_id, event)`` pairs whose event starts with `prefix`."""
    p = tuple(prefix)
    with _lock:
        return [(hid, key) for key, hs in _by_event.items() if key[: len(p)] == p for hid, _, _ in hs]


def execute(event: Sequence[str], measurements: dict[str, Any], metadata: dict[str, Any] | None = None) -> None:
    """Run every handler attached to `event`, in attach order."""
    key = tuple(event)
    handlers = _by_event.get(key)  # a snapshot tuple; see the lock comment above
    if not handlers:
        return
    md = metadata if metadata is not None else {}
    for handler_id, handler, config in handlers:
        try:
            handler(key, measurements, md, config)
        except Exception:  # noqa: BLE001 - a broken handler must never break the caller
            logger.opt(exception=True).error(
                "telemetry handler {handler_id!r} failed on {event}; detaching it",
                handler_id=handler_id,
                event=key,
            )
            detach(handler_id)


class span:
    """Emit ``event + [start]`` and ``event + [stop]`` (or ``[exception]``) around a block.

    >>> with span(["demo", "work"], {"job": 1}):
    ...     pass
    """

    def __init__(self, event: Sequence[str], metadata: dict[str, Any] | None = None) -> None:
        self.event = tuple(event)
        self.metadata = dict(metadata or {})

    def __enter__(self) -> dict[str, Any]:
        import time

        self._start = time.monotonic()
        execute(self.event + ("start",), {"monotonic_time": self._start}, self.metadata)
        return self.metadata

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        import time

        duration = time.monotonic() - self._start
        if exc is None:
            execute(self.event + ("stop",), {"duration": duration}, self.metadata)
        else:
            execute(self.event + ("exception",), {"duration": duration}, {**self.metadata, "kind": kind, "reason": exc})
