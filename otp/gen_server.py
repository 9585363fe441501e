"""GenServer: a process that serves calls, casts and other messages, in Elixir's shape.

Subclass `GenServer`, override the callbacks you need, and start it with
``MyServer.start_link(arg, name=...)``. Every callback runs in the server's own thread, one at a
time. State is passed in and returned, as in Elixir; the instance is yours for configuration.

>>> import otp
>>> class Counter(otp.GenServer):
...     def init(self, start):
...         return ("ok", start)
...     def handle_call(self, request, from_, count):
...         return ("reply", count, count)
...     def handle_cast(self, by, count):
...         return ("noreply", count + by)
>>> pid = Counter.start_link(10)
>>> otp.cast(pid, 5)
>>> otp.call(pid, "get")
15
>>> otp.stop(pid)

Return shapes (anything else crashes the server with `BadReturn` "expected ..., got ..."):

- `init`: ``("ok", state)``, ``("ok", state, extra)``, ``"ignore"``, ``("stop", reason)``.
- `handle_call`: ``("reply", reply, state[, extra])``, ``("noreply", state[, extra])``,
  ``("stop", reason, reply, state)``, ``("stop", reason, state)``.
- `handle_cast`, `handle_info`, `handle_continue`: ``("noreply", state[, extra])``,
  ``("stop", reason, state)``.

`extra` is a timeout in seconds (a ``"timeout"`` message arrives through `handle_info` when no
other message came first), ``"hibernate"`` (accepted, no effect) or ``("continue", arg)``.

`terminate(reason, state)` runs when a callback returns stop, when a callback raises (the reason
is the exception), on `stop()`, and when the parent's exit signal arrives while the server traps
exits. It does not run when the server is killed, or when an exit signal kills a server that does
not trap exits: exactly as OTP.
"""

from __future__ import annotations

import traceback
from typing import Any, ClassVar

from loguru import logger

from otp import proc_lib
from otp._api import demonitor_process
from otp._errors import BadReturn, ProcessExit
from otp._process import STRUCTURE, Process, current, is_normal_exit
from otp._terms import TIMEOUT, Down, Exit, Pid, Ref, make_ref

__all__ = ["From", "GenServer", "call", "cast", "reply", "start", "start_link", "stop"]


class From:
    """Who is waiting for a reply: pass it to `reply` to answer later.

    A value (compared and hashed by pid and ref), treated as immutable. A plain slotted class
    rather than an attrs one, like `Ref`: every `call` makes one, so it is hot.
    """

    __slots__ = ("pid", "ref")
    __match_args__ = ("pid", "ref")

    def __init__(self, pid: Pid, ref: Ref) -> None:
        self.pid = pid
        self.ref = ref

    def __repr__(self) -> str:
        return f"From(pid={self.pid!r}, ref={self.ref!r})"

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not From:
            return NotImplemented
        return self.ref == other.ref and self.pid == other.pid  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((self.pid, self.ref))


class _Call:
    __slots__ = ("from_", "request")

    def __init__(self, from_: From, request: Any) -> None:
        self.from_ = from_
        self.request = request


class _Cast:
    __slots__ = ("msg",)

    def __init__(self, msg: Any) -> None:
        self.msg = msg


class _Reply:
    __slots__ = ("ref", "value")

    def __init__(self, ref: Ref, value: Any) -> None:
        self.ref = ref
        self.value = value


class _Stop:
    __slots__ = ("reason",)

    def __init__(self, reason: Any) -> None:
        self.reason = reason


