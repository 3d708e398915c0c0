"""POST (creation extension): new uploads, their lengths, and Upload-Metadata.

`bucket`, `key`, `filename` and `filetype` in Upload-Metadata decide where the finished object
lands and how it is served; every refused POST must leave no upload behind.
"""

from __future__ import annotations

import base64
import uuid

import pytest

from tests.helpers import (
    TUS,
    random_bytes,
    sha256_hex,
    store_unchanged,
    tus_create,
    tus_metadata,
    tus_patch,
    tus_upload,
    upload_id_of,
)

MAX_SIZE = 1 << 40  # the default Tus-Max-Size


def _post(http, headers: dict[str, str], path: str = "/files/"):
    # bytes, so that non-ASCII header values go out as they are (UTF-8)
    raw = {k.encode(): v.encode() for k, v in {**TUS, **headers}.items()}
    return http.post(path, headers=raw)


def _unique(prefix: str = "obj") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def test_create_returns_201_and_an_absolute_location(http, server) -> None:
    r = _post(http, {"Upload-Length": "100"})
    assert r.status_code == 201
    loc = r.headers["Location"]
    assert loc.startswith(f"{server.url}/files/")
    uuid.UUID(upload_id_of(loc))
    assert r.headers["Tus-Resumable"] == "1.0.0"
    h = http.head(loc, headers=TUS)
    assert (h.headers["Upload-Offset"], h.headers["Upload-Length"]) == ("0", "100")


def test_create_without_trailing_slash(http) -> None:
    r = _post(http, {"Upload-Length": "1"}, path="/files")
    assert r.status_code == 201
    assert "/files/" in r.headers["Location"]


def test_every_upload_gets_its_own_url(http) -> None:
    urls = {tus_create(http, 5) for _ in range(5)}
    assert len(urls) == 5


@pytest.mark.parametrize("version", [None, "0.2.2", "1.0", "1.0.1"])
def test_create_without_a_supported_tus_resumable_is_412_and_creates_nothing(
    http, probe, version
) -> None:
    headers = {"Upload-Length": "10"}
    if version is not None:
        headers["Tus-Resumable"] = version
    with store_unchanged(http, probe):
        r = http.post("/files/", headers=headers)
    assert r.status_code == 412
    assert "1.0.0" in r.headers["Tus-Version"]
    assert "Location" not in r.headers


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Upload-Length": "10", "Upload-Defer-Length": "1"},
        {"Upload-Defer-Length": "2"},
        {"Upload-Defer-Length": "0"},
        {"Upload-Defer-Length": "yes"},
    ],
    ids=["neither", "both", "defer-2", "defer-0", "defer-yes"],
)
def test_exactly_one_of_length_and_deferred_length_is_required(http, probe, headers) -> None:
    with store_unchanged(http, probe):
        r = _post(http, headers)
    assert r.status_code == 400
    assert "Location" not in r.headers


@pytest.mark.parametrize("length", ["-1", "abc", "", "1.0", "1e3", "0x10", "10 10", "9" * 20])
def test_negative_or_non_numeric_upload_length_is_400(http, probe, length: str) -> None:
    with store_unchanged(http, probe):
        r = _post(http, {"Upload-Length": length})
    assert r.status_code == 400


def test_upload_length_above_tus_max_size_is_413(http, probe) -> None:
    with store_unchanged(http, probe):
        r = _post(http, {"Upload-Length": str(MAX_SIZE + 1)})
    assert r.status_code == 413
    assert "Location" not in r.headers


def test_upload_length_equal_to_tus_max_size_is_accepted(http) -> None:
    assert _post(http, {"Upload-Length": str(MAX_SIZE)}).status_code == 201


