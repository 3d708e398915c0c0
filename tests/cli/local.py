"""Running the real `edgestore` command on a test's store, in a process of its own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

EDGESTORE = [sys.executable, "-m", "edgestore"]


def run(tmp_path: Path, db_url: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    """`edgestore *args` on the store in tmp_path/home with the database `db_url`."""
    env = {
        **os.environ,
        "EDGESTORE_HOME": str(tmp_path / "home"),
        "EDGESTORE_DATABASE_URL": db_url,
    }
    return subprocess.run([*EDGESTORE, *args], env=env, capture_output=True, timeout=120)
