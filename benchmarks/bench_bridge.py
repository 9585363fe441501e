"""The bridge against the raw pipe and the stdlib/third-party process pools: issue 5's figures.

Run: ``python benchmarks/bench_bridge.py [--quick] [--placement P]... [--json]`` (about 30 s;
quick about 6 s). Every figure is measured side by side with its baseline, in interleaved
rounds, reduced with the median. Everything uses the same ~100-byte payload (103 bytes in
msgpack) and the default codec (msgpack), and every worker runs on this interpreter
(``sys.executable``):

* **round trip, 1 client** - ``SessionPool.execute_anonymous("echo", [payload])`` on a
  1-worker pool against a :class:`raw_pipe.RawPipe` round trip (packet-4 frames written and
  read by the calling thread, no actor in between) to *the same worker subprocess*: two worker
  processes on one CPU can differ by 2x in speed, from where their memory happens to lie, so a
  separate raw worker would make the ratio a lottery;
* **the same call through other process pools** - ``ProcessPoolExecutor.submit().result()``,
  ``multiprocessing.Pool.apply``, loky's and pebble's process pools (1 worker each, default
  start method, warmed up) calling the same ``bridge.examples.echo`` function; each pool is
  measured against ours on its own (the others' helper threads would tax the CPU meanwhile),
  and the last row compares ours to the fastest;
* **throughput, 4 workers x 8 client threads** - a 4-worker pool against 4 raw pipes driven by
  the same 8 threads, each pipe guarded by a lock (thread ``i`` uses pipe ``i % 4``);
* **pool ready, 8 workers** - ``SessionPool.start(pool_size=8)`` until it returns (every worker
  answered its first ping) against 8 raw workers spawned at once until each answered a ping;
* **kill -> replacement ready** - SIGKILL one worker subprocess of an idle pool and wait for the
  pool's ``["pool", "worker", "init", "stop"]`` event (a NEW worker answered its first ping;
  the pool is checked to be back at full size) against one raw spawn-to-first-ping.

The round trips run in each placement (see `PLACEMENTS`): **split** (this process on one CPU,
every worker subprocess on another: where a caller and its worker run on an idle machine, made
deterministic) carries the goals; **one-cpu** (everything on one CPU) shows the CPU cost of a
call, where every microsecond of Python counts twice (the worker's run between request and
reply evicts the caller's caches); **free** (no pinning) is what a script sees, but the
scheduler then puts a worker on the caller's CPU or not, call by call, so ours-vs-theirs
depends on where each pool's worker happened to land. Throughput, start and recovery always use
every CPU: parallelism is what they measure.

``run(quick)`` returns the `Result` records; ``threadotp bench`` can import and print them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

if str(Path(__file__).resolve().parent) not in sys.path:  # imported from elsewhere (a CLI)
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Goal, Result, interleaved, pinned_to_one_cpu, print_table  # noqa: E402
from raw_pipe import RawPipe, RawWorker, time_to_first_ping  # noqa: E402

from loguru import logger  # noqa: E402

import otp  # noqa: E402
from bridge.codec import DEFAULT_CODEC  # noqa: E402
from bridge.examples import echo  # noqa: E402
from bridge.session_pool import SessionPool  # noqa: E402
from otp import telemetry  # noqa: E402

__all__ = ["PAYLOAD", "main", "run"]

CODEC = DEFAULT_CODEC
HANDLERS = ("bridge.examples",)
#: 103 bytes in msgpack (the request frame that carries it: 139 bytes).
PAYLOAD: dict[str, Any] = {
    "user": "alice", "items": [1, 2, 3, 4, 5], "ok": True, "score": 0.75,
    "note": "the quick brown fox jumps over the lazy dog", "tags": ["a", "b"],
}
_LOGGERS = ("bridge", "pool", "otp")  # worker starts (debug) and the killed worker's crash report


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the library's own logging while measuring (restored afterwards)."""
    for name in _LOGGERS:
        logger.disable(name)
    try:
        yield
    finally:
        for name in _LOGGERS:
            logger.enable(name)


_names = iter(range(1, 1 << 30))


def _pool_name(kind: str) -> tuple[str, str, int]:
    return ("bench_bridge", kind, next(_names))