def test_an_empty_upload_becomes_an_empty_object(http) -> None:
    """tus-js-client and tuspy never PATCH an empty file: the POST alone must make it."""
    key = _unique("empty")
    r = _post(http, {"Upload-Length": "0", "Upload-Metadata": tus_metadata({"key": key})})
    assert r.status_code == 201
    assert r.headers["Upload-Offset"] == "0"
    url = r.headers["Location"]
    got = http.get(url)
    assert got.status_code == 200
    assert got.content == b""
    assert http.get(f"/objects/default/{key}").status_code == 200
    assert "Upload-Expires" not in http.head(url, headers=TUS).headers
    assert tus_patch(http, url, 0, b"").status_code == 204  # an empty PATCH changes nothing
    assert http.get(f"/objects/default/{key}").headers["X-Edgestore-Version"] == "1"


# --- Upload-Metadata ------------------------------------------------------------------------


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


BAD_METADATA = {
    "malformed-base64": "filename not*base64",
    "base64-without-padding": "filename YWJ",
    "not-utf8": "filename " + base64.b64encode(b"\xff\xfe").decode(),
    "duplicate-key": f"filename {_b64('a')},filename {_b64('b')}",
    "key-not-utf8": f"f\xefilename {_b64('a')}",  # latin-1 bytes, not UTF-8
    "key-with-tab": f"a\tb {_b64('a')}",
    "empty-pair": f"filename {_b64('a')},,x {_b64('b')}",
    "trailing-comma": f"filename {_b64('a')},",
    "three-parts": f"filename {_b64('a')} extra",
    "oversized": "big " + _b64("x" * 7000),  # > 8 KiB once base64-encoded
    "too-many-pairs": ",".join(f"k{i} {_b64('v')}" for i in range(200)),
}


@pytest.mark.parametrize("value", list(BAD_METADATA.values()), ids=list(BAD_METADATA))
def test_bad_upload_metadata_is_400_and_creates_nothing(http, probe, value: str) -> None:
    with store_unchanged(http, probe):
        raw = {k.encode(): v.encode() for k, v in TUS.items()}
        raw[b"Upload-Length"] = b"10"
        # latin-1: "key-not-utf8" goes out as the single byte 0xEF, as a latin-1 client sends it
        raw[b"Upload-Metadata"] = value.encode("latin-1")
        r = http.post("/files/", headers=raw)
    assert r.status_code == 400, r.text
    assert "Location" not in r.headers


# tus 1.0: a key "MUST NOT contain spaces and commas and MUST NOT be empty", and "SHOULD" be
# ASCII. Real clients send the rest: Uppy passes its `meta` field names through, people use
# `x-amz-meta/...` style names, and UTF-8 names come from forms in other languages.
SPEC_KEYS = [
    "relativePath",
    "x-amz-meta/owner",
    "a:b",
    "dir/sub:name",
    'q"uote(d)@[x]{y}=?;<>',
    "fïlename",
    "名前",
    "voilà",  # UTF-8 ends in 0xA0: a no-break space to a latin-1 reader, never to be stripped
    "Å",  # UTF-8 ends in 0x85: NEL to a latin-1 reader
]


def _raw_metadata(r) -> bytes:
    return next(v for k, v in r.headers.raw if k.lower() == b"upload-metadata")


def test_every_key_the_spec_allows_is_kept_and_echoed_as_sent(http) -> None:
    meta = {key: f"value of {key}" for key in SPEC_KEYS}
    meta["flag/only"] = None
    header = tus_metadata(meta)
    data = random_bytes(100, seed=47)
    r = _post(http, {"Upload-Length": str(len(data)), "Upload-Metadata": header})
    assert r.status_code == 201, r.text
    url = r.headers["Location"]
    h = http.head(url, headers=TUS)
    assert _raw_metadata(h) == header.encode()  # byte for byte: UTF-8 keys stay UTF-8
    assert tus_patch(http, url, 0, data).status_code == 204
    got = http.get(url)  # the keys never become header names: the download is unaffected
    assert got.status_code == 200 and got.content == data
    info = http.get(f"/ids/{got.headers['X-Edgestore-Object-Id']}/info").json()
    assert info["metadata"] == meta


