"""kill -9 during `edgestore gc`, `repair` and `rm`, at chosen statements and file calls:
every object still reads back byte-identical, no row points at a missing shard, refcounts
hold, and running the command again finishes the job."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from edgestore.config import Settings, load_settings
from edgestore.engine import Engine
from edgestore.maintenance import gc, repair
from edgestore.metadata.schema import chunks, repair_queue, shards
from tests.crashpoints import assert_store_consistent, child_env, run_killed
from tests.helpers import SMALL_CHUNKS, KiB, MiB, random_bytes, read_all
from tests.native import SMALL_ENV
from tests.shards import shard_paths, unlike_a_rebuild

EDGESTORE = [sys.executable, "-m", "edgestore"]


def _store(tmp_path: Path, db_url: str) -> tuple[Settings, dict[str, str]]:
    """A small-chunk store's settings, and the environment that names it to a child."""
    home = tmp_path / "home"
    env = {
        **os.environ,
        **SMALL_ENV,
        "EDGESTORE_HOME": str(home),
        "EDGESTORE_DATABASE_URL": db_url,
    }
    return load_settings(home=home, database_url=db_url, **SMALL_CHUNKS), env


def _edgestore(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*EDGESTORE, *args], env=child_env(env), capture_output=True, timeout=120)


def _age_files(engine: Engine) -> None:
    """Every file as old as ten minutes after a crash: orphans are taken only from then."""
    old = time.time() - gc.ORPHAN_MIN_AGE - 1
    for backend in engine.core.dirs.backends.values():
        for blob in backend.list():
            os.utime(backend.root / blob.key, (old, old))


def _files(engine: Engine) -> set[tuple[str, str]]:
    return {(b.name, blob.key) for b in engine.core.dirs.backends.values() for blob in b.list()}


def _indexed(engine: Engine) -> set[tuple[str, str]]:
    with engine.core.db.read() as conn:
        return {(r[0], r[1]) for r in conn.execute(sa.select(shards.c.backend, shards.c.key))}


def _reads_back(engine: Engine, expected: dict[str, bytes]) -> None:
    listed = {v.key: v for v in engine.objects.list()}
    assert set(listed) == set(expected)
    for key, data in expected.items():
        assert read_all(engine, listed[key]) == data, key


def _chunk_ids(engine: Engine) -> set[str]:
    with engine.core.db.read() as conn:
        return set(conn.execute(sa.select(chunks.c.chunk_id)).scalars())


def _finish_and_sweep(engine: Engine, expected: dict[str, bytes]) -> None:
    """A full gc after the crash leaves only what the objects reference, and no stray file."""
    _age_files(engine)
    gc.collect(engine, grace=0)
    assert_store_consistent(engine)
    _reads_back(engine, expected)
    with engine.core.db.read() as conn:
        assert conn.execute(sa.select(sa.func.count()).where(chunks.c.refcount <= 0)).scalar() == 0
    assert _files(engine) == _indexed(engine)


# --- gc -----------------------------------------------------------------------------------

DOOMED_SHARDS = -1  # "nth": replaced by the number of the doomed chunks' shard files (+ n)


@pytest.mark.slow
@pytest.mark.parametrize(
    "point",
    [
        {"file": "delete", "nth": 1},  # a chunk row deleted, none of its files yet
        {"file": "delete", "nth": 5},  # in the middle of one chunk's files
        {"file": "delete", "nth": 31, "when": "after"},  # some chunks gone, files and all
        # A batch's transaction, its shard rows deleted, its chunk rows not yet:
        {"sql": r"^DELETE FROM shards", "nth": 1, "when": "after"},
        {"file": "delete", "nth": DOOMED_SHARDS, "plus": 2},  # while sweeping orphans
    ],
    ids=["row-gone-files-not", "mid-files", "between-chunks", "mid-transaction", "orphans"],
)
def test_kill_during_gc(tmp_path: Path, db_url: str, point: dict[str, Any]) -> None:
    settings, env = _store(tmp_path, db_url)
    keep = random_bytes(MiB, seed=501)
    doomed = keep[: 256 * KiB] + random_bytes(MiB, seed=502)  # shares chunks with `keep`
    with Engine.open(settings) as engine:
        engine.put([keep], key="keep")
        engine.objects.delete(engine.put([doomed], key="doomed"))
        # Strays from an earlier crash (a write that never committed): the orphan sweep's.
        for path in shard_paths(engine, sorted(_chunk_ids(engine))[0])[:3]:
            cid, _generation, index = path.name.split(".")
            shutil.copyfile(path, path.with_name(f"{cid}.dead0000beef.{index}"))
        _age_files(engine)
        with engine.core.db.read() as conn:
            garbage = conn.execute(
                sa.select(sa.func.count())
                .select_from(shards.join(chunks, chunks.c.chunk_id == shards.c.chunk_id))
                .where(chunks.c.refcount <= 0)
            ).scalar_one()
        assert garbage > 40  # enough chunks that the kill lands among them
    if point["nth"] == DOOMED_SHARDS:
        point = {"file": "delete", "nth": garbage + point["plus"]}

    run_killed(point, ["gc", "--grace", "0"], env)

    with Engine.open(settings) as engine:
        assert_store_consistent(engine)
        _reads_back(engine, {"keep": keep})
        _finish_and_sweep(engine, {"keep": keep})


