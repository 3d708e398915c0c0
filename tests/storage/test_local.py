"""LocalBackend specifics: durable writes leave no temporaries; real read-only and full disks."""

from __future__ import annotations

import errno
import json
import random
import re
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from edgestore.buffers import AlignedPool
from edgestore.errors import ShardMissing, StorageFull, StorageUnavailable
from edgestore.storage import local
from edgestore.storage.local import (
    DIRECT_ALIGN,
    DIRECT_PIECE,
    MARKER,
    TMP_SUFFIX,
    LocalBackend,
    storage_error,
    write_durably,
)

STORE = "store-under-test"


def temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(TMP_SUFFIX)]


@pytest.fixture
def backend(tmp_path: Path) -> LocalBackend:
    b = LocalBackend("d0", tmp_path / "d0", store_id=STORE)
    b.initialise()
    return b


# --- durable writes ---------------------------------------------------------------------------


def test_put_leaves_no_temporary(backend):
    for i in range(20):
        backend.put(f"{i % 3:03x}/blob.{i}", [b"a" * i, b"b" * 1000])
    assert temporaries(backend.root) == []
    assert len(list(backend.list())) == 20


def test_write_durably_writes_the_parts(tmp_path):
    target = tmp_path / "file"
    write_durably(target, [b"one,", bytearray(b"two,"), memoryview(b"three")])
    assert target.read_bytes() == b"one,two,three"
    assert temporaries(tmp_path) == []


@pytest.mark.parametrize(
    "sizes",
    [
        [0],
        [1],
        [DIRECT_ALIGN - 1],
        [DIRECT_ALIGN],
        [DIRECT_PIECE - 1],
        [DIRECT_PIECE],
        [DIRECT_PIECE + 1],
        [64, 3 * DIRECT_PIECE + 123],  # a header, then a payload over several pieces
        [DIRECT_PIECE - 10, 20, DIRECT_PIECE],  # parts straddling piece boundaries
    ],
    ids=lambda sizes: "+".join(map(str, sizes)),
)
def test_direct_writes_round_trip_across_piece_boundaries(tmp_path, sizes):
    """O_DIRECT writes go through one aligned buffer piece by piece; every byte lands once,
    in order, and the padding of the last piece is cut off."""
    parts = [bytes([i + 1]) * n for i, n in enumerate(sizes)]
    target = tmp_path / "file"
    try:
        write_durably(target, parts, direct=True)
    except OSError as exc:  # a filesystem without O_DIRECT (tmpfs)
        pytest.skip(f"O_DIRECT unavailable here: {exc}")
    assert target.read_bytes() == b"".join(parts)


@pytest.mark.parametrize(
    "size", [0, 1, DIRECT_ALIGN - 1, DIRECT_ALIGN, DIRECT_ALIGN + 1, 3 * DIRECT_PIECE + 7]
)
def test_an_aligned_buffer_is_written_without_a_copy(tmp_path, monkeypatch, size):
    """A page-aligned single buffer goes to the kernel as it is, never through the staging
    buffer."""
    block = AlignedPool(idle_blocks=0).get(size)
    block[:] = random.Random(size).randbytes(size)
    copied: list[int] = []
    real_copy = local.copy_into

    def counting_copy(target, offset, source):  # type: ignore[no-untyped-def]
        copied.append(len(memoryview(source)))
        return real_copy(target, offset, source)

    monkeypatch.setattr(local, "copy_into", counting_copy)
    target = tmp_path / "file"
    try:
        write_durably(target, [block], direct=True)
    except OSError as exc:
        pytest.skip(f"O_DIRECT unavailable here: {exc}")
    assert target.read_bytes() == bytes(block)
    assert sum(copied) == 0