def _start_pool(kind: str, size: int, **options: Any) -> SessionPool:
    return SessionPool.start(
        _pool_name(kind), pool_size=size, handlers=HANDLERS, codec=CODEC, **options
    )


def _worker_os_pids(sp: SessionPool) -> list[int]:
    return [otp.call(actor, "handle", 5.0).port.os_pid for _, actor in sp.workers()]


# -- pinning ------------------------------------------------------------------------------------


def _children() -> list[int]:
    """Pids of this process's direct children (from /proc)."""
    me, out = os.getpid(), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == me:
            out.append(int(entry))
    return out


_foreign: set[int] = set()  # children that were there before `_placed`: not ours to pin

#: Where the round trips run. "one-cpu": everything (this process, every worker subprocess,
#: the other pools' helper threads and workers) on one CPU, so a call costs its CPU time and
#: nothing else. "split": this process on one CPU and every worker subprocess on another, the
#: placement a caller and its worker get on an idle machine, made deterministic. "free": no
#: pinning at all.
PLACEMENTS = ("split", "one-cpu", "free")


def _place_everything(placement: str, cpus: list[int]) -> None:
    """Pin every thread of this process, and of the children started since `_placed`.

    `pinned_to_one_cpu` pins the calling thread and what it starts from then on; threads and
    subprocesses started earlier (the port I/O thread forks the workers) need this too.
    """
    if placement == "free" or not hasattr(os, "sched_setaffinity"):
        return
    mine = {cpus[0]}
    theirs = {cpus[1]} if placement == "split" and len(cpus) > 1 else mine
    for pid, where in [(os.getpid(), mine), *((c, theirs) for c in _children() if c not in _foreign)]:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(int(tid), where)


@contextlib.contextmanager
def _placed(placement: str) -> Iterator[Callable[[], None]]:
    """Run the block with `placement`; it calls the yielded function once its pools and
    workers are up (and again for any started later). Afterwards every thread may run on
    every CPU again."""
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {', '.join(PLACEMENTS)}, got {placement!r}")
    everything = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
    cpus = sorted(everything)
    _foreign.clear()
    _foreign.update(_children())
    with pinned_to_one_cpu(placement != "free"):
        try:
            yield lambda: _place_everything(placement, cpus)
        finally:
            if placement != "free" and hasattr(os, "sched_setaffinity"):
                for tid in os.listdir("/proc/self/task"):
                    with contextlib.suppress(OSError):
                        os.sched_setaffinity(int(tid), everything)


def _per_call_us(fn: Callable[[], Any], calls: int) -> Callable[[], float]:
    def measure() -> float:
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        return (time.perf_counter() - start) / calls * 1e6

    return measure


# -- round trips --------------------------------------------------------------------------------


_WHERE = {
    "split": "this process on one CPU, the worker on another",
    "one-cpu": "everything on one CPU",
    "free": "unpinned",
}


@contextlib.contextmanager
def _raw_on_pool_worker(sp: SessionPool) -> Iterator[RawPipe]:
    """The raw pipe to the pool's own worker subprocess: the baseline and ours then talk to
    the very same process (two worker processes on one CPU can differ by 2x in speed, from
    where their memory happens to lie). The worker's lock is held meanwhile, so neither the
    pool's clients nor its health pings use those pipes at the same time."""
    (_, actor), = sp.workers()
    handle = otp.call(actor, "handle", 5.0)
    port = handle.port
    raw = RawPipe(port._stdin_fd, port._stdout_fd, CODEC)
    raw._next_id = 1 << 40  # the worker only echoes ids; keep ours apart from the pool's anyway
    handle.lock.acquire()
    try:
        yield raw
    finally:
        handle.lock.release()


