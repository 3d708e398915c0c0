"""/healthz and /readyz against a real server: readiness follows the data dirs and the
database, and tells an anonymous caller what is wrong without the server's internals."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from edgestore.storage.local import MARKER
from tests.server import ServerProcess


def test_readyz_names_an_unusable_data_dir_without_its_path(tmp_path: Path) -> None:
    """/readyz needs no credentials (load balancers probe it), yet it answered every problem
    with its full text: the absolute path of each data dir (and a database error's host,
    port and user). It must still say which dir and why; the path goes to the server's log."""
    server = ServerProcess(
        home=tmp_path / "home", database_url=f"sqlite:///{tmp_path / 'meta.db'}", auth=True
    ).start()
    try:
        anonymous = httpx.Client(base_url=server.url, timeout=30)
        with anonymous:
            assert anonymous.get("/readyz").status_code == 200
            d3 = server.home / "shards" / "d3"
            (d3 / MARKER).rename(d3 / "marker.moved")  # as an unmounted disk looks
            r = anonymous.get("/readyz")
            assert anonymous.get("/healthz").status_code == 200  # liveness: unaffected
            assert anonymous.head("/readyz").status_code == 503
        assert r.status_code == 503
        body = r.json()
        assert body["ready"] is False and len(body["problems"]) == 1, body
        problem = body["problems"][0]
        assert "d3" in problem and "marker" in problem, problem
        assert str(tmp_path) not in r.text
        deadline = time.monotonic() + 5
        while str(d3) not in server.log():
            assert time.monotonic() < deadline, "the log does not say which path is unusable"
            time.sleep(0.05)
        (d3 / "marker.moved").rename(d3 / MARKER)
        with httpx.Client(base_url=server.url, timeout=30) as anonymous:
            assert anonymous.get("/readyz").status_code == 200
    finally:
        server.stop()
