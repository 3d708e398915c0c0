"""`edgestore scrub` and `edgestore repair`, run as a user runs them: exit codes and output."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli.local import run
from tests.helpers import MiB, random_bytes


def test_scrub_finds_a_lost_shard_and_repair_restores_it(tmp_path: Path, db_url: str) -> None:
    src = tmp_path / "f.bin"
    data = random_bytes(3 * MiB, seed=9)
    src.write_bytes(data)
    assert run(tmp_path, db_url, "put", str(src), "--key", "f").returncode == 0
    files = sorted(p for p in (tmp_path / "home" / "shards").rglob("*") if p.is_file())
    victim = next(p for p in files if not p.name.startswith("."))
    victim.unlink()

    scrub = run(tmp_path, db_url, "scrub")
    assert scrub.returncode == 10, scrub.stderr.decode()
    assert "edgestore repair" in scrub.stderr.decode()
    assert "damaged chunks" in scrub.stdout.decode()

    fixed = run(tmp_path, db_url, "repair", "--json")
    assert fixed.returncode == 0, fixed.stderr.decode()
    report = json.loads(fixed.stdout)
    assert report["repaired"] == 1 and report["unrecoverable"] == []

    clean = run(tmp_path, db_url, "scrub", "--json")
    assert clean.returncode == 0 and json.loads(clean.stdout)["chunks_damaged"] == 0
    out = tmp_path / "back.bin"
    assert run(tmp_path, db_url, "get", "f", "-o", str(out)).returncode == 0
    assert out.read_bytes() == data
