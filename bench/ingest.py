"""Storage-engine benchmark: ingest stages alone, full ingest, read-back, re-ingest, peak RSS.

For each data set (random bytes; compressible text, a stamped tar of the stdlib):
  * each stage alone on one thread, with the project's code — chunk, chunk-id SHA-256,
    whole-file SHA-256, compress, EC encode, shard write — and the 2-core ceiling they imply;
  * `Engine.put` of the file into a fresh store, then reading it back, then putting it again
    (all dedup hits), with targets: full ≥ 70% of the ceiling, read-back ≥ full ingest,
    re-ingest ≥ 3x full ingest;
then the peak RSS of a separate process ingesting a 4 GiB random file (target ≤ 256 MiB).

    .venv/bin/python -m bench.ingest                       # 1 GiB per data set, median of 3
    .venv/bin/python -m bench.ingest --quick               # smoke run: 64 MiB, once, no RSS
    make bench ARGS="--size 256MiB --data text --json out.json"

The ceiling sums each stage's cost in CPU seconds per byte (thread CPU time, so a shard write's
wait on fsync is not counted as work) and is capped by the stages that cannot run in parallel
and by the disk (the shard-write stage's wall-clock rate); full ingest against the cores'
ceiling alone is printed too.
Settings come from `EDGESTORE_*` as for the server (e.g. EDGESTORE_DATABASE_URL for
PostgreSQL); every store lives in the work dir. Data files are read through the page cache,
shards (written and read with O_DIRECT) from the disk.
Finished stores are deleted when the benchmark ends, not between runs (see
`datasets.discard`: on a filesystem without a journal, fresh deletions tax new files).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from rich.console import Console

from bench import datasets, report, stages
from bench.datasets import Dataset, GiB, MiB, format_size, parse_size
from bench.report import Spread, Throughput, Verdict
from edgestore.codec.erasure import ReedSolomon
from edgestore.config import load_settings
from edgestore.engine import Engine, VersionInfo
from edgestore.engine.pipeline import tune_allocator
from edgestore.metadata.stats import StoreUsage

TARGET_OF_CEILING = 0.70
TARGET_READ_VS_INGEST = 1.0
TARGET_REINGEST_VS_INGEST = 3.0
TARGET_PEAK_RSS = 256 * MiB
TARGET_RSS_SIZE = 4 * GiB  # the issue's: peak RSS while ingesting 4 GiB
RSS_FREE_FACTOR = 3  # the file, its shards (1.5x for random data) and slack
DATA_FREE_FACTOR = 4  # the file, the stage shards, the store's shards and slack
CHILD = (sys.executable, "-m", "bench.ingest")


# --- the engine, end to end ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EngineRun:
    """One fresh store: put, read back, put again; seconds of wall clock and of CPU."""

    size: int
    ingest_s: float
    ingest_cpu: float
    read_s: float
    read_cpu: float
    reingest_s: float
    reingest_cpu: float
    usage: StoreUsage  # after the first put
    sha256: str | None


def _ec_path() -> str:
    rs = ReedSolomon(6, 3)
    via = "liberasurecode direct (GIL released)" if rs.releases_gil else "pyeclib (holds the GIL)"
    return f"{rs.backend} via {via}"


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def _put_file(engine: Engine, path: Path, key: str) -> VersionInfo:
    """As `edgestore put` does: the open file is read straight into the chunker's buffer."""
    with open(path, "rb", buffering=0) as f:
        return engine.put(f, key=key)


def _read_digest(engine: Engine, info: VersionInfo) -> tuple[int, str]:
    """A stored version read back in full: its length and SHA-256 (untimed, to verify it)."""
    h = hashlib.sha256()
    n = 0
    for piece in engine.objects.read(info):
        h.update(piece)
        n += len(piece)
    return n, h.hexdigest()


