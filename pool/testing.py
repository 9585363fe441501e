"""Test tooling for pools: a scripted fake worker and a manual clock.

`ScriptedWorker` follows NimblePool's test suite: the pool's init argument is a `Script`, an
ordered list of ``(callback_name, function)`` instructions. Each callback call pops the next
instruction, checks that it is for that callback, and returns what the function returns for the
callback's arguments. So a test states the exact order of callbacks it expects, and a callback
called out of order is recorded in `Script.errors` (and raises `ScriptError` inside the pool,
where it is logged and removes the worker, as any callback exception would). A callback the
script never names behaves as `PoolWorker`'s default, like a callback a NimblePool module does
not export.

>>> import pool
>>> from pool.testing import Script, ScriptedWorker
>>> script = Script([
...     ("init_worker", lambda ps: ("ok", "w1", ps)),
...     ("handle_checkout", lambda cmd, from_, w, ps: ("ok", "client", w, ps)),
...     ("handle_checkin", lambda state, from_, w, ps: ("ok", w, ps)),
...     ("terminate_worker", lambda reason, w, ps: ("ok", ps)),
... ])
>>> p = pool.start(ScriptedWorker, script, pool_size=1)
>>> pool.checkout(p, "cmd", lambda from_, client: (client.upper(), "back"))
'CLIENT'
>>> pool.stop(p)
>>> script.assert_drained()
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from pool._server import ManualClock
from pool._worker import PoolWorker

__all__ = [
    "ManualClock",
    "Script",
    "ScriptError",
    "ScriptedWorker",
    "assert_receive",
    "refute_received",
]


def assert_receive(pattern: Any, timeout: float = 5.0) -> Any:
    """ExUnit's ``assert_receive``: the oldest message matching `pattern` within `timeout`."""
    import otp

    msg = otp.receive(pattern, timeout=timeout)
    assert msg is not otp.TIMEOUT, (
        f"no message matching {pattern!r} within {timeout} s; mailbox: {_peek()}"
    )
    return msg


def refute_received(pattern: Any) -> None:
    """ExUnit's ``refute_received``: no message matching `pattern` is in the mailbox now."""
    import otp

    msg = otp.receive(pattern, timeout=0)
    assert msg is otp.TIMEOUT, f"unexpected message {msg!r}"


def _peek() -> list[Any]:
    from otp._process import current

    me = current()
    with me._lock:
        return list(me.mailbox)[:20]


class ScriptError(AssertionError):
    """A callback was called that the script did not expect next."""


class Script:
    """The ordered instructions of a `ScriptedWorker`, shared by every thread that runs callbacks.

    With ``skip_to_terminate=True`` (NimblePool's ``StatelessPool``), a ``terminate_worker``
    call may skip the instructions before the next ``terminate_worker`` one.
    """

    def __init__(
        self,
        instructions: Iterable[tuple[str, Callable[..., Any]]],
        *,
        skip_to_terminate: bool = False,
    ) -> None:
        items = list(instructions)
        for item in items:
            if not (
                isinstance(item, tuple)
                and len(item) == 2
                and isinstance(item[0], str)
                and callable(item[1])
            ):
                raise TypeError(f"an instruction is (callback_name, function), got {item!r}")
        self._lock = threading.Lock()
        self._items: deque[tuple[str, Callable[..., Any]]] = deque(items)
        self.names = frozenset(name for name, _ in items)
        self.skip_to_terminate = skip_to_terminate
        self.errors: list[str] = []
        self.calls: list[str] = []

    def __repr__(self) -> str:
        return f"Script(remaining={self.remaining()})"

    def scripted(self, callback: str) -> bool:
        return callback in self.names

    def next(self, callback: str, *args: Any) -> Any:
        """Pop the next instruction, which must be for `callback`, and apply it to `args`."""
        with self._lock:
            items = self._items
            if self.skip_to_terminate and callback == "terminate_worker":
                while items and items[0][0] != "terminate_worker":
                    items.popleft()
            if not items or items[0][0] != callback:
                error = f"expected {callback}, script was {[name for name, _ in items]}"
                self.errors.append(error)
                raise ScriptError(error)
            _, fun = items.popleft()
            self.calls.append(callback)
        return fun(*args)

    def remaining(self) -> list[str]:
        with self._lock:
            return [name for name, _ in self._items]

    def assert_drained(self) -> None:
        """Every instruction was used, and no callback came out of order."""
        assert not self.errors, f"callbacks out of order: {self.errors}"
        remaining = self.remaining()
        assert not remaining, f"pending instructions found: {remaining}"


class ScriptedWorker(PoolWorker):
    """A worker whose every callback is dictated by the `Script` given as the init argument.

    The pool state starts as the script itself unless the script has an ``init_pool``
    instruction (called with the script).
    """

    script: Script

    def _run(self, callback: str, default: Callable[..., Any], *args: Any) -> Any:
        if self.script.scripted(callback):
            return self.script.next(callback, *args)
        return default(*args)

    def init_pool(self, init_arg: Any) -> Any:
        if not isinstance(init_arg, Script):
            raise TypeError(f"ScriptedWorker needs a Script as init argument, got {init_arg!r}")
        self.script = init_arg
        return self._run("init_pool", super().init_pool, init_arg)

    def init_worker(self, pool_state: Any) -> Any:
        return self.script.next("init_worker", pool_state)

    def handle_enqueue(self, command: Any, pool_state: Any) -> Any:
        return self._run("handle_enqueue", super().handle_enqueue, command, pool_state)

    def handle_checkout(self, command: Any, from_: Any, worker_state: Any, pool_state: Any) -> Any:
        return self._run(
            "handle_checkout", super().handle_checkout, command, from_, worker_state, pool_state
        )

    def handle_checkin(
        self, checkin_state: Any, from_: Any, worker_state: Any, pool_state: Any
    ) -> Any:
        return self._run(
            "handle_checkin", super().handle_checkin, checkin_state, from_, worker_state, pool_state
        )

    def handle_update(self, message: Any, worker_state: Any, pool_state: Any) -> Any:
        return self._run("handle_update", super().handle_update, message, worker_state, pool_state)

    def handle_info(self, message: Any, worker_state: Any) -> Any:
        return self._run("handle_info", super().handle_info, message, worker_state)

    def handle_ping(self, worker_state: Any, pool_state: Any) -> Any:
        return self._run("handle_ping", super().handle_ping, worker_state, pool_state)

    def handle_cancelled(self, context: str, pool_state: Any) -> None:
        self._run("handle_cancelled", super().handle_cancelled, context, pool_state)

    def terminate_worker(self, reason: Any, worker_state: Any, pool_state: Any) -> Any:
        return self._run(
            "terminate_worker", super().terminate_worker, reason, worker_state, pool_state
        )

    def terminate_pool(self, reason: Any, pool_state: Any) -> None:
        self._run("terminate_pool", super().terminate_pool, reason, pool_state)
