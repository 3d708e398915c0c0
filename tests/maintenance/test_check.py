"""`check` on real stores (SQLite and PostgreSQL): each kind of drift made by hand is found,
what is derived is recounted by `fix`, what names lost bytes is only reported, and a clean
store is clean."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from edgestore.engine import Engine
from edgestore.maintenance import check as checks
from edgestore.metadata import totals
from edgestore.metadata.chunks import reference_mismatches
from edgestore.metadata.schema import (
    bucket_totals,
    chunks,
    manifests,
    object_versions,
    shards,
    upload_parts,
)
from tests.helpers import KiB, MiB, random_bytes


def _chunk_ids(engine: Engine, layout: str | None = None) -> list[str]:
    with engine.core.db.read() as conn:
        q = sa.select(chunks.c.chunk_id).order_by(chunks.c.chunk_id)
        if layout is not None:
            q = q.where(chunks.c.layout == layout)
        return list(conn.execute(q).scalars())


def _write(engine: Engine, statement: sa.Executable) -> None:
    with engine.core.db.write() as conn:
        conn.execute(statement)


def _delete_without_foreign_keys(engine: Engine, chunk_id: str) -> None:
    """Delete a chunk row that rows still reference, as a database without its foreign keys
    enforced (an old SQLite file, a partial restore) could have."""
    db = engine.core.db
    if db.is_postgres:
        with db.write() as conn:
            conn.execute(sa.text("SET LOCAL session_replication_role = replica"))
            conn.execute(sa.delete(shards).where(shards.c.chunk_id == chunk_id))
            conn.execute(sa.delete(chunks).where(chunks.c.chunk_id == chunk_id))
        return
    import sqlite3

    assert db.path is not None
    raw = sqlite3.connect(db.path)
    try:
        raw.execute("PRAGMA foreign_keys=OFF")
        raw.execute("DELETE FROM shards WHERE chunk_id = ?", (chunk_id,))
        raw.execute("DELETE FROM chunks WHERE chunk_id = ?", (chunk_id,))
        raw.commit()
    finally:
        raw.close()


def _clean(report: checks.CheckReport) -> bool:
    return all(f.found == 0 for f in report.findings) and report.unresolved == 0


@pytest.fixture
def stocked(small_engine: Engine) -> Iterator[Engine]:
    """Two buckets, files sharing chunks, an inline chunk and an upload in progress."""
    shared = random_bytes(600 * KiB, seed=1)
    small_engine.put([shared], bucket="a", key="one")
    small_engine.put([shared + random_bytes(300 * KiB, seed=2)], bucket="a", key="two")
    small_engine.put([random_bytes(500, seed=3)], bucket="b", key="tiny")
    small_engine.put([random_bytes(1 * MiB, seed=4)], bucket="b", key="big")
    open_upload = small_engine.uploads.create(bucket="b", key="later", length=2 * MiB)
    small_engine.uploads.append(open_upload.upload_id, 0, [random_bytes(1 * MiB, seed=5)])
    yield small_engine


def test_a_clean_store_is_clean(stocked: Engine) -> None:
    report = checks.check(stocked)
    assert _clean(report), report
    assert report.chunks_checked == len(_chunk_ids(stocked)) and report.buckets_checked == 2


def test_refcounts_too_high_and_too_low_are_found_and_recounted(stocked: Engine) -> None:
    """Too low lets gc delete a chunk a version needs; too high keeps garbage forever. The
    recount also puts the grace-period clock right: none on a referenced chunk."""
    high, low, *_ = _chunk_ids(stocked, "ec")
    _write(stocked, sa.update(chunks).where(chunks.c.chunk_id == high).values(refcount=9))
    _write(
        stocked,
        sa.update(chunks).where(chunks.c.chunk_id == low).values(refcount=0, zero_since=1.0),
    )
    found = checks.check(stocked)
    assert found.of(checks.REFCOUNT).found == 2 and found.unresolved == 2
    assert {e.split(":")[0] for e in found.of(checks.REFCOUNT).examples} == {
        f"chunk {high}",
        f"chunk {low}",
    }
    with stocked.core.db.read() as conn:  # a check alone changes nothing
        assert len(reference_mismatches(conn)) == 2

    fixed = checks.check(stocked, fix=True)
    assert fixed.of(checks.REFCOUNT).fixed == 2 and fixed.unresolved == 0
    with stocked.core.db.read() as conn:
        assert reference_mismatches(conn) == []
        zero_since = conn.execute(
            sa.select(chunks.c.zero_since).where(chunks.c.chunk_id == low)
        ).scalar_one()
    assert zero_since is None
    assert _clean(checks.check(stocked))


def test_an_unreferenced_chunk_recounted_to_zero_starts_its_grace_period(
    small_engine: Engine,
) -> None:
    info = small_engine.put([random_bytes(200 * KiB, seed=6)], bucket="a", key="gone")
    small_engine.objects.delete(info)
    cid = _chunk_ids(small_engine)[0]
    _write(
        small_engine,
        sa.update(chunks).where(chunks.c.chunk_id == cid).values(refcount=2, zero_since=None),
    )
    assert checks.check(small_engine, fix=True).of(checks.REFCOUNT).fixed == 1
    with small_engine.core.db.read() as conn:
        row = conn.execute(sa.select(chunks).where(chunks.c.chunk_id == cid)).one()
    assert row.refcount == 0 and row.zero_since is not None


def test_bucket_totals_wrong_missing_and_stale_are_found_and_recounted(stocked: Engine) -> None:
    """A wrong row, a bucket with versions and no row (an older node wrote them), and a row
    for a bucket with no versions left."""
    _write(stocked, sa.update(bucket_totals).where(bucket_totals.c.bucket == "a").values(bytes=1))
    _write(stocked, sa.delete(bucket_totals).where(bucket_totals.c.bucket == "b"))
    with stocked.core.db.write() as conn:
        totals.add(conn, "empty", 4096, 2)
    found = checks.check(stocked)
    assert sorted(e.split(":")[0] for e in found.of(checks.BUCKET_TOTALS).examples) == [
        "bucket a",
        "bucket b",
        "bucket empty",
    ]
    assert found.unresolved == 3
    fixed = checks.check(stocked, fix=True)
    assert fixed.of(checks.BUCKET_TOTALS).fixed == 3 and fixed.unresolved == 0
    with stocked.core.db.read() as conn:
        assert totals.mismatches(conn) == {}
        assert totals.of_bucket(conn, "empty") == totals.BucketTotal(0, 0)
        assert totals.of_bucket(conn, "b").versions == 2
    assert _clean(checks.check(stocked))


def test_references_to_missing_chunks_are_reported_and_kept(stocked: Engine) -> None:
    """The bytes are gone: `fix` must not delete the manifest or part rows naming them (the
    version stays listed, and uploading the file again brings its chunks back)."""
    with stocked.core.db.read() as conn:
        in_manifest = conn.execute(
            sa.select(manifests.c.chunk_id)
            .where(manifests.c.chunk_id.not_in(sa.select(upload_parts.c.chunk_id)))
            .limit(1)
        ).scalar_one()
        in_part = conn.execute(sa.select(upload_parts.c.chunk_id).limit(1)).scalar_one()
        rows_before = conn.execute(sa.select(sa.func.count()).select_from(manifests)).scalar()
    _delete_without_foreign_keys(stocked, in_manifest)
    _delete_without_foreign_keys(stocked, in_part)

    for fix in (False, True):
        report = checks.check(stocked, fix=fix)
        entries = report.of(checks.MISSING_CHUNK_MANIFEST)
        assert entries.found >= 1 and entries.fixed == 0
        assert all(in_manifest in e for e in entries.examples)
        assert entries.examples[0].startswith("a/")
        parts = report.of(checks.MISSING_CHUNK_UPLOAD)
        assert parts.found == 1 and parts.examples[0].endswith(f"chunk {in_part}")
        assert report.unresolved == entries.found + parts.found
    with stocked.core.db.read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(manifests)).scalar() == (
            rows_before
        )


def test_chunks_short_of_shard_rows_are_reported(stocked: Engine) -> None:
    """k+m-1 rows: readable, redundancy lost; k-1 rows: unreadable. Either is only reported."""
    degraded, lost, *_ = _chunk_ids(stocked, "ec")
    inline = _chunk_ids(stocked, "inline")[0]
    with stocked.core.db.read() as conn:
        k, m = conn.execute(
            sa.select(chunks.c.ec_k, chunks.c.ec_m).where(chunks.c.chunk_id == lost)
        ).one()
    _write(
        stocked, sa.delete(shards).where(shards.c.chunk_id == degraded, shards.c.shard_index == 0)
    )
    _write(
        stocked, sa.delete(shards).where(shards.c.chunk_id == lost, shards.c.shard_index > k - 2)
    )
    _write(stocked, sa.update(chunks).where(chunks.c.chunk_id == inline).values(inline_data=None))
    report = checks.check(stocked, fix=True)
    short = report.of(checks.SHORT_OF_SHARDS)
    assert short.found == 1 and short.examples == [
        f"chunk {degraded}: {k + m - 1} shard rows of {k + m}"
    ]
    unreadable = report.of(checks.UNREADABLE_CHUNK)
    assert unreadable.found == 2 and unreadable.fixed == 0
    assert f"chunk {lost}: {k - 1} shard rows, needs {k} of {k + m}" in unreadable.examples
    assert any(e.startswith(f"chunk {inline}: no inline bytes") for e in unreadable.examples)
    assert report.unresolved == 3


def test_a_version_whose_manifest_does_not_add_up_is_reported(stocked: Engine) -> None:
    with stocked.core.db.write() as conn:
        vid = conn.execute(sa.select(object_versions.c.version_id).limit(1)).scalar_one()
        conn.execute(
            sa.update(object_versions)
            .where(object_versions.c.version_id == vid)
            .values(size=object_versions.c.size + 1)
        )
    report = checks.check(stocked)
    assert report.of(checks.VERSION_SIZE).found == 1
    # the totals counted the changed size too: they now differ, and are recounted
    assert report.of(checks.BUCKET_TOTALS).found == 1


def test_many_findings_are_counted_with_a_few_examples(
    small_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pages smaller than the store, so drift across page boundaries is all found."""
    monkeypatch.setattr(checks, "PAGE", 3)
    monkeypatch.setattr(checks, "FIX_BATCH", 2)
    small_engine.put([random_bytes(2 * MiB, seed=7)], bucket="a", key="many")
    ids = _chunk_ids(small_engine)
    assert len(ids) > 8
    _write(small_engine, sa.update(chunks).values(refcount=chunks.c.refcount + 1))
    report = checks.check(small_engine, fix=True)
    found = report.of(checks.REFCOUNT)
    assert found.found == found.fixed == len(ids) and report.chunks_checked == len(ids)
    assert len(found.examples) == checks.EXAMPLES
    assert _clean(checks.check(small_engine))
