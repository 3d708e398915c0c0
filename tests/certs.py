"""A self-signed certificate for 127.0.0.1, made by the openssl command, for TLS tests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.server import ServerProcess


def self_signed(base: Path, *, names: str = "IP:127.0.0.1") -> tuple[Path, Path]:
    """(certificate, key) in `base`, valid two days for `names` (subjectAltName); skips the
    test where openssl is not installed."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    cert, key = base / "cert.pem", base / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", f"subjectAltName={names}"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def https_server(base: Path, **options: Any) -> tuple[ServerProcess, Path]:
    """A real edgestore server started over HTTPS with a fresh self-signed certificate in
    `base` (SQLite there too), and that certificate: pass it as a client's CA to trust it."""
    cert, key = self_signed(base)
    server = ServerProcess(
        home=base / "home",
        database_url=f"sqlite:///{base / 'meta.db'}",
        scheme="https",
        args=["--certfile", str(cert), "--keyfile", str(key)],
        **options,
    ).start()
    return server, cert
