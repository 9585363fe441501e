"""Pool checkout + checkin, side by side with a raw thread round trip and a queue.Queue pool.

Run: ``python benchmarks/bench_pool.py`` (about 10 s). Prints one table:

* (a) raw round trip: two threads ping-pong through a Condition and a deque - what any hop
  through another thread (such as a message to the pool process and its reply) costs at least;
* (b) a minimal pool: ``queue.Queue`` of workers, ``get`` then ``put``;
* the pool: ``pool.checkout`` of an in-memory worker with a trivial function, from 1 thread, and
  from 8 threads sharing a 4-worker pool (so most checkouts wait for a worker, FIFO, and are
  handed the worker directly by the thread that checks it in). Under the GIL, 8 threads with
  a trivial function mostly run one at a time (a thread keeps the GIL for its switch
  interval), so a second 8-thread row makes the function yield the GIL (``time.sleep(0)``)
  while it holds the worker: there, clients really queue and wait.

Ratios are pool time / reference time per checkout (lower is better). The issue's target is
<= 1.0x against (a) for the uncontended checkout.
"""

from __future__ import annotations

import collections
import os
import queue
import statistics
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import Goal, Result, pinned_to_one_cpu  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import otp  # noqa: E402
import pool  # noqa: E402
from otp.testing import fresh_node  # noqa: E402

REPEATS = 7


# -- (a) a raw round trip between two threads -------------------------------------------------


def raw_round_trip(n: int = 3000) -> float:
    """A Condition ping-pong between two threads on one CPU (a cross-CPU wake-up on a small VM
    costs 8 us or 70 us at random, which would make the baseline noise)."""
    with pinned_to_one_cpu():
        return _raw_round_trip(n)


def _raw_round_trip(n: int) -> float:
    cv = threading.Condition()
    to_server: collections.deque[int] = collections.deque()
    to_client: collections.deque[int] = collections.deque()

    def server() -> None:
        for _ in range(n):
            with cv:
                while not to_server:
                    cv.wait()
                to_client.append(to_server.popleft())
                cv.notify_all()

    t = threading.Thread(target=server)
    t.start()
    start = time.perf_counter()
    for i in range(n):
        with cv:
            to_server.append(i)
            cv.notify_all()
            while not to_client:
                cv.wait()
            to_client.popleft()
    elapsed = time.perf_counter() - start
    t.join()
    return elapsed / n


# -- (b) a queue.Queue pool ---------------------------------------------------------------------


def queue_pool(threads: int, workers: int, n: int, yields: bool = False) -> float:
    q: queue.Queue[dict[str, int]] = queue.Queue()
    for i in range(workers):
        q.put({"id": i})
    pause = time.sleep

    def client() -> None:
        for _ in range(n):
            w = q.get(timeout=5)
            w.get("id")
            if yields:
                pause(0)
            q.put(w)

    return _threaded(client, threads, n)


# -- the pool -----------------------------------------------------------------------------------


class InMemory(pool.PoolWorker):
    """The cheapest possible worker: a dict, handed out as is."""

    def init_worker(self, pool_state: Any) -> Any:
        return ("ok", {"id": id(self)}, pool_state)


def use(from_: pool.From, worker: dict[str, int]) -> tuple[int | None, dict[str, int]]:
    return worker.get("id"), worker


def use_and_yield(from_: pool.From, worker: dict[str, int]) -> tuple[int | None, dict[str, int]]:
    time.sleep(0)  # give up the GIL while holding the worker: other clients must wait
    return worker.get("id"), worker


def pool_checkout(threads: int, workers: int, n: int, yields: bool = False) -> float:
    p = pool.start(InMemory, None, pool_size=workers, min_ready="all")
    handle = pool.Pool(p)
    fun = use_and_yield if yields else use

    def client() -> None:
        checkout = handle.checkout
        for _ in range(n):
            checkout("run", fun)

    try:
        return _threaded(client, threads, n)
    finally:
        pool.stop(p)


def pool_with_block(n: int) -> float:
    p = pool.start(InMemory, None, pool_size=1, min_ready="all")
    handle = pool.Pool(p)

    def client() -> None:
        for _ in range(n):
            with handle.checkout("run") as worker:
                worker.get("id")

    try:
        return _threaded(client, 1, n)
    finally:
        pool.stop(p)


def pool_message_round_trip(n: int = 3000) -> float:
    """For reference: a GenServer call to another process (what a pool without the fast path
    would pay at least once per checkout)."""

    class Echo(otp.GenServer):
        def handle_call(self, request: Any, from_: Any, state: Any) -> Any:
            return ("reply", request, state)

    server = Echo.start()
    start = time.perf_counter()
    for i in range(n):
        otp.call(server, i)
    elapsed = time.perf_counter() - start
    otp.stop(server)
    return elapsed / n


