"""Several ranges in one GET (RFC 9110 14.6): a multipart/byteranges body streamed part by
part, checked against the source bytes with a hand parser, Python's email parser and curl;
the parsing rules (order, coalescing, the cap on parts) on their own.

Objects span many small chunks (16/64/256 KiB), so parts start, end and cross chunk
boundaries. The same answers come from /objects, /ids and a finished upload's /files URL.
"""

from __future__ import annotations

import email
import email.policy
import re
import subprocess
import uuid
from collections.abc import Sequence
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgestore.api.ranges import MAX_PARTS, MAX_RANGE_SPECS, parse_ranges
from edgestore.errors import InvalidRange
from tests.api.test_download import _lose_shards, _upload_unique
from tests.helpers import KiB, MiB, random_bytes, tus_upload
from tests.native import small_server as server  # noqa: F401  (the module's server fixture)

SIZE = 700 * KiB + 13
_VOLATILE = {"date", "x-request-id"}
Spec = tuple[int | None, int | None]


@pytest.fixture(scope="module")
def source(server) -> tuple[dict[str, str], bytes]:  # noqa: F811
    """One object of SIZE bytes: its three URLs (by key, by id, its upload's) and bytes."""
    bucket = f"b{uuid.uuid4().hex[:12]}"
    data = random_bytes(SIZE, seed=501)
    with server.client() as c:
        upload = tus_upload(
            c, data, metadata={"bucket": bucket, "key": "k", "filetype": "video/mp4"}
        )
        oid = c.head(f"/objects/{bucket}/k").headers["X-Edgestore-Object-Id"]
    urls = {"key": f"/objects/{bucket}/k", "id": f"/ids/{oid}", "upload": upload}
    return urls, data


def _header(spec: Sequence[Spec]) -> str:
    return "bytes=" + ",".join(
        f"{'' if a is None else a}-{'' if b is None else b}" for a, b in spec
    )


def _multipart(content_type: str, body: bytes) -> list[tuple[dict[str, str], bytes]]:
    """The parts of a multipart/byteranges body, read by hand against RFC 2046's framing:
    `--boundary CRLF headers CRLF CRLF data`, parts joined by `CRLF --boundary CRLF`, the
    last one closed by `CRLF --boundary-- CRLF`."""
    m = re.fullmatch(
        r"multipart/byteranges; boundary=([0-9A-Za-z'()+_,./:=?-]{1,70})", content_type
    )
    assert m is not None, content_type
    dash = b"--" + m.group(1).encode()
    assert body.startswith(dash + b"\r\n") and body.endswith(b"\r\n" + dash + b"--\r\n"), body[:200]
    parts = []
    for raw in body[len(dash) + 2 : -(len(dash) + 6)].split(b"\r\n" + dash + b"\r\n"):
        head, sep, data = raw.partition(b"\r\n\r\n")
        assert sep, raw[:200]
        fields = dict(line.split(": ", 1) for line in head.decode("ascii").split("\r\n"))
        parts.append(({k.lower(): v for k, v in fields.items()}, data))
    return parts


def _served(r: httpx.Response, data: bytes, media_type: str = "video/mp4") -> list[tuple[int, int]]:
    """The [start, end) ranges a 206 carries, in order, each checked against the source."""
    size = len(data)
    content_type = r.headers["Content-Type"]
    if content_type.startswith("multipart/byteranges"):
        assert "Content-Range" not in r.headers
        pieces = _multipart(content_type, r.content)
        assert len(pieces) >= 2  # one range is never sent as a multipart body (15.3.7.2)
    else:
        pieces = [({"content-range": r.headers["Content-Range"]}, r.content)]
    assert r.headers["Content-Length"] == str(len(r.content))
    ranges = []
    for fields, body in pieces:
        m = re.fullmatch(rf"bytes (\d+)-(\d+)/{size}", fields["content-range"])
        assert m is not None, fields
        start, end = int(m.group(1)), int(m.group(2)) + 1
        assert body == data[start:end], (start, end, len(body))
        if "content-type" in fields:
            assert fields["content-type"] == media_type
        ranges.append((start, end))
    return ranges


