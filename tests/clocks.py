"""Shifting this process's wall clock, as another node's (skewed) or this node's after a jump
would read: `time.time`, the function edgestore reads the wall clock with, is patched."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

HOUR = 3600.0
DAY = 24 * HOUR
YEAR = 365 * DAY


@contextmanager
def wall_clock_off_by(monkeypatch: pytest.MonkeyPatch, seconds: float) -> Iterator[None]:
    """Within the block, time.time() is `seconds` ahead (negative: behind) of the real one."""
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + seconds)
    try:
        yield
    finally:
        monkeypatch.setattr(time, "time", real)