@pytest.mark.parametrize("size", [1, DIRECT_ALIGN - 1, DIRECT_ALIGN + 1, DIRECT_PIECE + 7])
@pytest.mark.parametrize("aligned", [True, False], ids=["one-aligned-buffer", "copied"])
def test_direct_writes_never_truncate(tmp_path, monkeypatch, size, aligned):
    """The last partial page goes through the page cache: no padding to cut off, so no
    ftruncate (which made ext4 read the block back from the disk, once per shard)."""
    data = random.Random(size).randbytes(size)
    if aligned:
        parts: list = [AlignedPool(idle_blocks=0).get(size)]
        parts[0][:] = data
    else:
        parts = [data[:10], data[10:]]

    def no_truncate(fd, length):  # type: ignore[no-untyped-def]
        raise AssertionError("ftruncate called")

    monkeypatch.setattr(local.os, "ftruncate", no_truncate)
    target = tmp_path / "file"
    try:
        write_durably(target, parts, direct=True)
    except OSError as exc:
        pytest.skip(f"O_DIRECT unavailable here: {exc}")
    assert target.read_bytes() == data


class ExplodingParts(Sequence):
    """A parts sequence whose second item fails, as a producer might mid-write."""

    def __init__(self) -> None:
        self.items = [b"first part", b"never reached"]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):
        if i == 1:
            raise RuntimeError("producer failed")
        return self.items[i]


@pytest.mark.parametrize(
    ("parts", "error"),
    [
        ([b"ok", object()], TypeError),  # not a buffer
        (ExplodingParts(), RuntimeError),
    ],
    ids=["not-a-buffer", "raising-item"],
)
def test_failed_write_leaves_no_temporary_and_keeps_the_old_file(tmp_path, parts, error):
    target = tmp_path / "file"
    write_durably(target, [b"old content"])
    with pytest.raises(error):
        write_durably(target, parts)
    assert temporaries(tmp_path) == []
    assert target.read_bytes() == b"old content"


def test_failed_put_leaves_no_temporary(backend):
    with pytest.raises(TypeError):
        backend.put("abc/blob", [b"ok", object()])
    assert temporaries(backend.root) == []
    with pytest.raises(ShardMissing):
        backend.get("abc/blob")


def test_write_into_a_missing_directory_fails_cleanly(tmp_path):
    with pytest.raises(FileNotFoundError):
        write_durably(tmp_path / "no" / "such" / "file", [b"x"])
    assert list(tmp_path.rglob("*")) == []


# --- reads ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size", [0, 1, DIRECT_ALIGN - 1, DIRECT_ALIGN, DIRECT_ALIGN + 1, 3 * DIRECT_PIECE + 7]
)
def test_get_reads_past_the_page_cache(backend, monkeypatch, size):
    """Blobs written the shard way come back whole through O_DIRECT, not the page cache."""
    data = random.Random(size).randbytes(size)
    backend.write("ab/blob", [data])
    backend.flush()
    direct: list[int] = []
    real = local._read_direct

    def spy(fd, limit=None):  # type: ignore[no-untyped-def]
        got = real(fd, limit)
        direct.append(-1 if got is None else len(got))
        return got

    monkeypatch.setattr(local, "_read_direct", spy)
    assert backend.get("ab/blob") == data
    if not backend._direct_read:
        pytest.skip("O_DIRECT unavailable here")
    assert direct == [size]


def test_a_large_read_leaves_the_pooled_blocks_small(backend):
    """A staged tail of several MiB is read into a block of its own: the pool's blocks (and
    the idle ones it keeps) stay shard-sized."""
    small = random.Random(1).randbytes(800 * 1024)
    large = random.Random(2).randbytes(local.READ_POOL_MAX + 5)
    backend.write("ab/small", [small])
    backend.write("ab/large", [large])
    backend.flush()
    assert backend.get("ab/small") == small
    assert backend.get("ab/large") == large
    if not backend._direct_read:
        pytest.skip("O_DIRECT unavailable here")
    assert backend.get("ab/small") == small
    assert local._READ_BLOCKS.idle > 0
    assert local._READ_BLOCKS._capacity <= local.READ_POOL_MAX  # the size of its blocks
    assert local._LARGE_READ_BLOCKS.idle == 0


