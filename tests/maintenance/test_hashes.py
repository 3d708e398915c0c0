"""The whole-file SHA-256 of versions made without one (concatenated uploads)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import sqlalchemy as sa

from edgestore.engine import Engine
from edgestore.maintenance import gc
from edgestore.maintenance.hashes import DigestCursor, fill_missing_sha256
from edgestore.metadata.objects import VersionInfo
from edgestore.metadata.schema import chunks, manifests, object_versions
from tests.helpers import KiB, random_bytes


def test_a_concatenated_version_gets_its_digest_from_the_stored_bytes(
    small_engine: Engine,
) -> None:
    uploads = small_engine.uploads
    parts = [random_bytes(300 * KiB + i, seed=70 + i) for i in range(3)]
    ids = []
    for part in parts:
        up = uploads.create(length=len(part), is_partial=True)
        # Never an object of its own, and SHA-256 states do not join: nothing to hash.
        assert up.hash_state is None
        uploads.append(up.upload_id, 0, [part])
        assert uploads.get(up.upload_id).hash_state is None
        ids.append(up.upload_id)
    final = uploads.concatenate(ids, key="joined")
    done = uploads.get(final.upload_id)
    assert done.version_id is not None
    assert small_engine.objects.by_version_id(done.version_id).sha256 is None

    assert fill_missing_sha256(small_engine) == 1
    whole = hashlib.sha256(b"".join(parts)).hexdigest()
    assert small_engine.objects.by_version_id(done.version_id).sha256 == whole
    assert fill_missing_sha256(small_engine) == 0  # nothing left to do


def test_a_single_upload_is_hashed_as_it_arrives(small_engine: Engine) -> None:
    data = random_bytes(700 * KiB, seed=79)
    up = small_engine.uploads.create(length=len(data), key="single")
    assert up.hash_state is not None
    small_engine.uploads.append(up.upload_id, 0, [data[: 300 * KiB]])
    small_engine.uploads.append(up.upload_id, 300 * KiB, [data[300 * KiB :]])
    done = small_engine.uploads.get(up.upload_id)
    assert done.version_id is not None
    version = small_engine.objects.by_version_id(done.version_id)
    assert version.sha256 == hashlib.sha256(data).hexdigest()
    assert fill_missing_sha256(small_engine) == 0


def test_a_corrupt_chunk_skips_its_version_not_the_whole_round(small_engine: Engine) -> None:
    """A version whose (inline, zstd) chunk rotted is logged and skipped; the others still get
    their digest. A raw codec error used to escape and end the upkeep step every round."""
    broken, fine = _two_versions_one_damaged(small_engine, _flip_magic)
    assert fill_missing_sha256(small_engine) == 1
    assert small_engine.objects.by_version_id(fine.version_id).sha256 == (
        hashlib.sha256(b"other bytes " * 90).hexdigest()
    )
    assert small_engine.objects.by_version_id(broken.version_id).sha256 is None


def test_an_unreadable_version_does_not_hold_up_the_others(small_engine: Engine) -> None:
    """Each round takes a few versions; one that cannot be read stays without a digest, and
    was taken first again every round (and read again): versions behind it never got theirs."""
    broken, fine = _two_versions_one_damaged(small_engine, lambda blob: b"x")
    cursor = DigestCursor()
    filled = [fill_missing_sha256(small_engine, limit=1, cursor=cursor) for _ in range(3)]
    assert sum(filled) == 1
    assert small_engine.objects.by_version_id(fine.version_id).sha256 == (
        hashlib.sha256(b"other bytes " * 90).hexdigest()
    )
    assert small_engine.objects.by_version_id(broken.version_id).sha256 is None


def _flip_magic(blob: bytes) -> bytes:
    damaged = bytearray(blob)
    damaged[0] ^= 0xFF  # the zstd frame's magic
    return bytes(damaged)


def _two_versions_one_damaged(
    engine: Engine, damage: Callable[[bytes], bytes]
) -> tuple[VersionInfo, VersionInfo]:
    """Two small (inline) versions without a digest; `damage` rewrites the first's chunk."""
    broken = engine.put(iter([b"abcdefghij" * 90]), key="broken")
    fine = engine.put(iter([b"other bytes " * 90]), key="fine")
    with engine.core.db.write() as conn:
        conn.execute(sa.update(object_versions).values(sha256=None))
        cid = conn.execute(
            sa.select(manifests.c.chunk_id).where(manifests.c.version_id == broken.version_id)
        ).scalar_one()
        blob = conn.execute(
            sa.select(chunks.c.inline_data).where(chunks.c.chunk_id == cid)
        ).scalar_one()
        conn.execute(
            sa.update(chunks).where(chunks.c.chunk_id == cid).values(inline_data=damage(blob))
        )
    return broken, fine


def test_a_version_deleted_while_it_is_hashed_skips_it_not_the_round(
    small_engine: Engine,
) -> None:
    """Deleted (and its chunks collected) mid-read, a version reads as not found: that one is
    done with, the next still gets its digest (it used to end the round, and the upkeep's
    scrub and repairs after it)."""
    made: dict[str, bytes] = {}
    for key, seed in (("first", 91), ("second", 92)):
        data = random_bytes(2048 * KiB, seed=seed)
        up = small_engine.uploads.create(length=len(data), is_partial=True)
        small_engine.uploads.append(up.upload_id, 0, [data])
        vid = small_engine.uploads.concatenate([up.upload_id], key=key).version_id
        assert vid is not None
        small_engine.uploads.terminate(up.upload_id)  # the version alone holds its chunks
        made[vid] = data
    doomed, kept = sorted(made)  # hashed in version id order
    deleted: list[str] = []

    def delete_doomed() -> None:
        if not deleted:
            small_engine.objects.delete(small_engine.objects.by_version_id(doomed))
            gc.collect(small_engine, grace=0, orphans=False)
            deleted.append(doomed)

    assert fill_missing_sha256(small_engine, check=delete_doomed) == 1
    assert deleted == [doomed]
    assert small_engine.objects.by_version_id(kept).sha256 == hashlib.sha256(made[kept]).hexdigest()
