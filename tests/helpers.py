"""Small helpers shared by the tests."""

from __future__ import annotations

import base64
import hashlib
import random
import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from edgestore.engine import Engine
from edgestore.metadata.schema import chunks, shards
from edgestore.storage.datadirs import DataDirs

KiB = 1024
MiB = 1024 * 1024
# An id no upload or object has; fixed, not random: parametrized test ids must be the same
# in every pytest-xdist worker.
UNKNOWN_ID = "3f0b6a52-8d6e-4c1a-9e57-0c6f2b9d7a11"

# Small chunks keep multi-chunk tests fast; the default (1/4/8 MiB) has its own tests.
SMALL_CHUNKS: dict[str, Any] = {
    "chunk_min_size": 16 * KiB,
    "chunk_avg_size": 64 * KiB,
    "chunk_max_size": 256 * KiB,
    "inline_max_bytes": 1 * KiB,
    "small_chunk_max_bytes": 8 * KiB,
}


def random_bytes(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def blocks_of(data: bytes, size: int = 256 * KiB) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def read_all(eng: Engine, info: Any, start: int = 0, end: int | None = None) -> bytes:
    return b"".join(bytes(p) for p in eng.objects.read(info, start, end))


def assert_no_partial_chunks(engine: Engine) -> None:
    """Every chunk row has all its shards, and every shard file exists (invariant 2)."""
    with engine.core.db.read() as conn:
        rows = conn.execute(
            sa.select(chunks.c.chunk_id, chunks.c.layout, chunks.c.ec_k, chunks.c.ec_m)
        ).all()
        by_chunk: dict[str, list] = {}
        for s in conn.execute(sa.select(shards)).all():
            by_chunk.setdefault(s.chunk_id, []).append(s)
    for r in rows:
        refs = by_chunk.get(r.chunk_id, [])
        expected = 0 if r.layout == "inline" else r.ec_k + r.ec_m
        assert len(refs) == expected, r
        for s in refs:
            assert engine.core.dirs.backends[s.backend].stat(s.key) is not None, s


# --- tus over HTTP and a look into a running server's database ------------------------------
# Shared by tests/api, tests/e2e and tests/interop. The database is only read (and, for
# expiry tests, one column written) to check what the server really kept.

TUS = {"Tus-Resumable": "1.0.0"}
OFFSET_OCTET_STREAM = "application/offset+octet-stream"


def count_flushes(dirs: DataDirs, monkeypatch: Any) -> list[str]:
    """Record the name of each data dir whose flush runs (the real syncfs still runs)."""
    calls: list[str] = []
    for backend in dirs.backends.values():
        real = backend.flush

        def flush(real: Any = real, name: str = backend.name) -> None:
            calls.append(name)
            real()

        monkeypatch.setattr(backend, "flush", flush)
    return calls


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_file(path: Path, data: bytes) -> Path:
    """Write data to path and return the path (a file for a client to upload)."""
    path.write_bytes(data)
    return path


def tus_metadata(values: dict[str, str | None]) -> str:
    """An Upload-Metadata value: `key base64(value)` pairs (a key alone when the value is None)."""
    pairs = []
    for key, value in values.items():
        pairs.append(key if value is None else f"{key} {base64.b64encode(value.encode()).decode()}")
    return ",".join(pairs)


def patch_headers(offset: int, **extra: str) -> dict[str, str]:
    return {
        **TUS,
        "Upload-Offset": str(offset),
        "Content-Type": OFFSET_OCTET_STREAM,
        **extra,
    }


def upload_id_of(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def tus_create(
    client: httpx.Client,
    length: int | None,
    *,
    metadata: dict[str, str | None] | None = None,
    headers: dict[str, str] | None = None,
) -> str:
    """Create an upload (length None: deferred); return its absolute URL."""
    h = dict(TUS)
    if length is None:
        h["Upload-Defer-Length"] = "1"
    else:
        h["Upload-Length"] = str(length)
    if metadata:
        h["Upload-Metadata"] = tus_metadata(metadata)
    h.update(headers or {})
    r = client.post("/files/", headers=h)
    assert r.status_code == 201, r.text
    return r.headers["Location"]


def tus_head(client: httpx.Client, url: str) -> httpx.Response:
    r = client.head(url, headers=TUS)
    assert r.status_code == 200, (r.status_code, r.headers)
    return r


def tus_offset(client: httpx.Client, url: str) -> int:
    return int(tus_head(client, url).headers["Upload-Offset"])


def tus_patch(
    client: httpx.Client, url: str, offset: int, body: Any, **extra: str
) -> httpx.Response:
    return client.patch(url, content=body, headers=patch_headers(offset, **extra))


def tus_upload(
    client: httpx.Client,
    data: bytes,
    *,
    metadata: dict[str, str | None] | None = None,
    pieces: int = 1,
) -> str:
    """Create an upload and send `data` in `pieces` PATCHes; return the upload URL."""
    url = tus_create(client, len(data), metadata=metadata)
    step = max(1, -(-len(data) // pieces))
    for lo in range(0, len(data), step):
        r = tus_patch(client, url, lo, data[lo : lo + step])
        assert r.status_code == 204, r.text
    return url


class StoreProbe:
    """Direct read access to a running server's metadata database, for assertions.

    Plain SQL on table names (not the schema module), so it keeps working while the schema
    evolves; tables or columns a version lacks are skipped.
    """

    COUNTED = ("uploads", "upload_parts", "upload_tails", "objects", "object_versions", "manifests")
    PROGRESS = (
        "state",
        "length",
        "committed_offset",
        "tail_length",
        "tail_key",
        "tail_checksum",
        "next_seq",
        "hash_state",
        "version_id",
    )

    def __init__(self, database_url: str) -> None:
        self.engine = sa.create_engine(database_url)
        self._tables: set[str] | None = None

    def close(self) -> None:
        self.engine.dispose()

    @property
    def tables(self) -> set[str]:
        if self._tables is None:
            self._tables = set(sa.inspect(self.engine).get_table_names())
        return self._tables

    def _rows(self, sql: str, **params: Any) -> list[sa.Row]:
        with self.engine.connect() as conn:
            return list(conn.execute(sa.text(sql), params))

    def count(self, table: str) -> int:
        return self._rows(f"SELECT count(*) FROM {table}")[0][0]

    def counts(self) -> dict[str, int]:
        """Rows in every table that holds uploads, their bytes, or objects (one query)."""
        names = [n for n in self.COUNTED if n in self.tables]
        sql = "SELECT " + ", ".join(f"(SELECT count(*) FROM {n})" for n in names)
        return dict(zip(names, self._rows(sql)[0], strict=True))

    def chunk_count(self) -> int:
        return self.count("chunks")

    def upload(self, upload_id: str) -> dict[str, Any] | None:
        rows = self._rows("SELECT * FROM uploads WHERE upload_id = :u", u=upload_id)
        return dict(rows[0]._mapping) if rows else None

    def parts(self, upload_id: str) -> list[tuple[str, int, int]]:
        rows = self._rows(
            'SELECT chunk_id, "offset", length FROM upload_parts WHERE upload_id = :u ORDER BY seq',
            u=upload_id,
        )
        return [(r[0], r[1], r[2]) for r in rows]

    def tail(self, upload_id: str) -> bytes | None:
        """The staged tail's bytes where the database holds them (None where it does not)."""
        if "upload_tails" not in self.tables:
            return None
        rows = self._rows("SELECT data FROM upload_tails WHERE upload_id = :u", u=upload_id)
        return bytes(rows[0][0]) if rows else b""

    def upload_state(self, upload_id: str) -> tuple[Any, ...]:
        """Everything an append may change: the row's progress, its parts and its tail."""
        row = self.upload(upload_id)
        assert row is not None, f"upload {upload_id} has no row"
        progress = tuple((c, row[c]) for c in self.PROGRESS if c in row)
        return progress, tuple(self.parts(upload_id)), self.tail(upload_id)

    def set_expires_at(self, upload_id: str, expires_at: float) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                sa.text("UPDATE uploads SET expires_at = :t WHERE upload_id = :u"),
                {"t": expires_at, "u": upload_id},
            )

    def assert_durable_prefix(self, upload_id: str, data: bytes) -> int:
        """Every byte below the upload's durable offset is the client's: the parts' chunk ids
        are the SHA-256s of the matching slices of `data`, and the staged tail (where the
        database holds it) follows them. Returns the durable offset."""
        expect = 0
        for chunk_id, offset, length in self.parts(upload_id):
            assert offset == expect, f"part at {offset}, expected {expect}"
            assert chunk_id == sha256_hex(data[offset : offset + length]), f"part at {offset}"
            expect += length
        row = self.upload(upload_id)
        assert row is not None
        assert row["committed_offset"] == expect
        staged = data[expect : expect + row["tail_length"]]
        assert len(staged) == row["tail_length"], "the durable offset is past the data sent"
        tail = self.tail(upload_id)
        if tail is not None:  # staged in the database
            assert tail == staged, f"staged tail at {expect} differs"
        elif row.get("tail_checksum"):  # staged in files: their checksum must be these bytes'
            from edgestore.codec.hashing import shard_checksum

            assert row["tail_checksum"] == shard_checksum(staged), f"staged tail at {expect}"
        return expect + row["tail_length"]


@contextmanager
def store_unchanged(
    client: httpx.Client, probe: StoreProbe, url: str | None = None
) -> Iterator[None]:
    """Assert that the block changes no stored upload, byte or object (and, given an upload
    URL, that its HEAD and its durable rows are exactly as before)."""
    before_counts = probe.counts()
    before_upload = None
    before_head = None
    if url is not None:
        before_upload = probe.upload_state(upload_id_of(url))
        h = client.head(url, headers=TUS)
        before_head = (
            h.status_code,
            h.headers.get("Upload-Offset"),
            h.headers.get("Upload-Length"),
        )
    yield
    assert probe.counts() == before_counts, "a refused request changed the store"
    if url is not None:
        assert probe.upload_state(upload_id_of(url)) == before_upload, "upload changed"
        h = client.head(url, headers=TUS)
        after_head = (h.status_code, h.headers.get("Upload-Offset"), h.headers.get("Upload-Length"))
        assert after_head == before_head


class TricklingPatch:
    """A PATCH over a raw socket whose pace the test controls.

    `start()` sends the request head and the first bytes, then a thread sends `step` bytes
    every `interval` seconds (a live writer that keeps the upload's lock) but never the last
    byte, so the request cannot end on its own. Then: `finish()` sends the rest and returns
    the response; `silence()` stops sending but keeps the connection (a client gone quiet);
    `drop()` resets the connection (a client that vanished mid-PATCH).
    """

    def __init__(
        self,
        base_url: str,
        url: str,
        offset: int,
        data: bytes,
        *,
        first: int = 256 * KiB,
        step: int = 16 * KiB,
        interval: float = 0.1,
        headers: dict[str, str] | None = None,
    ) -> None:
        parsed = httpx.URL(base_url)
        self.host, self.port = parsed.host, parsed.port or 80
        self.path = httpx.URL(url).raw_path.decode()
        self.offset = offset
        self.data = data
        self.first = min(first, len(data) - 1)
        self.step = step
        self.interval = interval
        self.headers = {**patch_headers(offset), **(headers or {})}
        self.chunked = "Transfer-Encoding" in self.headers  # (chunked) the api/bodies.py way
        self.sent = 0
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> TricklingPatch:
        sock = socket.create_connection((self.host, self.port), timeout=30)
        head = [f"PATCH {self.path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        head += [f"{k}: {v}" for k, v in self.headers.items()]
        head += ([] if self.chunked else [f"Content-Length: {len(self.data)}"]) + ["", ""]
        sock.sendall("\r\n".join(head).encode("latin-1"))
        sock.sendall(self._framed(self.data[: self.first]))
        self.sent = self.first
        self._sock = sock
        self._thread = threading.Thread(target=self._trickle, daemon=True)
        self._thread.start()
        return self

    def _trickle(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                end = min(self.sent + self.step, len(self.data) - 1)
                if end <= self.sent or self._sock is None:
                    continue
                try:
                    self._sock.sendall(self._framed(self.data[self.sent : end]))
                except OSError:
                    return
                self.sent = end

    def _framed(self, piece: bytes) -> bytes:
        return b"%x\r\n%s\r\n" % (len(piece), piece) if self.chunked and piece else piece

    def silence(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def drop(self) -> None:
        """Reset the connection (RST, no FIN): the client vanished."""
        self.silence()
        with self._lock:
            if self._sock is not None:
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self._sock.close()
                self._sock = None

    def finish(self, timeout: float = 60) -> tuple[int, dict[str, str]]:
        """Send the rest of the body and read the response: (status, lower-cased headers)."""
        self.silence()
        assert self._sock is not None
        with self._lock:
            self._sock.settimeout(timeout)
            try:
                rest = self._framed(self.data[self.sent :]) + b"0\r\n\r\n" * self.chunked
                self._sock.sendall(rest)
                self.sent = len(self.data)
            except OSError:
                pass  # the server answered early and closed: read what it said
        return self.response(timeout)

    def response(self, timeout: float = 60) -> tuple[int, dict[str, str]]:
        assert self._sock is not None
        self._sock.settimeout(timeout)
        buf = b""
        while b"\r\n\r\n" not in buf:
            piece = self._sock.recv(65536)
            if not piece:
                raise ConnectionError(f"connection closed before a response: {buf!r}")
            buf += piece
        head = buf.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
        status = int(head[0].split(" ")[1])
        headers = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return status, headers

    def close(self) -> None:
        self.silence()
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


class OffsetWatcher:
    """Polls an upload's HEAD from a thread while something else writes to it: `highest` is
    the largest offset the server acknowledged (and so promised to keep)."""

    def __init__(self, upload_url: str, interval: float = 0.05) -> None:
        self.url = upload_url
        self.interval = interval
        self.highest = 0
        self.seen: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=2) as c:
            while not self._stop.wait(self.interval):
                try:
                    r = c.head(self.url, headers=TUS)
                except httpx.HTTPError:
                    continue
                if r.status_code == 200:
                    offset = int(r.headers["Upload-Offset"])
                    self.seen.append(offset)
                    self.highest = max(self.highest, offset)

    def __enter__(self) -> OffsetWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def paced(
    data: bytes,
    start: int,
    *,
    piece: int = 256 * KiB,
    delay: float = 0.0,
    stop_after: int | None = None,
    on_stop: Any = None,
    progress: list[int] | None = None,
) -> Iterator[bytes]:
    """data[start:] as a request body, `piece` bytes every `delay` seconds. Once `stop_after`
    bytes have been yielded, call `on_stop()` (e.g. kill the server) and end. `progress[0]`
    tracks the absolute offset sent so far."""
    sent = start
    for lo in range(start, len(data), piece):
        chunk = data[lo : lo + piece]
        yield chunk
        sent = lo + len(chunk)
        if progress is not None:
            progress[0] = sent
        if stop_after is not None and sent - start >= stop_after:
            if on_stop is not None:
                on_stop()
            return
        if delay:
            time.sleep(delay)


def patch_when_unlocked(
    client: httpx.Client, url: str, offset: int, body: Any, *, timeout: float
) -> tuple[httpx.Response, float]:
    """PATCH, retrying while the server answers 423 (a lease still held) for up to `timeout`
    seconds; `body` is bytes or a callable making a fresh body. Returns (response, seconds
    spent waiting for the lock)."""
    started = time.monotonic()
    while True:
        content = body() if callable(body) else body
        r = client.patch(url, content=content, headers=patch_headers(offset))
        waited = time.monotonic() - started
        if r.status_code != 423 or waited > timeout:
            return r, waited
        time.sleep(0.1)
