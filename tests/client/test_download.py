"""Client.download against a real server: parallel ranges, every way of naming an object,
resume of a partial download, and refusal of bytes that do not match the object's SHA-256."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import httpx
import pytest

import edgestore.client.download as download_module
from edgestore.client import Client, RetryPolicy
from edgestore.client.download import object_url
from edgestore.client.results import NoProgress
from edgestore.errors import InvalidInput, NotFound, TransferInterrupted, WholeFileMismatch
from tests.faults import FaultProxy
from tests.helpers import KiB, MiB, random_bytes, sha256_hex

RANGE = 256 * KiB


@pytest.fixture(autouse=True)
def small_ranges(monkeypatch):
    monkeypatch.setattr(download_module, "RANGE_BYTES", RANGE)


def stored(server, tmp_path: Path, data: bytes, key: str) -> dict:
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    r = Client(server.url, state_dir=tmp_path / "hints").upload(src, key=key)
    return {"object_id": r.object_id, "key": key}


@pytest.mark.parametrize("workers", [1, 4])
def test_parallel_ranges_round_trip(server, tmp_path, workers) -> None:
    data = random_bytes(3 * MiB + 123, seed=40 + workers)
    obj = stored(server, tmp_path, data, f"dl/{workers}")
    out = tmp_path / "out.bin"
    r = Client(server.url).download(obj["object_id"], out, workers=workers)
    assert out.read_bytes() == data
    assert (r.size, r.sha256, r.verified, r.bytes_received) == (
        len(data),
        sha256_hex(data),
        True,
        len(data),
    )
    assert r.object_id == obj["object_id"] and r.version == 1
    assert not out.with_name("out.bin.part").exists()
    assert not out.with_name("out.bin.part.json").exists()


def test_names_an_object_by_url_id_or_bucket_key(server, tmp_path, monkeypatch) -> None:
    data = random_bytes(600 * KiB, seed=45)
    obj = stored(server, tmp_path, data, "dl/named.bin")
    client = Client(server.url)
    for ref in (
        f"{server.url}/objects/default/dl/named.bin",
        "default/dl/named.bin",
        obj["object_id"],
    ):
        out = tmp_path / "got"
        client.download(ref, out)
        assert out.read_bytes() == data
    monkeypatch.chdir(tmp_path)
    r = client.download("default/dl/named.bin")  # default name: the stored file name
    assert Path(r.path).name == "src.bin"
    with pytest.raises(InvalidInput):
        object_url("not-a-ref")
    with pytest.raises(NotFound):
        client.download("default/dl/none", tmp_path / "none")


def test_an_output_directory_gets_the_object_s_file_name(server, tmp_path) -> None:
    """`-o DIR` wrote DIR.part beside it, then failed to rename it over the directory
    (a traceback, the partial files left behind)."""
    data = random_bytes(300 * KiB, seed=46)
    stored(server, tmp_path, data, "dl/into-dir.bin")
    into = tmp_path / "downloads"
    into.mkdir()
    r = Client(server.url).download("default/dl/into-dir.bin", into)
    assert Path(r.path) == into / "src.bin" and (into / "src.bin").read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("downloads")) == [
        "downloads"
    ]
    with pytest.raises(InvalidInput, match="not a directory"):
        Client(server.url).download("default/dl/into-dir.bin", tmp_path / "nowhere" / "x")
    assert not (tmp_path / "nowhere").exists()


def test_a_reverse_proxy_s_path_prefix_is_kept_for_the_ranges(server, tmp_path) -> None:
    """Behind a proxy that serves the server under /edge/, `download https://host/edge/
    objects/…` sent its range requests to https://host/ids/… (the prefix dropped): 404."""
    data = random_bytes(700 * KiB, seed=44)
    obj = stored(server, tmp_path, data, "dl/proxied.bin")
    proxy = FaultProxy(server.url, prefix="/edge").start()
    try:
        for i, ref in enumerate(
            (
                f"{proxy.url}/objects/default/dl/proxied.bin",
                f"{proxy.url}/ids/{obj['object_id']}",
                "default/dl/proxied.bin",
            )
        ):
            out = tmp_path / f"proxied{i}"
            r = Client(proxy.url, retry=RetryPolicy(tries=1)).download(ref, out, workers=2)
            assert out.read_bytes() == data and r.verified, ref
        assert all(status != 404 for _, _, status in proxy.log), proxy.log
    finally:
        proxy.stop()


def test_a_server_url_without_a_scheme_is_refused() -> None:
    with pytest.raises(InvalidInput, match="http:// or https://"):
        Client("localhost:8080")


def test_a_bucket_key_with_url_characters_names_that_object(server, tmp_path) -> None:
    # '?', '#', '%', spaces and a final '/' are valid in keys: as bucket/key they must name
    # that object, not whatever the same text means in a URL ("dl/q" with a query, say).
    decoy = random_bytes(100 * KiB, seed=47)
    stored(server, tmp_path, decoy, "dl/q")
    client = Client(server.url)
    for i, key in enumerate(("dl/q?v=2", "dl/q#frag", "dl/50%off", "dl/a b", "dl/q/")):
        data = random_bytes(100 * KiB, seed=48 + i)
        stored(server, tmp_path, data, key)
        out = tmp_path / f"special{i}"
        client.download(f"default/{key}", out)
        assert out.read_bytes() == data, key


def test_empty_object(server, tmp_path) -> None:
    obj = stored(server, tmp_path, b"", "dl/empty")
    out = tmp_path / "empty.out"
    r = Client(server.url).download(obj["object_id"], out)
    assert out.read_bytes() == b"" and r.verified


