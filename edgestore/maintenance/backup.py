"""`edgestore backup`: a consistent snapshot of the metadata while the store runs, written
to a temporary name, checked, fsynced and renamed; then the store epoch advances, so that
restoring this backup later is recognised (see restore_guard)."""

from __future__ import annotations

import logging
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from edgestore.engine import Engine
from edgestore.errors import BackupFailed, MetadataBehind, StorageError
from edgestore.maintenance import restore_guard
from edgestore.metadata import pgdump
from edgestore.metadata.backup import BackupContents, inspect, snapshot_sqlite
from edgestore.storage.local import fsync_dir

log = logging.getLogger(__name__)


@dataclass
class BackupReport:
    path: str
    bytes: int
    seconds: float
    contents: BackupContents
    epoch: int | None  # the store's epoch now, past the backup's (None: not advanced)
    warning: str | None = None  # why a restore of it may go unrecognised


def default_name(is_postgres: bool) -> str:
    """The file name a backup gets in a directory given as OUT: sortable by time."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return f"edgestore-{stamp}.{'pgdump' if is_postgres else 'db'}"


def take(engine: Engine, out: Path, *, force: bool = False) -> BackupReport:
    """Back the metadata up to `out`. Raises FileExistsError if `out` exists and not
    `force`; BackupFailed if the copy cannot be taken or does not check out (nothing is left
    at `out` then)."""
    started = time.monotonic()
    if out.exists() and not force:
        raise FileExistsError(out)
    db = engine.core.db
    tmp = out.with_name(f".{out.name}.{secrets.token_hex(4)}.tmp")
    try:
        if db.is_postgres:
            pgdump.dump(db.url, tmp)
        else:
            assert db.path is not None
            snapshot_sqlite(db.path, tmp)
        contents = inspect(tmp)
        if contents.problems:
            raise BackupFailed(f"the copy does not check out: {'; '.join(contents.problems)}")
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        if out.exists() and not force:  # another backup took the name meanwhile
            raise FileExistsError(out)
        os.replace(tmp, out)
        fsync_dir(out.parent)
    finally:
        tmp.unlink(missing_ok=True)
    contents.path = str(out)
    report = BackupReport(
        path=str(out),
        bytes=out.stat().st_size,
        seconds=0.0,
        contents=contents,
        epoch=None,
    )
    try:
        report.epoch = restore_guard.advance(engine)
    except (MetadataBehind, StorageError) as exc:  # the backup itself is sound
        report.warning = exc.message
    report.seconds = time.monotonic() - started
    return report