def round_trip(quick: bool, placement: str) -> list[Result]:
    rounds, calls = (5, 500) if quick else (21, 2000)
    with _placed(placement) as place:
        sp = _start_pool("rt", 1)
        blocking = _start_pool("rt-no-spin", 1, worker_spin=0)
        try:
            place()
            ours = lambda: sp.execute_anonymous("echo", [PAYLOAD])  # noqa: E731
            ours_blocking = lambda: blocking.execute_anonymous("echo", [PAYLOAD])  # noqa: E731
            for _ in range(300):
                ours()
                ours_blocking()
            measure_ours = _per_call_us(ours, calls)

            def measure_raw() -> float:
                with _raw_on_pool_worker(sp) as raw:
                    return _per_call_us(lambda: raw.call("echo", [PAYLOAD]), calls)()

            with _raw_on_pool_worker(sp) as raw:
                assert raw.call("echo", [PAYLOAD]) == PAYLOAD
            assert ours() == PAYLOAD
            t = interleaved(
                {"ours": measure_ours, "raw": measure_raw, "no-spin": _per_call_us(ours_blocking, calls)},
                rounds,
            )
        finally:
            blocking.stop()
            sp.stop()
    note = (f"execute_anonymous('echo', [payload]), 1-worker pool, codec {CODEC}; the raw pipe talks "
            f"to the same worker subprocess; {_WHERE[placement]}")
    return [
        Result(
            f"round trip, 1 client, {placement}", t["ours"], t["raw"], "us",
            Goal.ratio_at_most(1.5) if placement == "split" else None,
            "raw packet-4 pipe, same worker", note=note,
        ),
        Result(
            f"round trip, 1 client, {placement}, no worker spin", t["no-spin"], t["raw"], "us", None,
            "raw packet-4 pipe to the default worker", note=note + "; ours with worker_spin=0 "
            "(workers block in read at once), against the raw pipe to the default (spinning) worker",
        ),
    ]


def _start_executor(name: str) -> tuple[Callable[[], Any], Callable[[], None]] | None:
    """(one call, stop) for a 1-worker pool of that kind, or None if it is not installed."""
    if name == "ProcessPoolExecutor":
        ppe = ProcessPoolExecutor(max_workers=1)
        return (lambda: ppe.submit(echo, PAYLOAD).result(), lambda: ppe.shutdown(wait=True))
    if name == "multiprocessing.Pool":
        mpool = multiprocessing.Pool(1)

        def stop_mpool() -> None:
            mpool.close()
            mpool.join()

        return (lambda: mpool.apply(echo, (PAYLOAD,)), stop_mpool)
    if name == "loky":
        try:
            import loky
        except ImportError:
            return None
        lex = loky.ProcessPoolExecutor(max_workers=1)
        return (lambda: lex.submit(echo, PAYLOAD).result(), lambda: lex.shutdown(wait=True))
    if name == "pebble":
        try:
            import pebble
        except ImportError:
            return None
        pp = pebble.ProcessPool(max_workers=1)

        def stop_pebble() -> None:
            pp.close()
            pp.join()

        return (lambda: pp.schedule(echo, args=[PAYLOAD]).result(), stop_pebble)
    raise ValueError(name)


EXECUTORS = ("ProcessPoolExecutor", "multiprocessing.Pool", "loky", "pebble")


def _vs_process_pools_us(quick: bool, placement: str) -> dict[str, tuple[float, float, float]]:
    """name -> (ours, theirs, ours with worker_spin=0) per-call medians, each pool measured
    against ours on its own.

    One pool at a time: the others' helper threads (result handlers, managers that poll) would
    otherwise run on the same CPU and tax whatever is being measured.
    """
    rounds, calls = (3, 200) if quick else (11, 500)
    out: dict[str, tuple[float, float, float]] = {}
    with _placed(placement) as place:
        sp = _start_pool("pools", 1)
        blocking = _start_pool("pools-no-spin", 1, worker_spin=0)
        try:
            ours = lambda: sp.execute_anonymous("echo", [PAYLOAD])  # noqa: E731
            ours_blocking = lambda: blocking.execute_anonymous("echo", [PAYLOAD])  # noqa: E731
            for name in EXECUTORS:
                started = _start_executor(name)
                if started is None:
                    continue
                call, stop = started
                try:
                    assert call() == PAYLOAD
                    place()  # its helper threads and its worker process
                    for _ in range(100):
                        ours()
                        ours_blocking()
                        call()
                    t = interleaved(
                        {
                            "ours": _per_call_us(ours, calls),
                            "no-spin": _per_call_us(ours_blocking, calls),
                            name: _per_call_us(call, calls),
                        },
                        rounds,
                    )
                finally:
                    stop()
                out[name] = (t["ours"], t[name], t["no-spin"])
        finally:
            blocking.stop()
            sp.stop()
    return out


