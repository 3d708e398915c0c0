"""Error answers over a real server: what went wrong, in words a client can act on, and
nothing of the server's filesystem."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import pytest

from edgestore.api.errors import error_response
from edgestore.errors import StorageUnavailable, TransactionConflict
from edgestore.storage.local import MARKER
from tests.helpers import KiB, MiB, random_bytes, tus_create, tus_patch, tus_upload
from tests.native import SMALL_ENV
from tests.server import ServerProcess


def test_storage_errors_name_data_dirs_not_their_paths(tmp_path: Path) -> None:
    """A data dir that lost its marker (an unmounted disk) made every upload's 503 say the
    dir's absolute path, and a chunk that could not be read listed the path of each data
    dir in its 500: any uploader or reader learnt the server's filesystem layout. The
    answers name the data dirs; the server's log keeps the paths for the operator."""
    server = ServerProcess(
        home=tmp_path / "home",
        database_url=f"sqlite:///{tmp_path / 'meta.db'}",
        env_extra=SMALL_ENV,
    ).start()
    shards = server.home / "shards"
    try:
        with server.client() as c:
            tus_upload(c, random_bytes(200 * KiB, seed=1), metadata={"bucket": "b", "key": "k"})
            for f in shards.rglob("*"):
                if f.is_file() and f.name != MARKER:
                    f.unlink()
            lost = c.get("/objects/b/k")
            d3 = shards / "d3"
            (d3 / MARKER).rename(d3 / "marker.moved")
            url = tus_create(c, MiB)
            refused = tus_patch(c, url, 0, random_bytes(MiB, seed=2))
    finally:
        server.stop()
    assert lost.status_code == 500 and lost.json()["error"] == "chunk_unreadable"
    assert "data dir d" in lost.text and str(tmp_path) not in lost.text, lost.text
    assert refused.status_code == 503, refused.text
    assert refused.headers["Retry-After"] == "5"  # not back in a second: clients wait
    assert "data dir d3" in refused.text and str(tmp_path) not in refused.text, refused.text
    assert str(d3) in server.log()  # the operator's copy


def test_a_store_that_cannot_take_writes_says_when_to_try_again() -> None:
    """A 503 for a data dir or database that cannot take writes carries Retry-After, so a
    client does not resend a chunk's body several times a second; a transaction conflict
    keeps its own shorter wait."""
    unwritable = error_response(StorageUnavailable("data dir d2 is not writable"))
    assert (unwritable.status_code, unwritable.headers["Retry-After"]) == (503, "5")
    conflict = error_response(TransactionConflict("deadlock detected", retry_after=1))
    assert (conflict.status_code, conflict.headers["Retry-After"]) == (503, "1")


def test_a_storage_error_is_logged_once_not_per_request(caplog: pytest.LogCaptureFixture) -> None:
    """A lost disk refuses every upload request; the log names it once, not per request."""
    exc = StorageUnavailable(f"data dir /mnt/{uuid.uuid4().hex} is missing")
    with caplog.at_level(logging.ERROR, logger="edgestore.api.errors"):
        for _ in range(3):
            assert error_response(exc).status_code == 503
    assert [r.getMessage() for r in caplog.records] == [f"storage_unavailable: {exc.message}"]
