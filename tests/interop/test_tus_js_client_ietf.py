"""tus-js-client speaking the IETF draft (`protocol: 'ietf-draft-05'`, interop version 6)
against a real server: a single upload, and one resumed after the client is killed mid-way.

Skipped when node or tests/interop/node_modules is missing, unless EDGESTORE_REQUIRE_INTEROP=1.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import MiB, random_bytes

pytestmark = pytest.mark.interop

HERE = Path(__file__).parent
SCRIPT = HERE / "ietf_upload.mjs"
DRAFT = {"Upload-Draft-Interop-Version": "6"}


def client_command(node: str, server: Any, path: Path, **options: Any) -> list[str]:
    opts = {"endpoint": f"{server.url}/files/", "path": str(path), "chunkSize": MiB, **options}
    return [node, str(SCRIPT), json.dumps(opts)]


def run_client(node: str, server: Any, path: Path, **options: Any) -> list[dict[str, Any]]:
    """Run one upload to its end; the client's events, in order."""
    done = subprocess.run(
        client_command(node, server, path, **options),
        cwd=HERE,
        capture_output=True,
        text=True,
        timeout=120,
    )
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert done.returncode == 0, f"{events}\n{done.stderr}\nserver log:\n{server.log()[-3000:]}"
    assert events[-1]["event"] == "success", events
    return events


def assert_object(server: Any, url: str, data: bytes) -> None:
    with server.client() as c:
        got = c.get(url)
    assert got.status_code == 200, got.text
    assert hashlib.sha256(got.content).hexdigest() == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("with_creation_data", [False, True], ids=["empty-post", "data-in-post"])
def test_single_upload(node: str, server: Any, tmp_path: Path, with_creation_data: bool) -> None:
    data = random_bytes(3 * MiB + 333, seed=71)
    path = tmp_path / "single.bin"
    path.write_bytes(data)
    events = run_client(node, server, path, uploadDataDuringCreation=with_creation_data)
    url = events[-1]["url"]
    assert_object(server, url, data)
    with server.client() as c:
        h = c.head(url, headers=DRAFT)
    assert (h.headers["Upload-Complete"], h.headers["Upload-Offset"]) == ("?1", str(len(data)))


def test_resumed_upload_after_the_client_is_killed(node: str, server: Any, tmp_path: Path) -> None:
    data = random_bytes(8 * MiB + 77, seed=72)
    path = tmp_path / "resumed.bin"
    path.write_bytes(data)

    first = subprocess.Popen(
        client_command(node, server, path),
        cwd=HERE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    watchdog = threading.Timer(60, first.kill)
    watchdog.start()
    url = None
    try:
        assert first.stdout is not None
        for line in first.stdout:  # kill -9 once the first chunk is acknowledged
            event = json.loads(line)
            if event["event"] == "url":
                url = event["url"]
            elif event["event"] == "chunk":
                break
            else:
                pytest.fail(f"the first client ended before it could be killed: {event}")
    finally:
        watchdog.cancel()
        first.kill()
        first.wait(10)
    assert url is not None

    with server.client() as c:
        h = c.head(url, headers=DRAFT)
    assert h.status_code == 204
    assert h.headers["Upload-Complete"] == "?0"
    assert MiB <= int(h.headers["Upload-Offset"]) < len(data)

    events = run_client(node, server, path, uploadUrl=url)
    assert events[-1]["url"] == url  # resumed, not started again
    chunks = [e for e in events if e["event"] == "chunk"]
    assert chunks[0]["accepted"] > MiB
    assert_object(server, url, data)
