"""Client.upload over tus: parallel partial uploads joined by concatenation on edgestore, a
single upload where concatenation is missing, resume of the same uploads after an
interruption, and (interop) the official Node tus server and tuspyserver."""

from __future__ import annotations

import itertools
import os
import shutil

import pytest

from edgestore.client import Client
from edgestore.client.tus import encode_metadata, plan_parts, tus_endpoint
from edgestore.errors import InvalidInput, SourceChanged
from tests.helpers import KiB, MiB, random_bytes, sha256_hex, write_file
from tests.native import rows, versions_of
from tests.require import required


class Hook:
    def __init__(self, after: int, fn) -> None:
        self.after, self.fn, self.calls = after, fn, 0

    def start(self, total: int) -> None:
        pass

    def transferred(self, n: int) -> None:
        self.calls += 1
        if self.calls == self.after:
            self.fn()

    def skipped(self, n: int) -> None:
        pass


class Stop(Exception):
    pass


def _stop() -> None:
    raise Stop


def test_parallel_upload_is_a_concatenation(server, http, probe, tmp_path, hints_dir) -> None:
    data = random_bytes(6 * MiB + 5, seed=31)
    r = Client(server.url, state_dir=hints_dir).upload(
        write_file(tmp_path / "t.bin", data), key="tus/par", workers=4, protocol="tus"
    )
    assert (r.protocol, r.chunks, r.bytes_sent, r.sha256) == ("tus", 4, len(data), sha256_hex(data))
    assert r.object_id and r.version == 1 and "/files/" in r.upload
    assert http.get(f"/ids/{r.object_id}").content == data
    finals = rows(probe, "SELECT concat_of FROM uploads WHERE key = 'tus/par'")
    assert len(finals) == 1 and finals[0][0] is not None  # one final made of partials


def test_an_empty_file_reports_its_object(server, http, tmp_path, hints_dir) -> None:
    """The object lookup asked for byte 0 of a 0-byte object (416), so the result had no
    object id and no version, unlike any other upload to edgestore."""
    r = Client(server.url, state_dir=hints_dir).upload(
        write_file(tmp_path / "empty.bin", b""), key="tus/empty", protocol="tus"
    )
    assert r.object_id and r.version == 1 and r.size == 0
    assert http.get(f"/ids/{r.object_id}/info").json()["key"] == "tus/empty"


@pytest.mark.parametrize("workers", [1, "auto"])
def test_single_and_auto(server, http, tmp_path, hints_dir, workers) -> None:
    data = random_bytes(3 * MiB, seed={1: 32, "auto": 33}[workers])
    r = Client(server.url, state_dir=hints_dir).upload(
        write_file(tmp_path / "s.bin", data), key=f"tus/{workers}", workers=workers, protocol="tus"
    )
    assert http.get(f"/ids/{r.object_id}").content == data and r.sha256 == sha256_hex(data)
    assert list(hints_dir.glob("*.json")) == []


def test_interrupted_parts_resume(server, http, tmp_path, hints_dir) -> None:
    data = random_bytes(8 * MiB, seed=34)
    src = write_file(tmp_path / "r.bin", data)
    client = Client(server.url, state_dir=hints_dir)
    import edgestore.client.tus as tus_module

    small = 512 * KiB  # several PATCHes per part, so an interruption lands mid-part
    old, tus_module.PATCH_BYTES = tus_module.PATCH_BYTES, small
    try:
        with pytest.raises(Stop):
            client.upload(src, key="tus/resume", workers=2, protocol="tus", progress=Hook(3, _stop))
        assert list(hints_dir.glob("*.json"))
        r = client.upload(src, key="tus/resume", workers=2, protocol="tus")
    finally:
        tus_module.PATCH_BYTES = old
    assert r.resumed and r.bytes_skipped >= 2 * small
    assert r.bytes_sent + r.bytes_skipped == len(data)
    assert http.get(f"/ids/{r.object_id}").content == data


