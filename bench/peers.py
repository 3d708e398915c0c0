"""The peer tus servers and the official tus clients, installed and run for side-by-side runs.

* @tus/server + @tus/file-store and tus-js-client: npm packages, installed into
  bench/.peers/node from the peer scripts in ../shared/peers (package.json pins versions).
* tuspyserver (PyPI, a FastAPI tus router) in a venv of its own (bench/.peers/tuspyserver),
  so its pins never touch edgestore's.
* tuspy (the official Python client) comes with edgestore's dev dependencies.
* With a browser (`bench.tus --browser`): tus-js-client's browser build in headless Chromium,
  on the page and driver of the browser tests (tests/interop, `make npm`), served from an
  origin of its own; the servers then allow it by CORS, as a site serving browsers would.

Every server runs as a child process on a free loopback port; its CPU time and peak RSS are
read from /proc, so the figures cover the server alone, never the client. After each upload
(outside the timing) the bytes the server stored are read back and compared with the file:
edgestore's by a GET of the upload's URL, a peer's from the file it wrote. What a server
leaves for later (edgestore's upkeep: the whole-file SHA-256 of a concatenated upload) is done
once it stopped, and measured (`ServerRun.finish`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from bench.datasets import discard
from edgestore.config import load_settings

ROOT = Path(__file__).resolve().parent.parent
SHARED_PEERS = ROOT.parent / "shared" / "peers"
PEERS_DIR = ROOT / "bench" / ".peers"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_peers() -> Path:
    """bench/.peers/node with the peer scripts and their npm packages installed."""
    target = PEERS_DIR / "node"
    if not SHARED_PEERS.is_dir():
        raise SystemExit(f"peer scripts not found at {SHARED_PEERS} (../shared/peers)")
    target.mkdir(parents=True, exist_ok=True)
    for name in ("package.json", "tus-node-server.mjs", "tuspyserver_app.py"):
        shutil.copy2(SHARED_PEERS / name, target / name)
    shutil.copy2(ROOT / "bench" / "tuspyserver_cors_app.py", target / "tuspyserver_cors_app.py")
    # Our variant of the shared client script: the same, plus request headers ($TUS_HEADERS).
    shutil.copy2(ROOT / "bench" / "tus-js-upload.mjs", target / "tus-js-upload.mjs")
    if not (target / "node_modules" / "@tus" / "server").is_dir():
        subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=target,
            check=True,
        )
    return target


def tuspyserver_venv() -> Path:
    """A venv with tuspyserver and uvicorn; returns its bin directory."""
    venv = PEERS_DIR / "tuspyserver"
    bin_dir = venv / "bin"
    if not (bin_dir / "uvicorn").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(bin_dir / "pip"), "install", "--quiet", "tuspyserver", "uvicorn[standard]"],
            check=True,
            stderr=subprocess.DEVNULL,  # pip's warnings about unreachable extra indexes
        )
    return bin_dir


@dataclass(frozen=True)
class DeferredWork:
    """Work a server left for later after its uploads, done and measured by the benchmark."""

    versions: int  # whole-file digests computed
    seconds: float
    cpu: float  # CPU seconds of every thread that did it


NOTHING_DEFERRED = DeferredWork(0, 0.0, 0.0)


def edgestore_deferred_work(home: Path) -> DeferredWork:
    """What edgestore's upkeep does after an upload, done now the way it does it: the
    whole-file SHA-256 of each concatenated (tus parallel) upload, read back from the store
    (maintenance.hashes). The benchmark's servers run without their upkeep, so without this
    that work, a read-back and a hash of every byte, was in no figure. Runs in this process
    on the stopped server's store: nothing else runs here meanwhile, so its CPU is the work's.
    """
    from edgestore.engine import Engine
    from edgestore.maintenance.hashes import DigestCursor, fill_missing_sha256

    with Engine.open(load_settings(home=home)) as engine:
        w0, c0 = time.perf_counter(), time.process_time()  # all threads, not in clock ticks
        versions, cursor = 0, DigestCursor()
        while True:  # each round takes the next versions; a round that reaches the end stops
            versions += fill_missing_sha256(engine, limit=100, cursor=cursor)
            if cursor.after is None:
                break
        seconds, cpu = time.perf_counter() - w0, time.process_time() - c0
    return DeferredWork(versions, seconds, cpu) if versions else NOTHING_DEFERRED


@dataclass
class ServerRun:
    """A server process under measurement."""

    name: str
    argv: list[str]
    endpoint_path: str
    cwd: Path
    env: dict[str, str] = field(default_factory=dict)
    data: Path | None = None  # where the server stores uploads: removed by stop()
    # How a finished upload is read back: a GET of its URL (edgestore), else the peer's file
    # named by the URL's last segment in `data` (@tus/file-store, tuspyserver).
    download_by_get: bool = False
    # The work it leaves for later on its data (edgestore_deferred_work), done by finish().
    deferred: Callable[[Path], DeferredWork] | None = None
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    _discarded: bool = field(default=False, init=False, repr=False)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.endpoint_path}"

    def start(self, log: Path, timeout: float = 60) -> ServerRun:
        argv = [a.replace("{port}", str(self.port)) for a in self.argv]
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                argv,
                cwd=self.cwd,
                env={**os.environ, **self.env},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start; see {log}")
            try:
                httpx.options(self.endpoint, headers={"Tus-Resumable": "1.0.0"}, timeout=1)
                return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not start within {timeout}s; see {log}")

    def cpu_seconds(self) -> float:
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime

    def peak_rss(self) -> int:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return 0

    def stored(self, url: str) -> tuple[int, str]:
        """The length and SHA-256 of what the server stored for the upload at `url`."""
        h, n = hashlib.sha256(), 0
        if self.download_by_get:
            with httpx.stream("GET", url, timeout=600) as r:
                r.raise_for_status()
                for piece in r.iter_bytes(4 * 1024 * 1024):
                    h.update(piece)
                    n += len(piece)
            return n, h.hexdigest()
        if self.data is None:
            raise RuntimeError(f"{self.name}: where its uploads are stored is not known")
        name = urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1]
        with open(self.data / name, "rb") as f:
            while piece := f.read(4 * 1024 * 1024):
                h.update(piece)
                n += len(piece)
        return n, h.hexdigest()

    def verify(self, url: str, size: int, sha256: str) -> str:
        """'' when the upload at `url` holds exactly the file's bytes, else what is wrong."""
        if not url:
            return "the client did not say where it uploaded"
        try:
            n, digest = self.stored(url)
        except (OSError, httpx.HTTPError) as exc:
            return f"stored upload unreadable: {exc}"[:300]
        if (n, digest) != (size, sha256):
            return f"stored {n} bytes, SHA-256 {digest[:16]}…; sent {size}, {sha256[:16]}…"
        return ""

    def halt(self) -> None:
        """Stop the process; its data stays."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)

    def finish(self) -> DeferredWork:
        """Stop the process, then do (and measure) the work it left for later on its data;
        call stop() afterwards to remove the data."""
        self.halt()
        if self.deferred is None or self.data is None or self._discarded:
            return NOTHING_DEFERRED
        return self.deferred(self.data)

    def stop(self) -> None:
        self.halt()
        if self.data is not None and not self._discarded:
            self._discarded = True
            discard(self.data)  # deleted now or when the benchmark ends (datasets.discard)


def edgestore_server(workdir: Path, extra_env: dict[str, str] | None = None) -> ServerRun:
    home = workdir / f"edgestore-{time.monotonic_ns()}"
    return ServerRun(
        "edgestore",
        [sys.executable, "-m", "edgestore", "serve", "--port", "{port}", *EDGESTORE_SERVE_FLAGS],
        "/files/",
        ROOT,
        data=home,
        download_by_get=True,
        deferred=edgestore_deferred_work,
        env={
            "EDGESTORE_HOME": str(home),
            "EDGESTORE_LOG_LEVEL": "warning",
            "EDGESTORE_MAINTENANCE_INTERVAL_SECONDS": "0",
            **(extra_env or {}),
        },
    )


# A benchmark server on loopback needs no credentials (`--no-auth` refuses other addresses).
EDGESTORE_SERVE_FLAGS: list[str] = ["--no-auth"]


def node_server(workdir: Path, peers: Path) -> ServerRun:
    files = workdir / f"node-files-{time.monotonic_ns()}"
    files.mkdir(parents=True)
    return ServerRun(
        "@tus/server",
        ["node", str(peers / "tus-node-server.mjs"), "{port}", str(files)],
        "/files",
        peers,
        data=files,
    )


def tuspyserver_server(
    workdir: Path, peers: Path, bin_dir: Path, *, cors: bool = False
) -> ServerRun:
    """`cors`: the same app behind FastAPI's CORSMiddleware, for a browser client."""
    files = workdir / f"tuspyserver-files-{time.monotonic_ns()}"
    files.mkdir(parents=True)
    return ServerRun(
        "tuspyserver",
        [
            str(bin_dir / "uvicorn"),
            "tuspyserver_cors_app:app" if cors else "tuspyserver_app:app",
            "--port",
            "{port}",
            "--log-level",
            "warning",
        ],
        "/files",
        peers,
        env={"TUSPYSERVER_DIR": str(files)},
        data=files,
    )