class GenServer:
    """Base class of a generic server. Override the callbacks; all run in the server's thread.

    If a callback raises, the server calls `terminate` with the exception, logs a crash report
    and exits with the exception as its reason (linked processes and supervisors see it).
    """

    #: Default for `child_spec`: "permanent", "transient" or "temporary".
    restart: ClassVar[str] = "permanent"
    #: Default for `child_spec`: seconds, "brutal_kill" or "infinity".
    shutdown: ClassVar[Any] = 5.0

    def init(self, arg: Any) -> Any:
        """Runs in the new server before `start_link` returns; returns ``("ok", state)``."""
        return ("ok", arg)

    def handle_call(self, request: Any, from_: From, state: Any) -> Any:
        """Answer a `call`. The default crashes: a call nobody handles is a bug."""
        raise NotImplementedError(f"{type(self).__name__} received call {request!r} but has no handle_call")

    def handle_cast(self, msg: Any, state: Any) -> Any:
        """Handle a `cast`. The default crashes, as Elixir's does."""
        raise NotImplementedError(f"{type(self).__name__} received cast {msg!r} but has no handle_cast")

    def handle_info(self, msg: Any, state: Any) -> Any:
        """Handle any other message. The default logs it and carries on."""
        logger.warning("{server} received unexpected message {msg!r}", server=type(self).__name__, msg=msg)
        return ("noreply", state)

    def handle_continue(self, arg: Any, state: Any) -> Any:
        """Continue after a callback returned ``("continue", arg)``, before the next message."""
        raise NotImplementedError(f"{type(self).__name__} returned continue but has no handle_continue")

    def terminate(self, reason: Any, state: Any) -> None:
        """Clean up before exiting; see the module doc for when it runs. Exceptions are logged."""

    # -- starting --------------------------------------------------------------------------

    @classmethod
    def start_link(cls, arg: Any = None, *, name: Any = None, timeout: float | None = 5.0) -> Any:
        """Start linked to the caller; returns the pid once `init` returned, or ``"ignore"``.

        Raises `StartError` when `init` raises or exits, returns ``("stop", reason)`` or a bad
        shape (`BadReturn`), or does not return within `timeout` (``("timeout", name, timeout)``;
        the server is killed). ``StartError(("already_started", pid))`` if `name` is taken. On a
        failure the server has exited and its name is free by the time this returns, and a
        non-trapping caller is not killed by its exit.
        """
        return _start(cls, arg, name=name, link=True, timeout=timeout)

    @classmethod
    def start(cls, arg: Any = None, *, name: Any = None, timeout: float | None = 5.0) -> Any:
        """Like `start_link` without the link: for scripts that must not die with the server."""
        return _start(cls, arg, name=name, link=False, timeout=timeout)

    @classmethod
    def child_spec(cls, arg: Any = None) -> dict[str, Any]:
        """The supervisor child spec, as Elixir's ``use GenServer`` generates it."""
        return {
            "id": cls,
            "start": (cls.start_link, (arg,)),
            "restart": cls.restart,
            "shutdown": cls.shutdown,
            "type": "worker",
        }


def start_link(
    cls: type[GenServer], arg: Any = None, *, name: Any = None, timeout: float | None = 5.0
) -> Any:
    """``GenServer.start_link(Module, arg)`` spelled as a function; see `GenServer.start_link`."""
    return _start(cls, arg, name=name, link=True, timeout=timeout)


def start(
    cls: type[GenServer], arg: Any = None, *, name: Any = None, timeout: float | None = 5.0
) -> Any:
    """``GenServer.start(Module, arg)`` spelled as a function; see `GenServer.start`."""
    return _start(cls, arg, name=name, link=False, timeout=timeout)


def _start(cls: type[GenServer], arg: Any, *, name: Any, link: bool, timeout: float | None) -> Any:
    """proc_lib's synchronous start, with `_server_main` as the child."""
    if not (isinstance(cls, type) and issubclass(cls, GenServer)):
        raise TypeError(f"expected a GenServer subclass, got {cls!r}")
    return proc_lib.start(
        _server_main, cls, arg, link=link, name=name, timeout=timeout,
        what=cls.__name__, label=("start", cls),
    )


# -- the client API ----------------------------------------------------------------------------


def _resolve_server(server: Any) -> Process | None:
    if server.__class__ is Pid:
        return server._proc  # type: ignore[no-any-return]
    if isinstance(server, Process):
        return server
    with STRUCTURE:
        return current().node.names.get(server)


def call(server: Pid | Any, request: Any, timeout: float | None = 5.0) -> Any:
    """Send `request` and wait for the reply; returns the reply.

    Otherwise exits the caller (raises `ProcessExit`) with ``(why, ("call", server, request,
    timeout))``, where `why` is:

    - ``"timeout"`` when no reply came in time (`None` waits for ever);
    - ``"noproc"`` at once, if the server is dead or the name is not registered;
    - the server's exit reason, if it dies before replying;
    - ``"calling_self"`` if a server calls itself (which could only time out).

    A reply that arrives after the timeout is dropped, never left in the caller's mailbox.
    """
    me = current()
    proc = _resolve_server(server)
    if proc is me:
        raise ProcessExit(("calling_self", ("call", server, request, timeout)))
    ref = make_ref()
    # Monitor the server and open the reply alias in one step (structure lock, then ours, as
    # the lock order says). Messages already queued cannot carry the fresh ref: skip them.
    with STRUCTURE:
        if proc is None or proc.dead:
            proc = None
        else:
            proc.monitored_by[ref] = me
            me.monitors[ref] = proc
            with me._lock:
                me.aliases.add(ref)
                mark = len(me.mailbox)
    if proc is None:
        raise ProcessExit(("noproc", ("call", server, request, timeout)))
    proc.deliver(_Call(From(me.pid, ref), request))

    def is_answer(m: Any) -> bool:
        return (m.__class__ is _Reply or m.__class__ is Down) and m.ref == ref

    try:
        msg = me.receive(is_answer, timeout, mark, ("call", server))  # process_info renders it
    finally:
        _close_call(me, ref)
    if msg.__class__ is _Reply:
        return msg.value
    if msg is TIMEOUT:
        raise ProcessExit(("timeout", ("call", server, request, timeout)))
    raise ProcessExit((msg.reason, ("call", server, request, timeout)))


