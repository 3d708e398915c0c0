"""GET on a finished upload's URL returns the object, as tusd does (no Tus-Resumable needed)."""

from __future__ import annotations

import re
import uuid

import pytest

from tests.helpers import (
    UNKNOWN_ID,
    MiB,
    random_bytes,
    sha256_hex,
    tus_create,
    tus_patch,
    tus_upload,
)


def test_get_a_finished_upload(http) -> None:
    data = random_bytes(9 * MiB + 77, seed=141)
    url = tus_upload(http, data, pieces=3, metadata={"filetype": "video/mp4", "filename": "v.mp4"})
    r = http.get(url)
    assert r.status_code == 200
    assert sha256_hex(r.content) == sha256_hex(data)
    assert r.headers["Content-Length"] == str(len(data))
    assert r.headers["Content-Type"] == "video/mp4"
    assert re.fullmatch(r'"[^"]+"', r.headers["ETag"])  # a strong validator
    assert r.headers["X-Edgestore-Sha256"] == sha256_hex(data)
    assert r.headers["Accept-Ranges"] == "bytes"
    assert 'filename="v.mp4"' in r.headers["Content-Disposition"]


def test_range_on_the_upload_url(http) -> None:
    data = random_bytes(3 * MiB, seed=142)
    url = tus_upload(http, data)
    r = http.get(url, headers={"Range": "bytes=1000-1999"})
    assert r.status_code == 206
    assert r.content == data[1000:2000]
    assert r.headers["Content-Range"] == f"bytes 1000-1999/{len(data)}"


def test_conditional_get_on_the_upload_url(http) -> None:
    url = tus_upload(http, random_bytes(1000, seed=143))
    etag = http.get(url).headers["ETag"]
    assert http.get(url, headers={"If-None-Match": etag}).status_code == 304


def test_an_unfinished_upload_cannot_be_downloaded(http) -> None:
    data = random_bytes(1000, seed=144)
    url = tus_create(http, len(data))
    assert tus_patch(http, url, 0, data[:500]).status_code == 204
    assert http.get(url).status_code == 404


@pytest.mark.parametrize("upload_id", [UNKNOWN_ID, "nope"])
def test_get_an_unknown_upload_is_404(http, upload_id: str) -> None:
    assert http.get(f"/files/{upload_id}").status_code == 404


def test_get_follows_the_latest_state_of_the_same_upload_only(http) -> None:
    """Two uploads to one key: each upload URL serves its own version, not the latest."""
    key = f"dl-{uuid.uuid4().hex[:8]}"
    first, second = random_bytes(100, seed=145), random_bytes(200, seed=146)
    u1 = tus_upload(http, first, metadata={"key": key})
    u2 = tus_upload(http, second, metadata={"key": key})
    assert http.get(u1).content == first
    assert http.get(u2).content == second
