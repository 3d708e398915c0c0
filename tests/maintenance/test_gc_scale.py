"""The orphan sweep stays cheap on a store of millions of shard files: one fan-out dir in
memory at a time, and every lookup of known shard keys through an index (measured before:
a LIKE 'abc/%' per dir scanned every shard row of the data dir, 865 s for 900k files)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa

from edgestore.engine import Engine
from edgestore.maintenance import gc
from edgestore.storage.backend import BlobInfo
from edgestore.storage.local import LocalBackend
from tests.helpers import MiB, blocks_of, random_bytes, read_all


class _RecordingBackend(LocalBackend):
    """The real data dir, noting the prefixes it is asked to list."""

    def __init__(self, other: LocalBackend) -> None:
        super().__init__(other.name, other.root, other.store_id)
        self.listed: list[str] = []

    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        self.listed.append(prefix)
        return super().list(prefix)


def _old_orphan(backend: LocalBackend) -> str:
    key = "abc/" + "ab" * 32 + ".deadbeef0000.0"
    backend.put(key, [b"left by a crash between shard write and commit"])
    old = time.time() - 7200
    os.utime(backend.root / key, (old, old))
    return key


def test_the_sweep_never_lists_a_whole_data_dir_at_once(small_engine: Engine) -> None:
    v = small_engine.put(blocks_of(random_bytes(1 * MiB, seed=11)), key="x")
    backends = small_engine.core.dirs.backends
    original = backends["d0"]
    assert isinstance(original, LocalBackend)
    recording = backends["d0"] = _RecordingBackend(original)
    try:
        orphan = _old_orphan(recording)
        report = gc.collect(small_engine, grace=3600)
    finally:
        backends["d0"] = original
    assert report.orphan_files_deleted == 1 and original.stat(orphan) is None
    assert recording.listed and "" not in recording.listed
    assert all(p.endswith("/") for p in recording.listed)
    assert read_all(small_engine, v) == random_bytes(1 * MiB, seed=11)


def _plan(conn: sa.Connection, statement: str, params: Any) -> str:
    if conn.dialect.name == "sqlite":
        rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, params).all()
        return "\n".join(str(r[-1]) for r in rows)
    conn.exec_driver_sql("SET LOCAL enable_seqscan = off")  # a tiny table: the plan it would
    rows = conn.exec_driver_sql("EXPLAIN " + statement, params).all()  # take on a large one
    return "\n".join(str(r[0]) for r in rows)


def test_known_shard_keys_are_looked_up_through_the_index(small_engine: Engine) -> None:
    small_engine.put(blocks_of(random_bytes(1 * MiB, seed=12)), key="x")
    backend = small_engine.core.dirs.backends["d0"]
    assert isinstance(backend, LocalBackend)
    _old_orphan(backend)
    seen: list[tuple[str, Any]] = []

    def note(_conn: Any, _cursor: Any, statement: str, params: Any, *_: Any) -> None:
        if "FROM shards" in statement and "shards.backend =" in statement:
            seen.append((statement, params))

    sa_engine = small_engine.core.db.engine
    sa.event.listen(sa_engine, "before_cursor_execute", note)
    try:
        assert gc.collect(small_engine, grace=3600).orphan_files_deleted == 1
    finally:
        sa.event.remove(sa_engine, "before_cursor_execute", note)
    assert seen, "the sweep looked no shard keys up"
    with sa_engine.connect() as conn:
        for statement, params in seen:
            plan = _plan(conn, statement, params)
            # The key itself is a condition of the index search, not a filter on each row
            # of the data dir's whole range of the index.
            if conn.dialect.name == "sqlite":
                assert "INDEX ix_shards_backend_key (backend=? AND key" in plan, plan
            else:
                assert "ix_shards_backend_key" in plan, plan
                cond = [line for line in plan.splitlines() if "Index Cond" in line]
                assert cond and "key" in cond[0], plan
