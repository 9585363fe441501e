"""Chaos helpers: kill children of a supervision tree on purpose, then wait for it to heal.

For tests and for users who want to see their tree survive. Every helper waits on something
concrete — a ``Down``, a supervisor's answer, a telemetry event — with a timeout; none sleeps
to wait for a result (`kill_at_rate` sleeps only to keep its pace).

>>> import otp
>>> from otp import chaos
>>> sup = otp.Supervisor.start([{"id": "idle", "start": (otp.spawn_link, (otp.receive,))}])
>>> kill = chaos.kill_child(sup, "idle", reason="boom")
>>> kill.id, kill.exit_reason
('idle', 'boom')
>>> view = chaos.wait_until_running(sup)
>>> view.children[0].restarts
1
>>> otp.Supervisor.stop(sup)

A reason other than ``"kill"`` may be trapped: a GenServer child that traps exits receives
an ``Exit`` from a process that is not its parent, logs it and lives on. `Kill.exit_reason` is
then None.
"""

from __future__ import annotations

import random
import time
from typing import Any

import attrs

from otp import telemetry
from otp._api import demonitor, is_alive, monitor, post, receive, sleep
from otp._api import exit as _exit_signal
from otp._errors import ProcessExit
from otp._process import current
from otp._terms import TIMEOUT, Down, Pid, make_ref
from otp.observer import ProcessView, _resolve, render, snapshot, walk
from otp.supervisor import (
    CHILD_EXITED,
    CHILD_RESTARTED,
    CHILD_START_FAILED,
    CHILD_STARTED,
    INTENSITY_EXCEEDED,
)

__all__ = ["RANDOM", "Kill", "NotConverged", "all_running", "kill_at_rate", "kill_child", "wait_until_running"]


class _Random:
    __slots__ = ()

    def __repr__(self) -> str:
        return "RANDOM"


RANDOM: Any = _Random()
"""`kill_child`'s default: pick the victim at random."""


@attrs.frozen
class Kill:
    """One kill: which supervisor's child, its id and pid, the signal sent, and the reason it
    died with (None if it was still alive after the timeout, e.g. because it trapped it)."""

    supervisor: Pid
    id: Any
    pid: Pid
    reason: Any
    exit_reason: Any


class NotConverged(TimeoutError):
    """The tree was not all running in time; `view` is the last snapshot."""

    def __init__(self, view: ProcessView, timeout: float) -> None:
        super().__init__(f"supervision tree not all running after {timeout}s:\n{render(view)}")
        self.view = view


def kill_child(
    sup: Pid | Any,
    id: Any = RANDOM,
    *,
    pid: Pid | None = None,
    reason: Any = "kill",
    recursive: bool = False,
    rng: random.Random | None = None,
    timeout: float = 5.0,
) -> Kill | None:
    """Send exit signal `reason` to one live child of `sup` and wait for its ``Down``.

    The victim is the child with `id`, the child with `pid`, or (by default) one chosen with
    `rng` among the live children — among every live process of the tree below `sup` when
    `recursive`. Returns the `Kill`, or None when there was no live child to kill.
    """
    view = snapshot(sup, timeout=timeout, depth=None if recursive else 1)
    candidates = [
        (parent, node) for parent, node in walk(view)
        if parent is not None and node.alive and node.pid is not None
        and (id is RANDOM or node.id == id) and (pid is None or node.pid == pid)
    ]
    if not candidates:
        return None
    parent, node = (rng or random).choice(candidates)
    assert parent is not None and parent.pid is not None and node.pid is not None
    return _kill(parent.pid, node.id, node.pid, reason, timeout)


def _kill(sup: Pid, child_id: Any, pid: Pid, reason: Any, timeout: float) -> Kill:
    ref = monitor(pid)
    _exit_signal(pid, reason)
    down = receive(lambda m: m.__class__ is Down and m.ref == ref, timeout=timeout)
    if down is TIMEOUT:
        demonitor(ref, flush=True)
        return Kill(sup, child_id, pid, reason, None)
    return Kill(sup, child_id, pid, reason, down.reason)


def kill_at_rate(
    sup: Pid | Any,
    *,
    rate: float,
    duration: float,
    reason: Any = "kill",
    recursive: bool = True,
    rng: random.Random | None = None,
    timeout: float = 5.0,
) -> list[Kill]:
    """Kill a random child `rate` times a second for `duration` seconds; returns the kills.

    Runs in the caller (spawn it to run it alongside other work). Stops early, without error,
    if `sup` itself dies — which is what a supervisor does when the kills exceed its restart
    intensity.
    """
    if rate <= 0 or duration < 0:
        raise ValueError(f"kill_at_rate needs rate > 0 and duration >= 0, got {rate!r}, {duration!r}")
    root = _resolve(sup)
    interval = 1.0 / rate
    start = time.monotonic()
    deadline = start + duration
    kills: list[Kill] = []
    n = 0
    while time.monotonic() < deadline and is_alive(root):
        try:
            kill = kill_child(root, reason=reason, recursive=recursive, rng=rng, timeout=timeout)
        except ProcessExit:
            if is_alive(root):
                raise
            break  # the supervisor gave up while we looked at it
        if kill is not None:
            kills.append(kill)
        n += 1
        pause = min(start + n * interval, deadline) - time.monotonic()
        if pause > 0:
            sleep(pause)  # pacing the chaos, not waiting for a result
    return kills


def all_running(view: ProcessView) -> bool:
    """True when the supervisor and every process below it are alive (none restarting,
    undefined, dead or unresponsive)."""
    return all(node.alive for _, node in walk(view))


def wait_until_running(sup: Pid | Any, *, timeout: float = 5.0) -> ProcessView:
    """Wait until every child in the tree under `sup` is running again; returns that snapshot.

    Re-examines the tree each time a supervisor reports a start, exit or restart (through
    telemetry), so it wakes exactly when something changed. Raises `NotConverged` (a
    `TimeoutError`) after `timeout`, and exits like a call if `sup` is not running.
    """
    me = current().pid
    tag = ("otp.chaos.changed", make_ref())
    handler_id = f"otp.chaos.wait_until_running {tag[1]!r}"
    telemetry.attach_many(
        handler_id,
        [CHILD_STARTED, CHILD_EXITED, CHILD_RESTARTED, CHILD_START_FAILED, INTENSITY_EXCEEDED],
        lambda _event, _measurements, _metadata, _config: post(me, tag),
    )
    deadline = time.monotonic() + timeout
    try:
        while True:
            # Drop the wake-ups already queued: the snapshot below sees their effect.
            while receive(tag, timeout=0) is not TIMEOUT:
                pass
            view = snapshot(sup, timeout=max(0.0, deadline - time.monotonic()))
            if all_running(view):
                return view
            if receive(tag, timeout=max(0.0, deadline - time.monotonic())) is TIMEOUT:
                raise NotConverged(view, timeout)
    finally:
        telemetry.detach(handler_id)
        while receive(tag, timeout=0) is not TIMEOUT:
            pass
