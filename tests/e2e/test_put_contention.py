"""`edgestore put` against other processes on one SQLite store: a write lock held by another
process, a `gc --grace 0` while the put's stdin stalls. The put fails in bounded time or
stores exactly its bytes, never a version with missing parts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa

from edgestore.config import load_settings
from edgestore.engine import Engine
from edgestore.metadata.db import Database
from edgestore.metadata.schema import uploads
from tests.crashpoints import assert_store_consistent
from tests.helpers import MiB, random_bytes, read_all
from tests.races import sqlite_write_lock_held

EDGESTORE = [sys.executable, "-m", "edgestore"]
LOCK_WAIT = 5.0  # seconds: the busy timeout the store's URL sets (`?timeout=`)
LEASE = 2.0  # seconds: upload_lock_seconds, shortened from 6 s to keep the tests quick


def _env(home: Path, url: str, **extra: str) -> dict[str, str]:
    return {**os.environ, "EDGESTORE_HOME": str(home), "EDGESTORE_DATABASE_URL": url, **extra}


def _open_uploads(url: str) -> int:
    db = Database(url)
    try:
        with db.read() as conn:
            q = sa.select(sa.func.count()).select_from(uploads).where(uploads.c.state == "open")
            return conn.execute(q).scalar_one()
    finally:
        db.close()


@contextmanager
def _put_from_pipe(env: dict[str, str], key: str) -> Iterator[subprocess.Popen[bytes]]:
    """`put -` whose stdin the test writes, from once its upload row exists (killed after
    the block if still running: a failed test leaves no put waiting for its input)."""
    put = subprocess.Popen(
        [*EDGESTORE, "put", "-", "--key", key, "--quiet"],
        env=env,
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert put.stdin is not None
        put.stdin.write(random_bytes(MiB, seed=701))  # less than a chunk: nothing committed
        put.stdin.flush()
        deadline = time.monotonic() + 30
        while _open_uploads(env["EDGESTORE_DATABASE_URL"]) == 0:
            assert put.poll() is None and time.monotonic() < deadline, "the put never started"
            time.sleep(0.02)
        yield put
    finally:
        if put.poll() is None:
            put.kill()
            put.wait(10)


@pytest.mark.slow
def test_a_put_that_finds_the_database_busy_fails_without_waiting_twice(tmp_path: Path) -> None:
    """Its cleanup does not wait for the write lock all over again: the upload it leaves
    open is reclaimed by gc once its lease lapses."""
    home, db = tmp_path / "home", tmp_path / "meta.db"
    url = f"sqlite:///{db}?timeout={LOCK_WAIT:g}"
    # The default lease (6 s): its renewal, due after 2 s, would wait for the lock too.
    env = _env(home, url)
    with _put_from_pipe(env, "busy") as put, sqlite_write_lock_held(db):
        assert put.stdin is not None and put.stderr is not None
        # The end of its input: its last chunks' rows wait for the lock (at once, not one
        # after the other: few enough for the pipeline), then fail as busy.
        put.stdin.write(random_bytes(MiB, seed=702))
        started = time.monotonic()
        put.stdin.close()
        code = put.wait(60)
        waited = time.monotonic() - started
        err = put.stderr.read().decode()
    assert code == 6, err
    assert "busy" in err and "Traceback" not in err
    # The busy timeout once (the chunks' rows), not again for the cleanup (release the
    # lease, terminate the upload): that gives up within a second each.
    assert waited < 2 * LOCK_WAIT + 1, f"exited {waited:.1f} s after its input ended"
    # What the put left is gc's (its lease lapses as a crashed writer's does).
    time.sleep(6.5)
    done = subprocess.run(
        [*EDGESTORE, "gc", "--grace", "0"], env=env, capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stderr.decode()
    assert _open_uploads(url) == 0


@pytest.mark.slow
def test_a_put_whose_input_stalls_past_its_lease_survives_gc_grace_0(tmp_path: Path) -> None:
    """`put -` whose pipe goes quiet for longer than its lease: a `gc --grace 0` meanwhile
    must not take it for a dead put's (expire its upload, collect the chunks it stored but
    has not recorded yet). When the bytes come again, the put stores exactly them."""
    home, db = tmp_path / "home", tmp_path / "meta.db"
    url = f"sqlite:///{db}"
    env = _env(home, url, EDGESTORE_UPLOAD_LOCK_SECONDS=str(LEASE))
    with _put_from_pipe(env, "stalled") as put:
        assert put.stdin is not None and put.stderr is not None
        sent = [random_bytes(MiB, seed=701), random_bytes(12 * MiB, seed=731)]
        put.stdin.write(sent[1])  # some chunks stored, none recorded yet
        put.stdin.flush()
        time.sleep(LEASE * 2)  # the pipe stalls, past the lease
        done = subprocess.run(
            [*EDGESTORE, "gc", "--grace", "0", "--json"], env=env, capture_output=True, timeout=60
        )
        assert done.returncode == 0, done.stderr.decode()
        report = json.loads(done.stdout)
        assert report["uploads_expired"] == 0 and report["chunks_deleted"] == 0, report
        sent.append(random_bytes(8 * MiB, seed=732))
        put.stdin.write(sent[2])
        put.stdin.close()
        code = put.wait(60)
        assert code == 0, put.stderr.read().decode()
    settings = load_settings(home=home, database_url=url)
    with Engine.open(settings) as engine:
        (version,) = engine.objects.list()
        assert read_all(engine, version) == b"".join(sent)
        assert_store_consistent(engine)
