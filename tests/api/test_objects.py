"""The object API: read by bucket/key or id and version, list, versions, delete; Range,
ETag and conditional requests; Content-Type and a Content-Disposition that cannot inject.

Objects are made through tus (the way they arrive in production) on the module's server.
"""

from __future__ import annotations

import re
import uuid
from urllib.parse import unquote

import httpx
import pytest

from tests.helpers import (
    OFFSET_OCTET_STREAM,
    TUS,
    UNKNOWN_ID,
    MiB,
    random_bytes,
    sha256_hex,
    tus_metadata,
    tus_upload,
)


def _bucket() -> str:
    return f"b{uuid.uuid4().hex[:12]}"


def _put(http, bucket: str, key: str, data: bytes, **meta: str) -> str:
    """Upload `data` as bucket/key; return the object id."""
    tus_upload(http, data, metadata={"bucket": bucket, "key": key, **meta})
    r = http.head(f"/objects/{bucket}/{key}")
    assert r.status_code == 200
    return r.headers["X-Edgestore-Object-Id"]


@pytest.fixture(scope="module")
def big(server):
    """A 20 MiB object of several chunks, shared by the read tests."""
    data = random_bytes(20 * MiB + 123, seed=200)
    bucket = _bucket()
    with server.client() as c:
        oid = _put(c, bucket, "big/file.bin", data, filename="file.bin")
    return bucket, "big/file.bin", oid, data


# --- reading ----------------------------------------------------------------------------------


def test_get_and_head_by_bucket_and_key(http, big) -> None:
    bucket, key, oid, data = big
    r = http.get(f"/objects/{bucket}/{key}")
    assert r.status_code == 200
    assert sha256_hex(r.content) == sha256_hex(data)
    assert r.headers["Content-Length"] == str(len(data))
    assert re.fullmatch(r'"[^"]+"', r.headers["ETag"])  # strong, quoted
    assert r.headers["X-Edgestore-Sha256"] == sha256_hex(data)
    assert r.headers["Accept-Ranges"] == "bytes"
    assert r.headers["X-Edgestore-Object-Id"] == oid
    assert r.headers["Content-Type"] == "application/octet-stream"
    h = http.head(f"/objects/{bucket}/{key}")
    assert h.status_code == 200
    assert h.content == b""
    assert h.headers["Content-Length"] == str(len(data))
    assert h.headers["ETag"] == r.headers["ETag"]


def test_get_and_head_by_id(http, big) -> None:
    _bucket_name, _key, oid, data = big
    r = http.get(f"/ids/{oid}")
    assert r.status_code == 200 and sha256_hex(r.content) == sha256_hex(data)
    assert http.head(f"/ids/{oid}").headers["Content-Length"] == str(len(data))
    info = http.get(f"/ids/{oid}/info").json()
    assert info["size"] == len(data)
    assert info["sha256"] == sha256_hex(data)
    assert info["version"] == 1


UNKNOWN = [
    "/objects/nobucket/none",
    "/objects/default/does/not/exist",
    f"/ids/{UNKNOWN_ID}",
    "/ids/not-a-uuid",
    f"/ids/{UNKNOWN_ID}/info",
    f"/ids/{UNKNOWN_ID}/versions",
]


@pytest.mark.parametrize("path", UNKNOWN)
def test_unknown_objects_are_404(http, path: str) -> None:
    r = http.get(path)
    assert r.status_code == 404
    assert r.json()["error"]


def test_invalid_bucket_name_is_refused(http) -> None:
    assert http.get("/objects/UPPER/key").status_code in (400, 404)


def _keys(http, **params) -> tuple[list[str], str | None]:
    r = http.get("/objects", params=params)
    assert r.status_code == 200, r.text
    body = r.json()
    return [o["key"] for o in body["objects"]], body["next_after"]


