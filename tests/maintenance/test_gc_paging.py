"""gc pages through its candidates (chunk id order, from the last one listed) and so goes on
past a batch it could delete none of: one wholly held by writers or revived meanwhile used to
end the run, leaving every other garbage chunk behind, and the next run listed it again."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from edgestore.engine import Engine
from edgestore.maintenance import gc
from edgestore.metadata import chunks as chunk_index
from edgestore.metadata import garbage
from edgestore.metadata.clock import now
from tests.helpers import MiB
from tests.maintenance.test_gc_batches import (
    _garbage,
    _shard_rows,
    _stored,
    revive_when_first_listed,
)
from tests.maintenance.test_gc_scale import _plan
from tests.races import in_thread


def _first_listed(engine: Engine) -> list[str]:
    """The candidates gc lists first: its first batch."""
    with engine.core.db.read() as conn:
        return garbage.unreferenced(conn, now(conn), gc.BATCH)


def test_a_batch_writers_hold_does_not_stop_the_run(
    pg_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL: writers hold every chunk of gc's first batch (dedup hits kept them alive,
    their transactions not committed yet), so gc skips them all. It goes on to the others
    and frees them in the same run; the held ones stay, shards and all."""
    monkeypatch.setattr(gc, "BATCH", 3)
    ids = [cid for cid, _ in _garbage(pg_engine, seed=50, size=2 * MiB)]
    assert len(ids) > 3 * gc.BATCH
    held = _first_listed(pg_engine)
    assert len(held) == gc.BATCH
    reports: list[gc.GcReport] = []
    with pg_engine.core.db.write() as conn:  # another connection than gc's
        for cid in held:
            assert chunk_index.keep_alive(conn, cid)
        t, errors = in_thread(lambda: reports.append(gc.collect(pg_engine, grace=0, orphans=False)))
        t.join(30)
        finished = not t.is_alive()
    t.join(60)
    assert finished and errors == []
    assert _stored(pg_engine, ids) == set(held)
    assert reports[0].chunks_deleted == len(ids) - len(held) and reports[0].errors == 0
    assert _shard_rows(pg_engine, held) and not _shard_rows(pg_engine, sorted(set(ids) - set(held)))


class _Stop(Exception):
    pass


def _stop(stage: str, _count: int) -> None:
    if stage == "chunks":  # (expired uploads are reported first)
        raise _Stop  # as the server's upkeep does when it shuts down


@pytest.mark.parametrize("stopping", [False, True], ids=["run", "stopping"])
def test_a_batch_revived_whole_does_not_stop_the_run(
    small_engine: Engine, monkeypatch: pytest.MonkeyPatch, stopping: bool
) -> None:
    """Both databases: every chunk of the first batch is stored again (a dedup hit) between
    its listing and its transaction (SQLite has one writer: a chunk is "held" only so), and
    every later batch's goes; the revived ones stay. A run asked to stop stops after that
    page, although it deleted nothing there (progress came only after a page that did, so
    the upkeep could not stop a run passing held pages)."""
    monkeypatch.setattr(gc, "BATCH", 3)
    pairs = _garbage(small_engine, seed=51, size=2 * MiB)
    raw_of = dict(pairs)
    assert len(pairs) > 3 * gc.BATCH

    def revive(batch: list[str]) -> list[str]:
        for cid in batch:
            small_engine.core.writer.store(raw_of[cid])  # keep_alive, grace restarts
        return batch

    revived = revive_when_first_listed(monkeypatch, revive)
    if stopping:
        with pytest.raises(_Stop):
            gc.collect(small_engine, grace=0, orphans=False, progress=_stop)
        assert _stored(small_engine, list(raw_of)) == set(raw_of)  # no page after the held one
        return
    report = gc.collect(small_engine, grace=0, orphans=False)
    assert len(revived) == gc.BATCH
    assert _stored(small_engine, list(raw_of)) == set(revived)
    assert report.chunks_deleted == len(pairs) - gc.BATCH and report.errors == 0


def test_candidates_are_listed_in_chunk_id_order_from_the_last(small_engine: Engine) -> None:
    """The listing is a keyset page: in chunk id order, after the last id listed, and ends
    (an empty page) when the candidates do; so a run ends, and never lists a chunk twice."""
    ids = sorted(cid for cid, _ in _garbage(small_engine, seed=52, size=1536 * 1024))
    pages: list[list[str]] = []
    after: str | None = None
    with small_engine.core.db.read() as conn:
        t = now(conn)
        while page := garbage.unreferenced(conn, t, 4, after=after):
            pages.append(page)
            after = page[-1]
    assert [cid for page in pages for cid in page] == ids
    assert all(len(page) == 4 for page in pages[:-1])


def test_a_page_is_listed_through_the_index_of_unreferenced_chunks(small_engine: Engine) -> None:
    """A page costs its own length: the listing walks ix_chunks_unreferenced (those rows
    only), not the primary key, whose order would walk every live chunk between two garbage
    ones (one run read the whole chunks table, each upkeep round)."""
    _garbage(small_engine, seed=54)
    seen: list[tuple[str, Any]] = []

    def note(_conn: Any, _cursor: Any, statement: str, params: Any, *_: Any) -> None:
        if "FROM chunks" in statement and "ORDER BY chunks.chunk_id" in statement:
            if "LIMIT" not in statement:  # (the batch's delete, by primary key)
                return
            seen.append((statement, params))

    sa_engine = small_engine.core.db.engine
    sa.event.listen(sa_engine, "before_cursor_execute", note)
    try:
        assert gc.collect(small_engine, grace=0, orphans=False).chunks_deleted
    finally:
        sa.event.remove(sa_engine, "before_cursor_execute", note)
    assert len(seen) >= 2  # the first page, and a page after it
    with sa_engine.begin() as conn:
        if conn.dialect.name == "postgresql":  # which it takes once sorting every page is
            conn.exec_driver_sql("SET LOCAL enable_sort = off")  # dear (many candidates)
        for statement, params in seen:
            assert "ix_chunks_unreferenced" in _plan(conn, statement, params)
