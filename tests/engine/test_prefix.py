"""The whole-file SHA-256 skips what a stored version already hashed, and is exact anyway."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgestore.buffers import Buffer
from edgestore.codec.hashing import ResumableSha256
from edgestore.engine import Engine, prefix
from edgestore.metadata.schema import manifests
from tests.conftest import SettingsFactory
from tests.helpers import SMALL_CHUNKS, KiB, blocks_of, random_bytes, read_all


class _Counting(ResumableSha256):
    hashed = 0

    def update(self, data: Buffer) -> None:
        _Counting.hashed += memoryview(data).nbytes
        super().update(data)


@pytest.fixture
def hashed(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[_Counting]]:
    """Counts the bytes the whole-file SHA-256 of appends actually hashes."""
    monkeypatch.setattr(prefix, "ResumableSha256", _Counting)
    _Counting.hashed = 0
    yield _Counting


def _put(engine: Engine, data: bytes, key: str) -> str:
    info = engine.put(blocks_of(data, 40 * KiB), key=key)
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert read_all(engine, info) == data
    return info.version_id


def test_the_same_bytes_again_are_not_hashed_again(
    small_engine: Engine, hashed: type[_Counting]
) -> None:
    data = random_bytes(3 * 1024 * KiB + 123, seed=11)
    _put(small_engine, data, "first")
    assert hashed.hashed == len(data)
    hashed.hashed = 0
    _put(small_engine, data, "again")
    assert hashed.hashed == 0


@pytest.mark.parametrize("versions", [1, 2], ids=["grew-once", "keeps-growing"])
def test_a_grown_file_hashes_only_what_is_new(
    small_engine: Engine, hashed: type[_Counting], versions: int
) -> None:
    """Whichever stored version is found first, the upload goes on with one that shares
    its bytes so far where that one ends (the latest, for a file that keeps growing)."""
    data = b""
    for i in range(versions):
        data += random_bytes(1024 * KiB, seed=12 + i)
        _put(small_engine, data, "grows")
    hashed.hashed = 0
    _put(small_engine, data + random_bytes(300 * KiB, seed=19), "grows")
    # Each version's last chunk was cut at its end; the grown file cuts there differently.
    assert hashed.hashed < 300 * KiB + 2 * SMALL_CHUNKS["chunk_max_size"]


def test_an_edit_hashes_from_the_first_chunk_that_differs(
    small_engine: Engine, hashed: type[_Counting]
) -> None:
    data = random_bytes(3 * 1024 * KiB, seed=14)
    edited = data[: 2 * 1024 * KiB] + b"edit" + data[2 * 1024 * KiB :]
    _put(small_engine, data, "doc")
    hashed.hashed = 0
    _put(small_engine, edited, "doc")
    assert hashed.hashed < len(edited) - 1024 * KiB, "the common start was hashed again"
    assert hashed.hashed > 1024 * KiB - SMALL_CHUNKS["chunk_max_size"]


def test_different_bytes_are_hashed_in_full(small_engine: Engine, hashed: type[_Counting]) -> None:
    _put(small_engine, random_bytes(1024 * KiB, seed=15), "a")
    hashed.hashed = 0
    other = random_bytes(1024 * KiB, seed=16)
    _put(small_engine, other, "b")
    assert hashed.hashed == len(other)


def test_following_goes_on_across_appends_and_nodes(
    make_settings: SettingsFactory, hashed: type[_Counting]
) -> None:
    """Each request of an upload may land on another node: the version followed is found
    again from the upload's last part and its hash state."""
    settings_ = make_settings(**SMALL_CHUNKS)
    data = random_bytes(3 * 1024 * KiB + 5, seed=17)
    with Engine.open(settings_) as node:
        _put(node, data, "original")
        up = node.uploads.create(length=len(data), bucket="default", key="copy")
    hashed.hashed = 0
    cuts = [0, 700 * KiB, 1500 * KiB + 3, 2600 * KiB, len(data)]
    for lo, hi in itertools.pairwise(cuts):
        with Engine.open(settings_) as node:
            rec = node.uploads.append(up.upload_id, lo, blocks_of(data[lo:hi], 40 * KiB))
    with Engine.open(settings_) as node:
        assert rec.version_id is not None
        info = node.objects.by_version_id(rec.version_id)
        assert info.sha256 == hashlib.sha256(data).hexdigest()
        assert read_all(node, info) == data
    # Each request cuts only what is settled: a chunk or so per request may be hashed.
    assert hashed.hashed < len(cuts) * SMALL_CHUNKS["chunk_max_size"]


def test_entries_without_a_state_are_not_followed(
    small_engine: Engine, hashed: type[_Counting]
) -> None:
    """Versions the server did not hash as a stream (native finalize, concatenation, rows
    older than the states) have no recorded state: the upload hashes its bytes."""
    data = random_bytes(2 * 1024 * KiB, seed=18)
    vid = _put(small_engine, data, "stateless")
    with small_engine.core.db.write() as conn:
        conn.execute(
            sa.update(manifests)
            .where(manifests.c.version_id == vid, manifests.c.seq >= 3)
            .values(sha_state=None)
        )
    hashed.hashed = 0
    _put(small_engine, data, "again")
    assert hashed.hashed > len(data) // 2


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    seed=st.integers(0, 2**16),
    cut=st.integers(0, 1024 * KiB),
    dropped=st.integers(0, 300 * KiB),
    inserted=st.binary(max_size=2000),
    grown=st.integers(0, 300 * KiB),
)
def test_the_digest_is_exact_whatever_the_stored_version_shares(
    small_engine: Engine, seed: int, cut: int, dropped: int, inserted: bytes, grown: int
) -> None:
    base = random_bytes(1024 * KiB + 77, seed=seed)
    new = base[:cut] + inserted + base[cut + dropped :] + random_bytes(grown, seed=seed + 1)
    _put(small_engine, base, f"base-{seed}")
    _put(small_engine, new, f"new-{seed}")
