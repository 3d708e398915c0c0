"""Round trips through the whole engine, on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib

import pytest

from edgestore.chunking import DEFAULT_PARAMS, make_cdc
from edgestore.engine import Engine, ObjectSelector
from edgestore.errors import InvalidRange, ObjectNotFound
from tests.helpers import KiB, MiB, blocks_of, random_bytes, read_all


def _first_cut(data: bytes) -> int:
    return next(iter(make_cdc(DEFAULT_PARAMS).cut_buf(data))).length


@pytest.fixture(scope="module")
def boundary_data() -> tuple[bytes, int]:
    data = random_bytes(12 * MiB, seed=7)
    return data, _first_cut(data)


@pytest.mark.parametrize("size", [0, 1, 1000, 64 * KiB + 1, 3 * MiB + 17])
def test_round_trip_sizes(engine: Engine, size: int) -> None:
    data = random_bytes(size, seed=size)
    v = engine.put(blocks_of(data), key=f"obj-{size}")
    assert v.size == size
    assert v.sha256 == hashlib.sha256(data).hexdigest()
    assert read_all(engine, v) == data
    assert engine.objects.stat(ObjectSelector(bucket="default", key=f"obj-{size}")) == v


@pytest.mark.parametrize("delta", [-1, 0, 1])
def test_round_trip_at_chunk_boundary(
    engine: Engine, boundary_data: tuple[bytes, int], delta: int
) -> None:
    full, cut = boundary_data
    data = full[: cut + delta]
    v = engine.put(blocks_of(data, 1 * MiB), key="edge")
    assert read_all(engine, v) == data
    entries = engine.objects.manifest(v)
    assert sum(e.length for e in entries) == len(data)
    # the engine cut exactly where FastCDC cuts the same bytes
    assert [e.length for e in entries] == [c.length for c in make_cdc(DEFAULT_PARAMS).cut_buf(data)]
    assert [e.offset for e in entries] == [
        sum(x.length for x in entries[:i]) for i in range(len(entries))
    ]


def test_a_file_is_read_straight_into_the_chunker(engine: Engine, tmp_path) -> None:
    """Engine.put of an open file (a Readable): the same object, chunks and manifest as the
    same bytes put as blocks."""
    data = random_bytes(19 * MiB + 5, seed=11)
    path = tmp_path / "file.bin"
    path.write_bytes(data)
    with open(path, "rb", buffering=0) as f:
        from_file = engine.put(f, key="from-file", filename="file.bin")
    from_blocks = engine.put(blocks_of(data, 1 * MiB), key="from-blocks")
    assert from_file.size == len(data)
    assert from_file.sha256 == hashlib.sha256(data).hexdigest()
    assert read_all(engine, from_file) == data
    manifest = [(e.chunk_id, e.offset, e.length) for e in engine.objects.manifest(from_file)]
    assert manifest == [
        (e.chunk_id, e.offset, e.length) for e in engine.objects.manifest(from_blocks)
    ]
    assert [length for *_, length in manifest] == [
        c.length for c in make_cdc(DEFAULT_PARAMS).cut_buf(data)
    ]


def test_random_large_object_and_ranges(small_engine: Engine) -> None:
    data = random_bytes(3 * MiB + 12345, seed=3)
    v = small_engine.put(blocks_of(data, 100_000), key="big", content_type="application/x-test")
    assert len(small_engine.objects.manifest(v)) > 10
    assert read_all(small_engine, v) == data
    for start, end in [
        (0, 1),
        (5, 70_000),
        (65_000, 65_001),
        (len(data) - 10, len(data)),
        (0, len(data)),
    ]:
        assert read_all(small_engine, v, start, end) == data[start:end]
    assert read_all(small_engine, v, len(data), len(data)) == b""
    with pytest.raises(InvalidRange):
        list(small_engine.objects.read(v, len(data) + 1))


def test_versions_list_and_delete(small_engine: Engine) -> None:
    e = small_engine
    v1 = e.put(iter([b"one"]), key="docs/a.txt")
    v2 = e.put(iter([b"two!"]), key="docs/a.txt", filename="a.txt")
    e.put(iter([b"x"]), key="docs/b.txt", bucket="other")
    e.put(iter([b"y"]), key="zzz")
    assert (v1.version, v2.version) == (1, 2)
    assert v1.object_id == v2.object_id
    latest = e.objects.stat(ObjectSelector(bucket="default", key="docs/a.txt"))
    assert latest.version == 2 and read_all(e, latest) == b"two!"
    old = e.objects.stat(ObjectSelector(object_id=v1.object_id, version=1))
    assert read_all(e, old) == b"one"
    assert [v.key for v in e.objects.list(prefix="docs/")] == ["docs/a.txt", "docs/b.txt"]
    assert [v.key for v in e.objects.list(bucket="default", prefix="docs/")] == ["docs/a.txt"]
    assert [v.version for v in e.objects.versions(v1.object_id)] == [2, 1]
    e.objects.delete(latest)
    assert e.objects.stat(ObjectSelector(bucket="default", key="docs/a.txt")).version == 1
    e.objects.delete(old)
    with pytest.raises(ObjectNotFound):
        e.objects.stat(ObjectSelector(bucket="default", key="docs/a.txt"))
    # a prefix with LIKE wildcards is taken literally
    e.put(iter([b"z"]), key="p%x_1")
    e.put(iter([b"z"]), key="pAx_1")
    assert [v.key for v in e.objects.list(prefix="p%")] == ["p%x_1"]


def test_version_numbers_are_never_given_out_twice(small_engine: Engine) -> None:
    """A deleted version's number does not come back while the object exists (a saved
    ?version=N would name other bytes); once its last version is gone, the key's next object
    is a new one, with a new id, and starts from 1."""
    e = small_engine
    v1 = e.put(iter([b"one"]), key="k")
    v2 = e.put(iter([b"two"]), key="k")
    e.objects.delete(v2)
    v3 = e.put(iter([b"three"]), key="k")
    assert (v1.version, v2.version, v3.version) == (1, 2, 3)
    assert [v.version for v in e.objects.versions(v1.object_id)] == [3, 1]
    e.objects.delete(v1)
    e.objects.delete(v3)
    again = e.put(iter([b"new"]), key="k")
    assert again.version == 1 and again.object_id != v1.object_id


def test_refcounts_match_references(small_engine: Engine) -> None:
    from edgestore.metadata.chunks import reference_mismatches

    data = random_bytes(1 * MiB, seed=11)
    small_engine.put(blocks_of(data), key="a")
    v = small_engine.put(blocks_of(data + data), key="b")
    small_engine.objects.delete(v)
    with small_engine.core.db.read() as conn:
        assert reference_mismatches(conn) == []
