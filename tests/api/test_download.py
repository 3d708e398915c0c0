"""Downloads over a real server with small chunks: any single Range against the source bytes,
HEAD answering GET's headers without Range, and what a client sees when a chunk cannot be
rebuilt. Several ranges in one request: test_ranges.py.

Objects span many chunks (16/64/256 KiB), so ranges start, end and cross chunk boundaries.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import KiB, MiB, random_bytes, tus_upload
from tests.native import DB_PARAMS, small_chunk_server
from tests.server import ServerProcess

SIZES = (0, 1, 1000, 16 * KiB - 1, 300 * KiB + 7, 2 * MiB + 5)
_VOLATILE = {"date", "x-request-id"}


@pytest.fixture(scope="module", params=DB_PARAMS)
def small_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    with small_chunk_server(request, tmp_path_factory) as proc:
        yield proc


@pytest.fixture(scope="module")
def objects(small_server: ServerProcess) -> dict[int, tuple[str, bytes]]:
    """One object per size in SIZES: its path and bytes."""
    bucket = f"b{uuid.uuid4().hex[:12]}"
    found = {}
    with small_server.client() as c:
        for size in SIZES:
            data = random_bytes(size, seed=size)
            tus_upload(c, data, metadata={"bucket": bucket, "key": f"s{size}"})
            found[size] = (f"/objects/{bucket}/s{size}", data)
    return found


def _expected(spec: tuple[int | None, int | None], size: int) -> tuple[int, int, int]:
    """(status, start, end) the documented rules give for this range-spec."""
    first, last = spec
    if first is None:
        assert last is not None
        if last == 0:
            return 416, 0, 0
        if size == 0:
            return 200, 0, 0
        return 206, max(size - last, 0), size
    if last is not None and last < first:
        return 200, 0, size  # an invalid range-spec is ignored
    if first >= size:
        return 416, 0, 0
    return 206, first, size if last is None else min(last + 1, size)


_position = st.integers(min_value=0, max_value=3 * MiB)
_range_spec = st.one_of(
    st.tuples(_position, _position),
    st.tuples(_position, st.none()),
    st.tuples(st.none(), _position),
)


def _header(spec: tuple[int | None, int | None]) -> str:
    first, last = spec
    return f"bytes={'' if first is None else first}-{'' if last is None else last}"


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(size=st.sampled_from(SIZES), spec=_range_spec)
def test_any_range_serves_the_source_bytes(small_server, objects, size, spec) -> None:
    path, data = objects[size]
    header = _header(spec)
    status, start, end = _expected(spec, size)
    with small_server.client() as c:
        r = c.get(path, headers={"Range": header})
        h = c.head(path, headers={"Range": header})
        whole = c.get(path)
    # HEAD ignores Range (RFC 9110 14.2: range handling is defined for GET only) and answers
    # exactly a GET without it, without the body.
    assert h.status_code == 200 and h.content == b""
    assert {k: v for k, v in h.headers.items() if k not in _VOLATILE} == {
        k: v for k, v in whole.headers.items() if k not in _VOLATILE
    }
    assert r.status_code == status, (header, r.status_code, r.text[:200])
    if status == 416:
        assert r.headers["Content-Range"] == f"bytes */{size}"
    else:
        assert r.content == data[start:end]
        assert r.headers["Content-Length"] == str(end - start)
        if status == 206:
            assert r.headers["Content-Range"] == f"bytes {start}-{end - 1}/{size}"
        else:
            assert "Content-Range" not in r.headers


@pytest.mark.parametrize("spec", ["bytes=" + "9" * 5000 + "-", "bytes=0-" + "9" * 5000])
def test_a_range_with_thousands_of_digits_is_not_a_500(small_server, objects, spec) -> None:
    """Python refuses int() of more than 4300 digits: such a position must still be read as
    a (huge) number, not answered with an internal error."""
    path, data = objects[1000]
    with small_server.client() as c:
        r = c.get(path, headers={"Range": spec})
    if spec.endswith("-"):
        assert r.status_code == 416 and r.headers["Content-Range"] == "bytes */1000"
    else:
        assert r.status_code == 206 and r.content == data


def test_a_suffix_range_with_thousands_of_digits_is_the_whole_object(small_server, objects) -> None:
    path, data = objects[1000]
    with small_server.client() as c:
        r = c.get(path, headers={"Range": "bytes=-" + "9" * 5000})
    assert r.status_code == 206 and r.content == data


def test_an_uploaded_page_is_neither_sniffed_nor_run(small_server) -> None:
    """An uploader's HTML or SVG opened from this origin must not run its scripts here."""
    bucket = f"b{uuid.uuid4().hex[:12]}"
    page = b"<html><script>alert(document.cookie)</script></html>"
    with small_server.client() as c:
        tus_upload(c, page, metadata={"bucket": bucket, "key": "p", "filetype": "text/html"})
        for r in (c.get(f"/objects/{bucket}/p"), c.head(f"/objects/{bucket}/p")):
            assert r.status_code == 200 and r.headers["content-type"] == "text/html"
            assert r.headers["x-content-type-options"] == "nosniff"
            assert "sandbox" in r.headers["content-security-policy"]


