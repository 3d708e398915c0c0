"""creation-defer-length: uploads whose length is told later, in a PATCH."""

from __future__ import annotations

import base64
import hashlib

import pytest

from tests.helpers import (
    TUS,
    MiB,
    random_bytes,
    store_unchanged,
    tus_create,
    tus_head,
    tus_patch,
)


def test_deferred_upload_completes_when_the_length_comes_with_the_last_bytes(http) -> None:
    data = random_bytes(9 * MiB + 13, seed=61)
    url = tus_create(http, None)
    assert tus_patch(http, url, 0, data[: 4 * MiB + 1]).status_code == 204
    h = tus_head(http, url)
    assert h.headers["Upload-Defer-Length"] == "1"
    assert "Upload-Length" not in h.headers
    r = tus_patch(http, url, 4 * MiB + 1, data[4 * MiB + 1 :], **{"Upload-Length": str(len(data))})
    assert r.status_code == 204
    assert r.headers["Upload-Offset"] == r.headers["Upload-Length"] == str(len(data))
    h = tus_head(http, url)
    assert h.headers["Upload-Length"] == str(len(data))
    assert "Upload-Defer-Length" not in h.headers
    got = http.get(url)
    assert got.status_code == 200 and got.content == data


def test_length_told_early_then_more_patches(http) -> None:
    data = random_bytes(300_000, seed=62)
    url = tus_create(http, None)
    r = tus_patch(http, url, 0, data[:1000], **{"Upload-Length": str(len(data))})
    assert r.status_code == 204
    assert r.headers["Upload-Length"] == str(len(data))
    assert tus_patch(http, url, 1000, data[1000:]).status_code == 204
    assert http.get(url).content == data


def test_length_told_in_an_empty_final_patch_completes_the_upload(http) -> None:
    data = random_bytes(2 * MiB, seed=63)
    url = tus_create(http, None)
    assert tus_patch(http, url, 0, data).status_code == 204
    r = tus_patch(http, url, len(data), b"", **{"Upload-Length": str(len(data))})
    assert r.status_code == 204
    assert r.headers["Upload-Offset"] == str(len(data))
    got = http.get(url)
    assert got.status_code == 200 and got.content == data


def test_length_below_the_received_bytes_is_refused(http, probe) -> None:
    data = random_bytes(5000, seed=64)
    url = tus_create(http, None)
    assert tus_patch(http, url, 0, data).status_code == 204
    with store_unchanged(http, probe, url):
        r = tus_patch(http, url, 5000, b"", **{"Upload-Length": "4999"})
    assert r.status_code == 400  # a malformed length (as tusd), not a body too large (413)


@pytest.mark.parametrize("length", ["-5", "abc", "1.5"])
def test_malformed_upload_length_in_a_patch_is_400(http, probe, length: str) -> None:
    url = tus_create(http, None)
    with store_unchanged(http, probe, url):
        r = tus_patch(http, url, 0, b"abc", **{"Upload-Length": length})
    assert r.status_code == 400


def test_upload_length_above_tus_max_size_in_a_patch_is_413(http, probe) -> None:
    url = tus_create(http, None)
    with store_unchanged(http, probe, url):
        r = tus_patch(http, url, 0, b"abc", **{"Upload-Length": str((1 << 40) + 1)})
    assert r.status_code == 413
    assert tus_head(http, url).headers["Upload-Defer-Length"] == "1"


@pytest.mark.parametrize("declared", ["at creation", "in a patch"])
def test_a_set_length_cannot_be_changed(http, probe, declared: str) -> None:
    """Spec (creation-defer-length): "Once set the length MUST NOT be changed": a PATCH naming
    another Upload-Length is refused (400, as tusd) and none of its bytes are kept; the same
    length again is no change."""
    if declared == "at creation":
        url = tus_create(http, 10)
        assert tus_patch(http, url, 0, b"abc").status_code == 204
    else:
        url = tus_create(http, None)
        assert tus_patch(http, url, 0, b"abc", **{"Upload-Length": "10"}).status_code == 204
    for other in ("20", "6", "3"):
        with store_unchanged(http, probe, url):
            r = tus_patch(http, url, 3, b"def", **{"Upload-Length": other})
        assert r.status_code == 400, (other, r.status_code, r.text)
        assert "Upload-Offset" not in r.headers
    r = tus_patch(http, url, 3, b"defghij", **{"Upload-Length": "10"})
    assert r.status_code == 204
    assert r.headers["Upload-Offset"] == r.headers["Upload-Length"] == "10"
    with store_unchanged(http, probe, url):  # finished: its length is no more changeable
        r = tus_patch(http, url, 10, b"", **{"Upload-Length": "12"})
    assert r.status_code == 400
    assert http.get(url).content == b"abcdefghij"


def test_a_refused_patch_does_not_declare_the_length(http, probe) -> None:
    url = tus_create(http, None)
    assert tus_patch(http, url, 0, b"abc").status_code == 204
    with store_unchanged(http, probe, url):
        r = tus_patch(http, url, 999, b"def", **{"Upload-Length": "6"})
        assert r.status_code == 409
        r = tus_patch(http, url, 3, b"defg", **{"Upload-Length": "6"})  # body beyond it
        assert r.status_code == 413
    h = tus_head(http, url)
    assert h.headers["Upload-Defer-Length"] == "1"


def test_a_patch_refused_for_its_checksum_does_not_declare_the_length(http, probe) -> None:
    """Spec (checksum): on 460 "the uploaded chunk MUST be discarded, and the upload and its
    offset MUST NOT be updated" -- the Upload-Length that came with it included."""
    url = tus_create(http, None)
    assert tus_patch(http, url, 0, b"abc").status_code == 204
    wrong = "sha1 " + base64.b64encode(hashlib.sha1(b"something else").digest()).decode()
    with store_unchanged(http, probe, url):
        r = tus_patch(http, url, 3, b"def", **{"Upload-Length": "6", "Upload-Checksum": wrong})
        assert r.status_code == 460
    h = tus_head(http, url)
    assert h.headers["Upload-Defer-Length"] == "1"
    assert "Upload-Length" not in h.headers


def test_head_and_patch_responses_of_a_deferred_upload(http) -> None:
    url = tus_create(http, None)
    r = tus_patch(http, url, 0, b"x" * 100)
    assert r.status_code == 204
    assert r.headers["Upload-Offset"] == "100"
    h = http.head(url, headers=TUS)
    assert h.headers["Upload-Defer-Length"] == "1"
    assert h.headers["Cache-Control"] == "no-store"


def test_a_deferred_upload_cannot_grow_past_tus_max_size(fresh_server) -> None:
    fresh_server.env_extra["EDGESTORE_MAX_UPLOAD_SIZE"] = "100000"
    fresh_server.start()
    with fresh_server.client() as c:
        assert c.options("/files/").headers["Tus-Max-Size"] == "100000"
        url = tus_create(c, None)
        r = tus_patch(c, url, 0, random_bytes(150_000, seed=65))
        assert r.status_code == 413
        assert tus_head(c, url).headers["Upload-Offset"] == "0"
