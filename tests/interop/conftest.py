"""The Node runtime the tus-js-client interop tests drive, shared by every test module here."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.require import unavailable

HERE = Path(__file__).parent


def _unavailable() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed"
    if not (HERE / "node_modules" / "tus-js-client").is_dir():
        return "tests/interop/node_modules is missing (run `make npm`)"
    return None


@pytest.fixture(scope="module")
def node() -> str:
    """Path of `node`; skips when it or the npm packages are missing, unless
    EDGESTORE_REQUIRE_INTEROP is set (CI), where that is a failure."""
    reason = _unavailable()
    if reason:
        unavailable("EDGESTORE_REQUIRE_INTEROP", reason)
    return str(shutil.which("node"))
