"""Client construction: a server URL that cannot be parsed is bad input, not a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from edgestore.client import Client
from edgestore.errors import InvalidInput


@pytest.mark.parametrize("url", ["http://[::1", "http://host:abc", "http://"])
def test_an_unparsable_server_url_is_invalid_input(url: str) -> None:
    with pytest.raises(InvalidInput, match="is not valid"):
        Client(url)


def test_download_of_an_unparsable_url_exits_with_bad_input() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "edgestore", "download", "http://[::1/x"],
        capture_output=True,
        timeout=60,
    )
    err = proc.stderr.decode()
    assert proc.returncode == 4, err
    assert "is not a valid URL" in err and "Traceback" not in err