def _resolve(spec: list[Spec], size: int) -> list[tuple[int, int]]:
    """The satisfiable, non-empty ranges among `spec` (14.1.1), as [start, end)."""
    found = []
    for first, last in spec:
        if first is None:
            assert last is not None
            if last > 0 and size > 0:
                found.append((max(size - last, 0), size))
        elif first < size:
            found.append((first, size if last is None else min(last + 1, size)))
    return found


# --- against the real server --------------------------------------------------------------------

_position = st.integers(min_value=0, max_value=SIZE + 1000)
_spec = st.one_of(
    st.tuples(_position, _position).map(lambda t: (min(t), max(t))),
    st.tuples(_position, st.none()),
    st.tuples(st.none(), st.integers(min_value=0, max_value=SIZE + 1000)),
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(spec=st.lists(_spec, min_size=2, max_size=6))
def test_several_ranges_serve_each_requested_byte_once(http, source, spec) -> None:
    """Each part is the source's bytes at its Content-Range; parts never overlap and cover
    every satisfiable byte asked for; nothing else is sent but the short gaps between asked
    ranges that the server merged rather than start a new part; none satisfiable is a 416."""
    urls, data = source
    asked = _resolve(spec, SIZE)
    r = http.get(urls["key"], headers={"Range": _header(spec)})
    if not asked:
        assert r.status_code == 416 and r.headers["Content-Range"] == f"bytes */{SIZE}"
        return
    assert r.status_code == 206, (spec, r.status_code, r.text[:200])
    served = _served(r, data)
    wanted = set()
    for start, end in asked:
        wanted.update(range(start, end))
    got: list[int] = []
    for start, end in served:
        got.extend(range(start, end))
    assert len(got) == len(set(got)), "a byte was sent twice"
    assert wanted <= set(got)
    extra = sorted(set(got) - wanted)
    assert len(extra) <= 200 * len(asked)  # merged gaps are short: about a part's headers
    # Parts go out in the order their ranges were asked for (the first each one holds).
    firsts = [min(i for i, (a, b) in enumerate(asked) if start <= a < end) for start, end in served]
    assert firsts == sorted(firsts)


@pytest.mark.parametrize("route", ["key", "id", "upload"])
def test_two_ranges_are_a_multipart_body_on_every_route(http, source, route) -> None:
    """Python's email parser reads the body as the RFC's multipart/byteranges."""
    urls, data = source
    r = http.get(urls[route], headers={"Range": "bytes=0-99,300000-300099"})
    assert r.status_code == 206
    assert _served(r, data) == [(0, 100), (300000, 300100)]
    message = email.message_from_bytes(
        b"Content-Type: " + r.headers["Content-Type"].encode() + b"\r\n\r\n" + r.content,
        policy=email.policy.HTTP,
    )
    assert message.get_content_type() == "multipart/byteranges"
    parts = list(message.iter_parts())
    assert [p["Content-Range"] for p in parts] == [
        f"bytes 0-99/{SIZE}",
        f"bytes 300000-300099/{SIZE}",
    ]
    assert [p.get_content_type() for p in parts] == ["video/mp4", "video/mp4"]
    # Every header but the body's own is the single-range answer's.
    single = http.get(urls[route], headers={"Range": "bytes=0-99"})
    own = {"content-type", "content-length", "content-range"}
    assert {k: v for k, v in r.headers.items() if k not in own | _VOLATILE} == {
        k: v for k, v in single.headers.items() if k not in own | _VOLATILE
    }


def test_curl_reads_two_ranges(server, source, tmp_path: Path) -> None:  # noqa: F811
    urls, data = source
    head, body = tmp_path / "head", tmp_path / "body"
    url = f"http://127.0.0.1:{server.port}{urls['key']}"
    subprocess.run(
        ["curl", "-sSf", "-r", "0-99,1000-1099", "-D", str(head), "-o", str(body), url],
        check=True,
        timeout=60,
    )
    lines = head.read_bytes().decode("ascii").split("\r\n")
    assert lines[0] == "HTTP/1.1 206 Partial Content"
    fields = {k.lower(): v for k, v in (x.split(": ", 1) for x in lines[1:] if x)}
    assert fields["content-length"] == str(body.stat().st_size)
    parts = _multipart(fields["content-type"], body.read_bytes())
    assert [(f["content-range"], d) for f, d in parts] == [
        (f"bytes 0-99/{SIZE}", data[:100]),
        (f"bytes 1000-1099/{SIZE}", data[1000:1100]),
    ]


def test_overlapping_ranges_are_merged_never_amplified(http, source) -> None:
    """`bytes=0-,0-,…` asks for the object many times over: one copy is sent."""
    urls, data = source
    r = http.get(urls["key"], headers={"Range": "bytes=" + ",".join(["0-"] * 50)})
    assert r.status_code == 206 and r.headers["Content-Range"] == f"bytes 0-{SIZE - 1}/{SIZE}"
    assert r.content == data


def test_too_many_separate_ranges_are_416(http, source) -> None:
    """More parts than MAX_PARTS (each may cost a whole chunk's decoding for a few bytes
    sent), or more range-specs than MAX_RANGE_SPECS, are refused as RFC 9110 15.5.17
    allows, saying why; MAX_PARTS are served."""
    urls, data = source
    far = [(i * 10_000, i * 10_000 + 9) for i in range(MAX_PARTS + 1)]
    r = http.get(urls["key"], headers={"Range": _header(far)})
    assert r.status_code == 416 and r.headers["Content-Range"] == f"bytes */{SIZE}"
    assert r.json()["error"] == "invalid_range" and str(MAX_PARTS) in r.json()["message"]
    r = http.get(
        urls["key"], headers={"Range": "bytes=" + ",".join(["0-0"] * (MAX_RANGE_SPECS + 1))}
    )
    assert r.status_code == 416 and str(MAX_RANGE_SPECS) in r.json()["message"]
    r = http.get(urls["key"], headers={"Range": _header(far[:MAX_PARTS])})
    assert r.status_code == 206 and _served(r, data) == [(a, b + 1) for a, b in far[:MAX_PARTS]]


def test_unsatisfiable_ranges_are_dropped(http, source) -> None:
    urls, data = source
    r = http.get(urls["key"], headers={"Range": f"bytes={SIZE}-,5-9,-0,{SIZE + 9}-{SIZE + 20}"})
    assert r.status_code == 206 and r.headers["Content-Range"] == f"bytes 5-9/{SIZE}"
    assert r.content == data[5:10]
    r = http.get(urls["key"], headers={"Range": f"bytes={SIZE}-,-0"})
    assert r.status_code == 416 and r.headers["Content-Range"] == f"bytes */{SIZE}"


def test_a_stale_if_range_sends_the_whole_object_for_several_ranges(http, source) -> None:
    urls, data = source
    etag = http.head(urls["key"]).headers["ETag"]
    r = http.get(urls["key"], headers={"Range": "bytes=0-9,100-109", "If-Range": '"old"'})
    assert r.status_code == 200 and r.content == data
    r = http.get(urls["key"], headers={"Range": "bytes=0-9,100-109", "If-Range": etag})
    assert r.status_code == 206 and _served(r, data) == [(0, 10), (100, 110)]


def test_a_chunk_that_cannot_be_rebuilt_fails_the_part_that_needs_it(server) -> None:  # noqa: F811
    """In the first part, before the status: a 500 the client can read. In a later part,
    after the 206 and the first parts: the connection ends short of Content-Length."""
    path, data = _upload_unique(server, 2 * MiB, seed=502)
    cid = _lose_shards(server, path, 0, 9)  # the first chunk: every shard
    with server.client() as c:
        r = c.get(path, headers={"Range": "bytes=0-9,1500000-1500009"})
        assert r.status_code == 500 and r.json()["error"] == "chunk_unreadable"
        assert cid in r.json()["message"]
        with c.stream("GET", path, headers={"Range": "bytes=1500000-1500009,0-9"}) as r:
            assert r.status_code == 206
            with pytest.raises(httpx.RemoteProtocolError):
                r.read()
        r = c.get(path, headers={"Range": "bytes=1500000-1500009,1600000-1600009"})
        assert r.status_code == 206 and _served(r, data, "application/octet-stream") == [
            (1500000, 1500010),
            (1600000, 1600010),
        ]


@pytest.mark.parametrize("spec", ["bytes=0-9", "bytes=0-9,100-109", f"bytes={SIZE}-"])
def test_head_ignores_range(http, source, spec: str) -> None:
    """RFC 9110 14.2: range handling is defined for GET only; a server MUST ignore Range on
    other methods. HEAD answers as a GET without Range: 200, the whole length."""
    urls, _data = source
    h = http.head(urls["key"], headers={"Range": spec})
    whole = http.get(urls["key"])
    assert h.status_code == 200 and h.content == b""
    assert {k: v for k, v in h.headers.items() if k not in _VOLATILE} == {
        k: v for k, v in whole.headers.items() if k not in _VOLATILE
    }


# --- the parsing rules on their own ----------------------------------------------------------


def test_parts_keep_the_order_asked_and_merge_overlapping_or_adjacent_ranges() -> None:
    assert parse_ranges("bytes=500-599,0-99", 1000) == [(500, 600), (0, 100)]
    assert parse_ranges("bytes=0-99,100-199", 1000) == [(0, 200)]
    assert parse_ranges("bytes=500-599,0-99,50-549", 1000) == [(0, 600)]
    assert parse_ranges("bytes=900-,0-9,-50", 1000) == [(900, 1000), (0, 10)]
    assert parse_ranges("bytes=0-9,20-29", 1000) == [(0, 30)]  # a gap shorter than a part's headers
    assert parse_ranges("bytes=0-9,900-909", 1000) == [(0, 10), (900, 910)]


@pytest.mark.parametrize(
    "header",
    [
        None,
        "items=0-1",
        "bytes=",
        "bytes=,",
        "bytes=0-9,x",
        "bytes=0-9,9-0",
        "bytes=-",
        "bytes=0-9,-",
    ],
)
def test_an_unusable_range_header_is_ignored(header: str | None) -> None:
    """RFC 9110 14.2: an invalid ranges-specifier (any of its range-specs invalid) may be
    ignored: the whole object is sent."""
    assert parse_ranges(header, 1000) is None


def test_a_suffix_range_of_an_empty_object_is_the_whole_empty_object() -> None:
    assert parse_ranges("bytes=-5,0-9", 0) is None
    with pytest.raises(InvalidRange):
        parse_ranges("bytes=0-9,1-", 0)


def test_too_many_parts_raise_invalid_range_with_the_size() -> None:
    header = "bytes=" + ",".join(f"{i * 1000}-{i * 1000}" for i in range(MAX_PARTS + 1))
    with pytest.raises(InvalidRange) as caught:
        parse_ranges(header, 10**9)
    assert caught.value.size == 10**9
    # The same ranges merged into one part by an overlap are no longer too many.
    assert parse_ranges(header + ",0-", 10**9) == [(0, 10**9)]


def test_tiny_ranges_a_byte_apart_are_one_part_and_too_many_specs_are_416() -> None:
    """However they would merge, more than MAX_RANGE_SPECS are refused unread."""
    spaced = [f"{i}-{i}" for i in range(0, 2 * MAX_RANGE_SPECS, 2)]
    assert parse_ranges("bytes=" + ",".join(spaced), MiB) == [(0, 2 * MAX_RANGE_SPECS - 1)]
    with pytest.raises(InvalidRange) as caught:
        parse_ranges("bytes=" + ",".join(["0-0"] * (MAX_RANGE_SPECS + 1)), MiB)
    assert str(MAX_RANGE_SPECS) in caught.value.message and caught.value.size == MiB
