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


class CommitProgress(Progress, Protocol):
    """A Progress that is also told when the server starts to commit an upload. Optional:
    the client calls `committing()` only on objects that have it (`tell_committing`), so a
    Progress written with the three methods above still works unchanged."""

    def committing(self) -> None:
        """Every byte is sent; the server is committing the upload. A native finalize reads
        the file back to hash it (minutes for 20 GB): the transfer is not done until then."""


def tell_committing(progress: Progress) -> None:
    """`progress.committing()` where it has one (see CommitProgress)."""
    hook = getattr(progress, "committing", None)
    if callable(hook):
        hook()


class NoProgress:
    def start(self, total: int) -> None:
        pass

    def transferred(self, n: int) -> None:
        pass

    def skipped(self, n: int) -> None:
        pass

    def committing(self) -> None:
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
