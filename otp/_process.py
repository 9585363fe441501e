"""The process control block, the node that owns the process table, and how processes die.

A process is a thread plus a `Process`: pid, mailbox, links, monitors, trap_exit flag, name and
status. Death is a state, not a thread ending: `Node.terminate` marks a process dead, frees its
name, fires its links and monitors and runs its death hooks at once, from whichever thread decided
the death. A thread that is still running when its process dies is a detached zombie.

Locks, and the order in which they are taken (never the other way round):

1. `STRUCTURE` — one lock for links, monitors, names and process tables of every node. Structural
   changes are rare next to messages, and one lock makes cross-node links and atomic
   spawn_link/monitor trivially correct.
2. `Process._lock` — the mailbox, status, wake-up and death hooks of one process.
3. ``threading._active_limbo_lock`` — only ever tried, never waited for (see `_inject_if_safe`).

Nothing here relies on the GIL for correctness: every shared field is read and written under one
of these locks, as the comments on `Process` say.
"""

from __future__ import annotations

import ctypes
import itertools
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from typing import Any

from loguru import logger

from otp._errors import ProcessExit
from otp._terms import TIMEOUT, Down, Exit, Pid, Ref

__all__ = ["Node", "Process", "STRUCTURE", "current", "default_node", "set_default_node"]

STRUCTURE = threading.Lock()
"""Guards links, monitors, names and process tables of all nodes."""

_monotonic = time.monotonic
_allocate_lock = threading.Lock
_local = threading.local()


class _Interrupted(BaseException):
    """Injected into a zombie's thread so that pure-Python code stops at a bytecode boundary."""


def _is(reason: Any, atom: str) -> bool:
    return reason.__class__ is str and reason == atom


def is_normal_exit(reason: Any) -> bool:
    """True for the reasons that are not crashes: normal, shutdown and ``("shutdown", term)``."""
    if reason.__class__ is str:
        return reason in ("normal", "shutdown")
    return reason.__class__ is tuple and len(reason) == 2 and _is(reason[0], "shutdown")


