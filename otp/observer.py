"""The live supervision tree, as data and as text (a small cousin of Erlang's ``observer``).

`snapshot` walks a tree from a supervisor down, asking each supervisor of ours for its children
and each process for its status and mailbox length, and returns an immutable `ProcessView`
tree; `render` draws it for humans. A richer or live view can reuse `snapshot` (or `as_dict`,
plain data) and draw it however it likes.

>>> import otp
>>> from otp import observer
>>> sup = otp.Supervisor.start([{"id": "idle", "start": (otp.spawn_link, (otp.receive,))}])
>>> view = observer.snapshot(sup)
>>> [(child.id, child.type, child.restarts) for child in view.children]
[('idle', 'worker', 0)]
>>> print(observer.render(view))  # doctest: +ELLIPSIS
<...> supervisor one_for_one  waiting  restarts 0/3 in 5s  mailbox 0
└── 'idle'  <...>  worker  waiting  restarts 0  mailbox 0
>>> otp.Supervisor.stop(sup)

Statuses: ``running`` and ``waiting`` (alive; waiting means blocked in ``receive`` or a call),
``dead`` (the supervisor has not handled its exit yet), ``restarting`` (a failed restart will be
retried), ``undefined`` (a kept spec with no process) and ``unresponsive`` (a child supervisor
that did not answer in time; its children are unknown).

The snapshot is not atomic: each supervisor answers for itself, one after the other, so a tree
that is changing may show a child twice or miss one. It never blocks a supervisor for longer
than one call.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import attrs

from otp._api import is_alive, process_info, whereis
from otp._errors import NoProc, ProcessExit
from otp._terms import Pid
from otp.gen_server import call
from otp.supervisor import OBSERVE, RESTARTING, Observed, supervisor_kind

__all__ = ["ProcessView", "SupervisorInfo", "as_dict", "render", "snapshot", "walk"]

ALIVE = ("running", "waiting")


@attrs.frozen
class SupervisorInfo:
    """What a supervisor says about itself."""

    kind: str  # "supervisor" or "dynamic_supervisor"
    strategy: str
    max_restarts: int
    max_seconds: float
    restarts_in_window: int


@attrs.frozen
class ProcessView:
    """One node of the tree: a supervisor (with `children` and `supervisor`) or a worker."""

    id: Any
    pid: Pid | None
    type: str  # "worker" or "supervisor"
    status: str  # see the module doc
    restarts: int
    message_queue_len: int | None
    registered_name: Any = None
    supervisor: SupervisorInfo | None = None
    children: tuple[ProcessView, ...] = ()

    @property
    def alive(self) -> bool:
        return self.status in ALIVE


def _resolve(sup: Any) -> Pid:
    if isinstance(sup, Pid):
        return sup
    pid = whereis(sup)
    if pid is None:
        raise NoProc(sup, "observer")
    return pid


def snapshot(sup: Pid | Any, *, timeout: float = 5.0, depth: int | None = None) -> ProcessView:
    """The tree under `sup` (a pid or registered name), down to `depth` levels (None: all).

    Exits the caller (`ProcessExit`, as a call does) if `sup` itself is not running or does not
    answer within `timeout`; a child supervisor that dies or does not answer meanwhile is shown
    as ``dead`` or ``unresponsive`` instead.
    """
    deadline = time.monotonic() + timeout
    pid = _resolve(sup)
    # Status before asking: right after answering, a supervisor is briefly "running".
    root_info = _info(pid)
    observed = _ask(pid, timeout)
    return _supervisor_view(
        None, pid, observed, restarts=0, info=root_info, deadline=deadline, depth=depth
    )


def _ask(pid: Pid, timeout: float) -> Observed:
    if supervisor_kind(pid) is None and is_alive(pid):
        # Never send our request to someone else's GenServer: its handle_call would crash.
        raise TypeError(f"{pid!r} is not a supervisor started by otp")
    return call(pid, OBSERVE, timeout)  # type: ignore[no-any-return]  # noproc exit if dead


def _info(pid: Pid) -> tuple[str, int | None, Any]:
    info = process_info(pid)
    queue = None if info.status == "dead" else info.message_queue_len
    return info.status, queue, info.registered_name


def _supervisor_view(child_id: Any, pid: Pid, observed: Observed, *, restarts: int,
                     info: tuple[str, int | None, Any], deadline: float, depth: int | None) -> ProcessView:
    children: tuple[ProcessView, ...] = ()
    if depth is None or depth > 0:
        below = None if depth is None else depth - 1
        children = tuple(_child_view(c, deadline, below) for c in observed.children)
    status, queue, name = info
    return ProcessView(
        id=child_id, pid=pid, type="supervisor", status=status, restarts=restarts,
        message_queue_len=queue, registered_name=name,
        supervisor=SupervisorInfo(observed.kind, observed.strategy, observed.max_restarts,
                                  observed.max_seconds, observed.restarts_in_window),
        children=children,
    )


def _child_view(child: Any, deadline: float, depth: int | None) -> ProcessView:
    if not isinstance(child.pid, Pid):
        status = "restarting" if child.pid == RESTARTING else "undefined"
        return ProcessView(child.id, None, child.type, status, child.restarts, None)
    info = _info(child.pid)
    if child.type == "supervisor" and info[0] in ALIVE and supervisor_kind(child.pid) is not None:
        observed = _ask_child(child.pid, deadline)
        if isinstance(observed, Observed):
            return _supervisor_view(child.id, child.pid, observed, restarts=child.restarts,
                                    info=info, deadline=deadline, depth=depth)
        info = (observed, None, info[2])
    status, queue, name = info
    return ProcessView(child.id, child.pid, child.type, status, child.restarts, queue, name)


def _ask_child(pid: Pid, deadline: float) -> Observed | str:
    try:
        return call(pid, OBSERVE, max(0.0, deadline - time.monotonic()))  # type: ignore[no-any-return]
    except ProcessExit as exc:
        match exc.reason:
            case ("timeout", ("call", *_)):
                return "unresponsive"
            case (_, ("call", *_)):
                return "dead"  # it died before or while answering
        raise  # not the call's own exit: this process was killed; let it go


def walk(view: ProcessView) -> Iterator[tuple[ProcessView | None, ProcessView]]:
    """Every ``(parent, node)`` pair, depth first, in start order; the root's parent is None."""
    stack: list[tuple[ProcessView | None, ProcessView]] = [(None, view)]
    while stack:
        parent, node = stack.pop()
        yield parent, node
        stack.extend((node, child) for child in reversed(node.children))


