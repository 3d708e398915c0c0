"""HEAD (core protocol): the durable offset, the length, metadata, and no caching."""

from __future__ import annotations

import pytest

from tests.helpers import (
    TUS,
    UNKNOWN_ID,
    random_bytes,
    store_unchanged,
    tus_create,
    tus_metadata,
    tus_patch,
    tus_upload,
)


def test_head_of_a_new_upload(http) -> None:
    url = tus_create(http, 1234)
    r = http.head(url, headers=TUS)
    assert r.status_code == 200
    assert r.headers["Upload-Offset"] == "0"
    assert r.headers["Upload-Length"] == "1234"
    assert r.headers["Tus-Resumable"] == "1.0.0"
    assert r.headers["Cache-Control"] == "no-store"
    assert "Upload-Defer-Length" not in r.headers
    assert r.content == b""


def test_head_reports_the_offset_after_each_patch(http) -> None:
    data = random_bytes(300_000, seed=11)
    url = tus_create(http, len(data))
    for lo, hi in [(0, 1), (1, 70_000), (70_000, 250_001)]:
        assert tus_patch(http, url, lo, data[lo:hi]).status_code == 204
        r = http.head(url, headers=TUS)
        assert r.headers["Upload-Offset"] == str(hi)
        assert r.headers["Cache-Control"] == "no-store"


def test_head_of_a_finished_upload(http) -> None:
    data = random_bytes(5000, seed=12)
    url = tus_upload(http, data)
    r = http.head(url, headers=TUS)
    assert r.status_code == 200
    assert r.headers["Upload-Offset"] == r.headers["Upload-Length"] == "5000"
    assert r.headers["Cache-Control"] == "no-store"


def test_head_content_length_is_what_get_would_send_or_absent(http) -> None:
    """RFC 9110 8.6: a HEAD's Content-Length, if sent, MUST be the length of the GET's
    content. A finished upload's GET is the object (tusd: Content-Length = Upload-Length);
    an unfinished one's is an error document, so no Content-Length at all (not a false 0)."""
    data = random_bytes(5000, seed=13)
    done = tus_upload(http, data)
    assert http.head(done, headers=TUS).headers["Content-Length"] == "5000"
    assert http.get(done).headers["Content-Length"] == "5000"
    waiting = tus_create(http, 10)
    assert "Content-Length" not in http.head(waiting, headers=TUS).headers
    empty = tus_upload(http, b"")
    assert http.head(empty, headers=TUS).headers["Content-Length"] == "0"


def test_head_of_a_deferred_upload(http) -> None:
    url = tus_create(http, None)
    r = http.head(url, headers=TUS)
    assert r.headers["Upload-Defer-Length"] == "1"
    assert "Upload-Length" not in r.headers
    assert r.headers["Upload-Offset"] == "0"


def _parse_metadata(value: str) -> dict[str, str | None]:
    import base64

    out: dict[str, str | None] = {}
    for pair in value.split(","):
        parts = pair.strip().split(" ")
        out[parts[0]] = base64.b64decode(parts[1]).decode() if len(parts) > 1 else None
    return out


def test_head_round_trips_upload_metadata(http) -> None:
    meta = {
        "filename": "résumé 2024.pdf",
        "filetype": "application/pdf",
        "flag": None,  # a key without a value is allowed by the spec
        "note": "a,b c",  # commas and spaces survive base64
    }
    url = tus_create(http, 10, metadata=meta)
    r = http.head(url, headers=TUS)
    assert _parse_metadata(r.headers["Upload-Metadata"]) == meta


def test_head_has_no_upload_metadata_when_none_was_sent(http) -> None:
    url = tus_create(http, 10)
    assert "Upload-Metadata" not in http.head(url, headers=TUS).headers


@pytest.mark.parametrize("upload_id", [UNKNOWN_ID, "not-an-upload", "0" * 200])
def test_head_of_an_unknown_upload_is_404(http, probe, upload_id: str) -> None:
    with store_unchanged(http, probe):
        r = http.head(f"/files/{upload_id}", headers=TUS)
    assert r.status_code == 404
    assert r.headers["Tus-Resumable"] == "1.0.0"


@pytest.mark.parametrize("version", [None, "0.2.2", "1.0", ""])
def test_head_without_a_supported_tus_resumable_is_412(http, probe, version) -> None:
    url = tus_create(http, 10)
    headers = {} if version is None else {"Tus-Resumable": version}
    with store_unchanged(http, probe, url):
        r = http.head(url, headers=headers)
    assert r.status_code == 412
    assert "1.0.0" in r.headers["Tus-Version"]
    assert "Upload-Offset" not in r.headers


def test_head_metadata_uses_the_exact_header_syntax(http) -> None:
    url = tus_create(http, 1, metadata={"a": "b"})
    assert http.head(url, headers=TUS).headers["Upload-Metadata"] == tus_metadata({"a": "b"})
