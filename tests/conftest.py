"""Every test runs on a fresh node and must leave no thread, child process or fd behind."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

import pytest

import otp
from otp.testing import fresh_node


def _children() -> set[int]:
    pids: set[int] = set()
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/children") as f:
                pids.update(int(p) for p in f.read().split())
        except OSError:
            pass
    return pids


def _fds() -> set[int]:
    return set(os.listdir("/proc/self/fd")) - {"0", "1", "2"}  # type: ignore[return-value]


def _wait_until(check, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)  # polling the OS for teardown; nothing to wait on


@pytest.fixture(scope="session", autouse=True)
def _io_service() -> None:
    """The bridge's process-wide I/O thread lives for the whole run: start it before the
    per-test leak check takes its snapshot of threads and fds."""
    from bridge._io import service

    service()


@pytest.fixture(autouse=True)
def node(_io_service: None, request: pytest.FixtureRequest) -> Iterator[otp.Node]:
    """A fresh default node per test; afterwards every process is killed and leaks are checked."""
    threads_before = set(threading.enumerate())
    children_before = _children()
    fds_before = set(os.listdir("/proc/self/fd"))
    with fresh_node() as fresh:
        yield fresh
    if request.node.get_closest_marker("allow_leaks"):
        return
    leaked_threads = lambda: [t for t in threading.enumerate() if t not in threads_before and t.is_alive()]  # noqa: E731
    assert _wait_until(lambda: not leaked_threads(), 5.0), f"threads left behind: {leaked_threads()}"
    leaked_children = lambda: _children() - children_before  # noqa: E731
    assert _wait_until(lambda: not leaked_children(), 5.0), f"child processes left behind: {leaked_children()}"
    leaked_fds = lambda: set(os.listdir("/proc/self/fd")) - fds_before  # noqa: E731
    assert _wait_until(lambda: not leaked_fds(), 5.0), f"file descriptors left behind: {leaked_fds()}"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "allow_leaks: skip the thread/child/fd leak check")
