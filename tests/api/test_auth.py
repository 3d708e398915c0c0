"""API keys: bearer authentication, scopes, bucket/prefix limits, the CLI, revocation, the
first-start admin key, and `serve --no-auth` refusing anything but loopback."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

import pytest

from edgestore.api import policy
from edgestore.api.auth import check_bind
from edgestore.api.identity import Identity, Target
from edgestore.config import load_settings
from edgestore.errors import ConfigError, OutOfScope
from tests.api.access import cli, client_with, create_key, key_id_of
from tests.helpers import (
    TUS,
    MiB,
    TricklingPatch,
    patch_headers,
    random_bytes,
    tus_create,
    tus_metadata,
    tus_upload,
)
from tests.server import ServerProcess

EDGESTORE = (sys.executable, "-m", "edgestore")

# --- policy and identity (no server) --------------------------------------------------------


def test_policy_matches_by_method_and_path() -> None:
    table = policy.rules(metrics_public=False)
    assert policy.match(table, "GET", "/healthz")[0].is_open
    assert policy.match(table, "GET", "/metrics")[0].needs == ("admin",)
    assert policy.rules(metrics_public=True)[1].is_open
    rule, m = policy.match(table, "PATCH", "/files/abc")
    assert rule.needs == ("upload",) and m is not None and m["upload_id"] == "abc"
    rule, m = policy.match(table, "GET", "/objects/b/deep/key.txt")
    assert rule.needs == ("read",) and m is not None and m["key"] == "deep/key.txt"
    assert policy.match(table, "DELETE", "/objects/b/k")[0].needs == ("admin",)
    assert policy.match(table, "PUT", "/v1/uploads/u/chunks/c")[0].needs == ("upload",)
    assert policy.match(table, "GET", "/v1/anything/new")[0].needs == ("upload", "read")
    # anything unknown (a new router, a typo, a method) fails closed: admin only
    assert policy.match(table, "GET", "/brand-new")[0] is policy.FALLBACK
    assert policy.match(table, "TRACE", "/files/x")[0] is policy.FALLBACK
    assert policy.match(table, "GET", "/healthz/../objects")[0] is policy.FALLBACK


def test_identity_limits() -> None:
    key = Identity("key", frozenset({"read"}), "k1", "n", bucket="photos", prefix="u/")
    assert key.allows(Target("photos", "u/a.jpg"))
    assert not key.allows(Target("photos", "v/a.jpg"))
    assert not key.allows(Target("other", "u/a.jpg"))
    with pytest.raises(OutOfScope, match="lacks the 'upload' scope"):
        key.require("upload")
    with pytest.raises(OutOfScope, match="cannot be checked"):
        key.require_target(None)
    admin = Identity("key", frozenset({"admin"}))
    admin.require("upload")
    admin.require_target(None)


@pytest.mark.parametrize(
    ("host", "ok"),
    [
        ("127.0.0.1", True),
        ("127.3.4.5", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("10.1.2.3", False),
        ("::", False),
        ("example.com", False),
    ],
)
def test_no_auth_binds_to_loopback_only(host: str, ok: bool) -> None:
    settings = load_settings(auth_enabled=False, host=host)
    if ok:
        check_bind(settings)
    else:
        with pytest.raises(ConfigError, match="only listens on loopback"):
            check_bind(settings)
    check_bind(load_settings(host=host))  # with auth on, any address


def test_admin_key_must_be_long() -> None:
    with pytest.raises(ConfigError, match="at least 32 characters"):
        load_settings(admin_key="short")
    assert "x" * 40 not in repr(load_settings(admin_key="x" * 40))  # never printed


def test_serve_no_auth_on_a_public_address_exits_with_a_clear_error(tmp_path) -> None:
    done = subprocess.run(
        [*EDGESTORE, "--home", str(tmp_path), "serve", "--no-auth", "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 78, done.stderr
    assert "only listens on loopback" in " ".join(done.stderr.split())
    assert "edgestore serving" not in done.stderr  # refused before announcing anything


# --- against a real server with auth on ------------------------------------------------------


def test_no_credentials_is_401_with_a_challenge(auth_server: ServerProcess) -> None:
    with client_with(auth_server) as c:
        assert c.get("/healthz").status_code == 200
        assert c.get("/readyz").status_code == 200
        r = c.get("/objects")
        assert r.status_code == 401
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
        assert r.json()["error"] == "unauthorized"
        assert "Authorization: Bearer" in r.json()["message"]
    with client_with(auth_server, "esk_not_a_real_key") as c:
        r = c.get("/objects")
        assert r.status_code == 401 and r.json()["message"] == "unknown API key"
    with auth_server.client(headers={"Authorization": "Basic dXNlcjpwYXNz"}) as c:
        assert c.get("/objects").status_code == 401


def test_admin_key_and_metrics(auth_server: ServerProcess) -> None:
    read_key = create_key(auth_server, "--name", "metrics-reader", "--scope", "read")
    with auth_server.client() as c:
        assert c.get("/objects").status_code == 200
        assert "edgestore_http_requests" in c.get("/metrics").text
    with client_with(auth_server, read_key) as c:
        r = c.get("/metrics")
        assert r.status_code == 403 and r.json()["error"] == "out_of_scope"
    with client_with(auth_server) as c:
        assert c.get("/metrics").status_code == 401


def test_scopes(auth_server: ServerProcess) -> None:
    tag = uuid.uuid4().hex[:8]
    reader = create_key(auth_server, "--name", f"r-{tag}", "--scope", "read")
    uploader = create_key(auth_server, "--name", f"u-{tag}", "--scope", "upload")
    data = random_bytes(100_000, seed=5)
    key = f"scopes/{tag}.bin"
    with client_with(auth_server, uploader) as c:
        url = tus_upload(c, data, metadata={"key": key}, pieces=2)
        r = c.get(f"/objects/default/{key}")
        assert r.status_code == 403 and "lacks the 'read' scope" in r.json()["message"]
        assert c.get(url).status_code == 403  # GET of a finished upload is a download
        assert c.delete(f"/objects/default/{key}").status_code == 403
    with client_with(auth_server, reader) as c:
        assert c.get(f"/objects/default/{key}").content == data
        r = c.post("/files/", headers={**TUS, "Upload-Length": "1"})
        assert r.status_code == 403 and "'upload' scope" in r.json()["message"]
        # the tus override of a PATCH is authorized as the PATCH it stands for
        r = c.post(url, headers={**TUS, "X-HTTP-Method-Override": "PATCH"})
        assert r.status_code == 403
        assert c.delete(f"/objects/default/{key}").status_code == 403
    with auth_server.client() as c:
        assert c.delete(f"/objects/default/{key}").status_code == 204


def test_a_limited_keys_filled_in_bucket_keeps_utf8_metadata_keys(auth_server) -> None:
    """The bucket a limited key fills in is written back into Upload-Metadata: the client's
    other keys, UTF-8 ones included, must go on byte for byte."""
    tag = uuid.uuid4().hex[:8]
    bucket = f"utf8-{tag}"
    limited = create_key(auth_server, "--name", tag, "--scope", "upload", "--bucket", bucket)
    meta = {"key": f"k-{tag}", "名前/x": "v", "voilà": None}
    with client_with(auth_server, limited) as c:
        headers = {**TUS, "Upload-Length": "1", "Upload-Metadata": tus_metadata(meta)}
        r = c.post("/files/", headers={k.encode(): v.encode() for k, v in headers.items()})
        assert r.status_code == 201, r.text
        h = c.head(r.headers["Location"], headers=TUS)
    field = next(v for k, v in h.headers.raw if k.lower() == b"upload-metadata")
    assert field == tus_metadata({**meta, "bucket": bucket}).encode()


def test_bucket_and_prefix_limited_key(auth_server: ServerProcess) -> None:
    tag = uuid.uuid4().hex[:8]
    bucket = f"tenant-{tag}"
    scopes = ("--scope", "upload", "--scope", "read")
    limited = create_key(auth_server, "--name", tag, *scopes, "--bucket", bucket, "--prefix", "in/")
    with auth_server.client() as admin:
        outside = tus_upload(admin, b"outside", metadata={"bucket": bucket, "key": "out/x"})
        other = tus_upload(admin, b"other", metadata={"bucket": "default", "key": f"in/{tag}"})
        other_id = admin.get(f"/objects/default/in/{tag}").headers["X-Edgestore-Object-Id"]
        open_other = tus_create(admin, 10, metadata={"key": f"in/open-{tag}"})
    with client_with(auth_server, limited) as c:
        # no bucket given: the upload goes to the key's bucket
        url = tus_upload(c, b"mine", metadata={"key": "in/a.txt"})
        assert c.get(f"/objects/{bucket}/in/a.txt").content == b"mine"
        assert c.get(url).content == b"mine"
        for meta in ({"bucket": "default", "key": "in/b"}, {"key": "out/b"}, {"filename": "x"}):
            headers = {**TUS, "Upload-Length": "1", "Upload-Metadata": tus_metadata(meta)}
            r = c.post("/files/", headers=headers)
            assert r.status_code == 403, (meta, r.text)
            assert r.json()["error"] == "out_of_scope"
        assert c.get(f"/objects/{bucket}/out/x").status_code == 403
        assert c.get(outside).status_code == 403
        assert c.get(other).status_code == 403
        assert c.get(f"/objects/default/in/{tag}").status_code == 403
        assert c.get(f"/ids/{other_id}").status_code == 403
        assert c.get(f"/ids/{other_id}/info").status_code == 403
        assert c.head(open_other, headers=TUS).status_code == 403
        # listing is narrowed to the key's bucket and prefix
        keys = {o["key"] for o in c.get("/objects").json()["objects"]}
        assert keys == {"in/a.txt"}
        blank = c.get("/objects", params={"bucket": "", "prefix": ""})  # blank: not given
        assert {o["key"] for o in blank.json()["objects"]} == keys, blank.text
        assert c.get("/objects", params={"bucket": "default"}).status_code == 403
        assert c.get("/objects", params={"prefix": "out/"}).status_code == 403
        # the native API: sessions are checked at creation, and by their row afterwards
        r = c.post("/v1/uploads", json={"bucket": "default", "key": "in/n", "size": 1})
        assert r.status_code == 403
        r = c.post("/v1/uploads", json={"key": "in/n", "size": 1})
        assert r.status_code == 403  # no bucket means "default": outside
        r = c.post("/v1/uploads", json={"bucket": bucket, "key": "in/n", "size": 1})
        assert r.status_code == 201, r.text
        assert c.get(f"/v1/uploads/{r.json()['upload_id']}").status_code == 200
        assert c.get("/v1/params").status_code == 200


def test_a_limited_key_cannot_leave_its_bucket_through_an_ietf_partial(
    auth_server: ServerProcess,
) -> None:
    """The IETF draft's creation ignores Upload-Concat: a `partial` there is an ordinary
    upload, and must be checked against the key's bucket and prefix like one."""
    tag = uuid.uuid4().hex[:8]
    scopes = ("--scope", "upload", "--scope", "read")
    limited = create_key(auth_server, "--name", tag, *scopes, "--bucket", f"tenant-{tag}")
    headers = {
        "Upload-Draft-Interop-Version": "6",
        "Upload-Concat": "partial",
        "Upload-Complete": "?1",
        "Upload-Metadata": tus_metadata({"bucket": f"other-{tag}", "key": "planted"}),
        "Content-Type": "application/octet-stream",
    }
    with client_with(auth_server, limited) as c:
        r = c.post("/files/", content=b"planted", headers=headers)
        assert r.status_code == 403, r.text
        assert r.json()["error"] == "out_of_scope"
    with auth_server.client() as admin:
        assert admin.get(f"/objects/other-{tag}/planted").status_code == 404


