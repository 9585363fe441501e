"""Telemetry in the shape of Erlang's ``telemetry``: events are lists of names, handlers attach.

>>> from otp import telemetry
>>> seen = []
>>> telemetry.attach("doc", ["pool", "checkout"], lambda e, m, md, cfg: seen.append(m))
>>> telemetry.execute(["pool", "checkout"], {"duration": 0.1}, {})
>>> _ = telemetry.detach("doc"); seen
[{'duration': 0.1}]

Handlers run synchronously in the thread that executes the event. A handler that raises is
detached and logged, and the caller never sees the error.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from loguru import logger

from otp._errors import ProcessExit
from otp._process import _local

__all__ = ["attach", "attach_many", "detach", "execute", "list_handlers", "listening", "span"]

Handler = Callable[[tuple[str, ...], dict[str, Any], dict[str, Any], Any], None]

_lock = threading.Lock()
# Copy-on-write: writers (under _lock) build a new dict and publish it by rebinding
# `_by_event`; a published dict is never changed again. Readers (`execute`, `listening`, on
# every hot path) read the binding once and take no lock: what they see is a complete table,
# the one before or after a concurrent attach/detach, exactly as if they had run a moment
# earlier or later.
_by_event: dict[tuple[str, ...], tuple[tuple[str, Handler, Any], ...]] = {}
_ids: dict[str, list[tuple[str, ...]]] = {}  # guarded by _lock


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
        table = dict(_by_event)
        for key in keys:
            table[key] = table.get(key, ()) + ((handler_id, handler, config),)
        _publish(table)


def detach(handler_id: str) -> bool:
    """Detach a handler; False if no handler had that id."""
    with _lock:
        keys = _ids.pop(handler_id, None)
        if keys is None:
            return False
        table = dict(_by_event)
        for key in keys:
            rest = tuple(h for h in table.get(key, ()) if h[0] != handler_id)
            if rest:
                table[key] = rest
            else:
                table.pop(key, None)
        _publish(table)
        return True


def _publish(table: dict[tuple[str, ...], tuple[tuple[str, Handler, Any], ...]]) -> None:
    """Make `table` the one readers see (caller holds _lock)."""
    global _by_event
    _by_event = table


def list_handlers(prefix: Sequence[str] = ()) -> list[tuple[str, tuple[str, ...]]]:
    """``(handler_id, event)`` pairs whose event starts with `prefix`."""
    p = tuple(prefix)
    table = _by_event
    return [(hid, key) for key, hs in table.items() if key[: len(p)] == p for hid, _, _ in hs]


def listening(*events: Sequence[str]) -> bool:
    """True if a handler is attached to any of `events`: a hot path may skip building events
    no one would receive.

    >>> listening(["nobody", "listens"], ["nor", "here"])
    False
    """
    table = _by_event
    if not table:
        return False
    return any((e if e.__class__ is tuple else tuple(e)) in table for e in events)


def execute(event: Sequence[str], measurements: dict[str, Any], metadata: dict[str, Any] | None = None) -> None:
    """Run every handler attached to `event`, in attach order."""
    key = event if event.__class__ is tuple else tuple(event)
    handlers = _by_event.get(key)
    if not handlers:
        return
    md = metadata if metadata is not None else {}
    for handler_id, handler, config in handlers:
        try:
            handler(key, measurements, md, config)
        except Exception:  # noqa: BLE001 - a broken handler must never break the caller
            _handler_failed(handler_id, key)
        except ProcessExit:
            # A handler's own exit (say, a call to a dead server) is a failing handler, as in
            # Erlang's telemetry, which catches every class. Our own death is not: go on dying.
            if _caller_is_dead():
                raise
            _handler_failed(handler_id, key)


def _handler_failed(handler_id: str, key: tuple[str, ...]) -> None:
    logger.opt(exception=True).error(
        "telemetry handler {handler_id!r} failed on {event}; detaching it",
        handler_id=handler_id,
        event=key,
    )
    detach(handler_id)


def _caller_is_dead() -> bool:
    proc = getattr(_local, "proc", None)
    return proc is not None and proc.dead


class span:
    """Emit ``event + [start]`` and ``event + [stop]`` (or ``[exception]``) around a block.

    As Erlang's ``telemetry:span/3``: start carries ``monotonic_time`` and ``system_time``;
    stop and exception carry ``duration`` and ``monotonic_time`` (seconds); exception adds
    ``kind``, ``reason`` and ``stacktrace`` to the metadata, and the exception propagates.
    The metadata dict is yielded, so the block may add to what stop reports.

    >>> with span(["demo", "work"], {"job": 1}):
    ...     pass
    """

    def __init__(self, event: Sequence[str], metadata: dict[str, Any] | None = None) -> None:
        self.event = tuple(event)
        self.metadata = dict(metadata or {})

    def __enter__(self) -> dict[str, Any]:
        self._start = time.monotonic()
        execute(
            self.event + ("start",),
            {"monotonic_time": self._start, "system_time": time.time()},
            dict(self.metadata),  # a snapshot: the block may add to the dict stop reports
        )
        return self.metadata

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        end = time.monotonic()
        measurements = {"duration": end - self._start, "monotonic_time": end}
        if exc is None:
            execute(self.event + ("stop",), measurements, self.metadata)
        else:
            metadata = {**self.metadata, "kind": kind, "reason": exc, "stacktrace": tb}
            execute(self.event + ("exception",), measurements, metadata)
