"""tuspy (the official Python tus client, PyPI) against a real server: uploads with resume
(a new Uploader picking up from HEAD's offset, and through tuspy's URL storage), and the
checksum extension — tuspy sends `Upload-Checksum: sha1 ...` with every chunk, and the server
is shown to verify it (a corrupted one is refused with 460 and nothing of it kept).

Each upload is read back through its upload URL and /objects/{bucket}/{key} (SHA-256).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import TUS, MiB, random_bytes, sha256_hex, tus_offset, tus_patch
from tests.require import required

try:
    from tusclient import client as tus_client
    from tusclient.exceptions import TusUploadFailed
    from tusclient.storage.filestorage import FileStorage
    from tusclient.uploader import AsyncUploader, Uploader
except ImportError as exc:  # skipped where tuspy is missing, unless interop is required
    if required("EDGESTORE_REQUIRE_INTEROP"):
        pytest.fail(f"EDGESTORE_REQUIRE_INTEROP is set but tuspy is missing: {exc}")
    pytest.skip(f"tuspy is not installed: {exc}", allow_module_level=True)

pytestmark = pytest.mark.interop

CHUNK = 2 * MiB


class RecordingPatches:
    """Records the headers of every PATCH tuspy sends (it uses requests.patch)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import tusclient.request as request_module

        self.headers: list[dict[str, str]] = []
        real = request_module.requests.patch

        def patch(url: str, **kwargs: Any) -> Any:
            self.headers.append(dict(kwargs.get("headers") or {}))
            return real(url, **kwargs)

        monkeypatch.setattr(request_module.requests, "patch", patch)


def _file(tmp_path: Path, size: int, seed: int) -> tuple[Path, bytes]:
    data = random_bytes(size, seed=seed)
    path = tmp_path / f"tuspy-{seed}.bin"
    path.write_bytes(data)
    return path, data


def _meta(tag: str) -> tuple[str, dict[str, str]]:
    key = f"py/{tag}-{uuid.uuid4().hex[:8]}.bin"
    return key, {"bucket": "interop", "key": key, "filename": f"{tag}.bin"}


def _check_object(server: Any, url: str, data: bytes, key: str) -> None:
    with server.client() as c:
        by_url = c.get(url)
        assert by_url.status_code == 200
        assert sha256_hex(by_url.content) == sha256_hex(data)
        by_key = c.get(f"/objects/interop/{key}")
        assert by_key.status_code == 200
        assert sha256_hex(by_key.content) == sha256_hex(data)
        assert by_key.headers["X-Edgestore-Sha256"] == sha256_hex(data)


def _offset_of(headers: dict[str, str]) -> int:
    return int({k.lower(): v for k, v in headers.items()}["upload-offset"])


def test_upload_with_checksums(server, tmp_path, monkeypatch) -> None:
    path, data = _file(tmp_path, 9 * MiB + 7, seed=700)
    key, meta = _meta("whole")
    sent = RecordingPatches(monkeypatch)
    client = tus_client.TusClient(f"{server.url}/files/")
    uploader = client.uploader(str(path), chunk_size=CHUNK, metadata=meta, upload_checksum=True)
    uploader.upload()
    assert len(sent.headers) == 5
    for headers, offset in zip(sent.headers, range(0, len(data), CHUNK), strict=True):
        lowered = {k.lower(): v for k, v in headers.items()}
        chunk = data[offset : offset + CHUNK]
        want = base64.b64encode(hashlib.sha1(chunk).digest()).decode()
        assert lowered["upload-checksum"] == f"sha1 {want}"
    _check_object(server, uploader.url, data, key)


def test_resume_with_a_new_uploader(server, tmp_path, monkeypatch) -> None:
    path, data = _file(tmp_path, 12 * MiB + 1, seed=701)
    key, meta = _meta("resume")
    client = tus_client.TusClient(f"{server.url}/files/")
    first = client.uploader(str(path), chunk_size=CHUNK, metadata=meta, upload_checksum=True)
    for _ in range(3):  # the first uploader stops after three chunks (its process "dies")
        first.upload_chunk()
    url = first.url
    with server.client() as c:
        assert tus_offset(c, url) == 3 * CHUNK

    sent = RecordingPatches(monkeypatch)
    second = Uploader(str(path), url=url, client=client, chunk_size=CHUNK, upload_checksum=True)
    assert second.offset == 3 * CHUNK  # from HEAD
    second.upload()
    offsets = [_offset_of(h) for h in sent.headers]
    assert offsets[0] == 3 * CHUNK  # resumed: no byte sent twice
    assert len(data) - offsets[0] < len(data)
    _check_object(server, url, data, key)


