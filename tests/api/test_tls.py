"""HTTPS: `serve --certfile --keyfile` with a self-signed certificate made by the openssl CLI;
a tus upload over it, verified against that certificate, and clear errors for bad config."""

from __future__ import annotations

import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.certs import self_signed
from tests.helpers import MiB, random_bytes, sha256_hex, tus_upload
from tests.server import ServerProcess


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed(tmp_path_factory.mktemp("tls"), names="IP:127.0.0.1,DNS:localhost")


def test_upload_and_download_over_https(tmp_path: Path, certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    server = ServerProcess(
        home=tmp_path / "home",
        database_url=f"sqlite:///{tmp_path / 'meta.db'}",
        auth=True,
        scheme="https",
        args=["--certfile", str(cert), "--keyfile", str(key)],
    ).start()
    try:
        data = random_bytes(2 * MiB + 3, seed=11)
        ours = ssl.create_default_context(cafile=str(cert))
        with server.client(verify=ours) as c:  # the real check: this certificate only
            url = tus_upload(c, data, pieces=2)
            assert url.startswith("https://127.0.0.1:")
            got = c.get(url)
            assert sha256_hex(got.content) == sha256_hex(data)
        with pytest.raises(httpx.HTTPError):  # plain HTTP to the TLS port gets nowhere
            httpx.get(f"http://127.0.0.1:{server.port}/healthz", timeout=5)
        with pytest.raises(httpx.ConnectError):  # an unknown certificate is refused
            httpx.get(f"{server.url}/healthz", timeout=5)
    finally:
        server.stop()
    assert "https://127.0.0.1" in server.log()  # the banner says where to upload


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--certfile", "cert.pem"], "go together"),
        (["--certfile", "missing.pem", "--keyfile", "missing.key"], "is not a readable file"),
    ],
)
def test_bad_tls_configuration_exits_78(tmp_path: Path, args: list[str], message: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "edgestore", "--home", str(tmp_path), "serve", "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 78, done.stderr
    assert message in " ".join(done.stderr.split())  # the console wraps long lines
