"""gc on a node whose clock is ahead of the others' (or jumped forward): its grace periods
are measured on the database's clock, and an orphan must be old by this node's clock too."""

from __future__ import annotations

import sqlalchemy as sa

from edgestore.engine import Engine
from edgestore.maintenance import gc
from edgestore.metadata.schema import chunks
from tests.clocks import DAY, HOUR, wall_clock_off_by
from tests.helpers import MiB, blocks_of, random_bytes, read_all


def _chunk_rows(engine: Engine) -> int:
    with engine.core.db.read() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(chunks)).scalar_one()


def test_a_node_a_day_ahead_spares_chunks_in_their_grace(pg_engine: Engine, monkeypatch) -> None:
    """Chunks unreferenced a moment ago are in their 6 h grace (a dedup hit may be about to
    reference them); gc on a node a day ahead took them all."""
    v = pg_engine.put(blocks_of(random_bytes(1 * MiB, seed=1)), key="x")
    rows = _chunk_rows(pg_engine)
    pg_engine.objects.delete(v)
    with wall_clock_off_by(monkeypatch, DAY):
        report = gc.collect(pg_engine, grace=6 * HOUR)
    assert report.chunks_deleted == 0 and _chunk_rows(pg_engine) == rows


def test_a_node_an_hour_ahead_spares_a_shard_file_being_written(
    pg_engine: Engine, monkeypatch
) -> None:
    """A shard file written a moment ago whose chunk row has not committed yet (the row is
    the commit point) is not an orphan; gc on a node an hour ahead deleted it, and the row
    committed after named a missing file."""
    v = pg_engine.put(blocks_of(random_bytes(256 * 1024, seed=2)), key="y")
    backend = pg_engine.core.dirs.backends["d0"]
    pending = "abc/" + "ab" * 32 + ".deadbeef0000.0"
    backend.put(pending, [b"a shard whose row is about to commit"])
    with wall_clock_off_by(monkeypatch, HOUR):
        report = gc.collect(pg_engine, grace=0)
    assert report.orphan_files_deleted == 0 and backend.stat(pending) is not None
    assert read_all(pg_engine, v) == random_bytes(256 * 1024, seed=2)
