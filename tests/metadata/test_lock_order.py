"""PostgreSQL: transactions that change the reference counts of the same chunks at once
(uploads checkpointing, versions created and deleted) lock those rows in one order, so they
never deadlock; a deadlock or serialization failure that still happens is a retryable 503."""

from __future__ import annotations

import random
import threading
from collections import Counter
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from edgestore.api.errors import error_response
from edgestore.errors import TransactionConflict
from edgestore.metadata import chunks as chunk_index
from edgestore.metadata import objects as object_rows
from edgestore.metadata.db import Database
from edgestore.metadata.schema import chunks, objects
from edgestore.types import ChunkId, Compression, Layout
from tests.races import wait_until_blocked

pytestmark = pytest.mark.postgres


def _chunk_rows(db: Database, n: int) -> list[str]:
    ids = [f"{i:064x}" for i in range(n)]
    with db.write() as conn:
        for cid in ids:
            record = chunk_index.ChunkRecord(
                chunk_id=ChunkId(cid),
                raw_size=1,
                stored_size=1,
                compression=Compression("none"),
                layout=Layout.INLINE,
                ec_k=1,
                ec_m=0,
                shard_size=1,
                generation="g",
                refcount=0,
                inline_data=b"x",
            )
            assert chunk_index.insert(db, conn, record, [])
    return ids


def test_reference_counts_changed_in_any_order_never_deadlock(pg_url: str) -> None:
    """Two uploads of the same chunks in different orders checkpoint at once, or a version
    is deleted while another of the same chunks is made: each transaction updated the chunk
    rows in its own order, and PostgreSQL broke the deadlock by failing one (a raw 500)."""
    db = Database(pg_url)
    try:
        db.migrate()
        ids = _chunk_rows(db, 200)
        errors: list[BaseException] = []
        start = threading.Barrier(4)

        def worker(seed: int) -> None:
            rnd = random.Random(seed)
            start.wait()
            try:
                for _ in range(6):
                    order = ids[:]
                    rnd.shuffle(order)
                    with db.write() as conn:
                        chunk_index.add_refs(conn, Counter(order))
                    rnd.shuffle(order)
                    with db.write() as conn:
                        chunk_index.drop_refs(conn, Counter(order))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert errors == []
    finally:
        db.close()


def _bump(cid: str) -> sa.Update:
    return sa.update(chunks).where(chunks.c.chunk_id == cid).values(refcount=chunks.c.refcount + 1)


def _against_a_deadlock(db: Database, pg_url: str, *, retry: bool) -> tuple[list[Any], int]:
    """Another session locks chunk row 0 then row 1, our transaction row 1 then row 0: a
    deadlock, in which PostgreSQL fails ours (it waited first). What ours returned or
    raised, and how many times it ran."""
    ids = _chunk_rows(db, 2)
    runs = 0

    def work(conn: Connection) -> str:
        nonlocal runs
        runs += 1
        conn.execute(_bump(ids[1]))
        conn.execute(_bump(ids[0]))
        return "done"

    def ours() -> str:
        if retry:
            return db.transact(work)
        with db.write() as conn:
            return work(conn)

    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(ours())
        except BaseException as exc:
            outcome.append(exc)

    other = sa.create_engine(pg_url)
    try:
        with other.connect() as holder:
            # Only ours may find the deadlock (each waiting session checks after its own
            # deadlock_timeout, and the one that checks first is failed): on a loaded machine
            # the holder's check sometimes came first, and PostgreSQL failed it instead.
            holder.execute(sa.text("SET deadlock_timeout = '60s'"))
            holder.execute(_bump(ids[0]))
            t = threading.Thread(target=run)
            t.start()
            wait_until_blocked(db)
            holder.execute(_bump(ids[1]))  # waits for ours, until PostgreSQL fails it
            holder.commit()
            t.join(30)
            assert not t.is_alive()
    finally:
        other.dispose()
    return outcome, runs


def test_a_deadlock_is_a_retryable_conflict_not_a_500(pg_url: str) -> None:
    """PostgreSQL's deadlock error reached the client as a raw 500; it is a 503 with
    Retry-After now, saying nothing was kept and to retry."""
    db = Database(pg_url)
    try:
        db.migrate()
        outcome, runs = _against_a_deadlock(db, pg_url, retry=False)
        assert runs == 1 and len(outcome) == 1
        exc = outcome[0]
        assert isinstance(exc, TransactionConflict), exc
        assert "deadlock" in str(exc) and "retry" in str(exc)
        response = error_response(exc)
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "1"
    finally:
        db.close()


def test_a_transaction_failed_by_a_deadlock_runs_again(pg_url: str) -> None:
    """Database.transact (a checkpoint, a version's delete) runs a transaction PostgreSQL
    failed to break a deadlock again, and the request succeeds."""
    db = Database(pg_url)
    try:
        db.migrate()
        outcome, runs = _against_a_deadlock(db, pg_url, retry=True)
        assert outcome == ["done"] and runs == 2
        with db.read() as conn:
            assert set(conn.execute(sa.select(chunks.c.refcount)).scalars()) == {2}
    finally:
        db.close()


def test_a_version_made_while_another_of_its_object_is_deleted_does_not_deadlock(
    pg_url: str,
) -> None:
    """A native finalize (or a concatenation) of key K took K's object row, then the chunk
    rows' references; a delete of another version of K, sharing a chunk, takes the chunk
    rows, then K's row (delete_version): each waited for the other. Versions are made
    taking the chunk rows first now, as deletes do."""
    db = Database(pg_url)
    try:
        db.migrate()
        (cid,) = _chunk_rows(db, 1)

        def version(conn: Connection) -> str:
            return object_rows.create_version(
                db,
                conn,
                bucket="b",
                key="k",
                entries=[(cid, 0, 1)],
                sha256=None,
                content_type=None,
                filename=None,
                user_metadata={},
                take_refs=True,
            )

        with db.write() as conn:
            version(conn)
        errors: list[BaseException] = []

        def finalize() -> None:
            try:
                with db.write() as conn:
                    version(conn)
            except BaseException as exc:
                errors.append(exc)

        with db.write() as conn:  # delete_version's steps: the chunk rows, then the object's
            chunk_index.drop_refs(conn, Counter([cid]))
            t = threading.Thread(target=finalize)
            t.start()
            wait_until_blocked(db)
            conn.execute(sa.select(objects.c.object_id).with_for_update()).all()
        t.join(30)
        assert not t.is_alive() and errors == []
    finally:
        db.close()
