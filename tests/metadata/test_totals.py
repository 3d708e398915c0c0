"""The per-bucket totals (metadata/totals.py) always equal the sum of the bucket's versions:
after every way a version is made or deleted, on SQLite and PostgreSQL, and under concurrent
creations and deletions in one bucket (PostgreSQL)."""

from __future__ import annotations

import hashlib
import random
import threading

from edgestore.config import load_settings
from edgestore.engine import Engine
from edgestore.engine.native import ManifestChunk
from edgestore.maintenance import gc
from edgestore.metadata import objects as object_rows
from edgestore.metadata import quotas, totals
from edgestore.metadata.objects import VersionInfo
from edgestore.metadata.uploads import UploadRecord
from tests.conftest import SettingsFactory
from tests.helpers import SMALL_CHUNKS, KiB, random_bytes
from tests.native import chunks_of

BUCKETS = ("a", "b", "default")


def _version(engine: Engine, rec: UploadRecord) -> VersionInfo:
    assert rec.version_id is not None, rec
    with engine.core.db.read() as conn:
        info = object_rows.get_version(conn, rec.version_id)
    assert info is not None
    return info


def _put(engine: Engine, rnd: random.Random, bucket: str, key: str) -> list[VersionInfo]:
    data = random_bytes(rnd.choice((0, 1, 5 * KiB, 90 * KiB)), seed=rnd.randrange(1 << 30))
    return [engine.put([data], bucket=bucket, key=key)]


def _tus(engine: Engine, rnd: random.Random, bucket: str, key: str) -> list[VersionInfo]:
    data = random_bytes(rnd.randrange(1, 120 * KiB), seed=rnd.randrange(1 << 30))
    rec = engine.uploads.create(bucket=bucket, key=key, length=len(data))
    half = len(data) // 2
    engine.uploads.append(rec.upload_id, 0, [data[:half]])
    return [_version(engine, engine.uploads.append(rec.upload_id, half, [data[half:]]))]


def _concat(engine: Engine, rnd: random.Random, bucket: str, key: str) -> list[VersionInfo]:
    ids = []
    for _ in range(rnd.randint(1, 3)):
        data = random_bytes(rnd.randrange(1, 60 * KiB), seed=rnd.randrange(1 << 30))
        part = engine.uploads.create(bucket=bucket, length=len(data), is_partial=True)
        engine.uploads.append(part.upload_id, 0, [data])
        ids.append(part.upload_id)
    return [_version(engine, engine.uploads.concatenate(ids, bucket=bucket, key=key))]


def _native(engine: Engine, rnd: random.Random, bucket: str, key: str) -> list[VersionInfo]:
    data = random_bytes(rnd.randrange(1, 150 * KiB), seed=rnd.randrange(1 << 30))
    parts = chunks_of(data)
    session = engine.native.create(size=len(data), bucket=bucket, key=key)
    for cid in engine.native.missing(session.upload_id, [cid for cid, _ in parts]):
        engine.native.put_chunk(session.upload_id, cid, dict(parts)[cid])
    manifest = [ManifestChunk(cid, len(c)) for cid, c in parts]
    done = engine.native.finalize(session.upload_id, manifest, hashlib.sha256(data).hexdigest())
    return [done.version]


def _assert_consistent(engine: Engine) -> None:
    with engine.core.db.read() as conn:
        assert totals.mismatches(conn) == {}
        for bucket in BUCKETS:  # and the quota reads them: nothing else is open here
            assert quotas.bucket_usage(conn, bucket) == totals.of_bucket(conn, bucket).bytes


def test_totals_follow_every_way_a_version_is_made_and_deleted(
    make_settings: SettingsFactory,
) -> None:
    """A seeded random sequence of puts, tus completions, concatenation finals, native
    finalizes, version deletes (an object's last one too) and gc runs, in three buckets and
    a few keys: after each step every bucket's totals equal the sum over its versions."""
    settings = make_settings(bucket_quota_bytes=1 << 40, **SMALL_CHUNKS)
    rnd = random.Random(20261128)
    makers = (_put, _tus, _concat, _native)
    live: list[VersionInfo] = []
    with Engine.open(settings) as engine:
        for step in range(40):
            action = rnd.random()
            if action < 0.3 and live:
                doomed = live.pop(rnd.randrange(len(live)))
                engine.objects.delete(doomed)
            elif action < 0.35:
                gc.collect(engine, grace=0)
            else:
                maker = makers[step % len(makers)]
                live += maker(engine, rnd, rnd.choice(BUCKETS), f"k{rnd.randrange(4)}")
            _assert_consistent(engine)
        for info in live:  # down to nothing: every bucket back to zero
            engine.objects.delete(info)
        _assert_consistent(engine)
        with engine.core.db.read() as conn:
            assert totals.of_store(conn) == totals.BucketTotal(0, 0)


def test_concurrent_creations_and_deletions_in_one_bucket_lose_no_update(
    tmp_path, pg_url: str
) -> None:
    """PostgreSQL, two engines (two nodes), three threads each: versions of a few shared keys
    made (from a shared pool of contents, so they share chunk rows) and deleted at once, an
    object's last version among them. Under READ COMMITTED a read-then-write of the totals
    would lose increments; a lock taken out of order would deadlock (a 503)."""
    settings = load_settings(
        home=tmp_path / "home", database_url=pg_url, bucket_quota_bytes=1 << 40, **SMALL_CHUNKS
    )
    pool = [random_bytes(size, seed=s) for s, size in enumerate((1, 3 * KiB, 70 * KiB, 200 * KiB))]
    errors: list[BaseException] = []
    with Engine.open(settings) as one, Engine.open(settings) as two:
        start = threading.Barrier(6)

        def worker(engine: Engine, seed: int) -> None:
            rnd = random.Random(seed)
            mine: list[VersionInfo] = []
            try:
                start.wait()
                for _ in range(25):
                    if mine and rnd.random() < 0.45:
                        engine.objects.delete(mine.pop(rnd.randrange(len(mine))))
                    else:
                        data = rnd.choice(pool)
                        key = f"k{rnd.randrange(3)}"
                        if rnd.random() < 0.5:
                            mine.append(engine.put([data], bucket="hot", key=key))
                        else:
                            rec = engine.uploads.create(bucket="hot", key=key, length=len(data))
                            mine.append(
                                _version(engine, engine.uploads.append(rec.upload_id, 0, [data]))
                            )
            except BaseException as exc:
                errors.append(exc)

        threads = [
            threading.Thread(target=worker, args=(engine, seed))
            for seed, engine in enumerate((one, two) * 3)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert errors == []
        with one.core.db.read() as conn:
            assert totals.mismatches(conn) == {}
            assert totals.of_bucket(conn, "hot").versions > 0
