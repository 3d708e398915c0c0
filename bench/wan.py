"""Uploads over an emulated WAN: edgestore's client against the official tus clients.

    python -m bench.wan [--cc bbr,cubic] [--delay-ms 20] [--rate-mbit 500] [--loss 0.001]

Two network namespaces joined by the TUN delay line of ../shared/peers/wan (this kernel has no
netem): 2 x delay-ms RTT, rate-mbit bottleneck, random loss. The server runs in one namespace,
every client in the other, one fresh store per measured upload. Per congestion control:
edgestore's native client with 1 connection, 6, and its automatic choice; tuspy (one
stream); tus-js-client with parallelUploads 1 and 6 against edgestore. Single cubic streams
move 256 MiB (they crawl), everything else 1 GiB. Then the dedup runs: the same file again,
and a copy with 1 MiB inserted in the middle. Every upload is read back afterwards (over the
unimpaired path, outside its timing) and must hold the file's bytes, or its run counts as failed.
Traffic never leaves the two namespaces.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from rich.console import Console
from rich.table import Table

from bench import datasets, peers
from bench.datasets import MiB, ensure, format_size, parse_size

WAN_DIR = peers.SHARED_PEERS / "wan"
SERVER_IP = "10.99.0.6"
NS_C, NS_S = "tuswan-c", "tuswan-s"
CLIENT = ["ip", "netns", "exec", NS_C]
SERVER = ["ip", "netns", "exec", NS_S]


@contextmanager
def wan_link(args: argparse.Namespace, cc: str) -> Iterator[None]:
    delayline = Path(os.environ.get("DELAYLINE", "/tmp/peers/delayline"))
    if not delayline.exists():
        delayline.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["gcc", "-O2", "-o", str(delayline), str(WAN_DIR / "delayline.c")], check=True
        )
    env = {**os.environ, "DELAYLINE": str(delayline)}
    up = [
        "bash", str(WAN_DIR / "wan.sh"), "up",
        "--delay-ms", str(args.delay_ms), "--rate-mbit", str(args.rate_mbit),
        "--loss", str(args.loss), "--cc", cc,
    ]  # fmt: skip
    subprocess.run(up, check=True, env=env, stdout=subprocess.DEVNULL)
    try:
        yield
    finally:
        subprocess.run(["bash", str(WAN_DIR / "wan.sh"), "down"], env=env, capture_output=True)


class WanServer:
    """edgestore in the server namespace, with an API key for the clients."""

    def __init__(self, workdir: Path) -> None:
        self.home = workdir / f"wan-store-{time.monotonic_ns()}"
        self.port = 18800
        self.env = {
            **os.environ,
            "EDGESTORE_HOME": str(self.home),
            "EDGESTORE_LOG_LEVEL": "warning",
            "EDGESTORE_MAINTENANCE_INTERVAL_SECONDS": "0",
        }
        made = subprocess.run(
            [
                sys.executable,
                "-m",
                "edgestore",
                "keys",
                "create",
                "--name",
                "bench",
                "--scope",
                "admin",
            ],
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
        )
        self.key = made.stdout.strip().splitlines()[-1]
        self.proc = subprocess.Popen(
            [
                *SERVER,
                sys.executable,
                "-m",
                "edgestore",
                "serve",
                "--host",
                "0.0.0.0",
                "--port",
                str(self.port),
            ],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=open(workdir / "wan-server.log", "ab"),  # noqa: SIM115
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            probe = subprocess.run(
                [
                    *CLIENT,
                    "curl",
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    f"{self.url}/healthz",
                ],
                capture_output=True,
                text=True,
            )
            if probe.stdout == "200":
                return
            time.sleep(0.3)
        raise RuntimeError("edgestore did not start in the server namespace")

    @property
    def url(self) -> str:
        return f"http://{SERVER_IP}:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def new_chunks(self) -> int:
        """Chunks stored new so far (from /metrics, over the unimpaired path)."""
        text = subprocess.run(
            [
                *CLIENT,
                "curl",
                "-s",
                "-H",
                f"Authorization: Bearer {self.key}",
                f"http://10.99.0.2:{self.port}/metrics",
            ],
            capture_output=True,
            text=True,
        ).stdout
        for line in text.splitlines():
            if line.startswith('edgestore_chunks_total{result="new"}'):
                return int(float(line.split()[-1]))
        return 0

    def stored_digest(self, path: str) -> tuple[int, str]:
        """Length and SHA-256 of what a GET of `path` (an upload's or object's URL path)
        returns, read over the unimpaired path so that checking costs no WAN time."""
        h, n = hashlib.sha256(), 0
        with subprocess.Popen(
            [*CLIENT, "curl", "-sf", "-H", f"Authorization: Bearer {self.key}",
             f"http://10.99.0.2:{self.port}{path}"],
            stdout=subprocess.PIPE,
        ) as proc:  # fmt: skip
            assert proc.stdout is not None
            while piece := proc.stdout.read(4 * MiB):
                h.update(piece)
                n += len(piece)
        if proc.returncode != 0:
            raise OSError(f"GET {path} failed (curl exit {proc.returncode})")
        return n, h.hexdigest()

    def verify(self, path: str, file: Path) -> str:
        """'' when `path` holds exactly the file's bytes, else what is wrong (a failed run)."""
        if not path:
            return "the client did not say where it uploaded"
        try:
            n, digest = self.stored_digest(path)
        except OSError as exc:
            return f"stored upload unreadable: {exc}"[:300]
        size, sha = file.stat().st_size, _sha256_of(file)
        if (n, digest) != (size, sha):
            return f"stored {n} bytes, SHA-256 {digest[:16]}…; sent {size}, {sha[:16]}…"
        return ""

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.home, ignore_errors=True)