def _close_call(me: Process, ref: Ref) -> None:
    """Drop the call's monitor and alias, and a `Down` for it already queued.

    Downs are queued under the structure lock, so a monitor still present means none was or
    will be queued, and the mailbox needs no scan: the common case costs one lock.
    """
    with STRUCTURE:
        target = me.monitors.pop(ref, None)
        if target is not None:
            target.monitored_by.pop(ref, None)
        with me._lock:
            me.aliases.discard(ref)
    if target is None:
        me.flush_matching(lambda m: m.__class__ is Down and m.ref == ref)


def cast(server: Pid | Any, msg: Any) -> None:
    """Send `msg` to `handle_cast` without waiting; a dead server or unknown name is ignored."""
    current()
    proc = _resolve_server(server)
    if proc is not None:
        proc.deliver(_Cast(msg))


def reply(from_: From, value: Any) -> None:
    """Answer a call whose `handle_call` returned ``("noreply", ...)`` (a deferred reply)."""
    from_.pid._proc.deliver_reply(from_.ref, _Reply(from_.ref, value))


def stop(server: Pid | Any, reason: Any = "normal", timeout: float | None = None) -> None:
    """Stop the server with `reason`, running `terminate`, and wait until it has exited.

    Returns None once the server exited with `reason`. Otherwise exits the caller (raises
    `ProcessExit`) with ``(why, ("stop", server, reason))``, where `why` is ``"noproc"`` if it is
    not running, ``"timeout"`` if it did not stop within `timeout`, ``"calling_self"``, or the
    reason it actually exited with when that differs (say, `terminate` raised).
    """
    me = current()
    proc = _resolve_server(server)
    detail = ("stop", server, reason)
    if proc is me:
        raise ProcessExit(("calling_self", detail))
    ref = make_ref()
    with STRUCTURE:
        alive = proc is not None and not proc.dead
        if alive:
            assert proc is not None
            proc.monitored_by[ref] = me
            me.monitors[ref] = proc
    if not alive:
        raise ProcessExit(("noproc", detail))
    assert proc is not None
    mark = me.mailbox_mark()
    proc.deliver(_Stop(reason))
    msg = me.receive(lambda m: m.__class__ is Down and m.ref == ref, timeout, start=mark)
    if msg is TIMEOUT:
        demonitor_process(me, ref, flush=True)
        raise ProcessExit(("timeout", detail))
    if msg.reason != reason:
        raise ProcessExit((msg.reason, detail))


# -- the server loop ---------------------------------------------------------------------------

_INIT_SHAPES = "('ok', state), ('ok', state, extra), 'ignore' or ('stop', reason)"
_CALL_SHAPES = (
    "('reply', reply, state[, extra]), ('noreply', state[, extra]), "
    "('stop', reason, reply, state) or ('stop', reason, state)"
)
_NOREPLY_SHAPES = "('noreply', state[, extra]) or ('stop', reason, state)"


class _Stopping(Exception):
    def __init__(self, reason: Any, state: Any) -> None:
        self.reason = reason
        self.state = state


def _server_main(starter: proc_lib.Starter, cls: type[GenServer], arg: Any) -> None:
    me = current()
    server: Any = cls  # reported by its class if the constructor itself fails
    try:
        server = cls()
        result = server.init(arg)
        state, extra = _check_init(result)
    except _Stopping as stopping:
        starter.fail(stopping.reason)
    except _Ignored:
        starter.ignore()
    except ProcessExit as exc:
        if me.dead:  # an exit signal killed us during init: nothing left to tell
            raise
        # init called exit(reason) (or a call it made exited): as OTP's init_it, that is a
        # start failure returned to the caller, not an exit signal that kills it.
        starter.fail(exc.reason)
    except Exception as exc:  # noqa: BLE001 - init failure goes back to the starter
        _report(server, me, "init", exc, traceback.format_exc(), None)
        starter.fail(exc)
    starter.ack()
    _loop(server, me, starter.parent, state, extra)


class _Ignored(Exception):
    pass


def _check_init(result: Any) -> tuple[Any, Any]:
    match result:
        case ("ok", state):
            return state, None
        case ("ok", state, extra):
            return state, _check_extra(extra, "init", _INIT_SHAPES, result)
        case "ignore":
            raise _Ignored()
        case ("stop", reason):
            raise _Stopping(reason, None)
    raise BadReturn(f"init: expected {_INIT_SHAPES}, got {result!r}")


