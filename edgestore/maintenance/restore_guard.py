"""The guard against a restored older metadata backup: gc deletes no shard while the
database is behind its data dirs.

The database holds a store epoch; each data dir records the highest epoch it has seen. Every
gc round and every `edgestore backup` (after its snapshot) advances the epoch: the database
first, then the data dirs. A restored backup holds an epoch lower than the one its data dirs
recorded afterwards, so the chunks written since (shards without rows in it) are not taken
for orphans, nor are chunks it thinks unreferenced deleted, until the operator accepts the
restored metadata (`gc --accept-restored-metadata`). No write per chunk: one row and one
small file per data dir per round.
"""

from __future__ import annotations

import logging

from edgestore.engine import Engine
from edgestore.errors import MetadataBehind, StorageError
from edgestore.metadata import epoch as store_epoch
from edgestore.storage.datadirs import read_epoch, record_epoch

log = logging.getLogger(__name__)


def dirs_epochs(engine: Engine) -> dict[str, int]:
    """The epoch each reachable data dir recorded (dirs with none left out)."""
    dirs = engine.core.dirs
    found = {}
    for name, backend in dirs.backends.items():
        if name in dirs.unavailable:
            continue
        seen = read_epoch(backend)
        if seen is not None:
            found[name] = seen
    return found


def behind(engine: Engine, seen: dict[str, int] | None = None) -> MetadataBehind | None:
    """The error to raise when the database is behind a data dir, else None.

    The dirs are read before the database: an advance writes the database first, so a dir
    seen at epoch N means the database was at N or more before it is read (no false alarm
    beside another node advancing). `seen`: the dirs' epochs, read by the caller just now.
    """
    seen = dirs_epochs(engine) if seen is None else seen
    with engine.core.db.read() as conn:
        db_epoch = store_epoch.current(conn)
    ahead = {name: e for name, e in seen.items() if e > db_epoch}
    if not ahead:
        return None
    listed = ", ".join(f"{name} at {e}" for name, e in sorted(ahead.items()))
    return MetadataBehind(
        f"the metadata database (epoch {db_epoch}) is behind its data dirs ({listed}): it was "
        "restored from an older backup, so chunks written after that backup have shards but "
        "no rows. gc deletes nothing until this is settled: restore a newer backup if there "
        "is one, or accept this one with `edgestore gc --accept-restored-metadata` (the "
        "versions written after it are lost, and their shards are then swept as orphans)",
        db_epoch=db_epoch,
        dirs=ahead,
    )


def advance(engine: Engine, *, accept_restored: bool = False) -> int:
    """Advance the epoch, in the database then in every reachable data dir; the new epoch.

    Raises MetadataBehind if the database is behind a data dir, unless `accept_restored`:
    then the epoch goes past the dirs', and the database as it is becomes the store's truth.
    """
    seen = dirs_epochs(engine)  # once: the check and the epoch to pass both read it
    found = behind(engine, seen)
    if found is not None and not accept_restored:
        raise found
    # A node advancing meanwhile wrote the database first: the row's +1 still passes it.
    at_least = max(seen.values(), default=0) + 1
    with engine.core.db.write() as conn:
        new = store_epoch.advance(conn, at_least=at_least)
    if found is not None:
        log.warning(
            "restored metadata accepted: epoch %d past the data dirs' %s",
            new,
            found.details["dirs"],
        )
    dirs = engine.core.dirs
    for name, backend in dirs.backends.items():
        if name in dirs.unavailable:
            continue
        try:
            record_epoch(backend, new)
        except StorageError as exc:  # that dir guards no restore until the next round
            log.warning("could not record epoch %d in data dir %s: %s", new, name, exc)
    return new
