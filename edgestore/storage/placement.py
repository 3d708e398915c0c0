"""Shard placement: which backend holds which shard of a chunk (pure).

The start backend rotates with the chunk id, so load spreads evenly and two nodes placing the
same chunk choose the same backends. Shards of a chunk never share a backend while there are
at least as many backends as shards.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from edgestore.types import ChunkId, ShardRef

_HEX64 = re.compile(r"[0-9a-f]{64}")
_DIGITS = re.compile(r"[0-9]{1,3}")


def place(chunk: ChunkId, shard_count: int, backends: Sequence[str]) -> list[str]:
    """Backend name for each shard index 0..shard_count-1."""
    if not backends:
        raise ValueError("no backends to place shards on")
    start = int(chunk[:8], 16) % len(backends)
    return [backends[(start + i) % len(backends)] for i in range(shard_count)]


def most_per_backend(shard_count: int, backends: int) -> int:
    """The most shards of a chunk `place` puts on one of `backends`: one while there are at
    least as many backends as shards, 3 of 9 on 3."""
    return -(-shard_count // max(backends, 1))


def doubled_up(refs: Sequence[ShardRef], backends: Sequence[str]) -> str | None:
    """Why a chunk with these shards has more of them on one backend than `place` would put
    there with `backends` (losing it costs more shards than configured), e.g. "shard 4
    shares data dir d2 with shard 3", naming first those placed there; None if it has not."""
    if not refs:
        return None
    most = most_per_backend(len(refs), len(backends))
    natural = place(refs[0].chunk_id, max(r.shard_index for r in refs) + 1, backends)
    on: dict[str, list[int]] = {}
    for ref in sorted(refs, key=lambda r: (natural[r.shard_index] != r.backend, r.shard_index)):
        on.setdefault(ref.backend, []).append(ref.shard_index)
    over = [(b, i) for b, i in on.items() if len(i) > most]
    if not over:
        return None
    return "; ".join(
        f"shard{'s' * (len(i) > 2)} {', '.join(map(str, i[1:]))} share{'s' * (len(i) == 2)} "
        f"data dir {b} with shard {i[0]}"
        for b, i in sorted(over)
    )


def shard_key(chunk: ChunkId, generation: str, shard_index: int) -> str:
    """Blob key of a shard: fanned out by the chunk id's first 3 hex digits, unique per write.

    4096 directories per data dir keep each one small (25 million chunks: ~6,000 files each)
    without paying for a second level of directory creation and fsync.

    The generation (random per write) keeps two writers of the same chunk, or a writer and a
    garbage collector, from ever touching each other's files.
    """
    return f"{chunk[:3]}/{chunk}.{generation}.{shard_index}"


def parse_shard_key(key: str) -> tuple[ChunkId, str, int] | None:
    """Inverse of shard_key; None for anything that is not a shard key."""
    parts = key.rsplit("/", 1)[-1].split(".")
    if len(parts) != 3:
        return None
    chunk, generation, index = parts
    if not (_HEX64.fullmatch(chunk) and _DIGITS.fullmatch(index) and generation):
        return None
    return ChunkId(chunk), generation, int(index)
