"""`edgestore du`'s figures (metadata/stats.py) from the chunk rows alone: equal to a recount
over every shard row, on a store of coded, copied and inline chunks, after deletes, gc and a
damaged chunk stored again, on SQLite and PostgreSQL; and no scan of the shard rows."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import sqlalchemy as sa

from edgestore.engine import Engine, ObjectSelector
from edgestore.maintenance import check, gc
from edgestore.metadata import chunks as chunk_index
from edgestore.metadata.schema import chunks, shards
from tests.helpers import KiB, random_bytes


def _recount(engine: Engine) -> dict[str, int]:
    """The figures as every shard row and inline chunk's bytes add them up."""
    with engine.core.db.read() as conn:
        rows: dict[str, int] = defaultdict(int)
        for cid, size in conn.execute(sa.select(shards.c.chunk_id, shards.c.size)):
            rows[cid] += size
        got = dict.fromkeys(("chunks", "unique", "compressed", "stored", "gone", "gone_b"), 0)
        for r in conn.execute(sa.select(chunks)):
            at_rest = len(r.inline_data) if r.layout == "inline" else rows[r.chunk_id]
            if r.refcount > 0:
                got["chunks"] += 1
                got["unique"] += r.raw_size
                got["compressed"] += r.stored_size
                got["stored"] += at_rest
            else:
                got["gone"] += 1
                got["gone_b"] += at_rest
    return got


def _figures(engine: Engine) -> dict[str, int]:
    u = engine.objects.usage()
    return {
        "chunks": u.chunks,
        "unique": u.unique_bytes,
        "compressed": u.compressed_bytes,
        "stored": u.stored_bytes,
        "gone": u.reclaimable_chunks,
        "gone_b": u.reclaimable_bytes,
    }


def _layouts(engine: Engine) -> set[str]:
    with engine.core.db.read() as conn:
        return set(conn.execute(sa.select(chunks.c.layout).distinct()).scalars())


def test_the_figures_equal_a_recount_of_every_shard_row(small_engine: Engine) -> None:
    e = small_engine
    sizes = (3, 700, 4 * KiB, 9 * KiB, 200 * KiB, 600 * KiB)  # inline, copies, coded
    kept = [e.put([random_bytes(n, seed=n)], key=f"k{n}") for n in sizes]
    doomed = [e.put([random_bytes(n, seed=n + 1)], key=f"d{n}") for n in sizes]
    e.put([random_bytes(200 * KiB, seed=200 * KiB)], key="same")  # dedup: no new chunk
    assert _layouts(e) == {"inline", "replica", "ec"}
    assert _figures(e) == _recount(e) and _figures(e)["gone"] == 0
    for v in doomed:
        e.objects.delete(v)
    counted = _recount(e)
    assert counted["gone"] > 0 and counted["gone_b"] > 0  # reclaimable, not yet collected
    assert _figures(e) == counted

    # A damaged chunk stored again from an upload's bytes: new shards, in one transaction.
    entry = e.objects.manifest(kept[4])[0]
    with e.core.db.write() as conn:
        assert chunk_index.queue_repair(e.core.db, conn, entry.chunk_id, "test", [0, 1])
    e.put([random_bytes(200 * KiB, seed=200 * KiB)], key="again")
    with e.core.db.read() as conn:
        assert chunk_index.queue_length(conn) == 0  # stored again
    assert _figures(e) == _recount(e)

    gc.collect(e, grace=0)
    after = _figures(e)
    assert after == _recount(e) and after["gone"] == 0 and after["gone_b"] == 0
    assert after["stored"] > after["compressed"] > 0
    u = e.objects.usage()
    assert u.versions == len(sizes) + 2 and u.logical_bytes == 2 * 200 * KiB + sum(sizes)


def test_du_reads_no_shard_row(small_engine: Engine) -> None:
    """Summing the shard rows (9 per chunk) took ~35 s on an 8 TB store's 18M rows."""
    small_engine.put([random_bytes(300 * KiB, seed=1)], key="x")
    seen: list[str] = []

    def note(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append(statement)

    target = small_engine.core.db.engine
    sa.event.listen(target, "before_cursor_execute", note)
    try:
        u = small_engine.objects.usage()
    finally:
        sa.event.remove(target, "before_cursor_execute", note)
    assert u.chunks > 1 and u.stored_bytes > u.compressed_bytes
    assert seen and not [s for s in seen if "shards" in s]


def test_a_chunk_short_of_shard_rows_counts_at_its_full_redundancy(small_engine: Engine) -> None:
    """Only a damaged or hand-edited database has one (a chunk's shard rows are written,
    replaced and deleted with its row): check reports it; du counts its k+m shards."""
    e = small_engine
    v = e.put([random_bytes(200 * KiB, seed=5)], key="x")
    before = e.objects.usage().stored_bytes
    cid = e.objects.manifest(v)[0].chunk_id
    with e.core.db.write() as conn:
        conn.execute(sa.delete(shards).where(shards.c.chunk_id == cid, shards.c.shard_index == 8))
    assert e.objects.usage().stored_bytes == before
    assert check.check(e).of(check.SHORT_OF_SHARDS).found == 1
    assert e.objects.stat(ObjectSelector(bucket="default", key="x")).size == 200 * KiB
