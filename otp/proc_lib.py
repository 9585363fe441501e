"""proc_lib: start a process synchronously, as OTP's ``proc_lib:start_link`` does.

A behaviour's ``start_link`` must not return before the new process has run its ``init``: the
caller then knows the process is ready (its name registered, its state built) or why it is not.
`start` spawns `fn` monitored (and linked, if asked) with a `Starter` as its first argument, and
waits for the child to answer through it:

- `Starter.ack` - init succeeded: `start` returns the pid, and the child carries on;
- `Starter.ignore` - the child will not run: it exits ``"normal"``, `start` returns ``"ignore"``;
- `Starter.fail` - init failed: the child exits with the reason, `start` raises
  ``StartError(reason)``.

Otherwise `start` raises `otp.StartError` with:

- ``("already_started", holder)`` when `name` is taken (nothing is spawned);
- the child's exit reason when it exits before answering (say, an exit signal killed it);
- ``("timeout", what, timeout)`` when no answer came within `timeout` (plus `grace`); the child
  is killed first.

What the caller can rely on, as in OTP 26: after a failure (any of the above, and ``"ignore"``)
the child has exited and its name is free when `start` returns; a linked caller is not killed by
a failed child (the child unlinks before answering) and, if it traps exits, finds no `Exit` from
the child in its mailbox; an answer sent just as the caller gave up is dropped, never queued.

`otp.GenServer` and the pool start their processes this way; `fn` is any function:

>>> import otp
>>> from otp import proc_lib
>>> def greeter(starter, greeting):
...     if not greeting:
...         starter.fail(("bad_greeting", greeting))  # does not return: the child exits
...     starter.ack()
...     sender = otp.receive()
...     otp.send(sender, greeting)
>>> pid = proc_lib.start(greeter, "hello", link=True)
>>> _ = otp.send(pid, otp.self())
>>> otp.receive(timeout=5)
'hello'
>>> try:
...     proc_lib.start(greeter, "", link=True)
... except otp.StartError as e:
...     e.reason
('bad_greeting', '')
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, NoReturn

from otp._api import demonitor_process, spawn_opt, unlink
from otp._errors import AlreadyRegistered, ProcessExit, StartError
from otp._process import STRUCTURE, Process, current
from otp._terms import TIMEOUT, Down, Exit, Pid, Ref, make_ref

__all__ = ["IGNORE", "Starter", "start"]

IGNORE: Literal["ignore"] = "ignore"


class _Ack:
    __slots__ = ("ref", "status", "value")

    def __init__(self, ref: Ref, status: str, value: Any) -> None:
        self.ref = ref
        self.status = status
        self.value = value


class Starter:
    """The child's handle on the process waiting in `start`; answer it exactly once.

    All three methods run in the child's own thread. `parent` is the starter's pid when it
    started the child linked (a behaviour stops when its parent's exit signal arrives), else None.
    A second answer raises `RuntimeError`: it is a bug, and it could land in the starter's
    mailbox if sent before the starter closed its alias.
    """

    __slots__ = ("_answered", "_ref", "_to", "parent")

    def __init__(self, parent: Pid | None, to: Pid, ref: Ref) -> None:
        self.parent = parent
        self._to = to
        self._ref = ref
        self._answered = False

    def __repr__(self) -> str:
        return f"Starter(to={self._to!r}, parent={self.parent!r})"

    def ack(self) -> None:
        """Init succeeded: `start` returns the child's pid. Returns None; the child goes on."""
        self._answer("ok", None)

    def ignore(self) -> NoReturn:
        """The child will not run: `start` returns ``"ignore"``. Exits the child ``"normal"``."""
        self._give_up("ignore", None)
        raise ProcessExit("normal") from None

    def fail(self, reason: Any) -> NoReturn:
        """Init failed: `start` raises ``StartError(reason)``. Exits the child with `reason`.

        Exiting here, as OTP's ``init_fail/3`` does, is what lets `start` wait for the child's
        `Down` without a timeout: a child that answered "failed" cannot go on running.
        """
        self._give_up("error", reason)
        raise ProcessExit(reason) from None

    def _give_up(self, status: str, value: Any) -> None:
        me = current()
        # Unregister the name before telling the parent, or an immediate retry gets
        # already_started (`start` also waits for our Down, which frees it too; OTP's gen does
        # both, so the answer is true on its own). Unlink before, or a linked starter that does
        # not trap exits is killed by our exit instead of getting the error, and one that traps
        # gets a stray Exit.
        with STRUCTURE:
            if me.name is not None:
                me.node.names.pop(me.name, None)
                me.name = None
        if self.parent is not None:
            unlink(self.parent)
        self._answer(status, value)

    def _answer(self, status: str, value: Any) -> None:
        if self._answered:
            raise RuntimeError(f"{self!r} was already answered; cannot answer {status!r} too")
        self._answered = True
        # Through the alias: if the starter gave up (timeout), the answer is dropped.
        self._to._proc.deliver_reply(self._ref, _Ack(self._ref, status, value))


def start(
    fn: Callable[..., Any],
    *args: Any,
    link: bool,
    name: Any = None,
    timeout: float | None = 5.0,
    grace: float = 0.0,
    what: Any = None,
    label: Any = None,
    trap_exit: bool = False,
) -> Pid | Literal["ignore"]:
    """Spawn ``fn(starter, *args)`` and wait for its answer; see the module doc for the rules.

    Returns the child's pid (`Starter.ack`) or ``"ignore"`` (`Starter.ignore`, the child has
    exited). Raises `otp.StartError` with the reason the child failed with (`Starter.fail`, the
    child has exited), its exit reason if it exited without answering, ``("already_started",
    holder)`` if `name` is taken, or ``("timeout", what, timeout)``.

    - `link`: link the child to the caller (``start_link``); it then gets ``starter.parent``.
    - `name`: registered before `fn` runs a single line, freed by `Starter.fail`/`ignore`.
    - `timeout`: seconds to wait (None: for ever); `grace` adds to the wait but not to the
      reason, for a child that bounds its own init by `timeout` and reports its own failure.
    - `what`: names the child in the timeout reason (default: `fn`'s qualified name); `label`
      is what `process_info` shows the caller blocked on (default ``("start", what)``).
    - `trap_exit`: the child starts trapping exits (so a parent's exit signal is a message).
    """
    me = current()
    if what is None:
        what = getattr(fn, "__qualname__", None) or repr(fn)
    if label is None:
        label = ("start", what)
    ref = make_ref()
    # The answer comes through an alias, so that one sent just as we gave up is dropped.
    with me._lock:
        me.aliases.add(ref)
    try:
        starter = Starter(me.pid if link else None, me.pid, ref)
        try:
            pid, mon = spawn_opt(
                fn, starter, *args, link=link, monitor=True, name=name, trap_exit=trap_exit
            )
        except AlreadyRegistered as exc:
            raise StartError(("already_started", exc.pid)) from None
        assert mon is not None

        def is_answer(m: Any) -> bool:
            kind = m.__class__
            return (kind is _Ack and m.ref == ref) or (kind is Down and m.ref == mon)

        wait = None if timeout is None else timeout + grace
        msg = me.receive(is_answer, wait, label=label)
    finally:
        with me._lock:
            me.aliases.discard(ref)
    if msg is TIMEOUT:
        _kill_flush_exit(me, pid, mon)
        raise StartError(("timeout", what, timeout))
    if msg.__class__ is Down:  # it exited, or was killed, before it could answer
        _flush_exit(me, pid)
        raise StartError(msg.reason)
    if msg.status == "ok":
        demonitor_process(me, mon, flush=True)
        return pid
    # The child unlinked itself and freed its name before answering, and is exiting. As OTP 26
    # does, return only once it has exited, so that the caller never sees the failed child alive.
    me.receive(lambda m: m.__class__ is Down and m.ref == mon, None, label=label)
    if msg.status == "ignore":
        return IGNORE
    raise StartError(msg.value)


def _kill_flush_exit(me: Process, pid: Pid, mon: Ref) -> None:
    """OTP's kill_flush_EXIT: kill a child that did not answer, leaving no trace of it."""
    # Unlink first, so that the kill does not come back to us through the link.
    unlink(pid)
    me.node.signal(pid, me.pid, "kill")
    demonitor_process(me, mon, flush=True)  # the kill is synchronous: its Down is queued
    _flush_exit(me, pid)


def _flush_exit(me: Process, pid: Pid) -> None:
    """Remove an `Exit` from `pid` that a trapping caller may have got (OTP's flush_EXIT)."""
    me.flush_matching(lambda m: m.__class__ is Exit and m.pid == pid)
