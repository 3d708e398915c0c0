"""`edgestore presign`: the URL it prints must be one a client can use."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

EDGESTORE = [sys.executable, "-m", "edgestore"]


def _presign(tmp_path: Path, host: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "EDGESTORE_HOME": str(tmp_path / "home"),
        "EDGESTORE_DATABASE_URL": f"sqlite:///{tmp_path / 'meta.db'}",
        "EDGESTORE_HOST": host,
    }
    return subprocess.run(
        [*EDGESTORE, "presign", "download", "b", "k", "--expires", "5m"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("host", ["::1", "[::1]"])
def test_an_ipv6_host_is_bracketed_in_the_url(tmp_path: Path, host: str) -> None:
    done = _presign(tmp_path, host)
    assert done.returncode == 0, done.stderr
    url = httpx.URL(done.stdout.strip().splitlines()[-1])
    assert (url.host, url.port, url.path) == ("::1", 8080, "/objects/b/k")


def test_a_wildcard_host_is_flagged(tmp_path: Path) -> None:
    """0.0.0.0 is where the server listens, not an address a browser elsewhere can use."""
    done = _presign(tmp_path, "0.0.0.0")
    assert done.returncode == 0, done.stderr
    assert "--url" in done.stderr and "public_url" in done.stderr