def _threaded(client: Callable[[], None], threads: int, n: int) -> float:
    """Seconds per checkout, over all threads, wall clock."""
    go = threading.Event()

    def run() -> None:
        go.wait()
        client()

    ts = [threading.Thread(target=run) for _ in range(threads)]
    for t in ts:
        t.start()
    start = time.perf_counter()
    go.set()
    for t in ts:
        t.join()
    return (time.perf_counter() - start) / (threads * n)


# -- the table ----------------------------------------------------------------------------------

CASES: list[tuple[str, Callable[[], float], str | None]] = [
    # (name, measure -> seconds per op, the reference it is compared with against (b))
    ("(a) raw thread round trip (Condition ping-pong, one CPU)", lambda: raw_round_trip(3000), None),
    ("(b) queue.Queue pool, 1 thread, 1 worker", lambda: queue_pool(1, 1, 20000), None),
    ("(b) queue.Queue pool, 8 threads, 4 workers", lambda: queue_pool(8, 4, 3000), None),
    (
        "(b) queue.Queue pool, 8 thr, 4 wkr, fun yields GIL",
        lambda: queue_pool(8, 4, 1500, yields=True),
        None,
    ),
    (
        "pool.checkout, 1 thread, 1 worker",
        lambda: pool_checkout(1, 1, 20000),
        "(b) queue.Queue pool, 1 thread, 1 worker",
    ),
    (
        "with pool.checkout(...), 1 thread, 1 worker",
        lambda: pool_with_block(20000),
        "(b) queue.Queue pool, 1 thread, 1 worker",
    ),
    (
        "pool.checkout, 8 threads, 4 workers",
        lambda: pool_checkout(8, 4, 1500),
        "(b) queue.Queue pool, 8 threads, 4 workers",
    ),
    (
        "pool.checkout, 8 thr, 4 wkr, fun yields GIL",
        lambda: pool_checkout(8, 4, 1500, yields=True),
        "(b) queue.Queue pool, 8 thr, 4 wkr, fun yields GIL",
    ),
    ("(ref) otp.call round trip to a GenServer", lambda: pool_message_round_trip(3000), None),
]


def _measure(rounds: int) -> dict[str, list[float]]:
    """Seconds per operation of every case, one list per case, on a node of their own.

    Interleaved rounds: every case is measured once per round, and each ratio is taken within
    a round, so that the machine's mood (other processes, CPU frequency) affects both sides.
    """
    with fresh_node():
        runs: dict[str, list[float]] = {name: [] for name, _, _ in CASES}
        for _ in range(rounds):
            for name, measure, _ in CASES:
                runs[name].append(measure())
    return runs


def main() -> None:
    t0 = time.perf_counter()
    runs = _measure(REPEATS)
    raw_name = CASES[0][0]
    print(
        f"python {sys.version.split()[0]} on {os.cpu_count()} cores; {REPEATS} interleaved rounds"
    )
    print(
        "us/op: median [best]; ratios: median over rounds of (case / reference) in the same round"
    )
    print()
    print(f"{'case':<52} {'us/op':>17} {'vs (a)':>8} {'vs (b)':>8}")
    print("-" * 89)
    for name, _, against in CASES:
        xs = runs[name]
        cell = f"{statistics.median(xs) * 1e6:7.2f} [{min(xs) * 1e6:6.2f}]"
        ra = rb = ""
        if not name.startswith("(a)") and not name.startswith("(b)"):
            ra = f"{_ratio(xs, runs[raw_name]):7.2f}x"
        if against is not None:
            rb = f"{_ratio(xs, runs[against]):7.2f}x"
        print(f"{name:<52} {cell:>17} {ra:>8} {rb:>8}")
    print()
    uncontended = _ratio(runs["pool.checkout, 1 thread, 1 worker"], runs[raw_name])
    target = "met" if uncontended <= 1.0 else "NOT met"
    print(
        "target: uncontended checkout + checkin <= 1.0x the raw round trip: "
        f"{target} ({uncontended:.2f}x)"
    )
    print(f"total {time.perf_counter() - t0:.1f} s")


def run(quick: bool = False) -> list[Result]:
    """The figures as `Result` rows (what ``threadotp bench`` prints), in microseconds."""
    runs = _measure(2 if quick else REPEATS)
    med = {name: statistics.median(xs) * 1e6 for name, xs in runs.items()}
    raw_name = CASES[0][0]
    results = []
    for name, _, against in CASES:
        if name.startswith("("):
            continue
        goal = Goal.ratio_at_most(1.0) if "fun yields" not in name else None
        results.append(Result(f"{name} (vs raw round trip)", med[name], med[raw_name], "us", goal, "raw Condition ping-pong, one CPU"))
        if against is not None:
            results.append(Result(f"{name} (vs queue.Queue pool)", med[name], med[against], "us", None, against))
    return results


def _ratio(xs: list[float], refs: list[float]) -> float:
    return statistics.median(x / r for x, r in zip(xs, refs))


if __name__ == "__main__":
    main()
