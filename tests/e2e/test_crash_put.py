"""kill -9 during `edgestore put`: no row ever points at a missing shard, and gc cleans up."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from edgestore.config import load_settings
from edgestore.engine import Engine
from edgestore.maintenance import gc
from edgestore.metadata.chunks import reference_mismatches
from edgestore.metadata.schema import chunks, upload_parts, uploads
from tests.helpers import MiB, assert_no_partial_chunks, blocks_of, read_all

EDGESTORE = [sys.executable, "-m", "edgestore"]
LEASE = 2.0  # upload_lock_seconds, from the default 6 s: the test waits for it to lapse


def _count(engine: Engine, table: sa.Table) -> int:
    with engine.core.db.read() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()


@pytest.mark.slow
# 0: before the first checkpoint; 1: after one, with later chunks in flight
@pytest.mark.parametrize("kill_after_parts", [0, 1])
def test_kill_during_put_leaves_no_dangling_rows(
    tmp_path: Path, db_url: str, kill_after_parts: int
) -> None:
    source = tmp_path / "big.bin"
    with open(source, "wb") as f:
        for _ in range(160):
            f.write(os.urandom(MiB))
    env = {
        **os.environ,
        "EDGESTORE_HOME": str(tmp_path / "home"),
        "EDGESTORE_DATABASE_URL": db_url,
        "EDGESTORE_UPLOAD_LOCK_SECONDS": str(LEASE),
    }
    settings = load_settings(home=tmp_path / "home", database_url=db_url, upload_lock_seconds=LEASE)
    Engine.open(settings).close()
    proc = subprocess.Popen(
        [*EDGESTORE, "put", str(source), "--key", "big", "--quiet"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    with Engine.open(settings) as engine:
        deadline = time.monotonic() + 60
        while (
            _count(engine, uploads) == 0 or _count(engine, upload_parts) < kill_after_parts
        ) and proc.poll() is None:
            assert time.monotonic() < deadline, "put made no progress"
            time.sleep(0.005)
        if kill_after_parts == 0:
            time.sleep(0.1)  # mid-way through the first chunks, before any commit
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert proc.returncode == -signal.SIGKILL, "the put finished before it could be killed"

        assert_no_partial_chunks(engine)  # invariant 2, whatever the moment of death
        with engine.core.db.read() as conn:
            assert reference_mismatches(conn) == []
        assert engine.objects.list() == []  # the object never appeared

        # The dead put's write lease lapses by itself (until then it may be a put still
        # receiving bytes), and orphan files are taken only once older than any write in
        # progress could be: both as they are ten minutes after the crash.
        time.sleep(settings.upload_lock_seconds)
        old = time.time() - gc.ORPHAN_MIN_AGE - 1
        for backend in engine.core.dirs.backends.values():
            for blob in backend.list():
                os.utime(backend.root / blob.key, (old, old))
        report = gc.collect(engine, grace=0)
        assert report.uploads_expired == 1
        with engine.core.db.read() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(chunks)).scalar_one() == 0
        leftovers = [b.key for b in engine.core.dirs.backends.values() for b in b.list()]
        assert leftovers == []

        # the store is healthy: the same put now succeeds and reads back
        data = source.read_bytes()
        info = engine.put(blocks_of(data, MiB), key="big")
        assert read_all(engine, info) == data
    shutil.rmtree(tmp_path / "home")
