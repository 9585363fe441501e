"""The process primitives, in Erlang's words: spawn, send, receive, link, monitor, exit, names."""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import attrs

from otp._errors import AlreadyRegistered, NoProc, ProcessExit
from otp._patterns import compile_patterns
from otp._process import (
    STRUCTURE,
    Node,
    Process,
    _cancel_interrupt,
    _interrupt_self,
    current,
    default_node,
    run_process,
)
from otp._terms import TIMEOUT, Down, Exit, Pid, Ref, make_ref

__all__ = [
    "ProcessInfo", "demonitor", "exit", "is_alive", "link", "monitor", "process_info",
    "processes", "receive", "register", "self", "send", "sleep", "spawn", "spawn_link",
    "spawn_monitor", "trap_exit", "uninterruptible", "unlink", "unregister", "whereis",
]


def self() -> Pid:
    """The pid of the calling process (a plain thread is adopted on first use).

    >>> import otp
    >>> otp.self() == otp.self()
    True
    """
    return current().pid


def _spawn(
    fn: Callable[..., Any],
    args: tuple,
    kwargs: dict,
    *,
    link: bool,
    monitor: bool,
    name: Any = None,
    trap_exit: bool = False,
    monitor_ref: Ref | None = None,
) -> tuple[Pid, Ref | None]:
    if not callable(fn):
        raise TypeError(f"spawn expects a callable, got {fn!r}")
    parent = current() if (link or monitor) else _current_if_any()
    node = parent.node if parent is not None else default_node()
    label = getattr(fn, "__qualname__", None) or repr(fn)
    ref = (monitor_ref or make_ref()) if monitor else None
    with STRUCTURE:
        if name is not None and name in node.names:
            raise AlreadyRegistered(name, node.names[name].pid)
        proc = node.new_process(adopted=False, initial_call=label)
        proc.trap_exit = trap_exit
        if name is not None:
            node.names[name] = proc
            proc.name = name
        if parent is not None and link:
            proc.links.add(parent.pid)
            parent.links.add(proc.pid)
        if parent is not None and ref is not None:
            proc.monitored_by[ref] = parent
            parent.monitors[ref] = proc
        thread = threading.Thread(
            target=run_process,
            args=(proc, fn, args, kwargs),
            name=f"otp<{node.index}.{proc.number}.0>",  # the pid, without a call to repr
            daemon=True,
        )
        proc.thread = thread
    _start_thread(parent, thread)
    return proc.pid, ref


def _start_thread(spawner: Process | None, thread: threading.Thread) -> None:
    """Start `thread`; if the spawner is killed meanwhile, it exits once start() returned.

    A kill must not cut a spawn in half (a started thread nobody knows of), and on CPython 3.11
    it must not be injected while start() runs at all (see `otp._process._inject_if_safe`).
    """
    with _Shield(spawner, "while it spawned a process"):
        thread.start()


class _Shield:
    """The block runs with `proc` out of user code, so a kill cannot interrupt it; a kill that
    came meanwhile takes effect at the end. A class, not a generator: every spawn enters one."""

    __slots__ = ("doing", "proc", "was_in_user")

    def __init__(self, proc: Process | None, doing: str) -> None:
        # Adopted threads are never interrupted: nothing to shield.
        self.proc = None if proc is None or proc.adopted else proc
        self.doing = doing
        self.was_in_user = False

    def __enter__(self) -> None:
        proc = self.proc
        if proc is not None:
            with proc._lock:
                if proc.injected:  # killed just now: the block still runs whole, the exit after
                    _cancel_interrupt(proc)
                self.was_in_user, proc.in_user = proc.in_user, False

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        proc = self.proc
        if proc is None:
            return
        with proc._lock:
            proc.in_user = self.was_in_user
            dead = proc.dead
            if dead and self.was_in_user and exc_type is not None:
                # The block's own exception travels on; the kill lands right behind it, where
                # the caller may catch that exception and carry on in pure Python.
                _interrupt_self(proc)
        if dead and self.was_in_user and exc_type is None:
            raise ProcessExit(proc.reason, f"{proc.pid!r} was killed {self.doing}")


