"""Opening the configured data dirs: names live in the markers, unclaimed dirs are refused;
flushes go one per filesystem, and skip filesystems already flushed since the writes."""

from __future__ import annotations

import json
import re
import tempfile
import threading
from pathlib import Path

import pytest

from edgestore.errors import StorageUnavailable
from edgestore.storage.datadirs import DataDirs, open_data_dirs
from edgestore.storage.local import MARKER, LocalBackend
from tests.helpers import count_flushes

STORE = "store-1"


def make_paths(tmp_path: Path, n: int) -> list[Path]:
    return [tmp_path / f"disk{i}" for i in range(n)]


def marker_of(path: Path) -> dict:
    return json.loads((path / MARKER).read_bytes())


def test_initialise_claims_and_names_dirs_in_order(tmp_path):
    paths = make_paths(tmp_path, 12)
    dirs = open_data_dirs(paths, STORE, initialise=True)
    assert isinstance(dirs, DataDirs)
    assert dirs.unavailable == {}
    assert dirs.names == [f"d{i}" for i in range(12)]  # natural order: d2 before d10
    assert dirs.writable_names() == dirs.names
    for i, path in enumerate(paths):
        assert marker_of(path) == {"store_id": STORE, "name": f"d{i}"}
        backend = dirs.backends[f"d{i}"]
        assert isinstance(backend, LocalBackend)
        assert backend.root == path and backend.name == f"d{i}"


def test_reordering_the_paths_keeps_each_dirs_name(tmp_path):
    paths = make_paths(tmp_path, 5)
    first = open_data_dirs(paths, STORE, initialise=True)
    first.backends["d3"].put("abc/on-d3", [b"shard on the fourth disk"])
    names = {first.backends[n].root: n for n in first.names}

    shuffled = [paths[i] for i in (3, 0, 4, 2, 1)]
    for initialise in (False, True):
        again = open_data_dirs(shuffled, STORE, initialise=initialise)
        assert again.unavailable == {}
        assert {again.backends[n].root: n for n in again.names} == names
        assert again.backends["d3"].get("abc/on-d3") == b"shard on the fourth disk"


def test_a_new_dir_gets_a_free_name(tmp_path):
    paths = make_paths(tmp_path, 3)
    open_data_dirs(paths, STORE, initialise=True)
    added = tmp_path / "new-disk"
    dirs = open_data_dirs([added, *paths], STORE, initialise=True)
    assert dirs.unavailable == {}
    assert marker_of(added)["name"] == "d3"
    assert dirs.names == ["d0", "d1", "d2", "d3"]


def test_dir_without_marker_is_unavailable_when_not_initialising(tmp_path):
    paths = make_paths(tmp_path, 3)
    open_data_dirs(paths, STORE, initialise=True)
    replaced = tmp_path / "empty-mount-point"
    replaced.mkdir()
    dirs = open_data_dirs([paths[0], replaced, paths[2]], STORE, initialise=False)

    assert not (replaced / MARKER).exists(), "an unclaimed dir must not be claimed silently"
    assert len(dirs.unavailable) == 1
    ((name, reason),) = dirs.unavailable.items()
    assert str(replaced) in name and str(replaced) in reason
    assert {"d0", "d2"} <= set(dirs.backends)
    with pytest.raises(StorageUnavailable) as info:
        dirs.writable_names()
    assert str(replaced) in str(info.value)


def test_missing_dir_is_unavailable_when_not_initialising(tmp_path):
    gone = tmp_path / "gone"
    dirs = open_data_dirs([gone], STORE, initialise=False)
    assert not gone.exists()
    with pytest.raises(StorageUnavailable, match=re.escape(str(gone))):
        dirs.writable_names()


def test_dir_of_another_store_is_unavailable(tmp_path):
    paths = make_paths(tmp_path, 2)
    open_data_dirs(paths, "other-store", initialise=True)
    dirs = open_data_dirs(paths, STORE, initialise=True)
    assert set(dirs.unavailable) == {"d0", "d1"}
    assert all("another store" in reason for reason in dirs.unavailable.values())
    assert marker_of(paths[0])["store_id"] == "other-store", "a foreign dir is never re-claimed"
    with pytest.raises(StorageUnavailable):
        dirs.writable_names()


def test_duplicate_names_are_reported(tmp_path):
    paths = make_paths(tmp_path, 2)
    open_data_dirs(paths, STORE, initialise=True)
    copy = tmp_path / "copied-disk"
    copy.mkdir()
    (copy / MARKER).write_bytes((paths[0] / MARKER).read_bytes())
    dirs = open_data_dirs([*paths, copy], STORE, initialise=False)
    assert "d0" in dirs.unavailable and str(copy) in dirs.unavailable["d0"]
    with pytest.raises(StorageUnavailable):
        dirs.writable_names()


def test_single_disk_is_detected(tmp_path):
    dirs = open_data_dirs(make_paths(tmp_path, 4), STORE, initialise=True)
    assert dirs.single_disk is True


def test_one_dir_is_not_called_single_disk(tmp_path):
    dirs = open_data_dirs(make_paths(tmp_path, 1), STORE, initialise=True)
    assert dirs.single_disk is False


def test_dirs_on_different_filesystems_are_not_single_disk(tmp_path):
    on_disk = tmp_path / "on-disk"
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("/dev/shm is not a separate file system here")
    with tempfile.TemporaryDirectory(dir=shm) as other:
        dirs = open_data_dirs([on_disk, Path(other) / "d"], STORE, initialise=True)
        assert dirs.single_disk is False


# --- flushes: one per filesystem, skipped when another already covered the writes ----------


