"""Restoring a metadata backup as an operator does (docs/operations.md, "Backup and
restore"), for the backup and restore-guard tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import sqlalchemy as sa


def restore_metadata(db_url: str, backup: Path) -> None:
    """Put `backup` in place of the database `db_url` names (every engine on it closed):
    SQLite, the file copied over with its -wal and -shm removed; PostgreSQL, pg_restore
    --clean of the archive."""
    url = sa.make_url(db_url)
    if url.get_backend_name() == "sqlite":
        target = Path(str(url.database))
        for extra in ("-wal", "-shm"):
            Path(f"{target}{extra}").unlink(missing_ok=True)
        shutil.copyfile(backup, target)
        return
    libpq = url.set(drivername="postgresql").render_as_string(hide_password=False)
    subprocess.run(
        ["pg_restore", "--clean", "--if-exists", "--no-owner", f"--dbname={libpq}", str(backup)],
        check=True,
        capture_output=True,
    )


def age_files(root: Path, seconds: float = 7200) -> None:
    """Make every file under root look `seconds` old: past gc's minimum age for orphans."""
    old = time.time() - seconds
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            os.utime(Path(dirpath) / name, (old, old))


def shard_files(root: Path) -> set[Path]:
    """Every shard file under root (markers and their dotfiles left out)."""
    return {p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")}
