"""One upload written by several nodes sharing PostgreSQL and the data dirs: a request that
lands on another node than the previous one, a writer whose lease another node took over.

PostgreSQL only where the interleaving needs it: SQLite's write transaction takes its lock at
BEGIN, so nothing commits between an append's read of the upload and its lease."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from edgestore.config import load_settings
from edgestore.engine import Engine
from edgestore.errors import OffsetConflict, StorageUnavailable
from edgestore.metadata import uploads as upload_rows
from tests.helpers import SMALL_CHUNKS, KiB, blocks_of, random_bytes, read_all


def test_offset_is_checked_against_the_upload_as_leased(tmp_path, pg_url, monkeypatch) -> None:
    """Node A reads the upload (offset 0); before it takes the lease, node B appends 10 KiB
    at offset 0 and releases it. A's request was sent for offset 0 too: it must be refused
    (409), not appended after B's bytes. Checked against the read made before the lease
    (a READ COMMITTED statement of its own), A's bytes were stored at 10 KiB."""
    settings = load_settings(home=tmp_path / "home", database_url=pg_url, **SMALL_CHUNKS)
    first, second = random_bytes(10 * KiB, seed=1), random_bytes(10 * KiB, seed=2)
    with Engine.open(settings) as a, Engine.open(settings) as b:
        up = a.uploads.create(length=len(first) + len(second))
        real_acquire = upload_rows.acquire_lock
        raced: list[bool] = []

        def acquire(conn: Any, upload_id: str, owner: str, lease: float) -> None:
            if not raced:  # A's first lease: B's whole request commits just before it
                raced.append(True)
                b.uploads.append(up.upload_id, 0, blocks_of(first, 4 * KiB))
            real_acquire(conn, upload_id, owner, lease)

        monkeypatch.setattr(upload_rows, "acquire_lock", acquire)
        with pytest.raises(OffsetConflict) as info:
            a.uploads.append(up.upload_id, 0, blocks_of(second, 4 * KiB))
        assert info.value.expected == len(first)
        monkeypatch.setattr(upload_rows, "acquire_lock", real_acquire)
        assert a.uploads.get(up.upload_id).offset == len(first)
        rec = b.uploads.append(up.upload_id, len(first), blocks_of(second, 4 * KiB))
        assert rec.state == upload_rows.COMPLETE and rec.version_id
        assert read_all(a, a.objects.by_version_id(rec.version_id)) == first + second


def test_a_tail_whose_commit_went_unanswered_is_kept(make_settings) -> None:
    """The checkpoint's COMMIT reaches the database, but the answer is lost (the connection
    drops, a PostgreSQL failover): the request fails, yet the upload's row may now name the
    new tail. Its files must stay (gc removes them if no row does): deleted, HEAD reported
    an offset over bytes gone, and every later append failed to read the tail back."""
    settings = make_settings(**SMALL_CHUNKS)
    data = random_bytes(40 * KiB, seed=3)
    with Engine.open(settings) as node:
        up = node.uploads.create(length=len(data))
        db = node.core.db
        real_write = db.write
        lost = [False]

        @contextmanager
        def write(*, durable: bool = True, **options: Any) -> Iterator[Any]:
            with real_write(durable=durable, **options) as conn:
                yield conn
            if durable and not lost[0]:  # committed; the answer never comes
                lost[0] = True
                raise StorageUnavailable("metadata database unavailable: connection lost")

        db.write = write  # type: ignore[method-assign]
        with pytest.raises(StorageUnavailable):
            node.uploads.append(up.upload_id, 0, blocks_of(data[: 10 * KiB], 4 * KiB))
        db.write = real_write  # type: ignore[method-assign]
        assert node.uploads.get(up.upload_id).offset == 10 * KiB  # it did commit
        rec = node.uploads.append(up.upload_id, 10 * KiB, blocks_of(data[10 * KiB :], 4 * KiB))
        assert rec.state == upload_rows.COMPLETE and rec.version_id
        assert read_all(node, node.objects.by_version_id(rec.version_id)) == data
