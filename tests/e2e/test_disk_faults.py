"""Disk faults for real, as a user meets them: a data dir on a tmpfs filled (ENOSPC) or
remounted read-only (EROFS) under the real server and the real `edgestore` command, with the
data dirs given in a config file and claimed by `edgestore init`.

What must hold: a clear answer (507 full, 503 not writable) that names the data dir and not
its path, /readyz and `edgestore_data_dir_up` saying which dir, stored objects reading back
byte-identical, `edgestore check` clean, and the upload resuming once there is room again.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import (
    SMALL_CHUNKS,
    KiB,
    MiB,
    patch_headers,
    random_bytes,
    sha256_hex,
    tus_create,
    tus_offset,
    tus_patch,
    tus_upload,
)
from tests.mounts import fill, remount, tmpfs
from tests.server import ServerProcess

EDGESTORE = [sys.executable, "-m", "edgestore"]


class Store:
    """Three data dirs (k=2, m=1), the last on a 16 MiB tmpfs, named in a config file."""

    def __init__(self, base: Path, small: Path) -> None:
        self.small = small
        self.dirs = [base / "a", base / "b", small / "es"]
        self.config = base / "edgestore.toml"
        chunks = "\n".join(f"{k} = {v}" for k, v in SMALL_CHUNKS.items())
        listed = ", ".join(f'"{d}"' for d in self.dirs)
        self.config.write_text(f"data_dirs = [{listed}]\nec_k = 2\nec_m = 1\n{chunks}\n")
        self.env = {
            **os.environ,
            "EDGESTORE_CONFIG": str(self.config),
            "EDGESTORE_HOME": str(base / "home"),
            "EDGESTORE_DATABASE_URL": f"sqlite:///{base / 'home' / 'edgestore.db'}",
        }

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*EDGESTORE, *args], env=self.env, capture_output=True, text=True, timeout=60
        )


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """One store for the module (starting a server and `init` take seconds on a busy
    machine); each test leaves the small disk as it found it: empty of filler, writable."""
    base = tmp_path_factory.mktemp("disk-faults")
    with tmpfs(base / "small-disk", "16m") as small:
        s = Store(base, small)
        done = s.run("init", "--shared-disk")  # two dirs share tmp_path's filesystem
        assert done.returncode == 0, done.stderr
        yield s


@pytest.fixture(scope="module")
def server(store: Store) -> Iterator[ServerProcess]:
    proc = ServerProcess(
        home=Path(store.env["EDGESTORE_HOME"]),
        database_url=store.env["EDGESTORE_DATABASE_URL"],
        env_extra={"EDGESTORE_CONFIG": str(store.config)},
    )
    try:
        yield proc.start()
    finally:
        proc.kill()  # before the tmpfs goes: nothing holds it open


def _d2_up(c: httpx.Client) -> float:
    for line in c.get("/metrics").text.splitlines():
        if line.startswith('edgestore_data_dir_up{dir="d2"}'):
            return float(line.split()[-1])
    raise AssertionError("no edgestore_data_dir_up for d2")


def _ready(c: httpx.Client) -> httpx.Response:
    return c.get("/readyz")


def test_a_full_data_dir_refuses_an_upload_with_507_and_it_resumes_once_room_is_made(
    store: Store, server: ServerProcess
) -> None:
    kept = random_bytes(200 * KiB, seed=601)
    data = random_bytes(3 * MiB, seed=602)
    filler = store.small / "filler"
    try:
        _full_then_room(store, server, kept, data)
    finally:
        filler.unlink(missing_ok=True)
    check = store.run("check")
    assert check.returncode == 0, check.stdout + check.stderr


def _full_then_room(store: Store, server: ServerProcess, kept: bytes, data: bytes) -> None:
    with server.client() as c:
        kept_url = tus_upload(c, kept, metadata={"filename": "kept"})
        fill(store.small, leave=64 * KiB)
        url = tus_create(c, len(data), metadata={"filename": "big"})
        r = tus_patch(c, url, 0, data)
        assert r.status_code == 507, r.text
        body = r.json()
        assert body["error"] == "storage_full"
        assert "data dir d2 is full" in body["message"]
        assert str(store.small) not in body["message"]  # the client is not told the path
        assert f"data dir {store.small}/es is full" in server.log()  # the operator is
        ready = _ready(c)
        assert ready.status_code == 503 and "data dir d2 is full" in ready.text
        assert _d2_up(c) == 0
        assert c.get(kept_url).content == kept  # read back around nothing: all dirs readable
        offset = tus_offset(c, url)
        assert offset < len(data)

        (store.small / "filler").unlink()
        assert _ready(c).status_code == 200
        assert _d2_up(c) == 1
        r = tus_patch(c, url, offset, data[offset:])
        assert r.status_code == 204, r.text
        assert sha256_hex(c.get(url).content) == sha256_hex(data)


def test_a_data_dir_remounted_read_only_mid_patch_refuses_with_503_and_keeps_what_was_acked(
    store: Store, server: ServerProcess
) -> None:
    kept = random_bytes(200 * KiB, seed=603)
    data = random_bytes(1 * MiB, seed=604)
    half = len(data) // 2

    def body() -> Iterator[bytes]:
        for lo in range(0, len(data), 64 * KiB):
            if lo == half:
                remount(store.small, "ro")  # under the running request
                time.sleep(0.2)
            yield data[lo : lo + 64 * KiB]

    try:
        with server.client() as c:
            kept_url = tus_upload(c, kept, metadata={"filename": "kept"})
            url = tus_create(c, len(data), metadata={"filename": "big"})
            try:
                r: httpx.Response | None = c.patch(url, content=body(), headers=patch_headers(0))
            except httpx.TransportError:  # answered before the body ended, and closed
                r = None
            if r is not None:
                assert r.status_code == 503, r.text
                assert "data dir d2 is not writable" in r.json()["message"]
            assert f"PATCH /files/{url.rsplit('/', 1)[-1]} 503" in server.log()
            assert f"data dir {store.small}/es is not writable" in server.log()
            ready = _ready(c)
            assert ready.status_code == 503 and "data dir d2 is not writable" in ready.text
            assert _d2_up(c) == 0
            assert c.get(kept_url).content == kept
            offset = tus_offset(c, url)
            assert offset <= half + 64 * KiB

            remount(store.small, "rw")
            assert _ready(c).status_code == 200
            assert _d2_up(c) == 1
            r = tus_patch(c, url, offset, data[offset:])
            assert r.status_code == 204, r.text
            assert sha256_hex(c.get(url).content) == sha256_hex(data)
    finally:
        remount(store.small, "rw")
    check = store.run("check")
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.slow  # four runs of the command: ~16 s on a loaded 2-core machine
def test_local_put_onto_a_full_data_dir_exits_6_and_succeeds_once_room_is_made(
    store: Store, tmp_path: Path
) -> None:
    """What was stored before stays readable: the server tests read theirs back."""
    big, out = tmp_path / "big.bin", tmp_path / "out.bin"
    big.write_bytes(random_bytes(3 * MiB, seed=606))
    filler = fill(store.small, leave=64 * KiB)
    try:
        refused = store.run("put", str(big))
        assert refused.returncode == 6, refused.stderr
        assert f"data dir {store.small}/es is full" in refused.stderr
        assert "Traceback" not in refused.stderr
        check = store.run("check")  # no partial chunk rows, counts unchanged
        assert check.returncode == 0, check.stdout + check.stderr
    finally:
        filler.unlink(missing_ok=True)
    done = store.run("put", str(big))
    assert done.returncode == 0, done.stderr
    assert store.run("get", "big.bin", "-o", str(out)).returncode == 0
    assert out.read_bytes() == big.read_bytes()
