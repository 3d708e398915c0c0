"""Saying a thing once per period, not once per event: a lost disk or a storage error
repeats for every chunk read and every request it refuses, and each would log a line."""

from __future__ import annotations

import threading
import time


class OncePer:
    """Which subjects are due to be said again: each at most once per `every` seconds.
    Thread-safe; forgets every subject once more than `max_subjects` were noted (messages may
    name files: their number has no bound)."""

    def __init__(self, every: float, max_subjects: int = 1000) -> None:
        self._every = every
        self._max = max_subjects
        self._lock = threading.Lock()
        self._said: dict[str, float] = {}  # subject -> when it was last said

    def due(self, subject: str) -> bool:
        """Whether `subject` is to be said now; if so, it counts as said."""
        with self._lock:
            now = time.monotonic()
            last = self._said.get(subject)
            if last is not None and now - last < self._every:
                return False
            self._said[subject] = now
            if len(self._said) > self._max:
                self._said.clear()
            return True