def engine_run(ds: Dataset, home: Path, expected_sha256: str | None = None) -> EngineRun:
    """Put, read back, put again; each timed region is that operation alone. Afterwards,
    untimed, both stored versions are read back and compared with the file
    (`expected_sha256`): a run that stored other bytes is an error, not a figure."""
    try:
        with Engine.open(load_settings(home=home)) as engine:
            datasets.settle()
            w0, c0 = time.perf_counter(), _cpu()
            info = _put_file(engine, ds.path, f"bench/{ds.kind}")
            w1, c1 = time.perf_counter(), _cpu()
            usage = engine.objects.usage()  # an SQL aggregate: timed with neither
            r0, rc0 = time.perf_counter(), _cpu()
            got = sum(len(piece) for piece in engine.objects.read(info))
            w2, c2 = time.perf_counter(), _cpu()
            again = _put_file(engine, ds.path, f"bench/{ds.kind}-again")
            w3, c3 = time.perf_counter(), _cpu()
            stored = [_read_digest(engine, v) for v in (info, again)] if expected_sha256 else []
    finally:
        datasets.discard(home)
    if info.size != ds.size or got != ds.size:
        raise RuntimeError(f"stored {info.size} and read back {got} bytes of {ds.size}")
    for what, (n, digest) in zip(("first put", "second put"), stored, strict=True):
        if (n, digest) != (ds.size, expected_sha256):
            raise RuntimeError(
                f"{what} read back as {n} bytes, SHA-256 {digest}; the file is {ds.size} "
                f"bytes, SHA-256 {expected_sha256}"
            )
    return EngineRun(
        ds.size, w1 - w0, c1 - c0, w2 - r0, c2 - rc0, w3 - w2, c3 - c2, usage, info.sha256
    )


# --- one data set ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DatasetResult:
    kind: str
    size: int
    stage_wall: dict[str, Spread]  # raw bytes per second
    stage_cpu: dict[str, Spread]  # raw bytes per CPU second
    shard_bytes_rate: Spread
    ceiling: stages.Ceiling
    ingest: Throughput
    read: Throughput
    reingest: Throughput
    verdicts: list[Verdict]
    usage: StoreUsage
    chunks: int
    layouts: dict[str, int]
    stored_ratio: float  # stored / raw bytes after compression, from the stage run
    sha256_matches: bool  # the engine's and the stage run's digests are the file's


def bench_dataset(ds: Dataset, repeat: int, workdir: Path, log: Console) -> DatasetResult:
    settings = load_settings(home=workdir / "settings-only")
    expected = datasets.sha256_of(ds.path)  # hashlib over the file, apart from the engine
    stage_runs: list[stages.StageRun] = []
    engine_runs: list[EngineRun] = []
    for i in range(repeat):
        log.print(f"  [{ds.kind}] repeat {i + 1}/{repeat}: stages…")
        stage_runs.append(stages.run_stages(ds.path, settings, workdir / "stage-shards"))
        log.print(f"  [{ds.kind}] repeat {i + 1}/{repeat}: engine put, read, put again…")
        engine_runs.append(engine_run(ds, workdir / f"store-{ds.kind}-{i}", expected))

    stage_wall = {s: Spread.of(r.rate(s) for r in stage_runs) for s in stages.STAGES}
    stage_cpu = {s: Spread.of(r.cpu_rate(s) for r in stage_runs) for s in stages.STAGES}
    ceil = stages.ceiling(
        {s: spread.median for s, spread in stage_cpu.items()},
        encode_holds_gil=not ReedSolomon(6, 3).releases_gil,
        disk=stage_wall[stages.SHARD_WRITE].median,
    )

    ingest = Throughput.of(ds.size, ((r.ingest_s, r.ingest_cpu) for r in engine_runs))
    read = Throughput.of(ds.size, ((r.read_s, r.read_cpu) for r in engine_runs))
    reingest = Throughput.of(ds.size, ((r.reingest_s, r.reingest_cpu) for r in engine_runs))
    full = ingest.rate.median
    first = stage_runs[0]
    return DatasetResult(
        kind=ds.kind,
        size=ds.size,
        stage_wall=stage_wall,
        stage_cpu=stage_cpu,
        shard_bytes_rate=Spread.of(r.shard_write_rate() for r in stage_runs),
        ceiling=ceil,
        ingest=ingest,
        read=read,
        reingest=reingest,
        verdicts=[
            Verdict("full / ceiling", full / ceil.value, TARGET_OF_CEILING),
            Verdict("read-back / full", read.rate.median / full, TARGET_READ_VS_INGEST),
            Verdict("re-ingest / full", reingest.rate.median / full, TARGET_REINGEST_VS_INGEST),
        ],
        usage=engine_runs[0].usage,
        chunks=first.chunks,
        layouts=first.layouts,
        stored_ratio=first.stored_bytes / max(first.raw_bytes, 1),
        sha256_matches=first.sha256 == expected and all(r.sha256 == expected for r in engine_runs),
    )


