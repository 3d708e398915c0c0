"""tus upload benchmark: edgestore against @tus/server and tuspyserver, same clients, same run.

    python -m bench.tus [--size 2GiB] [--repeat 3] [--data random,text] [--rss-uploads 8]
                        [--chunk-mib 50] [--no-disk] [--browser]

For each data set, each server runs fresh (empty store) per measured upload, and receives the
same files from the same clients: tus-js-client (chunkSize 50 MiB, parallelUploads 1 and 4)
and tuspy (50 MiB chunks). Printed per run: MB/s (median of the repeats), the server's CPU
seconds per GB and its peak RSS; then the issue's targets as ratios with PASS/FAIL. Every
upload is verified afterwards (untimed): what the server stored must be the file, byte for
byte (peers.ServerRun.verify); a run that is not counts as failed. The data file is read
through once before each upload, so every client reads it from the page cache alike. Each
client's uploads to the servers follow each other, the servers taking turns at going first
(`run_order`). Work a server leaves for later (edgestore's upkeep hashes a concatenation, the
parallel uploads, by reading it back) is done once it stopped, and its CPU is counted as the
server's; the MB/s are as the client saw them (its seconds are printed below the table).
Everything runs on loopback; the client shares the two cores with the server, as in the
figures quoted in the issue. `--browser` adds tus-js-client's browser build in headless
Chromium (the browser tests' page, from an origin of its own; every server allows it by CORS),
the client most uploads come from; it is not among the issue's targets.

The disk line: the peers write each byte once, to the page cache, unsynced; edgestore writes
its shards (1.5x the stored bytes with 6+3) and flushes them before it acknowledges. So, per
data set, the bench also writes the file's shards the way the engine lays them out (bench
/stages.py: a syncfs per chunk) and prints the raw bytes per second the disk took that way:
no tus server doing edgestore's work on this disk can ingest that data faster.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

from rich.console import Console

from bench import peers, stages
from bench.datasets import (
    KINDS,
    empty_discarded,
    ensure,
    ensure_free,
    format_size,
    parse_size,
    settle,
    sha256_of,
    warm,
)
from bench.peers import ClientResult, ServerRun
from bench.tus_report import CHUNK_MIB, Measure, measure_of, print_results, targets
from edgestore.config import load_settings

BROWSER = "tus-js-client (Chromium)"


def measure(
    make_server: Callable[[], ServerRun],
    upload: Callable[[str], ClientResult],
    data: Path,
    sha256: str,
    m: Measure,
    logs: Path,
    *,
    before: Callable[[str], ClientResult] | None = None,
) -> None:
    """One repeat: a fresh server, optionally a first upload, then the measured one; then,
    untimed, what the server stored of each is compared with `data` (SHA-256 `sha256`). A
    repeat that stored other bytes is a failure, not a figure. Then the server stops and
    what it left for later is done: its CPU counts as the server's (ServerRun.finish)."""
    size = data.stat().st_size
    safe = m.server.replace("/", "_").replace("@", "")
    ensure_free(logs, 2 * size)  # shards are 1.5x the data with 6+3, the peers' files 1x
    server = make_server().start(logs / f"{safe}-{time.monotonic_ns()}.log")
    try:
        uploads: list[ClientResult] = []
        if before is not None:
            first = before(server.endpoint)
            if not first.ok:
                m.failure = first.detail
                return
            uploads.append(first)
        warm(data)  # every client reads the file from the page cache alike
        settle()
        cpu0 = server.cpu_seconds()
        result = upload(server.endpoint)
        cpu1 = server.cpu_seconds()
        if not result.ok:
            m.failure = result.detail or "failed"
            return
        rss = server.peak_rss()  # before the reads of the verification below
        for done in (*uploads, result):
            wrong = server.verify(done.url, size, sha256)
            if wrong:
                m.failure = wrong
                return
        deferred = server.finish()
        m.rates.append(size / result.seconds)
        m.cpu_per_gb.append((cpu1 - cpu0 + deferred.cpu) / (size / 1e9))
        m.deferred_cpu_per_gb.append(deferred.cpu / (size / 1e9))
        m.deferred_seconds.append(deferred.seconds)
        m.peak_rss.append(rss)
    finally:
        server.stop()


