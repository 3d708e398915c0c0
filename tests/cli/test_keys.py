"""`edgestore keys`: what it says it did, run as a user runs it (a real process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EDGESTORE = [sys.executable, "-m", "edgestore"]


@pytest.fixture
def cli(tmp_path: Path, db_url: str):
    env = {**os.environ, "EDGESTORE_HOME": str(tmp_path / "home"), "EDGESTORE_DATABASE_URL": db_url}

    def run(*args: str, extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*EDGESTORE, *args],
            env={**env, **(extra or {})},
            capture_output=True,
            text=True,
            timeout=120,
        )

    return run


def test_revoking_a_revoked_key_says_so(cli) -> None:
    """A second revoke changes nothing, and must not claim it just revoked the key."""
    assert cli("keys", "create", "--name", "ci", "--scope", "read").returncode == 0
    key_id = json.loads(cli("keys", "list", "--json").stdout)[0]["key_id"]
    first = cli("keys", "revoke", key_id)
    assert first.returncode == 0 and f"revoked API key {key_id} (ci)" in first.stdout
    again = cli("keys", "revoke", key_id)
    assert again.returncode == 0
    assert "already revoked" in again.stdout and "revoked API key" not in again.stdout
    revoked_at = json.loads(cli("keys", "list", "--all", "--json").stdout)[0]["revoked_at"]
    assert revoked_at is not None
