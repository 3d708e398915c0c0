"""Reference counts under concurrent deletes, terminations and completions (PostgreSQL:
SQLite serialises write transactions, so these interleavings cannot happen there)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import sqlalchemy as sa

from edgestore.config import load_settings
from edgestore.engine import Engine
from edgestore.maintenance import gc
from edgestore.metadata import objects as object_rows
from edgestore.metadata import totals
from edgestore.metadata.chunks import reference_mismatches
from edgestore.metadata.schema import objects as objects_table
from tests.helpers import SMALL_CHUNKS, MiB, blocks_of, random_bytes, read_all
from tests.races import in_thread, lock_waiters, wait_until_blocked


def test_a_version_deleted_twice_at_once_drops_its_references_once(tmp_path, pg_url) -> None:
    """Two nodes deleting the same version: the second one's chunk references are the rows
    the first one deleted, so they must not be dropped again (a shared chunk would reach 0
    while another version still holds it, and gc would take it)."""
    settings = load_settings(home=tmp_path / "home", database_url=pg_url, **SMALL_CHUNKS)
    with Engine.open(settings) as engine:
        shared = random_bytes(1 * MiB, seed=11)
        keep = engine.put(blocks_of(shared), key="keep")
        doomed = engine.put(blocks_of(shared), key="doomed")  # the same chunks: refcount 2
        with engine.core.db.write() as conn:  # node A deletes it, not yet committed...
            assert object_rows.delete_version(conn, doomed.version_id)
            # ...while node B deletes it too, and waits for A's row locks
            t, errors = in_thread(lambda: engine.objects.delete(doomed))
            wait_until_blocked(engine)
        t.join(10)
        assert not t.is_alive()
        assert all(type(e).__name__ == "ObjectNotFound" for e in errors), errors
        with engine.core.db.read() as conn:
            assert reference_mismatches(conn) == []
            assert totals.mismatches(conn) == {}
        gc.collect(engine, grace=0)
        assert read_all(engine, keep) == shared


def _wait_done_or_blocked(engine: Engine, t: threading.Thread, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        t.join(0.02)
        if not t.is_alive() or lock_waiters(engine.core.db):
            return
    raise AssertionError("the terminate neither finished nor waited for a lock")


@pytest.mark.parametrize("during", ["progress", "completion"])
def test_an_upload_terminated_during_a_checkpoint_keeps_no_references(
    tmp_path, pg_url, monkeypatch, during: str
) -> None:
    """Another node terminates the upload after a checkpoint's transaction read the upload's
    row but before it wrote it. The checkpoint must not go on from that stale read: its parts
    would follow the released ones into a terminated upload (references nothing releases
    again), or a completion would make a version of its own parts alone."""
    from edgestore.engine import ingest
    from edgestore.metadata import chunks as chunk_index
    from edgestore.metadata import uploads as upload_rows

    settings = load_settings(home=tmp_path / "home", database_url=pg_url, **SMALL_CHUNKS)
    data = random_bytes(2 * MiB, seed=12)
    half = len(data) // 2
    with Engine.open(settings) as engine, Engine.open(settings) as other:
        up = engine.uploads.create(length=len(data))
        if during == "completion":
            engine.uploads.append(up.upload_id, 0, blocks_of(data[:half]))
            start, piece = half, data[half:]
        else:
            start, piece = 0, data[:half]

        in_commit = threading.local()
        real_commit = ingest.Appender._commit
        real_add_refs = chunk_index.add_refs
        fired: list[threading.Thread] = []

        def commit(self: Any, **kw: Any) -> Any:
            in_commit.on = kw.get("complete", False) == (during == "completion")
            try:
                return real_commit(self, **kw)
            finally:
                in_commit.on = False

        def add_refs(conn: Any, counts: Any) -> bool:
            if getattr(in_commit, "on", False) and not fired:
                t, _ = in_thread(lambda: other.uploads.terminate(up.upload_id))
                fired.append(t)
                _wait_done_or_blocked(engine, t)
            return real_add_refs(conn, counts)

        monkeypatch.setattr(ingest.Appender, "_commit", commit)
        monkeypatch.setattr(chunk_index, "add_refs", add_refs)
        try:
            done = engine.uploads.append(up.upload_id, start, blocks_of(piece))
        except Exception as exc:  # refused: the terminate came first
            done = None
            assert type(exc).__name__ in ("UploadLocked", "UploadGone"), exc
        monkeypatch.undo()
        assert fired
        fired[0].join(10)

        if done is not None and done.version_id is not None:
            version = engine.objects.by_version_id(done.version_id)
            assert version.size == len(data)
            assert read_all(engine, version) == data
        with engine.core.db.read() as conn:
            assert reference_mismatches(conn) == []
            assert totals.mismatches(conn) == {}
            rec = upload_rows.get(conn, up.upload_id)
            assert rec.state == upload_rows.TERMINATED
            assert upload_rows.parts(conn, up.upload_id) == []


def test_a_partial_terminated_while_its_final_completes_is_not_left_out(
    tmp_path, pg_url, monkeypatch
) -> None:
    """The last partial lands and completes the final that waited for it, while another node
    terminates the other (complete) partial: the final must not become a version that lacks
    that partial's bytes (its parts read after the terminate released them)."""
    from edgestore.engine import concat
    from edgestore.metadata import uploads as upload_rows

    settings = load_settings(home=tmp_path / "home", database_url=pg_url, **SMALL_CHUNKS)
    pieces = [random_bytes(600 * 1024 + i, seed=20 + i) for i in range(2)]
    with Engine.open(settings) as engine, Engine.open(settings) as other:
        ids = [engine.uploads.create(length=len(p), is_partial=True).upload_id for p in pieces]
        engine.uploads.append(ids[0], 0, blocks_of(pieces[0]))
        final = engine.uploads.concatenate(ids, key="final")
        assert final.state == upload_rows.OPEN

        real_final_version = concat.final_version
        fired: list[threading.Thread] = []

        def final_version(core: Any, conn: Any, rec: Any) -> Any:
            if not fired:
                t, _ = in_thread(lambda: other.uploads.terminate(ids[0]))
                fired.append(t)
                _wait_done_or_blocked(engine, t)
            return real_final_version(core, conn, rec)

        monkeypatch.setattr(concat, "final_version", final_version)
        engine.uploads.append(ids[1], 0, blocks_of(pieces[1]))
        monkeypatch.undo()
        assert fired
        fired[0].join(10)

        done = engine.uploads.get(final.upload_id)
        if done.version_id is not None:
            version = engine.objects.by_version_id(done.version_id)
            assert version.size == sum(map(len, pieces))
            assert read_all(engine, version) == b"".join(pieces)
        with engine.core.db.read() as conn:
            assert reference_mismatches(conn) == []
            assert totals.mismatches(conn) == {}


