"""Domain value types shared by every layer; this module imports nothing of the project."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import NewType, Protocol, runtime_checkable

ChunkId = NewType("ChunkId", str)
"""Lower-case hex SHA-256 of a chunk's raw bytes."""

UploadId = NewType("UploadId", str)
ObjectId = NewType("ObjectId", str)
VersionId = NewType("VersionId", str)

CHUNK_ID_HEX_LEN = 64

BUCKET_NAME_PATTERN = r"[a-z0-9][a-z0-9._-]{0,62}"
"""What a bucket may be called (the API, the CLI and bucket_quotas in the settings)."""
BUCKET_NAME_RULE = "1-63 characters of a-z, 0-9, '.', '_', '-', starting with a letter or digit"


@runtime_checkable
class Readable(Protocol):
    """A byte source read into the caller's buffer (an open file, standard input): ingest
    reads it straight into the chunker, one copy less per byte than a stream of blocks."""

    def readinto(self, buffer: memoryview, /) -> int | None: ...


class Layout(enum.StrEnum):
    """How a chunk's stored bytes are made redundant."""

    EC = "ec"  # Reed-Solomon k data + m parity shards on distinct data dirs
    REPLICA = "replica"  # n whole copies on distinct data dirs
    INLINE = "inline"  # tiny chunks: kept in the metadata database itself


class Compression(enum.StrEnum):
    NONE = "none"
    ZSTD = "zstd"


@dataclass(frozen=True, slots=True)
class ChunkerParams:
    """FastCDC parameters; fixed per store so the same bytes always cut the same way."""

    min_size: int
    avg_size: int
    max_size: int
    algorithm: str = "fastcdc2020"
    hash: str = "sha256"


@dataclass(frozen=True, slots=True)
class EcParams:
    k: int
    m: int

    @property
    def total(self) -> int:
        return self.k + self.m


@dataclass(frozen=True, slots=True)
class ByteRange:
    """Half-open range [start, end) of an object's bytes."""

    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start


@dataclass(frozen=True, slots=True)
class ShardRef:
    """Where one shard of a chunk lives and how to check it."""

    chunk_id: ChunkId
    shard_index: int
    backend: str
    key: str
    size: int
    checksum: str