def test_a_refusal_by_id_does_not_name_what_is_outside_the_key(auth_server: ServerProcess) -> None:
    """Routes by id look their object up: refusing a limited key must not tell it the bucket
    and key of another tenant's object, upload or session."""
    tag = uuid.uuid4().hex[:8]
    limited = create_key(auth_server, "--name", tag, "--scope", "upload", "--scope", "read",
                         "--bucket", f"tenant-{tag}")  # fmt: skip
    secret_name = f"private-{tag}/board-minutes.pdf"
    where = {"bucket": f"other-{tag}", "key": secret_name}
    with auth_server.client() as admin:
        done = tus_upload(admin, b"minutes", metadata=where)
        object_id = admin.get(f"/objects/other-{tag}/{secret_name}").headers[
            "X-Edgestore-Object-Id"
        ]
        pending = tus_create(admin, 10, metadata=where)
        session = admin.post("/v1/uploads", json={**where, "size": 1}).json()["upload_id"]
    with client_with(auth_server, limited) as c:
        for r in (
            c.get(f"/ids/{object_id}/info"),
            c.get(f"/ids/{object_id}/versions"),
            c.get(done),
            c.patch(pending, content=b"x", headers=patch_headers(0)),
            c.get(f"/v1/uploads/{session}"),
        ):
            assert r.status_code == 403 and r.json()["error"] == "out_of_scope", r.text
            message = r.json()["message"]
            assert secret_name not in message and f"other-{tag}" not in message, message
            assert f"tenant-{tag}" in message  # what the key may touch is its own business


