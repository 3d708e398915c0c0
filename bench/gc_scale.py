"""Maintenance at scale: time and peak RSS of gc's orphan sweep, gc without it (the
unreferenced chunks it frees per second; `gc-put` also times small puts made meanwhile:
uploads must not wait long behind gc's transactions), du and the metadata check (`check`;
the synthetic chunks have no manifests, so it finds every used one's refcount wrong: its
findings too must stay bounded in memory), on a synthetic store (chunk and shard rows
inserted in bulk, empty shard files in the real key layout, plus orphans), to check they
stay bounded in memory as a store grows to many TB.

    python -m bench.gc_scale build DIR --db URL --chunks 100000
    python -m bench.gc_scale run DIR --db URL   # each job in a fresh subprocess
    python -m bench.gc_scale run DIR --db URL --jobs gc-put

`build --pinned N` has an open native session pin N of the live chunks: deleting a chunk row
makes PostgreSQL look its id up in upload_pins (a foreign key), which must not be a scan.

Each job runs in its own process, so its peak RSS (VmHWM) is its own. `build --no-files`
makes the rows alone, with real shard sizes (a 4 MiB chunk's 6+3 shards of 699,051 bytes),
for the jobs that only query them (`du`): 500k chunks in a few minutes rather than 4.5M files.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import sqlalchemy as sa

from edgestore.config import load_settings
from edgestore.engine import Engine
from edgestore.metadata.schema import chunks, shards, upload_pins, uploads
from edgestore.storage.placement import place, shard_key

OLD = time.time() - 86400.0  # past every grace
GENERATION = "0123456789abcdef"
ROWS_PER_INSERT = 5000


def _engine(home: Path, db: str) -> Engine:
    return Engine.open(load_settings(home=home, database_url=db, gc_grace_seconds=3600))


def _touch(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    os.close(fd)
    os.utime(path, (OLD, OLD))


def build(
    home: Path,
    db: str,
    n_chunks: int,
    orphans: int,
    unreferenced: int,
    files: bool = True,
    pinned: int = 0,
) -> None:
    """A store of n_chunks 6+3 chunks (every shard an empty file, all old), `unreferenced`
    of them garbage, `pinned` of the others pinned by an open native session, and `orphans`
    shard files no row names; without `files`, the rows alone, each shard row the size of a
    4 MiB chunk's shard."""
    shard_size = 0 if files else -(-(4 << 20) // 6)
    with _engine(home, db) as engine:
        names = sorted(engine.core.dirs.backends)
        roots = {n: engine.core.dirs.backends[n].root for n in names}  # type: ignore[attr-defined]
        made: set[Path] = set()
        chunk_rows: list[dict[str, object]] = []
        shard_rows: list[dict[str, object]] = []
        pin_rows: list[dict[str, object]] = []
        session = str(uuid.uuid4())
        if pinned:
            with engine.core.db.write() as conn:
                conn.execute(
                    sa.insert(uploads).values(
                        upload_id=session,
                        kind="native",
                        state="open",
                        user_metadata={},
                        created_at=OLD,
                        updated_at=OLD,
                    )
                )

        def flush() -> None:
            with engine.core.db.write() as conn:
                conn.execute(sa.insert(chunks), chunk_rows)
                conn.execute(sa.insert(shards), shard_rows)
                if pin_rows:
                    conn.execute(sa.insert(upload_pins), pin_rows)
            chunk_rows.clear()
            shard_rows.clear()
            pin_rows.clear()

        for i in range(n_chunks):
            cid = os.urandom(32).hex()
            garbage = i < unreferenced
            chunk_rows.append(
                {
                    "chunk_id": cid,
                    "raw_size": 4 << 20,
                    "stored_size": 4 << 20,
                    "compression": "none",
                    "layout": "ec",
                    "ec_k": 6,
                    "ec_m": 3,
                    "shard_size": shard_size,
                    "generation": GENERATION,
                    "refcount": 0 if garbage else 1,
                    "created_at": OLD,
                    "zero_since": OLD if garbage else None,
                }
            )
            if not garbage and i < unreferenced + pinned:
                pin_rows.append({"upload_id": session, "chunk_id": cid})
            for index, name in enumerate(place(cid, 9, names)):  # type: ignore[arg-type]
                key = shard_key(cid, GENERATION, index)  # type: ignore[arg-type]
                shard_rows.append(
                    {
                        "chunk_id": cid,
                        "shard_index": index,
                        "backend": name,
                        "key": key,
                        "size": shard_size,
                        "checksum": "0" * 32,
                    }
                )
                if not files:
                    continue
                path = roots[name] / key
                if path.parent not in made:
                    path.parent.mkdir(exist_ok=True)
                    made.add(path.parent)
                _touch(path)
            if len(chunk_rows) >= ROWS_PER_INSERT:
                flush()
        if chunk_rows:
            flush()
        for i in range(orphans if files else 0):
            cid = os.urandom(32).hex()
            path = roots[names[i % len(names)]] / shard_key(cid, "deadbeef", 0)  # type: ignore[arg-type]
            path.parent.mkdir(exist_ok=True)
            _touch(path)


def _peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _put_latencies(engine: Engine, stop: threading.Event, out: list[float]) -> None:
    """Put a new 256 KiB object every 20 ms until `stop`, noting each put's seconds."""
    i = 0
    while not stop.is_set():
        data = os.urandom(256 << 10)
        t = time.monotonic()
        engine.put([data], key=f"bench-put-{i}")
        out.append(time.monotonic() - t)
        i += 1
        stop.wait(0.02)


def _latency_ms(seconds: list[float]) -> dict[str, float]:
    if not seconds:
        return {}
    ms = sorted(s * 1000 for s in seconds)
    return {
        "n": len(ms),
        "p50": round(statistics.median(ms), 1),
        "p99": round(ms[min(len(ms) - 1, int(len(ms) * 0.99))], 1),
        "max": round(ms[-1], 1),
    }


def _gc_chunks(engine: Engine, with_puts: bool) -> dict[str, object]:
    """gc without the orphan sweep: chunks freed and their rate; with_puts, the latency of
    puts made before (idle) and while it runs."""
    from edgestore.maintenance import gc

    idle: list[float] = []
    during: list[float] = []
    stop = threading.Event()
    putter = None
    if with_puts:
        for i in range(20):
            data = os.urandom(256 << 10)
            t = time.monotonic()
            engine.put([data], key=f"bench-idle-{i}")
            idle.append(time.monotonic() - t)
        putter = threading.Thread(target=_put_latencies, args=(engine, stop, during))
        putter.start()
    started = time.monotonic()
    try:
        r = gc.collect(engine, grace=3600, orphans=False)
    finally:
        stop.set()
        if putter is not None:
            putter.join()
    secs = time.monotonic() - started
    out: dict[str, object] = {
        "chunks": r.chunks_deleted,
        "shard_files": r.shard_files_deleted,
        "errors": r.errors,
        "chunks_per_s": round(r.chunks_deleted / secs) if secs else 0,
        "batch": gc.BATCH,
    }
    if with_puts:
        out["put_ms_idle"] = _latency_ms(idle)
        out["put_ms_during_gc"] = _latency_ms(during)
    return out


def job(home: Path, db: str, what: str) -> dict[str, object]:
    """One job, in this process: its wall time and the process's peak RSS."""
    from edgestore.maintenance import gc
    from edgestore.metadata import stats

    with _engine(home, db) as engine:
        base = _peak_rss_mib()
        started = time.monotonic()
        if what == "sweep":
            r = gc.GcReport()
            gc._collect_orphans(engine, time.time() - 600, r, gc._noop)
            out: object = {"orphans": r.orphan_files_deleted, "errors": r.errors}
        elif what in ("gc", "gc-put"):
            out = _gc_chunks(engine, with_puts=what == "gc-put")
        elif what == "check":
            from edgestore.maintenance import check

            report = check.check(engine)
            out = {f.kind: f.found for f in report.findings if f.found}
        elif what == "du":
            with engine.core.db.read() as conn:
                out = stats.usage(conn).chunks
        else:
            raise SystemExit(f"unknown job {what}")
        return {
            "job": what,
            "seconds": round(time.monotonic() - started, 2),
            "peak_rss_mib": round(_peak_rss_mib(), 1),
            "rss_before_mib": round(base, 1),
            "result": out,
        }


def main() -> None:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("action", choices=["build", "run", "job"])
    p.add_argument("home", type=Path)
    p.add_argument("--db", required=True)
    p.add_argument("--chunks", type=int, default=100_000)
    p.add_argument("--orphans", type=int, default=1000)
    p.add_argument("--unreferenced", type=int, default=1000)
    p.add_argument("--pinned", type=int, default=0, help="live chunks an open session pins")
    p.add_argument("--jobs", default="sweep,gc,du,check", help="also: gc-put")
    p.add_argument("--no-files", action="store_true", help="build the rows alone (for du)")
    p.add_argument("--gc-batch", type=int, help="chunks per gc transaction (gc.BATCH)")
    a = p.parse_args()
    if a.action == "build":
        t = time.monotonic()
        build(a.home, a.db, a.chunks, a.orphans, a.unreferenced, not a.no_files, a.pinned)
        print(f"built in {time.monotonic() - t:.1f} s", file=sys.stderr)
    elif a.action == "job":
        if a.gc_batch:
            from edgestore.maintenance import gc

            gc.BATCH = a.gc_batch
        print(json.dumps(job(a.home, a.db, a.jobs)))
    else:
        for what in a.jobs.split(","):
            cmd = [sys.executable, "-m", "bench.gc_scale", "job", str(a.home), "--db", a.db]
            batch = ["--gc-batch", str(a.gc_batch)] if a.gc_batch else []
            subprocess.run([*cmd, "--jobs", what, *batch], check=True)


if __name__ == "__main__":
    main()
