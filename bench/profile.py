"""One tus upload to edgestore, seen from outside: where did the time go?

bench.tus compares servers; this answers the first question about any change to the upload
path on one setup: is the server short of CPU, waiting for the disk, or waiting for its
client? For each upload (tus-js-client, as in bench.tus) it prints MB/s, the server's and the
client's CPU seconds per GB, how idle the machine was, and how busy the data's disk was and
what was written to it. Run it on two checkouts (`--src`, e.g. a worktree of the commit
before a change) in turns, and compare medians: this kind of machine drifts by ~10% between
identical runs.

    python -m bench.profile --size 1GiB                # one upload of random data
    python -m bench.profile --parallel 4 --again       # parallelUploads 4, then the same again
    python -m bench.profile --src /tmp/old --repeat 3  # the server from another checkout

A parallel upload's whole-file SHA-256 is left to the server's upkeep (a read-back): it is
done once the server stopped and printed on a line of its own (with --src, by this
checkout's code). The store of each run is kept until the end (deleting thousands of shard
files right before a measurement taxes it, see datasets.discard).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench import datasets, peers


@dataclass(frozen=True)
class Sample:
    """Counters read at one moment: CPU of server and children, machine, disk."""

    server_cpu: float
    children_cpu: float
    idle_ticks: int
    total_ticks: int
    disk_busy_ms: int
    disk_written: int

    @classmethod
    def take(cls, server: peers.ServerRun, disk: tuple[int, int] | None) -> Sample:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:]]
        busy_ms, written = _disk_counters(disk) if disk else (0, 0)
        return cls(
            server.cpu_seconds(),
            usage.ru_utime + usage.ru_stime,
            ticks[3] + ticks[4],  # idle + iowait
            sum(ticks),
            busy_ms,
            written,
        )


@dataclass(frozen=True)
class Run:
    label: str
    ok: bool
    size: int
    seconds: float  # as the client timed the upload
    wall: float
    before: Sample
    after: Sample
    detail: str = ""

    def per_gb(self, field: str) -> float:
        return (getattr(self.after, field) - getattr(self.before, field)) / (self.size / 1e9)

    @property
    def rate(self) -> float:
        return self.size / self.seconds

    @property
    def idle(self) -> float:
        total = self.after.total_ticks - self.before.total_ticks
        return (self.after.idle_ticks - self.before.idle_ticks) / total if total else 0.0

    @property
    def disk_busy(self) -> float:
        return (self.after.disk_busy_ms - self.before.disk_busy_ms) / 1000 / self.wall

    @property
    def disk_written(self) -> int:
        return self.after.disk_written - self.before.disk_written


def disk_of(path: Path) -> tuple[int, int] | None:
    """(major, minor) of the block device holding path, if /proc/diskstats lists it."""
    st = os.stat(path)
    dev = (os.major(st.st_dev), os.minor(st.st_dev))
    try:
        with open("/proc/diskstats") as f:
            listed = {(int(p[0]), int(p[1])) for p in (line.split() for line in f)}
    except OSError:
        return None
    return dev if dev in listed else None


def _disk_counters(disk: tuple[int, int]) -> tuple[int, int]:
    """(ms the device was busy, bytes written) so far."""
    with open("/proc/diskstats") as f:
        for line in f:
            p = line.split()
            if (int(p[0]), int(p[1])) == disk:
                return int(p[12]), int(p[9]) * 512
    return 0, 0


def upload(
    server: peers.ServerRun,
    node: Path,
    file: Path,
    label: str,
    *,
    chunk_mib: int,
    parallel: int,
    disk: tuple[int, int] | None,
    perf: Path | None = None,
    sha256: str = "",
) -> Run:
    """One tus-js-client upload of file, measured from outside both processes; then (untimed,
    with `sha256`, the file's) what the server stored is compared with the file."""
    recorder = None
    if perf is not None:
        assert server.proc is not None
        recorder = subprocess.Popen(
            ["perf", "record", "-g", "-o", str(perf), "-p", str(server.proc.pid)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.5)  # perf attaches before the first byte
    before, started = Sample.take(server, disk), time.monotonic()
    result = peers.run_tus_js(node, server.endpoint, file, chunk_mib, parallel)
    after, wall = Sample.take(server, disk), time.monotonic() - started
    if recorder is not None:
        recorder.send_signal(2)  # SIGINT: perf writes its file and exits
        recorder.wait(60)
    size = file.stat().st_size
    wrong = server.verify(result.url, size, sha256) if result.ok and sha256 else ""
    detail = wrong or result.detail
    return Run(label, result.ok and not wrong, size, result.seconds, wall, before, after, detail)


def _print(console: Console, runs: list[Run], title: str) -> None:
    table = Table(title=title)
    table.add_column("upload")
    for name in ("MB/s", "server CPU-s/GB", "client CPU-s/GB", "idle", "disk busy", "written"):
        table.add_column(name, justify="right")
    for r in runs:
        if not r.ok:
            table.add_row(r.label, "failed", r.detail[-80:], "", "", "", "")
            continue
        table.add_row(
            r.label,
            f"{r.rate / 1e6:,.0f}",
            f"{r.per_gb('server_cpu'):.2f}",
            f"{r.per_gb('children_cpu'):.2f}",
            f"{r.idle:.0%}",
            f"{r.disk_busy:.0%}",
            f"{r.disk_written / r.size:.2f}x",
        )
    console.print(table)
    for label in dict.fromkeys(r.label for r in runs if r.ok):
        same = [r for r in runs if r.ok and r.label == label]
        if len(same) > 1:
            console.print(
                f"{label}: median {statistics.median(r.rate for r in same) / 1e6:,.0f} MB/s, "
                f"{statistics.median(r.per_gb('server_cpu') for r in same):.2f} server CPU-s/GB "
                f"({len(same)} runs)"
            )
    console.print(
        "[dim]client: tus-js-client in Node, on the same cores. idle: the machine's cores "
        "during the upload. disk busy, written (per byte uploaded): the device holding the "
        "work dir (shards, staged tails, the database).[/]"
    )


def deferred_line(repeat: int, work: peers.DeferredWork, uploaded: int) -> str:
    """The work a repeat's server left for later, per GB it was sent (see peers.DeferredWork)."""
    gb = uploaded / 1e9
    return (
        f"repeat {repeat}: the server left the whole-file SHA-256 of {work.versions} "
        f"concatenation(s) to its upkeep (a read-back): {work.seconds:.1f} s and "
        f"{work.cpu / gb:.2f} CPU-s/GB more, not in the table's server CPU-s/GB"
    )


def _runs(args: argparse.Namespace, workdir: Path) -> tuple[list[Run], str, list[str]]:
    """Every upload the options ask for, each repeat on a fresh store; the title; and a line
    per repeat whose server left work for later (done and measured once it stopped)."""
    file = args.file or datasets.ensure("random", workdir, datasets.parse_size(args.size)).path
    node = peers.node_peers()
    sha256 = datasets.sha256_of(file)  # every upload is verified against it (untimed)
    disk = disk_of(workdir)
    runs: list[Run] = []
    later: list[str] = []
    for i in range(args.repeat):
        server = peers.edgestore_server(workdir)
        if args.src is not None:
            server.cwd = args.src
        server.start(workdir / "server.log")
        try:
            last = i == args.repeat - 1
            runs.append(
                upload(
                    server, node, file, "first" if args.again else "upload",
                    chunk_mib=args.chunk_mib, parallel=args.parallel, disk=disk,
                    perf=args.perf if last and not args.again else None, sha256=sha256,
                )
            )  # fmt: skip
            if args.again:
                runs.append(
                    upload(
                        server, node, file, "same file again",
                        chunk_mib=args.chunk_mib, parallel=args.parallel, disk=disk,
                        perf=args.perf if last else None, sha256=sha256,
                    )
                )  # fmt: skip
            work = server.finish()
            if work.versions:
                sent = file.stat().st_size * (2 if args.again else 1)
                later.append(deferred_line(i + 1, work, sent))
        finally:
            server.stop()
    what = f"{datasets.format_size(file.stat().st_size)} of {file.name}"
    setup = f"parallelUploads {args.parallel}, {args.chunk_mib} MiB requests"
    return runs, f"edgestore ← tus-js-client: {what}, {setup}", later


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.profile", description=__doc__.split("\n\n")[0]
    )
    p.add_argument(
        "--file", type=Path, default=None, help="upload this file (default: random data)"
    )
    p.add_argument("--size", default="1GiB", help="random data to generate without --file")
    p.add_argument("--parallel", type=int, default=1, help="tus-js-client parallelUploads")
    p.add_argument("--chunk-mib", type=int, default=50, help="request size, MiB (default 50)")
    p.add_argument("--again", action="store_true", help="then upload the same file again")
    p.add_argument("--repeat", type=int, default=1, help="runs, each on a fresh store")
    p.add_argument("--src", type=Path, default=None, help="run the server from this checkout")
    p.add_argument("--perf", type=Path, default=None, help="perf record the server's last upload")
    p.add_argument("--workdir", type=Path, default=None, help="scratch dir (default: a temp dir)")
    args = p.parse_args(argv)
    if args.parallel < 1 or args.chunk_mib < 1 or args.repeat < 1:
        p.error("--parallel, --chunk-mib and --repeat must be at least 1")
    if args.file is None:
        try:
            datasets.parse_size(args.size)
        except ValueError as exc:
            p.error(str(exc))
    if args.file is not None and not args.file.is_file():
        p.error(f"--file {args.file} is not a file")
    if args.src is not None and not (args.src / "edgestore" / "__init__.py").is_file():
        p.error(f"--src {args.src} is not an edgestore checkout")
    if args.perf is not None and shutil.which("perf") is None:
        p.error("--perf needs perf (linux-perf) on PATH")
    console = Console(width=max(100, shutil.get_terminal_size().columns))
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="edgestore-bench-profile-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        runs, title, later = _runs(args, workdir)
    finally:
        datasets.empty_discarded()
        if args.workdir is None:  # a temp dir of our own, generated data and all
            shutil.rmtree(workdir, ignore_errors=True)
    _print(console, runs, title)
    for line in later:
        console.print(line)
    if args.perf is not None:
        console.print(f"perf data of the server: {args.perf} (perf report -i {args.perf})")
    return 0 if all(r.ok for r in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
