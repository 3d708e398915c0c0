"""tus concatenation in the engine (engine/concat.py): a final POST sent again (its answer
lost) finds the final it made, instead of making a second version of the same partials; finals
created at once (PostgreSQL: SQLite serialises write transactions) neither deadlock nor
duplicate."""

from __future__ import annotations

import threading

from edgestore.config import load_settings
from edgestore.engine import Engine
from edgestore.metadata import uploads as upload_rows
from edgestore.metadata.chunks import reference_mismatches
from tests.helpers import SMALL_CHUNKS, KiB, blocks_of, random_bytes, read_all
from tests.races import in_thread, wait_until_blocked


def _partials(engine: Engine, *sizes: int, seed: int) -> tuple[list[str], bytes]:
    ids, data = [], b""
    for i, n in enumerate(sizes):
        part = random_bytes(n, seed=seed + i)
        rec = engine.uploads.create(length=n, is_partial=True)
        engine.uploads.append(rec.upload_id, 0, [part])
        ids.append(rec.upload_id)
        data += part
    return ids, data


def _versions(engine: Engine, key: str) -> list[int]:
    """The version numbers the key has in the default bucket."""
    infos = [i for i in engine.objects.list(bucket="default", prefix=key) if i.key == key]
    return sorted(v.version for info in infos for v in engine.objects.versions(info.object_id))


def test_the_same_final_request_again_returns_the_first_final(small_engine: Engine) -> None:
    uploads = small_engine.uploads
    ids, data = _partials(small_engine, 300 * KiB, 200 * KiB, seed=700)
    meta = {"key": "again", "content_type": "text/plain", "user_metadata": {"a": "1"}}
    first = uploads.concatenate(ids, **meta)
    again = uploads.concatenate(ids, **meta)
    assert again.upload_id == first.upload_id and again.state == upload_rows.COMPLETE
    assert _versions(small_engine, "again") == [1]
    assert first.version_id is not None
    assert read_all(small_engine, small_engine.objects.by_version_id(first.version_id)) == data


def test_a_different_request_makes_its_own_final(small_engine: Engine) -> None:
    uploads = small_engine.uploads
    ids, _ = _partials(small_engine, 100 * KiB, 100 * KiB, seed=710)
    first = uploads.concatenate(ids, key="differ")
    others = [
        uploads.concatenate(list(reversed(ids)), key="differ"),
        uploads.concatenate(ids, key="differ", filename="f.bin"),
        uploads.concatenate(ids, key="differ", user_metadata={"b": "2"}),
        uploads.concatenate(ids, key="differ", bucket="other"),
    ]
    assert len({first.upload_id, *(o.upload_id for o in others)}) == 5


def test_once_its_version_is_not_the_latest_the_request_makes_a_new_one(
    small_engine: Engine,
) -> None:
    """Restoring older bytes by concatenating the same partials again is a new version: the
    first final's version was superseded (or deleted), so it no longer stands for the
    request."""
    uploads = small_engine.uploads
    ids, data = _partials(small_engine, 150 * KiB, 50 * KiB, seed=720)
    first = uploads.concatenate(ids, key="restore")
    small_engine.put([b"something else"], key="restore")
    second = uploads.concatenate(ids, key="restore")
    assert second.upload_id != first.upload_id and second.version_id is not None
    latest = small_engine.objects.by_version_id(second.version_id)
    assert latest.version == 3 and read_all(small_engine, latest) == data
    small_engine.objects.delete(latest)
    third = uploads.concatenate(ids, key="restore")
    assert third.upload_id not in (first.upload_id, second.upload_id)


def test_a_waiting_final_is_found_and_completes_once(small_engine: Engine) -> None:
    uploads = small_engine.uploads
    done, _head = _partials(small_engine, 120 * KiB, seed=730)
    rest = random_bytes(80 * KiB, seed=731)
    open_part = uploads.create(length=len(rest), is_partial=True)
    ids = [*done, open_part.upload_id]
    first = uploads.concatenate(ids, key="waiting")
    again = uploads.concatenate(ids, key="waiting")
    assert first.state == upload_rows.OPEN and again.upload_id == first.upload_id
    uploads.append(open_part.upload_id, 0, [rest])
    assert uploads.get(first.upload_id).state == upload_rows.COMPLETE
    assert _versions(small_engine, "waiting") == [1]
    with small_engine.core.db.read() as conn:
        assert reference_mismatches(conn) == []


def test_a_terminated_final_is_not_returned(small_engine: Engine) -> None:
    uploads = small_engine.uploads
    ids, _ = _partials(small_engine, 64 * KiB, seed=740)
    waiting_on = uploads.create(length=10, is_partial=True)
    first = uploads.concatenate([*ids, waiting_on.upload_id], key="gone")
    uploads.terminate(first.upload_id)
    second = uploads.concatenate([*ids, waiting_on.upload_id], key="gone")
    assert second.upload_id != first.upload_id and second.state == upload_rows.OPEN


def test_identical_finals_at_once_make_one_version(small_engine: Engine) -> None:
    """Two nodes handed the same final at the same moment (on PostgreSQL truly in parallel):
    the partials' row locks order them, and the second finds the first's final."""
    ids, _ = _partials(small_engine, 200 * KiB, 100 * KiB, seed=750)
    results: list[str] = []
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def run() -> None:
        try:
            start.wait()
            results.append(small_engine.uploads.concatenate(ids, key="race").upload_id)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(set(results)) == 1
    assert _versions(small_engine, "race") == [1]


def test_a_retry_is_not_refused_by_the_quota_the_first_final_filled(make_settings) -> None:
    size = 256 * KiB
    with Engine.open(make_settings(bucket_quotas={"tight": size})) as engine:
        ids, _ = _partials(engine, size // 2, size // 2, seed=760)
        first = engine.uploads.concatenate(ids, bucket="tight", key="full")
        assert engine.uploads.concatenate(ids, bucket="tight", key="full") == first


def _partial(engine: Engine, data: bytes) -> str:
    rec = engine.uploads.create(length=len(data), is_partial=True)
    engine.uploads.append(rec.upload_id, 0, blocks_of(data))
    return rec.upload_id


def test_two_finals_naming_the_same_partials_in_opposite_orders_both_complete(
    tmp_path, pg_url
) -> None:
    """tus-js-client's parallel uploads of two files may share nothing, but two finals may
    name the same partials in different orders (`final;a b` and `final;b a`), at once: each
    locks the partials; taken in the order named, each would hold one and wait for the
    other's (a deadlock, one final refused with a 500). Locked in one order, both wait in
    turn and complete."""
    settings = load_settings(home=tmp_path / "home", database_url=pg_url, **SMALL_CHUNKS)
    with Engine.open(settings) as engine:
        data = {seed: random_bytes(3000, seed=seed) for seed in (21, 22)}
        ids = {_partial(engine, d): d for d in data.values()}
        lo, hi = sorted(ids)
        made: list[str | None] = []
        with engine.core.db.write() as conn:
            # A final `lo hi` being created: it holds lo...
            upload_rows.get_open(conn, lo, for_update=True)
            # ...while a final `hi lo` is created too, and waits for lo
            t, errors = in_thread(
                lambda: made.append(engine.uploads.concatenate([hi, lo]).version_id)
            )
            wait_until_blocked(engine)
            upload_rows.get_open(conn, hi, for_update=True)  # the first final goes on
        t.join(10)
        assert not t.is_alive()
        assert errors == [] and made[0] is not None, errors
        info = engine.objects.by_version_id(made[0])
        assert read_all(engine, info) == ids[hi] + ids[lo]
