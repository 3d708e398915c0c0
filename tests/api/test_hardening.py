"""Hardening: no route answers without credentials, hostile keys and file names are refused
or neutralised, oversized heads and metadata are refused, secrets never reach the log, and
schemathesis finds no 5xx in the OpenAPI routes."""

from __future__ import annotations

import re
import socket
import uuid
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import fastapi.routing
import pytest
from starlette.routing import Route

from edgestore.api import presign
from edgestore.api.app import create_app
from edgestore.api.protocol import MAX_REQUEST_HEAD
from edgestore.config import load_settings
from tests.api.access import cli, client_with, create_key, grant_url
from tests.helpers import TUS, patch_headers, tus_metadata, tus_upload
from tests.server import ServerProcess

OPEN_PATHS = {"/healthz", "/readyz"}
_PARAM = re.compile(r"\{([a-z_]+)(:[a-z]+)?\}")


def route_table(tmp_path: Path) -> list[tuple[set[str], str]]:
    """(methods, path template) of every route of the app: tus, native, docs routes too."""
    app = create_app(load_settings(home=tmp_path))  # not started: nothing is opened
    iterate = getattr(fastapi.routing, "iter_route_contexts", None)  # routers included lazily
    contexts = list(iterate(app.routes)) if iterate else app.routes
    table = []
    for ctx in contexts:
        route = getattr(ctx, "original_route", ctx)
        assert isinstance(route, Route), f"unexpected route type {route!r}: walk it too"
        table.append((set(route.methods or ()), ctx.path))
    return table


def every_route(tmp_path: Path) -> list[tuple[str, str]]:
    """(method, concrete path) for every route, path parameters filled in."""
    found = []
    for methods, template in route_table(tmp_path):
        path = _PARAM.sub(lambda m: f"x{uuid.uuid4().hex[:8]}", template)
        found += [(method, path) for method in sorted(methods)]
    return found


def test_no_route_answers_without_credentials(auth_server: ServerProcess, tmp_path: Path) -> None:
    routes = every_route(tmp_path)
    paths = {p for _, p in routes}
    for expected in ("/files/", "/objects", "/metrics", "/openapi.json", "/docs", "/v1/presign"):
        assert expected in paths, f"{expected} missing from the walk: {sorted(paths)}"
    assert any(p.startswith("/v1/uploads/") for p in paths)
    assert len(routes) >= 25
    extra = [("GET", "/no-such-route"), ("POST", "/objects/b/k"), ("TRACE", "/files/")]
    with client_with(auth_server) as anonymous, client_with(auth_server, "esk_forged") as forged:
        for method, path in routes + extra:
            for c in (anonymous, forged):
                r = c.request(method, path, headers=TUS)
                if path in OPEN_PATHS:
                    assert r.status_code in (200, 503), (method, path, r.status_code)
                else:
                    assert r.status_code == 401, (method, path, r.status_code, r.text)


def test_the_openapi_schema_lists_only_walked_routes(
    auth_server: ServerProcess, tmp_path: Path
) -> None:
    walked = {
        (m, _PARAM.sub("*", path)) for methods, path in route_table(tmp_path) for m in methods
    }
    with auth_server.client() as c:
        schema = c.get("/openapi.json").json()
    for path, operations in schema["paths"].items():
        for method in operations:
            assert (method.upper(), _PARAM.sub("*", path)) in walked, (method, path)


@pytest.mark.parametrize(
    "meta",
    [
        {"key": "../../etc/passwd"},
        {"key": "a/../../b"},
        {"key": "/etc/passwd"},
        {"key": "nul\x00byte"},
        {"key": "line\nbreak"},
        {"bucket": "../x"},
        {"bucket": "UPPER"},
    ],
)
def test_hostile_keys_are_refused(auth_server: ServerProcess, meta: dict[str, str]) -> None:
    with auth_server.client() as c:
        h = {**TUS, "Upload-Length": "1", "Upload-Metadata": tus_metadata(meta)}
        r = c.post("/files/", headers=h)
        assert r.status_code == 400, r.text
        bucket, key = meta.get("bucket", "default"), meta.get("key", "k")
        r = c.post("/v1/uploads", json={"bucket": bucket, "key": key, "size": 1})
        assert r.status_code in (400, 422), r.text
        r = c.post("/v1/presign", json={"action": "upload", "bucket": bucket, "key": key})
        assert r.status_code == 400, r.text


