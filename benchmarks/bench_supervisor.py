"""How fast does a supervisor bring a killed GenServer back, next to spawning one from scratch?

Figures, each the median over interleaved rounds (every figure is measured in every round, in
alternating order, so all see the same machine state):

* **spawn GenServer** (the baseline) — ``Echo.start()`` until the new server answers a call;
* **kill -> restarted** — from ``exit(pid, "kill")`` until the restarted server answers a
  call. In between, the supervisor handles the ``Exit``, runs the restart decision and the
  intensity check, starts the child (``start_link`` waits for its ``init``) and reports it.
  The caller learns the new pid either from the supervisor's ``CHILD_STARTED`` telemetry event
  (a handler posts it: the earliest moment anyone can know it) or by calling
  ``which_children`` (the call is queued behind the ``Exit``, so its answer already names the
  new child; it costs one more round trip). Target: at most 2x the baseline.

A restart costs more than a spawn by nature: two more thread hand-offs (the supervisor wakes
up, then the caller), and the killed server's thread unwinding at the same time.

By default everything runs pinned to one CPU: with the GIL only one thread runs at a time
anyway, and on small VMs a cross-CPU wake-up flips between ~8 and ~70 us at random, which
makes unpinned ratios noise. ``--unpinned`` shows what the scheduler gives.

Logging is off (no loguru sink) except in the last row: every restart logs a supervisor report
(``child_terminated``), and loguru builds a record for any sink that might take it; that row
shows the price with a sink that drops what it gets.

Run: ``python benchmarks/bench_supervisor.py [--quick] [--unpinned]`` (about 5 s).
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import pinned_to_one_cpu  # noqa: E402
if str(ROOT) not in sys.path:  # run as a script from anywhere, with or without an install
    sys.path.insert(0, str(ROOT))

from loguru import logger

import otp
from otp import DynamicSupervisor, Supervisor
from otp.supervisor import CHILD_STARTED


class Echo(otp.GenServer):
    def handle_call(self, request: Any, from_: Any, state: Any) -> Any:
        return ("reply", request, state)


def spawn_once() -> tuple[float, otp.Pid]:
    start = time.perf_counter()
    pid = Echo.start()
    otp.call(pid, "ping")
    return time.perf_counter() - start, pid


def spawn_batch(n: int) -> list[float]:
    samples, pids = [], []
    for _ in range(n):
        elapsed, pid = spawn_once()
        samples.append(elapsed)
        pids.append(pid)
    for pid in pids:  # clean up outside the timed part...
        otp.exit(pid, "kill")
    for pid in pids:  # ...and let their threads finish, or the next batch pays for it
        thread = pid._proc.thread
        if thread is not None:
            thread.join(5)
    return samples


def restart_batch(sup: otp.Pid, which: Callable[[otp.Pid], list[Any]], n: int, *, via_event: bool) -> list[float]:
    me = otp.self()
    if via_event:  # attached only for these batches: a message nobody waits for costs a wake-up
        otp.telemetry.attach(
            "bench_supervisor", CHILD_STARTED,
            lambda _e, _m, metadata, _c: otp.post(me, ("restarted", metadata["pid"])),
        )
    samples = []
    try:
        pid = which(sup)[0][1]
        for _ in range(n):
            start = time.perf_counter()
            otp.exit(pid, "kill")
            if via_event:
                pid = otp.receive(("restarted", otp.ANY))[1]
            else:
                pid = which(sup)[0][1]  # served after the Exit: the restart is already done
            otp.call(pid, "ping")
            samples.append(time.perf_counter() - start)
    finally:
        if via_event:
            otp.telemetry.detach("bench_supervisor")
    return samples


def logged(body: Callable[[], list[float]]) -> list[float]:
    """Run `body` with a loguru sink that takes every supervisor report and drops it."""
    sink = logger.add(lambda _message: None, level="ERROR")
    try:
        return body()
    finally:
        logger.remove(sink)


def measure(quick: bool, pin: bool) -> dict[str, list[float]]:
    # Pin before any process starts: sched_setaffinity applies to the calling thread and the
    # threads it starts later, so supervisors started earlier would stay free to run on the
    # other CPU, and every cross-CPU wake-up would add ~70 us at random.
    with pinned_to_one_cpu(pin):
        return _measure(quick)


def _measure(quick: bool) -> dict[str, list[float]]:
    rounds, batch = (10, 20) if quick else (30, 40)
    spec = {"id": "echo", "start": (Echo.start_link, ()), "shutdown": "brutal_kill"}
    # Restart intensity out of the way: this measures the restart path, not the give-up path.
    sup = Supervisor.start([spec], max_restarts=10**9, max_seconds=1)
    dyn = DynamicSupervisor.start(max_restarts=10**9, max_seconds=1)
    DynamicSupervisor.start_child(dyn, spec)
    measures: dict[str, Callable[[], list[float]]] = {
        "spawn": lambda: spawn_batch(batch),
        "event": lambda: restart_batch(sup, Supervisor.which_children, batch, via_event=True),
        "which": lambda: restart_batch(sup, Supervisor.which_children, batch, via_event=False),
        "dynamic": lambda: restart_batch(dyn, DynamicSupervisor.which_children, batch, via_event=True),
        "logged": lambda: logged(lambda: restart_batch(sup, Supervisor.which_children, batch, via_event=True)),
    }
    series: dict[str, list[float]] = {name: [] for name in measures}
    try:
        for fn in measures.values():  # warm-up
            fn()
        names = list(measures)
        for i in range(rounds):
            for name in names if i % 2 == 0 else list(reversed(names)):
                series[name].extend(measures[name]())
    finally:
        Supervisor.stop(sup)
        DynamicSupervisor.stop(dyn)
    return series


def table(series: dict[str, list[float]], pin: bool) -> str:
    base = statistics.median(series["spawn"])
    rows = [("figure", "median", "p90", "ratio", "goal", "met?")]

    def row(label: str, key: str, goal: float | None) -> None:
        values = sorted(series[key])
        median = statistics.median(values)
        p90 = values[int(0.9 * (len(values) - 1))]
        ratio = median / base
        met = "-" if goal is None else ("yes" if ratio <= goal else "NO")
        rows.append((label, f"{median * 1e6:.0f} us", f"{p90 * 1e6:.0f} us", f"{ratio:.2f}x",
                     "-" if goal is None else f"<= {goal:g}x", met))

    row("spawn GenServer + first call (baseline)", "spawn", None)
    row("kill -> restarted, Supervisor (pid from event)", "event", 2.0)
    row("kill -> restarted, Supervisor (pid from which_children)", "which", 2.0)
    row("kill -> restarted, DynamicSupervisor (pid from event)", "dynamic", 2.0)
    row("kill -> restarted, Supervisor, reports to a loguru sink", "logged", None)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    where = "pinned to one CPU" if pin else "unpinned"
    lines = [f"supervisor restart latency ({where}, {len(series['spawn'])} samples each)"]
    for n, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


_FIGURES = {
    "event": "kill -> restarted (pid from telemetry) vs spawn GenServer",
    "which": "kill -> restarted (pid from which_children) vs spawn GenServer",
    "dynamic": "kill -> restarted, DynamicSupervisor vs spawn GenServer",
    "logged": "kill -> restarted, with a loguru sink vs spawn GenServer",
}


def run(quick: bool = False, pin: bool = True) -> list[Any]:
    """The figures as `Result` rows (what ``threadotp bench`` prints), in microseconds."""
    from _common import Goal, Result

    logger.remove()
    series = measure(quick, pin)
    base = statistics.median(series["spawn"]) * 1e6
    return [
        Result(figure, statistics.median(series[key]) * 1e6, base, "us",
               Goal.ratio_at_most(2.0) if key != "logged" else None, "spawn GenServer + first call")
        for key, figure in _FIGURES.items()
    ]


def main(argv: list[str]) -> None:
    logger.remove()  # every restart logs a supervisor report, whose cost is the sink's
    quick = "--quick" in argv
    pin = "--unpinned" not in argv
    print(table(measure(quick, pin), pin), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
