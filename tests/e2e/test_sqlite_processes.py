"""Several processes on one zero-config (SQLite) store, as users run it: `edgestore serve`,
and at the same time CLI commands on its --home, a cron'd `gc`, a second server.

Everything is a real process on real files: the server (tests/server.py), the CLI as a
subprocess, and a plain sqlite3 connection standing in for another process that holds the
database's write lock.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import (
    MiB,
    TricklingPatch,
    patch_headers,
    random_bytes,
    sha256_hex,
    tus_create,
    tus_upload,
    upload_id_of,
)
from tests.races import sqlite_write_lock_held
from tests.server import ServerProcess

EDGESTORE = [sys.executable, "-m", "edgestore"]
LOCK_WAIT = 1  # seconds: the busy timeout the store's URL sets (`?timeout=`), for these tests


def _url(db: Path, timeout: float | None = None) -> str:
    return f"sqlite:///{db}" + (f"?timeout={timeout:g}" if timeout is not None else "")


def _cli(home: Path, url: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "EDGESTORE_HOME": str(home), "EDGESTORE_DATABASE_URL": url}
    return subprocess.run(
        [*EDGESTORE, *args], env=env, capture_output=True, timeout=timeout, check=False
    )


@pytest.fixture
def lock_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A server whose database waits LOCK_WAIT s for the write lock (30 s by default), with
    authentication on (the product default: a key's use is recorded in the database)."""
    proc = ServerProcess(
        home=tmp_path / "home", database_url=_url(tmp_path / "meta.db", LOCK_WAIT), auth=True
    )
    try:
        yield proc.start()
    finally:
        proc.stop()


def test_a_held_write_lock_is_a_503_with_retry_after_and_reads_go_on(
    lock_server: ServerProcess, tmp_path: Path
) -> None:
    """A write waits for the lock a bounded time, then is a 503 the client can retry (with
    Retry-After, no server path); a download needs no write lock (WAL) and is served."""
    data = random_bytes(3 * MiB + 11, seed=1100)
    made = _cli(
        lock_server.home, lock_server.database_url, "keys", "create", "-n", "reader", "-s", "read"
    )
    assert made.returncode == 0, made.stderr.decode()
    reader = {"Authorization": f"Bearer {made.stdout.decode().split()[-1]}"}
    with lock_server.client() as c:
        url = tus_upload(c, data)  # never downloaded yet: its chunks' read times are unset
        with sqlite_write_lock_held(tmp_path / "meta.db"):
            # A key used for the first time: its use is recorded on the side, or skipped.
            got = c.get(url, headers=reader)
            assert got.status_code == 200, got.text
            assert sha256_hex(got.content) == sha256_hex(data)
            started = time.monotonic()
            r = c.post("/files/", headers={"Tus-Resumable": "1.0.0", "Upload-Length": "10"})
            assert r.status_code == 503, r.text
            assert time.monotonic() - started < LOCK_WAIT + 5
            assert int(r.headers["Retry-After"]) >= 1
            assert r.headers["Tus-Resumable"] == "1.0.0"
            assert r.json()["error"] == "storage_unavailable"
            assert "busy" in r.json()["message"] and str(tmp_path) not in r.json()["message"]
            assert c.get("/healthz").status_code == 200
            time.sleep(LOCK_WAIT + 0.5)  # the side writes, had they waited, gave up by now
        tus_create(c, 10)  # the lock released: writes go on
    log = lock_server.log()
    assert "Traceback" not in log and "could not record" not in log


def test_cli_commands_under_another_process_write_lock(
    lock_server: ServerProcess, tmp_path: Path
) -> None:
    """Reading commands work while another process writes (WAL); a writing one waits a
    bounded time, then says the database is busy (exit code 6), never a traceback."""
    home, url = lock_server.home, lock_server.database_url
    data = random_bytes(2 * MiB + 5, seed=1101)
    with lock_server.client() as c:
        uid = upload_id_of(tus_upload(c, data))
    src = tmp_path / "src.bin"
    src.write_bytes(random_bytes(MiB, seed=1102))
    with sqlite_write_lock_held(tmp_path / "meta.db"):
        for args in (("ls", "--json"), ("du", "--json"), ("stat", uid)):
            done = _cli(home, url, *args)
            assert done.returncode == 0, (args, done.stderr.decode())
        out = tmp_path / "back.bin"
        done = _cli(home, url, "get", uid, "-o", str(out), "--quiet")
        assert done.returncode == 0, done.stderr.decode()
        assert sha256_hex(out.read_bytes()) == sha256_hex(data)
        started = time.monotonic()
        done = _cli(home, url, "put", str(src), "--key", "blocked", "--quiet")
        assert time.monotonic() - started < LOCK_WAIT + 15
        err = done.stderr.decode()
        assert done.returncode == 6, err
        assert "busy" in err and "retry" in err and "Traceback" not in err
    done = _cli(home, url, "put", str(src), "--key", "blocked", "--quiet")
    assert done.returncode == 0, done.stderr.decode()