@pytest.mark.parametrize(
    "path",
    [
        "/objects/default/..%2F..%2Fetc%2Fpasswd",
        "/objects/default/a%00b",
        "/objects/default/%2e%2e/secret",
        "/objects/%2e%2e/x",
        "/ids/..%2F..%2Fetc",
        "/files/..%2F..%2Fetc",
        "/objects/default/" + "a" * 2000,
        "/objects?prefix=a%00b",
        "/objects?bucket=%00",
        "/objects/default/k?version=99999999999",
    ],
)
def test_traversal_in_paths_is_a_client_error(auth_server: ServerProcess, path: str) -> None:
    with auth_server.client() as c:
        for method in ("GET", "HEAD", "DELETE"):
            r = c.request(method, path, headers=TUS)
            assert 400 <= r.status_code < 500, (method, path, r.status_code, r.text)


def test_file_names_cannot_inject_headers(auth_server: ServerProcess) -> None:
    evil = "evil\r\nSet-Cookie: pwned=1\r\nX-Injected: 1/../../passwd.txt"
    meta = {"filename": evil, "filetype": "text/plain\r\nX-Injected: 2"}
    with auth_server.client() as c:
        url = tus_upload(c, b"harmless", metadata=meta)
        r = c.get(url)
        assert r.status_code == 200 and r.content == b"harmless"
        assert "set-cookie" not in r.headers and "x-injected" not in r.headers
        disposition = r.headers["content-disposition"]
        assert not re.search(r"[\r\n\x00]", disposition)
        assert 'filename="' in disposition and "/" not in disposition.split('"')[1]
        assert r.headers["content-type"] == "application/octet-stream"  # unusable: not echoed
        key = c.get(url.replace("/files/", "/ids/", 1)).status_code  # an upload id is no object id
        assert key in (400, 404)


def test_nul_in_file_names_is_no_server_error(auth_server: ServerProcess) -> None:
    meta = tus_metadata({"filename": "a\x00b.txt"})
    with auth_server.client() as c:
        r = c.post("/files/", headers={**TUS, "Upload-Length": "1", "Upload-Metadata": meta})
        assert r.status_code in (201, 400), r.text
        if r.status_code == 201:
            assert (
                c.patch(r.headers["Location"], content=b"x", headers=patch_headers(0)).status_code
                == 204
            )
            got = c.get(r.headers["Location"])
            assert got.status_code == 200 and "\x00" not in got.headers["content-disposition"]
        r = c.post("/v1/uploads", json={"filename": "a\x00b.txt", "size": 1})
        assert r.status_code in (201, 400, 422), r.text