@dataclass(frozen=True)
class ClientResult:
    seconds: float
    ok: bool
    detail: str = ""
    url: str = ""  # the upload's URL, to verify what the server stored


def run_tus_js(
    peers: Path,
    endpoint: str,
    file: Path,
    chunk_mib: int,
    parallel: int,
    *,
    headers: dict[str, str] | None = None,
    prefix: list[str] | None = None,
) -> ClientResult:
    """tus-js-client (Node): one JSON line on success. `prefix` runs it elsewhere (a netns)."""
    started = time.monotonic()
    proc = subprocess.run(
        [
            *(prefix or []),
            "node",
            str(peers / "tus-js-upload.mjs"),
            endpoint,
            str(file),
            str(chunk_mib),
            str(parallel),
        ],
        capture_output=True,
        text=True,
        timeout=3600,
        env={**os.environ, "TUS_HEADERS": json.dumps(headers or {})},
    )
    wall = time.monotonic() - started
    if proc.returncode != 0:
        return ClientResult(wall, False, (proc.stderr or proc.stdout).strip()[-300:])
    line = json.loads(proc.stdout.strip().splitlines()[-1])
    return ClientResult(float(line["seconds"]), True, url=str(line.get("url") or ""))


TUSPY_SCRIPT = """
import json, os, sys, time
from tusclient import client
endpoint, path, chunk = sys.argv[1], sys.argv[2], int(sys.argv[3])
headers = json.loads(os.environ.get("TUS_HEADERS", "{}"))
t0 = time.monotonic()
up = client.TusClient(endpoint, headers=headers).uploader(
    path, chunk_size=chunk, metadata={"filename": path.rsplit("/", 1)[-1]}
)
up.upload()
seconds = time.monotonic() - t0
print(json.dumps({"seconds": seconds, "url": up.url}))
"""