def test_get_sees_bytes_not_yet_flushed(backend):
    """Bytes still dirty in the page cache (a staged tail before its flush) read back as
    written: the kernel writes them out before a direct read of their range."""
    backend.write("ab/blob", [b"x" * (DIRECT_ALIGN + 10)])
    backend.write_at("ab/blob", DIRECT_ALIGN - 3, [b"fresh bytes"])
    want = b"x" * (DIRECT_ALIGN - 3) + b"fresh bytes" + b"xx"
    assert backend.get("ab/blob") == want


def test_get_falls_back_where_o_direct_is_refused(backend, monkeypatch):
    backend.put("ab/blob", [b"payload"])
    real_open = local.os.open
    refused: list[str] = []

    def no_direct(path, flags, *args):  # type: ignore[no-untyped-def]
        if flags & local.os.O_DIRECT:
            refused.append(str(path))
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    monkeypatch.setattr(local.os, "open", no_direct)
    assert backend.get("ab/blob") == b"payload"
    assert backend.get("ab/blob") == b"payload"
    assert len(refused) == 1  # asked once, then through the page cache
    assert not backend._direct_read


def test_get_falls_back_where_direct_reads_are_refused(backend, monkeypatch):
    """O_DIRECT opens but a read is refused (a device whose blocks are larger than a page):
    the bytes come through the page cache, and later reads go there at once."""
    data = random.Random(5).randbytes(DIRECT_ALIGN + 5)
    backend.put("ab/blob", [data])
    assert backend.get("ab/blob") == data
    if not backend._direct_read:
        pytest.skip("O_DIRECT unavailable here")
    calls: list[int] = []

    def refuse(fd, buffers, offset):  # type: ignore[no-untyped-def]
        calls.append(offset)
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(local.os, "preadv", refuse)
    assert backend.get("ab/blob") == data
    assert backend.get("ab/blob") == data
    assert calls == [0]  # tried once
    assert not backend._direct_read


# --- claiming the directory -------------------------------------------------------------------


def test_initialise_writes_the_marker(backend):
    info = json.loads((backend.root / MARKER).read_bytes())
    assert info == {"store_id": STORE, "name": "d0"}
    backend.check()


def test_initialise_keeps_an_existing_marker(backend):
    LocalBackend("d7", backend.root, store_id=STORE).initialise()
    assert json.loads((backend.root / MARKER).read_bytes())["name"] == "d0"


def test_missing_data_dir_is_unavailable(tmp_path):
    root = tmp_path / "not-mounted"
    b = LocalBackend("d0", root, store_id=STORE)
    for op in (b.check, lambda: b.put("abc/x", [b"x"]), lambda: list(b.list())):
        with pytest.raises(StorageUnavailable) as info:
            op()
        assert str(root) in str(info.value)
    assert not root.exists(), "a missing data dir must not be created by a write"


def test_get_from_a_missing_data_dir_is_unavailable(tmp_path):
    root = tmp_path / "not-mounted"
    with pytest.raises(StorageUnavailable, match=re.escape(str(root))):
        LocalBackend("d0", root, store_id=STORE).get("abc/x")


def test_dir_without_marker_is_refused(tmp_path):
    root = tmp_path / "empty-mount-point"
    root.mkdir()
    with pytest.raises(StorageUnavailable) as info:
        LocalBackend("d0", root, store_id=STORE).check()
    assert MARKER in str(info.value) and str(root) in str(info.value)


def test_write_to_a_dir_that_lost_its_marker_is_refused(backend, tmp_path):
    """The disk unmounted under a running server, leaving the empty mount point: new shards
    went to the disk beneath it and vanished when the disk came back."""
    backend.put("abc/before", [b"x"])
    backend.root.rename(tmp_path / "unmounted")
    backend.root.mkdir()
    for op in (
        lambda: backend.put("abc/x", [b"x"]),
        lambda: backend.write("abc/y", [b"y"]),
        lambda: backend.write_at("def/z", 0, [b"z"]),
    ):
        with pytest.raises(StorageUnavailable) as info:
            op()
        assert str(backend.root) in str(info.value)
    assert MARKER in str(info.value)
    assert list(backend.root.iterdir()) == []


