"""Run a real `edgestore` command (a CLI job or the server) that kill -9s itself at a chosen
point, and check the store a crash leaves behind.

    python -m tests.crashpoints '<point as JSON>' <edgestore arguments...>

The product has no crash hooks: this launcher installs the trigger in the child process only
(a listener on every SQL statement, a wrapper around the data dirs' file calls) and then runs
the unmodified CLI, so the SIGKILL lands at the same statement or file call on every run.
A point is {"sql": regex} (a statement) or {"file": "write"|"delete"|"get"} (a data-dir call),
with "nth" (the nth match, from 1) and "when" ("before" it runs, or "after").
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from edgestore.codec import shardfile
from edgestore.engine import Engine
from edgestore.errors import CorruptShard
from edgestore.metadata.chunks import reference_mismatches
from edgestore.metadata.schema import chunks, manifests, shards, upload_parts

ROOT = Path(__file__).resolve().parents[1]


def command(point: dict[str, Any], *args: str) -> list[str]:
    """The argv of `edgestore *args` killed at `point`."""
    return [sys.executable, "-m", "tests.crashpoints", json.dumps(point), *args]


def child_env(env: dict[str, str]) -> dict[str, str]:
    """`env` with this checkout importable (the launcher lives in tests/)."""
    path = env.get("PYTHONPATH", "")
    return {**env, "PYTHONPATH": f"{ROOT}{os.pathsep}{path}" if path else str(ROOT)}


def run_killed(point: dict[str, Any], args: list[str], env: dict[str, str]) -> str:
    """Run `edgestore *args` killed at `point`; fails if it ended any other way (the point
    was never reached). Returns its stderr."""
    done = subprocess.run(
        command(point, *args), env=child_env(env), capture_output=True, timeout=120
    )
    err = done.stderr.decode(errors="replace")
    assert done.returncode == -signal.SIGKILL, (point, done.returncode, err[-2000:])
    return err


# --- the trigger, in the child -------------------------------------------------------------


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _counter(nth: int) -> Callable[[], bool]:
    """True on the nth call (whatever the thread)."""
    lock = threading.Lock()
    seen = [0]

    def hit() -> bool:
        with lock:
            seen[0] += 1
            return seen[0] == nth

    return hit


def install(point: dict[str, Any]) -> None:
    hit = _counter(int(point.get("nth", 1)))
    after = point.get("when", "before") == "after"
    if "sql" in point:
        pattern = re.compile(point["sql"], re.IGNORECASE | re.DOTALL)
        event = "after_cursor_execute" if after else "before_cursor_execute"

        def on_statement(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
            if pattern.search(statement) and hit():
                _die()

        sa.event.listen(sa.engine.Engine, event, on_statement)
        return
    from edgestore.storage.local import LocalBackend

    name = point["file"]
    real = getattr(LocalBackend, name)

    def wrapped(self: LocalBackend, *args: Any, **kwargs: Any) -> Any:
        if not after and hit():
            _die()
        result = real(self, *args, **kwargs)
        if after and hit():
            _die()
        return result

    setattr(LocalBackend, name, wrapped)


# --- what a crash must leave behind ---------------------------------------------------------


def assert_store_consistent(engine: Engine) -> None:
    """The invariants a kill -9 anywhere keeps: every chunk row has its k+m shard rows and at
    least k of their files exist and pass their checksums (readable; repair makes it whole);
    every manifest entry's and upload part's chunk exists; every refcount equals its
    references."""
    with engine.core.db.read() as conn:
        rows = conn.execute(
            sa.select(chunks.c.chunk_id, chunks.c.layout, chunks.c.ec_k, chunks.c.ec_m)
        ).all()
        by_chunk: dict[str, list[sa.Row]] = {}
        for s in conn.execute(sa.select(shards)).all():
            by_chunk.setdefault(s.chunk_id, []).append(s)
        dangling = [
            conn.execute(
                sa.select(table.c.chunk_id)
                .select_from(table.outerjoin(chunks, chunks.c.chunk_id == table.c.chunk_id))
                .where(chunks.c.chunk_id.is_(None))
            ).all()
            for table in (manifests, upload_parts)
        ]
        assert reference_mismatches(conn) == []
    assert dangling == [[], []], "manifest or upload part rows name chunks that are gone"
    for r in rows:
        refs = by_chunk.pop(r.chunk_id, [])
        if r.layout == "inline":
            assert refs == [], r
            continue
        assert len(refs) == r.ec_k + r.ec_m, r
        whole = 0
        for s in refs:
            backend = engine.core.dirs.backends[s.backend]
            if backend.stat(s.key) is None:
                continue
            try:
                shardfile.unpack(backend.get(s.key), expect_chunk=r.chunk_id)
            except CorruptShard:
                continue
            whole += 1
        assert whole >= r.ec_k, (r, whole)
    assert by_chunk == {}, "shard rows without a chunk row"


def main(argv: list[str]) -> None:
    install(json.loads(argv[0]))
    sys.argv = ["edgestore", *argv[1:]]
    from edgestore.cli.main import main as edgestore

    edgestore()


if __name__ == "__main__":
    main(sys.argv[1:])