# --- chunks that cannot be rebuilt -------------------------------------------------------------


def _lose_shards(server: ServerProcess, path: str, seq: int, count: int) -> str:
    """Delete `count` shard files of entry `seq` of the object at `path`; its chunk id."""
    bucket, key = path.removeprefix("/objects/").split("/", 1)
    eng = sa.create_engine(server.database_url)
    try:
        with eng.connect() as conn:
            cid, layout = conn.execute(
                sa.text(
                    "SELECT m.chunk_id, c.layout FROM manifests m"
                    " JOIN chunks c ON c.chunk_id = m.chunk_id"
                    " JOIN object_versions v ON v.version_id = m.version_id"
                    " JOIN objects o ON o.object_id = v.object_id"
                    " WHERE o.bucket = :b AND o.key = :k AND m.seq = :s"
                ),
                {"b": bucket, "k": key, "s": seq},
            ).one()
            assert layout in ("ec", "replica"), layout
            files = conn.execute(
                sa.text("SELECT backend, key FROM shards WHERE chunk_id = :c ORDER BY shard_index"),
                {"c": cid},
            ).all()
    finally:
        eng.dispose()
    for backend, key in files[:count]:
        (Path(server.home) / "shards" / backend / key).unlink()
    return str(cid)


def _upload_unique(server: ServerProcess, size: int, seed: int) -> tuple[str, bytes]:
    bucket = f"b{uuid.uuid4().hex[:12]}"
    data = random_bytes(size, seed=seed)
    with server.client() as c:
        tus_upload(c, data, metadata={"bucket": bucket, "key": "lost"})
    return f"/objects/{bucket}/lost", data


def test_an_unreadable_first_chunk_is_a_500_naming_object_and_chunk(small_server) -> None:
    """Nothing has been sent yet when the first chunk fails: the client gets an error it can
    read (status 500, the object and the chunk named), not a 200 whose body breaks off."""
    path, _data = _upload_unique(small_server, 200 * KiB, seed=301)  # one chunk
    cid = _lose_shards(small_server, path, 0, 9)
    with small_server.client() as c:
        r = c.get(path)
    assert r.status_code == 500, (r.status_code, r.headers)
    body = r.json()
    assert body["error"] == "chunk_unreadable"
    assert cid in body["message"] and path.split("/")[2] in body["message"]


def test_a_chunk_lost_mid_stream_aborts_the_connection(small_server) -> None:
    """After the 200 and some bytes, a chunk that cannot be rebuilt ends the connection
    short of Content-Length: the client cannot mistake what arrived for the object."""
    path, data = _upload_unique(small_server, 2 * MiB, seed=302)
    _lose_shards(small_server, path, 5, 9)
    with socket.create_connection(("127.0.0.1", small_server.port), timeout=30) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nX-Request-Id: cut-302\r\n\r\n".encode())
        received = b""
        while chunk := s.recv(1 << 16):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert f"content-length: {len(data)}".encode() in head.lower()
    assert 0 < len(body) < len(data)
    assert data.startswith(body)  # what was sent is right; only the rest is missing
    with small_server.client() as c, pytest.raises(httpx.RemoteProtocolError):
        c.get(path)
    # The server's record of why it cut the body is found by the id the client saw.
    errors = [x for x in small_server.log().splitlines() if " ERROR " in x and "cut-302" in x]
    assert errors, "the broken-off download's error is not logged under its request id"


