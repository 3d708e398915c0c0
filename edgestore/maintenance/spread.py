"""Spreading a chunk again: move a shard that shares a data dir with another of the chunk's
back to a dir holding none of them, once one can take it.

A repair around a dir that was down or full can leave two shards of a chunk on one dir
(inplace.py): losing that dir then costs two shards, less fault tolerance than configured.
Such a repair keeps the chunk queued (metadata/crowding.py says when a chunk is doubled up:
only more on one dir than placement would put there with the dirs configured, so a store
with fewer dirs than shards is no fault). When `repair` finds all of a queued chunk's shards
intact, it asks `spread`: each shard over the limit goes to its natural dir (where placement
puts it: a replaced disk) or another holding fewer than the limit, if that dir is up and has
room. The file is written there durably (put: a temporary name, fsync, rename), the rows
switched in one durable commit under the chunk's generation, and only then the old file
deleted, if no row names it. What cannot move yet stays queued, backing off.

`queue_crowded` finds chunks doubled up by other means (a release before this one, a queue
entry lost) for `edgestore repair --spread`: the shards table paged in chunk id order.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from edgestore.codec import shardfile
from edgestore.engine import Engine
from edgestore.engine.read import Examined
from edgestore.errors import StorageError
from edgestore.maintenance.inplace import (
    cannot_take,
    remove_unnamed,
    restore_files,
    write_files,
)
from edgestore.metadata import chunks as chunk_index
from edgestore.metadata import crowding
from edgestore.metadata.chunks import ChunkRecord
from edgestore.metadata.clock import now
from edgestore.storage.placement import doubled_up, most_per_backend, place
from edgestore.types import ShardRef

log = logging.getLogger(__name__)

PAGE = 500  # doubled-up chunks queued per read of the shards table (and write transaction)


@dataclass(frozen=True, slots=True)
class Spread:
    """What `spread` did with a doubled-up chunk."""

    moved: dict[int, tuple[str, str]]  # shard index -> (the dir it left, the dir it is on)
    left: str | None  # still doubled up (why): queued, backing off
    bytes_written: int


def spread(
    engine: Engine,
    rec: ChunkRecord,
    found: Examined,
    checked_at: float,
    retry_delay: Callable[[int], float],
) -> Spread | None:
    """Move the doubled-up shards of a chunk whose shards `found` all intact; None if it is
    not doubled up (the caller takes it off the queue) or was stored again or collected
    meanwhile (nothing committed). Where a shard has nowhere to go yet, the chunk stays
    queued and its next try is put off by `retry_delay(attempts)`."""
    core = engine.core
    names = core.dirs.names
    why = doubled_up(rec.shards, names)
    if why is None or found.stored is None:
        return None
    moves = _plan(engine, rec, most_per_backend(len(rec.shards), len(names)))
    refs = [
        ShardRef(r.chunk_id, r.shard_index, moves[r.shard_index], r.key, r.size, r.checksum)
        for r in rec.shards
        if r.shard_index in moves
    ]
    files = _files(engine, rec, found.stored, refs)
    try:
        if files:  # durable on return: before any row names them
            write_files(engine, rec.chunk_id, refs, files, refs)
    except StorageError as exc:
        log.warning("spread: chunk %s: could not write a shard elsewhere: %s", rec.chunk_id, exc)
        files = None
    if not files:
        refs = []  # nothing moves: it stays queued, backing off
    after = {**{r.shard_index: r for r in rec.shards}, **{r.shard_index: r for r in refs}}
    still = doubled_up(list(after.values()), names)
    with core.db.write() as conn:  # durable: the old files are deleted right after
        left: bool | None = True
        if refs:
            left = chunk_index.replace_shards(conn, rec.chunk_id, rec.generation, refs, checked_at)
            if left is not None and files:  # (a repair beside this one may have removed one)
                restore_files(engine, refs, files)
            if left and still is not None:  # (not left: a fault seen since keeps it queued)
                crowding.queue(core.db, conn, rec.chunk_id, still, 0)
        backoff = None
        if left and still is not None:
            backoff = chunk_index.back_off_repair(conn, rec.chunk_id, retry_delay)
        t = now(conn)
    if left is None:
        remove_unnamed(engine, rec.chunk_id, refs)  # collected or stored again meanwhile
        return None
    old = [r for r in rec.shards if r.shard_index in {m.shard_index for m in refs}]
    remove_unnamed(engine, rec.chunk_id, old)  # once the switch is durable; if no row names it
    moved = {r.shard_index: (r.backend, moves[r.shard_index]) for r in old}
    if moved:
        log.warning(
            "spread: chunk %s: moved %s (it had: %s)",
            rec.chunk_id,
            ", ".join(f"#{i} from {a} to {b}" for i, (a, b) in sorted(moved.items())),
            why,
        )
    if still is not None:
        log.info(
            "spread: chunk %s: %s; no data dir holding fewer of its shards can take one now%s",
            rec.chunk_id,
            still,
            "" if backoff is None else f" (tried again in {(backoff[1] - t) / 3600:.1f} h)",
        )
    return Spread(moved, still, sum(shardfile.HEADER_SIZE + r.size for r in refs))


def _plan(engine: Engine, rec: ChunkRecord, most: int) -> dict[int, str]:
    """Where each shard over `most` on its dir goes (shard index -> data dir): its natural
    dir if that can take it, else the first up dir with room holding fewer than `most`. A
    dir's shards that placement puts elsewhere leave first; those with nowhere to go stay."""
    dirs = engine.core.dirs
    natural = place(rec.chunk_id, rec.ec_k + rec.ec_m, dirs.names)
    up = [n for n in dirs.names if n not in dirs.unavailable]
    holding = Counter(r.backend for r in rec.shards)
    moves: dict[int, str] = {}
    order = sorted(rec.shards, key=lambda r: (natural[r.shard_index] == r.backend, r.shard_index))
    for ref in order:
        if holding[ref.backend] <= most:
            continue
        need = shardfile.HEADER_SIZE + ref.size
        for name in [natural[ref.shard_index], *up]:
            if holding[name] < most and cannot_take(engine, name, need) is None:
                moves[ref.shard_index] = name
                holding[ref.backend] -= 1
                holding[name] += 1
                break
    return moves


