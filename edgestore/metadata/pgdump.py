"""PostgreSQL metadata backups: pg_dump's custom format, checked by reading it back whole
with pg_restore. pg_dump reads one snapshot (REPEATABLE READ) and locks no row, so uploads
go on while it runs."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa

from edgestore.errors import BackupFailed
from edgestore.metadata.schema import chunks, object_versions, objects, store_epoch

if TYPE_CHECKING:
    from edgestore.metadata.backup import BackupContents

MAGIC = b"PGDMP"
_COPY = re.compile(r"^COPY (?:\S+\.)?\"?(\w+)\"? \(([^)]*)\) FROM stdin;$")
_NO_CLIENT = (
    "{tool} was not found on PATH: PostgreSQL metadata is backed up with pg_dump and checked "
    "with pg_restore; install the PostgreSQL client tools (the server's major version or "
    "newer, e.g. the postgresql-client package)"
)


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise BackupFailed(_NO_CLIENT.format(tool=name))
    return found


def dump(url: str, out: Path) -> None:
    """pg_dump -Fc of the database `url` names into `out`; not yet fsynced. The password goes
    to pg_dump in its environment, never on its command line (which `ps` shows)."""
    exe = _tool("pg_dump")
    parsed = sa.make_url(url)
    env = dict(os.environ)
    if parsed.password:
        env["PGPASSWORD"] = str(parsed.password)
    target = parsed.set(drivername="postgresql", password=None)
    uri = target.render_as_string(hide_password=False)
    done = subprocess.run(
        [exe, "--format=custom", f"--file={out}", f"--dbname={uri}"],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        detail = done.stderr.decode(errors="replace").strip().splitlines()[-3:]
        raise BackupFailed(f"pg_dump failed (exit {done.returncode}): {' '.join(detail)}")


def inspect(path: Path, found: BackupContents) -> None:
    """Read every table's data back out of the archive (which checks it whole) and fill in
    what it holds; problems go to `found.problems`."""
    try:
        exe = _tool("pg_restore")
    except BackupFailed as exc:
        found.problems.append(exc.message)
        return
    proc = subprocess.Popen(
        [exe, "--data-only", "--file=-", str(path)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    table: str | None = None
    columns: list[str] = []
    for raw in proc.stdout:
        line = raw.decode(errors="replace").rstrip("\n")
        if table is None:
            if m := _COPY.match(line):
                table, columns = m.group(1), [c.strip().strip('"') for c in m.group(2).split(",")]
            continue
        if line == "\\.":
            table = None
            continue
        _count(found, table, dict(zip(columns, line.split("\t"), strict=False)))
    errors = proc.stderr.read().decode(errors="replace").strip().splitlines()
    code = proc.wait()
    if code != 0:
        why = errors[-1] if errors else f"exit {code}"
        found.problems.append(f"pg_restore cannot read it whole: {why}")


def _count(found: BackupContents, table: str, row: dict[str, str]) -> None:
    if table == "alembic_version":
        found.schema_revision = row.get("version_num")
    elif table == store_epoch.name:
        found.epoch = int(row["epoch"])
    elif table == objects.name:
        found.objects += 1
    elif table == object_versions.name:
        found.versions += 1
        found.logical_bytes += int(row["size"])
        at = float(row["created_at"])
        found.newest_version_at = max(found.newest_version_at or at, at)
    elif table == chunks.name:
        found.chunks += 1