def test_downloads_their_clients_abandon_end_quietly(server: ServerProcess) -> None:
    """A client gone mid-body left the body's generators to the garbage collector, which
    closed two of them at once: an ERROR with a traceback ("aclose(): asynchronous generator
    is already running") for most abandoned downloads, and their read-ahead given back
    whenever the collector came by. Closed in order when the response ends, they log nothing."""
    path, _data = _upload_unique(server, 24 * MiB, seed=304)  # chunks of the default size
    logged = len(server.log())
    for i in range(12):
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            s.recv((10, 64 * KiB, MiB)[i % 3])
            time.sleep(0.2)  # the server waits to send: the body is between two pieces
            if i % 2:  # a reset, not a FIN
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with server.client() as c:
        assert c.get(path, headers={"Range": "bytes=0-9"}).status_code == 206
        deadline = time.monotonic() + 10
        while "edgestore_downloads_active 0.0" not in c.get("/metrics").text:
            assert time.monotonic() < deadline, "abandoned downloads still hold their slots"
            time.sleep(0.05)
    time.sleep(0.5)  # a finalizer's task would have run by now
    log = server.log()[logged:]
    assert "Traceback" not in log and "already running" not in log, log[-3000:]


def test_reading_around_a_lost_shard_is_logged_under_the_request_id(small_server) -> None:
    """Chunks decode on the engine's pool threads (read-ahead), which did not carry the
    request's context: the warning an operator gets for a download that read around a bad
    shard was logged under "-", not the id the client saw in X-Request-ID."""
    path, data = _upload_unique(small_server, 200 * KiB, seed=303)  # one chunk
    cid = _lose_shards(small_server, path, 0, 1)
    with small_server.client() as c:
        r = c.get(path, headers={"X-Request-Id": "read-around-303"})
    assert r.status_code == 200 and r.content == data
    deadline = time.monotonic() + 5
    while not (lines := [x for x in small_server.log().splitlines() if f"chunk {cid}" in x]):
        assert time.monotonic() < deadline, "no read-around warning in the log"
        time.sleep(0.05)
    assert all("[read-around-303]" in line for line in lines), lines


# --- how many at once ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_slot_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp("two-slots")
    proc = ServerProcess(
        home=base / "home",
        database_url=f"sqlite:///{base / 'meta.db'}",
        env_extra={"EDGESTORE_MAX_CONCURRENT_DOWNLOADS": "2"},
    ).start()
    try:
        yield proc
    finally:
        proc.stop()


def test_downloads_past_the_cap_wait_briefly_then_get_503(two_slot_server) -> None:
    """Each download holds its current chunk (up to 8 MiB) while its client reads, beyond the
    read-ahead budget: 1000 slow readers held 8 GB. Past max_concurrent_downloads, one waits
    a moment for a slot, then gets 503 with Retry-After; a slot freed meanwhile is its."""
    server = two_slot_server
    path, data = _upload_unique(server, 24 * MiB, seed=304)  # more than sockets buffer
    with server.client() as a, server.client() as b, server.client() as c:
        with a.stream("GET", path) as one, b.stream("GET", path) as two:
            assert one.status_code == two.status_code == 200  # both sending, neither read
            started = time.monotonic()
            r = c.get(path)
            assert r.status_code == 503, r.status_code
            assert r.json()["error"] == "server_busy" and r.headers["Retry-After"] == "1"
            assert time.monotonic() - started >= 0.9  # it waited for a slot first
            assert c.head(path).status_code == 200  # no body, no slot
            assert c.get(path, headers={"If-None-Match": one.headers["ETag"]}).status_code == 304
            threading.Timer(0.2, one.close).start()  # that client goes away while c waits
            r = c.get(path, headers={"Range": "bytes=0-99"})
            assert r.status_code == 206 and r.content == data[:100]
            assert two.read() == data  # a download read to its end frees its slot too
        metrics = c.get("/metrics").text
        assert "edgestore_downloads_refused_total 1.0" in metrics
        for _ in range(3):  # and none leaked: two at once still go
            with a.stream("GET", path) as one, b.stream("GET", path) as two:
                assert one.status_code == two.status_code == 200


