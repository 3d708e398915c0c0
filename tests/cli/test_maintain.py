"""`edgestore scrub` and `edgestore repair`, run as a user runs them: exit codes and output."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import sqlalchemy as sa

from edgestore.storage.local import MARKER
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


def test_check_names_a_doubled_up_chunk_and_repair_spread_moves_it_back(
    tmp_path: Path, db_url: str
) -> None:
    """Shard 0's file and row moved onto the dir of shard 1 (as a repair around a lost dir
    leaves it): `check` reports it and exits 10, `repair --spread` moves it back, and the
    store checks clean again."""
    src = tmp_path / "f.bin"
    src.write_bytes(random_bytes(2 * MiB, seed=10))
    assert run(tmp_path, db_url, "put", str(src), "--key", "f").returncode == 0
    eng = sa.create_engine(db_url)
    with eng.begin() as conn:
        rows = conn.execute(
            sa.text("SELECT shard_index, backend, key FROM shards ORDER BY shard_index")
        ).all()
        assert len(rows) == 9
        conn.execute(
            sa.text("UPDATE shards SET backend = :b WHERE shard_index = 0"), {"b": rows[1][1]}
        )
    eng.dispose()
    roots = {_marker(p): p for p in (tmp_path / "home" / "shards").iterdir()}
    old, new = roots[rows[0][1]] / rows[0][2], roots[rows[1][1]] / rows[0][2]
    new.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(old, new)

    found = run(tmp_path, db_url, "check")
    assert found.returncode == 10, found.stderr.decode()
    assert "chunk_doubled_up: chunk " in found.stderr.decode()
    assert "edgestore repair --spread" in found.stderr.decode()

    spread = run(tmp_path, db_url, "repair", "--spread", "--json")
    assert spread.returncode == 0, spread.stderr.decode()
    report = json.loads(spread.stdout)
    assert (report["doubled_up_found"], report["spread"], report["crowded"]) == (1, 1, 0)
    assert old.exists() and not new.exists()
    assert run(tmp_path, db_url, "check").returncode == 0
    back = tmp_path / "back.bin"
    assert run(tmp_path, db_url, "get", "f", "-o", str(back)).returncode == 0
    assert back.read_bytes() == src.read_bytes()


def _marker(path: Path) -> str:
    return str(json.loads((path / MARKER).read_bytes())["name"])