def test_a_limited_key_cannot_take_another_bucket_s_partial_upload(
    auth_server: ServerProcess,
) -> None:
    """A partial upload belongs to no object until a final names one: a key limited to a
    bucket must still not read it (through a final of its own), write or delete it, unless
    it was created for that bucket. Its own parallel uploads keep working."""
    tag = uuid.uuid4().hex[:8]
    bucket = f"tenant-{tag}"
    scopes = ("--scope", "upload", "--scope", "read")
    limited = create_key(auth_server, "--name", tag, *scopes, "--bucket", bucket)
    partial = {**TUS, "Upload-Concat": "partial"}
    with auth_server.client() as admin:
        theirs = admin.post("/files/", headers={**partial, "Upload-Length": "6"}).headers[
            "Location"
        ]
        r = admin.patch(theirs, content=b"secret", headers=patch_headers(0))
        assert r.status_code == 204
    with client_with(auth_server, limited) as c:
        steal = {"Upload-Concat": f"final;{theirs}", "Upload-Metadata": tus_metadata({"key": "s"})}
        r = c.post("/files/", headers={**TUS, **steal})
        assert r.status_code == 403 and r.json()["error"] == "out_of_scope", r.text
        assert c.head(theirs, headers=TUS).status_code == 403
        assert c.delete(theirs, headers=TUS).status_code == 403
        r = c.post("/files/", headers={**partial, "Upload-Length": "1", "Upload-Metadata":
                                       tus_metadata({"bucket": "default"})})  # fmt: skip
        assert r.status_code == 403, r.text
        mine = []
        for body in (b"hello ", b"world"):
            r = c.post("/files/", headers={**partial, "Upload-Length": str(len(body))})
            assert r.status_code == 201, r.text
            mine.append(r.headers["Location"])
            assert c.patch(mine[-1], content=body, headers=patch_headers(0)).status_code == 204
        final = {"Upload-Concat": "final;" + " ".join(mine)}
        final["Upload-Metadata"] = tus_metadata({"key": "joined"})
        assert c.post("/files/", headers={**TUS, **final}).status_code == 201
        assert c.get(f"/objects/{bucket}/joined").content == b"hello world"
    with auth_server.client() as admin:
        assert admin.get(f"/objects/{bucket}/s").status_code == 404
        assert admin.head(theirs, headers=TUS).headers["Upload-Offset"] == "6"


