"""The `threadotp` command line, run as a user runs it: in a subprocess."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def threadotp(*args: str, **kw: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "bridge.cli", *args], cwd=ROOT, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw,  # type: ignore[arg-type]
    )


def finish(proc: subprocess.Popen[str], timeout: float) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"threadotp did not finish in {timeout} s:\n{out}\n{err}") from None
    return proc.returncode, out, err


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", [[], ["--zygote"]], ids=["spawn", "zygote"])
def test_demo_runs_under_chaos_and_exits_zero(mode: list[str]) -> None:
    code, out, err = finish(threadotp("demo", "--duration", "5", "--plain", "--kill-every", "1", *mode), 90)
    assert code == 0, f"{out}\n{err}"
    assert "OK: no call lost or hung" in out
    assert "supervisor one_for_all" in out  # the live tree was shown
    assert ("├── 'zygote'" in out) == bool(mode), "the zygote shows in the tree exactly in its mode"
    summary = out.split("== summary ==")[1]
    calls = int(summary.split("calls")[1].split()[0])
    killed = int(summary.split("workers killed")[1].split()[0])
    assert calls > 100 and killed >= 2


def test_demo_rejects_bad_options_clearly() -> None:
    code, out, err = finish(threadotp("demo", "--workers", "0"), 30)
    assert code == 2 and "--workers" in err


def test_run_shows_the_tree_and_stops_cleanly_on_sigint() -> None:
    proc = threadotp("run", "examples.tree:tree", "--observe", "--plain")
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 30
        seen = ""
        while "'b'" not in seen and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            seen += line
        assert "Ticker" in seen and "'b'" in seen, seen
        proc.send_signal(signal.SIGINT)
        code, out, err = finish(proc, 30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert code == 0, err
    assert "application stopped" in err and "'shutdown'" in err


def test_run_reports_a_bad_target() -> None:
    code, out, err = finish(threadotp("run", "no_such_module:tree"), 30)
    assert code == 2 and "no_such_module" in err


@pytest.mark.timeout(320)
def test_bench_quick_prints_a_complete_table(tmp_path: Path) -> None:
    report = tmp_path / "bench.json"
    code, out, err = finish(threadotp("bench", "--quick", "--json", str(report)), 300)
    assert code == 0, err
    assert "ratio" in out.lower()
    import json

    rows = json.loads(report.read_text())
    assert all({"figure", "ours", "baseline", "ratio", "met"} <= set(r) for r in rows)
    text = " ".join(r["figure"] for r in rows)
    # One row at least from each benchmark module: runtime, supervisor, pool, bridge.
    for figure in ("ping-pong", "kill -> restarted", "pool.checkout", "pool ready"):
        assert figure in text, f"{figure!r} missing from the table"
    assert all(r["ours"] > 0 for r in rows)
