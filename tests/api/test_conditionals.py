"""Downloads against RFC 9110: the Range header's syntax as clients send it, and conditional
requests (If-Match, If-Unmodified-Since, If-None-Match, If-Modified-Since, If-Range) in
13.2.2's order, on GET and HEAD alike.

Objects are made through tus on the module's server (SQLite and PostgreSQL).
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from email.utils import format_datetime, parsedate_to_datetime

import httpx
import pytest
import sqlalchemy as sa

from tests.helpers import random_bytes, tus_upload

OLD = "Wed, 21 Oct 2015 07:28:00 GMT"


def _object(http: httpx.Client, size: int = 1000, seed: int = 400) -> tuple[str, bytes, str, str]:
    """A new object: its path, bytes, ETag and Last-Modified."""
    bucket = f"b{uuid.uuid4().hex[:12]}"
    data = random_bytes(size, seed=seed)
    tus_upload(http, data, metadata={"bucket": bucket, "key": "c"})
    h = http.head(f"/objects/{bucket}/c")
    return f"/objects/{bucket}/c", data, h.headers["ETag"], h.headers["Last-Modified"]


def _both(http: httpx.Client, path: str, headers: dict[str, str]) -> list[httpx.Response]:
    """GET and HEAD of `path`: a conditional answers both the same way."""
    return [http.request(m, path, headers=headers) for m in ("GET", "HEAD")]


def _shifted(date: str, seconds: int) -> str:
    return format_datetime(parsedate_to_datetime(date) + timedelta(seconds=seconds), usegmt=True)


# --- Range syntax -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec", ["Bytes=0-1", "BYTES=0-1", "bytes= 0-1", "bytes=0-1 ,", "bytes=0-1,", "bytes=, 0-1"]
)
def test_the_range_unit_is_case_insensitive_and_empty_list_elements_are_ignored(
    http, spec: str
) -> None:
    """RFC 9110 14.1: range unit names are case-insensitive; 5.6.1.2: a list's empty
    elements and the whitespace around its elements are ignored. One range remains: a 206
    (HEAD ignores Range: 14.2)."""
    path, data, _etag, _lm = _object(http, seed=401)
    r = http.get(path, headers={"Range": spec})
    assert r.status_code == 206, (spec, r.status_code)
    assert r.headers["Content-Range"] == "bytes 0-1/1000"
    assert r.headers["Content-Length"] == "2"
    assert r.content == data[:2]
    h = http.head(path, headers={"Range": spec})
    assert h.status_code == 200 and h.headers["Content-Length"] == "1000"


# --- If-Match and If-Unmodified-Since: 412 -----------------------------------------------------


def test_if_match_on_a_download_is_412_unless_a_tag_matches_strongly(http) -> None:
    path, data, etag, _lm = _object(http, seed=402)
    for value in ('"nope"', f"W/{etag}", "garbage", f'W/"x", W/{etag}'):
        for r in _both(http, path, {"If-Match": value}):
            assert r.status_code == 412, (value, r.request.method, r.status_code)
            assert "Content-Range" not in r.headers
    # Before Range and before If-None-Match (13.2.2 step 1 comes first).
    r = http.get(path, headers={"If-Match": '"nope"', "Range": "bytes=0-1"})
    assert r.status_code == 412
    r = http.get(path, headers={"If-Match": '"nope"', "If-None-Match": etag})
    assert r.status_code == 412
    for value in (etag, f'"x", {etag}', "*", f'"x" ,{etag}'):
        for r in _both(http, path, {"If-Match": value}):
            assert r.status_code == 200, (value, r.request.method, r.status_code)
        assert http.get(path, headers={"If-Match": value}).content == data
    # One field per tag means the same list.
    r = http.get(path, headers=[("If-Match", '"x"'), ("If-Match", etag)])
    assert r.status_code == 200 and r.content == data


def test_if_unmodified_since_is_412_when_modified_after_and_ignored_with_if_match(http) -> None:
    path, data, etag, lm = _object(http, seed=403)
    for r in _both(http, path, {"If-Unmodified-Since": OLD}):
        assert r.status_code == 412, (r.request.method, r.status_code)
    for value in (lm, _shifted(lm, 3600), "not a date", "Wed, 21 Oct 2015 07:28:00 +0000x"):
        for r in _both(http, path, {"If-Unmodified-Since": value}):
            assert r.status_code == 200, (value, r.request.method, r.status_code)
    # With If-Match, If-Unmodified-Since is not evaluated (13.1.4).
    r = http.get(path, headers={"If-Match": etag, "If-Unmodified-Since": OLD})
    assert r.status_code == 200 and r.content == data


# --- If-None-Match and If-Modified-Since: 304 ---------------------------------------------------


def test_if_modified_since_is_304_unless_modified_after(http) -> None:
    path, data, etag, lm = _object(http, seed=404)
    when = parsedate_to_datetime(lm)
    rfc850 = when.strftime("%A, %d-%b-%y %H:%M:%S GMT")
    asctime = when.strftime("%a %b ") + f"{when.day:>2}" + when.strftime(" %H:%M:%S %Y")
    for value in (lm, _shifted(lm, 3600), rfc850, asctime):
        for r in _both(http, path, {"If-Modified-Since": value}):
            assert r.status_code == 304, (value, r.request.method, r.status_code)
            assert r.content == b"" and r.headers["ETag"] == etag
            assert r.headers["Last-Modified"] == lm
    for value in (OLD, _shifted(lm, -1), "yesterday", ""):
        r = http.get(path, headers={"If-Modified-Since": value})
        assert r.status_code == 200 and r.content == data, value
    # If-None-Match takes precedence: a tag that does not match is a 200 whatever the date.
    r = http.get(path, headers={"If-None-Match": '"other"', "If-Modified-Since": lm})
    assert r.status_code == 200 and r.content == data


def test_if_none_match_reads_every_field_and_ignores_malformed_members(http) -> None:
    path, data, etag, _lm = _object(http, seed=405)
    r = http.get(path, headers=[("If-None-Match", '"x"'), ("If-None-Match", etag)])
    assert r.status_code == 304
    unquoted = etag.strip('"')
    r = http.get(path, headers={"If-None-Match": f"{unquoted}, garbage"})
    assert r.status_code == 200 and r.content == data


# --- If-Range -----------------------------------------------------------------------------------


def test_if_range_with_the_last_modified_date_serves_the_range(http) -> None:
    """13.1.5: a date that is exactly the Last-Modified of a version no other shares (to the
    second) validates the client's partial copy; any other date, or a weak tag, does not."""
    path, data, etag, lm = _object(http, seed=406)
    r = http.get(path, headers={"Range": "bytes=10-19", "If-Range": lm})
    assert r.status_code == 206 and r.headers["Content-Range"] == "bytes 10-19/1000"
    assert r.content == data[10:20]
    for value in (_shifted(lm, -1), _shifted(lm, 1), f"W/{etag}", "garbage"):
        r = http.get(path, headers={"Range": "bytes=10-19", "If-Range": value})
        assert r.status_code == 200 and r.content == data, value


