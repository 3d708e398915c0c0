"""The progress bar's rate and time-left columns, from the bytes actually sent or received:
rich's own count every advance of the bar, so a resume's (or dedup's) skipped bytes showed
as sent just now (loaded with the bar: rich.progress is not imported at CLI start)."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from rich import filesize
from rich.progress import ProgressColumn, Task
from rich.text import Text

WINDOW = 30.0  # seconds the rate is averaged over (rich's speed_estimate_period too)
_UNITS = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]


class SentRate:
    """Bytes moved per second over the last WINDOW seconds (thread-safe). Time with nothing
    moving counts: a stalled link shows its rate falling, not the last one held."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._samples: deque[tuple[float, int]] = deque()
        self._in_window = 0
        self._since: float | None = None

    def begin(self) -> None:
        """The transfer starts: the rate's time counts from here."""
        with self._lock:
            self._since = self._clock()

    def add(self, n: int) -> None:
        with self._lock:
            now = self._clock()
            if self._since is None:
                self._since = now
            self._samples.append((now, n))
            self._in_window += n
            self._prune(now)

    def per_second(self) -> float | None:
        """None until the transfer has begun (and some time has passed)."""
        with self._lock:
            if self._since is None:
                return None
            now = self._clock()
            self._prune(now)
            elapsed = now - max(self._since, now - WINDOW)
            return self._in_window / elapsed if elapsed > 0 else None

    def _prune(self, now: float) -> None:
        while self._samples and self._samples[0][0] < now - WINDOW:
            self._in_window -= self._samples.popleft()[1]


class SentSpeedColumn(ProgressColumn):
    """The rate, in the bar's binary units."""

    def __init__(self, rate: SentRate) -> None:
        super().__init__()
        self._rate = rate

    def render(self, task: Task) -> Text:
        speed = self._rate.per_second()
        if speed is None:
            return Text("?", style="progress.data.speed")
        unit, suffix = filesize.pick_unit_and_suffix(int(speed), _UNITS, 1024)
        shown = f"{int(speed)} B" if unit == 1 else f"{speed / unit:.1f} {suffix}"
        return Text(f"{shown}/s", style="progress.data.speed")


class SentTimeRemainingColumn(ProgressColumn):
    """Time left: the bytes still to move (skipped ones are done) at the rate above."""

    max_refresh = 0.5  # as rich's: no jitter

    def __init__(self, rate: SentRate) -> None:
        super().__init__()
        self._rate = rate

    def render(self, task: Task) -> Text:
        if task.total is None:
            return Text("", style="progress.remaining")
        left = max(0.0, task.total - task.completed)
        speed = self._rate.per_second()
        if left and not speed:
            return Text("-:--:--", style="progress.remaining")
        minutes, seconds = divmod(int(left / speed) if left and speed else 0, 60)
        hours, minutes = divmod(minutes, 60)
        return Text(f"{hours:d}:{minutes:02d}:{seconds:02d}", style="progress.remaining")
