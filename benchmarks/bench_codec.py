"""Which codec should the bridge use by default? Measure both costs DESIGN.md names.

For every installed codec:

* **codec rt** — encode + decode of a ~100-byte request and of its reply, in process, hot loop
  (the codec work one call costs, both ends together);
* **import** — the codec library's import time in a fresh interpreter (paid at every worker
  start, and once in the parent);
* **echo 1 cpu** — a raw packet-4 ``echo`` round trip through the real worker program
  (:mod:`raw_pipe`) with parent and worker pinned to one CPU: the pure CPU cost of a call,
  stable from run to run;
* **echo free** — the same, unpinned: what the scheduler gives. On a VM it is bimodal (~10-30 us
  while both sides stay hot, ~80-100 us when the idle side is parked), so take it as context;
* **spawn->ping** — from ``Popen`` to the first ping reply: the worker's readiness latency.

Run: ``python benchmarks/bench_codec.py`` (about 10 s).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
import timeit
from typing import Any

from _common import pinned_to_one_cpu
from raw_pipe import ROOT, RawWorker, echo_round_trips, time_to_first_ping

from bridge.codec import available_codecs, get_codec

MESSAGE: dict[str, Any] = {
    "id": 12345,
    "command": "echo",
    "args": [{"user": "alice", "items": [1, 2, 3], "ok": True, "score": 0.5}],
    "session_id": "session-42",
}
REPLY: dict[str, Any] = {"id": 12345, "ok": True, "result": MESSAGE["args"][0]}

ECHO_CALLS = 2000
ECHO_ROUNDS = 3  # interleaved across codecs, best round kept: machine drift hits all alike
SPAWNS = 7
IMPORT_RUNS = 7

Echo = tuple[float, float, float]  # mean, p50, p99 in microseconds


def codec_round_trip_us(name: str) -> float:
    """Best-of-5 time of encode+decode for the request and for the reply, in microseconds."""
    codec = get_codec(name)
    encode, decode = codec.encode, codec.decode

    def both_ways() -> None:
        decode(encode(MESSAGE))
        decode(encode(REPLY))

    number = 20000
    return min(timeit.repeat(both_ways, number=number, repeat=5)) / number * 1e6


def import_ms(module: str) -> float:
    """Median import time of *module* in fresh interpreters, in milliseconds."""
    script = (
        f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    )
    cmd = [sys.executable, "-c", script]
    runs = [
        float(subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT).stdout)
        for _ in range(IMPORT_RUNS)
    ]
    return statistics.median(runs) * 1e3


def pipe_echo_us(name: str, pin: bool) -> Echo:
    """Mean, p50 and p99 of raw echo round trips through the worker program, in microseconds."""
    with pinned_to_one_cpu(pin), RawWorker(codec=name) as worker:
        times = sorted(t * 1e6 for t in echo_round_trips(worker, MESSAGE["args"][0], ECHO_CALLS))
    return statistics.fmean(times), times[len(times) // 2], times[int(len(times) * 0.99)]


def best_pipe_echo(names: list[str], pin: bool) -> dict[str, Echo]:
    """Run :func:`pipe_echo_us` in interleaved rounds; keep each codec's best round by p50."""
    best: dict[str, Echo] = {}
    for _ in range(ECHO_ROUNDS):
        for name in names:
            figures = pipe_echo_us(name, pin)
            if name not in best or figures[1] < best[name][1]:
                best[name] = figures
    return best


def spawn_to_ping_ms(name: str) -> float:
    """Median time from spawning a worker to its first ping reply, in milliseconds."""
    return statistics.median(time_to_first_ping(name) for _ in range(SPAWNS)) * 1e3


def bare_interpreter_ms() -> float:
    """Median time to start and end ``python -c pass``: the floor under spawn -> ping."""

    def once() -> float:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        return time.perf_counter() - start

    return statistics.median(once() for _ in range(SPAWNS)) * 1e3


def main() -> None:
    started = time.perf_counter()
    size = len(get_codec("json").encode(MESSAGE))
    print(
        f"message: {size} bytes as json; python {sys.version.split()[0]} on {sys.platform}, "
        f"{os.cpu_count()} CPUs"
    )
    print(f"bare interpreter start (python -c pass): {bare_interpreter_ms():.1f} ms\n")
    names = available_codecs()
    pinned = best_pipe_echo(names, pin=True)
    free = best_pipe_echo(names, pin=False)
    columns = (
        "codec",
        "codec rt",
        "import",
        "echo 1 cpu p50",
        "echo free p50",
        "free p99",
        "spawn->ping",
    )
    header = f"{columns[0]:<8}" + "".join(f"{c:>15}" for c in columns[1:])
    print(header)
    print("-" * len(header))
    for name in names:
        cells = (
            f"{codec_round_trip_us(name):.2f} us",
            f"{import_ms(name):.1f} ms",
            f"{pinned[name][1]:.1f} us",
            f"{free[name][1]:.1f} us",
            f"{free[name][2]:.1f} us",
            f"{spawn_to_ping_ms(name):.1f} ms",
        )
        print(f"{name:<8}" + "".join(f"{c:>15}" for c in cells))
    print(
        f"\n(echo: best of {ECHO_ROUNDS} rounds of {ECHO_CALLS} calls; {SPAWNS} spawns and "
        f"{IMPORT_RUNS} import runs per codec, medians; "
        f"total {time.perf_counter() - started:.1f} s)"
    )


if __name__ == "__main__":
    main()