# --- a long upload to the server while CLI commands run on its home ------------------------


def _assert_consistent(url: str) -> None:
    """No row points at a missing chunk and every reference count is right."""
    from edgestore.metadata.chunks import reference_mismatches
    from edgestore.metadata.db import Database

    db = Database(url)
    try:
        with db.read() as conn:
            assert reference_mismatches(conn) == []
    finally:
        db.close()


def test_cli_commands_and_gc_beside_a_long_upload(tmp_path: Path) -> None:
    """A slow tus PATCH of tens of MiB (staged tails, chunks not yet checkpointed, the
    server's warm chunker) while `put` of another file, `ls`, `get`, `du` and `gc` (default
    grace, then none) run from a shell: every command succeeds, nothing waits long, and the
    upload loses nothing (leases in the database cover what only the server's memory knew)."""
    home, url = tmp_path / "home", _url(tmp_path / "meta.db")
    # No warm chunkers: each PATCH reads the staged tail back from its files.
    server = ServerProcess(
        home=home, database_url=url, env_extra={"EDGESTORE_UPLOAD_WARM_BYTES": "0"}
    ).start()
    try:
        data = random_bytes(40 * MiB + 3, seed=1110)
        other = tmp_path / "other.bin"
        other.write_bytes(random_bytes(24 * MiB + 1, seed=1111))
        with server.client() as c:
            upload = tus_create(c, len(data))
            # A first PATCH leaves a staged tail; the second one trickles (~5 MiB/s).
            first = 9 * MiB + 7
            r = c.patch(upload, content=data[:first], headers=patch_headers(0))
            assert r.status_code == 204, r.text
            # As if that PATCH was an hour ago: its tail's files are old enough for gc's
            # orphan sweep, which must still know them as the upload's.
            hour_ago = time.time() - 3600
            tails = [p for p in home.rglob("staging/*/*") if p.is_file()]
            assert tails, "the first PATCH staged no tail"
            for path in tails:
                os.utime(path, (hour_ago, hour_ago))
            done = _cli(home, url, "gc", "--grace", "0")  # the next PATCH reads that tail
            assert done.returncode == 0, done.stderr.decode()
            slow = TricklingPatch(
                server.url, upload, first, data[first:], first=MiB, step=128 * 1024, interval=0.025
            ).start()
            put = subprocess.Popen(
                [*EDGESTORE, "put", str(other), "--key", "other", "--quiet"],
                env={**os.environ, "EDGESTORE_HOME": str(home), "EDGESTORE_DATABASE_URL": url},
                stderr=subprocess.PIPE,
            )
            back = tmp_path / "back.bin"
            for args in (
                ("ls", "--json"),
                ("du", "--json"),
                ("gc",),
                ("gc", "--grace", "0"),
                ("get", upload_id_of(upload), "-o", "-"),  # not complete: not an object yet
            ):
                started = time.monotonic()
                done = _cli(home, url, *args)
                err = done.stderr.decode()
                assert "Traceback" not in err and "locked" not in err, (args, err)
                assert done.returncode == (3 if args[0] == "get" else 0), (args, err)
                assert time.monotonic() - started < 20, args
            assert put.wait(120) == 0, put.stderr.read().decode() if put.stderr else ""
            assert _cli(home, url, "get", "other", "-o", str(back), "--quiet").returncode == 0
            assert back.read_bytes() == other.read_bytes()
            assert slow.sent < len(data) - 1, "the PATCH ended before the commands ran"
            status, _ = slow.finish()
            assert status == 204
            got = c.get(upload)
            assert got.status_code == 200
            assert sha256_hex(got.content) == sha256_hex(data)
        _assert_consistent(url)
    finally:
        server.stop()
    assert "Traceback" not in server.log() and " 500 " not in server.log()


# --- a `put` killed mid-way while the server runs ------------------------------------------