class Process:
    """The control block of one process. Users hold `Pid`s; this is the runtime's side."""

    __slots__ = (
        "node", "number", "_pid", "_lock", "_wake", "_waiting", "mailbox", "dead", "reason",
        "trap_exit", "links", "monitors", "monitored_by", "name", "aliases", "adopted",
        "raise_pending", "in_user", "injected", "blocked_on", "on_death", "thread",
        "initial_call", "patterns", "__weakref__",
    )

    def __init__(self, node: Node, number: int, *, adopted: bool, initial_call: str) -> None:
        self.node = node
        self.number = number
        # A Pid refers to its process; the process refers to its Pid only while alive (see
        # `pid`). So a dead process is in no reference cycle: reference counting frees it once
        # its pids are gone, with no work for the cyclic GC (which cost ~3 us per spawn).
        self._pid: Pid | None = Pid(node.index, number, self)
        # Guarded by _lock: mailbox, dead, reason, _waiting, trap_exit, aliases, in_user,
        # injected, blocked_on, raise_pending.
        self._lock = _allocate_lock()
        # Held while nobody is waiting; the owner blocks acquiring it, a sender releases it.
        # One pre-allocated lock instead of a Condition: no allocation per wait on the hot path.
        self._wake = wake = _allocate_lock()
        wake.acquire()
        self._waiting = False
        self.mailbox: deque[Any] = deque()
        self.dead = False
        self.reason: Any = None
        self.trap_exit = False
        self.aliases: set[Ref] = set()
        self.adopted = adopted
        self.raise_pending = False
        self.in_user = False
        self.injected = False
        self.blocked_on: str | tuple[str, Any] | None = None  # a (verb, target) is rendered late
        # Guarded by STRUCTURE: links, monitors (refs I hold -> target), monitored_by (refs on
        # me -> watcher), name.
        self.links: set[Pid] = set()
        self.monitors: dict[Ref, Process] = {}
        self.monitored_by: dict[Ref, Process] = {}
        self.name: Any = None
        # Guarded by _lock (not STRUCTURE: a port moves its hook from process to process on
        # every pooled call, and must not contend with every link and monitor in the node).
        self.on_death: list[Callable[[Pid, Any], None]] = []
        self.thread: threading.Thread | None = None
        self.initial_call = initial_call
        # Owner thread only: compiled receive templates (see otp._patterns), made on first use.
        self.patterns: dict[Any, Any] | None = None

    def __repr__(self) -> str:
        return f"Process({self.pid!r}, name={self.name!r}, dead={self.dead})"

    @property
    def pid(self) -> Pid:
        """This process's pid: the same object while it lives, an equal new one after death."""
        # `_pid` changes once, from the Pid to None, under `_lock` at death. Either value is
        # fine here, so this read needs no lock (and no GIL).
        pid = self._pid
        if pid is None:
            return Pid(self.node.index, self.number, self)
        return pid

    # -- messages ---------------------------------------------------------------------------

    def deliver(self, msg: Any) -> None:
        """Append `msg` to the mailbox and wake the owner. Messages to the dead are dropped."""
        with self._lock:
            if self.dead:
                return
            self.mailbox.append(msg)
            if self._waiting:
                self._waiting = False
                self._wake.release()

    def deliver_reply(self, ref: Ref, msg: Any) -> None:
        """Deliver `msg` only while `ref` is an active alias: a late reply is dropped."""
        with self._lock:
            if self.dead or ref not in self.aliases:
                return
            self.mailbox.append(msg)
            if self._waiting:
                self._waiting = False
                self._wake.release()

    def _wait_locked(self, timeout: float | None) -> None:
        """Block until woken or `timeout`; called and returns with `_lock` held."""
        self._waiting = True
        self.in_user = False
        self._lock.release()
        try:
            got = self._wake.acquire(True, -1 if timeout is None else max(timeout, 0.0))
        finally:
            self._lock.acquire()
            self.in_user = not self.adopted
        if not got:
            if self._waiting:
                self._waiting = False
            else:
                # A sender released the wake lock just as we timed out: consume it so the lock
                # is held again, as the protocol requires.
                self._wake.acquire()

    def _exit_if_dead_locked(self) -> None:
        if self.dead:
            if self.adopted:
                self.raise_pending = False
            raise ProcessExit(self.reason, f"{self.pid!r} is dead")

    def receive(
        self,
        match: Callable[[Any], bool] | None,
        timeout: float | None,
        start: int = 0,
        label: str | tuple[str, Any] = "receive",
    ) -> Any:
        """Selective receive: take the oldest message for which `match` is true.

        Called only by the owner thread. Messages before index `start` are not examined (a
        caller that made a fresh ref knows older messages cannot carry it).
        """
        deadline = None if timeout is None else _monotonic() + timeout
        lock = self._lock
        lock.acquire()
        try:
            mb = self.mailbox
            i = start
            while True:
                if self.dead:
                    self._exit_if_dead_locked()
                n = len(mb)
                # Invariant: mb[start:i] are known not to match; only the owner removes
                # messages, so indices below len(mb) stay valid while we wait.
                while i < n:
                    msg = mb[i]
                    if match is None or match(msg):
                        if i:
                            del mb[i]
                        else:
                            mb.popleft()
                        return msg
                    i += 1
                if deadline is None:
                    remaining = None
                else:
                    remaining = deadline - _monotonic()
                    if remaining <= 0:
                        return TIMEOUT
                self.blocked_on = label
                try:
                    self._wait_locked(remaining)
                finally:
                    self.blocked_on = None
        finally:
            lock.release()

    def sleep(self, seconds: float) -> None:
        """Wait `seconds`, interruptible by an exit signal; messages stay queued."""
        deadline = _monotonic() + seconds
        with self._lock:
            while True:
                self._exit_if_dead_locked()
                remaining = deadline - _monotonic()
                if remaining <= 0:
                    return
                self.blocked_on = "sleep"
                self._wait_locked(remaining)
                self.blocked_on = None

    def mailbox_mark(self) -> int:
        """The index from which messages arriving from now on will be found."""
        with self._lock:
            return len(self.mailbox)

    def flush_matching(self, match: Callable[[Any], bool]) -> int:
        with self._lock:
            keep = [m for m in self.mailbox if not match(m)]
            removed = len(self.mailbox) - len(keep)
            self.mailbox.clear()
            self.mailbox.extend(keep)
            return removed

    # -- exit signals -------------------------------------------------------------------------

    def take_exit_signal(self, sender: Pid, reason: Any, *, via_link: bool) -> Any:
        """Apply Erlang's exit-signal table to this process.

        Returns the reason this process must die with, or None when it survives (the signal was
        ignored or turned into an `Exit` message). The caller performs the death, because it
        needs the structure lock, which ranks above ours.
        """
        with self._lock:
            if self.dead:
                return None
            if not via_link and _is(reason, "kill"):
                return "killed"  # untrappable
            if self.trap_exit:
                self.mailbox.append(Exit(sender, reason))
                if self._waiting:
                    self._waiting = False
                    self._wake.release()
                return None
            if _is(reason, "normal"):
                # exit(self(), "normal") ends the caller; a normal signal from others is ignored.
                return "normal" if (sender == self.pid and not via_link) else None
            return reason


