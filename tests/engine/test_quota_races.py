"""Bucket quotas under concurrent reservations (PostgreSQL: SQLite serialises write
transactions, so two checks cannot both read the usage before either inserts there)."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from edgestore.config import load_settings
from edgestore.engine import Engine
from edgestore.errors import QuotaExceeded
from edgestore.metadata import quotas

QUOTA = 100_000


@pytest.mark.parametrize("how", ["tus", "declared"])
def test_two_uploads_created_at_once_cannot_jointly_exceed_the_quota(
    tmp_path, pg_url, monkeypatch, how: str
) -> None:
    """Two nodes each create (or declare the length of) a 60 000-byte upload in a bucket with
    room for 100 000. Each reads the bucket's usage before the other's reservation commits:
    checked in separate READ COMMITTED transactions, both saw 0 and both were accepted (120 000
    reserved in a 100 000-byte bucket). One of them must be refused."""
    settings = load_settings(
        home=tmp_path / "home", database_url=pg_url, bucket_quotas={"small": QUOTA}
    )
    with Engine.open(settings) as engine, Engine.open(settings) as other:
        deferred = []
        if how == "declared":
            deferred = [e.uploads.create(bucket="small") for e in (engine, other)]
        both_read = threading.Barrier(2, timeout=3)
        real_usage = quotas.bucket_usage

        def usage(conn: Any, bucket: str, *rest: Any) -> int:
            used = real_usage(conn, bucket, *rest)
            try:  # both transactions have read the usage before either goes on
                both_read.wait()
            except threading.BrokenBarrierError:
                pass  # the other one is waiting for us (a lock): go on alone
            return used

        monkeypatch.setattr(quotas, "bucket_usage", usage)
        outcomes: list[object] = []

        def reserve(eng: Engine, i: int) -> None:
            try:
                if how == "tus":
                    outcomes.append(eng.uploads.create(bucket="small", length=60_000))
                else:
                    outcomes.append(eng.uploads.declare_length(deferred[i].upload_id, 60_000))
            except Exception as exc:
                outcomes.append(exc)

        threads = [
            threading.Thread(target=reserve, args=(e, i)) for i, e in enumerate((engine, other))
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        monkeypatch.undo()
        refused = [o for o in outcomes if isinstance(o, QuotaExceeded)]
        assert len(outcomes) == 2 and len(refused) == 1, outcomes
        with engine.core.db.read() as conn:
            assert quotas.bucket_usage(conn, "small") <= QUOTA
