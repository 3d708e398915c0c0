"""`edgestore presign`: the URL it prints must be one a client can use."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from edgestore.units import WHOLE_DURATION_FORMS

EDGESTORE = [sys.executable, "-m", "edgestore"]


def _presign(
    tmp_path: Path, host: str, *args: str, action: str = "download"
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "EDGESTORE_HOME": str(tmp_path / "home"),
        "EDGESTORE_DATABASE_URL": f"sqlite:///{tmp_path / 'meta.db'}",
        "EDGESTORE_HOST": host,
    }
    return subprocess.run(
        [*EDGESTORE, "presign", action, "b", "k", *(args or ("--expires", "5m"))],
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


@pytest.mark.parametrize(
    ("max_size", "expires", "size", "seconds"),
    [
        ("1.5GB", "1h30m", 1_500_000_000, 5400),
        ("10G", "2d", 10 << 30, 2 * 86400),  # one letter: binary, as before
        ("10GiB", "90", 10 << 30, 90),
        ("10gb", "15 min", 10 * 10**9, 900),  # KB, MB, GB: decimal, as in the configuration
    ],
)
def test_sizes_and_lifetimes_are_read_as_the_configuration_reads_them(
    tmp_path: Path, max_size: str, expires: str, size: int, seconds: int
) -> None:
    started = int(time.time())
    done = _presign(
        tmp_path, "127.0.0.1", "--max-size", max_size, "--expires", expires, action="upload"
    )
    assert done.returncode == 0, done.stderr
    query = dict(httpx.URL(done.stdout.strip().splitlines()[-1]).params)
    assert int(query["es_max_size"]) == size
    assert started + seconds <= int(query["es_expires"]) <= int(time.time()) + seconds


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--expires", "1M"), "--expires '1M': 'M' is months to some"),
        (("--expires", "0s"), "--expires '0s': not above 0"),
        (("--expires", "1500ms"), f"not a whole number of seconds ({WHOLE_DURATION_FORMS})"),
        (("--max-size", "100Mb"), "--max-size '100Mb': 'Mb' is bits"),
        (("--max-size", "8192PiB"), "above the largest size"),
    ],
)
def test_a_size_or_lifetime_it_cannot_read_says_why(tmp_path: Path, args, message: str) -> None:
    done = _presign(tmp_path, "127.0.0.1", *args, action="upload")
    assert done.returncode == 4, done.stderr
    assert message in " ".join(done.stderr.split())
