"""Fill in whole-file SHA-256s that could not be computed while uploading.

A tus final upload is assembled from partials' manifests without reading a byte, and SHA-256
states cannot be joined, so its digest is computed afterwards by reading the object back
(which also verifies every chunk). Until then its ETag is the manifest digest.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from edgestore.engine import Engine
from edgestore.errors import StorageError
from edgestore.metadata import objects as object_rows

log = logging.getLogger(__name__)


@dataclass
class DigestCursor:
    """Where the next round goes on: past the versions the last one tried. A version that
    cannot be read keeps no digest; taken first every round, it would hold up every version
    after it (and be read again each time)."""

    after: str | None = None


def fill_missing_sha256(
    engine: Engine,
    limit: int = 10,
    cursor: DigestCursor | None = None,
    check: Callable[[], None] | None = None,
) -> int:
    """Compute up to `limit` missing digests; returns how many were filled.

    `cursor`: carried from round to round, so they take turns (from the start again once
    past the last). `check`: called between chunks; raises to stop (server shutdown)."""
    db = engine.core.db
    with db.read() as conn:
        todo = object_rows.without_sha256(conn, limit, cursor.after if cursor else None)
    if cursor is not None:
        cursor.after = str(todo[-1].version_id) if len(todo) == limit else None
    done = 0
    for info in todo:
        h = hashlib.sha256()
        try:
            for piece in engine.objects.read(info):
                h.update(piece)
                if check is not None:
                    check()
        except StorageError as exc:
            log.warning("cannot hash %s/%s v%d: %s", info.bucket, info.key, info.version, exc)
            continue
        with db.write() as conn:
            object_rows.set_sha256(conn, info.version_id, h.hexdigest())
        done += 1
    return done