@pytest.mark.parametrize(("credential", "framing"), [("key", "direct"), ("token", "queued")])
def test_revoking_a_key_cuts_the_upload_it_is_streaming(
    auth_server: ServerProcess, credential: str, framing: str
) -> None:
    """tus-js-client sends a whole file in one PATCH by default, which can stream for hours:
    revoking the key behind it (or behind the URL it began with) must cut it within seconds,
    keeping what arrived as a dropped connection would, not let it run to its end. Both ways
    a body comes in: straight into the engine's buffer, and queued (chunked)."""
    tag = uuid.uuid4().hex[:8]
    name = f"streamer-{tag}"
    secret = create_key(auth_server, "--name", name, "--scope", "upload")
    data = random_bytes(4 * MiB, seed=11)
    where = {"bucket": "default", "key": f"rv/{tag}"}
    headers: dict[str, str] = {}
    with client_with(auth_server, secret) as c:
        if credential == "key":
            url = tus_create(c, len(data), metadata=where)
            headers = {"Authorization": f"Bearer {secret}"}
        else:
            signed = c.post("/v1/presign", json={"action": "upload", **where}).json()["url"]
    if credential == "token":
        with client_with(auth_server) as anyone:
            r = anyone.post(signed, headers={**TUS, "Upload-Length": str(len(data))})
            url = r.headers["Location"]
    if framing == "queued":
        headers["Transfer-Encoding"] = "chunked"
    writer = TricklingPatch(auth_server.url, url, 0, data, headers=headers).start()
    try:
        time.sleep(0.5)
        cli(auth_server, "keys", "revoke", key_id_of(auth_server, name))
        began = time.monotonic()
        status, _ = writer.response(timeout=25)  # the body never ends on its own
        took = time.monotonic() - began
    finally:
        writer.close()
    assert status == 400 and took < 15, (status, took)
    with auth_server.client() as admin:
        offset = int(admin.head(url.split("?")[0], headers=TUS).headers["Upload-Offset"])
    assert 0 < offset < len(data)
    with client_with(auth_server, secret if credential == "key" else None) as c:
        r = c.patch(url, content=data[offset:], headers=patch_headers(offset))
        assert r.status_code == 401 and "revoked" in r.json()["message"], r.text


