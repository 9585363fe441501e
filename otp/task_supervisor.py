"""Task.Supervisor: a dynamic supervisor for tasks (Elixir's ``Task.Supervisor``).

Tasks started here are children of the supervisor, so they are stopped when it stops, and the
caller chooses whether it is linked to them:

- `async_` — linked to the caller and to the supervisor, and monitored by the caller: a crash
  crashes a caller that does not trap exits, exactly like `otp.Task.async_`.
- `async_nolink` — monitored only: the caller gets the result, then ``Down(ref, pid,
  "normal")`` (`Task.await_` / `Task.yield_` consume both); a crashing task leaves the caller
  alive with only the ``Down`` carrying the reason. This is how a server runs work that may
  fail without failing itself.
- `start_child` — fire and forget: a supervised process running ``fn(*args)``.
- `async_stream` / `async_stream_nolink` — `otp.Task.async_stream` on supervised tasks; with
  ``nolink`` a crash is an ``("exit", reason)`` element and never crashes the caller.

>>> import otp
>>> sup = otp.TaskSupervisor.start()
>>> otp.TaskSupervisor.async_nolink(sup, sum, [1, 2, 3]).await_()
6
>>> otp.TaskSupervisor.stop(sup)

Tasks are ``temporary`` children (never restarted) with a 5-second ``shutdown`` unless
`start_child` is told otherwise. The task process starts only once its owner has monitored it
(and linked to it, for `async_`): it waits for the owner's go-ahead, and gives up with
``("shutdown", reason)`` if the owner dies first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import attrs

from otp import dynamic_supervisor as _dyn
from otp._api import demonitor, link, monitor, receive, send, spawn_link
from otp._clock import Clock
from otp._errors import ProcessExit, StartError
from otp._process import current
from otp._terms import Down, Pid, Ref
from otp.supervisor import ChildSpec, SupRef
from otp.task import Task, _task_main, async_stream_of

__all__ = [
    "TaskSupervisor", "async_", "async_nolink", "async_stream", "async_stream_nolink", "children",
    "spec", "start", "start_child", "start_link", "stop", "terminate_child",
]


@attrs.frozen
class _Go:
    """The owner's go-ahead: it monitors the task under `ref`, which tags the reply."""

    owner: Pid
    ref: Ref


def _start_task(owner: Pid, fn: Callable[..., Any], args: tuple[Any, ...]) -> Pid:
    # Runs in the supervisor's thread: spawn_link links the task to the supervisor.
    return spawn_link(_task_body, owner, fn, args)


