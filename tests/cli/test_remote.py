"""`edgestore upload` and `edgestore download` as a user runs them (a real CLI process, a real
server): trusting a private CA with --ca-cert, Ctrl-C on a link gone silent, a full disk."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgestore.client import Client
from edgestore.units import DURATION_FORMS
from tests.certs import https_server
from tests.flaky_link import FlakyLink
from tests.helpers import KiB, MiB, random_bytes, sha256_hex, write_file
from tests.mounts import tmpfs
from tests.native import small_chunk_server
from tests.server import ServerProcess

PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "SSL_CERT_FILE")


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.upper() not in PROXY_VARS}
    env.pop("EDGESTORE_CA_CERT", None)
    return {**env, **extra}


def edgestore(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgestore", *args],
        env=cli_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Path]]:
    server, cert = https_server(tmp_path_factory.mktemp("cli-tls"))
    try:
        yield server, cert
    finally:
        server.stop()


def test_ca_cert_trusts_a_private_server(tls_server, tmp_path: Path) -> None:
    """There was no way but SSL_CERT_FILE (which the error named, and no --help did)."""
    server, cert = tls_server
    data = random_bytes(200 * KiB, seed=95)
    src = write_file(tmp_path / "f.bin", data)
    hints = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    refused = edgestore("upload", str(src), server.url, "--quiet", **hints)
    assert refused.returncode == 4 and "--ca-cert" in refused.stderr
    up = edgestore("upload", str(src), server.url, "--ca-cert", str(cert), "--json", **hints)
    assert up.returncode == 0, up.stderr
    assert json.loads(up.stdout)["sha256"] == sha256_hex(data)
    out = tmp_path / "back.bin"
    down = edgestore(
        "download", "default/f.bin", "--server", server.url, "-o", str(out), "--quiet",
        EDGESTORE_CA_CERT=str(cert),
    )  # fmt: skip
    assert down.returncode == 0, down.stderr
    assert out.read_bytes() == data
    missing = edgestore("upload", str(src), server.url, "--ca-cert", str(tmp_path / "no.pem"))
    assert missing.returncode == 4 and "no such file" in missing.stderr


# The client's behaviour on the link (timeouts, Ctrl-C, a full disk, names) is what these
# test; the server's database does not take part in it, and the protocols' tests run on both.
@pytest.fixture(scope="module", params=["sqlite"])
def server(request, tmp_path_factory):
    with small_chunk_server(request, tmp_path_factory) as proc:
        yield proc


def test_ctrl_c_on_a_silent_link_stops_at_once_and_the_rerun_resumes(server, tmp_path) -> None:
    """The link goes silent mid-download (Wi-Fi gone, the TCP state lingering) and the user
    presses Ctrl-C: the command waited for the read timeout (a minute) before it quit."""
    data = random_bytes(24 * MiB + 5, seed=96)
    oid = (
        Client(server.url, state_dir=tmp_path / "hints")
        .upload(write_file(tmp_path / "src.bin", data), key="cli/silent.bin")
        .object_id
    )
    # The first connection carries 9 MiB back (more than a range), then nothing moves.
    link = FlakyLink(int(server.url.rsplit(":", 1)[1]), stall=True).start()
    link.set_budgets(itertools.repeat(None), itertools.chain([9 * MiB], itertools.repeat(0)))
    out = tmp_path / "out.bin"
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edgestore", "download", oid, "--server", link.url,
             "-o", str(out), "--workers", "1", "--quiet"],
            env=cli_env(),
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
            stderr=subprocess.PIPE,
        )  # fmt: skip
        part = out.with_name("out.bin.part.json")
        deadline = time.monotonic() + 20
        while link.cuts == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # the second range's request is waiting on the silent link
        proc.send_signal(signal.SIGINT)
        started = time.monotonic()
        try:
            proc.wait(timeout=10)
        finally:
            proc.kill()
        assert time.monotonic() - started < 5 and proc.returncode == 130
    finally:
        link.stop()
    assert json.loads(part.read_text())["done"] == [[0, 8 * MiB]]
    r = Client(server.url).download(oid, out)
    assert r.bytes_resumed == 8 * MiB and r.verified and out.read_bytes() == data


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs (mounting needs root, as in the test containers)."""
    with tmpfs(tmp_path / "small", "1m") as where:
        yield where


