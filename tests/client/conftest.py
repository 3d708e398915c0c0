"""The client tests run against a real server with small chunks (many chunks, small files)."""

from __future__ import annotations

import pytest

from tests.native import DB_PARAMS, small_chunk_server


@pytest.fixture(scope="module", params=DB_PARAMS)
def server(request, tmp_path_factory):
    with small_chunk_server(request, tmp_path_factory) as proc:
        yield proc


@pytest.fixture
def hints_dir(tmp_path):
    return tmp_path / "hints"
