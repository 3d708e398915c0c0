"""tus-js-client with nothing but a pre-signed upload URL, as a browser would hold it: it
creates the upload, PATCHes the Location it gets back (which carries the upload's own
token), and with parallelUploads creates partials and a final upload, all without a key.

Skipped when node or tests/interop/node_modules is missing, unless EDGESTORE_REQUIRE_INTEROP=1.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from edgestore.api import presign
from tests.api.access import store_secret
from tests.helpers import MiB, random_bytes, sha256_hex
from tests.server import ServerProcess

pytestmark = pytest.mark.interop

HERE = Path(__file__).parent
SCRIPT = HERE / "presigned_upload.mjs"


@pytest.mark.parametrize("parallel", [1, 3])
def test_tus_js_client_uploads_with_a_presigned_url(
    node: str, auth_server: ServerProcess, tmp_path: Path, parallel: int
) -> None:
    data = random_bytes(3 * MiB + 101, seed=parallel)
    path = tmp_path / "photo.jpg"
    path.write_bytes(data)
    key = f"browser/{uuid.uuid4().hex}.jpg"
    grant = presign.Grant(
        "upload", "photos", key, int(time.time()) + 300, 4 * MiB, content_type="image/jpeg"
    )
    endpoint = presign.presigned_url(auth_server.url, store_secret(auth_server), grant)
    opts = {"endpoint": endpoint, "path": str(path), "chunkSize": MiB,
            "parallelUploads": parallel, "filetype": "image/jpeg"}  # fmt: skip
    done = subprocess.run(
        [node, str(SCRIPT), json.dumps(opts)], cwd=HERE, capture_output=True, text=True, timeout=120
    )
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert done.returncode == 0, f"{events}\n{done.stderr}\n{auth_server.log()[-3000:]}"
    assert events[-1]["event"] == "success", events
    with auth_server.client() as admin:
        got = admin.get(f"/objects/photos/{key}")
    assert got.status_code == 200, got.text
    assert sha256_hex(got.content) == sha256_hex(data)
    assert got.headers["content-type"] == "image/jpeg"