def test_keys_cli_lists_without_secrets_and_revokes(auth_server: ServerProcess) -> None:
    name = f"ci-{uuid.uuid4().hex[:8]}"
    done = cli(auth_server, "keys", "create", "--name", name, "--scope", "upload")
    secret = done.stdout.strip().splitlines()[-1]
    assert secret.startswith("esk_") and len(secret) > 40
    assert done.stdout.strip() == secret  # alone on stdout; the rest went to stderr
    with client_with(auth_server, secret) as c:
        assert c.post("/files/", headers={**TUS, "Upload-Length": "1"}).status_code == 201
    listing = cli(auth_server, "keys", "list").stdout
    as_json = cli(auth_server, "keys", "list", "--json").stdout
    assert secret not in listing + as_json and name in as_json
    entry = next(k for k in json.loads(as_json) if k["name"] == name)
    assert entry["scopes"] == ["upload"] and entry["last_used_at"] is not None
    cli(auth_server, "keys", "revoke", key_id_of(auth_server, name))
    deadline = time.monotonic() + 15
    with client_with(auth_server, secret) as c:
        while True:  # every node notices within its short key cache
            r = c.post("/files/", headers={**TUS, "Upload-Length": "1"})
            if r.status_code == 401 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    assert r.status_code == 401 and "revoked" in r.json()["message"]
    assert name not in cli(auth_server, "keys", "list", "--json").stdout
    assert name in cli(auth_server, "keys", "list", "--all", "--json").stdout
    bad = cli(auth_server, "keys", "create", "--name", "x", "--scope", "root", check=False)
    assert bad.returncode == 4 and "scopes must be some of" in bad.stderr


def test_first_start_creates_and_prints_one_admin_key(tmp_path, db_url: str) -> None:
    server = ServerProcess(home=tmp_path / "home", database_url=db_url, auth=True, admin_key=None)
    try:
        server.start()
        log = server.log()
        assert log.count("shown only this once") == 1
        key = next(w for w in log.split() if w.startswith("esk_"))
        with client_with(server, key) as c:
            assert c.get("/objects").status_code == 200
        server.stop()
        server.start()  # a key exists now: no second one, no banner
        assert server.log().count("shown only this once") == 1
        keys = json.loads(cli(server, "keys", "list", "--json").stdout)
        assert [k["scopes"] for k in keys] == [["admin"]]
    finally:
        server.kill()


def test_no_auth_server_needs_no_credentials(server: ServerProcess) -> None:
    """The test harness default: `serve --no-auth` on loopback."""
    with client_with(server) as c:
        data = random_bytes(MiB, seed=9)
        url = tus_upload(c, data)
        assert c.get(url).content == data
        assert c.get("/metrics").status_code == 200
