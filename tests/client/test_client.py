"""Client construction and arguments: a server URL that cannot be parsed, or a text no request
can carry, is bad input, not a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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


@pytest.mark.parametrize("protocol", ["native", "tus"])
@pytest.mark.parametrize(
    "args",
    [
        {"key": os.fsdecode(b"k\xe9y")},
        {"bucket": os.fsdecode(b"b\xe9")},
        {"content_type": os.fsdecode(b"text/\xe9")},
        {"metadata": {"note": os.fsdecode(b"\xe9t\xe9")}},
    ],
)
def test_text_that_is_not_utf8_is_refused_before_any_request(
    tmp_path: Path, protocol: str, args: dict
) -> None:
    # A key typed in a Latin-1 terminal reaches Python with surrogates: httpx failed to
    # encode it (a traceback). Port 9 (discard): nothing is sent, so nothing answers.
    src = tmp_path / "f.bin"
    src.write_bytes(b"x")
    client = Client("http://127.0.0.1:9", state_dir=tmp_path / "hints")
    with pytest.raises(InvalidInput, match="not valid UTF-8"):
        client.upload(src, protocol=protocol, **args)  # type: ignore[arg-type]