def run_tuspy(
    endpoint: str,
    file: Path,
    chunk_mib: int,
    *,
    headers: dict[str, str] | None = None,
    prefix: list[str] | None = None,
) -> ClientResult:
    """tuspy, the official Python client (single stream)."""
    started = time.monotonic()
    proc = subprocess.run(
        [
            *(prefix or []),
            sys.executable,
            "-c",
            TUSPY_SCRIPT,
            endpoint,
            str(file),
            str(chunk_mib * 1024 * 1024),
        ],
        capture_output=True,
        text=True,
        timeout=7200,
        env={**os.environ, "TUS_HEADERS": json.dumps(headers or {})},
    )
    wall = time.monotonic() - started
    if proc.returncode != 0:
        return ClientResult(wall, False, proc.stderr.strip()[-300:])
    line = json.loads(proc.stdout.strip().splitlines()[-1])
    return ClientResult(float(line["seconds"]), True, url=str(line.get("url") or ""))


BROWSER_DIR = ROOT / "tests" / "interop"  # the browser tests' page and driver


def chromium() -> str | None:
    """Chromium's path ($CHROMIUM, else on PATH), or None."""
    names = ("chromium", "chromium-browser", "google-chrome")
    return os.environ.get("CHROMIUM") or next(filter(None, map(shutil.which, names)), None)


class PageServer:
    """The browser tests' page and the clients' browser builds, on a loopback origin of their
    own (so every upload request is a cross-origin one, as from a real site)."""

    def __init__(self) -> None:
        handler = functools.partial(_QuietHandler, directory=str(BROWSER_DIR))
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        self.origin = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self.page = f"{self.origin}/browser_page.html"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def drive_browser(
    chromium_path: str, page: str, file: Path, steps: list[dict[str, object]], timeout: float
) -> tuple[list[dict[str, Any]], subprocess.CompletedProcess[str]]:
    """Run the page's steps in one headless Chromium tab (tests/interop/browser_upload.mjs):
    the JSON line of each step that ran, and the finished driver process."""
    opts = {"chromium": chromium_path, "page": page, "file": str(file), "steps": steps}
    proc = subprocess.run(
        ["node", str(BROWSER_DIR / "browser_upload.mjs"), json.dumps(opts)],
        cwd=BROWSER_DIR,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")], proc


def run_browser(
    chromium_path: str, page: str, endpoint: str, file: Path, chunk_mib: int, parallel: int
) -> ClientResult:
    """tus-js-client's browser build in headless Chromium, the file picked in the page's file
    input; the time is the page's own, from start() to onSuccess (not the browser's start)."""
    upload = {
        "endpoint": endpoint,
        "chunkSize": chunk_mib * 1024 * 1024,
        "parallelUploads": parallel,
    }
    started = time.monotonic()
    lines, proc = drive_browser(
        chromium_path, page, file, [{"call": "tusUpload", "args": upload}], timeout=7200
    )
    wall = time.monotonic() - started
    if not lines or "result" not in lines[0]:
        detail = lines[0].get("error", "") if lines else proc.stderr.strip()[-300:]
        return ClientResult(wall, False, str(detail)[-300:] or "failed")
    result = lines[0]["result"]
    return ClientResult(float(result["seconds"]), True, url=str(result.get("url") or ""))
