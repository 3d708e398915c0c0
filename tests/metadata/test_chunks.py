"""Reference counts changed by signed amounts in one pass (chunks.change_refs): what a native
finalize does with its manifest's references and its session's pins."""

from __future__ import annotations

from collections import Counter

import sqlalchemy as sa

from edgestore.metadata import chunks as chunk_index
from edgestore.metadata.db import Database
from edgestore.metadata.schema import chunks
from edgestore.types import ChunkId, Compression, Layout


def _stored(db: Database, names: str) -> dict[str, str]:
    ids = {name: name * 64 for name in names}
    with db.write() as conn:
        for cid in ids.values():
            record = chunk_index.ChunkRecord(
                ChunkId(cid), 1, 1, Compression("none"), Layout.INLINE, 1, 0, 1, "g", 0, b"x"
            )
            assert chunk_index.insert(db, conn, record, [])
    return ids


def _rows(db: Database) -> dict[str, tuple[int, bool]]:
    """Each chunk's (refcount, in its grace period)."""
    with db.read() as conn:
        rows = conn.execute(sa.select(chunks.c.chunk_id, chunks.c.refcount, chunks.c.zero_since))
        return {r.chunk_id[0]: (r.refcount, r.zero_since is not None) for r in rows}


def test_signed_changes_in_one_call(db_url: str) -> None:
    """Gaining references leaves the grace period, reaching zero starts it, a zero change
    touches nothing; a chunk not stored makes it False."""
    db = Database(db_url)
    try:
        db.migrate()
        ids = _stored(db, "abcd")
        with db.write() as conn:
            assert chunk_index.add_refs(conn, Counter([ids["b"], ids["c"], ids["d"], ids["d"]]))
        assert _rows(db) == {"a": (0, True), "b": (1, False), "c": (1, False), "d": (2, False)}
        with db.write() as conn:
            delta = {ids["a"]: 2, ids["b"]: -1, ids["c"]: 0, ids["d"]: -1}
            assert chunk_index.change_refs(conn, delta)
        assert _rows(db) == {"a": (2, False), "b": (0, True), "c": (1, False), "d": (1, False)}
        with db.write() as conn:
            assert not chunk_index.change_refs(conn, {ids["a"]: -1, "e" * 64: 1})
            conn.rollback()
        with db.write() as conn:  # one sign only: the add and drop statements
            assert chunk_index.change_refs(conn, {ids["a"]: -2, ids["b"]: 0})
            assert chunk_index.change_refs(conn, {ids["c"]: 3})
        assert _rows(db) == {"a": (0, True), "b": (0, True), "c": (4, False), "d": (1, False)}
    finally:
        db.close()
