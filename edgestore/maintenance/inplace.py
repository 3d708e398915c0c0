"""Repair in place: rebuild only a damaged chunk's bad shards, under its own generation.

Storing the whole chunk again (a new generation of k+m shards) needs room for every shard on
the dirs that kept theirs, so after a failed disk is replaced on a store more than about half
full most chunks could not be repaired ("full"); and it rewrote 9 files to fix 1. Here the
shard files are encoded again from the chunk's stored bytes, and only the bad ones written:
each to its own data dir (a replaced disk carries the same name) under its own key, or, where
that dir is full (or down, if `around_down`), to another one, preferring a dir that holds no
other shard of the chunk. The rows of the rebuilt shards change in one durable commit; the
other shards' files and rows are not touched. Where a shard had to join another of the
chunk's on one dir, the same commit keeps the chunk queued, to be spread again once a dir
holding none of its shards can take one (spread.py).

It is done only where the result is the same chunk as before: every shard the rebuild does
not replace must have the checksum and length its row records (another encoder, or another
build of the same one, could lay the bytes out otherwise, and shards of two encodings do not
decode together). Otherwise the caller stores the chunk again as a whole.

Two repairs of one chunk may run at once (`edgestore repair` by hand claims nothing): both
write the same bytes under the same keys, or one places a shard elsewhere. A file is deleted
only under the chunk's row lock once no row names it, and the rows are committed under that
lock with every file they name there, so neither repair leaves a row naming a missing file.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

from edgestore.codec import shardfile
from edgestore.engine import Engine
from edgestore.engine.read import Examined
from edgestore.errors import StorageError, StorageFull, StorageUnavailable
from edgestore.metadata import chunks as chunk_index
from edgestore.metadata import crowding, garbage
from edgestore.metadata.chunks import ChunkRecord
from edgestore.storage.datadirs import check_room
from edgestore.storage.placement import doubled_up, place, shard_key
from edgestore.types import ShardRef

log = logging.getLogger(__name__)

# A repair that leaves two shards of a chunk on one dir (its own was down or full) queues the
# chunk to be spread again (spread.py), first due this much later: the dir is rarely back sooner.
SPREAD_AFTER_SECONDS = 600.0


@dataclass(frozen=True, slots=True)
class Rebuilt:
    """What an in-place repair did."""

    refs: list[ShardRef]  # the rebuilt shards, where they are now
    moved_from: dict[int, str]  # shard index -> the data dir it was on, for shards placed elsewhere
    bytes_written: int
    current: bool  # False: collected or stored again meanwhile; nothing committed, files removed
    unqueued: bool  # off the repair queue (else a fault seen since the check keeps it there)


def rebuild(
    engine: Engine, rec: ChunkRecord, found: Examined, checked_at: float, *, around_down: bool
) -> Rebuilt | None:
    """Rebuild and commit the chunk's bad shards (the faults `found` names); None if that
    would not give the same chunk (see the module docstring): the caller stores it again.

    Raises StorageError (nothing committed, none of its files left but those another
    repair's rows name) if a bad shard has nowhere to go: its own dir down (and not
    `around_down`) or full, and no other dir with room."""
    if found.stored is None or any(f.shard_index < 0 for f in found.faults):
        return None  # inline, or decoded to other bytes: no shard to blame
    core = engine.core
    files = shardfile.build(
        core.reader.codec(rec),
        rec.chunk_id,
        rec.layout,
        rec.ec_k,
        rec.ec_m,
        rec.compression,
        found.stored,
    )
    bad = sorted({f.shard_index for f in found.faults})
    rows = {ref.shard_index: ref for ref in rec.shards}
    if len(files) != rec.ec_k + rec.ec_m or bad[-1] >= len(files):
        return None
    for index, ref in rows.items():
        header = files[index].header if index < len(files) else None
        if index not in bad and (
            header is None
            or (header.payload_checksum, header.payload_length) != (ref.checksum, ref.size)
        ):
            log.info(
                "repair: chunk %s: shard %d rebuilt differs from its row (another encoder?); "
                "storing the chunk again as a whole instead",
                rec.chunk_id,
                index,
            )
            return None
    placed = _destinations(engine, rec, rows, bad, files, around_down=around_down)
    refs = [
        ShardRef(
            rec.chunk_id,
            i,
            placed[i],
            rows[i].key if i in rows else shard_key(rec.chunk_id, rec.generation, i),
            files[i].header.payload_length,
            files[i].header.payload_checksum,
        )
        for i in bad
    ]
    fresh = [r for r in refs if (r.backend, r.key) != _at(rows.get(r.shard_index))]
    rebuilt = {i: files[i] for i in bad}
    write_files(engine, rec.chunk_id, refs, rebuilt, fresh)
    moved = {i: rows[i].backend for i in bad if i in rows and rows[i].backend != placed[i]}
    now_at = {**rows, **{r.shard_index: r for r in refs}}
    doubled = doubled_up(list(now_at.values()), core.dirs.names)
    try:
        # Durable (the default): the old file of a shard placed elsewhere is deleted right
        # after, and a commit a power cut undid would leave its row naming a file not there.
        with core.db.write() as conn:
            left = chunk_index.replace_shards(conn, rec.chunk_id, rec.generation, refs, checked_at)
            if left is not None:
                restore_files(engine, refs, rebuilt)
            if left is not None and doubled is not None:  # queued in the same commit
                off = ", ".join(sorted(set(moved.values())))
                why = f" (rebuilt there: {off} down or full)" if off else ""
                crowding.queue(core.db, conn, rec.chunk_id, doubled + why, SPREAD_AFTER_SECONDS)
    except BaseException:
        remove_unnamed(engine, rec.chunk_id, fresh)
        raise
    written = sum(shardfile.HEADER_SIZE + r.size for r in refs)
    if left is None:  # no row names these keys (they carry the generation it no longer has)
        remove_unnamed(engine, rec.chunk_id, refs)
        return Rebuilt(refs, {}, written, current=False, unqueued=False)
    remove_unnamed(engine, rec.chunk_id, [rows[i] for i in moved])
    return Rebuilt(refs, moved, written, current=True, unqueued=left)


def _at(ref: ShardRef | None) -> tuple[str, str] | None:
    return None if ref is None else (ref.backend, ref.key)


def _destinations(
    engine: Engine,
    rec: ChunkRecord,
    rows: dict[int, ShardRef],
    bad: list[int],
    files: list[shardfile.ShardFile],
    *,
    around_down: bool,
) -> dict[int, str]:
    """The data dir each bad shard goes to: its own if it can take the file now, else the
    writable dir with room holding the fewest shards of the chunk (none, while there are
    more dirs than shards), in the dirs' order. Those staying on their own dir are placed
    first: they hold a shard of the chunk, and take room there, before another is moved."""
    dirs = engine.core.dirs
    up = [n for n in dirs.names if n not in dirs.unavailable]
    natural = place(rec.chunk_id, len(files), up) if up else []
    holding = Counter(ref.backend for i, ref in rows.items() if i not in bad)
    taken: Counter[str] = Counter()  # bytes placed on each dir so far
    placed: dict[int, str] = {}
    elsewhere: dict[int, tuple[str, StorageError]] = {}  # shard -> its own dir, why not there
    for i in bad:
        need = shardfile.HEADER_SIZE + files[i].header.payload_length
        own = rows[i].backend if i in rows else (natural[i] if natural else "")
        why = cannot_take(engine, own, need + taken[own])
        if why is None:
            placed[i] = own
            holding[own] += 1
            taken[own] += need
        elif isinstance(why, StorageUnavailable) and not around_down:
            raise why
        else:
            elsewhere[i] = (own, why)
    for i, (own, why) in elsewhere.items():
        need = shardfile.HEADER_SIZE + files[i].header.payload_length
        others = [n for n in up if n != own and cannot_take(engine, n, need + taken[n]) is None]
        if not others:
            raise StorageFull(
                f"shard {i} of chunk {rec.chunk_id} has nowhere to go ({why}; no other "
                "data dir can take it)"
            )
        placed[i] = min(others, key=lambda n: holding[n])  # (min keeps the first of ties)
        holding[placed[i]] += 1
        taken[placed[i]] += need
    return placed


def cannot_take(engine: Engine, name: str, need: int) -> StorageError | None:
    """Why data dir `name` cannot take a new file of `need` bytes now (None: it can)."""
    dirs = engine.core.dirs
    backend = dirs.backends.get(name)
    if backend is None or name in dirs.unavailable:
        return StorageUnavailable(dirs.unavailable.get(name, f"data dir {name} is not configured"))
    try:
        check_room(backend, need)
    except StorageError as exc:
        return exc
    return None


def write_files(
    engine: Engine,
    chunk: str,
    refs: list[ShardRef],
    files: dict[int, shardfile.ShardFile],
    fresh: list[ShardRef],
) -> None:
    """Write the rebuilt files, durable on return. `put` (a temporary name, fsync, rename),
    not `write` and a flush: a file rebuilt under its own key replaces the one there in one
    rename, so a reader (or a crash) never meets it half written, even where that file was
    intact after all (its dir back by now). On failure the `fresh` ones written (at a new
    place) are removed unless a row names them (another repair's); one rewritten in place
    stays: its row's bytes."""
    backends = engine.core.dirs.backends
    done: set[int] = set()
    try:
        for ref in refs:
            backends[ref.backend].put(ref.key, files[ref.shard_index].parts)
            done.add(ref.shard_index)
    except BaseException:
        remove_unnamed(engine, chunk, [ref for ref in fresh if ref.shard_index in done])
        raise


def restore_files(
    engine: Engine, refs: list[ShardRef], files: dict[int, shardfile.ShardFile]
) -> None:
    """Write again any rebuilt file gone since it was written, inside the transaction that
    commits its row and holds the chunk's row lock: another repair of the chunk, giving up
    or moving a shard, removed it when no row named it yet (each removes only under that
    lock, so none can once this commits)."""
    backends = engine.core.dirs.backends
    for ref in refs:
        if backends[ref.backend].stat(ref.key) is None:
            log.info(
                "repair: shard %s was removed by another repair meanwhile; written again", ref.key
            )
            backends[ref.backend].put(ref.key, files[ref.shard_index].parts)


def remove_unnamed(engine: Engine, chunk: str, refs: list[ShardRef]) -> None:
    """Delete the files of `refs` that no row names (unused rebuilt files, or the old files
    of shards rebuilt elsewhere), on the dirs that are up. Best effort: a file left behind
    is an orphan the sweep takes.

    Checked and deleted under the chunk's row lock: another repair of the same chunk may
    have put a file under the same name, and commits its row under that lock, restoring
    first any file gone meanwhile; so a file a row names is never deleted, nor one a row is
    about to name left missing.

    Safe with a metadata backup from before the repair restored later: it names the old
    files, but each was missing or corrupt anyway (that is why its shard was rebuilt
    elsewhere), so the chunk is as readable under it as it was before the repair, from the
    other shards' files, which are untouched and still named; scrub finds the bad one again."""
    dirs = engine.core.dirs
    up = [r for r in refs if r.backend in dirs.backends and r.backend not in dirs.unavailable]
    if not up:
        return
    try:
        with engine.core.db.write(durable=False) as conn:  # (it writes no row)
            chunk_index.lock(conn, chunk)
            for ref in up:
                if garbage.known_shard_keys(conn, ref.backend, [ref.key]):
                    continue
                try:
                    dirs.backends[ref.backend].delete(ref.key)
                except StorageError as exc:
                    log.info("repair: could not remove unused shard file %s: %s", ref.key, exc)
    except Exception as exc:  # (a repair may be committed: nothing here may undo it)
        log.warning("repair: could not remove unused shard files of chunk %s: %s", chunk, exc)