def concurrent_rss(
    workdir: Path, node: Path, files: list[Path], logs: Path, chunk_mib: int = CHUNK_MIB
) -> tuple[int, float]:
    """Peak RSS of edgestore while len(files) tus-js-client uploads run at once."""
    from concurrent.futures import ThreadPoolExecutor

    server = peers.edgestore_server(workdir).start(logs / "edgestore-concurrent.log")
    try:
        started = time.monotonic()
        with ThreadPoolExecutor(len(files)) as pool:
            results = list(
                pool.map(lambda f: peers.run_tus_js(node, server.endpoint, f, chunk_mib, 1), files)
            )
        wall = time.monotonic() - started
        if not all(r.ok for r in results):
            raise RuntimeError(
                f"concurrent uploads failed: {[r.detail for r in results if not r.ok]}"
            )
        rss = server.peak_rss()  # before the verification's reads
        for f, r in zip(files, results, strict=True):
            wrong = server.verify(r.url, f.stat().st_size, sha256_of(f))
            if wrong:
                raise RuntimeError(f"concurrent upload of {f.name}: {wrong}")
        return rss, sum(f.stat().st_size for f in files) / wall
    finally:
        server.stop()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.tus", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="2GiB", help="bytes per upload (default 2GiB)")
    p.add_argument("--repeat", type=int, default=3, help="runs per figure; medians are printed")
    p.add_argument("--data", default="random,text", help="data sets: random,text")
    p.add_argument("--rss-uploads", type=int, default=8, help="concurrent 1 GiB uploads (0 skips)")
    p.add_argument("--rss-size", default="1GiB", help="size of each concurrent upload")
    p.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="scratch dir (default: a temp dir, removed after a finished run)",
    )
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument(
        "--chunk-mib",
        type=int,
        default=CHUNK_MIB,
        help=f"request size of the clients, MiB (default {CHUNK_MIB}, as in the issue)",
    )
    p.add_argument(
        "--no-disk", action="store_true", help="skip measuring what the disk takes (see above)"
    )
    p.add_argument(
        "--browser",
        action="store_true",
        help="also upload from headless Chromium (needs chromium and `make npm`)",
    )
    args = p.parse_args(argv)
    if args.chunk_mib < 1:
        p.error("--chunk-mib must be at least 1")
    try:  # both now: a bad --rss-size found after hours of measurements lost them all
        size, each = parse_size(args.size), parse_size(args.rss_size)
    except ValueError as exc:
        p.error(str(exc))
    kinds = [k.strip() for k in args.data.split(",") if k.strip()]
    for k in kinds:
        if k not in KINDS:
            p.error(f"unknown data set {k!r}")
    chromium = peers.chromium() if args.browser else None
    if args.browser:
        if chromium is None:
            p.error("--browser needs Chromium (apt-get install chromium, or set CHROMIUM)")
        if not (peers.BROWSER_DIR / "node_modules" / "playwright-core").is_dir():
            p.error("--browser needs the browser tests' npm packages: run `make npm`")
    out = Console(width=None if sys.stdout.isatty() else 132)  # a log file: no wrapping
    log = Console(stderr=True)
    node = peers.node_peers()
    tuspy_bin = peers.tuspyserver_venv()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="edgestore-bench-tus-"))
    workdir.mkdir(parents=True, exist_ok=True)
    logs = workdir / "logs"
    logs.mkdir(exist_ok=True)

    servers: dict[str, Callable[[], ServerRun]] = {
        "edgestore": lambda: peers.edgestore_server(workdir),
        "@tus/server": lambda: peers.node_server(workdir, node),
        "tuspyserver": lambda: peers.tuspyserver_server(workdir, node, tuspy_bin),
    }
    # For the browser: each server as a site serving browsers runs it, allowing them by CORS
    # (@tus/server does by default).
    cors_servers: dict[str, Callable[[], ServerRun]] = {
        **servers,
        "edgestore": lambda: peers.edgestore_server(workdir, {"EDGESTORE_CORS_ORIGINS": "*"}),
        "tuspyserver": lambda: peers.tuspyserver_server(workdir, node, tuspy_bin, cors=True),
    }
    page = peers.PageServer() if chromium is not None else None
    results: list[Measure] = []
    disk: dict[str, float] = {}  # raw bytes per second of shard writes, per data set
    mib = args.chunk_mib
    for kind in kinds:
        ds = ensure(kind, workdir, size)
        sha256 = sha256_of(ds.path)  # to verify every upload (untimed)
        if not args.no_disk:
            log.print(f"[{kind} {format_size(size)}] shards written the engine's way…")
            disk[kind] = disk_rate(ds.path, workdir)
        clients: dict[str, Callable[[str], ClientResult]] = {
            "tus-js-client": lambda e, f=ds.path: peers.run_tus_js(node, e, f, mib, 1),
            "tus-js-client x4": lambda e, f=ds.path: peers.run_tus_js(node, e, f, mib, 4),
            "tuspy": lambda e, f=ds.path: peers.run_tuspy(e, f, mib),
        }
        if page is not None and chromium is not None:  # from its page, in Chromium
            clients[BROWSER] = lambda e, f=ds.path, c=chromium, pg=page.page: peers.run_browser(
                c, pg, e, f, mib, 1
            )
        for rep in range(args.repeat):
            for server_name, client_name in run_order(list(servers), list(clients), rep):
                m = measure_of(results, server_name, client_name, kind)
                if m.failure:
                    continue
                step = f"{rep + 1}/{args.repeat}"
                log.print(f"[{kind} {format_size(size)}] {step} {server_name} ← {client_name}")
                make = (cors_servers if client_name == BROWSER else servers)[server_name]
                measure(make, clients[client_name], ds.path, sha256, m, logs)
            # the same file a second time into the same store: dedup
            m = measure_of(results, "edgestore", "tus-js-client, same file again", kind)
            log.print(f"[{kind}] {rep + 1}/{args.repeat} edgestore ← same file twice")
            measure(
                servers["edgestore"],
                clients["tus-js-client"],
                ds.path,
                sha256,
                m,
                logs,
                before=clients["tus-js-client"],
            )

    concurrent: dict[str, object] = {}
    if args.rss_uploads:
        concurrent = {"uploads": args.rss_uploads, "each": each}
        # The measurements that kept stores are over: make room for the files and the store.
        empty_discarded()
        needed = int(args.rss_uploads * each * 2.5)  # the files, and 1.5x of them as shards
        free = ensure_free(workdir, needed)
        if free < needed:
            concurrent["failure"] = (
                f"skipped: needs {format_size(needed)} free in {workdir}, has {format_size(free)}"
            )
        else:
            files = []
            for i in range(args.rss_uploads):
                (workdir / f"c{i}").mkdir(exist_ok=True)
                files.append(ensure("random", workdir / f"c{i}", each).path)
            log.print(f"edgestore ← {args.rss_uploads} concurrent uploads of {format_size(each)}")
            try:
                rss, rate = concurrent_rss(workdir, node, files, logs, mib)
                concurrent.update(peak_rss=rss, aggregate_rate=rate)
            except RuntimeError as exc:  # report it beside the other figures, not instead
                concurrent["failure"] = str(exc)[:300]
            for f in files:
                f.unlink(missing_ok=True)

    if page is not None:
        page.close()
    empty_discarded()
    checks = targets(results, kinds, concurrent)
    print_results(out, results, kinds, size, concurrent, checks, disk, mib)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "size": size,
                    "results": [asdict(m) for m in results],
                    "concurrent": concurrent,
                    "checks": checks,
                    "chunk_mib": mib,
                    "disk_rate": disk,
                },
                indent=2,
            )
        )
    if args.workdir is None:  # a temp dir of our own: GiBs of generated data (kept on an error)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def run_order(servers: list[str], clients: list[str], rep: int) -> list[tuple[str, str]]:
    """(server, client) in the order repeat `rep` runs them: client by client, so the runs a
    ratio compares (the servers under one client) follow each other while the disk drifts,
    and the servers in turns, a different one first each repeat, so that none always runs
    after the same neighbour (its dirty pages, its deleted store) or always first."""
    turn = rep % len(servers) if servers else 0
    order = servers[turn:] + servers[:turn]
    return [(server, client) for client in clients for server in order]


def disk_rate(path: Path, workdir: Path) -> float:
    """Raw bytes of `path` per wall second of writing its shards (bench/stages.py)."""
    settings = load_settings(home=workdir / "settings-only")
    run = stages.run_stages(path, settings, workdir / "stage-shards")
    return run.rate(stages.SHARD_WRITE)


if __name__ == "__main__":
    raise SystemExit(main())
