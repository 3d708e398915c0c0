"""CORS for browser clients: preflights answered without credentials for allowed origins, the
tus headers allowed and exposed, errors readable by the page, nothing for other origins."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from edgestore.api.app import create_app
from edgestore.errors import ConfigError
from tests.api.access import client_with, grant_url
from tests.conftest import SettingsFactory
from tests.helpers import TUS
from tests.server import ServerProcess

ORIGIN = "https://app.example"


@pytest.fixture(scope="module")
def cors_server(tmp_path_factory: pytest.TempPathFactory):
    base: Path = tmp_path_factory.mktemp("cors")
    proc = ServerProcess(
        home=base / "home",
        database_url=f"sqlite:///{base / 'meta.db'}",
        auth=True,
        env_extra={"EDGESTORE_CORS_ORIGINS": f"{ORIGIN},https://other.example"},
    ).start()
    try:
        yield proc
    finally:
        proc.stop()


def _preflight(method: str, headers: str, origin: str = ORIGIN) -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": headers,
    }


@pytest.mark.parametrize(
    ("path", "method", "headers"),
    [
        ("/files/", "POST", "tus-resumable,upload-length,upload-metadata,authorization"),
        ("/files/abc", "PATCH", "tus-resumable,upload-offset,content-type,upload-checksum"),
        ("/files/abc", "HEAD", "tus-resumable"),
        ("/files/abc", "DELETE", "tus-resumable"),
        ("/objects/b/k", "GET", "range,if-none-match,authorization"),
        ("/v1/presign", "POST", "authorization,content-type"),
        ("/v1/uploads", "POST", "authorization,content-type,idempotency-key"),
    ],
)
def test_preflight_needs_no_credentials(
    cors_server: ServerProcess, path: str, method: str, headers: str
) -> None:
    with client_with(cors_server) as c:
        r = c.options(path, headers=_preflight(method, headers))
    assert r.status_code == 200, r.text
    assert r.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert method in r.headers["Access-Control-Allow-Methods"]
    allowed = r.headers["Access-Control-Allow-Headers"].lower()
    for name in headers.split(","):
        assert name in allowed


def test_a_foreign_origin_gets_no_cors(cors_server: ServerProcess) -> None:
    with client_with(cors_server) as c:
        r = c.options(
            "/files/", headers=_preflight("POST", "tus-resumable", "https://evil.example")
        )
        assert r.status_code == 400
        assert "Access-Control-Allow-Origin" not in r.headers
        r = c.get("/healthz", headers={"Origin": "https://evil.example"})
        assert "Access-Control-Allow-Origin" not in r.headers


def test_responses_expose_the_tus_headers(cors_server: ServerProcess) -> None:
    url = grant_url(cors_server, "upload", "default", "cors/obj")
    with client_with(cors_server, headers={"Origin": ORIGIN}) as c:
        r = c.post(url, headers={**TUS, "Upload-Length": "3"})
        assert r.status_code == 201
        assert r.headers["Access-Control-Allow-Origin"] == ORIGIN
        exposed = {h.strip().lower() for h in r.headers["Access-Control-Expose-Headers"].split(",")}
        for name in ("location", "upload-offset", "upload-length", "tus-resumable", "tus-version",
                     "tus-max-size", "tus-extension", "upload-expires", "upload-metadata",
                     "upload-concat", "etag", "content-range", "x-request-id"):  # fmt: skip
            assert name in exposed, name
        # a refusal is readable by the page too, so it can show why
        r = c.get("/objects")
        assert r.status_code == 401 and r.headers["Access-Control-Allow-Origin"] == ORIGIN


def test_no_cors_unless_configured(auth_server: ServerProcess) -> None:
    with client_with(auth_server) as c:
        r = c.options("/files/", headers=_preflight("POST", "tus-resumable"))
        assert r.status_code == 401  # no origin is allowed: nothing answers a preflight
        assert "Access-Control-Allow-Origin" not in r.headers


def test_a_conditional_delete_from_a_page_passes_its_preflight(cors_server: ServerProcess) -> None:
    """docs/api.md: a DELETE of an object with `If-Match` deletes only the version meant. A page
    sending it was stopped at the preflight (If-Match was not an allowed header)."""
    with client_with(cors_server) as c:
        r = c.options("/objects/b/k", headers=_preflight("DELETE", "authorization,if-match"))
    assert r.status_code == 200, r.text
    assert "if-match" in r.headers["Access-Control-Allow-Headers"].lower()


def test_an_ietf_creation_naming_its_file_passes_its_preflight(cors_server: ServerProcess) -> None:
    """An IETF-draft client names the file in `Content-Disposition` (api/tus/ietf.py reads
    it): from a page, that request was stopped at the preflight."""
    with client_with(cors_server) as c:
        r = c.options(
            "/files/",
            headers=_preflight("POST", "upload-draft-interop-version,content-disposition"),
        )
    assert r.status_code == 200, r.text
    assert "content-disposition" in r.headers["Access-Control-Allow-Headers"].lower()


# What a page reads without them being exposed (Fetch: CORS-safelisted response headers), and
# headers that are for the browser itself, not for the page.
_READABLE = {"cache-control", "content-language", "content-length", "content-type", "expires",
             "last-modified", "pragma"}  # fmt: skip
_FOR_THE_BROWSER = {"vary", "date", "server", "connection", "keep-alive", "transfer-encoding",
                    "x-content-type-options", "content-security-policy"}  # fmt: skip


def _unexposed(r: httpx.Response) -> set[str]:
    exposed = {h.strip().lower() for h in r.headers["Access-Control-Expose-Headers"].split(",")}
    sent = {name.lower() for name in r.headers}
    hidden = sent - exposed - _READABLE - _FOR_THE_BROWSER
    return {h for h in hidden if not h.startswith("access-control-")}


def test_every_header_the_server_sends_a_page_is_readable(cors_server: ServerProcess) -> None:
    """A header missing from Access-Control-Expose-Headers reads as null in the page: the IETF
    draft's Upload-Limit (its size and lifetime limits) and Accept-Patch, a 401's
    WWW-Authenticate. Every response a browser client meets, errors included."""
    draft = {"Upload-Draft-Interop-Version": "6"}
    seen: dict[str, set[str]] = {}
    with client_with(cors_server, headers={"Origin": ORIGIN}) as c:
        auth = cors_server.auth_headers
        seen["401"] = _unexposed(c.get("/objects"))
        seen["OPTIONS tus"] = _unexposed(c.options("/files/", headers={**auth, **TUS}))
        seen["OPTIONS draft"] = _unexposed(c.options("/files/", headers={**auth, **draft}))
        r = c.post("/files/", headers={**auth, **TUS, "Upload-Length": "5"})
        seen["POST"] = _unexposed(r)
        url = r.headers["Location"]
        seen["HEAD"] = _unexposed(c.head(url, headers={**auth, **TUS}))
        patch = {**auth, **TUS, "Content-Type": "application/offset+octet-stream"}
        seen["409"] = _unexposed(
            c.patch(url, headers={**patch, "Upload-Offset": "3"}, content=b"x")
        )
        r = c.patch(url, headers={**patch, "Upload-Offset": "0"}, content=b"hello")
        assert r.status_code == 204, r.text
        seen["PATCH"] = _unexposed(r)
        seen["GET"] = _unexposed(c.get(url, headers=auth))
        seen["416"] = _unexposed(c.get(url, headers={**auth, "Range": "bytes=9-"}))
        r = c.post("/files/", headers={**auth, **draft, "Upload-Complete": "?1"}, content=b"abc")
        assert r.status_code == 201, r.text
        seen["POST draft"] = _unexposed(r)
    assert {k: v for k, v in seen.items() if v} == {}


def test_a_preflight_from_a_public_page_to_a_lan_server_passes(cors_server: ServerProcess) -> None:
    """Chromium's Private Network Access: a page on a public site calling a server on a private
    address (the mini-PC of the README) adds Access-Control-Request-Private-Network to its
    preflight, and Starlette refused the whole preflight (400) unless allowed: the upload
    failed at the preflight for an origin the operator listed in cors_origins."""
    headers = {**_preflight("POST", "tus-resumable,upload-length"),
               "Access-Control-Request-Private-Network": "true"}  # fmt: skip
    with client_with(cors_server) as c:
        r = c.options("/files/", headers=headers)
        assert r.status_code == 200, r.text
        assert r.headers["Access-Control-Allow-Private-Network"] == "true"
        headers["Origin"] = "https://evil.example"  # only for the origins allowed
        r = c.options("/files/", headers=headers)
        assert r.status_code == 400
        assert "Access-Control-Allow-Origin" not in r.headers


def _in_process(app: FastAPI, method: str, path: str, headers: dict[str, str]) -> httpx.Response:
    async def run() -> httpx.Response:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://es") as c:
                return await c.request(method, path, headers=headers)

    return asyncio.run(run())


def test_a_500_is_readable_by_the_page(make_settings: SettingsFactory) -> None:
    """An error nothing maps (a bug) was answered 500 by the request-context middleware, which
    sits outside CORS: no Access-Control-Allow-Origin, so the page saw a network error
    instead of the 500 and could not read the X-Request-ID to report."""
    settings = make_settings(
        auth_enabled=False, maintenance_interval_seconds=0, cors_origins=ORIGIN
    )
    app = create_app(settings)

    @app.get("/bug")
    async def bug() -> None:
        raise RuntimeError("a bug")

    r = _in_process(app, "GET", "/bug", {"Origin": ORIGIN, "X-Request-ID": "rid-500"})
    assert r.status_code == 500
    assert r.headers.get("Access-Control-Allow-Origin") == ORIGIN
    assert "x-request-id" in r.headers["Access-Control-Expose-Headers"].lower()
    assert r.headers["X-Request-ID"] == "rid-500"
    assert "Origin" in r.headers["Vary"]


@pytest.mark.parametrize("written", ["https://App.Example/", "HTTPS://app.example:443"])
def test_an_origin_is_matched_however_it_is_written(
    make_settings: SettingsFactory, written: str
) -> None:
    """A browser sends its Origin lowercased and without a path; an operator who wrote the
    site's address (`https://App.example/`) got every preflight refused, with no hint why."""
    settings = make_settings(maintenance_interval_seconds=0, cors_origins=written)
    r = _in_process(create_app(settings), "OPTIONS", "/files/", _preflight("POST", "tus-resumable"))
    assert r.status_code == 200, r.text
    assert r.headers["Access-Control-Allow-Origin"] == ORIGIN


@pytest.mark.parametrize("written", ["https://app.example/upload", "app.example", "https://a.b?c"])
def test_an_origin_that_no_browser_sends_is_refused(
    make_settings: SettingsFactory, written: str
) -> None:
    with pytest.raises(ConfigError, match="cors_origins"):
        make_settings(cors_origins=written)
