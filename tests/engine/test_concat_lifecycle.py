"""tus concatenation over a final's life: partials that expire or end while it waits, and
what gc then keeps (engine/concat.py, engine/uploads.py, maintenance/gc.py)."""

from __future__ import annotations

import time

import sqlalchemy as sa
from sqlalchemy import event

from edgestore.config import load_settings
from edgestore.engine import Engine
from edgestore.maintenance import gc
from edgestore.metadata import concat as concat_rows
from edgestore.metadata import uploads as upload_rows
from edgestore.metadata.chunks import reference_mismatches
from edgestore.metadata.schema import uploads
from tests.helpers import SMALL_CHUNKS, random_bytes, read_all
from tests.races import in_thread, wait_until_blocked


def _lapse(engine: Engine, upload_id: str) -> None:
    """The upload's expiry passes (its client went away)."""
    with engine.core.db.write() as conn:
        conn.execute(
            sa.update(uploads).where(uploads.c.upload_id == upload_id).values(expires_at=1.0)
        )


def test_a_partial_expiring_ends_the_final_waiting_for_it(small_engine: Engine) -> None:
    """As when it is terminated: the final can never complete, so it ends (410) at once,
    not when its own expiry comes (pushed back as long as its other partials go on)."""
    a = small_engine.uploads.create(length=100, is_partial=True)
    b = small_engine.uploads.create(length=100, is_partial=True)
    final = small_engine.uploads.concatenate([a.upload_id, b.upload_id])
    small_engine.uploads.append(b.upload_id, 0, [random_bytes(50, seed=1)])
    _lapse(small_engine, a.upload_id)
    gc.collect(small_engine, grace=0, orphans=False)
    with small_engine.core.db.read() as conn:
        assert upload_rows.get(conn, a.upload_id).state == upload_rows.EXPIRED
        assert upload_rows.get(conn, final.upload_id).state == upload_rows.EXPIRED
    small_engine.uploads.append(b.upload_id, 50, [random_bytes(50, seed=2)])
    with small_engine.core.db.read() as conn:
        assert upload_rows.get(conn, final.upload_id).state == upload_rows.EXPIRED
        assert reference_mismatches(conn) == []


def test_the_same_partial_twice_then_everything_deleted_leaks_nothing(
    small_engine: Engine,
) -> None:
    data = random_bytes(300_000, seed=3)
    p = small_engine.uploads.create(length=len(data), is_partial=True)
    small_engine.uploads.append(p.upload_id, 0, [data])
    rec = small_engine.uploads.concatenate([p.upload_id, p.upload_id], key="twice")
    assert rec.version_id is not None
    info = small_engine.objects.by_version_id(rec.version_id)
    small_engine.uploads.terminate(p.upload_id)
    gc.collect(small_engine, grace=0, orphans=False)
    assert read_all(small_engine, info) == data + data
    with small_engine.core.db.read() as conn:
        assert reference_mismatches(conn) == []


def test_a_partial_completing_checks_the_finals_others_in_one_statement(
    small_engine: Engine,
) -> None:
    """A final of many partials: each one completing must not read the others one by one
    (a final of 1000 took 75 s to complete its partials, 74 ms per append)."""
    ids = [small_engine.uploads.create(length=1, is_partial=True).upload_id for _ in range(300)]
    final = small_engine.uploads.concatenate(ids)
    statements: list[str] = []

    def count(_conn: object, _cursor: object, statement: str, *_rest: object) -> None:
        statements.append(statement)

    event.listen(small_engine.core.db.engine, "before_cursor_execute", count)
    try:
        small_engine.uploads.append(ids[0], 0, [b"x"])
    finally:
        event.remove(small_engine.core.db.engine, "before_cursor_execute", count)
    assert len(statements) < 60, len(statements)
    for pid in ids[1:]:
        small_engine.uploads.append(pid, 0, [b"y"])
    rec = small_engine.uploads.get(final.upload_id)
    assert rec.version_id is not None
    assert read_all(small_engine, small_engine.objects.by_version_id(rec.version_id)) == (
        b"x" + b"y" * 299
    )


def test_keeping_finals_alive_locks_partials_before_their_final(tmp_path, pg_url) -> None:
    """The upkeep pushes a waiting final's expiry and its finished partials': it must lock
    them in the order a partial's termination does (the partial, then its finals), or the
    two deadlock and PostgreSQL aborts one of them."""
    settings = load_settings(home=tmp_path / "home", database_url=pg_url, **SMALL_CHUNKS)
    with Engine.open(settings) as engine:
        done = engine.uploads.create(length=10, is_partial=True)
        engine.uploads.append(done.upload_id, 0, [random_bytes(10, seed=4)])
        going = engine.uploads.create(length=10, is_partial=True)
        final = engine.uploads.concatenate([done.upload_id, going.upload_id])
        db = engine.core.db
        soon = time.time() + 60
        with db.write() as conn:  # the open partial outlives the others: both are pushed
            for uid, at in ((done.upload_id, soon), (final.upload_id, soon)):
                conn.execute(sa.update(uploads).where(uploads.c.upload_id == uid).values(
                    expires_at=at))  # fmt: skip
        with db.write() as conn:  # node B terminates the finished partial...
            upload_rows.get(conn, done.upload_id, for_update=True)

            def keep_alive() -> None:  # ...while node A's upkeep runs, without a retry
                with db.write() as other:
                    concat_rows.keep_waiting_finals_alive(other)

            t, errors = in_thread(keep_alive)
            wait_until_blocked(engine)
            upload_rows.get(conn, final.upload_id, for_update=True)  # B: then its final
        t.join(10)
        assert not t.is_alive() and not errors, errors
        with db.read() as conn:
            assert upload_rows.get(conn, final.upload_id).expires_at > soon
