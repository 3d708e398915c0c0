"""How many transfers run at once: a gate whose width can change, and the 'auto' controller.

Why adaptive: the right number of connections depends on the path. On a clean path with BBR
one or two flows fill the link and more only add overhead; on a lossy path with CUBIC each
flow is capped by loss (~window/RTT), so throughput grows almost linearly with flows.

A "connection" here is a sender's turn to send a chunk body; each turn has a second
connection waiting for an answer (client/native.py).

The auto algorithm (one upward search, then hold):
1. Run at 6 connections. Each level gets `warmup` seconds to ramp up (slow start of any new
   connection and its overshoot on a lossy path, not measured; the first level, whose
   connections are all new, `first_warmup`), then `window` seconds of
   measurement: throughput = body bytes handed to the sockets (which hold little unsent, see
   client/http.py) in the window / its length. A window in which fewer than
   `min_bytes` moved (nothing to send: dedup, a slow reader) is discarded and measured again.
2. If the level's throughput is higher than the previous level's by at least `gain` (2%, a
   margin over jitter), step up to the next level of 6, 8, 11, 16 (about x1.4 each).
3. If it is about the same (from `tolerance`, 5%, below to `gain` above), the step did not
   pay but did not hurt: hold this level. Extra connections are cheap, and each one hides
   the idle time of the others between two chunk requests (a round trip plus the server
   making the chunk durable), so near the link rate more is the safer side of the noise.
4. If it is lower, the step hurt (queueing, a congested server): go back to the previous
   level and hold it. Reaching 16 holds too.

Why these margins, measured over an emulated 40 ms / 500 Mbit/s path with 0.1% loss
(bench/wan.py): new CUBIC connections overshoot after slow start and take many seconds to
settle, so the first level reads high (4 connections: 8.9 MB/s in its window, 5.3 MB/s over
the whole transfer) and a real gain looks small; starting at 2 and undoing every step under
+10% stopped the search at 2-3 connections (2.8 MB/s, while 6 fixed connections made 7.9).
It started at 4 until 4 measured below 6 in every window of four runs on both BBR and CUBIC
(BBR: 46-52 MB/s at 4 against 59-61 at 6; CUBIC: 9.0 against 12.0), so 6 is the start.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from types import TracebackType

LEVELS = (6, 8, 11, 16)
MAX_WORKERS = LEVELS[-1]
MiB = 1024 * 1024


class Gate:
    """At most `limit` holders at once; the limit may change while threads wait."""

    def __init__(self, limit: int) -> None:
        self._cond = threading.Condition()
        self._limit = max(1, limit)
        self._held = 0

    @property
    def limit(self) -> int:
        return self._limit

    def set_limit(self, limit: int) -> None:
        with self._cond:
            self._limit = max(1, limit)
            self._cond.notify_all()

    def acquire(self, stop: threading.Event | None = None) -> bool:
        """Enter when there is room; False if `stop` was set while waiting."""
        with self._cond:
            while self._held >= self._limit:
                if stop is not None and stop.is_set():
                    return False
                self._cond.wait(0.2)
            self._held += 1
            return True

    def release(self) -> None:
        with self._cond:
            self._held -= 1
            self._cond.notify_all()

    def __enter__(self) -> Gate:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


class Stopped(Exception):
    """Another thread failed: wind down without reporting anything."""


class Turn:
    """One sender's place at the gate, taken at most once at a time, given back at most once."""

    def __init__(self, gate: Gate, stop: threading.Event) -> None:
        self._gate = gate
        self._stop = stop
        self._held = False

    def take(self) -> None:
        if not self._held:
            if not self._gate.acquire(self._stop):
                raise Stopped
            self._held = True

    def give(self) -> None:
        if self._held:
            self._held = False
            self._gate.release()


class Budget:
    """Bytes a producer may be ahead of its consumers; one item may always pass."""

    def __init__(self, limit: int) -> None:
        self._cond = threading.Condition()
        self._limit = limit
        self._used = 0

    def take(self, n: int, stop: threading.Event) -> bool:
        """Wait for room for `n` bytes; False if `stop` was set meanwhile."""
        with self._cond:
            while self._used and self._used + n > self._limit:
                if stop.is_set():
                    return False
                self._cond.wait(0.2)
            self._used += n
            return True

    def give(self, n: int) -> None:
        with self._cond:
            self._used = max(0, self._used - n)
            self._cond.notify_all()


@dataclass
class AutoWorkers:
    """Chooses the number of connections from measured throughput (see the module doc)."""

    gain: float = 1.02
    tolerance: float = 0.05
    warmup: float = 1.0
    first_warmup: float = 3.0
    window: float = 2.0
    min_bytes: int = 1 * MiB
    levels: tuple[int, ...] = LEVELS
    history: list[tuple[int, float]] = field(default_factory=list)  # (level, bytes/s)
    _index: int = 0
    _settled: bool = False
    _level_since: float | None = None
    _window_start: tuple[float, int] | None = None

    @property
    def level(self) -> int:
        return self.levels[self._index]

    @property
    def settled(self) -> bool:
        return self._settled

    def update(self, sent: int, now: float) -> int:
        """Feed the running total of bytes sent; returns the level to run at from now on."""
        if self._settled:
            return self.level
        if self._level_since is None:
            self._level_since = now
        if self._window_start is None:
            warmup = self.warmup if self.history else self.first_warmup
            if now - self._level_since >= warmup:
                self._window_start = (now, sent)
            return self.level
        started, base = self._window_start
        if now - started < self.window:
            return self.level
        moved = sent - base
        if moved < self.min_bytes:
            self._window_start = (now, sent)  # nothing to measure: look again
            return self.level
        rate = moved / (now - started)
        previous = self.history[-1][1] if self.history else None
        self.history.append((self.level, rate))
        if previous is not None and rate < (1.0 - self.tolerance) * previous:
            self._index -= 1  # this step hurt: back to the previous level
            self._settled = True
        elif previous is not None and rate < self.gain * previous:
            self._settled = True  # it did not pay, nor hurt: hold here
        elif self._index + 1 >= len(self.levels):
            self._settled = True
        else:
            self._index += 1
            self._level_since, self._window_start = now, None
        return self.level
