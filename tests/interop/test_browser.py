"""Uploads from a real browser: Chromium (headless) running tus-js-client's and Uppy's browser
builds on a page served from another origin, against `edgestore serve` with authentication
on, as a site would embed them: CORS preflights, exposed headers, a File sliced by the
browser, resuming from localStorage after a reload, reading back with fetch and Range.

Skipped when Chromium, node or tests/interop/node_modules is missing, unless
EDGESTORE_REQUIRE_BROWSER=1 (CI: `.ci/run` installs Debian's chromium).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.peers import PageServer, drive_browser
from tests.helpers import MiB, random_bytes, sha256_hex, tus_upload
from tests.server import ServerProcess

pytestmark = [pytest.mark.interop, pytest.mark.browser]


@pytest.fixture(scope="module")
def page_origin() -> Iterator[str]:
    """The page and the clients' browser builds, from an origin of their own."""
    page = PageServer()
    try:
        yield page.origin
    finally:
        page.close()


@pytest.fixture(scope="module")
def server(page_origin: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp("browser-server")
    proc = ServerProcess(
        home=base / "home",
        database_url=f"sqlite:///{base / 'meta.db'}",
        auth=True,
        env_extra={"EDGESTORE_CORS_ORIGINS": page_origin},
    ).start()
    try:
        yield proc
    finally:
        proc.stop()


def drive(
    node: str, chromium: str, page: str, file: Path, steps: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Run the steps in one browser tab (`node`: the fixture's check that node is there);
    the JSON line of each step that ran."""
    lines, done = drive_browser(chromium, page, file, steps, timeout=180)
    if done.returncode != 0 and not any("error" in line for line in lines):
        pytest.fail(f"the browser driver failed:\n{done.stdout}\n{done.stderr}")
    return lines


def _tus(server: ServerProcess, **options: object) -> dict[str, object]:
    """A tus upload's options in the page: the server's endpoint, its key, and `options`."""
    return {"endpoint": f"{server.url}/files/", "headers": server.auth_headers, **options}


def _read_back(server: ServerProcess, url: str, data: bytes) -> httpx.Response:
    """What the server stored at `url`, outside the browser: it must be `data`, whole."""
    with server.client() as admin:
        got = admin.get(url)
    assert got.status_code == 200
    assert sha256_hex(got.content) == sha256_hex(data)
    return got


def _file(tmp_path: Path, name: str, size: int, seed: int) -> tuple[Path, bytes]:
    data = random_bytes(size, seed=seed)
    path = tmp_path / name
    path.write_bytes(data)
    return path, data


@pytest.mark.parametrize("parallel", [1, 3])
def test_tus_js_client_in_chromium_uploads_and_reads_back(
    node: str,
    chromium: str,
    page_origin: str,
    server: ServerProcess,
    tmp_path: Path,
    parallel: int,
) -> None:
    path, data = _file(tmp_path, "holiday video.mp4", 9 * MiB + 123, seed=parallel)
    upload = _tus(server, chunkSize=2 * MiB, parallelUploads=parallel)
    lines = drive(node, chromium, f"{page_origin}/browser_page.html", path, [
        {"call": "tusUpload", "args": upload},
    ])  # fmt: skip
    assert "result" in lines[0], f"{lines}\n{server.log()[-3000:]}"
    url = lines[0]["result"]["url"]
    back = drive(node, chromium, f"{page_origin}/browser_page.html", path, [
        {"call": "readBack", "args": {"url": url, "headers": server.auth_headers}},
    ])[0]["result"]  # fmt: skip
    assert back["status"] == 200
    assert back["sha256"] == sha256_hex(data)
    assert back["etag"], "ETag must be readable across origins (exposed by CORS)"
    assert "holiday" in back["disposition"]
    assert (back["rangeStatus"], back["rangeLength"]) == (206, 10)
    assert back["contentRange"] == f"bytes 10-19/{len(data)}"
    got = _read_back(server, url, data)
    assert got.headers["content-type"] == "video/mp4"  # the File's type, from the browser


def test_an_upload_goes_on_from_the_servers_offset_after_the_page_reloads(
    node: str, chromium: str, page_origin: str, server: ServerProcess, tmp_path: Path
) -> None:
    """The tab stops during the upload (abort: a closed tab or a dropped link); after a reload
    the page finds the upload in localStorage and resumes from the offset the server reports,
    not from zero and not as a new upload.

    (Chromium hands a request's body to the socket at once on loopback, so its progress, and
    with it the abort, comes at a request's end: the disconnect in the middle of a PATCH is
    covered at the socket level in tests/e2e/test_server_locks.py and test_server_crash.py.)"""
    path, data = _file(tmp_path, "backup.tar", 24 * MiB + 7, seed=11)
    upload = _tus(server, chunkSize=8 * MiB)
    lines = drive(node, chromium, f"{page_origin}/browser_page.html", path, [
        {"call": "tusUpload", "args": {**upload, "abortAt": 0.4}},
        {"reload": True},
        {"call": "tusUpload", "args": {**upload, "resume": True}},
    ])  # fmt: skip
    assert [("result" in line) for line in lines] == [True, True, True], lines
    first, resumed = lines[0]["result"], lines[2]["result"]
    assert first["aborted"] and first["sent"] < len(data)
    assert resumed["url"] == first["url"], "the reloaded page must resume, not start anew"
    assert resumed["offsets"], "the resumed upload must ask the server for its offset (HEAD)"
    assert 8 * MiB <= resumed["offsets"][0] < len(data)
    _read_back(server, first["url"], data)


def test_uppy_uploads_through_its_tus_plugin(
    node: str, chromium: str, page_origin: str, server: ServerProcess, tmp_path: Path
) -> None:
    path, data = _file(tmp_path, "scan.pdf", 5 * MiB + 999, seed=21)
    upload = _tus(server, chunkSize=2 * MiB)
    lines = drive(node, chromium, f"{page_origin}/browser_page.html", path, [
        {"call": "uppyUpload", "args": upload},
    ])  # fmt: skip
    assert "result" in lines[0], f"{lines}\n{server.log()[-3000:]}"
    got = _read_back(server, lines[0]["result"]["url"], data)
    assert got.headers["content-type"] == "application/pdf"
    assert "scan.pdf" in got.headers["content-disposition"]


def test_a_page_from_an_origin_not_allowed_cannot_upload(
    node: str, chromium: str, server: ServerProcess, tmp_path: Path
) -> None:
    """CORS is enforced: the same page from an origin missing from `cors_origins` is stopped
    at the preflight, with a valid key in hand, and no upload is created."""
    other = PageServer()
    try:
        path, _ = _file(tmp_path, "x.bin", 100_000, seed=31)
        posts_before = server.log().count("POST /files/")
        upload = _tus(server)
        lines = drive(node, chromium, other.page, path, [{"call": "tusUpload", "args": upload}])
    finally:
        other.close()
    assert "error" in lines[0], lines
    assert "failed to create upload" in lines[0]["error"]
    assert server.log().count("POST /files/") == posts_before


def test_tus_js_client_uploads_with_the_ietf_draft_from_a_page(
    node: str, chromium: str, page_origin: str, server: ServerProcess, tmp_path: Path
) -> None:
    """tus-js-client's `protocol: 'ietf-draft-05'` from another origin: its own headers
    (Upload-Complete, Upload-Draft-Interop-Version) pass the preflight, and what it reads
    back is exposed."""
    path, data = _file(tmp_path, "draft.bin", 5 * MiB + 77, seed=41)
    upload = _tus(server, chunkSize=2 * MiB, protocol="ietf-draft-05")
    lines = drive(node, chromium, f"{page_origin}/browser_page.html", path, [
        {"call": "tusUpload", "args": upload},
    ])  # fmt: skip
    assert "result" in lines[0], f"{lines}\n{server.log()[-3000:]}"
    _read_back(server, lines[0]["result"]["url"], data)


def test_what_a_page_reads_of_refusals_and_conditional_requests(
    node: str, chromium: str, page_origin: str, server: ServerProcess, tmp_path: Path
) -> None:
    """Requests a page sends with fetch: a conditional DELETE (If-Match, docs/api.md) was
    stopped at the preflight ("Failed to fetch"); a 401's WWW-Authenticate and the draft's
    Upload-Limit read as null (not exposed)."""
    path, _ = _file(tmp_path, "x.bin", 10, seed=51)
    with server.client() as admin:
        tus_upload(admin, b"0123456789", metadata={"bucket": "default", "key": "browser/if"})
        etag = admin.head("/objects/default/browser/if").headers["ETag"]
    obj = f"{server.url}/objects/default/browser/if"
    steps = [
        {"method": "DELETE", "url": obj, "headers": {**server.auth_headers, "If-Match": '"x"'},
         "read": ["X-Request-ID"]},
        {"method": "DELETE", "url": obj, "headers": {**server.auth_headers, "If-Match": etag},
         "read": []},
        {"method": "GET", "url": obj, "headers": {}, "read": ["WWW-Authenticate"]},
        {"method": "OPTIONS", "url": f"{server.url}/files/",
         "headers": {**server.auth_headers, "Upload-Draft-Interop-Version": "6"},
         "read": ["Upload-Limit"]},
    ]  # fmt: skip
    lines = drive(node, chromium, f"{page_origin}/browser_page.html", path, [
        {"call": "fetchAs", "args": step} for step in steps
    ])  # fmt: skip
    results = [line.get("result") for line in lines]
    assert [r.get("status") for r in results] == [412, 204, 401, 204], results
    assert results[0]["headers"]["X-Request-ID"]
    assert results[2]["headers"]["WWW-Authenticate"].startswith("Bearer")
    assert "max-size=" in results[3]["headers"]["Upload-Limit"]
