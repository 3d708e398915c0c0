"""Run the real `edgestore serve` in a subprocess on a free loopback port, for HTTP tests."""

from __future__ import annotations

import os
import resource
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.crashpoints import child_env
from tests.crashpoints import command as crash_command


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerProcess:
    """A running server: `url` is its base URL; `restart()` and `kill()` for crash tests.

    Like a developer's local server, it runs `serve --no-auth` on loopback and without
    per-client rate or concurrency limits, so protocol tests need no credentials and never
    meet a 429. Access-control tests pass `auth=True` (and limits through `env_extra`).
    `admin_key` is an admin API key either way (EDGESTORE_ADMIN_KEY), and `client()` sends it.
    """

    home: Path
    database_url: str
    env_extra: dict[str, str] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    auth: bool = False
    admin_key: str | None = field(default_factory=lambda: "esk_test_" + secrets.token_urlsafe(32))
    scheme: str = "http"  # "https" with --certfile/--keyfile in args
    # A point (tests/crashpoints.py) at which the next start()'s process kill -9s itself.
    crash_at: dict[str, object] | None = None
    open_files: int | None = None  # the process's RLIMIT_NOFILE (soft and hard), as `ulimit -n`

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_key}"} if self.admin_key else {}

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "EDGESTORE_HOME": str(self.home),
            "EDGESTORE_DATABASE_URL": self.database_url,
            "EDGESTORE_LOG_LEVEL": "info",
            **({"EDGESTORE_ADMIN_KEY": self.admin_key} if self.admin_key else {}),
            "EDGESTORE_RATE_LIMIT": "",
            "EDGESTORE_MAX_CONCURRENT_UPLOADS": "0",
            **self.env_extra,
        }

    def start(self, timeout: float = 30.0) -> ServerProcess:
        self.log_path = self.home.parent / f"server-{self.port}.log"
        self.home.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115  (closed with the process)
        args = [
            *("serve", "--port", str(self.port)),
            *([] if self.auth else ["--no-auth"]),
            *self.args,
        ]
        self.proc = subprocess.Popen(
            crash_command(self.crash_at, *args)
            if self.crash_at
            else [sys.executable, "-m", "edgestore", *args],
            env=child_env(self.env) if self.crash_at else self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=None if self.open_files is None else self._limit_open_files,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1, verify=False).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"server did not start in {timeout}s:\n{self.log()}")

    def _limit_open_files(self) -> None:
        assert self.open_files is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.open_files, self.open_files))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def stop(self, timeout: float = 30.0) -> int | None:
        """Graceful stop (SIGTERM), as an operator or systemd would."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)

    def kill(self) -> None:
        """kill -9: no chance to clean up."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def restart(self) -> ServerProcess:
        self.kill()
        return self.start()

    def client(self, **kwargs: object) -> httpx.Client:
        """An httpx client sending the admin key (pass headers={} for an anonymous one)."""
        kwargs.setdefault("headers", self.auth_headers)
        kwargs.setdefault("verify", False)  # the TLS tests' certificate is self-signed
        return httpx.Client(base_url=self.url, timeout=60, **kwargs)  # type: ignore[arg-type]