def vs_process_pools(quick: bool, placement: str) -> list[Result]:
    """One row per pool, then ours against the fastest of them (with the goal when split)."""
    t = _vs_process_pools_us(quick, placement)
    mode = placement
    results = [
        Result(f"round trip vs {name}, {mode}", ours, theirs, "us", None, name)
        for name, (ours, theirs, _) in t.items()
    ]
    fastest = min(t, key=lambda name: t[name][1])
    ours, theirs, ours_blocking = t[fastest]
    missing = sorted(set(EXECUTORS) - set(t))
    note = (f"1 worker each, the same echo function, each pool measured against ours on its own; "
            f"{_WHERE[placement]}" + (f"; not installed: {', '.join(missing)}" if missing else ""))
    results += [
        Result(f"round trip vs the fastest pool, {mode}", ours, theirs, "us",
               Goal.ratio_at_most(0.33) if placement == "split" else None, fastest, note=note),
        Result(f"round trip vs the fastest pool, {mode}, no worker spin", ours_blocking, theirs, "us",
               None, fastest, note=note + "; ours with worker_spin=0"),
    ]
    return results


# -- throughput ---------------------------------------------------------------------------------


def _calls_per_s(call: Callable[[int], Any], threads: int, seconds: float) -> float:
    """Total calls/s of `threads` threads each calling ``call(i)`` in a loop for `seconds`."""
    stop = threading.Event()
    counts = [0] * threads
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads + 1)

    def client(i: int) -> None:
        barrier.wait()
        n = 0
        try:
            while not stop.is_set():
                call(i)
                n += 1
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        counts[i] = n

    pool = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(threads)]
    for t in pool:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    return sum(counts) / elapsed


def throughput(quick: bool) -> list[Result]:
    workers, threads = 4, 8
    rounds, seconds = (3, 0.3) if quick else (7, 0.6)
    sp = _start_pool("tput", workers)
    raws = [RawWorker(codec=CODEC, handlers=HANDLERS) for _ in range(workers)]
    locks = [threading.Lock() for _ in raws]
    try:
        def ours(i: int) -> Any:
            return sp.execute_anonymous("echo", [PAYLOAD])

        def theirs(i: int) -> Any:
            with locks[i % workers]:
                return raws[i % workers].call("echo", [PAYLOAD])

        t = interleaved(
            {
                "ours": lambda: _calls_per_s(ours, threads, seconds),
                "raw": lambda: _calls_per_s(theirs, threads, seconds),
            },
            rounds,
        )
    finally:
        for raw in raws:
            raw.close()
        sp.stop()
    return [
        Result(f"throughput, {workers} workers x {threads} threads", t["ours"], t["raw"],
               "calls/s", None,
               "4 raw pipes + locks", note="unpinned; raw thread i uses pipe i % 4 under its lock"),
    ]


# -- starting and recovering --------------------------------------------------------------------


def _pool_ready_s(size: int, mode: str = "spawn") -> float:
    start = time.perf_counter()
    sp = _start_pool("start", size, start_mode=mode)
    elapsed = time.perf_counter() - start
    sp.stop()
    return elapsed


def _raw_ready_s(size: int) -> float:
    start = time.perf_counter()
    raws = [RawWorker(codec=CODEC, handlers=HANDLERS) for _ in range(size)]
    try:
        for raw in raws:
            raw.call("ping")
        return time.perf_counter() - start
    finally:
        for raw in raws:
            raw.close()


def start_time(quick: bool) -> list[Result]:
    size = 8
    rounds = 3 if quick else 9
    t = interleaved(
        {
            "ours": lambda: _pool_ready_s(size),
            "zygote": lambda: _pool_ready_s(size, "zygote"),
            "raw": lambda: _raw_ready_s(size),
        },
        rounds,
    )
    return [
        Result(f"pool ready, {size} workers", t["ours"] * 1e3, t["raw"] * 1e3, "ms",
               Goal.ratio_at_most(1.2), f"{size} raw spawns at once",
               note="until every worker answered its first ping; unpinned"),
        Result(f"pool ready, {size} workers, zygote", t["zygote"] * 1e3, t["raw"] * 1e3, "ms",
               None, f"{size} raw spawns at once",
               note="start_mode='zygote': the zygote's own start, then every worker forked from it"),
    ]