def _check_extra(extra: Any, callback: str, shapes: str, result: Any) -> Any:
    match extra:
        case "hibernate" | None:
            return None
        case ("continue", _):
            return extra
        case int() | float() if not isinstance(extra, bool) and extra >= 0:
            return extra
    raise BadReturn(
        f"{callback}: expected {shapes} where extra is a timeout >= 0, 'hibernate' or "
        f"('continue', arg), got {result!r}"
    )


def _loop(server: GenServer, me: Process, parent: Pid | None, state: Any, extra: Any) -> None:
    receive = me.receive
    try:
        while True:
            while extra.__class__ is tuple:  # ("continue", arg)
                state, extra = _noreply(server.handle_continue(extra[1], state), "handle_continue")
            # Nothing handled stays referenced while we wait: a reply its caller no longer
            # wanted (its pipes, its buffers) is freed now, not at the next message.
            msg = result = None
            msg = receive(None, extra, 0, "gen_server loop")
            if msg.__class__ is _Call:  # the hot path, inline: a call answered at once
                from_ = msg.from_
                result = server.handle_call(msg.request, from_, state)
                if result.__class__ is tuple and len(result) == 3 and result[0] == "reply":
                    from_.pid._proc.deliver_reply(from_.ref, _Reply(from_.ref, result[1]))
                    state, extra = result[2], None
                else:
                    state, extra = _handle_call_result(result, from_)
            else:
                state, extra = _dispatch(server, me, parent, msg, state)
    except _Stopping as stopping:
        _terminate(server, me, stopping.reason, stopping.state)
        raise ProcessExit(stopping.reason) from None
    except Exception as exc:  # noqa: BLE001 - a crash in a callback ends the server
        stack = traceback.format_exc()
        _report(server, me, "callback", exc, stack, state)
        _terminate(server, me, exc, state)
        raise ProcessExit(exc) from None


def _dispatch(
    server: GenServer, me: Process, parent: Pid | None, msg: Any, state: Any
) -> tuple[Any, Any]:
    kind = msg.__class__
    if kind is _Call:
        return _handle_call_result(server.handle_call(msg.request, msg.from_, state), msg.from_)
    if kind is _Cast:
        return _noreply(server.handle_cast(msg.msg, state), "handle_cast")
    if kind is _Stop:
        raise _Stopping(msg.reason, state)
    if msg is TIMEOUT:
        return _noreply(server.handle_info("timeout", state), "handle_info")
    if kind is Exit and parent is not None and msg.pid == parent:
        # Only reachable while trapping exits: the parent tells us to go.
        raise _Stopping(msg.reason, state)
    return _noreply(server.handle_info(msg, state), "handle_info")


def _handle_call_result(result: Any, from_: From) -> tuple[Any, Any]:
    match result:
        case ("reply", value, state):
            reply(from_, value)
            return state, None
        case ("reply", value, state, extra):
            reply(from_, value)
            return state, _check_extra(extra, "handle_call", _CALL_SHAPES, result)
        case ("noreply", state):
            return state, None
        case ("noreply", state, extra):
            return state, _check_extra(extra, "handle_call", _CALL_SHAPES, result)
        case ("stop", reason, value, state):
            reply(from_, value)
            raise _Stopping(reason, state)
        case ("stop", reason, state):
            raise _Stopping(reason, state)
    raise BadReturn(f"handle_call: expected {_CALL_SHAPES}, got {result!r}")


def _noreply(result: Any, callback: str) -> tuple[Any, Any]:
    if result.__class__ is tuple and len(result) == 2 and result[0] == "noreply":  # the hot path
        return result[1], None
    match result:
        case ("noreply", state):
            return state, None
        case ("noreply", state, extra):
            return state, _check_extra(extra, callback, _NOREPLY_SHAPES, result)
        case ("stop", reason, state):
            raise _Stopping(reason, state)
    raise BadReturn(f"{callback}: expected {_NOREPLY_SHAPES}, got {result!r}")


def _terminate(server: GenServer, me: Process, reason: Any, state: Any) -> None:
    try:
        server.terminate(reason, state)
    except Exception as exc:  # noqa: BLE001 - terminate's own failure becomes the exit reason
        _report(server, me, "terminate", exc, traceback.format_exc(), state)
        raise ProcessExit(exc) from None


def _report(
    server: Any, me: Process, where: str, exc: BaseException, stack: str, state: Any
) -> None:
    if is_normal_exit(exc):
        return
    with STRUCTURE:
        name = me.name
    logger.bind(pid=repr(me.pid), registered_name=name).error(
        "GenServer {pid} ({server}{registered}) terminating in {where}: {reason!r}\n"
        "last state: {state!r}\n{stack}",
        pid=me.pid,
        server=server.__name__ if isinstance(server, type) else type(server).__name__,
        registered="" if name is None else f", registered as {name!r}",
        where=where,
        reason=exc,
        state=state,
        stack=stack,
    )