def as_dict(view: ProcessView) -> dict[str, Any]:
    """The view as plain dicts, lists and strings (pids as ``"<0.42.0>"``), e.g. for JSON."""
    def value(v: Any) -> Any:
        return repr(v) if isinstance(v, Pid) else v

    return attrs.asdict(view, value_serializer=lambda _inst, _field, v: value(v))


def render(target: ProcessView | Pid | Any, *, timeout: float = 5.0) -> str:
    """Draw the tree (a view, or a supervisor to `snapshot`) as indented text, one line each:
    id, pid, type, status, restart count and mailbox length."""
    view = target if isinstance(target, ProcessView) else snapshot(target, timeout=timeout)
    lines = [_root_line(view)]
    _render_children(view, "", lines)
    return "\n".join(lines)


def _root_line(view: ProcessView) -> str:
    sup = view.supervisor
    assert sup is not None
    name = f"{view.registered_name!r} " if view.registered_name is not None else ""
    return (
        f"{name}{view.pid!r} {sup.kind} {sup.strategy}  {view.status}  "
        f"restarts {sup.restarts_in_window}/{sup.max_restarts} in {sup.max_seconds:g}s  "
        f"mailbox {view.message_queue_len}"
    )


def _render_children(view: ProcessView, prefix: str, lines: list[str]) -> None:
    for i, child in enumerate(view.children):
        last = i == len(view.children) - 1
        lines.append(prefix + ("└── " if last else "├── ") + _line(child))
        _render_children(child, prefix + ("    " if last else "│   "), lines)


def _line(view: ProcessView) -> str:
    child_id = getattr(view.id, "__name__", None) or repr(view.id)
    pid = repr(view.pid) if view.pid is not None else "-"
    mailbox = "-" if view.message_queue_len is None else view.message_queue_len
    extra = ""
    if view.supervisor is not None:
        extra = f"  {view.supervisor.strategy} {view.supervisor.restarts_in_window}/{view.supervisor.max_restarts}"
    return f"{child_id}  {pid}  {view.type}  {view.status}  restarts {view.restarts}  mailbox {mailbox}{extra}"
