"""The storage backend protocol: a flat namespace of immutable blobs, written durably.

Backends know files and buckets, never SQL. Cross-cutting behaviour (retries, limits,
metrics) wraps a backend and is itself a backend; every backend passes
tests/storage/test_backend_contract.py.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

Buffer = bytes | bytearray | memoryview


@dataclass(frozen=True, slots=True)
class BlobInfo:
    key: str
    size: int
    mtime: float


@dataclass(frozen=True, slots=True)
class Usage:
    total_bytes: int
    free_bytes: int


@runtime_checkable
class Backend(Protocol):
    """One place shards can be stored: a data dir on a disk, a bucket, a remote node."""

    name: str

    def put(self, key: str, parts: Sequence[Buffer]) -> None:
        """Store the concatenated parts under key; durable when this returns. Overwrites."""
        ...

    def write(self, key: str, parts: Sequence[Buffer]) -> None:
        """Store the parts under key, durable only after the next flush() (batching)."""
        ...

    def write_at(self, key: str, offset: int, parts: Sequence[Buffer]) -> None:
        """Write the parts into the blob at offset (created if missing), keeping the bytes
        before it; durable only after the next flush()."""
        ...

    def flush(self) -> None:
        """Make every write() so far durable."""
        ...

    def get(self, key: str, limit: int | None = None) -> bytes:
        """The whole blob, or its first `limit` bytes (a reader that knows how long it must
        be reads no more of a blob grown by damage); raises ShardMissing if absent,
        StorageUnavailable if unreachable."""
        ...

    def delete(self, key: str) -> None:
        """Remove the blob; absent is not an error."""
        ...

    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        """Every blob whose key starts with prefix, in no particular order."""
        ...

    def list_groups(self) -> Iterator[list[BlobInfo]]:
        """Every blob, as list() gives them, in groups of a bounded size (one fan-out dir
        each): a caller going through millions holds one group at a time."""
        ...

    def stat(self, key: str) -> BlobInfo | None: ...

    def check(self) -> None:
        """Raise StorageUnavailable (with the reason) unless the backend can take writes."""
        ...

    def usage(self) -> Usage: ...