def test_list_by_prefix_after_and_limit(http) -> None:
    bucket = _bucket()
    keys = ["a/1", "a/2", "a/3", "ab", "b/1", "c"]
    for k in keys:
        _put(http, bucket, k, k.encode())
    _put(http, bucket, "a/2", b"second version")  # listed once, latest version
    assert _keys(http, bucket=bucket)[0] == keys
    assert _keys(http, bucket=bucket, prefix="a/")[0] == ["a/1", "a/2", "a/3"]
    assert _keys(http, bucket=bucket, prefix="a")[0] == ["a/1", "a/2", "a/3", "ab"]
    assert _keys(http, bucket=bucket, after="a/3")[0] == ["ab", "b/1", "c"]
    page, nxt = _keys(http, bucket=bucket, limit=2)
    assert page == ["a/1", "a/2"] and nxt == "a/2"
    page, nxt = _keys(http, bucket=bucket, limit=2, after=nxt)
    assert page == ["a/3", "ab"]
    page, nxt = _keys(http, bucket=bucket, limit=2, after=nxt)
    assert page == ["b/1", "c"] and nxt is None  # the last page, though full: no empty one
    assert _keys(http, bucket=bucket, limit=2, after="c") == ([], None)
    assert _keys(http, bucket=bucket, limit=6) == (keys, None)
    assert _keys(http, bucket=bucket, limit=5) == (keys[:5], "b/1")
    listed = http.get("/objects", params={"bucket": bucket, "prefix": "a/2"}).json()["objects"]
    assert listed[0]["size"] == len(b"second version") and listed[0]["version"] == 2
    assert listed[0]["bucket"] == bucket


def test_list_prefix_wildcards_are_literal(http) -> None:
    bucket = _bucket()
    for k in ["100%/x", "100x/y", "a_b", "axb"]:
        _put(http, bucket, k, b"x")
    assert _keys(http, bucket=bucket, prefix="100%")[0] == ["100%/x"]
    assert _keys(http, bucket=bucket, prefix="a_")[0] == ["a_b"]


def test_list_prefix_is_case_sensitive(http) -> None:
    bucket = _bucket()
    for k in ["Photos/1", "photos/2"]:
        _put(http, bucket, k, b"x")
    # (SQLite's LIKE ignores ASCII case; the listing must not use it.)
    assert _keys(http, bucket=bucket, prefix="photos/")[0] == ["photos/2"]


def test_list_rejects_bad_parameters(http) -> None:
    assert http.get("/objects", params={"limit": 0}).status_code == 400
    assert http.get("/objects", params={"limit": 100_001}).status_code == 400
    assert http.get("/objects", params={"bucket": "Not Valid"}).status_code == 400


def test_list_empty_filters_mean_none(http) -> None:
    """docs/api.md writes the listing as `GET /objects?bucket=&prefix=&after=&limit=`: a blank
    filter (a form's empty field) is no filter, as `prefix=` and `after=` always were;
    `bucket=` was a 400 "invalid bucket name ''", and `limit=` one saying "" is no integer."""
    bucket = _bucket()
    _put(http, bucket, "k", b"x")
    blank = http.get("/objects", params={"bucket": "", "prefix": "", "after": "", "limit": ""})
    assert blank.status_code == 200, blank.text
    assert blank.json() == http.get("/objects").json()


@pytest.mark.parametrize("query", ["limit=", "limit", "after=&limit=&prefix=", "limit=&limit=2"])
def test_list_blank_limit_counts_as_not_given(http, query: str) -> None:
    """`?limit=` was a 400 ("unable to parse string as an integer"), though docs/api.md says
    a blank parameter counts as not given; a blank beside a real value leaves the value."""
    bucket = _bucket()
    for k in ("a", "b", "c"):
        _put(http, bucket, k, b"x")
    r = http.get(f"/objects?bucket={bucket}&{query}")
    assert r.status_code == 200, r.text
    expected = 2 if query.endswith("limit=2") else 3
    assert [o["key"] for o in r.json()["objects"]] == ["a", "b", "c"][:expected]