def test_dir_of_another_store_is_refused(backend):
    with pytest.raises(StorageUnavailable, match="another store") as info:
        LocalBackend("d0", backend.root, store_id="some-other-store").check()
    assert str(backend.root) in str(info.value)


def test_dir_claimed_under_another_name_is_refused(backend):
    """The disk of d0 mounted where d3 was (swapped under a running server): writes and the
    orphan sweep would go to the wrong disk."""
    with pytest.raises(StorageUnavailable, match="is data dir d0, not d3") as info:
        LocalBackend("d3", backend.root, store_id=STORE).check()
    assert str(backend.root) in str(info.value)


def test_unreadable_marker_is_refused(backend):
    (backend.root / MARKER).write_bytes(b"{not json")
    with pytest.raises(StorageUnavailable, match="cannot be read"):
        backend.check()


# --- real read-only and full file systems (root only) -----------------------------------------


def _mount(*args: str) -> None:
    result = subprocess.run(["mount", *args], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount (needs root with CAP_SYS_ADMIN): {result.stderr.strip()}")


def _umount(path: Path) -> None:
    subprocess.run(["umount", str(path)], check=True, capture_output=True)


@pytest.fixture
def read_only_backend(tmp_path: Path) -> Iterator[LocalBackend]:
    """A claimed data dir seen through a read-only bind mount."""
    source = LocalBackend("d0", tmp_path / "source", store_id=STORE)
    source.initialise()
    source.put("abc/existing", [b"written before the disk went read-only"])
    view = tmp_path / "ro"
    view.mkdir()
    _mount("--bind", "-o", "ro", str(source.root), str(view))
    try:
        yield LocalBackend("d0", view, store_id=STORE)
    finally:
        _umount(view)


@pytest.fixture
def tiny_backend(tmp_path: Path) -> Iterator[LocalBackend]:
    """A claimed data dir on a 256 KiB tmpfs."""
    root = tmp_path / "tiny"
    root.mkdir()
    _mount("-t", "tmpfs", "-o", "size=256k", "tmpfs", str(root))
    try:
        b = LocalBackend("d0", root, store_id=STORE)
        b.initialise()
        yield b
    finally:
        _umount(root)


def test_read_only_disk(read_only_backend):
    b = read_only_backend
    assert b.get("abc/existing") == b"written before the disk went read-only"
    with pytest.raises(StorageUnavailable, match="not writable") as info:
        b.put("abc/new", [b"x"])
    assert str(b.root) in str(info.value)
    with pytest.raises(StorageUnavailable, match="not writable"):
        b.put("fresh-dir/new", [b"x"])
    with pytest.raises(StorageUnavailable, match="not writable"):
        b.check()
    with pytest.raises(StorageUnavailable):
        b.delete("abc/existing")
    assert b.get("abc/existing")  # nothing was lost


def test_full_disk(tiny_backend):
    b = tiny_backend
    b.put("abc/small", [b"s" * 1024])
    with pytest.raises(StorageFull) as info:
        b.put("abc/too-big", [b"x" * (200 * 1024), b"y" * (200 * 1024)])
    assert str(b.root) in str(info.value)
    assert temporaries(b.root) == []
    assert b.stat("abc/too-big") is None
    assert b.get("abc/small") == b"s" * 1024
    # The space was given back: a put that fits still works.
    b.put("abc/fits", [b"f" * (100 * 1024)])
    assert b.stat("abc/fits").size == 100 * 1024


# --- errno mapping ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "error", "words"),
    [
        (errno.ENOSPC, StorageFull, "full"),
        (errno.EDQUOT, StorageFull, "full"),
        (errno.EROFS, StorageUnavailable, "not writable"),
        (errno.EACCES, StorageUnavailable, "not writable"),
        (errno.EPERM, StorageUnavailable, "not writable"),
        (errno.ENOENT, StorageUnavailable, "missing"),
        (errno.EIO, StorageUnavailable, "failed"),
    ],
)
def test_storage_error_maps_errno(code, error, words):
    exc = storage_error(OSError(code, "strerror text"), "/srv/disk3")
    assert type(exc) is error
    assert "/srv/disk3" in str(exc)
    assert words in str(exc)
