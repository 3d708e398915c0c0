"""Chunkers kept in memory between an upload's requests, their buffers holding its tail."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from edgestore.chunking import StreamChunker
from edgestore.metadata.uploads import TailRef

# Chunkers kept between an upload's requests (settings.upload_warm_bytes of them), their
# buffers holding the staged tail: the next request goes on from memory instead of reading
# the tail back from disk into a new buffer and scanning it again (most of the per-request
# cost, for clients that send small requests).
WARM_SECONDS = 60.0


@dataclass
class _Warm:
    tail: TailRef  # what the chunker holds, as committed
    chunker: StreamChunker
    since: float


class WarmTails:
    """The chunkers of uploads between requests, least recently used first out.

    Used only when the upload's committed tail is still exactly the one the chunker holds
    (another process may have appended since), so it can never resume from stale bytes.
    """

    def __init__(self, budget: int, seconds: float = WARM_SECONDS) -> None:
        self._budget, self._seconds = budget, seconds
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, _Warm] = OrderedDict()
        self._bytes = 0

    def take(self, upload_id: str, tail: TailRef | None) -> StreamChunker | None:
        """The upload's chunker if it holds exactly `tail` (and was kept not too long ago);
        taken out either way: the append owns it now."""
        with self._lock:
            self._prune()  # first: an entry kept too long is gone before it can be taken
            entry = self._pop(upload_id)
        if entry is None or tail is None or entry.tail != tail:
            return None
        return entry.chunker

    def put(self, upload_id: str, tail: TailRef, chunker: StreamChunker) -> None:
        with self._lock:
            self._pop(upload_id)
            self._entries[upload_id] = _Warm(tail, chunker, time.monotonic())
            self._bytes += chunker.capacity
            self._prune()

    def forget(self, upload_id: str) -> None:
        with self._lock:
            self._pop(upload_id)

    def prune(self) -> None:
        """Drop the chunkers kept too long (also done on every take and put)."""
        with self._lock:
            self._prune()

    @property
    def held_bytes(self) -> int:
        return self._bytes

    def _prune(self) -> None:
        now_ = time.monotonic()
        while self._entries and (
            self._bytes > self._budget
            or now_ - next(iter(self._entries.values())).since > self._seconds
        ):
            self._pop(next(iter(self._entries)))

    def _pop(self, upload_id: str) -> _Warm | None:
        entry = self._entries.pop(upload_id, None)
        if entry is not None:
            self._bytes -= entry.chunker.capacity
        return entry
