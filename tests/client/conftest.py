"""The client tests run against a real server with small chunks (many chunks, small files)."""

from __future__ import annotations

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
