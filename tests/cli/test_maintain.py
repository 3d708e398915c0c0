"""`edgestore scrub` and `edgestore repair`, run as a user runs them: exit codes and output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import MiB, random_bytes

EDGESTORE = [sys.executable, "-m", "edgestore"]


def _run(tmp_path: Path, db_url: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    env = {
        **os.environ,
        "EDGESTORE_HOME": str(tmp_path / "home"),
        "EDGESTORE_DATABASE_URL": db_url,
    }
    return subprocess.run([*EDGESTORE, *args], env=env, capture_output=True, timeout=120)


def test_scrub_finds_a_lost_shard_and_repair_restores_it(tmp_path: Path, db_url: str) -> None:
    src = tmp_path / "f.bin"
    data = random_bytes(3 * MiB, seed=9)
    src.write_bytes(data)
    assert _run(tmp_path, db_url, "put", str(src), "--key", "f").returncode == 0
    files = sorted(p for p in (tmp_path / "home" / "shards").rglob("*") if p.is_file())
    victim = next(p for p in files if not p.name.startswith("."))
    victim.unlink()

    scrub = _run(tmp_path, db_url, "scrub")
    assert scrub.returncode == 10, scrub.stderr.decode()
    assert "edgestore repair" in scrub.stderr.decode()
    assert "damaged chunks" in scrub.stdout.decode()

    fixed = _run(tmp_path, db_url, "repair", "--json")
    assert fixed.returncode == 0, fixed.stderr.decode()
    report = json.loads(fixed.stdout)
    assert report["repaired"] == 1 and report["unrecoverable"] == []

    clean = _run(tmp_path, db_url, "scrub", "--json")
    assert clean.returncode == 0 and json.loads(clean.stdout)["chunks_damaged"] == 0
    out = tmp_path / "back.bin"
    assert _run(tmp_path, db_url, "get", "f", "-o", str(out)).returncode == 0
    assert out.read_bytes() == data
