"""`edgestore serve` failing at start, as a user meets it: a message and the exit code of the
docs' table (docs/operations.md), not a traceback; `--port 0` telling which port it took; and
the remote commands refusing a server URL without a scheme."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

EDGESTORE = [sys.executable, "-m", "edgestore"]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("EDGESTORE_")}
    return {**clean, "EDGESTORE_HOME": str(tmp_path / "home")}


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    res = subprocess.run([*EDGESTORE, *args], env=env, capture_output=True, text=True, timeout=60)
    res.stderr = " ".join(res.stderr.split())  # the console wraps long lines where it likes
    return res


def test_a_store_that_cannot_open_is_the_cli_s_error(env) -> None:
    """Chunking that disagrees with the store's was uvicorn's traceback and exit 3 (which the
    table reads as "not found"); `ls` on the same store says it with 78."""
    assert run(env, "init").returncode == 0
    env["EDGESTORE_CHUNK_MIN_SIZE"] = "65536"
    res = run(env, "serve", "--no-auth", "--port", "0")
    assert res.returncode == 78, res.stderr
    assert "chunk_min_size (EDGESTORE_CHUNK_MIN_SIZE)" in res.stderr
    assert "Traceback" not in res.stderr


def test_an_address_in_use_is_not_exit_code_3(env) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        res = run(env, "serve", "--no-auth", "--port", str(taken.getsockname()[1]))
    assert res.returncode == 1, res.stderr
    assert "address already in use" in res.stderr


def test_a_certificate_that_does_not_load_is_a_config_error(env, tmp_path: Path) -> None:
    """docs/deployment.md: exit 78. A file that is not PEM was an ssl.SSLError traceback."""
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    res = run(env, "serve", "--certfile", str(junk), "--keyfile", str(junk), "--port", "0")
    assert res.returncode == 78, res.stderr
    assert "tls_certfile" in res.stderr and "Traceback" not in res.stderr


def test_port_0_prints_the_port_it_took(env) -> None:
    """The banner showed http://127.0.0.1:0/… URLs; the real port was only in an INFO log
    line (none at log_level warning)."""
    env["EDGESTORE_LOG_LEVEL"] = "warning"
    proc = subprocess.Popen(
        [*EDGESTORE, "serve", "--no-auth", "--port", "0"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        port = None
        for line in proc.stderr:
            assert ":0/" not in line, line
            if line.startswith("edgestore listening on port "):
                port = int(line.split()[-1])
                break
        assert port, "no port printed"
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


@pytest.mark.parametrize(
    "args",
    [
        ("upload", "{file}", "localhost:8080"),
        ("download", "default/x", "--server", "localhost:8080"),
    ],
)
def test_a_server_url_without_a_scheme_says_so(env, tmp_path: Path, args) -> None:
    """It was httpx's UnsupportedProtocol traceback (exit 1)."""
    (tmp_path / "f.bin").write_bytes(b"x")
    res = run(env, *(a.format(file=tmp_path / "f.bin") for a in args))
    assert res.returncode == 4, res.stderr
    assert "http:// or https://" in res.stderr and "Traceback" not in res.stderr


def test_the_banner_brackets_an_ipv6_address(env) -> None:
    """`--host ::1` printed http://::1:PORT/files/, which no client parses."""
    proc = subprocess.Popen(
        [*EDGESTORE, "serve", "--no-auth", "--host", "::1", "--port", "0"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        banner = ""
        for line in proc.stderr:
            banner += line
            if "upload (tus)" in line:
                break
        assert "http://[::1]:PORT/files/" in banner, banner
        assert "data dirs under" in banner
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


@pytest.mark.parametrize("source", ["flag", "variable"])
def test_an_invalid_port_names_where_it_came_from(env, source: str) -> None:
    """`serve --port 99999` was reported as `port (EDGESTORE_PORT)`, a variable the user never
    set; the variable is named only when the value came from it."""
    if source == "flag":
        res = run(env, "serve", "--port", "99999")
    else:
        env["EDGESTORE_PORT"] = "99999"
        res = run(env, "serve")
    assert res.returncode == 78, res.stderr
    assert "less than or equal to 65535" in res.stderr and "Traceback" not in res.stderr
    if source == "flag":
        assert "port (--port)" in res.stderr and "EDGESTORE_PORT" not in res.stderr
    else:
        assert "port (EDGESTORE_PORT)" in res.stderr


@pytest.mark.parametrize("junk", [False, True], ids=["missing", "not-pem"])
def test_a_bad_certificate_flag_is_named(env, tmp_path: Path, junk: bool) -> None:
    """`serve --certfile F --keyfile F` with F missing or not PEM named only the variables
    (EDGESTORE_TLS_CERTFILE), which the user never set."""
    pem = tmp_path / "junk.pem"
    if junk:
        pem.write_text("not a certificate\n")
    res = run(env, "serve", "--certfile", str(pem), "--keyfile", str(pem), "--port", "0")
    assert res.returncode == 78, res.stderr
    assert "--certfile" in res.stderr and "Traceback" not in res.stderr
