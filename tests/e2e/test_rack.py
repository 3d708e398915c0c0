"""Three nodes on one PostgreSQL database and one set of data dirs, rate limits on the real
Redis, behind a round-robin TCP proxy (no stickiness): what docs/operations.md ("Several
nodes") promises a user with a rack of small machines.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import reset_pg
from tests.helpers import (
    SMALL_CHUNKS,
    MiB,
    TricklingPatch,
    random_bytes,
    sha256_hex,
    tus_create,
    tus_offset,
    tus_patch,
)
from tests.rack import RoundRobinProxy
from tests.require import unavailable
from tests.server import ServerProcess

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]

EDGESTORE = [sys.executable, "-m", "edgestore"]
INTEROP = Path(__file__).parent.parent / "interop"
LEASE = 3.0  # upload_lock_seconds of the rack


class Rack:
    def __init__(self, nodes: list[ServerProcess], proxy: RoundRobinProxy) -> None:
        self.nodes = nodes
        self.proxy = proxy

    @property
    def url(self) -> str:
        return self.proxy.url

    def client(self) -> httpx.Client:
        """A client of the proxy: each connection it opens lands on the next node."""
        return httpx.Client(base_url=self.url, timeout=60)


@pytest.fixture(scope="module")
def rack(
    pg_server_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Rack]:
    reset_pg(pg_server_url)
    home = tmp_path_factory.mktemp("rack") / "home"
    env = {
        "EDGESTORE_RATE_LIMIT_STORAGE": redis_url,
        "EDGESTORE_UPLOAD_LOCK_SECONDS": str(LEASE),
        **{f"EDGESTORE_{k.upper()}": str(v) for k, v in SMALL_CHUNKS.items()},
    }
    nodes = [ServerProcess(home=home, database_url=pg_server_url, env_extra=env)]
    nodes[0].start()  # creates the store; the others open it
    nodes += [ServerProcess(home=home, database_url=pg_server_url, env_extra=env) for _ in "bc"]
    starting = [threading.Thread(target=node.start) for node in nodes[1:]]
    for t in starting:
        t.start()
    for t in starting:
        t.join()
    proxy = RoundRobinProxy(nodes).start()
    try:
        yield Rack(nodes, proxy)
    finally:
        proxy.stop()
        for node in nodes:
            node.kill()


def _file(tmp_path: Path, size: int, seed: int) -> tuple[Path, bytes]:
    data = random_bytes(size, seed=seed)
    path = tmp_path / f"rack-{seed}.bin"
    path.write_bytes(data)
    return path, data


def _upload_args(rack: Rack, path: Path, key: str) -> list[str]:
    """`edgestore upload` of `path` to rack/`key` through the proxy."""
    return [
        *EDGESTORE,
        "upload",
        str(path),
        rack.url,
        "-b",
        "rack",
        "-k",
        key,
        "--protocol",
        "native",
    ]


def _assert_ranges(rack: Rack, path: str, data: bytes) -> None:
    """The whole object, then ranges each on a connection of its own (so on the next node),
    byte-identical."""
    with rack.client() as c:
        whole = c.get(path)
        assert whole.status_code == 200, whole.text
        assert sha256_hex(whole.content) == sha256_hex(data)
    step = len(data) // 5 + 1
    for lo in range(0, len(data), step):
        hi = min(lo + step, len(data)) - 1
        with rack.client() as c:
            r = c.get(path, headers={"Range": f"bytes={lo}-{hi}"})
        assert r.status_code == 206, r.text
        assert hashlib.sha256(r.content).digest() == hashlib.sha256(data[lo : hi + 1]).digest()


def test_tus_js_client_in_parallel_across_nodes(rack: Rack, tmp_path: Path) -> None:
    node = shutil.which("node")
    if node is None or not (INTEROP / "node_modules" / "tus-js-client").is_dir():
        reason = "node or tests/interop/node_modules is missing (run `make npm`)"
        unavailable("EDGESTORE_REQUIRE_INTEROP", reason)
    path, data = _file(tmp_path, 3 * MiB + 17, seed=900)
    key = f"js-{uuid.uuid4().hex[:8]}.bin"
    opts = {
        "endpoint": f"{rack.url}/files/",
        "path": str(path),
        "chunkSize": 256 * 1024,
        "parallelUploads": 4,
        "metadata": {"bucket": "rack", "key": key},
    }
    before = len(rack.proxy.routes)
    done = subprocess.run(
        [node, str(INTEROP / "tus_js_upload.mjs"), json.dumps(opts)],
        cwd=INTEROP,
        capture_output=True,
        text=True,
        timeout=120,
    )
    events = [json.loads(x) for x in done.stdout.splitlines() if x.startswith("{")]
    assert done.returncode == 0, (events[-5:], done.stderr[-2000:])
    assert any(e["event"] == "success" for e in events)
    assert set(rack.proxy.routes[before:]) == {0, 1, 2}, "the upload did not go to every node"
    _assert_ranges(rack, f"/objects/rack/{key}", data)


def test_edgestore_upload_across_nodes(rack: Rack, tmp_path: Path) -> None:
    path, data = _file(tmp_path, 3 * MiB + 5, seed=902)
    key = f"cli-{uuid.uuid4().hex[:8]}.bin"
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    done = subprocess.run(
        _upload_args(rack, path, key),
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    _assert_ranges(rack, f"/objects/rack/{key}", data)


# --- a node killed mid-request --------------------------------------------------------------


def _finish_tus(rack: Rack, path: str, data: bytes, timeout: float) -> None:
    """What a tus client does after a failure, through the proxy: HEAD, PATCH the rest, and
    on 423 (locked) or 409 (offset moved) try again."""
    started = time.monotonic()
    while True:
        with rack.client() as c:
            offset = tus_offset(c, path)
        with rack.client() as c:
            r = tus_patch(c, path, offset, data[offset:])
        if r.status_code not in (409, 423) or time.monotonic() - started > timeout:
            break
        time.sleep(0.1)
    assert r.status_code == 204, (r.status_code, r.text)


def test_a_node_killed_mid_patch(rack: Rack) -> None:
    data = random_bytes(5 * MiB, seed=903)
    with rack.client() as c:
        url = tus_create(c, len(data), metadata={"bucket": "rack", "key": "killed-patch.bin"})
    path = httpx.URL(url).path
    writer = TricklingPatch(rack.url, rack.url + path, 0, data, first=2 * MiB).start()
    time.sleep(1.0)
    victim = rack.nodes[rack.proxy.routes[-1]]
    sent = writer.sent
    victim.kill()
    killed = time.monotonic()
    writer.close()
    try:
        with rack.client() as c:
            assert tus_offset(c, path) <= sent
        _finish_tus(rack, path, data, timeout=LEASE + 5)
        took = time.monotonic() - killed
        assert took <= LEASE + 2, f"the upload stood still {took:.1f}s after its node died"
        _assert_ranges(rack, path, data)
    finally:
        victim.start()


# --- maintenance from a third process ---------------------------------------------------------


def test_maintenance_beside_uploads_deletes_nothing_they_hold(rack: Rack, tmp_path: Path) -> None:
    """gc --grace 0, scrub and repair, run over and over from the command line while an
    upload goes on through the nodes with the chunks of an object just deleted (unreferenced:
    gc's to take, unless the upload holds them again)."""
    node = rack.nodes[0]
    env = {**node.env, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    path, data = _file(tmp_path, 3 * MiB + 1, seed=907)
    run = functools.partial(subprocess.run, env=env, capture_output=True, timeout=120)
    assert run(_upload_args(rack, path, "gone")).returncode == 0
    with rack.client() as c:
        assert c.delete("/objects/rack/gone").status_code == 204
    for _ in rack.nodes:  # deleted for every node at once: nothing serves it from a cache
        with rack.client() as c:
            assert c.get("/objects/rack/gone").status_code == 404
    stop = threading.Event()
    failures: list[str] = []

    def maintain() -> None:
        jobs = [["gc", "--grace", "0"], ["scrub"], ["repair"]]
        for job in itertools.cycle(jobs):
            if stop.is_set():
                return
            done = run([*EDGESTORE, *job])
            if done.returncode != 0:
                failures.append(f"{job}: {done.returncode} {done.stderr.decode()[-500:]}")

    keeper = threading.Thread(target=maintain)
    keeper.start()
    try:
        # the chunks "gone" left unreferenced: found stored, they never travel again
        up = run(_upload_args(rack, path, "kept"))
        assert up.returncode == 0, up.stderr.decode()[-2000:]
        _assert_ranges(rack, "/objects/rack/kept", data)
    finally:
        stop.set()
        keeper.join()
    assert not failures, failures
