"""The live terminal view of `threadotp demo` and `threadotp run --observe`.

With a terminal and `rich`, a live panel refreshed a few times a second: a progress bar, the
supervision tree, and the call figures. Without a terminal (CI, a pipe), plain text: one block
per second, so a log stays readable.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from typing import Any

__all__ = ["View"]


class View:
    def __init__(self, *, plain: bool = False) -> None:
        self.rich = not plain and sys.stdout.isatty() and _has_rich()
        self._live: Any = None
        self._last_plain = 0.0

    def note(self, text: str) -> None:
        print(text, flush=True)

    @contextlib.contextmanager
    def live(self) -> Iterator[None]:
        if not self.rich:
            yield
            return
        from rich.live import Live

        with Live(refresh_per_second=4, transient=False) as live:
            self._live = live
            try:
                yield
            finally:
                self._live = None

    def update(self, frame: dict[str, Any]) -> None:
        if self._live is not None:
            self._live.update(_rich_frame(frame))
            return
        now = time.monotonic()
        if now - self._last_plain >= 1.0:
            self._last_plain = now
            print(_plain_frame(frame), flush=True)

    def summary(self, final: dict[str, Any], verdict: str) -> None:
        rows = [
            ("duration", f"{final['duration']:g} s"),
            ("calls", final["calls"]),
            ("calls/s", f"{final['calls_per_s']:.0f}"),
            ("ok", final["ok"]),
            ("clear errors", f"{final['clear_errors']}  {_fmt_errors(final['errors'])}"),
            ("lost", final["lost"]),
            ("workers killed", final["kills"]),
            ("worker restarts", final["restarts"]),
            ("p50 / p99", f"{_ms(final['p50_ms'])} / {_ms(final['p99_ms'])}"),
        ]
        if self.rich:
            from rich.console import Console
            from rich.table import Table

            table = Table(title="threadotp demo — summary", show_header=False)
            for key, value in rows:
                table.add_row(key, str(value))
            console = Console()
            console.print(table)
            console.print(("[green]" if verdict.startswith("OK") else "[red]") + verdict)
            return
        print("\n== summary ==")
        for key, value in rows:
            print(f"{key:>16}  {value}")
        print(verdict, flush=True)


def _has_rich() -> bool:
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} ms"


def _fmt_errors(errors: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in errors.items())


def _figures(frame: dict[str, Any]) -> str:
    if "calls" not in frame:
        return ""
    return (
        f"calls {frame['calls']}  ({frame['calls_per_s']:.0f}/s)   p50 {_ms(frame['p50_ms'])}  p99 {_ms(frame['p99_ms'])}\n"
        f"ok {frame['ok']}   clear errors {frame['clear_errors']}   lost {frame['lost']}\n"
        f"workers {frame['workers']}/{frame['pool_size']}   killed {frame['kills']}   restarts {frame['restarts']}\n"
        f"errors: {_fmt_errors(frame['errors']) or '-'}"
    )


def _plain_frame(frame: dict[str, Any]) -> str:
    head = ""
    if "elapsed" in frame:
        done = frame["elapsed"] / frame["duration"]
        bar = "#" * int(done * 30)
        head = f"[{bar:<30}] {frame['elapsed']:5.1f}/{frame['duration']:g} s\n"
    return f"{head}{frame['tree']}\n{_figures(frame)}\n"


def _rich_frame(frame: dict[str, Any]) -> Any:
    from rich.console import Group
    from rich.panel import Panel
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    parts: list[Any] = []
    if "elapsed" in frame:
        progress = Table.grid(padding=(0, 1))
        progress.add_row(
            ProgressBar(total=frame["duration"], completed=frame["elapsed"], width=50),
            Text(f"{frame['elapsed']:5.1f} / {frame['duration']:g} s"),
        )
        parts.append(progress)
    parts.append(Panel(Text(frame["tree"]), title="supervision tree"))
    figures = _figures(frame)
    if figures:
        style = "red" if frame["lost"] else "green"
        parts.append(Panel(Text(figures), title="calls", border_style=style))
    return Group(*parts)
