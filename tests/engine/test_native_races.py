"""Native sessions under concurrency on PostgreSQL (SQLite serialises write transactions):
pins against gc, finalize against expiry, so no session is told a chunk is held that gc takes,
and no request fails with a database error."""

from __future__ import annotations

import threading
import time
from typing import Any

import sqlalchemy as sa

from edgestore.config import load_settings
from edgestore.engine import Engine
from edgestore.metadata import garbage
from edgestore.metadata.chunks import reference_mismatches
from tests.helpers import SMALL_CHUNKS, KiB, random_bytes
from tests.native import chunks_of
from tests.races import in_thread, wait_until_blocked


def _garbage_chunk(engine: Engine, seed: int) -> tuple[str, bytes]:
    """A stored chunk no one references any more (its session was aborted)."""
    cid, raw = chunks_of(random_bytes(40 * KiB, seed=seed))[0]
    rec = engine.native.create(size=len(raw))
    engine.native.put_chunk(rec.upload_id, cid, raw)
    engine.native.abort(rec.upload_id)
    return cid, raw


def test_missing_racing_gc_reports_the_collected_chunk_missing(tmp_path, pg_url) -> None:
    """gc deletes an unreferenced chunk while /missing pins it: /missing must wait and then
    call the chunk missing (the client sends it), not fail on the pin's foreign key."""
    settings = load_settings(home=tmp_path / "home", database_url=pg_url, **SMALL_CHUNKS)
    with Engine.open(settings) as engine:
        cid, _ = _garbage_chunk(engine, seed=1)
        session = engine.native.create(size=1)
        with engine.core.db.write() as conn:  # gc deletes the row, not yet committed...
            assert cid in garbage.delete_unreferenced(conn, [cid], time.time() + 60)
            out: list[list[str]] = []
            t, errors = in_thread(
                lambda: out.append(engine.native.missing(session.upload_id, [cid]))
            )
            wait_until_blocked(engine)
        t.join(10)
        assert not t.is_alive()
        assert not errors and out == [[cid]], (errors, out)
        with engine.core.db.read() as conn:
            assert reference_mismatches(conn) == []


def test_a_session_touched_as_it_lapses_is_not_expired_by_gc(tmp_path, pg_url, monkeypatch) -> None:
    """A chunk arrives just before the session's expiry and pushes it back, while gc lists
    the session as expired (from before that commit): gc must not then expire it, dropping
    the pins the client was just told hold its chunks."""
    from edgestore.metadata import pins
    from edgestore.metadata import uploads as upload_rows
    from edgestore.metadata.schema import uploads

    settings = load_settings(home=tmp_path / "home", database_url=pg_url, **SMALL_CHUNKS)
    parts = chunks_of(random_bytes(100 * KiB, seed=2))
    with Engine.open(settings) as engine, Engine.open(settings) as other:
        rec = engine.native.create(size=100 * KiB, key="race/expiry")
        engine.native.put_chunk(rec.upload_id, *parts[0])
        lapses = time.time() + 0.5  # a week has passed: the session is about to lapse
        with engine.core.db.write() as conn:
            conn.execute(
                sa.update(uploads)
                .where(uploads.c.upload_id == rec.upload_id)
                .values(expires_at=lapses)
            )

        real = pins.pin
        fired: list[threading.Thread] = []

        def pin(conn: Any, upload_id: str, chunk_ids: Any, **kw: Any) -> dict[str, int]:
            if not fired:  # the session's row is touched and locked; its expiry passes; gc
                time.sleep(max(0.0, lapses - time.time()) + 0.1)
                t, _ = in_thread(lambda: other.uploads.expire_stale(local_grace=3600))
                fired.append(t)
                wait_until_blocked(engine)
            return real(conn, upload_id, chunk_ids, **kw)

        monkeypatch.setattr(pins, "pin", pin)
        engine.native.put_chunk(rec.upload_id, *parts[1])
        monkeypatch.undo()
        fired[0].join(10)
        assert not fired[0].is_alive()
        st = engine.native.status(rec.upload_id)
        assert (st.upload.state, st.pinned_chunks) == (upload_rows.OPEN, 2)
        assert st.upload.expires_at is not None and st.upload.expires_at > time.time() + 3600
        with engine.core.db.read() as conn:
            assert reference_mismatches(conn) == []