def _task_body(owner: Pid, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    owner_ref = monitor(owner)
    msg = receive(
        lambda m: (m.__class__ is _Go and m.owner == owner) or (m.__class__ is Down and m.ref == owner_ref)
    )
    if msg.__class__ is Down:
        raise ProcessExit(("shutdown", msg.reason))
    demonitor(owner_ref, flush=True)
    _task_main(owner, msg.ref, fn, args)


def _start_plain(fn: Callable[..., Any], args: tuple[Any, ...]) -> Pid:
    return spawn_link(fn, *args)


def _async(sup: SupRef, fn: Callable[..., Any], args: tuple[Any, ...], *, linked: bool) -> Task:
    if not callable(fn):
        raise TypeError(f"TaskSupervisor.async expects a callable, got {fn!r}")
    me = current()
    task_spec = ChildSpec(id="task", start=(_start_task, (me.pid, fn, args)), restart="temporary",
                          shutdown=5.0, modules=[fn])
    result = _dyn.start_child(sup, task_spec)
    match result:
        case ("ok", Pid() as pid, *_):
            pass
        case _:
            raise StartError(result[1] if isinstance(result, tuple) else result)
    if linked:
        link(pid)
    ref = monitor(pid)
    # The monitor ref doubles as the reply alias, so a reply after await_ gave up is dropped.
    with me._lock:
        me.aliases.add(ref)
    send(pid, _Go(me.pid, ref))
    return Task(pid, ref, me.pid)


def async_(sup: SupRef, fn: Callable[..., Any], *args: Any) -> Task:
    """Run ``fn(*args)`` as a supervised task linked to the caller; await it with
    ``task.await_()``. Raises `StartError` if the supervisor refuses (e.g. ``"max_children"``).
    """
    return _async(sup, fn, args, linked=True)


def async_nolink(sup: SupRef, fn: Callable[..., Any], *args: Any) -> Task:
    """Run ``fn(*args)`` as a supervised task that is monitored but not linked.

    ``task.yield_()`` gives ``("ok", result)`` or ``("exit", reason)`` and never crashes the
    caller. Raises `StartError` if the supervisor refuses the task.
    """
    return _async(sup, fn, args, linked=False)


def async_stream(sup: SupRef, iterable: Iterable[Any], fn: Callable[[Any], Any], **options: Any) -> Iterator[tuple[str, Any]]:
    """`otp.Task.async_stream`, each task supervised by `sup` and linked to the caller.

    >>> import otp
    >>> sup = otp.TaskSupervisor.start()
    >>> list(otp.TaskSupervisor.async_stream(sup, [1, 2], lambda x: -x))
    [('ok', -1), ('ok', -2)]
    >>> otp.TaskSupervisor.stop(sup)
    """
    return _stream_on(sup, iterable, fn, options, linked=True)


def async_stream_nolink(sup: SupRef, iterable: Iterable[Any], fn: Callable[[Any], Any], **options: Any) -> Iterator[tuple[str, Any]]:
    """Like `async_stream`, with tasks that are not linked: a crash is an ``("exit", reason)``
    element, and the caller lives on."""
    return _stream_on(sup, iterable, fn, options, linked=False)


def _stream_on(sup: SupRef, iterable: Iterable[Any], fn: Callable[[Any], Any], options: dict[str, Any], *, linked: bool) -> Iterator[tuple[str, Any]]:
    if not callable(fn):
        raise TypeError(f"TaskSupervisor.async_stream expects a callable, got {fn!r}")
    return async_stream_of(lambda item: _async(sup, fn, (item,), linked=linked), iterable, **options)


def start_child(
    sup: SupRef,
    fn: Callable[..., Any],
    *args: Any,
    restart: str = "temporary",
    shutdown: float | str = 5.0,
) -> Any:
    """Start ``fn(*args)`` under the supervisor, with no owner and no reply.

    Returns ``("ok", pid)`` or ``("error", reason)`` (``"max_children"``, a bad `restart` or
    `shutdown`, ...). A ``"transient"`` or ``"permanent"`` child is run again when it fails.
    """
    if not callable(fn):
        raise TypeError(f"TaskSupervisor.start_child expects a callable, got {fn!r}")
    return _dyn.start_child(
        sup, {"id": "task", "start": (_start_plain, (fn, args)), "restart": restart,
              "shutdown": shutdown, "modules": [fn]},
    )


def children(sup: SupRef) -> list[Pid]:
    """The pids of the running tasks."""
    return [pid for _, pid, _, _ in _dyn.which_children(sup) if isinstance(pid, Pid)]


def terminate_child(sup: SupRef, pid: Pid) -> Any:
    """Stop a task. ``"ok"`` or ``("error", "not_found")``."""
    return _dyn.terminate_child(sup, pid)


def start_link(
    *,
    name: Any = None,
    max_restarts: int = 3,
    max_seconds: float = 5,
    max_children: int | str = "infinity",
    clock: Clock | None = None,
) -> Pid:
    """Start a task supervisor linked to the caller; errors as `otp.DynamicSupervisor.start_link`."""
    return _dyn.start_link(name=name, max_restarts=max_restarts, max_seconds=max_seconds,
                           max_children=max_children, clock=clock)


def start(
    *,
    name: Any = None,
    max_restarts: int = 3,
    max_seconds: float = 5,
    max_children: int | str = "infinity",
    clock: Clock | None = None,
) -> Pid:
    """Like `start_link`, without the link."""
    return _dyn.start(name=name, max_restarts=max_restarts, max_seconds=max_seconds,
                      max_children=max_children, clock=clock)


def spec(*, id: Any = "task_supervisor", name: Any = None, max_children: int | str = "infinity") -> ChildSpec:
    """A child spec that starts a task supervisor under another supervisor."""
    return _dyn.spec(id=id, name=name, max_children=max_children)


def stop(sup: SupRef, reason: Any = "normal", timeout: float | None = None) -> None:
    """Stop the supervisor and its tasks, and wait until it has exited."""
    _dyn.stop(sup, reason, timeout)


class TaskSupervisor:
    """Elixir's ``Task.Supervisor`` as a namespace; each name is a function of this module."""

    start_link = staticmethod(start_link)
    start = staticmethod(start)
    spec = staticmethod(spec)
    async_ = staticmethod(async_)
    async_nolink = staticmethod(async_nolink)
    async_stream = staticmethod(async_stream)
    async_stream_nolink = staticmethod(async_stream_nolink)
    start_child = staticmethod(start_child)
    children = staticmethod(children)
    terminate_child = staticmethod(terminate_child)
    stop = staticmethod(stop)
