"""Finished runs' files: a few big files go at once, a store of many files when the run ends."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import datasets


@pytest.fixture(autouse=True)
def _nothing_left_over():
    yield
    datasets.empty_discarded()


def test_a_few_files_are_deleted_at_once(tmp_path: Path) -> None:
    run = tmp_path / "peer-run"
    run.mkdir()
    (run / "upload.bin").write_bytes(b"x" * 1000)
    (run / "upload.json").write_text("{}")
    datasets.discard(run)
    assert not run.exists()


def test_a_store_of_many_files_waits_for_the_end(tmp_path: Path) -> None:
    store = tmp_path / "store"
    (store / "d0" / "abc").mkdir(parents=True)
    for i in range(datasets.MANY_FILES + 1):
        (store / "d0" / "abc" / f"shard.{i}").write_bytes(b"s")
    datasets.discard(store)
    assert store.exists()
    datasets.empty_discarded()
    assert not store.exists()


def test_a_low_disk_deletes_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets, "KEEP_FREE", 1 << 62)  # more than any disk has free
    store = tmp_path / "store"
    store.mkdir()
    for i in range(datasets.MANY_FILES + 1):
        (store / f"shard.{i}").write_bytes(b"s")
    datasets.discard(store)
    assert not store.exists()


def test_a_missing_path_is_ignored(tmp_path: Path) -> None:
    datasets.discard(tmp_path / "never-created")


def _kept_store(path: Path) -> Path:
    for i in range(datasets.MANY_FILES + 1):
        path.mkdir(parents=True, exist_ok=True)
        (path / f"shard.{i}").write_bytes(b"s")
    datasets.discard(path)
    assert path.exists()  # kept for the end of the benchmark
    return path


def test_kept_stores_make_room_for_the_next_run_oldest_first(tmp_path: Path) -> None:
    old, new = _kept_store(tmp_path / "old"), _kept_store(tmp_path / "new")
    free = datasets.ensure_free(tmp_path, 0)  # room enough (KEEP_FREE): nothing deleted
    assert old.exists() and new.exists() and free >= datasets.KEEP_FREE
    # A run needing one byte more than is free beyond the margin: the oldest store goes, and
    # that is enough.
    datasets.ensure_free(tmp_path, free - datasets.KEEP_FREE + 1)
    assert not old.exists() and new.exists()
    # More than deleting everything can free: all goes, and the caller learns it is short.
    assert datasets.ensure_free(tmp_path, 1 << 62) < 1 << 62
    assert not new.exists()