def test_a_full_disk_is_a_clear_error_and_the_part_file_stays(
    server, small_disk: Path, tmp_path
) -> None:
    """ENOSPC ended the download in a traceback (exit code 1); it is exit code 6 (a storage
    problem, docs/operations.md), and what was downloaded stays for the rerun."""
    data = random_bytes(2 * MiB + 7, seed=97)
    Client(server.url, state_dir=tmp_path / "hints").upload(
        write_file(tmp_path / "src.bin", data), key="cli/full.bin"
    )
    out = small_disk / "out.bin"
    full = edgestore("download", "default/cli/full.bin", "--server", server.url, "-o", str(out))
    assert full.returncode == 6, full.stderr
    assert "No space left on device" in full.stderr and "run the same command again" in full.stderr
    assert "Traceback" not in full.stderr
    assert out.with_name("out.bin.part").exists() and not out.exists()
    subprocess.run(["mount", "-o", "remount,size=8m", str(small_disk)], check=True)
    r = Client(server.url).download("default/cli/full.bin", out)
    assert r.verified and out.read_bytes() == data


@pytest.mark.parametrize("protocol", ["native", "tus"])
def test_a_non_ascii_file_name_uploads_by_either_protocol(server, tmp_path, protocol) -> None:
    data = random_bytes(300 * KiB, seed=98)
    name = f"résumé 日本 {protocol}.bin"
    src = write_file(tmp_path / name, data)
    up = edgestore(
        "upload", str(src), server.url, "--protocol", protocol, "--json",
        XDG_CACHE_HOME=str(tmp_path / "cache"),
    )  # fmt: skip
    assert up.returncode == 0, up.stderr
    assert (json.loads(up.stdout)["key"], json.loads(up.stdout)["sha256"]) == (
        name,
        sha256_hex(data),
    )
    with server.client() as http:
        assert (
            http.get(f"/ids/{json.loads(up.stdout)['object_id']}/info").json()["filename"] == name
        )


def test_timeout_bounds_a_silent_link(server, tmp_path) -> None:
    """A stalled connection waited the 60 s read timeout before its retry, and only the
    library could change that: --timeout (or $EDGESTORE_TIMEOUT) sets it, a duration as the
    configuration's are (`1s`, `1500ms`: it took seconds only)."""
    data = random_bytes(3 * MiB + 11, seed=99)
    src = write_file(tmp_path / "slow.bin", data)
    cache = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    port = int(server.url.rsplit(":", 1)[1])
    # The connection carrying the first MiB sent goes silent there (mid-body), whichever of
    # the upload's connections it is; the others carry everything.
    link = FlakyLink(port, stall=True).start()
    try:
        link.cut_at(up=[1 * MiB])
        started = time.monotonic()
        up = edgestore(
            "upload", str(src), link.url, "--key", "cli/slow.bin", "--workers", "1", "--json",
            EDGESTORE_TIMEOUT="1s", **cache,
        )  # fmt: skip
        assert up.returncode == 0, up.stderr
        assert time.monotonic() - started < 30 and link.cuts == 1
        assert json.loads(up.stdout)["retries"] >= 1
        link.cut_at(down=[1 * MiB])
        out = tmp_path / "back.bin"
        started = time.monotonic()
        down = edgestore(
            "download", "default/cli/slow.bin", "--server", link.url, "-o", str(out),
            "--workers", "1", "--timeout", "1500ms", "--json",
        )  # fmt: skip
        assert down.returncode == 0, down.stderr
        assert time.monotonic() - started < 30 and link.cuts == 2
        assert out.read_bytes() == data
    finally:
        link.stop()


@pytest.mark.parametrize(
    ("args", "env", "why"),
    [(["--timeout", "0"], {}, "not above 0"), (["--timeout", "-3"], {}, "not a duration"),
     (["--timeout", "nan"], {}, "not a duration"), ([], {"EDGESTORE_TIMEOUT": "0s"}, "not above 0"),
     (["--timeout", "2x"], {}, "unknown unit 'x'"), (["--timeout", "1M"], {}, "'M' is months")],
)  # fmt: skip
def test_a_timeout_not_above_zero_is_refused(tmp_path, args, env, why: str) -> None:
    """Said as a configuration duration is refused (the reason, then the accepted forms)."""
    src = write_file(tmp_path / "f.bin", b"x")
    for cmd in (["upload", str(src), "http://127.0.0.1:9"], ["download", "http://127.0.0.1:9/x"]):
        r = edgestore(*cmd, *args, **env)
        said = " ".join(r.stderr.split())
        assert r.returncode == 4 and "--timeout" in said and why in said, r.stderr
        assert why == "not above 0" or f"({DURATION_FORMS})" in said, r.stderr
