"""Example handlers bundled with the bridge, for tests, the demo and the benchmarks.

Start a worker that serves them with::

    python -m bridge.worker --handler bridge.examples

Each function is a plain function registered under its own name; the session ones receive the
request's per-session dict first. They stay within the values every codec carries (see
:mod:`bridge.codec`).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from bridge.registry import handler

__all__ = [
    "add",
    "counter_get",
    "counter_incr",
    "crash",
    "echo",
    "fail",
    "flaky",
    "noisy",
    "sleep",
]


@handler
def echo(x: Any) -> Any:
    """Return *x* unchanged: the cheapest round trip, used to measure the bridge itself.

    >>> echo({"a": 1})
    {'a': 1}
    """
    return x


@handler
def add(a: Any, b: Any) -> Any:
    """Return ``a + b``.

    >>> add(2, 3)
    5
    """
    return a + b


@handler
def sleep(seconds: float) -> float:
    """Block for *seconds* and return them: a stand-in for a slow or hung call.

    >>> sleep(0)
    0
    """
    time.sleep(seconds)
    return seconds


@handler
def fail(message: str) -> None:
    """Raise ``ValueError(message)``: the worker turns it into an error reply and goes on.

    >>> fail("boom")
    Traceback (most recent call last):
    ...
    ValueError: boom
    """
    raise ValueError(message)


@handler
def flaky(rate: float) -> bool:
    """Raise ``RuntimeError`` with probability *rate* (0..1), else return ``True``.

    >>> flaky(0.0)
    True
    """
    import random  # only this handler needs it; keeps worker start-up lean

    if random.random() < rate:
        raise RuntimeError(f"flaky failure (rate={rate})")
    return True


@handler
def noisy(text: str, *, raw: bool = False) -> str:
    """Write *text* to "stdout" and return it.

    In a worker, stdout is stderr: the text must show up in the worker's stderr, never inside
    the reply stream. With ``raw=True`` it is written straight to file descriptor 1, as a C
    library would do, bypassing ``sys.stdout``.

    >>> noisy("hello")
    hello
    'hello'
    """
    if raw:
        os.write(1, text.encode() + b"\n")
    else:
        print(text, flush=True)
    return text


@handler
def crash(status: int) -> None:
    """End the worker process at once with exit *status*, without replying or cleaning up."""
    sys.stderr.flush()
    os._exit(int(status))


@handler(session=True)
def counter_incr(session: dict[str, Any], by: int = 1) -> int:
    """Add *by* to the session's counter (starting from 0) and return the new value.

    >>> s = {}
    >>> counter_incr(s), counter_incr(s, by=5)
    (1, 6)
    """
    value: int = session.get("counter", 0) + by
    session["counter"] = value
    return value


@handler(session=True)
def counter_get(session: dict[str, Any]) -> int:
    """Return the session's counter (0 if it was never incremented).

    >>> counter_get({"counter": 3})
    3
    """
    value: int = session.get("counter", 0)
    return value
