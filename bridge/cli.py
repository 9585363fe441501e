"""``threadotp``: the command line.

    threadotp demo [--duration 20] [--workers 4] [--clients 8] [--kill-every 2] [--zygote]
    threadotp run MODULE:FUNCTION [--observe]
    threadotp bench [--quick] [--json PATH] [--plot PATH] [NAME ...]
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="threadotp", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="a supervised pool of Python workers under chaos, live")
    demo.add_argument("--duration", type=float, default=20.0, help="seconds of workload (default 20)")
    demo.add_argument("--workers", type=int, default=4, help="worker processes (default 4)")
    demo.add_argument("--clients", type=int, default=8, help="client threads (default 8)")
    demo.add_argument("--kill-every", type=float, default=2.0, help="SIGKILL a worker every N s; 0 = no chaos")
    demo.add_argument("--flaky-rate", type=float, default=0.02, help="how often the flaky handler raises")
    demo.add_argument("--zygote", action="store_true", help="fork workers from a warm zygote (start_mode='zygote')")
    demo.add_argument("--plain", action="store_true", help="plain text even on a terminal")
    demo.add_argument("--seed", type=int, default=None)

    run = sub.add_parser("run", help="run the supervision tree MODULE:FUNCTION returns")
    run.add_argument("target", help="MODULE:FUNCTION returning child specs, a spec, or a start function")
    run.add_argument("--observe", action="store_true", help="show the live tree")
    run.add_argument("--plain", action="store_true")

    bench = sub.add_parser("bench", help="run the benchmarks side by side with their baselines")
    bench.add_argument("names", nargs="*", help="runtime, supervisor, pool, bridge (default: all)")
    bench.add_argument("--quick", action="store_true", help="CI-sized runs")
    bench.add_argument("--json", dest="json_path", help="write the results as JSON")
    bench.add_argument("--plot", dest="plot_path", help="write a PNG of the ratios (needs matplotlib)")

    options = parser.parse_args(argv)
    if options.command == "demo":
        return _demo(options)
    if options.command == "run":
        return _run(options)
    return _bench(options)


# -- demo -----------------------------------------------------------------------------------


def _demo(options: argparse.Namespace) -> int:
    import otp
    from bridge.demo import DemoOptions, Workload
    from bridge.session_pool import SessionPool
    from bridge.view import View

    if options.workers < 1 or options.clients < 1 or options.duration <= 0:
        print("threadotp demo: --workers, --clients and --duration must be positive", file=sys.stderr)
        return 2
    _quiet_logs()
    opts = DemoOptions(
        duration=options.duration, workers=options.workers, clients=options.clients,
        kill_every=options.kill_every or None, flaky_rate=options.flaky_rate, seed=options.seed,
    )
    view = View(plain=options.plain)
    mode = "zygote" if options.zygote else "spawn"
    view.note(f"starting {opts.workers} workers in parallel{' from a zygote' if options.zygote else ''} ...")
    started = time.monotonic()
    sp = SessionPool.start("demo", pool_size=opts.workers, handlers=["bridge.examples"], call_timeout=opts.call_timeout,
                           circuit_failures=1000, max_restarts=1000, max_seconds=1.0, start_mode=mode)
    view.note(f"pool ready in {time.monotonic() - started:.2f} s; {opts.clients} clients for {opts.duration:g} s"
              + (f", a worker SIGKILLed every {opts.kill_every:g} s" if opts.kill_every else ""))
    workload = Workload(sp, opts)
    workload.start()
    try:
        with view.live():
            while workload.elapsed < opts.duration:
                view.update(_demo_frame(sp, workload, opts))
                time.sleep(0.25)  # the refresh rate of the view, not a wait for an event
    except KeyboardInterrupt:
        view.note("interrupted")
    finally:
        workload.stop()
    converged = _converge(sp, opts.workers, timeout=15.0)
    final = _demo_frame(sp, workload, opts)
    hung = workload.hung()
    sp.stop()
    leftover = [p for p in otp.processes() if p != otp.self()]
    verdict, code = _verdict(final, converged, hung, leftover)
    view.summary(final, verdict)
    return code


def _demo_frame(sp: Any, workload: Any, opts: Any) -> dict[str, Any]:
    from otp import observer

    stats = sp.stats()
    snap = workload.snapshot()
    try:
        tree = observer.render(sp.supervisor, timeout=2.0)
    except BaseException as exc:  # noqa: BLE001 - the tree may be mid-restart
        tree = f"(tree unavailable: {exc})"
    return {
        "elapsed": min(workload.elapsed, opts.duration), "duration": opts.duration, "tree": tree,
        "workers": stats.workers, "pool_size": opts.workers, "restarts": stats.restarts, **snap,
    }


def _converge(sp: Any, size: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            s = sp.stats()
            if s.idle + s.busy == size and s.starting == 0:
                return True
        except BaseException:  # noqa: BLE001 - restarting
            pass
        time.sleep(0.1)  # polling the pool's size for the verdict
    return False


def _verdict(final: dict[str, Any], converged: bool, hung: int, leftover: list[Any]) -> tuple[str, int]:
    problems = []
    if final["lost"]:
        problems.append(f"{final['lost']} calls lost: {final['lost_examples']}")
    if hung:
        problems.append(f"{hung} calls hung")
    if not converged:
        problems.append("the pool did not converge back to full size")
    if leftover:
        problems.append(f"processes left after stop: {leftover}")
    if final["calls"] == 0:
        problems.append("no call completed")
    if problems:
        return "FAILED: " + "; ".join(problems), 1
    return "OK: no call lost or hung, the pool converged back to full size", 0


def _quiet_logs() -> None:
    """The demo kills workers on purpose: keep crash reports out of the live view."""
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="CRITICAL")


# -- run ------------------------------------------------------------------------------------


def _run(options: argparse.Namespace) -> int:
    import otp

    module_name, _, func_name = options.target.partition(":")
    if not module_name or not func_name:
        print(f"threadotp run: expected MODULE:FUNCTION, got {options.target!r}", file=sys.stderr)
        return 2
    sys.path.insert(0, str(Path.cwd()))
    try:
        func = getattr(importlib.import_module(module_name), func_name)
    except (ImportError, AttributeError) as exc:
        print(f"threadotp run: cannot load {options.target}: {exc}", file=sys.stderr)
        return 2
    tree = func()
    if options.observe:
        return _run_observed(tree, plain=options.plain)
    return otp.run(tree)


def _run_observed(tree: Any, *, plain: bool) -> int:
    import otp
    from otp import observer

    from bridge.view import View

    view = View(plain=plain)
    done = threading.Event()
    root_name = "threadotp_run_root"

    def watch() -> None:
        while not done.wait(0.5):  # the refresh rate of the view
            pid = otp.whereis(root_name)
            if pid is not None:
                try:
                    view.update({"tree": observer.render(pid, timeout=1.0)})
                except BaseException:  # noqa: BLE001 - the tree is stopping
                    pass

    watcher = threading.Thread(target=watch, name="threadotp-observe", daemon=True)
    with view.live():
        watcher.start()
        try:
            return otp.run(tree, name=root_name) if isinstance(tree, (list, tuple)) else otp.run(tree)
        finally:
            done.set()
            watcher.join(2)


# -- bench ----------------------------------------------------------------------------------

BENCHES = {"runtime": "bench_runtime", "supervisor": "bench_supervisor", "pool": "bench_pool", "bridge": "bench_bridge"}


def _bench(options: argparse.Namespace) -> int:
    root = Path(__file__).resolve().parents[1] / "benchmarks"
    if not root.is_dir():
        print("threadotp bench: benchmarks/ not found; run from a clone (pip install -e .)", file=sys.stderr)
        return 2
    sys.path.insert(0, str(root))
    from _common import format_table  # type: ignore[import-not-found]

    names = options.names or list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        print(f"threadotp bench: unknown benchmark(s) {unknown}; choose from {list(BENCHES)}", file=sys.stderr)
        return 2
    results = []
    for name in names:
        module = importlib.import_module(BENCHES[name])
        print(f"running {name} ...", file=sys.stderr, flush=True)
        results.extend(module.run(quick=options.quick))
    print(format_table(results))
    if options.json_path:
        Path(options.json_path).write_text(json.dumps([r.as_dict() for r in results], indent=2, default=str))
    if options.plot_path:
        _plot(results, options.plot_path)
    return 0


def _plot(results: list[Any], path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("threadotp bench: --plot needs matplotlib (pip install 'threadotp[plot]')", file=sys.stderr)
        return
    rows = [r for r in results if r.ratio is not None]
    fig, ax = plt.subplots(figsize=(9, 0.4 * len(rows) + 1.5))
    colors = ["tab:green" if r.met else "tab:red" for r in rows]
    ax.barh([r.figure for r in rows], [r.ratio for r in rows], color=colors)
    ax.axvline(1.0, color="grey", linewidth=0.8)
    ax.set_xlabel("ours / baseline")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
