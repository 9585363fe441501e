"""Test helpers for code built on `otp`: a fresh node per test or measurement, waiting for a
monitor's ``Down``, polling a condition.

The waits wait a bounded time and fail with an ``AssertionError`` that says what did not arrive, so
a broken test fails with a reason instead of hanging. Import this module explicitly
(``from otp.testing import wait_down``); ``import otp`` does not load it.

>>> import otp
>>> from otp.testing import wait_down, wait_until
>>> pid, ref = otp.spawn_monitor(lambda: None)
>>> wait_down(ref).reason
'normal'
>>> wait_until(lambda: not otp.is_alive(pid), what="the process to be gone")
True
>>> wait_down(otp.make_ref(), timeout=0.01)  # doctest: +ELLIPSIS
Traceback (most recent call last):
AssertionError: no Down for #Ref<...> within 0.01 s
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

from otp._api import receive, sleep
from otp._process import Node, set_default_node
from otp._terms import TIMEOUT, Down, Ref

__all__ = ["fresh_node", "wait_down", "wait_until"]


@contextlib.contextmanager
def fresh_node() -> Iterator[Node]:
    """Make a new node the default for the block; afterwards kill every process it holds and
    restore the previous default. Names and processes of one block never meet another's. A
    thread that is already a process of another node stays there; the others are adopted into
    the new node when they first use the runtime, as they would into any default node.

    >>> import otp
    >>> before = otp.default_node()
    >>> with fresh_node() as node:
    ...     node is otp.default_node()
    True
    >>> otp.default_node() is before
    True
    """
    node = Node()
    previous = set_default_node(node)
    try:
        yield node
    finally:
        node.shutdown()
        set_default_node(previous)


def wait_down(ref: Ref, timeout: float = 5.0) -> Down:
    """The ``Down`` of the monitor `ref`, taken from the caller's mailbox within `timeout`.

    Other messages, including ``Down``s of other monitors, stay in the mailbox.
    """
    msg = receive(lambda m: isinstance(m, Down) and m.ref == ref, timeout=timeout)
    # An explicit raise, not assert: this module is library code, and ``python -O`` strips
    # asserts, which would hand TIMEOUT back as if it were a Down.
    if msg is TIMEOUT:
        raise AssertionError(f"no Down for {ref!r} within {timeout} s")
    return msg


def wait_until(
    check: Callable[[], Any], timeout: float = 10.0, what: str = "the condition"
) -> Any:
    """Call `check` until it returns something truthy, and return that value.

    Raises ``AssertionError`` naming `what` if it is still falsy after `timeout` seconds. Only
    for conditions that send no message or event to wait on; anything that does should be
    waited for with `receive` (or `wait_down`) instead.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        # otp.sleep rather than time.sleep: an exit signal to the caller interrupts it.
        sleep(0.01)
