"""Listing latest versions: pages that never skip or repeat, at a cost that does not grow with
the store (a GROUP BY over every version made each page of a large store take seconds)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from edgestore.metadata import objects as object_rows
from edgestore.metadata.clock import now
from edgestore.metadata.db import Database
from edgestore.metadata.schema import object_versions, objects

KEYS = [
    "a",
    "a b",
    "a%",
    "a%b",
    "a/",
    "a/b",
    "a//b",
    "a_",
    "a_b",
    "ab",
    "aB",
    "A",
    "é",
    "e\u0301",  # the same as "é" to a reader, not to a byte comparison
    "日本/語",
    "😀/x",
    "~",
    "z" * 300,
]


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    database = Database(db_url)
    database.migrate()
    try:
        yield database
    finally:
        database.close()


def _add(db: Database, bucket: str, key: str, versions: int = 1) -> None:
    with db.write() as conn:
        for _ in range(versions):
            object_rows.create_version(
                db,
                conn,
                bucket=bucket,
                key=key,
                entries=[],
                sha256=None,
                content_type=None,
                filename=None,
                user_metadata={},
                take_refs=False,
            )


def _walk(db: Database, bucket: str | None, prefix: str, limit: int) -> list[tuple[str, str]]:
    """Every (bucket, key) listed, following cursors as the API's clients do."""
    seen: list[tuple[str, str]] = []
    after = None
    while True:
        with db.read() as conn:
            page = object_rows.list_latest(
                conn, bucket=bucket, prefix=prefix, after=after, limit=limit
            )
        seen += [(v.bucket, v.key) for v in page]
        if len(page) < limit:
            return seen
        after = object_rows.cursor(page[-1], bucket)


def test_pages_list_every_key_once_in_byte_order(db: Database) -> None:
    for key in KEYS:
        _add(db, "one", key, versions=2)
        _add(db, "two", key)
    for limit in (1, 2, 3, len(KEYS), len(KEYS) + 1):
        assert _walk(db, "one", "", limit) == [("one", k) for k in sorted(KEYS)]
        both = [(b, k) for b in ("one", "two") for k in sorted(KEYS)]
        assert _walk(db, None, "", limit) == both
    for prefix in ("a", "a%", "a_", "a/", "é", "日本", "😀", "A", "a b"):
        wanted = [("one", k) for k in sorted(KEYS) if k.startswith(prefix)]
        assert _walk(db, "one", prefix, 2) == wanted, prefix
        assert _walk(db, None, prefix, 2)[: len(wanted)] == wanted, prefix


def test_the_latest_version_is_listed(db: Database) -> None:
    _add(db, "b", "k", versions=3)
    with db.read() as conn:
        (only,) = object_rows.list_latest(conn, bucket="b", prefix="", after=None, limit=10)
    assert only.version == 3


def test_objects_added_and_removed_between_pages(db: Database) -> None:
    for key in ("k1", "k3", "k5"):
        _add(db, "b", key)
    with db.read() as conn:
        first = object_rows.list_latest(conn, bucket="b", prefix="", after=None, limit=2)
    assert [v.key for v in first] == ["k1", "k3"]
    _add(db, "b", "k2")  # before the cursor: not seen by this walk, nothing shifts
    _add(db, "b", "k4")
    with db.write() as conn:
        object_rows.delete_version(conn, first[1].version_id)  # the cursor's own key
    with db.read() as conn:
        rest = object_rows.list_latest(conn, bucket="b", prefix="", after="k3", limit=2)
    assert [v.key for v in rest] == ["k4", "k5"]


def _bulk(db: Database, bucket: str, n: int) -> None:
    """`n` objects with two versions each, inserted at once (create_version takes ~1 ms)."""
    rows = [(str(uuid.uuid4()), f"{bucket}/{i:07d}") for i in range(n)]
    with db.write() as conn:
        t = now(conn)
        conn.execute(
            sa.insert(objects),
            [
                {"object_id": o, "bucket": bucket, "key": k, "created_at": t, "last_version": 2}
                for o, k in rows
            ],
        )
        conn.execute(
            sa.insert(object_versions),
            [
                {
                    "version_id": str(uuid.uuid4()),
                    "object_id": o,
                    "version": v,
                    "size": 0,
                    "manifest_digest": "0" * 64,
                    "user_metadata": {},
                    "state": "committed",
                    "created_at": t,
                }
                for o, _ in rows
                for v in (1, 2)
            ],
        )


def _steps(db: Database, **kwargs: object) -> int:
    """SQLite virtual-machine instructions one listing page takes: a measure of the work
    done, which timing on a shared machine is not."""
    with db.read() as conn:
        raw = conn.connection.driver_connection
        counted = [0]

        def tick() -> int:
            counted[0] += 1
            return 0

        raw.set_progress_handler(tick, 100)
        try:
            object_rows.list_latest(conn, **kwargs)  # type: ignore[arg-type]
        finally:
            raw.set_progress_handler(None, 0)
    return counted[0] * 100


def test_a_page_costs_the_same_in_a_large_store(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'meta.db'}")
    database.migrate()
    try:
        _bulk(database, "small", 50)
        pages = [
            {"bucket": "small", "prefix": "", "after": None, "limit": 10},
            {"bucket": "small", "prefix": "", "after": "small/0000020", "limit": 10},
            {"bucket": "small", "prefix": "small/00000", "after": None, "limit": 5},
            {"bucket": None, "prefix": "", "after": "small/0000030", "limit": 10},
        ]
        before = [_steps(database, **page) for page in pages]
        _bulk(database, "large", 20_000)
        _bulk(database, "zlarge", 100)
        after = [_steps(database, **page) for page in pages]
        for page, b, a in zip(pages, before, after, strict=True):
            assert a < 2 * b + 1000, (page, b, a)
    finally:
        database.close()