def print_dataset(out: Console, r: DatasetResult) -> None:
    title = f"{r.kind} data, {format_size(r.size)}: stages alone"
    rows = {s: (r.stage_wall[s], r.stage_cpu[s]) for s in stages.STAGES}
    report.stages(out, title, rows, [("  shard write, shard bytes/s", r.shard_bytes_rate)])
    layouts = ", ".join(f"{n} {k}" for k, n in r.layouts.items() if n)
    out.print(
        f"{r.chunks} chunks (mean {format_size(r.size // max(r.chunks, 1))}): {layouts}; "
        f"stored/raw after compression {r.stored_ratio:.2f}"
    )
    terms = {"2 cores": r.ceiling.two_cores}
    terms |= {s.split(" (")[0]: v for s, v in r.ceiling.caps.items()}
    full, read, again = r.verdicts
    report.ceiling(
        out,
        r.ceiling.formula + ", rates per CPU-second but the disk's",
        terms,
        r.ceiling.value,
        full,
        cpu_only=r.ingest.rate.median / r.ceiling.cpu,
    )
    report.engine(
        out,
        f"{r.kind} data, {format_size(r.size)}: engine",
        [
            ("full ingest (Engine.put)", r.ingest, full, "ceiling"),
            ("read-back (objects.read)", r.read, read, "full ingest"),
            ("re-ingest (same bytes)", r.reingest, again, "full ingest"),
        ],
    )
    out.print(
        "[dim]Fresh store per repeat; the data file is read through the page cache, shards "
        "from the disk (O_DIRECT). "
        "cores busy = CPU seconds / wall seconds.[/]"
    )
    u = r.usage
    out.print(
        f"store after the first put: dedup {u.dedup_ratio:.2f}x, compression "
        f"{u.compression_ratio:.2f}x, redundancy overhead {u.redundancy_overhead:.2f}x "
        f"({u.chunks} chunks); whole-file SHA-256 "
        + ("the file's in every repeat" if r.sha256_matches else "[red]DIFFERS from the file's[/]")
    )
    out.print()


# --- peak RSS, in a process of its own -----------------------------------------------------