class _AdoptionSentinel:
    """Lives in an adopted thread's locals; its collection at thread end kills the process."""

    __slots__ = ("proc",)

    def __init__(self, proc: Process) -> None:
        self.proc = proc

    def __del__(self) -> None:
        try:
            self.proc.node.terminate(self.proc, "normal", by_signal=False)
        except Exception:  # noqa: BLE001 - interpreter teardown; nothing left to tell
            pass


_node_counter = itertools.count(0)
_node_counter_lock = threading.Lock()


class Node:
    """A process table and a name registry: the unit of isolation.

    Ordinary code uses the default node. Tests create one per test (see `set_default_node`), so
    that names and processes of one test never meet another's.

    >>> node = Node()
    >>> previous = set_default_node(node)
    >>> _ = set_default_node(previous); node.shutdown()
    """

    def __init__(self) -> None:
        with _node_counter_lock:
            self.index = next(_node_counter)
        self._numbers = itertools.count(1)
        # Guarded by STRUCTURE.
        self.table: dict[int, Process] = {}
        self.names: dict[Any, Process] = {}

    def __repr__(self) -> str:
        return f"Node({self.index}, processes={len(self.table)})"

    def new_process(self, *, adopted: bool, initial_call: str) -> Process:
        """Create a control block and enter it in the table. Caller holds STRUCTURE."""
        proc = Process(self, next(self._numbers), adopted=adopted, initial_call=initial_call)
        self.table[proc.number] = proc
        return proc

    # -- death ---------------------------------------------------------------------------------

    def terminate(self, proc: Process, reason: Any, *, by_signal: bool = True) -> None:
        """Kill `proc` with `reason` and propagate through links, iteratively.

        One step per process, under the structure lock: mark dead, free the name, detach links
        and monitors, queue the `Down`s and apply the link signals. Doing the deliveries under
        the lock means a `demonitor` or `unlink` that finds the monitor or link gone knows the
        `Down` or `Exit` is already queued (so `flush` is exact). Death hooks run after, unlocked.
        A chain of a thousand linked processes costs no recursion depth.
        """
        work: list[tuple[Process, Any, bool]] = [(proc, reason, by_signal)]
        done = 0
        while done < len(work):  # breadth first: the direct links die first
            victim, why, signalled = work[done]
            done += 1
            hooks = _mark_dead(victim, why, signalled, work)
            for hook in hooks:
                try:
                    hook(victim.pid, why)
                except Exception:  # noqa: BLE001 - a hook must not stop the death of others
                    logger.opt(exception=True).error(
                        "death hook {hook!r} of {pid} failed", hook=hook, pid=victim.pid
                    )

    def signal(self, target: Pid, sender: Pid, reason: Any) -> None:
        """Send an exit signal (Erlang's ``exit/2``) from `sender` to `target`."""
        fatal = target._proc.take_exit_signal(sender, reason, via_link=False)
        if fatal is not None:
            self.terminate(target._proc, fatal)

    def shutdown(self, join_timeout: float = 2.0) -> None:
        """Kill every process of this node and wait briefly for their threads to finish."""
        with STRUCTURE:
            procs = list(self.table.values())
        for proc in procs:
            self.terminate(proc, "killed")
        for proc in procs:
            if proc.adopted:  # a node going away is not an exit signal to the adopting thread
                with proc._lock:
                    proc.raise_pending = False
        deadline = _monotonic() + join_timeout
        for proc in procs:
            thread = proc.thread
            if thread is not None and thread is not threading.current_thread():
                thread.join(max(0.0, deadline - _monotonic()))