class _InitWatch:
    """Times `init.stop` events of one pool (a new worker answered its first ping)."""

    def __init__(self) -> None:
        self.pool: otp.Pid | None = None
        self.cond = threading.Condition()
        self.stops: list[float] = []

    def __call__(self, event: Any, measurements: Any, metadata: dict[str, Any], _cfg: Any) -> None:
        if metadata.get("pool") == self.pool:
            now = time.perf_counter()
            with self.cond:
                self.stops.append(now)
                self.cond.notify_all()

    def wait_after(self, count: int, timeout: float) -> float:
        with self.cond:
            if not self.cond.wait_for(lambda: len(self.stops) > count, timeout):
                raise TimeoutError(f"no replacement worker within {timeout} s")
            return self.stops[count]


def _kill_to_ready_s(sp: SessionPool, watch: _InitWatch, size: int) -> float:
    # Idle and full, as a user would find it.
    deadline = time.monotonic() + 10
    while True:
        st = sp.stats()
        if st.idle == size and st.starting == 0:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"pool not back to {size} idle workers: {st}")
        otp.sleep(0.002)
    victim = _worker_os_pids(sp)[0]
    seen = len(watch.stops)
    start = time.perf_counter()
    os.kill(victim, signal.SIGKILL)
    ready = watch.wait_after(seen, 10.0)
    elapsed = ready - start
    pids = _worker_os_pids(sp)  # the pool is back to full size, without the victim
    if len(pids) != size or victim in pids:
        raise AssertionError(f"after the kill: workers {pids}, victim {victim}")
    sp.execute_anonymous("ping")
    return elapsed


def _recovery_ms(quick: bool, mode: str) -> tuple[float, float]:
    """(ours, raw) kill-to-replacement-ready medians in ms, for a pool of `mode`."""
    size = 2
    rounds = 3 if quick else 15
    watch = _InitWatch()
    handler_id = f"bench_bridge-recovery-{os.getpid()}-{id(watch)}"
    telemetry.attach(handler_id, ["pool", "worker", "init", "stop"], watch)
    sp = _start_pool("kill", size, max_restarts=1000, max_seconds=1, start_mode=mode)
    try:
        watch.pool = sp._pool.pid
        t = interleaved(
            {
                "ours": lambda: _kill_to_ready_s(sp, watch, size),
                "raw": lambda: time_to_first_ping(CODEC, HANDLERS),
            },
            rounds,
        )
    finally:
        telemetry.detach(handler_id)
        sp.stop()
    return t["ours"] * 1e3, t["raw"] * 1e3


def recovery(quick: bool) -> list[Result]:
    note = ("SIGKILL a worker subprocess of an idle 2-worker pool, until the pool's init.stop event "
            "for its new worker (first ping answered); unpinned")
    return [
        Result("kill -> replacement ready", *_recovery_ms(quick, "spawn"), "ms",
               Goal.ratio_at_most(1.3), "1 raw spawn -> first ping", note=note),
        Result("kill -> replacement ready, zygote", *_recovery_ms(quick, "zygote"), "ms",
               None, "1 raw spawn -> first ping", note=note + "; start_mode='zygote'"),
    ]


# -- the run --------------------------------------------------------------------------------------


def run(quick: bool = False, placements: tuple[str, ...] = ("split", "one-cpu")) -> list[Result]:
    """Measure every figure and return the records (in table order).

    The round trips run in each of `placements`; the goals apply to "split" (see PLACEMENTS).
    """
    results: list[Result] = []
    with _quiet():
        for placement in placements:
            results += round_trip(quick, placement)
        for placement in placements:
            results += vs_process_pools(quick, placement)
        results += throughput(quick)
        results += start_time(quick)
        results += recovery(quick)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and calls (~12 s)")
    parser.add_argument(
        "--placement", action="append", choices=PLACEMENTS,
        help="where the round trips run (repeatable; default: split and one-cpu)",
    )
    parser.add_argument("--json", action="store_true", help="print the records as JSON")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    results = run(quick=args.quick, placements=tuple(args.placement or ("split", "one-cpu")))
    if args.json:
        print(json.dumps([r.as_dict() for r in results], indent=2))
        return
    print_table(
        results,
        f"threadotp bridge vs baselines - python {sys.version.split()[0]}, codec {CODEC}, "
        f"{len(os.sched_getaffinity(0))} CPUs, medians of interleaved rounds"
        f"{' (quick)' if args.quick else ''}",
    )
    print(f"(total {time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    main()