def test_listing_all_buckets_pages_without_skipping(http) -> None:
    tag = uuid.uuid4().hex[:8]
    first, second = f"a{tag}", f"b{tag}"
    _put(http, first, f"{tag}/y", b"1")
    _put(http, first, f"{tag}/z", b"2")
    _put(http, second, f"{tag}/a", b"3")
    seen: list[tuple[str, str]] = []
    after = None
    for _ in range(10):
        params: dict[str, object] = {"prefix": tag, "limit": 2}
        if after:
            params["after"] = after
        body = http.get("/objects", params=params).json()
        seen += [(o["bucket"], o["key"]) for o in body["objects"]]
        after = body["next_after"]
        if after is None:
            break
    assert sorted(seen) == [(first, f"{tag}/y"), (first, f"{tag}/z"), (second, f"{tag}/a")]


# --- ranges -----------------------------------------------------------------------------------

SIZE = 20 * MiB + 123  # the `big` object


@pytest.mark.parametrize(
    "spec, start, length",
    [
        ("bytes=0-0", 0, 1),
        ("bytes=10-19", 10, 10),
        ("bytes=4194300-4194400", 4194300, 101),
        ("bytes=-100", SIZE - 100, 100),  # suffix
        ("bytes=20971000-", 20971000, SIZE - 20971000),  # open-ended
        (f"bytes={SIZE - 1}-", SIZE - 1, 1),  # the last byte
        ("bytes=0-999999999999", 0, SIZE),  # an end past the size is clamped
        ("bytes=-999999999999", 0, SIZE),  # a suffix longer than the object: all of it
        ("bytes=8388000-16777300", 8388000, 16777300 - 8388000 + 1),  # across chunks
    ],
)
def test_range_206(http, big, spec: str, start: int, length: int) -> None:
    bucket, key, _oid, data = big
    assert len(data) == SIZE
    r = http.get(f"/objects/{bucket}/{key}", headers={"Range": spec})
    assert r.status_code == 206
    assert r.content == data[start : start + length]
    assert r.headers["Content-Range"] == f"bytes {start}-{start + length - 1}/{SIZE}"
    assert r.headers["Content-Length"] == str(length)
    h = http.head(f"/objects/{bucket}/{key}", headers={"Range": spec})  # ignored (14.2)
    assert h.status_code == 200 and h.headers["Content-Length"] == str(SIZE)
    assert "Content-Range" not in h.headers


@pytest.mark.parametrize("spec", [f"bytes={SIZE}-", "bytes=99999999-100000000", "bytes=-0"])
def test_unsatisfiable_range_is_416(http, big, spec: str) -> None:
    bucket, key, _oid, _data = big
    r = http.get(f"/objects/{bucket}/{key}", headers={"Range": spec})
    assert r.status_code == 416
    assert r.headers["Content-Range"] == f"bytes */{SIZE}"


@pytest.mark.parametrize("spec", ["bytes=5-1", "items=0-5", "bytes=a-b", "bytes=0-1,9-5"])
def test_ranges_not_understood_serve_everything(http, spec: str) -> None:
    bucket = _bucket()
    data = random_bytes(1000, seed=230)
    _put(http, bucket, "r", data)
    r = http.get(f"/objects/{bucket}/r", headers={"Range": spec})
    assert r.status_code == 200 and r.content == data


def test_ranges_on_a_zero_length_object(http) -> None:
    """RFC 9110 14.1.1: on a zero-length representation a suffix range with a non-zero
    length is satisfiable (416 is wrong; no 206 can describe it, so 200 with the empty
    body); every int-range and `-0` are unsatisfiable (416, `bytes */0`)."""
    bucket = _bucket()
    _put(http, bucket, "empty", b"")
    for spec in ("bytes=-1", "bytes=-500"):
        for method in ("GET", "HEAD"):
            r = http.request(method, f"/objects/{bucket}/empty", headers={"Range": spec})
            assert r.status_code == 200, (method, spec, r.status_code)
            assert r.content == b"" and r.headers["Content-Length"] == "0"
            assert "Content-Range" not in r.headers
    for spec in ("bytes=0-", "bytes=0-0", "bytes=-0"):
        r = http.get(f"/objects/{bucket}/empty", headers={"Range": spec})
        assert r.status_code == 416, (spec, r.status_code)
        assert r.headers["Content-Range"] == "bytes */0"


# --- conditional requests ---------------------------------------------------------------------