@pytest.mark.parametrize("workers", [1, 2])
def test_a_rerun_on_a_rewritten_file_with_its_old_mtime_does_not_resume(
    server, http, tmp_path, hints_dir, workers
) -> None:
    # The file is rewritten between two runs (same size) and its mtime put back, as
    # `cp -p`, `rsync -t` or `tar x` do: the interrupted uploads hold bytes of the old
    # content, so continuing them would commit a mix of old and new bytes.
    old_data = random_bytes(4 * MiB, seed=37 + workers)
    src = write_file(tmp_path / f"rw{workers}.bin", old_data)
    key = f"tus/rewritten{workers}"
    client = Client(server.url, state_dir=hints_dir)
    import edgestore.client.tus as tus_module

    old, tus_module.PATCH_BYTES = tus_module.PATCH_BYTES, 512 * KiB
    try:
        with pytest.raises(Stop):
            client.upload(src, key=key, workers=workers, protocol="tus", progress=Hook(2, _stop))
        before = os.stat(src)
        new_data = random_bytes(4 * MiB, seed=47 + workers)
        with open(src, "r+b") as f:
            f.write(new_data)
        os.utime(src, ns=(before.st_atime_ns, before.st_mtime_ns))
        r = client.upload(src, key=key, workers=workers, protocol="tus")
    finally:
        tus_module.PATCH_BYTES = old
    assert http.get(f"/ids/{r.object_id}").content == new_data
    assert not r.resumed and r.sha256 == sha256_hex(new_data)


def test_a_rerun_with_another_content_type_stores_it(server, http, tmp_path, hints_dir) -> None:
    src = write_file(tmp_path / "typed.bin", random_bytes(2 * MiB, seed=39))
    client = Client(server.url, state_dir=hints_dir)
    import edgestore.client.tus as tus_module

    old, tus_module.PATCH_BYTES = tus_module.PATCH_BYTES, 256 * KiB
    try:
        with pytest.raises(Stop):
            client.upload(
                src,
                key="tus/typed",
                workers=1,
                protocol="tus",
                content_type="text/plain",
                progress=Hook(1, _stop),
            )
        r = client.upload(
            src, key="tus/typed", workers=1, protocol="tus", content_type="application/x-final"
        )
    finally:
        tus_module.PATCH_BYTES = old
    info = http.get(f"/ids/{r.object_id}/info").json()
    assert info["content_type"] == "application/x-final"


def test_changed_file_is_not_concatenated(server, probe, tmp_path, hints_dir) -> None:
    src = write_file(tmp_path / "c.bin", random_bytes(4 * MiB, seed=35))

    def scribble() -> None:
        with open(src, "r+b") as f:
            f.write(b"new start")

    with pytest.raises(SourceChanged):
        Client(server.url, state_dir=hints_dir).upload(
            src, key="tus/changed", workers=2, protocol="tus", progress=Hook(1, scribble)
        )
    assert versions_of(probe, "tus/changed") == 0


def test_changed_file_is_not_completed_by_a_single_upload(server, probe, tmp_path, hints_dir):
    src = write_file(tmp_path / "c1.bin", random_bytes(2 * MiB, seed=36))

    def scribble() -> None:
        with open(src, "r+b") as f:
            f.write(b"new start")

    import edgestore.client.tus as tus_module

    old, tus_module.PATCH_BYTES = tus_module.PATCH_BYTES, 256 * KiB
    try:
        with pytest.raises(SourceChanged):
            Client(server.url, state_dir=hints_dir).upload(
                src, key="tus/changed1", workers=1, protocol="tus", progress=Hook(1, scribble)
            )
    finally:
        tus_module.PATCH_BYTES = old
    assert versions_of(probe, "tus/changed1") == 0


def test_a_file_name_that_is_not_utf8_uploads_under_a_readable_name(
    server, http, tmp_path, hints_dir
) -> None:
    # Its surrogates cannot be encoded into Upload-Metadata: a traceback, before.
    data = random_bytes(200 * KiB, seed=36)
    src = write_file(tmp_path / os.fsdecode(b"na\xefve.bin"), data)
    r = Client(server.url, state_dir=hints_dir).upload(src, protocol="tus")
    assert (r.key, r.sha256) == ("na\ufffdve.bin", sha256_hex(data))
    assert http.get(f"/ids/{r.object_id}/info").json()["filename"] == "na\ufffdve.bin"


