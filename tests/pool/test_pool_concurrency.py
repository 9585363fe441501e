"""8 clients x 500 checkouts on a 4-worker pool, with random client errors, timeouts and kills.

Four clients are plain threads (an exit signal reaches them at their next runtime call); four are
spawned processes (an exit signal interrupts their Python code at once, anywhere, and a slot
thread respawns them to finish their share). A killer thread sends exit signals at random.

Checked: every checkout returned its worker's value or raised one of the clear errors; no worker
was ever handed to two clients at once; callbacks never overlapped; afterwards the pool has
exactly pool_size workers; terminate_worker ran exactly once per removed worker.
"""

from __future__ import annotations

import random
import threading
from typing import Any

import otp
import pool
from pool.testing import ManualClock

POOL_SIZE = 4
CLIENTS = 8
CHECKOUTS = 500


class Tracked(pool.PoolWorker):
    """Workers are unique ints; the test's `Ledger` sees every start, hand-out and end."""

    def init_pool(self, ledger: Ledger) -> Any:
        return ("ok", ledger)

    def init_worker(self, ledger: Ledger) -> Any:
        with ledger.callback():
            wid = ledger.new_worker()
            if wid % 5 == 0:  # some workers start asynchronously, off the pool process
                return ("async", lambda: wid, ledger)
            return ("ok", wid, ledger)

    def handle_checkout(self, command: Any, from_: Any, wid: int, ledger: Ledger) -> Any:
        with ledger.callback():
            assert wid not in ledger.out, f"worker {wid} handed out twice"
            ledger.out.add(wid)
            return ("ok", wid, wid, ledger)

    def handle_checkin(self, state: Any, from_: Any, wid: int, ledger: Ledger) -> Any:
        with ledger.callback():
            ledger.out.discard(wid)
            return ("ok", wid, ledger)

    def terminate_worker(self, reason: Any, wid: int, ledger: Ledger) -> Any:
        with ledger.callback():
            ledger.out.discard(wid)
            ledger.terminated.append((wid, reason))
            return ("ok", ledger)


class Ledger:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.active = 0
        self.overlaps = 0
        self.started: list[int] = []
        self.terminated: list[tuple[int, Any]] = []
        self.out: set[int] = set()

    def new_worker(self) -> int:
        self.started.append(len(self.started) + 1)
        return self.started[-1]

    def callback(self) -> Any:
        ledger = self

        class _Guard:
            def __enter__(self) -> None:
                with ledger.lock:
                    ledger.active += 1
                    if ledger.active > 1:
                        ledger.overlaps += 1

            def __exit__(self, *exc: Any) -> None:
                with ledger.lock:
                    ledger.active -= 1

        return _Guard()


CLEAR_EXITS = ("boom", "killed")


def classify(exc: BaseException) -> str:
    if isinstance(exc, RuntimeError) and str(exc) == "client error":
        return "raised"
    if isinstance(exc, pool.CheckoutTimeout):
        return "timeout"
    if isinstance(exc, otp.ProcessExit) and exc.reason in CLEAR_EXITS:
        return "exit"
    raise AssertionError(f"unclear error from checkout: {exc!r}") from exc


def one_checkout(p: otp.Pid, rng: random.Random, *, in_process: bool = False) -> str:
    roll = rng.random()
    timeout: float | None = 2.0
    if roll < 0.15:
        timeout = rng.choice([0.0, 0.0005, 0.002])

    def fun(from_: pool.From, wid: int) -> Any:
        for _ in range(rng.randrange(200)):  # a little work, so that clients overlap
            pass
        if roll > 0.9:
            raise RuntimeError("client error")
        return (wid, wid)

    try:
        result = pool.checkout(p, "work", fun, timeout=timeout)
    except otp.ProcessExit as exc:
        if in_process:
            raise  # a spawned client that was killed: let it die (its slot records the outcome)
        return classify(exc)
    except Exception as exc:  # noqa: BLE001 - classified, and anything unclear fails
        return classify(exc)
    assert isinstance(result, int)
    return "ok"


