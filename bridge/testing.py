"""Test helpers for code built on `bridge`: is a worker's OS process gone?

Read from ``/proc`` (Linux), for processes a test cannot wait on: a zygote's workers are its
children, not ours, and ours are reaped by the port's I/O thread.

>>> import os
>>> from bridge.testing import process_gone, reaped_child
>>> process_gone(os.getpid()), reaped_child(os.getpid())
(False, True)
"""

from __future__ import annotations

import os

__all__ = ["parent_pid", "process_gone", "reaped_child"]


def _stat(os_pid: int) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command name, or None if there is no such
    process (including one that vanishes between opening and reading the file)."""
    try:
        with open(f"/proc/{os_pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def process_gone(os_pid: int) -> bool:
    """No such process, or only its zombie (it has exited; its parent has yet to reap it)."""
    fields = _stat(os_pid)
    return fields is None or fields[0] == "Z"


def parent_pid(os_pid: int) -> int | None:
    """The OS pid of the process's parent, or None if there is no such process."""
    fields = _stat(os_pid)
    return None if fields is None else int(fields[1])


def reaped_child(os_pid: int) -> bool:
    """The process is not this process's child any more: it was reaped, whatever may have
    reused its number since."""
    return parent_pid(os_pid) != os.getpid()
