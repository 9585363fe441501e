"""Task: run one function in its own process and collect its result (Elixir's ``Task``).

>>> import otp
>>> task = otp.Task.async_(sum, [1, 2, 3])
>>> task.await_()
6

`async_` links the task to the caller and monitors it: a crashing task crashes a caller that
does not trap exits, and `await_` exits the caller on timeout, as in Elixir.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import attrs

from otp._api import _spawn, demonitor_process, monitor, unlink
from otp._errors import ProcessExit
from otp._process import Process, _monotonic, current
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
    """A running task: its pid, the monitor ref its reply is tagged with, and its owner.

    Only the owner (the process that started it) may `await_`, `yield_` or `shutdown` it.
    """

    pid: Pid
    ref: Ref
    owner: Pid

    @staticmethod
    def async_(fn: Callable[..., Any], *args: Any) -> Task:
        """Start `fn(*args)` linked to and monitored by the caller.

        The task's crash is an exit signal to the caller: a caller that does not trap exits
        dies with the task's reason (even before it awaits).
        """
        return _async(fn, args, link=True)

    def await_(self, timeout: float | None = 5.0) -> Any:
        """The task's result, once it has returned.

        Exits the caller (raises `ProcessExit`) with ``(reason, ("await", task, timeout))`` if
        the task dies first, and with ``("timeout", ("await", task, timeout))`` when `timeout`
        passes; in that case the monitor is dropped and a later result is never delivered. A
        linked task then dies with the caller, unless the caller catches the exit.
        """
        me = self._owner_process("await_")
        msg = me.receive(self._matcher(), timeout, label=f"await {self.pid!r}")
        if msg is TIMEOUT:
            self._forget(me)
            raise ProcessExit(("timeout", ("await", self, timeout)))
        if msg.__class__ is Down:
            self._forget(me)
            raise ProcessExit((msg.reason, ("await", self, timeout)))
        self._forget(me)
        return msg.value

    def yield_(self, timeout: float | None = 5.0) -> tuple[str, Any] | None:
        """Wait up to `timeout` for the task: ``("ok", result)``, ``("exit", reason)`` if it
        died (only seen by a caller that is not linked or traps exits), or None if it is still
        running; the task keeps running and `yield_` may be called again."""
        me = self._owner_process("yield_")
        msg = me.receive(self._matcher(), timeout, label=f"yield {self.pid!r}")
        if msg is TIMEOUT:
            return None
        self._forget(me)
        if msg.__class__ is Down:
            return ("exit", msg.reason)
        return ("ok", msg.value)

    def shutdown(self, timeout: float | str = 5.0) -> tuple[str, Any] | None:
        """Unlink and stop the task, then check for a result (Elixir's ``Task.shutdown``).

        Sends ``shutdown`` and kills the task if it has not exited within `timeout` seconds;
        ``"brutal_kill"`` kills it at once. Returns ``("ok", result)`` if the result arrived
        (even just before the shutdown), None if the task was stopped as asked, and
        ``("exit", reason)`` if it died otherwise: crashed earlier, or ignored the shutdown and
        was killed after `timeout` (``("exit", "killed")``). ``("exit", "noproc")`` when the task
        was already awaited.
        """
        me = self._owner_process("shutdown")
        brutal = timeout == "brutal_kill"
        if not brutal:
            _check_timeout(timeout)
        mon = monitor(self.pid)
        kind = "brutal_kill" if brutal else "shutdown"
        try:
            unlink(self.pid)
        finally:  # the signal goes out even if we are killed while unlinking
            me.node.signal(self.pid, me.pid, "kill" if brutal else "shutdown")
        is_down = lambda m: m.__class__ is Down and m.ref == mon  # noqa: E731
        msg = me.receive(is_down, None if brutal else timeout, label=f"shutdown {self.pid!r}")
        if msg is TIMEOUT:
            me.node.signal(self.pid, me.pid, "kill")
            kind = "timeout_kill"
            msg = me.receive(is_down, None, label=f"shutdown {self.pid!r}")
        if msg.reason == "noproc":
            outcome = self._down_before_shutdown(me, kind)
        else:
            outcome = None if _as_asked(msg.reason, kind) else ("exit", msg.reason)
        result = self._take_reply(me)
        self._forget(me)
        return result or outcome

    @staticmethod
    def await_many(tasks: Iterable[Task], timeout: float | None = 5.0) -> list[Any]:
        """The results of all `tasks`, in their order, within one overall `timeout`.

        Replies are taken in whatever order they arrive. Exits the caller with ``("timeout",
        ("await_many", tasks, timeout))`` or, when a task dies first, with ``(reason,
        ("await_many", tasks, timeout))``; the tasks still pending are no longer monitored then.
        """
        tasks = list(tasks)
        me = current()
        for task in tasks:
            task._owner_process("await_many")
        detail = ("await_many", tasks, timeout)
        pending = {task.ref: task for task in tasks}
        replies: dict[Ref, Any] = {}
        deadline = None if timeout is None else _monotonic() + timeout

        def answer(m: Any) -> bool:
            return (m.__class__ is _TaskReply or m.__class__ is Down) and m.ref in pending

        while pending:
            left = None if deadline is None else max(0.0, deadline - _monotonic())
            msg = me.receive(answer, left, label="await_many")
            if msg is TIMEOUT or msg.__class__ is Down:
                for task in pending.values():
                    task._forget(me)
                raise ProcessExit(("timeout" if msg is TIMEOUT else msg.reason, detail))
            pending.pop(msg.ref)._forget(me)
            replies[msg.ref] = msg.value
        return [replies[task.ref] for task in tasks]

    @staticmethod
    def async_stream(
        iterable: Iterable[Any],
        fn: Callable[[Any], Any],
        *,
        max_concurrency: int | None = None,
        ordered: bool = True,
        timeout: float | None = 5.0,
        on_timeout: str = "exit",
        zip_input_on_exit: bool = False,
    ) -> Iterator[tuple[str, Any]]:
        """Run `fn(item)` for each item in its own linked task, at most `max_concurrency` at a
        time (default: the CPU count), and yield ``("ok", result)`` per item (Elixir's
        ``Task.async_stream``).

        Lazy: items are taken from `iterable`, and tasks started, only as the results are
        consumed. `ordered` (default) yields in input order, else as tasks finish. Each task
        may run `timeout` seconds: past it, ``on_timeout="exit"`` (default) stops every task
        and exits the caller with ``("timeout", ("async_stream", timeout))``, and
        ``"kill_task"`` kills that task and yields ``("exit", "timeout")`` (with
        `zip_input_on_exit`, ``("exit", (item, "timeout"))``). A task that crashes takes a
        caller that does not trap exits with it; one that traps them sees ``("exit",
        reason)``. Stopping early (``break``, or closing the iterator) kills the tasks still
        running.

        >>> [r for _, r in Task.async_stream([1, 2, 3], lambda x: x * 10, max_concurrency=2)]
        [10, 20, 30]
        """
        if not callable(fn):
            raise TypeError(f"Task.async_stream expects a callable, got {fn!r}")
        return async_stream_of(
            lambda item: _async(fn, (item,), link=True), iterable, max_concurrency=max_concurrency,
            ordered=ordered, timeout=timeout, on_timeout=on_timeout, zip_input_on_exit=zip_input_on_exit,
        )

    # -- helpers ---------------------------------------------------------------------------

    def _owner_process(self, action: str) -> Process:
        me = current()
        if me.pid != self.owner:
            raise RuntimeError(
                f"{action}: task {self.pid!r} must be queried from its owner {self.owner!r}, "
                f"not from {me.pid!r}"
            )
        return me

    def _matcher(self) -> Callable[[Any], bool]:
        ref = self.ref
        return lambda m: (m.__class__ is _TaskReply or m.__class__ is Down) and m.ref == ref

    def _forget(self, me: Process) -> None:
        """Stop listening: drop the alias (a later reply is dropped) and the monitor."""
        with me._lock:
            me.aliases.discard(self.ref)
        demonitor_process(me, self.ref, flush=True)

    def _take_reply(self, me: Process) -> tuple[str, Any] | None:
        ref = self.ref
        msg = me.receive(lambda m: m.__class__ is _TaskReply and m.ref == ref, 0)
        return None if msg is TIMEOUT else ("ok", msg.value)

    def _down_before_shutdown(self, me: Process, kind: str) -> tuple[str, Any] | None:
        """The task was dead before `shutdown`: its own Down, if still queued, says why."""
        ref = self.ref
        msg = me.receive(lambda m: m.__class__ is Down and m.ref == ref, 0)
        if msg is TIMEOUT:
            return ("exit", "noproc")
        return None if _as_asked(msg.reason, kind) else ("exit", msg.reason)


class _Running:
    """One task of a stream: where its result goes, when it must be done, what it was given."""

    __slots__ = ("deadline", "index", "item", "task")

    def __init__(self, index: int, task: Task, deadline: float | None, item: Any) -> None:
        self.index = index
        self.task = task
        self.deadline = deadline
        self.item = item


def async_stream_of(
    start: Callable[[Any], Task],
    iterable: Iterable[Any],
    *,
    max_concurrency: int | None = None,
    ordered: bool = True,
    timeout: float | None = 5.0,
    on_timeout: str = "exit",
    zip_input_on_exit: bool = False,
) -> Iterator[tuple[str, Any]]:
    """`Task.async_stream` with the tasks started by ``start(item)`` (a linked `Task.async_`, a
    supervised task): the options are checked here, before anything runs."""
    if max_concurrency is None:
        max_concurrency = os.cpu_count() or 1
    if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int) or max_concurrency < 1:
        raise ValueError(f"max_concurrency must be a positive int, got {max_concurrency!r}")
    if on_timeout not in ("exit", "kill_task"):
        raise ValueError(f"on_timeout must be 'exit' or 'kill_task', got {on_timeout!r}")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0):
        raise ValueError(f"timeout must be seconds >= 0 or None, got {timeout!r}")
    return _stream(iter(iterable), start, max_concurrency, ordered, timeout, on_timeout, zip_input_on_exit)


def _stream(
    source: Iterator[Any], start: Callable[[Any], Task], max_concurrency: int, ordered: bool,
    timeout: float | None, on_timeout: str, zip_input: bool,
) -> Iterator[tuple[str, Any]]:
    me = current()
    running: dict[Ref, _Running] = {}
    finished: dict[int, tuple[str, Any]] = {}  # ordered mode: results waiting for their turn
    started = emitted = 0
    exhausted = False

    def answer(m: Any) -> bool:
        return (m.__class__ is _TaskReply or m.__class__ is Down) and m.ref in running

    try:
        while True:
            while not exhausted and len(running) < max_concurrency:
                try:
                    item = next(source)
                except StopIteration:
                    exhausted = True
                    break
                task = start(item)
                deadline = None if timeout is None else _monotonic() + timeout
                running[task.ref] = _Running(started, task, deadline, item)
                started += 1
            while emitted in finished:
                yield finished.pop(emitted)
                emitted += 1
            if not running:
                if exhausted:
                    return
                continue
            deadlines = [r.deadline for r in running.values() if r.deadline is not None]
            wait = None if not deadlines else max(0.0, min(deadlines) - _monotonic())
            msg = me.receive(answer, wait, label="async_stream")
            if msg is TIMEOUT:
                now = _monotonic()
                late = [r for r in running.values() if r.deadline is not None and r.deadline <= now]
                if on_timeout == "exit":
                    raise ProcessExit(("timeout", ("async_stream", timeout)))  # the finally stops them all
                results = []
                for r in late:
                    del running[r.task.ref]
                    r.task.shutdown("brutal_kill")
                    results.append((r.index, ("exit", (r.item, "timeout") if zip_input else "timeout")))
            else:
                r = running.pop(msg.ref)
                r.task._forget(me)
                if msg.__class__ is Down:
                    results = [(r.index, ("exit", (r.item, msg.reason) if zip_input else msg.reason))]
                else:
                    results = [(r.index, ("ok", msg.value))]
            for index, result in results:
                if ordered:
                    finished[index] = result
                else:
                    yield result
                    emitted += 1
    finally:
        # Stopped early, or exiting: no task outlives the stream.
        for r in running.values():
            r.task.shutdown("brutal_kill")


def _as_asked(reason: Any, kind: str) -> bool:
    """Did the task die of the shutdown we sent? (Elixir's shutdown_receive clauses.)"""
    match kind, reason:
        case ("shutdown" | "timeout_kill", "shutdown"):
            return True
        case ("brutal_kill", "killed"):
            return True
    return False


def _check_timeout(timeout: Any) -> None:
    if timeout is None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0:
        raise ValueError(
            f"shutdown timeout must be seconds >= 0, None or 'brutal_kill', got {timeout!r}"
        )


def _async(fn: Callable[..., Any], args: tuple, *, link: bool) -> Task:
    if not callable(fn):
        raise TypeError(f"Task.async_ expects a callable, got {fn!r}")
    me = current()
    # The monitor ref doubles as the reply alias, so a reply after await_ gave up is dropped.
    ref = make_ref()
    with me._lock:
        me.aliases.add(ref)
    pid, _ = _spawn(
        _task_main, (me.pid, ref, fn, args), {}, link=link, monitor=True, monitor_ref=ref
    )
    return Task(pid, ref, me.pid)


def async_nolink(fn: Callable[..., Any], *args: Any) -> Task:
    """A task that is monitored but not linked: its crash leaves the caller alive with a Down."""
    return _async(fn, args, link=False)