@functools.cache
def _sha256_of(file: Path) -> str:
    return datasets.sha256_of(file)


def wire_bytes() -> int:
    """Bytes the client namespace has sent over the emulated link (its TUN device)."""
    out = subprocess.run(
        [*CLIENT, "cat", "/sys/class/net/tunw/statistics/tx_bytes"], capture_output=True, text=True
    )
    return int(out.stdout.strip() or 0)


@dataclass
class Run:
    cc: str
    client: str
    size: int
    seconds: float = 0.0
    wire: int = 0
    failure: str = ""
    workers: int | None = None

    @property
    def rate(self) -> float:
        return self.size / self.seconds if self.seconds else 0.0


def native(server: WanServer, file: Path, workers: str) -> tuple[float, int | None, str]:
    started = time.monotonic()
    proc = subprocess.run(
        [*CLIENT, sys.executable, "-m", "edgestore", "upload", str(file), server.url,
         "--workers", workers, "--api-key", server.key, "--json", "--quiet"],
        capture_output=True, text=True, timeout=7200,
    )  # fmt: skip
    wall = time.monotonic() - started
    if proc.returncode != 0:
        return wall, None, (proc.stderr or proc.stdout)[-300:]
    result = json.loads(proc.stdout)
    if result.get("auto_levels"):
        steps = ", ".join(f"{n}: {r / 1e6:.1f} MB/s" for n, r in result["auto_levels"])
        print(f"   auto levels tried: {steps}", file=sys.stderr)
    failure = server.verify(f"/ids/{result['object_id']}?version={result['version']}", file)
    return float(result["seconds"]), int(result["workers"]), failure


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.wan", description=__doc__.split("\n\n")[0])
    p.add_argument("--cc", default="bbr,cubic", help="congestion controls to run")
    p.add_argument("--delay-ms", type=float, default=20, help="one-way delay (RTT is twice)")
    p.add_argument("--rate-mbit", type=float, default=500, help="bottleneck rate")
    p.add_argument("--loss", type=float, default=0.001, help="random loss per packet")
    p.add_argument("--size", default="1GiB", help="upload size")
    p.add_argument("--small", default="256MiB", help="size for single cubic streams")
    p.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="scratch dir (default: a temp dir, removed after a finished run)",
    )
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument(
        "--only",
        action="append",
        default=[],
        help="run only the runs whose name contains this (repeatable; e.g. --only auto "
        "--only dedup; default: all)",
    )
    args = p.parse_args(argv)
    only = [o.strip() for o in args.only if o.strip()]

    def wanted(name: str) -> bool:
        return not only or any(o in name for o in only)

    if os.geteuid() != 0:
        p.error("needs root (network namespaces)")
    node = peers.node_peers()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="edgestore-bench-wan-"))
    workdir.mkdir(parents=True, exist_ok=True)
    big = ensure("random", workdir, parse_size(args.size))
    small = ensure("random", workdir, parse_size(args.small))
    log = Console(stderr=True)
    out = Console()
    link = args.rate_mbit * 1e6 / 8
    runs: list[Run] = []

    def measured(
        cc: str, name: str, file: Path, action: Callable[[WanServer], tuple[float, int | None, str]]
    ) -> Run:
        run = Run(cc, name, file.stat().st_size)
        if not wanted(name):
            return run
        log.print(f"[{cc}] {name}, {format_size(run.size)}")
        server = WanServer(workdir)
        try:
            w0 = wire_bytes()
            run.seconds, run.workers, run.failure = action(server)
            run.wire = wire_bytes() - w0
        finally:
            server.stop()
        runs.append(run)
        return run

    Action = Callable[[WanServer], tuple[float, int | None, str]]

    def tus_js(file: Path, parallel: int) -> Action:
        def go(server: WanServer) -> tuple[float, int | None, str]:
            r = peers.run_tus_js(
                node,
                f"{server.url}/files/",
                file,
                50,
                parallel,
                headers=server.headers,
                prefix=CLIENT,
            )
            return r.seconds, parallel, r.detail or server.verify(urlsplit(r.url).path, file)

        return go

    def tuspy(file: Path) -> Action:
        def go(server: WanServer) -> tuple[float, int | None, str]:
            r = peers.run_tuspy(
                f"{server.url}/files/", file, 50, headers=server.headers, prefix=CLIENT
            )
            return r.seconds, 1, r.detail or server.verify(urlsplit(r.url).path, file)

        return go

    def ours(file: Path, workers: str) -> Action:
        return lambda server: native(server, file, workers)

    dedup: dict[str, float] | None = None
    for n, cc in enumerate(c.strip() for c in args.cc.split(",") if c.strip()):
        single = small.path if cc == "cubic" else big.path
        with wan_link(args, cc):
            measured(cc, "edgestore, 1 connection", single, ours(single, "1"))
            measured(cc, "edgestore, 6 connections", big.path, ours(big.path, "6"))
            measured(cc, "edgestore, auto", big.path, ours(big.path, "auto"))
            measured(cc, "tuspy", single, tuspy(single))
            measured(cc, "tus-js-client, parallelUploads 1", single, tus_js(single, 1))
            measured(cc, "tus-js-client, parallelUploads 6", big.path, tus_js(big.path, 6))
            if n == 0 and wanted("dedup"):
                dedup = dedup_runs(cc, big.path, workdir, log)

    _print(out, runs, link, dedup, args)
    if args.json:
        doc = {"runs": [r.__dict__ for r in runs], "link_bytes_per_s": link, "dedup": dedup}
        args.json.write_text(json.dumps(doc, indent=2))
    if args.workdir is None:  # a temp dir of our own: GiBs of generated data (kept on an error)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def dedup_runs(cc: str, file: Path, workdir: Path, log: Console) -> dict[str, float]:
    """First upload, the same file again, and a copy with 1 MiB inserted in the middle."""
    edited = workdir / "edited.bin"
    if not edited.exists():
        half = file.stat().st_size // 2
        with open(file, "rb") as src, open(edited, "wb") as dst:
            dst.write(src.read(half))
            dst.write(os.urandom(MiB))
            shutil.copyfileobj(src, dst, 4 * MiB)
    server = WanServer(workdir)
    try:
        log.print(f"[{cc}] dedup: first upload, same file again, then 1 MiB inserted")
        first, _, err = native(server, file, "auto")
        if err:
            raise RuntimeError(err)
        w0 = wire_bytes()
        again, _, err = native(server, file, "auto")
        if err:
            raise RuntimeError(err)
        wire_again = wire_bytes() - w0
        chunks0 = server.new_chunks()
        w0 = wire_bytes()
        edit_s, _, err = native(server, edited, "auto")
        if err:
            raise RuntimeError(err)
        wire_edit = wire_bytes() - w0
        edit_chunks = server.new_chunks() - chunks0
    finally:
        server.stop()
    size = file.stat().st_size
    return {
        "first_s": first,
        "again_s": again,
        "again_wire_fraction": wire_again / size,
        "edit_s": edit_s,
        "edit_wire_bytes": wire_edit,
        "edit_new_chunks": edit_chunks,
    }