def uninterruptible() -> AbstractContextManager[None]:
    """A block of the calling process that a kill cannot cut in half.

    A kill stops a process that runs Python code by raising in its thread between two bytecodes.
    Inside this block it does not: the process is dead at once for everyone else (links,
    monitors, names), and its thread leaves the block normally, then raises `ProcessExit` (if
    the block raises, its exception travels on and the kill lands right behind it).
    Use it around a few steps that leave shared state inconsistent if half done, such as
    starting a thread and recording it. It changes nothing in a thread that is not a process.

    >>> import otp
    >>> with otp.uninterruptible():
    ...     pass
    """
    from otp._process import _local

    return _Shield(getattr(_local, "proc", None), "inside an uninterruptible block")


def _current_if_any() -> Process | None:
    from otp._process import _local

    proc: Process | None = getattr(_local, "proc", None)
    if proc is not None and proc.dead and not proc.adopted:
        current()  # a zombie may not spawn: raises ProcessExit
    return proc if proc is not None and not proc.dead else None


def spawn(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Pid:
    """Start `fn(*args, **kwargs)` as a new process and return its pid.

    >>> import otp
    >>> pid = otp.spawn(otp.send, otp.self(), "hello from a process")
    >>> otp.receive("hello from a process", timeout=5)
    'hello from a process'
    """
    return _spawn(fn, args, kwargs, link=False, monitor=False)[0]


def spawn_link(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Pid:
    """Like `spawn`, linked to the caller atomically: a child that dies at once still signals."""
    return _spawn(fn, args, kwargs, link=True, monitor=False)[0]


def spawn_monitor(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Pid, Ref]:
    """Like `spawn`, monitored atomically; returns ``(pid, ref)``."""
    pid, ref = _spawn(fn, args, kwargs, link=False, monitor=True)
    assert ref is not None
    return pid, ref


def spawn_opt(
    fn: Callable[..., Any],
    *args: Any,
    link: bool = False,
    monitor: bool = False,
    name: Any = None,
    trap_exit: bool = False,
    **kwargs: Any,
) -> tuple[Pid, Ref | None]:
    """Spawn with options; a `name` is registered before the process runs a single line."""
    return _spawn(fn, args, kwargs, link=link, monitor=monitor, name=name, trap_exit=trap_exit)


def _resolve(dest: Any, action: str) -> Process:
    if dest.__class__ is Pid:
        return dest._proc  # type: ignore[no-any-return]
    with STRUCTURE:
        proc = current().node.names.get(dest)
    if proc is None:
        raise NoProc(dest, action)
    return proc


def send(dest: Pid | Any, msg: Any) -> Any:
    """Send `msg` to a pid or a registered name; returns `msg`.

    Sending to a dead pid is silently dropped; to an unregistered name it raises `NoProc`.

    >>> import otp
    >>> otp.send(otp.self(), "hi")
    'hi'
    >>> otp.receive()
    'hi'
    """
    current()  # adopts, or stops a zombie
    if dest.__class__ is Pid:
        dest._proc.deliver(msg)
    else:
        _resolve(dest, "send").deliver(msg)
    return msg


def receive(*patterns: Any, timeout: float | None = None) -> Any:
    """Take the oldest message matching any pattern; leave the others in order.

    Patterns: a predicate, a type (isinstance), a value (equality), or a tuple template where
    `ANY` matches anything. No pattern matches any message. `timeout=0` polls, `None` waits for
    ever, and `TIMEOUT` comes back when the timeout passes (measured from the call).

    >>> import otp
    >>> _ = otp.send(otp.self(), ("b", 2)); _ = otp.send(otp.self(), ("a", 1))
    >>> otp.receive(("a", otp.ANY))
    ('a', 1)
    >>> otp.receive(timeout=0)
    ('b', 2)
    """
    if timeout is not None:
        _check_timeout(timeout)
    proc = current()
    if not patterns:
        return proc.receive(None, timeout)
    cache = proc.patterns
    if cache is None:
        cache = proc.patterns = {}
    return proc.receive(compile_patterns(patterns, cache), timeout)


def _check_timeout(timeout: Any) -> None:
    if timeout is None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0:
        raise ValueError(f"timeout must be None or a number >= 0 (seconds), got {timeout!r}")


def sleep(seconds: float) -> None:
    """Sleep without consuming messages; an exit signal interrupts it (unlike `time.sleep`)."""
    _check_timeout(seconds)
    current().sleep(seconds)


def flush() -> list[Any]:
    """Remove and return every message in the caller's mailbox."""
    proc = current()
    out: list[Any] = []
    while (msg := proc.receive(None, 0)) is not TIMEOUT:
        out.append(msg)
    return out


def link(pid: Pid) -> None:
    """Link the caller and `pid` (both ways).

    A dead `pid`: a trapping caller gets ``Exit(pid, "noproc")``; otherwise `NoProc` is raised.
    """
    if pid.__class__ is not Pid:
        raise TypeError(f"link expects a Pid, got {pid!r}")
    me = current()
    if pid == me.pid:
        return
    with STRUCTURE:
        alive = not pid._proc.dead
        if alive:
            me.links.add(pid)
            pid._proc.links.add(me.pid)
    if alive:
        return
    if me.trap_exit:
        me.deliver(Exit(pid, "noproc"))
    else:
        raise NoProc(pid, "link")


def unlink(pid: Pid) -> None:
    """Remove the link between the caller and `pid`, if any."""
    if pid.__class__ is not Pid:
        raise TypeError(f"unlink expects a Pid, got {pid!r}")
    me = current()
    with STRUCTURE:
        me.links.discard(pid)
        pid._proc.links.discard(me.pid)


def monitor(target: Pid | Any) -> Ref:
    """Monitor a pid or a registered name; a `Down` arrives once when it dies.

    A dead or unknown target gives ``Down(ref, target, "noproc")`` at once.
    """
    me = current()
    ref = make_ref()
    with STRUCTURE:
        if target.__class__ is Pid:
            proc: Process | None = target._proc
        else:
            proc = me.node.names.get(target)
        alive = proc is not None and not proc.dead
        if alive:
            assert proc is not None
            proc.monitored_by[ref] = me
            me.monitors[ref] = proc
    if not alive:
        me.deliver(Down(ref, target, "noproc"))
    return ref


def demonitor(ref: Ref, flush: bool = False) -> bool:
    """Stop monitoring; with `flush`, also remove a `Down` for `ref` already queued."""
    return demonitor_process(current(), ref, flush)


def demonitor_process(me: Process, ref: Ref, flush: bool) -> bool:
    with STRUCTURE:
        target = me.monitors.pop(ref, None)
        if target is not None:
            target.monitored_by.pop(ref, None)
    # Downs are queued under the structure lock, so a monitor still present means no Down
    # was or will be queued: the mailbox scan is needed only when it was gone.
    if flush and target is None:
        me.flush_matching(lambda m: m.__class__ is Down and m.ref == ref)
    return True


def exit(*args: Any) -> None:
    """``exit(reason)`` ends the caller; ``exit(pid, reason)`` sends an exit signal.

    Signals follow Erlang: ``"kill"`` is untrappable and the target dies with ``"killed"``;
    ``"normal"`` is ignored unless the target traps exits (or is the caller); any other reason
    kills a non-trapping target and becomes an `Exit` message for a trapping one.

    >>> import otp
    >>> pid = otp.spawn(otp.receive)
    >>> otp.exit(pid, "kill")
    """
    if len(args) == 1:
        raise ProcessExit(args[0])
    if len(args) != 2:
        raise TypeError("exit takes (reason) or (pid, reason)")
    pid, reason = args
    if pid.__class__ is not Pid:
        raise TypeError(f"exit expects a Pid, got {pid!r}")
    me = current()
    me.node.signal(pid, me.pid, reason)
    if me.dead:  # the signal reached us (through ourselves or a link)
        current()


def trap_exit(flag: bool) -> bool:
    """Turn exit signals into `Exit` messages (True) or not; returns the previous value."""
    me = current()
    with me._lock:
        previous, me.trap_exit = me.trap_exit, bool(flag)
    return previous


def register(name: Any, pid: Pid) -> None:
    """Register `pid` under `name` in its node.

    Raises `AlreadyRegistered` if the name is taken or the process has another name, and
    `NoProc` if the process is dead.
    """
    if name is None or isinstance(name, Pid):
        raise TypeError(f"a registered name must be a hashable value other than None/Pid: {name!r}")
    proc = pid._proc
    with STRUCTURE:
        if proc.dead:
            raise NoProc(pid, f"register {name!r}")
        holder = proc.node.names.get(name)
        if holder is not None:
            raise AlreadyRegistered(name, holder.pid)
        if proc.name is not None:
            raise AlreadyRegistered(name, pid, f"{pid!r} is already registered as {proc.name!r}")
        proc.node.names[name] = proc
        proc.name = name


def unregister(name: Any) -> None:
    """Remove a registered name; raises `NoProc` if the name is not registered."""
    node = _node_of_caller()
    with STRUCTURE:
        proc = node.names.pop(name, None)
        if proc is not None:
            proc.name = None
    if proc is None:
        raise NoProc(name, "unregister")


def whereis(name: Any) -> Pid | None:
    """The pid registered under `name`, or None."""
    node = _node_of_caller()
    with STRUCTURE:
        proc = node.names.get(name)
    return proc.pid if proc is not None else None


def _node_of_caller() -> Node:
    proc = _current_if_any()
    return proc.node if proc is not None else default_node()


def is_alive(pid: Pid) -> bool:
    """True while the process has not died."""
    return not pid._proc.dead


@attrs.frozen
class ProcessInfo:
    """A snapshot of one process, for humans and tests (Erlang's ``process_info/1``)."""

    pid: Pid
    status: str  # "running", "waiting" or "dead"
    registered_name: Any
    message_queue_len: int
    links: frozenset[Pid]
    monitors: tuple[Ref, ...]
    monitored_by: tuple[Pid, ...]
    trap_exit: bool
    blocked_on: str | None
    initial_call: str
    adopted: bool
    reason: Any


def process_info(pid: Pid) -> ProcessInfo:
    """Status, mailbox length, links, monitors, trap_exit, name and what it is blocked on."""
    proc = pid._proc
    with STRUCTURE:
        links = frozenset(proc.links)
        monitors = tuple(proc.monitors)
        monitored_by = tuple(w.pid for w in proc.monitored_by.values())
        name = proc.name
    with proc._lock:
        status = "dead" if proc.dead else ("waiting" if proc._waiting else "running")
        blocked_on = proc.blocked_on
        if blocked_on.__class__ is tuple:  # (verb, target): formatted only when someone asks
            blocked_on = f"{blocked_on[0]} {blocked_on[1]!r}"
        return ProcessInfo(
            pid=pid,
            status=status,
            registered_name=name,
            message_queue_len=len(proc.mailbox),
            links=links,
            monitors=monitors,
            monitored_by=monitored_by,
            trap_exit=proc.trap_exit,
            blocked_on=blocked_on,
            initial_call=proc.initial_call,
            adopted=proc.adopted,
            reason=proc.reason,
        )


def processes() -> list[Pid]:
    """Every live process of the caller's node, in creation order."""
    node = _node_of_caller()
    with STRUCTURE:
        return sorted(p.pid for p in node.table.values())


def add_death_hook(pid: Pid, hook: Callable[[Pid, Any], None]) -> bool:
    """Run ``hook(pid, reason)`` when `pid` dies (ports use this to close with their owner).

    Returns False, without running the hook, if the process is already dead.
    """
    proc = pid._proc
    with proc._lock:
        if proc.dead:
            return False
        proc.on_death.append(hook)
        return True


def remove_death_hook(pid: Pid, hook: Callable[[Pid, Any], None]) -> None:
    proc = pid._proc
    with proc._lock:
        try:
            proc.on_death.remove(hook)
        except ValueError:
            pass


def move_death_hook(old: Pid, new: Pid, hook: Callable[[Pid, Any], None]) -> bool:
    """Move `hook` from `old` to `new` (a port changing owner). False, with nothing changed,
    if `new` is dead; `hook` then stays where it was.

    Never holds both processes' locks at once: a death of `old` in between runs the hook,
    which then finds `new` as the owner and leaves the port alone.
    """
    proc = new._proc
    with proc._lock:
        if proc.dead:
            return False
        proc.on_death.append(hook)
    remove_death_hook(old, hook)
    return True


def post(pid: Pid, msg: Any) -> None:
    """Deliver `msg` to `pid` from outside any process, without adopting the calling thread.

    For I/O service threads, ports and signal handlers (Erlang's ``enif_send`` with no
    environment). A dead pid drops the message, as `send` does.
    """
    if pid.__class__ is not Pid:
        raise TypeError(f"post expects a Pid, got {pid!r}")
    pid._proc.deliver(msg)
