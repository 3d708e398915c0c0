"""What the client reports: results of uploads and downloads, and the progress callback."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Protocol


class Progress(Protocol):
    """Told about a transfer as it runs (from several threads: implementations lock)."""

    def start(self, total: int) -> None: ...

    def transferred(self, n: int) -> None:
        """`n` more bytes crossed the network and were acknowledged."""

    def skipped(self, n: int) -> None:
        """`n` bytes need not travel: the server already has them (dedup or resume)."""


class NoProgress:
    def start(self, total: int) -> None:
        pass

    def transferred(self, n: int) -> None:
        pass

    def skipped(self, n: int) -> None:
        pass


class Counter:
    """A thread-safe running total."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.value = 0

    def add(self, n: int) -> None:
        with self._lock:
            self.value += n


@dataclass(frozen=True, slots=True)
class UploadResult:
    object_id: str | None  # None where a foreign tus server does not say
    version: int | None
    sha256: str  # of the file as read (and, where the server reports it, as stored)
    bytes_sent: int  # body bytes put on the wire, retries included
    bytes_skipped: int  # file bytes the server already had (dedup, or an earlier attempt)
    seconds: float
    size: int
    bucket: str
    key: str | None
    version_id: str | None
    upload: str  # native session id, or the tus upload URL
    protocol: str
    workers: int  # connections at the end (with 'auto': the level it settled on)
    chunks: int  # native: chunks in the manifest; tus: parts
    chunks_sent: int
    retries: int
    resumed: bool  # continued an earlier, interrupted attempt
    # workers='auto': (connections, bytes/s) measured at each level tried, in order
    auto_levels: tuple[tuple[int, float], ...] = ()

    @property
    def bytes_per_second(self) -> float:
        """File bytes made durable per second (skipped bytes count: that is dedup's gain)."""
        return self.size / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True, slots=True)
class DownloadResult:
    path: str
    size: int
    sha256: str
    verified: bool  # False only where the server knows no whole-file SHA-256 yet
    bytes_received: int
    bytes_resumed: int  # already in the .part file from an earlier attempt
    seconds: float
    object_id: str | None
    version: int | None
    retries: int