@pytest.mark.parametrize("workers", [1, 3])
def test_non_ascii_metadata_keys_values_and_file_names_upload(
    server, http, tmp_path, hints_dir, workers
) -> None:
    """The server takes any key tus 1.0 allows, UTF-8 included; the client sent the field as
    a str header, which httpx encodes as ASCII: UnicodeEncodeError before any request."""
    data = random_bytes(3 * MiB + 1, seed=39 + workers)
    src = write_file(tmp_path / f"résumé 日本-{workers}.bin", data)
    metadata = {"ключ": "значение", "café/ü:x": "naïve ✓", "plain": "ok"}
    r = Client(server.url, state_dir=hints_dir).upload(
        src, protocol="tus", workers=workers, metadata=metadata
    )
    assert (r.key, r.sha256) == (f"résumé 日本-{workers}.bin", sha256_hex(data))
    info = http.get(f"/ids/{r.object_id}/info").json()
    assert info["filename"] == f"résumé 日本-{workers}.bin"
    assert {k: info["metadata"].get(k) for k in metadata} == metadata
    assert http.get(f"/ids/{r.object_id}").content == data


@pytest.mark.parametrize("key", ["a,b", "a b", ""])
def test_a_metadata_key_tus_cannot_carry_is_refused(key: str) -> None:
    """A comma or a space in a key was sent as is: the server read other pairs than given
    ("a,b" became keys "a" and "b"), and stored them without a word."""
    with pytest.raises(InvalidInput, match="metadata key"):
        encode_metadata({key: "v"})
    assert encode_metadata({"ключ": "v", "flag": None}) == "ключ dg==,flag".encode()


def test_plan_and_endpoint() -> None:
    assert plan_parts(10 * MiB, 4, concat=False) == [(0, 10 * MiB)]
    assert plan_parts(10 * MiB, 1, concat=True) == [(0, 10 * MiB)]
    parts = plan_parts(10 * MiB, 4, concat=True)
    assert len(parts) == 4 and parts[0][0] == 0 and parts[-1][1] == 10 * MiB
    assert all(a[1] == b[0] for a, b in itertools.pairwise(parts))
    assert plan_parts(MiB, 8, concat=True) == [(0, MiB)]  # too small to split
    assert len(plan_parts(1 << 30, "auto", concat=True)) == 32
    assert tus_endpoint("http://h:1") == "http://h:1/files/"
    assert tus_endpoint("http://h:1/uploads") == "http://h:1/uploads"


# --- other tus servers ------------------------------------------------------------------------


def _required() -> bool:
    return required("EDGESTORE_REQUIRE_INTEROP")


def _peers():
    """bench/peers.py's peers: used if installed (`python -m bench.tus` installs them), else
    skipped, except in CI (EDGESTORE_REQUIRE_INTEROP), which installs them from npm/PyPI."""
    if shutil.which("node") is None:
        if _required():
            pytest.fail("EDGESTORE_REQUIRE_INTEROP is set but node is not installed")
        pytest.skip("node is not installed")
    from bench import peers

    if not (peers.PEERS_DIR / "node" / "node_modules" / "@tus" / "server").is_dir():
        if not _required():
            pytest.skip(f"@tus/server is not installed under {peers.PEERS_DIR} (run bench/tus.py)")
        peers.node_peers()
    return peers


@pytest.mark.interop
def test_node_tus_server_without_concatenation(tmp_path, hints_dir) -> None:
    peers = _peers()
    node_dir = peers.node_peers()
    run = peers.node_server(tmp_path, node_dir).start(tmp_path / "node.log")
    try:
        data = random_bytes(3 * MiB, seed=37)
        r = Client(run.endpoint, state_dir=hints_dir).upload(
            write_file(tmp_path / "n.bin", data), workers=4, protocol="tus"
        )
        assert r.chunks == 1 and r.bytes_sent == len(data) and r.object_id is None
        stored = [p for p in (tmp_path).rglob("*") if p.is_file() and p.stat().st_size == len(data)]
        assert any(p.read_bytes() == data for p in stored)
    finally:
        run.stop()


@pytest.mark.interop
def test_tuspyserver_with_concatenation(tmp_path, hints_dir) -> None:
    peers = _peers()
    if not (peers.PEERS_DIR / "tuspyserver" / "bin" / "uvicorn").exists() and not _required():
        pytest.skip(f"tuspyserver is not installed under {peers.PEERS_DIR} (run bench/tus.py)")
    node_dir, bin_dir = peers.node_peers(), peers.tuspyserver_venv()
    run = peers.tuspyserver_server(tmp_path, node_dir, bin_dir).start(tmp_path / "py.log")
    try:
        data = random_bytes(4 * MiB, seed=38)
        r = Client(run.endpoint, state_dir=hints_dir).upload(
            write_file(tmp_path / "p.bin", data), workers=3, protocol="tus"
        )
        assert r.chunks == 3 and r.sha256 == sha256_hex(data)
    finally:
        run.stop()