def _mark_dead(
    proc: Process, reason: Any, by_signal: bool, work: list[tuple[Process, Any, bool]]
) -> list[Callable[[Pid, Any], None]] | tuple[()]:
    with STRUCTURE:
        with proc._lock:
            if proc.dead:
                return []
            proc.dead = True
            proc.reason = reason
            # Taken with `dead` in one step: an add_death_hook from now on sees the death.
            hooks = proc.on_death
            proc.on_death = []
            me = proc.pid
            proc._pid = None  # break the Pid <-> Process cycle (see __init__)
            proc.mailbox.clear()
            proc.aliases.clear()
            if proc._waiting:
                proc._waiting = False
                proc._wake.release()
            if by_signal:
                if proc.adopted:
                    proc.raise_pending = True
                elif proc.in_user and proc.thread is not None and not _interrupt(proc):
                    hooks.append(_interrupt_later(proc))
        # The name goes first: whoever sees the Down may register it again at once.
        node = proc.node
        if proc.name is not None:
            node.names.pop(proc.name, None)
            proc.name = None
        node.table.pop(proc.number, None)
        # Emptied in place: we hold the structure lock, and nobody adds to a dead process.
        monitors = proc.monitors
        if monitors:
            for ref, target in monitors.items():
                target.monitored_by.pop(ref, None)
            monitors.clear()
        watchers = proc.monitored_by
        if watchers:
            for ref, watcher in watchers.items():
                watcher.monitors.pop(ref, None)
                watcher.deliver(Down(ref, me, reason))
            watchers.clear()
        linked = proc.links
        if linked:
            for pid in linked:
                other = pid._proc
                other.links.discard(me)
                fatal = other.take_exit_signal(me, reason, via_link=True)
                if fatal is not None:
                    work.append((other, fatal, True))
            linked.clear()
    return hooks


# Two prototypes of the same C function: one raises, one (with NULL) cancels a pending raise.
_set_async_exc = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_ulong, ctypes.py_object)(
    ("PyThreadState_SetAsyncExc", ctypes.pythonapi)
)
_clear_async_exc = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p)(
    ("PyThreadState_SetAsyncExc", ctypes.pythonapi)
)


def _interrupt(proc: Process, *, look_closer: bool = False) -> bool:
    """Raise `_Interrupted` in a zombie's thread at its next bytecode boundary; False if that
    is not known to be safe yet (see `_inject_if_safe`): the caller then retries later with
    `_interrupt_later`, which may `look_closer`.

    Called with `proc._lock` held, so it cannot race with `run_process`, which cancels a pending
    injection once the thread is back in runtime code that must finish its own clean-up.
    """
    thread = proc.thread
    if thread is None or thread.ident is None or thread is threading.current_thread():
        return True
    if not _inject_if_safe(thread.ident, look_closer):
        return False
    proc.injected = True
    return True


