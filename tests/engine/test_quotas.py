"""Bucket quotas in the engine (metadata/quotas.py): partial uploads (tus concatenation) count
in the bucket they were created for until a final takes their bytes over, never twice; native
sessions hold no more chunks than their declared size. On SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from edgestore.engine import Engine
from edgestore.errors import QuotaExceeded, TooLarge
from edgestore.metadata import quotas
from edgestore.metadata import uploads as upload_rows
from tests.conftest import SettingsFactory
from tests.helpers import SMALL_CHUNKS, KiB, random_bytes, sha256_hex

QUOTA = 100_000


@pytest.fixture
def quota_engine(make_settings: SettingsFactory):
    settings = make_settings(bucket_quotas={"small": QUOTA, "default": 10}, **SMALL_CHUNKS)
    with Engine.open(settings) as eng:
        yield eng


def _usage(engine: Engine, bucket: str) -> int:
    with engine.core.db.read() as conn:
        return quotas.bucket_usage(conn, bucket)


def _partial(engine: Engine, data: bytes, *, deferred: bool = False) -> str:
    length = None if deferred else len(data)
    rec = engine.uploads.create(bucket="small", length=length, is_partial=True)
    engine.uploads.append(rec.upload_id, 0, [data], length=len(data) if deferred else None)
    return rec.upload_id


def test_a_partial_reserves_its_length_in_its_bucket(quota_engine: Engine) -> None:
    """A tenant's partials that no final ever uses must not hold unlimited bytes: each one
    counts in the bucket it was created for, as any other open upload does."""
    uploads = quota_engine.uploads
    first = uploads.create(bucket="small", length=60_000, is_partial=True)
    assert _usage(quota_engine, "small") == 60_000
    with pytest.raises(QuotaExceeded):
        uploads.create(bucket="small", length=60_000, is_partial=True)
    with pytest.raises(QuotaExceeded):
        uploads.create(bucket="small", length=60_000)
    uploads.append(first.upload_id, 0, [random_bytes(60_000, seed=1)])  # complete: still held
    assert _usage(quota_engine, "small") == 60_000
    uploads.terminate(first.upload_id)  # released: its room is free again
    assert _usage(quota_engine, "small") == 0
    uploads.create(bucket="small", length=60_000, is_partial=True)


def test_a_deferred_partial_is_bounded_as_its_bytes_arrive(quota_engine: Engine) -> None:
    uploads = quota_engine.uploads
    rec = uploads.create(bucket="small", is_partial=True)
    with pytest.raises(QuotaExceeded):
        uploads.append(rec.upload_id, 0, [random_bytes(QUOTA + 1, seed=2)])
    uploads.append(rec.upload_id, 0, [random_bytes(70_000, seed=2)])
    assert _usage(quota_engine, "small") == 70_000
    with pytest.raises(QuotaExceeded):
        uploads.create(bucket="small", length=40_000)
    with pytest.raises(QuotaExceeded):  # declaring its length takes the room it adds
        uploads.declare_length(rec.upload_id, QUOTA + 1)
    uploads.declare_length(rec.upload_id, QUOTA)


def test_a_final_takes_its_partials_bytes_over_without_counting_them_twice(
    quota_engine: Engine,
) -> None:
    uploads = quota_engine.uploads
    ids = [_partial(quota_engine, random_bytes(40_000, seed=s)) for s in (3, 4)]
    assert _usage(quota_engine, "small") == 80_000
    final = uploads.concatenate(ids, bucket="small", key="joined")  # 80 000 + 80 000 > quota
    assert final.state == upload_rows.COMPLETE
    assert _usage(quota_engine, "small") == 80_000  # the version; the partials no more
    uploads.create(bucket="small", length=20_000)
    with pytest.raises(QuotaExceeded):
        uploads.create(bucket="small", length=1)
    # a second final from the same partials is a second version: counted, and refused here
    with pytest.raises(QuotaExceeded):
        uploads.concatenate(ids, bucket="small", key="again")


def test_a_final_waiting_for_deferred_partials_completes_within_the_quota(
    quota_engine: Engine,
) -> None:
    """A final created before its partials' lengths are known reserves nothing, so the
    partials go on counting their bytes; when the last one completes, the final takes them
    over: checked without counting them twice, it fits."""
    uploads = quota_engine.uploads
    parts = [uploads.create(bucket="small", is_partial=True) for _ in range(2)]
    final = uploads.concatenate([p.upload_id for p in parts], bucket="small", key="late")
    assert final.state == upload_rows.OPEN and final.length is None
    for p, seed in zip(parts, (5, 6), strict=True):
        uploads.append(p.upload_id, 0, [random_bytes(45_000, seed=seed)], length=45_000)
    done = uploads.get(final.upload_id)
    assert done.state == upload_rows.COMPLETE, done
    assert _usage(quota_engine, "small") == 90_000


def test_a_waiting_final_that_ends_hands_the_bytes_back_to_its_partials(
    quota_engine: Engine,
) -> None:
    uploads = quota_engine.uploads
    part = uploads.create(bucket="small", length=50_000, is_partial=True)
    final = uploads.concatenate([part.upload_id], bucket="small", key="never")
    assert final.state == upload_rows.OPEN and _usage(quota_engine, "small") == 50_000
    uploads.terminate(final.upload_id)
    assert _usage(quota_engine, "small") == 50_000  # the partial holds its room again


def test_a_partial_for_no_bucket_counts_in_none(quota_engine: Engine) -> None:
    """Only a key not limited to a bucket creates partials for none; it may write to any
    bucket anyway, so they count nowhere (not in `default`, which a final may not be in)."""
    rec = quota_engine.uploads.create(length=50_000, is_partial=True)
    assert rec.bucket is None and _usage(quota_engine, "default") == 0


def test_a_native_session_holds_no_more_chunks_than_its_size(quota_engine: Engine) -> None:
    """A session reserves its declared size; the chunks it pins (each PUT pushing its expiry
    back) must stay within it, or a 1-byte session would hold any number of bytes."""
    native = quota_engine.native
    session = native.create(bucket="small", key="n", size=40 * KiB)
    for seed in (7, 8):
        data = random_bytes(20 * KiB, seed=seed)
        native.put_chunk(session.upload_id, sha256_hex(data), data)
    extra = random_bytes(KiB, seed=9)
    with pytest.raises(TooLarge):
        native.put_chunk(session.upload_id, sha256_hex(extra), extra)
    stored = random_bytes(KiB, seed=10)  # stored for another session: pinning it is held too
    other = native.create(bucket="other", key="o", size=KiB)
    native.put_chunk(other.upload_id, sha256_hex(stored), stored)
    with pytest.raises(TooLarge):
        native.missing(session.upload_id, [sha256_hex(stored)])


@pytest.mark.parametrize("partial", [False, True], ids=["upload", "partial"])
def test_two_appends_at_once_cannot_jointly_overshoot_a_deferred_quota(
    quota_engine: Engine, partial: bool
) -> None:
    """Two uploads of deferred length in one bucket, each appending 60 000 bytes at once.
    Each append took the room left when it started (100 000): both were accepted and the
    bucket held 120 000 bytes against its 100 000. The second to commit is refused now, and
    keeps none of its bytes."""
    uploads = quota_engine.uploads
    recs = [uploads.create(bucket="small", is_partial=partial) for _ in range(2)]
    both_started = threading.Barrier(2, timeout=10)

    def blocks(seed: int) -> Iterator[bytes]:
        both_started.wait()  # each append has taken its room before either sends a byte
        yield random_bytes(60_000, seed=seed)

    outcomes: list[object] = []

    def append(i: int) -> None:
        try:
            outcomes.append(uploads.append(recs[i].upload_id, 0, blocks(70 + i)))
        except Exception as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=append, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    refused = [o for o in outcomes if isinstance(o, QuotaExceeded)]
    assert len(outcomes) == 2 and len(refused) == 1, outcomes
    assert "60000 more bytes on top of the 60000" in str(refused[0])
    assert sorted(uploads.get(r.upload_id).offset for r in recs) == [0, 60_000]
    assert _usage(quota_engine, "small") == 60_000