def _print(
    out: Console,
    runs: list[Run],
    link: float,
    dedup: dict[str, float] | None,
    args: argparse.Namespace,
) -> None:
    title = (
        f"WAN: RTT {2 * args.delay_ms:g} ms, {args.rate_mbit:g} Mbit/s "
        f"({link / 1e6:.1f} MB/s), loss {args.loss:g}"
    )
    t = Table(title=title, title_justify="left")
    for col in ("cc", "client", "size", "MB/s", "% of link", "connections", "wire/size"):
        t.add_column(col)
    for r in runs:
        if r.failure:
            t.add_row(r.cc, r.client, format_size(r.size), "failed", r.failure[:40], "", "")
            continue
        share = f"{100 * r.rate / link:.0f}%"
        t.add_row(
            r.cc, r.client, format_size(r.size), f"{r.rate / 1e6:.1f}", share,
            str(r.workers or ""), f"{r.wire / r.size:.3f}",
        )  # fmt: skip
    out.print(t)

    def rate(cc: str, client: str) -> float | None:
        """The run's MB/s; None if it ran and failed; 0.0 if it was not asked for."""
        found = [r for r in runs if r.cc == cc and r.client == client]
        if not found:
            return 0.0
        return None if found[0].failure else found[0].rate

    checks = Table(title="targets (issue 4)", title_justify="left")
    for col in ("check", "measured", "target", ""):
        checks.add_column(col)

    def row(
        name: str, value: float | None, target: float, fmt: str = "{:.2f}", at_most: bool = False
    ) -> None:
        """value None: a run the check needs failed, so it is not measured: never a PASS."""
        ok = value is not None and (value <= target if at_most else value >= target)
        checks.add_row(
            name,
            "n/a" if value is None else fmt.format(value),
            ("≤ " if at_most else "≥ ") + fmt.format(target),
            "[green]PASS[/]" if ok else "[red]FAIL[/]",
        )

    def ratio(ours: float | None, theirs: float | None) -> float | None:
        return None if ours is None or theirs is None else ours / theirs

    # A check is shown when its runs were asked for (not left out by --only or --cc).
    bbr_auto = rate("bbr", "edgestore, auto")
    if bbr_auto != 0.0:
        row("bbr: edgestore auto, share of the link", ratio(bbr_auto, link), 0.85)
    auto = rate("cubic", "edgestore, auto")
    tuspy, js6 = rate("cubic", "tuspy"), rate("cubic", "tus-js-client, parallelUploads 6")
    if auto != 0.0 and tuspy != 0.0:
        row("cubic: edgestore auto / tuspy single stream", ratio(auto, tuspy), 5.0)
    if auto != 0.0 and js6 != 0.0:
        row("cubic: edgestore auto / tus-js-client parallelUploads 6", ratio(auto, js6), 1.3)
    if dedup:
        row(
            "same file again: bytes on the wire / file size",
            dedup["again_wire_fraction"],
            0.01,
            "{:.4f}",
            at_most=True,
        )
        row(
            "same file again: speed-up over the first upload",
            dedup["first_s"] / max(dedup["again_s"], 1e-9),
            10.0,
        )
        row("1 MiB inserted: chunks re-sent", dedup["edit_new_chunks"], 3, "{:.0f}", at_most=True)
    out.print(checks)


if __name__ == "__main__":
    raise SystemExit(main())
