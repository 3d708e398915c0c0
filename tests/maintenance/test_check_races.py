"""`check --fix` beside writers: a recount that read a count and wrote it back would overwrite
the increments of versions and uploads committed in between. Two writer engines (two nodes)
and a third for the check, on one database; each recount's write is held back a moment
(a real delay in the check's own connection) so writers do commit inside that window."""

from __future__ import annotations

import hashlib
import random
import threading
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event

from edgestore.config import load_settings
from edgestore.engine import Engine
from edgestore.engine.native import ManifestChunk
from edgestore.maintenance import check as checks
from edgestore.metadata import totals
from edgestore.metadata.chunks import reference_mismatches
from edgestore.metadata.schema import bucket_totals, chunks
from tests.helpers import SMALL_CHUNKS, KiB, random_bytes
from tests.native import chunks_of

BUCKETS = ("hot", "warm")
POOL = [random_bytes(size, seed=s) for s, size in enumerate((1, 3 * KiB, 70 * KiB, 200 * KiB))]


def _write_once(engine: Engine, rnd: random.Random, mine: list[Any]) -> None:
    """One write of the kinds that change refcounts and totals: a put, a tus upload in two
    appends (its parts' references handed over to the version), a native session (pins),
    or a delete (an object's last version among them)."""
    if mine and rnd.random() < 0.35:
        engine.objects.delete(mine.pop(rnd.randrange(len(mine))))
        return
    data, bucket, key = rnd.choice(POOL), rnd.choice(BUCKETS), f"k{rnd.randrange(3)}"
    kind = rnd.randrange(3)
    if kind == 0:
        mine.append(engine.put([data], bucket=bucket, key=key))
    elif kind == 1:
        rec = engine.uploads.create(bucket=bucket, key=key, length=len(data))
        half = len(data) // 2
        engine.uploads.append(rec.upload_id, 0, [data[:half]])
        done = engine.uploads.append(rec.upload_id, half, [data[half:]])
        assert done.version_id is not None
        mine.append(engine.objects.by_version_id(done.version_id))
    else:
        parts = chunks_of(data)
        session = engine.native.create(size=len(data), bucket=bucket, key=key)
        for cid in engine.native.missing(session.upload_id, [cid for cid, _ in parts]):
            engine.native.put_chunk(session.upload_id, cid, dict(parts)[cid])
        manifest = [ManifestChunk(cid, len(c)) for cid, c in parts]
        digest = hashlib.sha256(data).hexdigest()
        mine.append(engine.native.finalize(session.upload_id, manifest, digest).version)


def _writer(
    engine: Engine,
    rnd: random.Random,
    mine: list[Any],
    started: threading.Barrier,
    stop: threading.Event,
    errors: list[BaseException],
) -> None:
    try:
        started.wait()
        while not stop.is_set():
            _write_once(engine, rnd, mine)
    except BaseException as exc:
        errors.append(exc)


def _slow_recount_writes(engine: Engine, seconds: float) -> None:
    """Hold back each write the check makes to a refcount or a bucket's totals."""

    @event.listens_for(engine.core.db.engine, "before_cursor_execute")
    def _pause(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("UPDATE") and (
            "chunks" in statement or "bucket_totals" in statement
        ):
            time.sleep(seconds)


def _wait_for_writes(engine: Engine, versions: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with engine.core.db.read() as conn:
            if totals.of_store(conn).versions >= versions:
                return
        time.sleep(0.05)
    raise AssertionError("the writers made no versions")


def _drift(engine: Engine) -> None:
    """Every refcount and every bucket's totals wrong, so the fix recounts them all."""
    with engine.core.db.write() as conn:
        conn.execute(sa.update(chunks).values(refcount=chunks.c.refcount + 3))
        conn.execute(sa.update(bucket_totals).values(bytes=bucket_totals.c.bytes + 7))


def _fix_beside_writers(tmp_path: Path, db_url: str, rounds: int) -> None:
    settings = load_settings(
        home=tmp_path / "home", database_url=db_url, bucket_quota_bytes=1 << 40, **SMALL_CHUNKS
    )
    errors: list[BaseException] = []
    with (
        Engine.open(settings) as one,
        Engine.open(settings) as two,
        Engine.open(settings) as checker,
    ):
        _slow_recount_writes(checker, 0.05)
        kept: list[list[Any]] = [[] for _ in range(4)]
        for rnd_seed in range(rounds):
            stop = threading.Event()
            started = threading.Barrier(5)

            threads = [
                threading.Thread(
                    target=_writer,
                    args=(engine, random.Random(rnd_seed * 10 + i), kept[i], started, stop, errors),
                )
                for i, engine in enumerate((one, two, one, two))
            ]
            for t in threads:
                t.start()
            started.wait()
            _wait_for_writes(checker, 3)  # writers under way
            _drift(checker)
            report = checks.check(checker, fix=True)
            time.sleep(0.3)  # and still writing after the fix
            stop.set()
            for t in threads:
                t.join(120)
            assert errors == []
            assert report.of(checks.REFCOUNT).fixed > 0 and report.of(checks.BUCKET_TOTALS).fixed
            with checker.core.db.read() as conn:  # no recount since: what the fix left
                assert reference_mismatches(conn) == []
                assert totals.mismatches(conn) == {}
                assert totals.of_store(conn).versions > 0


def test_fix_beside_writers_on_postgresql_loses_no_change(tmp_path: Path, pg_url: str) -> None:
    """PostgreSQL: three writer threads in two engines, and the check in a third."""
    _fix_beside_writers(tmp_path, pg_url, rounds=3)


def test_fix_beside_writers_on_sqlite_loses_no_change(tmp_path: Path) -> None:
    """SQLite: the fix's write transactions queue with the writers' (a server in another
    process takes the same lock)."""
    _fix_beside_writers(tmp_path, f"sqlite:///{tmp_path / 'meta.db'}", rounds=2)
