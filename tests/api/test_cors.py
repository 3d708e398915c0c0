"""CORS for browser clients: preflights answered without credentials for allowed origins, the
tus headers allowed and exposed, errors readable by the page, nothing for other origins."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.api.access import client_with, grant_url
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