def test_deleting_the_last_version_keeps_a_version_committed_meanwhile(tmp_path, pg_url) -> None:
    """A node deletes an object's only version while another commits the object's next one:
    the object row (and by cascade the new version, its manifest and its data) must stay."""
    settings = load_settings(home=tmp_path / "home", database_url=pg_url, **SMALL_CHUNKS)
    with Engine.open(settings) as engine:
        old = engine.put(blocks_of(random_bytes(1 * MiB, seed=31)), key="k")
        data = random_bytes(1 * MiB, seed=32)
        source = engine.put(blocks_of(data), key="source")
        entries = [(e.chunk_id, e.offset, e.length) for e in engine.objects.manifest(source)]
        db = engine.core.db
        with db.write() as conn:  # node A: an upload of k completing, not yet committed...
            vid = object_rows.create_version(
                db,
                conn,
                bucket=old.bucket,
                key="k",
                entries=entries,
                sha256=None,
                content_type=None,
                filename=None,
                user_metadata={},
                take_refs=True,
            )
            # ...while node B deletes k's only version it knows of
            t, errors = in_thread(lambda: engine.objects.delete(old))
            wait_until_blocked(engine)
        t.join(10)
        assert not t.is_alive() and not errors, errors
        new = engine.objects.by_version_id(vid)
        assert read_all(engine, new) == data
        with db.read() as conn:
            assert reference_mismatches(conn) == []
            assert totals.mismatches(conn) == {}


def test_a_version_committed_while_the_objects_last_one_is_deleted_makes_it_anew(
    tmp_path, pg_url
) -> None:
    """The other order: a node deletes an object's only version (the object goes with it)
    while another completes a new version of the same key. The new version waits, then lands
    in a new object (a new id, version 1) rather than failing or vanishing."""
    settings = load_settings(home=tmp_path / "home", database_url=pg_url, **SMALL_CHUNKS)
    with Engine.open(settings) as engine:
        old = engine.put(blocks_of(random_bytes(300 * 1024, seed=41)), key="k")
        data = random_bytes(1 * MiB, seed=42)
        done: list[Any] = []
        with engine.core.db.write() as conn:  # node A: deleting k's only version...
            conn.execute(  # (delete_version's lock on the object row, taken first here)
                sa.select(objects_table.c.object_id)
                .where(objects_table.c.object_id == old.object_id)
                .with_for_update()
            )
            # ...while node B completes a put of k, and waits for A
            t, errors = in_thread(lambda: done.append(engine.put(blocks_of(data), key="k")))
            wait_until_blocked(engine)
            assert object_rows.delete_version(conn, old.version_id)
        t.join(30)
        assert not t.is_alive() and not errors, errors
        new = done[0]
        assert new.object_id != old.object_id and new.version == 1
        assert read_all(engine, engine.objects.by_version_id(new.version_id)) == data
        with engine.core.db.read() as conn:
            assert reference_mismatches(conn) == []
            assert totals.mismatches(conn) == {}