def test_eight_clients_five_hundred_checkouts_each_with_crashes_and_timeouts() -> None:
    ledger = Ledger()
    clock = ManualClock()  # no timers: advance(0) is a round trip that drains the pool's mailbox
    p = pool.start(Tracked, ledger, pool_size=POOL_SIZE, clock=clock, backoff_initial=0.001)
    assert isinstance(p, otp.Pid)
    outcomes: list[list[str | None]] = [[None] * CHECKOUTS for _ in range(CLIENTS)]
    live: dict[int, otp.Pid] = {}
    live_lock = threading.Lock()
    done = threading.Event()

    def thread_client(i: int) -> None:
        rng = random.Random(i)
        for n in range(CHECKOUTS):
            try:
                with live_lock:
                    live[i] = otp.self()
            except otp.ProcessExit:
                with live_lock:
                    live[i] = otp.self()  # the exit was seen here; carry on as a new process
            outcomes[i][n] = one_checkout(p, rng)

    def process_client(i: int) -> None:
        """A slot: runs its share in spawned processes, respawning each one that is killed."""
        rng = random.Random(i)
        progress = [0]

        def runner() -> None:
            while progress[0] < CHECKOUTS:
                n = progress[0]
                outcomes[i][n] = one_checkout(p, rng, in_process=True)
                progress[0] = n + 1

        while progress[0] < CHECKOUTS:
            pid, ref = otp.spawn_monitor(runner)
            with live_lock:
                live[i] = pid
            down = otp.receive(lambda m, r=ref: isinstance(m, otp.Down) and m.ref == r, timeout=30)
            assert down is not otp.TIMEOUT
            if down.reason != "normal":
                assert down.reason in CLEAR_EXITS, down.reason
                n = progress[0]
                if n < CHECKOUTS and outcomes[i][n] is None:
                    outcomes[i][n] = "exit"  # killed inside that checkout
                progress[0] = n + 1

    def killer() -> None:
        rng = random.Random(99)
        for _ in range(150):
            if done.is_set():
                return
            with live_lock:
                victim = live.get(rng.randrange(CLIENTS))
            if victim is not None:
                otp.exit(victim, rng.choice(["boom", "kill"]))
            otp.receive(timeout=rng.choice([0.0005, 0.002]))  # spread the kills over the run

    threads = [
        threading.Thread(target=thread_client if i < 4 else process_client, args=(i,))
        for i in range(CLIENTS)
    ]
    threads.append(threading.Thread(target=killer))
    for t in threads:
        t.start()
    for t in threads[:CLIENTS]:
        t.join(60)
    done.set()
    threads[-1].join(10)
    assert not any(t.is_alive() for t in threads)

    # Every checkout has exactly one outcome, each a success or a clear error.
    flat = [o for row in outcomes for o in row]
    assert None not in flat
    counts = {k: flat.count(k) for k in ("ok", "raised", "timeout", "exit")}
    assert sum(counts.values()) == CLIENTS * CHECKOUTS
    print("outcomes:", counts, "started:", len(ledger.started))
    assert counts["ok"] > CLIENTS * CHECKOUTS / 2, counts
    assert counts["raised"] > 0 and counts["exit"] > 0, counts

    # Let the pool finish what the dead clients left (their Downs, async starts).
    for _ in range(200):
        clock.advance(0)
        s = pool.stats(p)
        if s.idle == POOL_SIZE and s.initialising == 0:
            break
    s = pool.stats(p)
    assert (s.idle, s.checked_out, s.waiting, s.initialising) == (POOL_SIZE, 0, 0, 0), s
    assert ledger.overlaps == 0
    assert ledger.out == set()

    terminated = [wid for wid, _ in ledger.terminated]
    assert len(terminated) == len(set(terminated)), "a worker was terminated twice"
    assert s.removed == len(terminated)
    alive = set(ledger.started) - set(terminated)
    assert len(alive) == POOL_SIZE

    pool.stop(p, "shutdown")
    terminated = [wid for wid, _ in ledger.terminated]
    assert sorted(terminated) == sorted(set(terminated)) == ledger.started
    reasons = {r if isinstance(r, str) else type(r).__name__ for _, r in ledger.terminated}
    assert reasons <= {"error", "exit", "DOWN", "shutdown"}, reasons
