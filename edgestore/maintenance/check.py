"""The metadata consistency check (`edgestore check`): derived counters against the rows
they count, references against the rows they name, chunks against the shard rows they need.

What drifts and is derived (chunk refcounts, bucket totals) is recounted with `fix`, under the
writers' own locks, so a server writing meanwhile loses nothing. What names bytes that are
gone (a reference to a missing chunk, a chunk short of shards) is reported, never "fixed" by
deleting the rows that name it: `scrub` and `repair` deal with shard files.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from edgestore.engine import Engine
from edgestore.metadata import consistency, crowding
from edgestore.metadata.db import Database

# Chunks per page of the scan (one read transaction each), and refcounts recounted per write
# transaction: small, as on SQLite it holds the database's write lock.
PAGE = 2000
FIX_BATCH = 200
EXAMPLES = 5  # findings of a kind shown by name; all of them are counted

# What is derived, and recounted by `fix`; every other kind is only reported.
REFCOUNT = "refcount"
BUCKET_TOTALS = "bucket_totals"
MISSING_CHUNK_MANIFEST = "manifest_missing_chunk"
MISSING_CHUNK_UPLOAD = "upload_missing_chunk"
UNREADABLE_CHUNK = "chunk_unreadable"
SHORT_OF_SHARDS = "chunk_short_of_shards"
VERSION_SIZE = "version_size"
CROWDED = "chunk_doubled_up"

KINDS: dict[str, str] = {
    REFCOUNT: "chunks whose refcount differs from their references",
    BUCKET_TOTALS: "buckets whose totals differ from their versions",
    MISSING_CHUNK_MANIFEST: "manifest entries naming a chunk row that does not exist",
    MISSING_CHUNK_UPLOAD: "upload parts and pins naming a chunk row that does not exist",
    UNREADABLE_CHUNK: "chunks with fewer shard rows than needed to read them (or inline "
    "chunks without their bytes)",
    SHORT_OF_SHARDS: "chunks readable but with fewer shard rows than k+m",
    VERSION_SIZE: "versions whose manifest does not add up to their size",
    CROWDED: "chunks with two or more shards on one data dir (more than placement puts there)",
}
FIXABLE = frozenset({REFCOUNT, BUCKET_TOTALS})


@dataclass
class Finding:
    kind: str
    description: str
    found: int = 0
    fixed: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, example: str) -> None:
        self.found += 1
        if len(self.examples) < EXAMPLES:
            self.examples.append(example)


@dataclass
class CheckReport:
    fix: bool = False
    chunks_checked: int = 0
    buckets_checked: int = 0
    findings: list[Finding] = field(
        default_factory=lambda: [Finding(k, d) for k, d in KINDS.items()]
    )
    unresolved: int = 0  # found and not fixed: what the exit code says
    seconds: float = 0.0

    def of(self, kind: str) -> Finding:
        return next(f for f in self.findings if f.kind == kind)


# (stage, done, total or None)
Progress = Callable[[str, int, int | None], None]


def _noop(_stage: str, _done: int, _total: int | None) -> None:
    pass


def check(engine: Engine, *, fix: bool = False, progress: Progress = _noop) -> CheckReport:
    """Check the metadata; with `fix`, recount the refcounts and bucket totals found wrong.

    Reads in pages and streams, so a store of millions of chunks is checked in bounded
    memory; safe beside a running server on the same database (see metadata/consistency.py).
    """
    started = time.monotonic()
    report = CheckReport(fix=fix)
    _check_chunks(engine, report, progress)
    _check_buckets(engine, report, progress)
    _check_references(engine, report, progress)
    _check_spread(engine, report, progress)
    report.unresolved = sum(f.found - f.fixed for f in report.findings)
    report.seconds = time.monotonic() - started
    return report


def _check_chunks(engine: Engine, report: CheckReport, progress: Progress) -> None:
    db = engine.core.db
    with db.read() as conn:
        total = consistency.count_chunks(conn)
    progress("chunks", 0, total)
    after: str | None = None
    refcounts, unreadable = report.of(REFCOUNT), report.of(UNREADABLE_CHUNK)
    short = report.of(SHORT_OF_SHARDS)
    while True:
        with db.read() as conn:
            page = consistency.chunk_page(conn, after, PAGE)
        if not page:
            return
        drifted: list[str] = []
        for c in page:
            if c.refcount != c.referenced:
                refcounts.add(f"chunk {c.chunk_id}: refcount {c.refcount}, {c.referenced} refs")
                drifted.append(c.chunk_id)
            if not c.readable:
                what = "no inline bytes" if c.layout == "inline" else f"{c.shard_rows} shard rows"
                unreadable.add(f"chunk {c.chunk_id}: {what}, needs {c.ec_k} of {c.ec_k + c.ec_m}")
            elif not c.fully_sharded:
                short.add(f"chunk {c.chunk_id}: {c.shard_rows} shard rows of {c.ec_k + c.ec_m}")
        if report.fix:  # each recounted under its lock: right now, changed or not
            for i in range(0, len(drifted), FIX_BATCH):
                batch = drifted[i : i + FIX_BATCH]
                db.transact(lambda conn, b=batch: consistency.recount_refs(conn, b))
                refcounts.fixed += len(batch)
        report.chunks_checked += len(page)
        after = page[-1].chunk_id
        progress("chunks", report.chunks_checked, max(total, report.chunks_checked))


def _check_buckets(engine: Engine, report: CheckReport, progress: Progress) -> None:
    db = engine.core.db
    progress("buckets", 0, None)
    found = report.of(BUCKET_TOTALS)
    drifted: list[str] = []
    with db.read() as conn:
        report.buckets_checked = consistency.count_buckets(conn)
        for d in consistency.bucket_drift(conn):
            found.add(_bucket_example(d))
            drifted.append(d.bucket)  # one name per bucket: few, whatever the store's size
    if report.fix:
        for bucket in drifted:  # (None: right already, another check recounted it)
            db.transact(lambda conn, b=bucket: consistency.recount_bucket(conn, b))
            found.fixed += 1
    progress("buckets", report.buckets_checked, report.buckets_checked)


def _bucket_example(d: consistency.BucketDrift) -> str:
    return (
        f"bucket {d.bucket}: {d.recorded.bytes} bytes in {d.recorded.versions} versions "
        f"recorded, {d.counted.bytes} in {d.counted.versions} counted"
    )


def _check_references(engine: Engine, report: CheckReport, progress: Progress) -> None:
    """The scans that can only report: references whose chunk row is gone, versions whose
    manifest does not add up."""
    db = engine.core.db
    progress("references", 0, None)
    entries, parts = report.of(MISSING_CHUNK_MANIFEST), report.of(MISSING_CHUNK_UPLOAD)
    sizes = report.of(VERSION_SIZE)
    with db.read() as conn:
        for bucket, key, version, seq, cid in consistency.manifests_without_chunk(conn):
            entries.add(f"{bucket}/{key} version {version} entry {seq}: chunk {cid}")
        for upload_id, what, cid in consistency.upload_refs_without_chunk(conn):
            parts.add(f"upload {upload_id} {what}: chunk {cid}")
    progress("versions", 0, None)
    with db.read() as conn:
        for bucket, key, version, size, length in consistency.versions_not_adding_up(conn):
            sizes.add(f"{bucket}/{key} version {version}: size {size}, entries add up to {length}")


def _check_spread(engine: Engine, report: CheckReport, progress: Progress) -> None:
    """Chunks doubled up on a data dir (losing it costs more than one shard): a repair around
    a dir that was down or full; `edgestore repair --spread` moves them once dirs can take
    them. Compared with what placement does with the dirs configured: a store with fewer
    dirs than shards is no finding."""
    db = engine.core.db
    dirs = len(engine.core.dirs.names)
    found = report.of(CROWDED)
    progress("shard placement", 0, None)
    after: str | None = None
    while page := _page(db, after, dirs):
        for cid, most in page:
            found.add(f"chunk {cid}: {most} shards on one data dir")
        after = page[-1][0]


def _page(db: Database, after: str | None, dirs: int) -> list[tuple[str, int]]:
    with db.read() as conn:
        return crowding.page(conn, after, PAGE, dirs)
