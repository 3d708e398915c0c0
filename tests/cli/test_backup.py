"""`edgestore backup` and `backup --check`, run as a user runs them, and a restore after it:
a snapshot taken while uploads go on, checked, restored; gc then waits to be told."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edgestore.config import load_settings
from edgestore.engine import Engine
from edgestore.metadata.chunks import reference_mismatches
from edgestore.metadata.db import SCHEMA_HEAD
from tests.backups import age_files, restore_metadata, shard_files
from tests.helpers import KiB, blocks_of, random_bytes, read_all

EDGESTORE = [sys.executable, "-m", "edgestore"]


def _run(
    tmp_path: Path, db_url: str, *args: str, path: str | None = None
) -> subprocess.CompletedProcess[bytes]:
    env = {
        **os.environ,
        "EDGESTORE_HOME": str(tmp_path / "home"),
        "EDGESTORE_DATABASE_URL": db_url,
    }
    if path is not None:
        env["PATH"] = path
    return subprocess.run([*EDGESTORE, *args], env=env, capture_output=True, timeout=120)


def _data(i: int) -> bytes:
    return random_bytes(300 * KiB, seed=1000 + i)


def test_backup_while_uploads_go_on_then_restore_and_gc_waits_to_be_told(
    tmp_path: Path, db_url: str
) -> None:
    settings = load_settings(home=tmp_path / "home", database_url=db_url)
    stored: list[int] = []
    stop = threading.Event()
    failures: list[BaseException] = []

    def writer(eng: Engine) -> None:
        try:
            i = 0
            while not stop.is_set():
                eng.put(blocks_of(_data(i)), key=f"f{i}")
                stored.append(i)
                i += 1
        except BaseException as exc:
            failures.append(exc)

    out = tmp_path / "backups"
    out.mkdir()
    with Engine.open(settings) as eng:
        thread = threading.Thread(target=writer, args=(eng,))
        thread.start()
        try:
            while len(stored) < 3 and thread.is_alive():
                time.sleep(0.01)
            at_start = len(stored)
            made = _run(tmp_path, db_url, "backup", str(out), "--json")
            at_end = len(stored)
            while len(stored) < at_end + 3 and thread.is_alive():  # some after the backup
                time.sleep(0.01)
        finally:
            stop.set()
            thread.join()
        assert failures == []
        shards_root = settings.home / "shards"
        every_shard = shard_files(shards_root)
    assert made.returncode == 0, made.stderr.decode()
    report = json.loads(made.stdout)
    (backup_file,) = out.iterdir()
    assert report["path"] == str(backup_file) and report["warning"] is None
    held = report["contents"]
    assert held["problems"] == [] and held["schema_revision"] == SCHEMA_HEAD
    assert at_start <= held["versions"] <= at_end + 1  # a put may finish as the copy begins
    assert report["epoch"] == held["epoch"] + 1

    checked = _run(tmp_path, db_url, "backup", "--check", str(backup_file), "--json")
    assert checked.returncode == 0, checked.stderr.decode()
    assert json.loads(checked.stdout)["versions"] == held["versions"]

    restore_metadata(db_url, backup_file)
    age_files(shards_root)
    refused = _run(tmp_path, db_url, "gc", "--grace", "0")
    assert refused.returncode == 5, refused.stderr.decode()
    assert "--accept-restored-metadata" in refused.stderr.decode()
    assert shard_files(shards_root) == every_shard

    with Engine.open(settings) as eng:  # consistent: what it lists reads back, counts agree
        listed = eng.objects.list(limit=10_000)
        assert len(listed) == held["versions"]
        for v in listed:
            assert read_all(eng, v) == _data(int(v.key[1:]))
        with eng.core.db.read() as conn:
            assert reference_mismatches(conn) == []

    accepted = _run(tmp_path, db_url, "gc", "--grace", "0", "--accept-restored-metadata", "--json")
    assert accepted.returncode == 0, accepted.stderr.decode()
    assert json.loads(accepted.stdout)["orphan_files_deleted"] > 0  # the later puts' shards
    assert _run(tmp_path, db_url, "gc", "--grace", "0").returncode == 0
    with Engine.open(settings) as eng:
        for v in eng.objects.list(limit=10_000):
            assert read_all(eng, v) == _data(int(v.key[1:]))


def _damage(path: Path) -> None:
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size // 2)
        f.write(b"\xff" * 4096)


def test_backup_refuses_to_overwrite_and_check_finds_damage(tmp_path: Path, db_url: str) -> None:
    src = tmp_path / "f.bin"
    src.write_bytes(random_bytes(200 * KiB, seed=5))
    assert _run(tmp_path, db_url, "put", str(src)).returncode == 0
    out = tmp_path / "meta.backup"
    first = _run(tmp_path, db_url, "backup", str(out))
    assert first.returncode == 0, first.stderr.decode()
    assert "objects" in first.stdout.decode()
    taken = out.read_bytes()

    again = _run(tmp_path, db_url, "backup", str(out))
    assert again.returncode == 2 and "--force" in again.stderr.decode()
    assert out.read_bytes() == taken
    assert _run(tmp_path, db_url, "backup", str(out), "--force").returncode == 0
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []

    assert _run(tmp_path, db_url, "backup", "--check", str(out)).returncode == 0
    _damage(out)
    damaged = _run(tmp_path, db_url, "backup", "--check", str(out))
    assert damaged.returncode == 10, damaged.stdout.decode() + damaged.stderr.decode()
    assert "FAILED" in damaged.stdout.decode()
    other = _run(tmp_path, db_url, "backup", "--check", str(src))
    assert other.returncode == 4 and "neither" in other.stderr.decode()
    missing = _run(tmp_path, db_url, "backup", "--check", str(tmp_path / "nope"))
    assert missing.returncode == 2


@pytest.mark.postgres
def test_postgres_backup_without_pg_dump_says_what_to_install(tmp_path: Path, pg_url: str) -> None:
    bare = str(Path(sys.executable).parent)  # python, but no PostgreSQL client tools
    made = _run(tmp_path, pg_url, "backup", str(tmp_path / "meta.backup"), path=bare)
    assert made.returncode == 1
    assert "pg_dump was not found on PATH" in made.stderr.decode()
    assert [p.name for p in tmp_path.iterdir() if "meta.backup" in p.name] == []
