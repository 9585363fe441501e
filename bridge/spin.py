"""An adaptive busy-wait for a worker's next request.

A worker blocked in ``read()`` must be woken by the kernel when the next request lands, and on
an idle CPU that wake-up costs 30-60 µs: more than everything else in a round trip. The BEAM's
schedulers busy-wait a little before they sleep for the same reason. A spin pays only when the
next request comes within its budget *and* nobody else wants the CPU; otherwise it burns time a
client or another worker needs. So every spin ends in one of three ways:

* **hit** - the request came: the next reply spins again;
* **miss** - the budget ran out: calls are sparse;
* **yielded** - a ``sched_yield()`` took long, so something else ran on this CPU (the client
  itself, another worker): spinning now only delays it, so the spin stops at once.

After a miss or a yield the next ``backoff`` waits block at once; ``backoff`` doubles up to
`MAX_BACKOFF` and a hit resets it. Sparse calls thus cost one spin per up to 1024 requests, and
a shared CPU one ``sched_yield()`` per probe.

>>> import os
>>> r, w = os.pipe()
>>> spinner = Spinner(r, budget=50e-6)
>>> os.write(w, b"request")
7
>>> spinner.wait()  # input is there: a hit
>>> spinner.stats()["hits"], spinner.stats()["backoff"]
(1, 0)
>>> os.close(r); os.close(w)
"""

from __future__ import annotations

import os
import select
import time

__all__ = ["MAX_BACKOFF", "SHARED_CPU", "Spinner"]

#: A sched_yield() that takes longer than this (seconds) gave the CPU to another thread. Alone
#: on a CPU one returns in ~0.3 µs (99.9% within 6 µs here); a client that ran meanwhile takes
#: tens of microseconds at least.
SHARED_CPU = 20e-6
#: Most waits that block at once after a miss or a yield, before the next probe.
MAX_BACKOFF = 1024


class Spinner:
    """Looks for input on *fd* for up to *budget* seconds before the caller blocks in read.

    Not thread-safe: it belongs to the one thread that serves the fd.
    """

    __slots__ = (
        "_poll", "_skip", "backoff", "budget", "hits", "misses", "skipped", "spun", "yielded",
    )

    def __init__(self, fd: int, budget: float) -> None:
        if budget <= 0:
            raise ValueError(f"a spin budget must be > 0 seconds, got {budget!r}")
        self.budget = budget
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN | select.POLLHUP)
        self._skip = 0
        self.backoff = 0
        self.hits = self.misses = self.yielded = self.skipped = 0
        self.spun = 0.0  # seconds in spins, all told (yields that gave the CPU away included)

    def wait(self) -> None:
        """Return when input is ready, or when spinning stopped paying (the read then blocks)."""
        if self._skip:
            self._skip -= 1
            self.skipped += 1
            return
        poll, clock, sched_yield = self._poll.poll, time.perf_counter, os.sched_yield
        before = start = clock()
        until = before + self.budget
        while not poll(0):
            sched_yield()
            after = clock()
            if after - before > SHARED_CPU:
                self.yielded += 1
                self._back_off(after - start)
                return
            if after >= until:
                self.misses += 1
                self._back_off(after - start)
                return
            before = after
        self.hits += 1
        self.backoff = 0
        self.spun += clock() - start

    def stats(self) -> dict[str, float]:
        """The budget (µs), how the waits ended and the time spent spinning (µs), as the
        worker's ``info`` reports them."""
        return {
            "budget_us": round(self.budget * 1e6),
            "hits": self.hits,
            "misses": self.misses,
            "yielded": self.yielded,
            "skipped": self.skipped,
            "backoff": self.backoff,
            "spun_us": round(self.spun * 1e6),
        }

    def _back_off(self, spun: float) -> None:
        self.spun += spun
        self.backoff = min(max(1, self.backoff * 2), MAX_BACKOFF)
        self._skip = self.backoff