def test_interrupted_download_resumes(server, tmp_path) -> None:
    data = random_bytes(4 * MiB, seed=46)
    obj = stored(server, tmp_path, data, "dl/resume")
    out = tmp_path / "resumed.bin"
    proxy = FaultProxy(server.url).start()
    try:
        proxy.add("GET", r"^/ids/", times=1000, status=503, after=5)  # 5 ranges, then failures
        flaky = Client(proxy.url, retry=RetryPolicy(tries=2, base=0.01))
        with pytest.raises(TransferInterrupted, match="run the same command again"):
            flaky.download(obj["object_id"], out, workers=1)
    finally:
        proxy.stop()
    record = json.loads(out.with_name("resumed.bin.part.json").read_text())
    done = sum(hi - lo for lo, hi in record["done"])
    assert done == 5 * RANGE
    r = Client(server.url).download(obj["object_id"], out, workers=3)
    assert out.read_bytes() == data
    assert r.bytes_resumed == done and r.bytes_received == len(data) - done


def test_corrupt_partial_file_is_caught_and_removed(server, tmp_path) -> None:
    data = random_bytes(2 * MiB, seed=47)
    obj = stored(server, tmp_path, data, "dl/corrupt")
    out = tmp_path / "c.bin"
    part = out.with_name("c.bin.part")
    record = out.with_name("c.bin.part.json")
    proxy = FaultProxy(server.url).start()
    try:
        proxy.add("GET", r"^/ids/", times=1000, status=503, after=2)
        with pytest.raises(TransferInterrupted):
            Client(proxy.url, retry=RetryPolicy(tries=1)).download(obj["object_id"], out, workers=1)
    finally:
        proxy.stop()
    with open(part, "r+b") as f:  # bitrot in a range recorded as done
        f.seek(10)
        f.write(b"\x00\xff")
    with pytest.raises(WholeFileMismatch):
        Client(server.url).download(obj["object_id"], out)
    assert not part.exists() and not record.exists() and not out.exists()
    Client(server.url).download(obj["object_id"], out)  # a clean rerun works
    assert out.read_bytes() == data


def test_a_new_version_during_the_download_does_not_mix_in(server, tmp_path) -> None:
    old = random_bytes(1 * MiB, seed=48)
    stored(server, tmp_path, old, "dl/moving")
    out = tmp_path / "m.bin"
    proxy = FaultProxy(server.url).start()
    try:
        proxy.add("GET", r"^/ids/", times=1000, status=503, after=1)
        with pytest.raises(TransferInterrupted):
            Client(proxy.url, retry=RetryPolicy(tries=1)).download("default/dl/moving", out)
    finally:
        proxy.stop()
    stored(server, tmp_path, random_bytes(1 * MiB, seed=49), "dl/moving")  # version 2
    r = Client(server.url).download("default/dl/moving", out)
    assert r.version == 2 and r.bytes_resumed == 0  # the partial of version 1 was dropped
    assert r.sha256 == sha256_hex(out.read_bytes())


def test_a_device_or_pipe_as_output_is_refused_not_replaced(server, tmp_path) -> None:
    """Ranges are written in parallel to OUT.part and renamed over OUT: over a FIFO (or, as
    root, /dev/null) that rename replaced the special file with a regular one."""
    import os
    import stat

    obj = stored(server, tmp_path, random_bytes(300 * KiB, seed=49), "dl/fifo")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(InvalidInput, match="not a regular file"):
        Client(server.url).download(obj["object_id"], fifo)
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    assert not fifo.with_name("pipe.part").exists()


def test_a_server_without_ranges_is_streamed_to_disk(web_root, tmp_path: Path) -> None:
    """A plain web server (no Accept-Ranges) sends the whole file as one body: it was read
    into memory whole before being written, so a file bigger than RAM could not be fetched."""
    url, root = web_root
    data = random_bytes(48 * MiB, seed=77)
    (root / "big.bin").write_bytes(data)
    tracemalloc.start()
    try:
        d = Client(url).download(f"{url}/big.bin", tmp_path / "out.bin")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (d.size, d.sha256, d.verified) == (len(data), sha256_hex(data), False)
    assert (tmp_path / "out.bin").read_bytes() == data
    assert peak < 24 * MiB, f"{peak / MiB:.0f} MiB held for a {len(data) // MiB} MiB file"


def test_an_object_made_anew_mid_download_is_not_read_whole(server, tmp_path) -> None:
    """The object was deleted and made again (version 1 again, another ETag) between the HEAD
    and the ranges: If-Range made the server answer each range with the whole new object,
    which the client read into memory (all 20 GB of it) before it saw the 200 and refused."""
    key = "dl/remade.bin"
    data = random_bytes(6 * MiB, seed=48)
    stored(server, tmp_path, data, key)
    anew = tmp_path / "anew" / "remade.bin"
    anew.parent.mkdir()
    anew.write_bytes(random_bytes(6 * MiB, seed=49))

    class Remake(NoProgress):
        def start(self, total: int) -> None:  # after the HEAD, before any range
            with httpx.Client(base_url=server.url) as http:
                assert http.delete(f"/objects/default/{key}").status_code == 204
            r = Client(server.url, state_dir=tmp_path / "hints2").upload(anew, key=key)
            assert r.version == 1
            tracemalloc.reset_peak()  # the download's own memory from here

    tracemalloc.start()
    try:
        with pytest.raises(InvalidInput, match="object changed"):
            Client(server.url).download(
                f"{server.url}/objects/default/{key}", tmp_path / "out.bin", progress=Remake()
            )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3 * MiB, f"{peak / MiB:.1f} MiB held for {RANGE // KiB} KiB ranges"
    r = Client(server.url).download(f"{server.url}/objects/default/{key}", tmp_path / "out.bin")
    assert (tmp_path / "out.bin").read_bytes() == anew.read_bytes() and r.bytes_resumed == 0