# --- many ranges at once, and a version deleted mid-download ------------------------------------


def _segmented(server: ServerProcess, path: str, size: int, parts: int) -> tuple[bytes, int]:
    """Download `path` as a segmented downloader does (aria2c -x 8): `parts` ranges at once,
    each on its own connection; a 503 is retried after its Retry-After. The bytes put
    together, and how many 503s were met."""
    bounds = [(i * size // parts, (i + 1) * size // parts - 1) for i in range(parts)]
    got: dict[int, bytes] = {}
    refused: list[int] = []
    errors: list[str] = []

    def fetch(i: int) -> None:
        first, last = bounds[i]
        with server.client() as c:
            for _ in range(20):
                r = c.get(path, headers={"Range": f"bytes={first}-{last}"})
                if r.status_code == 503:
                    if r.headers.get("Retry-After") != "1":
                        errors.append(f"503 without Retry-After: 1: {r.headers}")
                    refused.append(i)
                    time.sleep(int(r.headers.get("Retry-After", "1")))
                    continue
                if r.status_code != 206:
                    errors.append(f"range {i}: {r.status_code}")
                elif r.headers["Content-Range"] != f"bytes {first}-{last}/{size}":
                    errors.append(f"range {i}: {r.headers['Content-Range']}")
                got[i] = r.content
                return

    threads = [threading.Thread(target=fetch, args=(i,)) for i in range(parts)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return b"".join(got[i] for i in range(parts)), len(refused)


def test_eight_ranges_at_once_rebuild_the_object(small_server, objects) -> None:
    path, data = objects[2 * MiB + 5]
    whole, refused = _segmented(small_server, path, len(data), 8)
    assert whole == data and refused == 0


def test_eight_ranges_past_the_cap_get_503_retry_after_and_rebuild_the_object(
    two_slot_server,
) -> None:
    """Both slots held by slow readers: the eight ranges wait a second each and are answered
    503 with Retry-After: 1 (never another error, never wrong bytes); once the readers go,
    the retries get their bytes."""
    server = two_slot_server
    slow, _ = _upload_unique(server, 24 * MiB, seed=305)  # more than sockets buffer
    path, data = _upload_unique(server, 2 * MiB, seed=306)
    a, b = server.client(), server.client()
    with a, b, a.stream("GET", slow) as one, b.stream("GET", slow) as two:
        assert one.status_code == two.status_code == 200
        threading.Timer(1.5, lambda: (one.close(), two.close())).start()
        whole, refused = _segmented(server, path, len(data), 8)
    assert whole == data
    assert refused >= 8  # every range met the cap at least once


def test_a_version_deleted_mid_download_ends_the_body_short_not_wrong(small_server) -> None:
    """Its manifest goes with the DELETE: the bytes already sent are right, then the
    connection ends short of Content-Length (the client sees an incomplete body, never
    another version's bytes or a padded one), and the log says why."""
    path, data = _upload_unique(small_server, 48 * MiB, seed=307)  # manifest pages: > 1
    with socket.create_connection(("127.0.0.1", small_server.port), timeout=30) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * KiB)
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nX-Request-Id: del-306\r\n\r\n".encode())
        received = s.recv(1 << 16)
        with small_server.client() as c:
            assert c.delete(path).status_code == 204
        while chunk := s.recv(1 << 16):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert f"content-length: {len(data)}".encode() in head.lower()
    assert 0 < len(body) < len(data)
    assert data.startswith(body)
    deadline = time.monotonic() + 5
    while "deleted while it was being read" not in small_server.log():
        assert time.monotonic() < deadline, "the cut-short download is not logged"
        time.sleep(0.05)
