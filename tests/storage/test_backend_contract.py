"""The contract every storage backend passes; add a backend by adding one line to BACKENDS."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgestore.errors import ShardMissing
from edgestore.storage.backend import Backend, BlobInfo
from edgestore.storage.local import LocalBackend


def local_backend(tmp_path: Path) -> Backend:
    backend = LocalBackend("d0", tmp_path / "d0", store_id="contract-store")
    backend.initialise()
    return backend


# One line per implementation: (id, factory taking a fresh tmp_path).
BACKENDS: list[tuple[str, Callable[[Path], Backend]]] = [
    ("local", local_backend),
]


@pytest.fixture(params=[factory for _, factory in BACKENDS], ids=[name for name, _ in BACKENDS])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    return request.param(tmp_path)


def keys_of(backend: Backend, prefix: str = "") -> set[str]:
    return {info.key for info in backend.list(prefix)}


def test_implements_the_protocol(backend):
    assert isinstance(backend, Backend)
    assert isinstance(backend.name, str) and backend.name


def test_put_get_round_trip_with_mixed_parts(backend):
    parts = [b"header:", bytearray(b"middle:"), memoryview(b"__payload__")[2:-2], b""]
    backend.put("abc/shard.0", parts)
    assert backend.get("abc/shard.0") == b"header:middle:payload"


_counter = itertools.count()


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    parts=st.lists(
        st.tuples(st.binary(max_size=70_000), st.sampled_from([bytes, bytearray, memoryview])),
        max_size=6,
    )
)
def test_put_get_round_trip_property(backend, parts):
    key = f"p{next(_counter) % 7}/blob-{next(_counter)}"
    backend.put(key, [kind(data) for data, kind in parts])
    expected = b"".join(data for data, _ in parts)
    assert backend.get(key) == expected
    info = backend.stat(key)
    assert info is not None and info.size == len(expected)


def test_large_blob_round_trip(backend):
    payload = bytes(range(256)) * (12 * 1024)  # 3 MiB
    backend.put("big/blob", [payload[:100], memoryview(payload)[100:]])
    assert backend.get("big/blob") == payload


def test_empty_blob(backend):
    backend.put("e/empty", [])
    assert backend.get("e/empty") == b""
    info = backend.stat("e/empty")
    assert info is not None and info.size == 0


def test_overwrite_replaces(backend):
    backend.put("ow/key", [b"a much longer first version"])
    backend.put("ow/key", [b"short"])
    assert backend.get("ow/key") == b"short"
    info = backend.stat("ow/key")
    assert info is not None and info.size == 5
    assert keys_of(backend) == {"ow/key"}


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 4097, 1_048_576 + 3])
@pytest.mark.parametrize("limit", [0, 1, 4096, 4097, 1_048_576, 2_000_000])
def test_get_with_a_limit_reads_only_the_start(backend, size, limit):
    """A reader that knows how long a blob must be reads no more: a file grown by damage
    (a corrupt inode's size, garbage appended) is not taken into memory whole."""
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    backend.put("lim/blob", [data])
    assert backend.get("lim/blob", limit) == data[:limit]
    assert backend.get("lim/blob") == data


@pytest.mark.parametrize("key", ["nope", "abc/nope", "deep/er/nope"])
def test_get_missing_raises_shard_missing(backend, key):
    with pytest.raises(ShardMissing):
        backend.get(key)


def test_delete_is_idempotent(backend):
    backend.put("del/key", [b"x"])
    backend.put("del/other", [b"y"])
    backend.delete("del/key")
    backend.delete("del/key")
    backend.delete("never/existed")
    with pytest.raises(ShardMissing):
        backend.get("del/key")
    assert backend.stat("del/key") is None
    assert backend.get("del/other") == b"y"
    assert keys_of(backend) == {"del/other"}


def test_stat(backend):
    backend.put("st/key", [b"12345", b"678"])
    info = backend.stat("st/key")
    assert isinstance(info, BlobInfo)
    assert (info.key, info.size) == ("st/key", 8)
    assert info.mtime > 0
    assert backend.stat("st/missing") is None
    assert backend.stat("nowhere/missing") is None


def test_list_finds_exactly_the_stored_keys(backend):
    assert keys_of(backend) == set()
    stored = {"abc/one": 1, "abc/two": 22, "abd/three": 333, "top": 4444, "x/y/z": 5}
    for key, size in stored.items():
        backend.put(key, [b"\x01" * size])
    infos = list(backend.list())
    assert sorted(i.key for i in infos) == sorted(stored)  # no marker, no temporaries, no dups
    assert {i.key: i.size for i in infos} == stored
    assert keys_of(backend, "abc/") == {"abc/one", "abc/two"}
    assert keys_of(backend, "ab") == {"abc/one", "abc/two", "abd/three"}
    assert keys_of(backend, "abd/three") == {"abd/three"}
    assert keys_of(backend, "t") == {"top"}
    assert keys_of(backend, "zzz") == set()
    assert keys_of(backend, "x/y/") == {"x/y/z"}
    assert keys_of(backend, "nowhere/") == set()


def test_list_groups_give_every_key_once_a_top_level_dir_each(backend):
    assert [g for g in backend.list_groups() if g] == []
    stored = ["abc/one", "abc/two", "abd/three", "top", "x/y/z", "x/w"]
    for key in stored:
        backend.put(key, [b"\x01"])
    groups = [sorted(b.key for b in g) for g in backend.list_groups() if g]
    assert sorted(k for g in groups for k in g) == sorted(stored)  # no marker, no dups
    assert sorted(groups) == [["abc/one", "abc/two"], ["abd/three"], ["top"], ["x/w", "x/y/z"]]


@pytest.mark.parametrize("key", ["../escape", "a/../../b", "a/..", "..", "/etc/passwd", "/x"])
def test_keys_escaping_the_namespace_are_refused(backend, key):
    with pytest.raises(ValueError):
        backend.put(key, [b"x"])
    with pytest.raises(ValueError):
        backend.get(key)
    with pytest.raises(ValueError):
        backend.delete(key)
    with pytest.raises(ValueError):
        backend.stat(key)


def test_check_passes_on_a_healthy_backend(backend):
    backend.check()
    backend.put("c/key", [b"x"])
    backend.check()


def test_usage_is_plausible(backend):
    usage = backend.usage()
    assert usage.total_bytes > 0
    assert 0 <= usage.free_bytes <= usage.total_bytes


def test_put_with_many_parts(backend):
    parts = [bytes([i % 256]) * 3 for i in range(2000)]
    backend.put("many/parts", parts)
    assert backend.get("many/parts") == b"".join(parts)


def test_write_then_flush_round_trip(backend):
    """The batched path shards take: write() several blobs, flush() once, read them back."""
    blobs = {f"abc/{i:064x}.g.{i}": bytes([i]) * (1000 + i) for i in range(5)}
    for key, data in blobs.items():
        backend.write(key, [data[:10], memoryview(data)[10:]])
    backend.flush()
    for key, data in blobs.items():
        assert backend.get(key) == data
    assert {b.key for b in backend.list("abc/")} == set(blobs)
    assert not [b for b in backend.list() if b.key.endswith(".tmp")]


def test_write_overwrites(backend):
    backend.write("k", [b"first version, longer"])
    backend.write("k", [b"second"])
    backend.flush()
    assert backend.get("k") == b"second"


def test_write_at_extends_keeping_what_is_there(backend):
    """How a staged tail grows: the new bytes go after the old ones, which stay untouched."""
    first = bytes(range(256)) * 20 + b"odd"  # not a multiple of any block size
    backend.write("staging/u/0.t", [first])
    backend.flush()
    more = [b"abc", memoryview(b"defgh")[1:]]
    backend.write_at("staging/u/0.t", len(first), more)
    backend.flush()
    assert backend.get("staging/u/0.t") == first + b"abcefgh"


def test_write_at_leaves_bytes_past_its_end(backend):
    """A crashed writer's bytes past the recorded length are overwritten, not truncated:
    readers take the recorded length."""
    backend.write("k", [b"0123456789"])
    backend.write_at("k", 2, [b"ab"])
    backend.flush()
    assert backend.get("k") == b"01ab456789"


def test_write_at_creates_a_missing_blob(backend):
    backend.write_at("new/blob", 0, [b"hello"])
    backend.flush()
    assert backend.get("new/blob") == b"hello"


def test_write_at_refuses_a_negative_offset(backend):
    with pytest.raises(ValueError):
        backend.write_at("k", -1, [b"x"])