# --- repair -------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("how", "point"),
    [
        # In place (a chunk's lost shard written again, then its row changed):
        ("in place", {"file": "put", "nth": 1, "when": "after"}),  # written, not committed
        ("in place", {"sql": r"^INSERT INTO shards", "when": "after"}),  # mid-transaction
        ("in place", {"file": "put", "nth": 3}),  # two chunks done, the next being written
        # Stored again as a whole (the rebuilt shards would not match a kept one):
        ("stored again", {"file": "write", "nth": 3}),  # the first chunk's shards half written
        ("stored again", {"sql": r"^INSERT INTO shards", "when": "after"}),  # the swap
        ("stored again", {"file": "write", "nth": 13}),  # one chunk swapped, the next written
    ],
    ids=[
        "in-place-written",
        "in-place-mid-commit",
        "in-place-after-two",
        "new-shards-half-written",
        "mid-swap",
        "after-one-swap",
    ],
)
def test_kill_during_repair(tmp_path: Path, db_url: str, how: str, point: dict[str, Any]) -> None:
    settings, env = _store(tmp_path, db_url)
    data = random_bytes(MiB, seed=511)
    with Engine.open(settings) as engine:
        engine.put([data], key="damaged")
        for cid in _chunk_ids(engine):
            shard_paths(engine, cid)[0].unlink()  # one shard lost per chunk: readable, damaged
            if how == "stored again":
                unlike_a_rebuild(engine, cid, 8)
        assert repair.scrub(engine).chunks_damaged == len(_chunk_ids(engine)) > 3
        _age_files(engine)

    run_killed(point, ["repair"], env)

    with Engine.open(settings) as engine:
        assert_store_consistent(engine)
        _reads_back(engine, {"damaged": data})
    done = _edgestore(env, "repair")
    assert done.returncode == 0, done.stderr.decode()
    with Engine.open(settings) as engine:
        with engine.core.db.read() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(repair_queue)).scalar() == 0
        assert repair.scrub(engine).chunks_damaged == 0
        _finish_and_sweep(engine, {"damaged": data})


# --- rm -----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "point",
    [
        {"sql": r"^DELETE FROM manifests", "when": "after"},
        {"sql": r"^UPDATE chunks SET refcount", "when": "after"},
        {"sql": r"^DELETE FROM objects\b"},
    ],
    ids=["manifest-rows-deleted", "refs-dropped", "object-row"],
)
def test_kill_during_rm(tmp_path: Path, db_url: str, point: dict[str, Any]) -> None:
    """rm is one transaction: killed anywhere in it, the version is still there, whole."""
    settings, env = _store(tmp_path, db_url)
    keep = random_bytes(MiB, seed=521)
    big = keep[: 512 * KiB] + random_bytes(3 * MiB, seed=522)  # many chunks, some shared
    with Engine.open(settings) as engine:
        engine.put([keep], key="keep")
        engine.put([big], key="big")
        listed = {v.key: v for v in engine.objects.list()}
        assert engine.objects.chunk_count(listed["big"]) > 40

    run_killed(point, ["rm", "big"], env)

    with Engine.open(settings) as engine:
        assert_store_consistent(engine)
        _reads_back(engine, {"keep": keep, "big": big})
    done = _edgestore(env, "rm", "big")
    assert done.returncode == 0, done.stderr.decode()
    with Engine.open(settings) as engine:
        _finish_and_sweep(engine, {"keep": keep})
