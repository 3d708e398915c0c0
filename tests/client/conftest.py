"""The client tests run against a real server with small chunks (many chunks, small files)."""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.faults import FaultProxy
from tests.native import DB_PARAMS, small_chunk_server


@pytest.fixture(scope="module", params=DB_PARAMS)
def server(request, tmp_path_factory):
    with small_chunk_server(request, tmp_path_factory) as proc:
        yield proc


@pytest.fixture
def hints_dir(tmp_path):
    return tmp_path / "hints"


@pytest.fixture
def proxy(server):
    """A proxy in front of the module's server that can drop or cut chosen requests."""
    p = FaultProxy(server.url).start()
    try:
        yield p
    finally:
        p.stop()


@pytest.fixture
def web_root(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A plain static web server (Python's http.server: no tus, no ranges, no ETag) and the
    directory it serves."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(root))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    finally:
        httpd.shutdown()
        httpd.server_close()