def test_metadata_just_under_the_limit_is_accepted(http) -> None:
    value = "big " + _b64("x" * 6000)
    assert len(value) < 8 * 1024
    assert _post(http, {"Upload-Length": "1", "Upload-Metadata": value}).status_code == 201


def test_empty_upload_metadata_header_is_accepted(http) -> None:
    # tuspy sends an empty Upload-Metadata header when it has no metadata
    assert _post(http, {"Upload-Length": "1", "Upload-Metadata": ""}).status_code == 201


def test_metadata_decides_bucket_key_filename_and_content_type(http) -> None:
    data = random_bytes(70_000, seed=41)
    key = f"dir/{_unique()}.png"
    url = tus_upload(
        http,
        data,
        metadata={
            "bucket": "photos",
            "key": key,
            "filename": "holiday.png",
            "filetype": "image/png",
            "camera": "x100",
        },
    )
    got = http.get(f"/objects/photos/{key}")
    assert got.status_code == 200
    assert got.content == data
    assert got.headers["Content-Type"] == "image/png"
    assert 'filename="holiday.png"' in got.headers["Content-Disposition"]
    assert got.headers["X-Edgestore-Sha256"] == sha256_hex(data)
    by_url = http.get(url)
    assert by_url.headers["X-Edgestore-Object-Id"] == got.headers["X-Edgestore-Object-Id"]
    info = http.get(f"/ids/{got.headers['X-Edgestore-Object-Id']}/info").json()
    assert (info["bucket"], info["key"], info["filename"]) == ("photos", key, "holiday.png")
    assert info["content_type"] == "image/png"
    assert info["metadata"]["camera"] == "x100"
    assert http.get(f"/objects/default/{key}").status_code == 404


def test_filename_is_the_key_when_no_key_is_given(http) -> None:
    name = f"{_unique('file')}.bin"
    data = random_bytes(1000, seed=42)
    tus_upload(http, data, metadata={"filename": name})
    got = http.get(f"/objects/default/{name}")
    assert got.status_code == 200 and got.content == data


def test_without_key_or_filename_the_object_is_named_by_the_upload(http) -> None:
    data = random_bytes(1000, seed=43)
    url = tus_upload(http, data)
    got = http.get(f"/objects/default/{upload_id_of(url)}")
    assert got.status_code == 200 and got.content == data


def test_filename_that_is_not_a_valid_key_falls_back_to_the_upload_id(http) -> None:
    data = random_bytes(100, seed=44)
    url = tus_upload(http, data, metadata={"filename": "../etc/passwd"})
    got = http.get(f"/objects/default/{upload_id_of(url)}")
    assert got.status_code == 200 and got.content == data
    assert "passwd" in got.headers["Content-Disposition"]
    assert "/" not in got.headers["Content-Disposition"].split(";")[1]


@pytest.mark.parametrize(
    "meta",
    [{"bucket": "Upper"}, {"bucket": "-x"}, {"bucket": "a" * 64}, {"key": "../x"}, {"key": "/abs"}],
    ids=["bucket-upper", "bucket-dash", "bucket-long", "key-dotdot", "key-absolute"],
)
def test_invalid_bucket_or_key_is_400_and_creates_nothing(http, probe, meta) -> None:
    with store_unchanged(http, probe):
        r = _post(http, {"Upload-Length": "10", "Upload-Metadata": tus_metadata(meta)})
    assert r.status_code == 400


def test_two_uploads_to_one_key_make_two_versions(http) -> None:
    key = _unique("versions")
    first, second = random_bytes(100, seed=45), random_bytes(200, seed=46)
    tus_upload(http, first, metadata={"key": key})
    tus_upload(http, second, metadata={"key": key})
    assert http.get(f"/objects/default/{key}").content == second
    assert http.get(f"/objects/default/{key}?version=1").content == first