def test_resume_through_url_storage(server, tmp_path, monkeypatch) -> None:
    path, data = _file(tmp_path, 7 * MiB, seed=702)
    key, meta = _meta("storage")
    client = tus_client.TusClient(f"{server.url}/files/")
    storage = FileStorage(str(tmp_path / "tuspy-urls.json"))
    try:
        first = client.uploader(
            str(path), chunk_size=CHUNK, metadata=meta, store_url=True, url_storage=storage
        )
        first.upload_chunk()
        first.upload_chunk()
        sent = RecordingPatches(monkeypatch)
        second = client.uploader(
            str(path), chunk_size=CHUNK, metadata=meta, store_url=True, url_storage=storage
        )
        assert second.url == first.url
        assert second.offset == 2 * CHUNK
        second.upload()
        assert _offset_of(sent.headers[0]) == 2 * CHUNK
        _check_object(server, first.url, data, key)
    finally:
        storage.close()


class _CorruptSha1:
    """A 'sha1' that lies about one chunk: tuspy then sends a wrong Upload-Checksum."""

    def __init__(self, bad_offsets: set[int], chunk: int) -> None:
        self.calls = 0
        self.bad = bad_offsets
        self.chunk = chunk

    def __call__(self, data: bytes) -> Any:
        offset = self.calls * self.chunk
        self.calls += 1
        return hashlib.sha1(data + (b"!" if offset in self.bad else b""))


def test_a_corrupted_tuspy_checksum_is_refused_with_460_and_nothing_kept(server, tmp_path) -> None:
    path, data = _file(tmp_path, 6 * MiB, seed=703)
    key, meta = _meta("corrupt")
    client = tus_client.TusClient(f"{server.url}/files/")
    lying = _CorruptSha1({CHUNK}, CHUNK)

    class LyingUploader(Uploader):
        CHECKSUM_ALGORITHM_PAIR = ("sha1", lying)

    uploader = LyingUploader(
        str(path), client=client, chunk_size=CHUNK, metadata=meta, upload_checksum=True
    )
    uploader.upload_chunk()  # chunk 0: a true checksum
    with pytest.raises(TusUploadFailed) as failed:
        uploader.upload_chunk()  # chunk 1: a wrong one
    assert failed.value.status_code == 460
    with server.client() as c:
        assert tus_offset(c, uploader.url) == CHUNK  # nothing of the refused chunk kept
        # the same through a raw PATCH with a corrupted checksum
        body = data[CHUNK : 2 * CHUNK]
        wrong = base64.b64encode(hashlib.sha1(body[::-1]).digest()).decode()
        r = tus_patch(c, uploader.url, CHUNK, body, **{"Upload-Checksum": f"sha1 {wrong}"})
        assert r.status_code == 460
        assert tus_offset(c, uploader.url) == CHUNK
    # an honest uploader resumes and completes the upload
    honest = Uploader(
        str(path), url=uploader.url, client=client, chunk_size=CHUNK, upload_checksum=True
    )
    honest.upload()
    _check_object(server, uploader.url, data, key)


def test_async_uploader(server, tmp_path) -> None:
    path, data = _file(tmp_path, 5 * MiB + 3, seed=704)
    key, meta = _meta("async")
    client = tus_client.TusClient(f"{server.url}/files/")
    uploader = AsyncUploader(
        str(path), client=client, chunk_size=CHUNK, metadata=meta, upload_checksum=True
    )
    asyncio.run(uploader.upload())
    _check_object(server, uploader.url, data, key)


def test_no_metadata(server, tmp_path) -> None:
    """tuspy sends an empty Upload-Metadata header when it has none (@tus/server says 400)."""
    path, data = _file(tmp_path, 1000, seed=705)
    client = tus_client.TusClient(f"{server.url}/files/")
    uploader = client.uploader(str(path), chunk_size=CHUNK)
    uploader.upload()
    with server.client() as c:
        assert sha256_hex(c.get(uploader.url).content) == sha256_hex(data)
        assert "Upload-Metadata" not in c.head(uploader.url, headers=TUS).headers


def test_empty_file(server, tmp_path) -> None:
    path, data = _file(tmp_path, 0, seed=706)
    key, meta = _meta("empty")
    client = tus_client.TusClient(f"{server.url}/files/")
    uploader = client.uploader(str(path), metadata=meta)
    uploader.upload()
    _check_object(server, uploader.url, data, key)
