"""The process runtime against raw threads and Pykka: the figures issue 2 asks for.

Run: ``python benchmarks/bench_runtime.py [--quick] [--no-pin] [--json]`` (about 40 s; quick
about 10 s). Each figure is measured side by side with its baseline in interleaved rounds and
reduced with the median:

* **ping-pong round trip** — two processes, ``send`` + selective ``receive`` both ways, against
  two threads handing messages through a ``threading.Condition`` + ``deque`` mailbox each;
* **GenServer.call round trip** — against Pykka's ``ActorRef.ask`` to an actor that answers;
* **one-way throughput** — one sender process to one receiver (plain ``receive()``), against the
  same hand-off through a Condition + deque; and once more with a selective pattern, no goal;
* **spawn + exit** — ``spawn_monitor`` of a function that returns, until its ``Down``, against
  ``threading.Thread`` start + join;
* **10,000 idle processes** — time to spawn them all (each then blocks in ``receive``) and RSS
  per process, against 10,000 threads blocked on their own Condition + deque mailbox. Each side
  runs in a fresh interpreter, because freed thread stacks stay cached in the C library.

Raw threads are daemon threads, like the runtime's: CPython 3.11 makes starting a non-daemon
thread cost O(live threads), which would make the 10,000-thread baseline 2x slower.

By default everything runs pinned to one CPU: with the GIL only one Python thread runs at a
time anyway, and on a small VM a wake-up across CPUs costs ~8 us or ~70 us at random, for ours
and for the baselines alike, which turns unpinned ratios into noise. ``--no-pin`` shows the
unpinned figures.

``run(quick, pin)`` returns the `Result` records; ``threadotp bench`` can import and print them.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

if str(Path(__file__).resolve().parent) not in sys.path:  # imported from elsewhere (a CLI)
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    ROOT,
    Goal,
    Result,
    interleaved,
    pinned_to_one_cpu,
    print_table,
    rss_bytes,
)

import otp
from otp import ANY, Down
from otp.testing import fresh_node

__all__ = ["run", "main"]

IDLE_PROCESSES = 10_000


# -- the raw baseline: a Condition + deque mailbox ---------------------------------------------


class RawMailbox:
    """The hand-rolled mailbox a thread would use without the runtime."""

    __slots__ = ("cond", "queue")

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.queue: deque[Any] = deque()

    def put(self, msg: Any) -> None:
        with self.cond:
            self.queue.append(msg)
            self.cond.notify()

    def get(self) -> Any:
        with self.cond:
            while not self.queue:
                self.cond.wait()
            return self.queue.popleft()


# -- ping-pong ------------------------------------------------------------------------------------


def otp_ping_pong_us(n: int) -> float:
    with fresh_node():
        me = otp.self()

        def ponger() -> None:
            while True:
                msg = otp.receive(("ping", ANY))
                otp.send(msg[1], "pong")

        pid = otp.spawn(ponger)
        for _ in range(100):  # warm up
            otp.send(pid, ("ping", me))
            otp.receive("pong")
        start = time.perf_counter()
        for _ in range(n):
            otp.send(pid, ("ping", me))
            otp.receive("pong")
        return (time.perf_counter() - start) / n * 1e6


def raw_ping_pong_us(n: int) -> float:
    mine, theirs = RawMailbox(), RawMailbox()

    def ponger() -> None:
        while (msg := theirs.get()) is not None:
            msg[1].put("pong")

    thread = threading.Thread(target=ponger)
    thread.start()
    for _ in range(100):
        theirs.put(("ping", mine))
        mine.get()
    start = time.perf_counter()
    for _ in range(n):
        theirs.put(("ping", mine))
        mine.get()
    elapsed = time.perf_counter() - start
    theirs.put(None)
    thread.join()
    return elapsed / n * 1e6


# -- GenServer.call vs Pykka ask ------------------------------------------------------------------


class Echo(otp.GenServer):
    def handle_call(self, request: Any, from_: otp.From, state: Any) -> Any:
        return ("reply", request, state)


def otp_call_us(n: int) -> float:
    with fresh_node():
        pid = Echo.start()
        call = otp.call
        for i in range(100):
            call(pid, i)
        start = time.perf_counter()
        for i in range(n):
            call(pid, i)
        elapsed = time.perf_counter() - start
        otp.stop(pid)
        return elapsed / n * 1e6


def pykka_ask_us(n: int) -> float:
    import pykka

    class PykkaEcho(pykka.ThreadingActor):
        def on_receive(self, message: Any) -> Any:
            return message

    ref = PykkaEcho.start()
    try:
        for i in range(100):
            ref.ask(i)
        start = time.perf_counter()
        for i in range(n):
            ref.ask(i)
        return (time.perf_counter() - start) / n * 1e6
    finally:
        ref.stop()


def _pykka_available() -> bool:
    try:
        import pykka  # noqa: F401
    except ImportError:
        return False
    return True


# -- one-way throughput ---------------------------------------------------------------------------


def otp_one_way_per_s(n: int, selective: bool = False) -> float:
    with fresh_node():
        me = otp.self()
        receive, send = otp.receive, otp.send

        def receiver() -> None:
            if selective:
                for _ in range(n):
                    receive(("n", ANY))
            else:
                for _ in range(n):
                    receive()
            send(me, "done")

        def sender(to: otp.Pid) -> None:
            receive("go")
            msg = ("n", 1)
            for _ in range(n):
                send(to, msg)

        target = otp.spawn(receiver)
        source = otp.spawn(sender, target)
        start = time.perf_counter()
        otp.send(source, "go")
        otp.receive("done")
        return n / (time.perf_counter() - start)


def raw_one_way_per_s(n: int) -> float:
    inbox, done = RawMailbox(), RawMailbox()

    def receiver() -> None:
        get = inbox.get
        for _ in range(n):
            get()
        done.put("done")

    thread = threading.Thread(target=receiver)
    thread.start()
    put = inbox.put
    msg = ("n", 1)
    start = time.perf_counter()
    for _ in range(n):
        put(msg)
    done.get()
    elapsed = time.perf_counter() - start
    thread.join()
    return n / elapsed


# -- spawn + exit ---------------------------------------------------------------------------------


def _nothing() -> None:
    pass


def otp_spawn_exit_us(n: int) -> float:
    with fresh_node():
        spawn_monitor, receive = otp.spawn_monitor, otp.receive
        start = time.perf_counter()
        for _ in range(n):
            _, ref = spawn_monitor(_nothing)
            receive(lambda m, ref=ref: m.__class__ is Down and m.ref == ref)
        return (time.perf_counter() - start) / n * 1e6


def raw_spawn_exit_us(n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        thread = threading.Thread(target=_nothing, daemon=True)  # as the runtime's threads
        thread.start()
        thread.join()
    return (time.perf_counter() - start) / n * 1e6


# -- 10,000 idle processes (each side in a fresh interpreter) -----------------------------------


def idle_otp(count: int) -> dict[str, float]:
    """Spawn `count` processes blocked in ``receive``; the time and the RSS they cost."""
    gc.collect()
    before = rss_bytes()
    spawn, receive = otp.spawn, otp.receive
    start = time.perf_counter()
    pids = [spawn(receive) for _ in range(count)]
    elapsed = time.perf_counter() - start
    deadline = time.monotonic() + 60
    while any(otp.process_info(p).status != "waiting" for p in pids[-50:]):
        if time.monotonic() > deadline:
            raise RuntimeError("idle processes did not block")
        time.sleep(0.01)
    time.sleep(0.2)  # let the last threads settle into their wait
    gc.collect()
    used = rss_bytes() - before
    otp.default_node().shutdown(join_timeout=60)
    return {"spawn_s": elapsed, "rss_per_kib": used / count / 1024}


def idle_raw(count: int) -> dict[str, float]:
    """Start `count` threads blocked on their own Condition + deque mailbox."""
    gc.collect()
    before = rss_bytes()
    boxes: list[RawMailbox] = []
    threads: list[threading.Thread] = []
    start = time.perf_counter()
    for _ in range(count):  # as spawn does: make the mailbox and the thread, start it
        box = RawMailbox()
        # Daemon threads, as the runtime's are: starting a non-daemon thread costs O(live
        # threads) in CPython 3.11 (threading._maintain_shutdown_locks).
        thread = threading.Thread(target=box.get, daemon=True)
        thread.start()
        boxes.append(box)
        threads.append(thread)
    elapsed = time.perf_counter() - start
    time.sleep(0.2)
    gc.collect()
    used = rss_bytes() - before
    for box in boxes:
        box.put(None)
    for thread in threads:
        thread.join()
    return {"spawn_s": elapsed, "rss_per_kib": used / count / 1024}


def idle_in_subprocess(kind: str, count: int, pin: bool) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--idle-child", kind, "--count", str(count)]
    if not pin:
        cmd.append("--no-pin")
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"idle {kind} child failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


# -- the run --------------------------------------------------------------------------------------


def run(quick: bool = False, pin: bool = True) -> list[Result]:
    """Measure every figure and return the records (in table order)."""
    rounds = 3 if quick else 7
    scale = 1 if quick else 4
    n, m, k = 5_000 * scale, 100_000 * scale, 500 * scale  # round trips, messages, spawns
    results: list[Result] = []
    with pinned_to_one_cpu(pin):
        pp = interleaved(
            {"ours": lambda: otp_ping_pong_us(n), "raw": lambda: raw_ping_pong_us(n)}, rounds
        )
        results.append(
            Result("ping-pong round trip", pp["ours"], pp["raw"], "us", Goal.ratio_at_most(1.3),
                   "Condition+deque")
        )

        if _pykka_available():
            calls = interleaved(
                {"ours": lambda: otp_call_us(n), "pykka": lambda: pykka_ask_us(n)}, rounds
            )
            results.append(
                Result("GenServer.call round trip", calls["ours"], calls["pykka"], "us",
                       Goal.ratio_at_most(1.0), "Pykka ask")
            )
        else:
            ours = interleaved({"ours": lambda: otp_call_us(n)}, rounds)["ours"]
            results.append(
                Result("GenServer.call round trip", ours, None, "us", Goal.ratio_at_most(1.0),
                       note="pykka is not installed (pip install -e '.[bench]')")
            )

        tput = interleaved(
            {"ours": lambda: otp_one_way_per_s(m), "raw": lambda: raw_one_way_per_s(m)}, rounds
        )
        results.append(
            Result("one-way throughput", tput["ours"], tput["raw"], "msg/s",
                   Goal.at_least(1_000_000), "Condition+deque")
        )
        selective = interleaved({"ours": lambda: otp_one_way_per_s(m, selective=True)}, rounds)
        results.append(
            Result("one-way throughput, selective receive", selective["ours"], tput["raw"],
                   "msg/s", None, "Condition+deque",
                   note="the receiver matches ('n', ANY) instead of taking any message")
        )

        spawns = interleaved(
            {"ours": lambda: otp_spawn_exit_us(k), "raw": lambda: raw_spawn_exit_us(k)}, rounds
        )
        results.append(
            Result("spawn + exit", spawns["ours"], spawns["raw"], "us", Goal.ratio_at_most(1.5),
                   "Thread start+join")
        )

    # Each sample is a fresh interpreter that reports both the spawn time and the RSS.
    idle_rounds = 1 if quick else 3
    samples: dict[str, list[dict[str, float]]] = {"otp": [], "raw": []}
    for i in range(idle_rounds):
        for kind in ("otp", "raw") if i % 2 == 0 else ("raw", "otp"):
            samples[kind].append(idle_in_subprocess(kind, IDLE_PROCESSES, pin))

    def med(kind: str, key: str) -> float:
        values = sorted(s[key] for s in samples[kind])
        return values[len(values) // 2]

    label = f"{IDLE_PROCESSES:,} idle processes"
    results.append(
        Result(f"{label}: spawn all", med("otp", "spawn_s"), med("raw", "spawn_s"), "s",
               Goal.ratio_at_most(1.5), "blocked threads")
    )
    results.append(
        Result(f"{label}: RSS each", med("otp", "rss_per_kib"), med("raw", "rss_per_kib"), "KiB",
               Goal.below(40), "blocked threads")
    )
    return results


def _idle_child(kind: str, count: int, pin: bool) -> None:
    with pinned_to_one_cpu(pin):
        figures = idle_otp(count) if kind == "otp" else idle_raw(count)
    print(json.dumps(figures))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and messages (~10 s)")
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="use every CPU")
    parser.add_argument("--json", action="store_true", help="print the records as JSON")
    parser.add_argument("--idle-child", choices=["otp", "raw"], help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=IDLE_PROCESSES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.idle_child:
        _idle_child(args.idle_child, args.count, args.pin)
        return
    started = time.perf_counter()
    results = run(quick=args.quick, pin=args.pin)
    if args.json:
        print(json.dumps([r.as_dict() for r in results], indent=2))
        return
    where = "pinned to one CPU" if args.pin else f"on {len(os.sched_getaffinity(0))} CPUs"
    print_table(
        results,
        f"threadotp runtime vs baselines - python {sys.version.split()[0]}, {where}, "
        f"medians of interleaved rounds{' (quick)' if args.quick else ''}",
    )
    print(f"(total {time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    main()