def _inject_if_safe(ident: int, look_closer: bool) -> bool:
    """Set `_Interrupted` pending on the thread `ident`, unless it may be inside `Thread.start`.

    CPython 3.11 gives a new thread's state its *starter's* id until the new thread runs, and
    PyThreadState_SetAsyncExc raises in the first thread state with that id: the newest. So an
    injection into a thread that is starting another lands in the new thread's bootstrap, and
    the starter waits in ``start()`` for ever. Threads being started are in ``threading._limbo``
    until well after they take their own id; with threading's limbo lock held none can enter
    it. So the id names the target alone when no limbo entry still lacks its id (a look at a
    handful of threads) or, looking closer, when the target is not inside ``Thread.start`` (a
    walk over every thread's frames: never done under the node's locks).
    """
    if _NEW_THREADS_TAKE_THEIR_OWN_ID:
        _set_async_exc(ident, _Interrupted)
        return True
    limbo_lock = threading._active_limbo_lock  # type: ignore[attr-defined]
    if not limbo_lock.acquire(blocking=False):  # a finalizer may run with it held: never wait
        return False
    try:
        if any(t._ident is None for t in threading._limbo):  # type: ignore[attr-defined]
            if not look_closer:
                return False
            frame = sys._current_frames().get(ident)
            while frame is not None:
                if frame.f_code is _THREAD_START:
                    return False
                frame = frame.f_back
        _set_async_exc(ident, _Interrupted)
        return True
    finally:
        limbo_lock.release()


#: CPython 3.12 binds a new thread state to its own thread before it is linked in (measured:
#: the 3.11 hang above does not happen on 3.12 or 3.13).
_NEW_THREADS_TAKE_THEIR_OWN_ID = sys.version_info >= (3, 12)
_THREAD_START = threading.Thread.start.__code__
#: How long a killer keeps trying to interrupt a process that is starting a thread (seconds).
#: Starting one takes well under a millisecond; a process still inside ``Thread.start`` after
#: this is left to a thread of its own that keeps trying, so the killer is not held up.
INTERRUPT_PATIENCE = 1.0


def _interrupt_later(proc: Process) -> Callable[[Pid, Any], None]:
    """A death hook that retries `_interrupt` until it is safe, from the killer's thread once
    it holds no lock of the node, then from a thread of its own."""

    def retry(_pid: Pid, _reason: Any) -> None:
        if _retry_interrupt(proc, INTERRUPT_PATIENCE, 50e-6):
            return
        logger.warning(
            "{pid} was killed while starting a thread and is still in Thread.start after "
            "{patience} s; a background thread keeps trying to stop it",
            pid=proc.pid, patience=INTERRUPT_PATIENCE,
        )
        threading.Thread(
            target=_retry_interrupt, args=(proc, None, 1e-3), name=f"otp-interrupt-{proc.number}",
            daemon=True,
        ).start()

    return retry


def _retry_interrupt(proc: Process, patience: float | None, every: float) -> bool:
    """Try `_interrupt` every `every` seconds until it is done or not needed any more (True),
    or for `patience` seconds (None: for ever) and then return False."""
    deadline = None if patience is None else _monotonic() + patience
    while True:
        with proc._lock:
            # Back in runtime code, its thread stops by itself (see `current`).
            if not proc.in_user or proc.injected or _interrupt(proc, look_closer=True):
                return True
        if deadline is not None and _monotonic() > deadline:
            return False
        time.sleep(every)  # the target is finishing Thread.start: poll, nothing to wait on


def _interrupt_self(proc: Process) -> None:
    """`_interrupt` for the calling thread, which is `proc`'s own and not inside ``Thread.start``
    (so its id is its own): the exception is raised at its next bytecode boundary. Called with
    `proc._lock` held."""
    proc.injected = True
    _set_async_exc(threading.get_ident(), _Interrupted)