def test_if_none_match(http) -> None:
    bucket = _bucket()
    data = random_bytes(5000, seed=231)
    _put(http, bucket, "c", data)
    etag = http.get(f"/objects/{bucket}/c").headers["ETag"]
    for value in (etag, f'"x", {etag}', "*"):
        r = http.get(f"/objects/{bucket}/c", headers={"If-None-Match": value})
        assert r.status_code == 304
        assert r.content == b""
        assert r.headers["ETag"] == etag
    assert http.head(f"/objects/{bucket}/c", headers={"If-None-Match": etag}).status_code == 304
    assert http.get(f"/objects/{bucket}/c", headers={"If-None-Match": '"x"'}).status_code == 200
    # a new version has a new ETag
    _put(http, bucket, "c", data + b"!")
    assert http.get(f"/objects/{bucket}/c", headers={"If-None-Match": etag}).status_code == 200


def test_if_none_match_uses_weak_comparison(http) -> None:
    bucket = _bucket()
    _put(http, bucket, "w", b"weak")
    etag = http.get(f"/objects/{bucket}/w").headers["ETag"]
    r = http.get(f"/objects/{bucket}/w", headers={"If-None-Match": f"W/{etag}"})
    assert r.status_code == 304


def test_if_range(http, big) -> None:
    bucket, key, _oid, data = big
    etag = http.head(f"/objects/{bucket}/{key}").headers["ETag"]
    r = http.get(f"/objects/{bucket}/{key}", headers={"Range": "bytes=100-199", "If-Range": etag})
    assert r.status_code == 206 and r.content == data[100:200]
    stale = http.get(
        f"/objects/{bucket}/{key}", headers={"Range": "bytes=100-199", "If-Range": '"stale"'}
    )
    assert stale.status_code == 200
    assert stale.headers["Content-Length"] == str(len(data))
    assert sha256_hex(stale.content) == sha256_hex(data)


def test_a_stale_if_range_ignores_even_an_unsatisfiable_range(http) -> None:
    """RFC 9110 13.1.5 / 13.2.2 step 5: when If-Range does not match, the Range header is
    ignored and the whole current object is sent (200), whatever the range was. A client
    resuming an old, longer version past the new one's end must get the new object, not
    416."""
    bucket = _bucket()
    _put(http, bucket, "grow", random_bytes(1000, seed=234))
    old_etag = http.head(f"/objects/{bucket}/grow").headers["ETag"]
    data = random_bytes(100, seed=235)
    _put(http, bucket, "grow", data)  # a new, shorter version
    for if_range in (old_etag, "Wed, 21 Oct 2015 07:28:00 GMT"):
        h = {"Range": "bytes=500-", "If-Range": if_range}
        r = http.get(f"/objects/{bucket}/grow", headers=h)
        assert r.status_code == 200, (if_range, r.status_code, r.text)
        assert r.content == data and "Content-Range" not in r.headers
        assert http.head(f"/objects/{bucket}/grow", headers=h).status_code == 200


# --- Content-Type and Content-Disposition ----------------------------------------------------


def test_content_type_comes_from_filetype(http) -> None:
    bucket = _bucket()
    _put(http, bucket, "img", b"\x89PNG", filetype="image/png")
    assert http.get(f"/objects/{bucket}/img").headers["Content-Type"] == "image/png"
    _put(http, bucket, "legacy", b"x", contentType="application/pdf")
    assert http.get(f"/objects/{bucket}/legacy").headers["Content-Type"] == "application/pdf"
    _put(http, bucket, "text", b"a,b", filetype="text/csv")
    assert http.get(f"/objects/{bucket}/text").headers["Content-Type"].startswith("text/csv")
    _put(http, bucket, "none", b"x")
    ctype = http.get(f"/objects/{bucket}/none").headers["Content-Type"]
    assert ctype == "application/octet-stream"


def test_text_content_type_is_served_as_stored(http) -> None:
    bucket = _bucket()
    _put(http, bucket, "latin1.csv", "a;b\ncafé\n".encode("latin-1"), filetype="text/csv")
    assert http.get(f"/objects/{bucket}/latin1.csv").headers["Content-Type"] == "text/csv"


