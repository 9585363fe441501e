"""Task: run one function in its own process and collect its result (Elixir's ``Task``).

>>> import otp
>>> task = otp.Task.async_(sum, [1, 2, 3])
>>> task.await_()
6

`async_` links the task to the caller and monitors it: a crashing task crashes a caller that
does not trap exits, and `await_` exits the caller on timeout, as in Elixir.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import attrs

from otp._api import _spawn, demonitor_process, unlink
from otp._errors import ProcessExit
from otp._process import Process, current
from otp._terms import TIMEOUT, Down, Pid, Ref, make_ref

__all__ = ["Task"]


class _TaskReply:
    __slots__ = ("ref", "value")

    def __init__(self, ref: Ref, value: Any) -> None:
        self.ref = ref
        self.value = value


def _task_main(owner: Pid, ref: Ref, fn: Callable[..., Any], args: tuple) -> None:
    owner._proc.deliver_reply(ref, _TaskReply(ref, fn(*args)))


@attrs.frozen
class Task:
    """A running task: its pid, the monitor ref its reply is tagged with, and its owner."""

    pid: Pid
    ref: Ref
    owner: Pid

    @staticmethod
    def async_(fn: Callable[..., Any], *args: Any) -> Task:
        """Start `fn(*args)` linked to and monitored by the caller."""
        return _async(fn, args, link=True)

    def await_(self, timeout: float | None = 5.0) -> Any:
        """The task's result. Exits the caller with the task's reason if it dies first, or with
        ``("timeout", ("await", task, timeout))`` when the timeout passes."""
        me = self._owner_process("await_")
        msg = me.receive(self._matcher(), timeout, label=f"await {self.pid!r}")
        if msg is TIMEOUT:
            raise ProcessExit(("timeout", ("await", self, timeout)))
        return self._finish(me, msg, exit_on_down=True)[1]

    def yield_(self, timeout: float | None = 5.0) -> tuple[str, Any] | None:
        """``("ok", result)``, ``("exit", reason)`` or None if still running after `timeout`."""
        me = self._owner_process("yield_")
        msg = me.receive(self._matcher(), timeout, label=f"yield {self.pid!r}")
        if msg is TIMEOUT:
            return None
        return self._finish(me, msg, exit_on_down=False)

    def shutdown(self, timeout: float | str = 5.0) -> tuple[str, Any] | None:
        """Stop the task (``shutdown``, then ``kill`` after `timeout`; or ``"brutal_kill"``).

        Returns ``("ok", result)`` if it had already finished, ``("exit", reason)`` if it had
        died abnormally, else None.
        """
        me = self._owner_process("shutdown")
        unlink(self.pid)
        brutal = timeout == "brutal_kill"
        me.node.signal(self.pid, me.pid, "kill" if brutal else "shutdown")
        msg = me.receive(self._matcher(), None if brutal else timeout)
        if msg is TIMEOUT:
            me.node.signal(self.pid, me.pid, "kill")
            msg = me.receive(self._matcher(), None)
        result = self._finish(me, msg, exit_on_down=False)
        if result[0] == "exit" and result[1] in ("shutdown", "killed"):
            return None
        return result

    def _owner_process(self, action: str) -> Process:
        me = current()
        if me.pid != self.owner:
            raise RuntimeError(f"{action}: task {self.pid!r} is owned by {self.owner!r}, not {me.pid!r}")
        return me

    def _matcher(self) -> Callable[[Any], bool]:
        ref = self.ref
        return lambda m: (m.__class__ is _TaskReply or m.__class__ is Down) and m.ref == ref

    def _finish(self, me: Process, msg: Any, *, exit_on_down: bool) -> tuple[str, Any]:
        with me._lock:
            me.aliases.discard(self.ref)
        if msg.__class__ is _TaskReply:
            demonitor_process(me, self.ref, flush=True)
            return ("ok", msg.value)
        if exit_on_down:
            raise ProcessExit((msg.reason, ("await", self)))
        return ("exit", msg.reason)

    @staticmethod
    def await_many(tasks: Iterable[Task], timeout: float | None = 5.0) -> list[Any]:
        """Await every task within one overall timeout; results in the tasks' order."""
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        out = []
        for task in tasks:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            out.append(task.await_(left))
        return out


def _async(fn: Callable[..., Any], args: tuple, *, link: bool) -> Task:
    if not callable(fn):
        raise TypeError(f"Task.async_ expects a callable, got {fn!r}")
    me = current()
    # The monitor ref doubles as the reply alias, so a reply after await_ gave up is dropped.
    ref = make_ref()
    with me._lock:
        me.aliases.add(ref)
    pid, _ = _spawn(_task_main, (me.pid, ref, fn, args), {}, link=link, monitor=True, monitor_ref=ref)
    return Task(pid, ref, me.pid)


def async_nolink(fn: Callable[..., Any], *args: Any) -> Task:
    """A task that is monitored but not linked: its crash leaves the caller alive with a Down."""
    return _async(fn, args, link=False)