def _unknown_files(home: Path, url: str) -> set[str]:
    """Files in the data dirs that no chunk row nor live staged tail names (dir/key)."""
    import sqlalchemy as sa

    eng = sa.create_engine(url)
    try:
        with eng.connect() as conn:
            known = {
                f"{b}/{k}" for b, k in conn.execute(sa.text("SELECT backend, key FROM shards"))
            }
            for key, backends in conn.execute(
                sa.text("SELECT tail_key, tail_backends FROM uploads WHERE tail_key IS NOT NULL")
            ):
                names = backends if isinstance(backends, list) else json.loads(backends)
                known |= {f"{b}/{key}" for b in names}
    finally:
        eng.dispose()
    root = home / "shards"
    found = {
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and not p.name.startswith(".edgestore")
    }
    return found - known


def _open_local_uploads(url: str) -> int:
    import sqlalchemy as sa

    eng = sa.create_engine(url)
    try:
        with eng.connect() as conn:
            q = "SELECT count(*) FROM uploads WHERE kind = 'local' AND state = 'open'"
            return conn.execute(sa.text(q)).scalar_one()
    finally:
        eng.dispose()


@pytest.mark.slow
def test_a_put_killed_mid_way_is_cleaned_up_by_the_servers_upkeep(tmp_path: Path) -> None:
    """kill -9 of `edgestore put` while the server runs: the server's upkeep expires the dead
    put's upload once its lease lapses, collects its chunks and sweeps its orphan files;
    an object stored and an upload paused on the server meanwhile lose nothing."""
    home, url = tmp_path / "home", _url(tmp_path / "meta.db")
    server = ServerProcess(
        home=home,
        database_url=url,
        env_extra={
            "EDGESTORE_GC_GRACE_SECONDS": "0",
            "EDGESTORE_MAINTENANCE_INTERVAL_SECONDS": "1",
            "EDGESTORE_ORPHAN_SWEEP_INTERVAL_SECONDS": "0",
        },
    ).start()
    try:
        kept = random_bytes(6 * MiB + 1, seed=1120)
        paused = random_bytes(12 * MiB + 9, seed=1121)
        with server.client() as c:
            kept_url = tus_upload(c, kept)
            paused_url = tus_create(c, len(paused))
            half = 7 * MiB + 3  # leaves a staged tail
            assert (
                c.patch(paused_url, content=paused[:half], headers=patch_headers(0)).status_code
                == 204
            )
        source = tmp_path / "big.bin"
        with open(source, "wb") as f:
            for i in range(120):
                f.write(random_bytes(MiB, seed=2000 + i))
        put = subprocess.Popen(
            [*EDGESTORE, "put", str(source), "--key", "doomed", "--quiet"],
            env={
                **os.environ,
                "EDGESTORE_HOME": str(home),
                "EDGESTORE_DATABASE_URL": url,
                "EDGESTORE_UPLOAD_LOCK_SECONDS": "2",  # its lease: lapses soon after the kill
            },
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while _open_local_uploads(url) == 0 or not _unknown_files(home, url):
            assert put.poll() is None and time.monotonic() < deadline, "caught no put mid-way"
            time.sleep(0.01)
        put.kill()
        put.wait(10)
        # Orphans are swept once older than any write in progress could be (10 min): as
        # if the crash were that long ago. The server's own files are aged too: they must stay.
        old = time.time() - 3600
        for path in (home / "shards").rglob("*"):
            if path.is_file():
                os.utime(path, (old, old))
        deadline = time.monotonic() + 60  # the lease (2 s), then a round's sweep
        while _open_local_uploads(url) or _unknown_files(home, url):
            assert time.monotonic() < deadline, (
                _open_local_uploads(url),
                sorted(_unknown_files(home, url))[:5],
            )
            time.sleep(0.5)
        with server.client() as c:
            assert sha256_hex(c.get(kept_url).content) == sha256_hex(kept)
            r = c.patch(paused_url, content=paused[half:], headers=patch_headers(half))
            assert r.status_code == 204, r.text
            assert sha256_hex(c.get(paused_url).content) == sha256_hex(paused)
            listed = c.get("/objects").json()
        assert "doomed" not in str(listed)
        _assert_consistent(url)
    finally:
        server.stop()
    assert "Traceback" not in server.log()


# --- two servers on one home ----------------------------------------------------------------


def test_two_servers_on_one_home_share_it(tmp_path: Path) -> None:
    """A second `serve` on another port of the same --home (by mistake or on purpose) is
    supported, as nodes sharing a database are (docs/operations.md): both serve, uploads
    sent to both at once, and moving between them, stay exact, and the upkeep's shared jobs
    are leased to one of them at a time."""
    import sqlalchemy as sa

    home, url = tmp_path / "home", _url(tmp_path / "meta.db")
    upkeep = {
        "EDGESTORE_MAINTENANCE_INTERVAL_SECONDS": "1",
        "EDGESTORE_SCRUB_BYTES_PER_ROUND": str(4 * MiB),
        "EDGESTORE_GC_GRACE_SECONDS": "0",
    }
    a = ServerProcess(home=home, database_url=url, env_extra=upkeep).start()
    b = ServerProcess(home=home, database_url=url, env_extra=upkeep).start()
    try:
        datas = [random_bytes((3 + i) * MiB + i, seed=1130 + i) for i in range(6)]
        results: dict[int, str] = {}

        def send(i: int) -> None:
            first, second = (a, b) if i % 2 else (b, a)
            with first.client() as c1, second.client() as c2:
                url_ = tus_create(c1, len(datas[i]))
                cut = len(datas[i]) // 3
                for client, lo, hi in ((c1, 0, cut), (c2, cut, len(datas[i]))):
                    r = client.patch(url_, content=datas[i][lo:hi], headers=patch_headers(lo))
                    assert r.status_code == 204, r.text
                results[i] = url_

        threads = [threading.Thread(target=send, args=(i,)) for i in range(len(datas))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(results) == list(range(len(datas)))
        owners = set()
        eng = sa.create_engine(url)
        try:
            for _ in range(6):  # a few upkeep rounds of both nodes
                time.sleep(1)
                with eng.connect() as conn:
                    q = "SELECT owner FROM job_cursors WHERE job = 'scrub'"
                    owners |= set(conn.execute(sa.text(q)).scalars())
        finally:
            eng.dispose()
        pids = {str(s.proc.pid) for s in (a, b) if s.proc is not None}
        owners.discard(None)
        assert len(owners) == 1 and owners.pop().split("/")[1] in pids  # one scrubs, on
        for server in (a, b):
            with server.client() as c:
                for i, url_ in results.items():
                    assert sha256_hex(c.get(url_).content) == sha256_hex(datas[i])
        _assert_consistent(url)
    finally:
        a.stop()
        b.stop()
    for server in (a, b):
        log = server.log()
        assert "Traceback" not in log and "locked" not in log and " 500 " not in log


# --- a CLI `rm` while the server streams the object -----------------------------------------


def _slow_get(server: ServerProcess, path: str) -> socket.socket:
    """A GET whose client reads slowly (a small receive buffer): the server is mid-stream."""
    s = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    return s


def _read_rest(s: socket.socket, received: bytes) -> bytes:
    with s:
        while piece := s.recv(1 << 16):
            received += piece
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return body


def test_cli_rm_and_gc_while_the_server_streams_the_object(tmp_path: Path) -> None:
    """`rm` from a shell while the server sends the object: the download completes exact
    (its chunks stay for the grace period); with `gc --grace 0` as well, the files go from
    under the reader, whose body then ends short, never with wrong bytes, and no chunk is
    queued for repair as if damaged."""
    home, url = tmp_path / "home", _url(tmp_path / "meta.db")
    server = ServerProcess(home=home, database_url=url).start()
    try:
        data = random_bytes(32 * MiB + 5, seed=1140)
        with server.client() as c:
            for key in ("first", "second"):
                upload = tus_create(c, len(data), metadata={"filename": key})
                assert c.patch(upload, content=data, headers=patch_headers(0)).status_code == 204
        for key, collect in (("first", False), ("second", True)):
            s = _slow_get(server, f"/objects/default/{key}")
            received = s.recv(1 << 16)
            done = _cli(home, url, "rm", key)
            assert done.returncode == 0, done.stderr.decode()
            if collect:
                done = _cli(home, url, "gc", "--grace", "0")
                assert done.returncode == 0, done.stderr.decode()
            body = _read_rest(s, received)
            if collect:
                assert len(body) < len(data) and data.startswith(body)
            else:
                assert sha256_hex(body) == sha256_hex(data)
        import sqlalchemy as sa

        eng = sa.create_engine(url)
        try:
            with eng.connect() as conn:
                queued = conn.execute(sa.text("SELECT count(*) FROM repair_queue")).scalar_one()
        finally:
            eng.dispose()
        assert queued == 0
        _assert_consistent(url)
    finally:
        server.stop()
    assert "Traceback" not in server.log()