def test_content_disposition_with_a_utf8_filename(http) -> None:
    bucket = _bucket()
    name = "Résumé – 東京 2024.pdf"
    _put(http, bucket, "cv", b"%PDF", filename=name)
    cd = http.get(f"/objects/{bucket}/cv").headers["Content-Disposition"]
    assert cd.startswith("attachment;")
    assert cd.isascii()
    star = cd.split("filename*=", 1)[1]
    assert star.startswith("UTF-8''")
    assert unquote(star[len("UTF-8''") :], encoding="utf-8") == name
    fallback = cd.split('filename="', 1)[1].split('"', 1)[0]
    assert fallback.isascii() and fallback.endswith(".pdf")


# RFC 6266: a quoted-string without quotes or backslashes, then an RFC 5987 ext-value
DISPOSITION = re.compile(
    r"attachment; "
    r"filename=\"([^\"\\\\\x00-\x1f\x7f]*)\"; "
    r"filename\*=UTF-8''([A-Za-z0-9%!#$&+.^_`|~-]*)"
)

NASTY_NAMES = {
    "quote": 'evil".txt',
    "crlf": "a\r\nX-Injected: yes\r\n.txt",
    "lf": "a\nSet-Cookie: s=1",
    "backslash-quote": 'x\\"; filename="y.exe',
    "slash": "a/b",
}


@pytest.mark.parametrize("name", list(NASTY_NAMES.values()), ids=list(NASTY_NAMES))
def test_content_disposition_cannot_inject(http, name: str) -> None:
    bucket = _bucket()
    data = random_bytes(100, seed=232)
    _put(http, bucket, "f", data, filename=name)
    r = http.get(f"/objects/{bucket}/f")
    assert r.status_code == 200 and r.content == data
    assert "X-Injected" not in r.headers
    assert "Set-Cookie" not in r.headers
    cd = r.headers["Content-Disposition"]
    assert "\r" not in cd and "\n" not in cd
    # exactly a quoted ASCII filename and a percent-encoded filename*, nothing else
    m = DISPOSITION.fullmatch(cd)
    assert m is not None, cd
    assert unquote(m.group(2)) == re.sub(r"[\x00-\x1f/\\]", "_", name)


@pytest.mark.parametrize(
    "name, fallback, utf8",
    [
        ("..\\..\\evil.bat", ".._.._evil.bat", ".._.._evil.bat"),  # Windows' separator
        ("100%41.txt", "100_41.txt", "100%41.txt"),  # no %xx a user agent might decode
        ("tab\there.txt", "tab_here.txt", "tab_here.txt"),
        ("café.txt", "caf_.txt", "café.txt"),
    ],
)
def test_content_disposition_names_a_file_in_place(
    http, name: str, fallback: str, utf8: str
) -> None:
    """RFC 6266 4.3 / appendix D: neither form names a path (no '/' nor '\\'), holds a
    control character, nor has a '%' in the fallback that an agent could percent-decode."""
    bucket = _bucket()
    _put(http, bucket, "f", b"x", filename=name)
    m = DISPOSITION.fullmatch(http.get(f"/objects/{bucket}/f").headers["Content-Disposition"])
    assert m is not None
    assert (m.group(1), unquote(m.group(2))) == (fallback, utf8)


def test_a_filetype_with_crlf_neither_injects_nor_breaks_the_object(http) -> None:
    bucket = _bucket()
    data = random_bytes(100, seed=233)
    meta = tus_metadata({"bucket": bucket, "key": "t", "filetype": "text/html\r\nX-Injected: 1"})
    r = http.post(
        "/files/",
        content=data,
        headers={
            **TUS,
            "Upload-Length": str(len(data)),
            "Upload-Metadata": meta,
            "Content-Type": OFFSET_OCTET_STREAM,
        },
    )
    if r.status_code == 400:
        return  # refused at creation: fine
    assert r.status_code == 201
    try:
        got = http.get(f"/objects/{bucket}/t")
    except httpx.RemoteProtocolError as exc:
        pytest.fail(f"the object cannot be downloaded: {exc}")
    assert got.status_code == 200 and got.content == data
    assert "X-Injected" not in got.headers