def test_if_range_with_a_date_two_versions_share_is_not_trusted(server, http) -> None:
    """Last-Modified has one-second resolution: when the version before this one was made in
    the same second, a client's copy from that date may be either version's (8.8.2.2: the
    date is not a strong validator), so the whole current version is sent."""
    path, _old, _etag, _lm = _object(http, seed=407)
    bucket = path.split("/")[2]
    data = random_bytes(1000, seed=408)
    tus_upload(http, data, metadata={"bucket": bucket, "key": "c"})
    eng = sa.create_engine(server.database_url)
    try:
        with eng.begin() as conn:
            conn.execute(
                sa.text(
                    "UPDATE object_versions SET created_at = ("
                    " SELECT MAX(v.created_at) FROM object_versions v"
                    " JOIN objects o ON o.object_id = v.object_id WHERE o.bucket = :b)"
                    " WHERE object_id IN (SELECT object_id FROM objects WHERE bucket = :b)"
                ),
                {"b": bucket},
            )
    finally:
        eng.dispose()
    lm = http.head(path).headers["Last-Modified"]
    r = http.get(path, headers={"Range": "bytes=10-19", "If-Range": lm})
    assert r.status_code == 200 and r.content == data


# --- what a 304 carries -------------------------------------------------------------------------

# RFC 9110 15.4.5: the fields a 200 would have had among Cache-Control, Content-Location, Date,
# ETag, Expires and Vary (Last-Modified allowed); no other representation metadata.
_NOT_IN_304 = (
    "content-type",
    "content-length",
    "content-range",
    "content-disposition",
    "accept-ranges",
    "x-edgestore-sha256",
    "x-edgestore-object-id",
    "x-edgestore-version",
)


def test_a_304_sends_validators_and_cache_control_only_on_every_route(http) -> None:
    """Objects by key, by id, and a finished upload's URL answer If-None-Match alike."""
    bucket = f"b{uuid.uuid4().hex[:12]}"
    data = random_bytes(1000, seed=409)
    meta = {"bucket": bucket, "key": "c", "filetype": "text/plain", "filename": "c.txt"}
    upload = tus_upload(http, data, metadata=meta)
    whole = http.get(f"/objects/{bucket}/c")
    etag, oid = whole.headers["ETag"], whole.headers["X-Edgestore-Object-Id"]
    assert whole.headers["Content-Disposition"] and whole.headers["Content-Type"] == "text/plain"
    for url in (f"/objects/{bucket}/c", f"/ids/{oid}", upload):
        # HEAD on an upload URL is tus's offset query, not a download.
        for method in ("GET",) if url == upload else ("GET", "HEAD"):
            for cond in (
                {"If-None-Match": etag},
                {"If-Modified-Since": whole.headers["Last-Modified"]},
            ):
                r = http.request(method, url, headers={**cond, "Range": "bytes=0-9,20-29"})
                assert r.status_code == 304, (url, method, cond, r.status_code)
                assert r.content == b""
                assert r.headers["ETag"] == etag
                assert r.headers["Last-Modified"] == whole.headers["Last-Modified"]
                assert r.headers["Cache-Control"] == whole.headers["Cache-Control"]
                assert "date" in r.headers
                sent = [name for name in _NOT_IN_304 if name in r.headers]
                assert not sent, (url, method, sent)