def peak_rss() -> int:
    """This process's peak resident set size, in bytes.

    VmHWM, where Linux has it: `ru_maxrss` carries over through exec the peak of the process
    that spawned us (subprocess uses vfork), so in a child it can report the parent's peak.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def rss_child(path: Path, workdir: Path) -> dict[str, Any]:
    """Runs in the child: ingest `path` into a fresh store, report this process's peak RSS."""
    home = workdir / "rss-store"
    try:
        with Engine.open(load_settings(home=home)) as engine:
            baseline = peak_rss()
            t0 = time.perf_counter()
            info = _put_file(engine, path, "bench/rss")
            seconds = time.perf_counter() - t0
            peak = peak_rss()  # before the verification's reads
            stored = _read_digest(engine, info)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    expected = (path.stat().st_size, datasets.sha256_of(path))
    if stored != expected:
        raise RuntimeError(f"stored {stored} of the file's {expected} (bytes, SHA-256)")
    return {
        "size": info.size,
        "seconds": seconds,
        "peak_rss": peak,
        "baseline_rss": baseline,
        "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def rss_verdict(size: int, peak: int) -> str:
    """PASS, FAIL, or n/a: a peak under the target on less data than the issue's 4 GiB is
    no pass (a peak over it, on any size, is a failure)."""
    if peak > TARGET_PEAK_RSS:
        return "FAIL"
    return "PASS" if size >= TARGET_RSS_SIZE else "n/a"


def bench_rss(size: int, workdir: Path, log: Console) -> dict[str, Any]:
    """The child's figures, or {"skipped": why} when the disk has no room for the test."""
    free = shutil.disk_usage(workdir).free
    if free < RSS_FREE_FACTOR * size:
        why = (
            f"{format_size(free)} free in {workdir}, it needs {format_size(RSS_FREE_FACTOR * size)}"
            "; --rss-size 0 skips it"
        )
        log.print(f"skipping the RSS test: {why}", style="yellow")
        return {"skipped": why}
    log.print(f"  [rss] generating {format_size(size)} of random data…")
    ds = datasets.ensure("random", workdir, size)
    try:
        log.print("  [rss] ingesting in a separate process…")
        proc = subprocess.run(
            [*CHILD, "--rss-child", str(ds.path), "--workdir", str(workdir)],
            cwd=Path(__file__).resolve().parent.parent,
            capture_output=True,
            text=True,
            check=False,
        )
    finally:
        ds.path.unlink(missing_ok=True)
    if proc.returncode != 0:
        raise RuntimeError(f"the RSS child failed ({proc.returncode}):\n{proc.stderr}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


# --- the machine --------------------------------------------------------------------------


def machine_info() -> dict[str, str]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    return {
        "CPU": f"{os.cpu_count()} x {model}",
        "Python": f"{platform.python_version()} ({platform.python_implementation()})",
        "EC backend": f"pyeclib {version('pyeclib')}, {_ec_path()}",
        "zstandard": version("zstandard"),
        "pyfastcdc": version("pyfastcdc"),
        "load average": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


# --- command line -------------------------------------------------------------------------


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__.split("\n")[0])
    p.add_argument("--size", type=_size, help="bytes per data set (default 1GiB)")
    p.add_argument("--repeat", type=int, help="repeats; medians are reported (default 3)")
    p.add_argument(
        "--data",
        default=",".join(datasets.KINDS),
        help=f"data sets, comma-separated (default {','.join(datasets.KINDS)})",
    )
    p.add_argument("--workdir", type=Path, help="work dir (default: a temp dir, removed after)")
    p.add_argument(
        "--rss-size", type=_size, help="RSS test file size, 0 skips (4GiB, the target's size)"
    )
    p.add_argument("--json", type=Path, help="also write the results to this file")
    p.add_argument("--quick", action="store_true", help="smoke run: 64MiB, 1 repeat, no RSS")
    p.add_argument("--rss-child", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.size = args.size or (64 * MiB if args.quick else 1 * GiB)
    args.repeat = args.repeat or (1 if args.quick else 3)
    if args.rss_size is None:
        args.rss_size = 0 if args.quick else 4 * GiB
    args.data = [d.strip() for d in args.data.split(",") if d.strip()]
    for kind in args.data:
        if kind not in datasets.KINDS:
            p.error(f"unknown data set {kind!r}; choose from {', '.join(datasets.KINDS)}")
    if args.repeat < 1 or args.size < 1:
        p.error("--size and --repeat must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    tune_allocator()  # as Engine.open does, so stage figures and engine figures compare
    if args.rss_child is not None:
        print(json.dumps(rss_child(args.rss_child, args.workdir)))
        return 0

    # Piped output (make bench > file) would otherwise wrap the tables at 80 columns.
    out = Console(width=None if sys.stdout.isatty() else 132)
    log = Console(stderr=True, markup=False, highlight=False)
    own_workdir = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="edgestore-bench-")) if own_workdir else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"machine": machine_info(), "datasets": {}, "rss": None}
    try:
        report.machine(out, results["machine"])
        for kind in args.data:
            free = shutil.disk_usage(workdir).free
            if free < DATA_FREE_FACTOR * args.size:
                raise SystemExit(
                    f"{format_size(free)} free in {workdir}; {kind} data of "
                    f"{format_size(args.size)} needs {format_size(DATA_FREE_FACTOR * args.size)}"
                )
            log.print(f"  [{kind}] generating {format_size(args.size)}…")
            t0 = time.perf_counter()
            ds = datasets.ensure(kind, workdir, args.size)
            log.print(f"  [{kind}] ready in {time.perf_counter() - t0:.1f} s")
            result = bench_dataset(ds, args.repeat, workdir, log)
            print_dataset(out, result)
            u = result.usage
            results["datasets"][kind] = report.jsonable(result) | {
                "dedup_ratio": u.dedup_ratio,
                "compression_ratio": u.compression_ratio,
                "redundancy_overhead": u.redundancy_overhead,
            }
            if own_workdir:
                ds.path.unlink()
        if args.rss_size:
            rss = bench_rss(args.rss_size, workdir, log)
            if "skipped" in rss:
                figures: tuple[int, int, float] | str = rss["skipped"]
                outcome = "n/a"
            else:
                figures = (rss["peak_rss"], rss["baseline_rss"], rss["size"] / rss["seconds"])
                outcome = rss_verdict(rss["size"], rss["peak_rss"])
            report.rss(out, args.rss_size, figures, TARGET_PEAK_RSS, TARGET_RSS_SIZE, outcome)
            passed = {"PASS": True, "FAIL": False}.get(outcome)  # None: no verdict
            results["rss"] = rss | {"target": TARGET_PEAK_RSS, "passed": passed}
        if args.json is not None:
            args.json.write_text(json.dumps(results, indent=2) + "\n")
    finally:
        datasets.empty_discarded()
        if own_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
