"""Checkpoints (metadata/uploads.py) of parts naming a chunk that is no longer stored."""

from __future__ import annotations

import pytest

from edgestore.errors import StorageUnavailable
from edgestore.metadata import uploads as upload_rows
from edgestore.metadata.db import Database
from edgestore.metadata.uploads import Checkpoint, NewPart


@pytest.mark.parametrize("count_refs", [True, False], ids=["counted", "left-to-completion"])
def test_a_part_of_a_chunk_gc_took_is_refused_whole(db_url: str, count_refs: bool) -> None:
    """gc took a chunk a writer held unreferenced (its lease long lapsed): the checkpoint is
    refused, nothing of it kept, whether it counts its parts' references (the count finds the
    row missing) or leaves them to the completion (the part's foreign key does)."""
    db = Database(db_url)
    try:
        db.migrate()
        with db.write() as conn:
            uid = upload_rows.create(
                conn, kind="tus", bucket=None, key=None, length=10, expires_at=None, hash_state=None
            )
            upload_rows.acquire_lock(conn, uid, "owner", 60.0)
        cp = Checkpoint(parts=[NewPart("f" * 64, 0, 10)])
        with pytest.raises(StorageUnavailable, match="collected"), db.write() as conn:
            upload_rows.checkpoint(
                conn, uid, "owner", expected_committed=0, cp=cp, lease=60.0, count_refs=count_refs
            )
        with db.read() as conn:
            assert upload_rows.get(conn, uid).committed_offset == 0
            assert upload_rows.parts(conn, uid) == []
    finally:
        db.close()