def _files(
    engine: Engine, rec: ChunkRecord, stored: bytes, refs: list[ShardRef]
) -> dict[int, shardfile.ShardFile] | None:
    """The moving shards' files, encoded again from the chunk's verified stored bytes (not
    copied: a file that rotted since its check is not carried over); None if the encoding
    does not reproduce their rows (another encoder: they stay where they are)."""
    if not refs:
        return {}
    files = shardfile.build(
        engine.core.reader.codec(rec),
        rec.chunk_id,
        rec.layout,
        rec.ec_k,
        rec.ec_m,
        rec.compression,
        stored,
    )
    for ref in refs:
        header = files[ref.shard_index].header if ref.shard_index < len(files) else None
        if header is None or (header.payload_checksum, header.payload_length) != (
            ref.checksum,
            ref.size,
        ):
            log.info(
                "spread: chunk %s: shard %d encoded again differs from its row (another "
                "encoder?); left where it is",
                rec.chunk_id,
                ref.shard_index,
            )
            return None
    return {ref.shard_index: files[ref.shard_index] for ref in refs}


def queue_crowded(engine: Engine, progress: Callable[[int], None] = lambda _n: None) -> int:
    """Queue every doubled-up chunk (due now) for `repair` to spread; how many are queued.
    Pages through the shards table in chunk id order, one statement per page."""
    db = engine.core.db
    names = engine.core.dirs.names
    after: str | None = None
    found = 0
    while True:
        with db.read() as conn:
            ids = [cid for cid, _most in crowding.page(conn, after, PAGE, len(names))]
        if not ids:
            return found
        with db.read() as conn:
            records = chunk_index.load(conn, ids)
        with db.write() as conn:
            for cid, rec in records.items():
                why = doubled_up(rec.shards, names)
                if why is not None:  # (spread meanwhile otherwise)
                    crowding.queue(db, conn, cid, why, 0)
                    found += 1
        after = ids[-1]
        progress(found)
