"""`edgestore check`, run as a user runs it: exit codes, the report, --fix and --json."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import sqlalchemy as sa

from tests.cli.local import EDGESTORE, run
from tests.helpers import MiB, random_bytes


def _sql(db_url: str, *statements: str) -> None:
    eng = sa.create_engine(db_url)
    with eng.begin() as conn:
        for s in statements:
            conn.execute(sa.text(s))
    eng.dispose()


def test_check_finds_drift_fixes_it_and_exits_by_what_remains(tmp_path: Path, db_url: str) -> None:
    src = tmp_path / "f.bin"
    src.write_bytes(random_bytes(3 * MiB, seed=11))
    assert run(tmp_path, db_url, "put", str(src), "--key", "f").returncode == 0

    clean = run(tmp_path, db_url, "check")
    assert clean.returncode == 0, clean.stderr.decode()
    assert "chunks checked" in clean.stdout.decode()

    _sql(
        db_url,
        "UPDATE chunks SET refcount = refcount + 2",
        "UPDATE bucket_totals SET bytes = 5",
    )
    found = run(tmp_path, db_url, "check")
    assert found.returncode == 10, found.stderr.decode()
    err = found.stderr.decode()
    assert "refcount: chunk " in err and "bucket_totals: bucket default: 5 bytes" in err
    assert "edgestore check --fix" in err

    fixed = run(tmp_path, db_url, "check", "--fix", "--json")
    assert fixed.returncode == 0, fixed.stderr.decode()
    report = json.loads(fixed.stdout)
    kinds = {f["kind"]: f for f in report["findings"]}
    assert kinds["refcount"]["found"] == kinds["refcount"]["fixed"] == 1
    assert kinds["bucket_totals"]["fixed"] == 1 and report["unresolved"] == 0
    assert run(tmp_path, db_url, "check").returncode == 0

    out = tmp_path / "back.bin"
    assert run(tmp_path, db_url, "get", "f", "-o", str(out)).returncode == 0
    assert out.read_bytes() == src.read_bytes()


def test_what_fix_cannot_repair_still_exits_10(tmp_path: Path, db_url: str) -> None:
    src = tmp_path / "f.bin"
    src.write_bytes(random_bytes(1 * MiB, seed=12))
    assert run(tmp_path, db_url, "put", str(src), "--key", "f").returncode == 0
    _sql(db_url, "DELETE FROM shards WHERE shard_index > 0")
    fixed = run(tmp_path, db_url, "check", "--fix", "--json")
    assert fixed.returncode == 10, fixed.stderr.decode()
    kinds = {f["kind"]: f for f in json.loads(fixed.stdout)["findings"]}
    assert kinds["chunk_unreadable"]["found"] >= 1 and kinds["chunk_unreadable"]["fixed"] == 0


def test_check_help_says_what_it_checks_and_its_exit_codes() -> None:
    out = subprocess.run([*EDGESTORE, "check", "--help"], capture_output=True, timeout=60)
    text = " ".join(out.stdout.decode().split())
    assert out.returncode == 0
    assert "--fix" in text and "refcount" in text and "10" in text
