"""What every benchmark shares: the `Result` record, timing helpers and the table printer.

A benchmark module exposes ``run(quick: bool) -> list[Result]``; its ``__main__`` prints
``format_table(run(quick))``. A later ``threadotp bench`` imports the modules and does the same.

    >>> r = Result("ping-pong round trip", 9.0, 8.0, "us", Goal.ratio_at_most(1.3), "raw Condition")
    >>> round(r.ratio, 3), r.met
    (1.125, True)

Timing: measure ours and the baseline in *interleaved* rounds (`interleaved`), so that both
sides see the same machine state, and reduce each side with the median (or the best, for
figures where noise only ever adds time). `pinned_to_one_cpu` runs a block on one CPU: with
the GIL only one Python thread runs at a time anyway, and on small VMs a cross-CPU wake-up
flips between ~8 us and ~70 us at random, which makes unpinned ratios meaningless.
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere, with or without an install
    sys.path.insert(0, str(ROOT))

__all__ = [
    "Goal", "ROOT", "Result", "best_of", "format_quantity", "format_table", "interleaved",
    "median_of", "per_op", "pinned_to_one_cpu", "print_table", "rss_bytes",
]


@dataclass(frozen=True)
class Goal:
    """A target for one figure: a bound on ``ours / baseline`` or on ``ours`` itself.

    `kind` is one of ``"ratio<="``, ``"ratio>="``, ``"<="``, ``">="``, ``"<"``.
    """

    kind: str
    bound: float

    @classmethod
    def ratio_at_most(cls, bound: float) -> Goal:
        return cls("ratio<=", bound)

    @classmethod
    def ratio_at_least(cls, bound: float) -> Goal:
        return cls("ratio>=", bound)

    @classmethod
    def at_most(cls, bound: float) -> Goal:
        return cls("<=", bound)

    @classmethod
    def below(cls, bound: float) -> Goal:
        return cls("<", bound)

    @classmethod
    def at_least(cls, bound: float) -> Goal:
        return cls(">=", bound)

    def check(self, ours: float, ratio: float | None) -> bool | None:
        """True/False, or None when the goal is a ratio and there is no baseline."""
        if self.kind.startswith("ratio"):
            if ratio is None:
                return None
            return ratio <= self.bound if self.kind == "ratio<=" else ratio >= self.bound
        match self.kind:
            case "<=":
                return ours <= self.bound
            case "<":
                return ours < self.bound
            case ">=":
                return ours >= self.bound
        raise ValueError(f"unknown goal kind {self.kind!r}")

    def describe(self, unit: str) -> str:
        if self.kind.startswith("ratio"):
            return f"{self.kind[5:]} {self.bound:g}x"
        return f"{self.kind} {format_quantity(self.bound, unit)}"


@dataclass(frozen=True)
class Result:
    """One measured figure: ours beside a baseline, with an optional goal.

    `unit` is how both values are expressed (``"us"``, ``"ms"``, ``"s"``, ``"msg/s"``,
    ``"KiB"``...). `ratio` is ``ours / baseline`` whatever the unit, so for throughputs a ratio
    above 1 is good and for times below 1 is good; the goal says which it wants.
    """

    figure: str
    ours: float
    baseline: float | None
    unit: str
    goal: Goal | None = None
    baseline_name: str = ""
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or self.baseline == 0:
            return None
        return self.ours / self.baseline

    @property
    def met(self) -> bool | None:
        return None if self.goal is None else self.goal.check(self.ours, self.ratio)

    def as_dict(self) -> dict[str, object]:
        """Plain data, for JSON output."""
        return {
            "figure": self.figure, "ours": self.ours, "baseline": self.baseline,
            "baseline_name": self.baseline_name, "unit": self.unit, "ratio": self.ratio,
            "goal": None if self.goal is None else self.goal.describe(self.unit),
            "met": self.met, "note": self.note,
        }


# -- timing --------------------------------------------------------------------------------------


def per_op(body: Callable[[int], object], n: int) -> float:
    """Seconds per operation of ``body(n)``, which performs `n` operations."""
    start = time.perf_counter()
    body(n)
    return (time.perf_counter() - start) / n


def best_of(measure: Callable[[], float], rounds: int) -> float:
    """The smallest of `rounds` measurements (for times, where noise only ever adds)."""
    return min(measure() for _ in range(rounds))


def median_of(measure: Callable[[], float], rounds: int) -> float:
    """The median of `rounds` measurements."""
    return statistics.median(measure() for _ in range(rounds))


def interleaved(
    measures: dict[str, Callable[[], float]],
    rounds: int,
    reduce: Callable[[Sequence[float]], float] = statistics.median,
) -> dict[str, float]:
    """Run each measurement once per round, alternating the order, and reduce each series.

    Alternating means neither side always runs first (warm caches, a CPU frequency ramp) and
    both see the same slow and fast periods of a shared machine.
    """
    series: dict[str, list[float]] = {name: [] for name in measures}
    names = list(measures)
    for i in range(rounds):
        for name in names if i % 2 == 0 else reversed(names):
            series[name].append(measures[name]())
    return {name: reduce(values) for name, values in series.items()}


@contextlib.contextmanager
def pinned_to_one_cpu(pin: bool = True) -> Iterator[None]:
    """Run the block on a single CPU; threads started inside inherit the affinity."""
    if not pin or not hasattr(os, "sched_setaffinity"):
        yield
        return
    previous = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(previous)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, previous)


def rss_bytes() -> int:
    """This process's resident set size, from /proc (Linux), else from `resource` (peak)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# -- the table -----------------------------------------------------------------------------------


def format_quantity(value: float | None, unit: str) -> str:
    """``12.3 us``, ``1,480,000 msg/s``, ``17.2 KiB``: readable, with the unit."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if abs(value) >= 10_000:
        text = f"{value:,.0f}"
    elif abs(value) >= 100:
        text = f"{value:.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return f"{text} {unit}" if unit else text


_COLUMNS = ("figure", "ours", "baseline", "ratio", "goal", "met?")


def format_table(results: Iterable[Result], title: str = "") -> str:
    """One aligned table: figure, ours, baseline (and its name), ratio, goal, met?"""
    rows = [_COLUMNS]
    notes: list[str] = []
    for r in results:
        baseline = format_quantity(r.baseline, r.unit)
        if r.baseline_name and r.baseline is not None:
            baseline = f"{baseline} ({r.baseline_name})"
        ratio = "-" if r.ratio is None else f"{r.ratio:.2f}x"
        goal = "-" if r.goal is None else r.goal.describe(r.unit)
        met = {True: "yes", False: "NO", None: "-"}[r.met]
        figure = r.figure
        if r.note:
            notes.append(r.note)
            figure = f"{figure} [{len(notes)}]"
        rows.append((figure, format_quantity(r.ours, r.unit), baseline, ratio, goal, met))
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    left = {0, 2}  # text columns

    def line(row: Sequence[str]) -> str:
        cells = [
            c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))
        ]
        return "  ".join(cells).rstrip()

    out = [title] if title else []
    out.append(line(rows[0]))
    out.append("  ".join("-" * w for w in widths))
    out.extend(line(row) for row in rows[1:])
    out.extend(f"[{i}] {note}" for i, note in enumerate(notes, 1))
    return "\n".join(out)


def print_table(results: Iterable[Result], title: str = "") -> None:
    print(format_table(results, title), flush=True)
