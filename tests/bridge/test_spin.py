"""The worker's adaptive spin: it waits for requests while that pays, backs off when calls are
sparse, and gives way at once to anything else that wants its CPU."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

import bridge.spin
from bridge.session_pool import SessionPool
from bridge.spin import Spinner

needs_affinity = pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity"
)


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe()
    yield r, w
    os.close(r)
    os.close(w)


@pytest.fixture
def never_shared(monkeypatch: pytest.MonkeyPatch) -> None:
    """No yield counts as a sign of a shared CPU: the tests see misses, whatever the load."""
    monkeypatch.setattr(bridge.spin, "SHARED_CPU", float("inf"))


@pytest.fixture
def pinned() -> Iterator[int]:
    """Pin the calling thread to one CPU for the test; yield that CPU."""
    before = os.sched_getaffinity(0)
    cpu = min(before)
    os.sched_setaffinity(0, {cpu})
    try:
        yield cpu
    finally:
        os.sched_setaffinity(0, before)


def outcomes(spinner: Spinner) -> tuple[int, int, int, int]:
    s = spinner.stats()
    return s["hits"], s["misses"], s["yielded"], s["skipped"]


def test_waiting_input_is_a_hit(pipe: tuple[int, int]) -> None:
    r, w = pipe
    os.write(w, b"x")
    spinner = Spinner(r, 1.0)
    spinner.wait()
    assert outcomes(spinner) == (1, 0, 0, 0) and spinner.backoff == 0


def test_misses_back_off_exponentially_up_to_the_cap_and_a_hit_resets(
    pipe: tuple[int, int], never_shared: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bridge.spin, "MAX_BACKOFF", 4)
    r, w = pipe
    spinner = Spinner(r, 20e-6)
    probes = []  # which waits spun (True) and which blocked at once (False)
    for _ in range(16):
        before = spinner.stats()["skipped"]
        spinner.wait()
        probes.append(spinner.stats()["skipped"] == before)
    # miss, skip 1, miss, skip 2, miss, skip 4, miss, skip 4 (the cap), ...
    spin, skip = True, False
    assert probes == [spin, skip, spin, skip, skip, spin, *[skip] * 4, spin, *[skip] * 4, spin]
    assert spinner.stats()["misses"] == 5 and spinner.backoff == 4
    assert spinner.stats()["spun_us"] >= 5 * 20, "each miss spun its whole budget"
    os.write(w, b"x")
    for _ in range(4):
        spinner.wait()  # the backoff runs out; the probe after it finds the input
    spinner.wait()
    assert spinner.stats()["hits"] == 1 and spinner.backoff == 0
    spinner.wait()
    assert spinner.stats()["hits"] == 2, "after a hit the very next wait spins again"


def test_a_long_yield_ends_the_spin_at_once_however_long_the_budget(
    pipe: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bridge.spin, "SHARED_CPU", 0.0)  # every yield "gave the CPU away"
    spinner = Spinner(pipe[0], 30.0)
    spinner.wait()
    assert outcomes(spinner) == (0, 0, 1, 0) and spinner.backoff == 1


@needs_affinity
def test_a_spin_gives_way_to_another_process_on_its_cpu(pipe: tuple[int, int], pinned: int) -> None:
    busy_loop = (
        f"import os; os.sched_setaffinity(0, {{{pinned}}}); print(flush=True)\nwhile True: pass"
    )
    hog = subprocess.Popen([sys.executable, "-c", busy_loop], stdout=subprocess.PIPE)
    try:
        assert hog.stdout is not None and hog.stdout.readline() == b"\n"  # it runs on our CPU now
        spinner = Spinner(pipe[0], 30.0)
        spinner.wait()  # if it did not notice the hog, this would spin 30 s and count a miss
        assert outcomes(spinner) == (0, 0, 1, 0)
    finally:
        hog.kill()
        hog.wait()
        hog.stdout.close()  # type: ignore[union-attr]


def test_a_budget_must_be_positive(pipe: tuple[int, int]) -> None:
    with pytest.raises(ValueError, match="a spin budget must be > 0 seconds, got 0"):
        Spinner(pipe[0], 0)


def test_pool_workers_spin_by_default_and_zero_turns_it_off() -> None:
    with SessionPool.start("spin-default", 1, ["bridge.examples"], close_timeout=0.5) as sp:
        for i in range(50):
            assert sp.execute_anonymous("add", [i, 1]) == i + 1
        spin = sp.execute_anonymous("info", [])["spin"]
        assert spin["budget_us"] == 100
        waits = spin["hits"] + spin["misses"] + spin["yielded"] + spin["skipped"]
        assert waits >= 51, f"one wait before each request read: {spin}"
    off = SessionPool.start("spin-off", 1, ["bridge.examples"], worker_spin=0, close_timeout=0.5)
    with off as sp:
        assert sp.execute_anonymous("info", [])["spin"] is None


@needs_affinity
def test_a_worker_on_its_clients_cpu_hardly_spins(pinned: int) -> None:
    calls = 400
    with SessionPool.start("spin-one-cpu", 1, ["bridge.examples"], close_timeout=0.5) as sp:
        os.sched_setaffinity(sp.execute_anonymous("ping", [])["pid"], {pinned})
        for i in range(calls):
            assert sp.execute_anonymous("add", [i, 1]) == i + 1
        spin = sp.execute_anonymous("info", [])["spin"]
    probes = spin["hits"] + spin["misses"] + spin["yielded"]
    assert spin["yielded"] >= 1 and probes <= calls // 4, (
        f"each spin delays the client that shares the worker's CPU; it must give way: {spin}"
    )
