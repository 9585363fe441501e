"""Identifiers and the runtime's own messages: `Pid`, `Ref`, `Exit`, `Down`, `TIMEOUT`, `ANY`.

These are small immutable values, safe to send between processes and to use as dict keys.
"""

from __future__ import annotations

import itertools
import threading
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    from otp._process import Process

__all__ = ["ANY", "Down", "Exit", "Pid", "Ref", "TIMEOUT", "make_ref"]


class Pid:
    """A process identifier, printed as Erlang prints one: ``<0.42.0>``.

    Equality and hashing use the node and the serial number only. The pid also carries a direct
    reference to its control block, so `send` needs no table lookup on the hot path.

    >>> import otp
    >>> pid = otp.spawn(lambda: None)
    >>> str(pid).startswith("<")
    True
    """

    __slots__ = ("node_index", "number", "_proc")

    def __init__(self, node_index: int, number: int, proc: Process) -> None:
        self.node_index = node_index
        self.number = number
        self._proc = proc

    def __repr__(self) -> str:
        return f"<{self.node_index}.{self.number}.0>"

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not Pid:
            return NotImplemented
        return self.number == other.number and self.node_index == other.node_index  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((self.node_index, self.number))

    def __lt__(self, other: Pid) -> bool:
        return (self.node_index, self.number) < (other.node_index, other.number)

    def __reduce__(self) -> Any:
        raise TypeError(f"{self!r} names a thread in this Python process and cannot be pickled")


_ref_counter = itertools.count(1)
_ref_lock = threading.Lock()


class Ref:
    """A unique reference (Erlang's ``make_ref()``), printed as ``#Ref<42>``.

    A plain slotted class rather than an attrs one: every `call` makes one, so it is hot.
    """

    __slots__ = ("number",)

    def __init__(self, number: int) -> None:
        self.number = number

    def __repr__(self) -> str:
        return f"#Ref<{self.number}>"

    def __eq__(self, other: object) -> bool:
        return other.__class__ is Ref and other.number == self.number  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(self.number)


def make_ref() -> Ref:
    """Return a reference unique within this Python process.

    >>> make_ref() != make_ref()
    True
    """
    # itertools.count is not documented as thread-safe, and we do not lean on the GIL.
    with _ref_lock:
        return Ref(next(_ref_counter))


@attrs.frozen
class Exit:
    """The message a process that traps exits receives instead of dying: ``{'EXIT', Pid, Reason}``."""

    pid: Pid
    reason: Any


@attrs.frozen
class Down:
    """The message a monitor delivers once, when the monitored process dies.

    ``pid`` is the monitored pid, or the name that was monitored when no process had it.
    """

    ref: Ref
    pid: Any
    reason: Any


class _Sentinel:
    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name

    def __reduce__(self) -> str:
        return self._name


TIMEOUT = _Sentinel("TIMEOUT")
"""What `receive` returns when its timeout passes with no matching message."""

ANY = _Sentinel("ANY")
"""A wildcard inside a tuple template pattern: ``receive(("reply", ANY))``."""