def _cancel_interrupt(proc: Process) -> None:
    thread = proc.thread
    if proc.injected and thread is not None and thread.ident is not None:
        _clear_async_exc(thread.ident, None)
        proc.injected = False


# -- the current process -----------------------------------------------------------------------

_default_node = Node()
_default_lock = threading.Lock()


def default_node() -> Node:
    """The node that plain threads are adopted into and that `spawn` uses outside processes."""
    with _default_lock:
        return _default_node


def set_default_node(node: Node) -> Node:
    """Make `node` the default and return the previous one. Tests use a fresh node each."""
    global _default_node
    with _default_lock:
        previous, _default_node = _default_node, node
        return previous


def current() -> Process:
    """The calling thread's process, adopting a plain thread on first use.

    A dead spawned process's thread is a zombie: this raises `ProcessExit` so it stops. An
    adopted thread whose process was killed by a signal gets `ProcessExit` once, at this call;
    if it carries on, it becomes a fresh process.
    """
    proc: Process | None = getattr(_local, "proc", None)
    if proc is not None and not proc.dead:
        return proc
    if proc is None:
        return _adopt()
    if not proc.adopted:
        raise ProcessExit(proc.reason, f"{proc.pid!r} is dead; this thread is a detached zombie")
    with proc._lock:
        pending = proc.raise_pending
        proc.raise_pending = False
    if pending:
        raise ProcessExit(proc.reason, f"{proc.pid!r} (this thread) was killed by an exit signal")
    return _adopt()


def current_or_none() -> Process | None:
    """The calling thread's live process, without adopting."""
    proc: Process | None = getattr(_local, "proc", None)
    return proc if proc is not None and not proc.dead else None


def _adopt() -> Process:
    thread = threading.current_thread()
    node = default_node()
    with STRUCTURE:
        proc = node.new_process(adopted=True, initial_call=f"thread {thread.name}")
    proc.thread = thread
    _local.proc = proc
    _local.sentinel = _AdoptionSentinel(proc)  # replaces (and so ends) a previous adoption
    return proc


# -- spawned processes -------------------------------------------------------------------------


def run_process(proc: Process, fn: Callable[..., Any], args: tuple, kwargs: dict) -> None:
    """The body of every spawned thread: setup, running, teardown (one function: it is hot)."""
    _local.proc = proc
    try:
        with proc._lock:
            if proc.dead:
                return  # killed before it ran a line
            proc.in_user = True
        stack = None
        try:
            fn(*args, **kwargs)
            reason: Any = "normal"
        except ProcessExit as exc:
            reason = exc.reason
        except _Interrupted:
            reason = None  # the process is already dead: a zombie stops here
        except BaseException as exc:  # noqa: BLE001 - any escape is the process's exit reason
            reason, stack = exc, traceback.format_exc()
        with proc._lock:
            # Back in runtime code: from here on, a kill must not interrupt our clean-up.
            proc.in_user = False
            if proc.injected:
                _cancel_interrupt(proc)
            dead = proc.dead
        if dead:
            return
        if stack is not None:
            _crash_report(proc, reason, stack)
        proc.node.terminate(proc, reason, by_signal=False)
    except _Interrupted:
        pass  # injected after death, before the cancel: the process is already gone
    finally:
        _local.proc = None
        proc.patterns = None  # may hold our own pid: drop it, so nothing is left in a cycle


def _crash_report(proc: Process, reason: Any, stack: str) -> None:
    if is_normal_exit(reason):
        return
    logger.bind(pid=repr(proc.pid), registered_name=proc.name).error(
        "crash report: process {pid} ({name}) exited with reason {reason!r}\n{stack}",
        pid=proc.pid,
        name=proc.name or proc.initial_call,
        reason=reason,
        stack=stack,
    )