def test_one_flush_per_filesystem(tmp_path, monkeypatch):
    dirs = open_data_dirs(make_paths(tmp_path, 4), STORE, initialise=True)
    calls = count_flushes(dirs, monkeypatch)
    dirs.flush(dirs.names)
    assert len(calls) == 1  # the four dirs share tmp_path's filesystem


def test_a_flush_started_after_the_writes_covers_them(tmp_path, monkeypatch):
    dirs = open_data_dirs(make_paths(tmp_path, 2), STORE, initialise=True)
    calls = count_flushes(dirs, monkeypatch)
    dirs.backends["d0"].write("a", [b"written before the mark"])
    mark = dirs.flush_mark(["d0"])
    dirs.flush(["d1"])  # someone else's flush, begun after the mark, finished: covers "a"
    dirs.flush(["d0"], since=mark)
    assert calls == ["d1"]


def test_a_flush_begun_before_the_mark_does_not_cover(tmp_path, monkeypatch):
    dirs = open_data_dirs(make_paths(tmp_path, 2), STORE, initialise=True)
    calls = count_flushes(dirs, monkeypatch)
    dirs.flush(["d1"])  # finished before the writes completed: covers nothing of them
    dirs.backends["d0"].write("a", [b"written after that flush"])
    mark = dirs.flush_mark(["d0"])
    dirs.flush(["d0"], since=mark)
    dirs.flush(["d0"])  # without a mark, always
    assert calls == ["d1", "d0", "d0"]


def test_a_flush_still_running_at_the_mark_does_not_cover(tmp_path, monkeypatch):
    """Numbered when it starts: one that began before the writes completed and finishes
    after the mark must not count, even while a later one (which will cover them) runs."""
    dirs = open_data_dirs(make_paths(tmp_path, 2), STORE, initialise=True)
    calls = count_flushes(dirs, monkeypatch)
    counted = dirs.backends["d1"].flush
    gates = [(threading.Event(), threading.Event()) for _ in range(2)]
    turn = iter(gates)

    def slow_flush() -> None:
        started, release = next(turn)
        started.set()
        release.wait(10)
        counted()

    monkeypatch.setattr(dirs.backends["d1"], "flush", slow_flush)
    first = threading.Thread(target=dirs.flush, args=(["d1"],))
    first.start()
    assert gates[0][0].wait(10)
    dirs.backends["d0"].write("a", [b"completed while that flush runs"])
    mark = dirs.flush_mark(["d0"])
    second = threading.Thread(target=dirs.flush, args=(["d1"],))  # begun after the mark
    second.start()
    assert gates[1][0].wait(10)
    gates[0][1].set()  # the first finishes; the second, which covers "a", still runs
    first.join(10)
    dirs.flush(["d0"], since=mark)
    assert calls == ["d1", "d0"]  # not covered yet: d0 flushed for itself
    gates[1][1].set()
    second.join(10)
    dirs.flush(["d0"], since=mark)  # now covered by the second
    assert calls == ["d1", "d0", "d1"]


def test_flushes_are_counted_per_filesystem(tmp_path, monkeypatch):
    dirs = open_data_dirs(make_paths(tmp_path, 2), STORE, initialise=True)
    monkeypatch.setattr(LocalBackend, "filesystem", property(lambda self: hash(self.name)))
    calls = count_flushes(dirs, monkeypatch)
    mark = dirs.flush_mark(["d0", "d1"])
    dirs.flush(["d1"])  # covers d1's filesystem only
    dirs.flush(["d0", "d1"], since=mark)
    assert calls == ["d1", "d0"]


def test_refusing_an_unclaimed_dir_says_how_to_claim_it(tmp_path):
    """Raising k+m with the default dirs refused every write as 'd9 is missing', without
    saying that `edgestore init` claims it (nor that a missing disk is mounted first)."""
    paths = make_paths(tmp_path, 2)
    open_data_dirs(paths, STORE, initialise=True)
    dirs = open_data_dirs([*paths, tmp_path / "disk2"], STORE, initialise=False)
    with pytest.raises(StorageUnavailable, match=r"disk2 is missing; .*`edgestore init`.*mount"):
        dirs.writable_names()
    (paths[1] / MARKER).write_text(json.dumps({"store_id": "other", "name": "d1"}))
    dirs = open_data_dirs(paths, STORE, initialise=False)
    with pytest.raises(StorageUnavailable) as info:  # claimed elsewhere: init would not help
        dirs.writable_names()
    assert "edgestore init" not in str(info.value)


def test_init_does_not_claim_what_looks_like_an_empty_mount_point(tmp_path):
    """Every claimed dir on a disk of its own, and a new one on the root filesystem: the
    disk meant for it did not mount. Claimed, its shards would vanish under the mount."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("/dev/shm is not a separate file system here")
    if tmp_path.stat().st_dev != Path("/").stat().st_dev:
        pytest.skip("the temporary dir is not on the root filesystem here")
    with tempfile.TemporaryDirectory(dir=shm) as other:
        disk = Path(other) / "es"
        open_data_dirs([disk], STORE, initialise=True)
        mount_point = tmp_path / "mnt" / "disk2"
        mount_point.mkdir(parents=True)
        new = mount_point / "es"

        dirs = open_data_dirs([disk, new], STORE, initialise=True)
        assert not new.exists()
        reason = dirs.unavailable[f"unclaimed:{new}"]
        assert "root filesystem" in reason and "mount" in reason and "--shared-disk" in reason
        with pytest.raises(StorageUnavailable):
            dirs.writable_names()

        dirs = open_data_dirs([disk, new], STORE, initialise=True, claim_shared_disk=True)
        assert dirs.unavailable == {} and marker_of(new)["name"] == "d1"