def test_oversized_heads_and_metadata_are_refused(auth_server: ServerProcess) -> None:
    with auth_server.client() as c:
        r = c.get("/objects", headers={"X-Padding": "a" * (MAX_REQUEST_HEAD + 1)})
        assert r.status_code == 431
        big = tus_metadata({"note": "x" * 9000})
        r = c.post("/files/", headers={**TUS, "Upload-Length": "1", "Upload-Metadata": big})
        assert r.status_code == 400 and "Upload-Metadata" in r.json()["message"]
        many = ",".join(f"k{i}" for i in range(100))
        r = c.post("/files/", headers={**TUS, "Upload-Length": "1", "Upload-Metadata": many})
        assert r.status_code == 400
        assert c.get("/objects").status_code == 200  # the server is fine afterwards
    url = grant_url(auth_server, "upload", "default", "big-meta")
    with client_with(auth_server) as c:
        r = c.post(url, headers={**TUS, "Upload-Length": "1", "Upload-Metadata": big})
        assert r.status_code == 400
    long_url = b"GET /objects?prefix=" + b"a" * (MAX_REQUEST_HEAD + 1) + b" HTTP/1.1\r\n\r\n"
    with socket.create_connection(("127.0.0.1", auth_server.port), timeout=10) as sock:
        sock.sendall(long_url)
        assert sock.recv(64).startswith(b"HTTP/1.1 431")
    # a head that never ends is cut off as it streams, not buffered whole
    with socket.create_connection(("127.0.0.1", auth_server.port), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Endless: ")
        try:
            for _ in range(64):
                sock.sendall(b"a" * 65536)
        except OSError:
            pass  # refused and closed: what we want
        assert sock.recv(64).startswith(b"HTTP/1.1 431")


def test_secrets_never_reach_the_log(tmp_path: Path) -> None:
    server = ServerProcess(
        home=tmp_path / "home",
        database_url=f"sqlite:///{tmp_path / 'meta.db'}",
        auth=True,
        env_extra={"EDGESTORE_LOG_LEVEL": "debug"},
    ).start()
    secrets = [server.admin_key or "", "esk_wrong_" + uuid.uuid4().hex]
    try:
        key = create_key(server, "--name", "logged", "--scope", "upload", "--scope", "read")
        secrets.append(key)
        up = grant_url(server, "upload", "default", "logs/a.bin")
        down = cli(server, "presign", "download", "default", "logs/a.bin", "--url", server.url)
        down_url = down.stdout.strip().splitlines()[-1]
        with client_with(server, key) as c:
            tus_upload(c, b"data", metadata={"key": "logs/b.bin"})
        with client_with(server, secrets[1]) as c:
            assert c.get("/objects").status_code == 401
        with client_with(server) as c:
            r = c.post(up, headers={**TUS, "Upload-Length": "4"})
            location = r.headers["Location"]
            assert c.patch(location, content=b"abcd", headers=patch_headers(0)).status_code == 204
            assert c.get(down_url).status_code == 200
            assert c.get(down_url.replace("es_expires=", "es_expires=9")).status_code == 403
            assert c.get(location).status_code == 403
        with server.client() as c:
            minted = c.post("/v1/presign", json={"action": "download", "key": "logs/b.bin"})
            assert c.get("/nowhere", params={"es_signature": secrets[1]}).status_code == 404
        for url in (up, down_url, location, minted.json()["url"]):
            for name in presign.SECRET_PARAMS:
                secrets += parse_qs(urlsplit(url).query).get(name, [])
    finally:
        server.stop()
    log = server.log()
    assert "GET /objects 401" in log and "PATCH /files/" in log  # requests were logged
    assert "authorization" not in log.lower()
    for secret in secrets:
        assert len(secret) > 20 and secret not in log, "a secret reached the server log"


@pytest.mark.slow
def test_schemathesis_finds_no_server_errors(auth_server: ServerProcess) -> None:
    """Every OpenAPI operation, fuzzed from its schema with an admin key: no 5xx."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    schema = schemathesis.openapi.from_url(
        f"{auth_server.url}/openapi.json", headers=auth_server.auth_headers
    )
    failures: list[str] = []
    log_before = len(auth_server.log())
    for result in schema.get_all_operations():
        operation = result.ok()

        @settings(max_examples=40, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        @given(case=operation.as_strategy())
        def fuzz(case: schemathesis.Case) -> None:
            r = case.call(base_url=auth_server.url, headers=auth_server.auth_headers, timeout=30)
            if r.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path}: {r.status_code} {r.text}")

        fuzz()
    assert not failures, "\n".join(failures[:20])
    assert "Traceback" not in auth_server.log()[log_before:]


_CREATE = b"POST /files/ HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\nUpload-Length: 1\r\n"


@pytest.mark.parametrize(
    "framing",
    [
        b"Content-Length: 0\r\nContent-Length: 5\r\n",
        b"Content-Length: 0\r\nContent-Length: 0\r\n",
        b"Content-Length: 0, 0\r\n",
        b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
        b"Transfer-Encoding: gzip\r\n",
        b"Transfer-Encoding: chunked, gzip\r\n",
        b"Transfer-Encoding : chunked\r\n",
        b"X: a\r\nTransfer-Encoding:\r\n chunked\r\n",
        b"Content-Length: -1\r\n",
        b"Content-Length: +1\r\n",
        b"Content-Length: 9223372036854775808000\r\n",
    ],
)
def test_ambiguous_body_framing_is_400(auth_server: ServerProcess, framing: bytes) -> None:
    """Request smuggling: where a proxy in front and the node could disagree on where a
    request ends, the node refuses it before any route (and any credential check) runs."""
    with socket.create_connection(("127.0.0.1", auth_server.port), timeout=10) as sock:
        sock.sendall(_CREATE + framing + b"\r\n0\r\n\r\n")
        assert sock.recv(64).startswith(b"HTTP/1.1 400"), framing
