"""Idempotent session creation (`POST /v1/uploads` with `Idempotency-Key`), against a real
server with authentication on, on SQLite and PostgreSQL: a create whose answer was lost and
is sent again gets the session the first one made, reserving the bucket's quota once; the
key is bound to its caller and its parameters, and lives as long as its session."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator

import pytest

from tests.api.access import client_with, create_key
from tests.conftest import server_store_url
from tests.helpers import StoreProbe, sha256_hex
from tests.native import DB_PARAMS, expire, rows
from tests.server import ServerProcess

QUOTA = 1000


@pytest.fixture(scope="module", params=DB_PARAMS)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp("idempotency")
    url = server_store_url(request, tmp_path_factory, base)
    quotas = json.dumps({"q": QUOTA})
    env = {"EDGESTORE_BUCKET_QUOTAS": quotas}
    proc = ServerProcess(home=base / "home", database_url=url, auth=True, env_extra=env).start()
    try:
        yield proc
    finally:
        proc.stop()


def sessions_in(probe: StoreProbe, bucket: str) -> int:
    found = rows(probe, "SELECT count(*) FROM uploads WHERE bucket = :b", b=bucket)
    return found[0][0]


def create(c, idem: str | None, /, **body):
    headers = {"Idempotency-Key": idem} if idem is not None else {}
    return c.post("/v1/uploads", json=body, headers=headers)


def test_a_retried_create_returns_the_same_session_and_reserves_quota_once(
    http, probe: StoreProbe
) -> None:
    key = str(uuid.uuid4())
    first = create(http, key, bucket="q", key="a", size=600)
    assert first.status_code == 201, first.text
    again = create(http, key, bucket="q", key="a", size=600)  # the first answer was lost
    assert again.status_code == 201, again.text
    assert again.json()["upload_id"] == first.json()["upload_id"]
    assert again.headers["location"] == first.headers["location"]
    assert sessions_in(probe, "q") == 1
    # 600 of the bucket's 1000 bytes are reserved, once: 400 more fit, 401 do not
    assert create(http, None, bucket="q", key="b", size=401).status_code == 507
    other = create(http, str(uuid.uuid4()), bucket="q", key="b", size=400)
    assert other.status_code == 201, other.text
    # the draft's form (a quoted Structured Field string) is the same key
    quoted = create(http, f'"{key}"', bucket="q", key="a", size=600)
    assert quoted.json()["upload_id"] == first.json()["upload_id"]
    assert sessions_in(probe, "q") == 2


def test_the_same_key_with_other_parameters_is_refused(http, probe: StoreProbe) -> None:
    key = str(uuid.uuid4())
    first = create(http, key, bucket="p", key="x", size=10, metadata={"a": "b"})
    assert first.status_code == 201, first.text
    for changed in (
        {"size": 11},
        {"key": "y"},
        {"metadata": {"a": "c"}},
        {"bucket": "p2"},
        {"content_type": "text/plain"},
    ):
        body = {"bucket": "p", "key": "x", "size": 10, "metadata": {"a": "b"}, **changed}
        r = create(http, key, **body)
        assert r.status_code == 422, (changed, r.text)
        assert r.json()["error"] == "idempotency_key_reused"
        assert "Idempotency-Key" in r.json()["message"]
    assert sessions_in(probe, "p") == 1 and sessions_in(probe, "p2") == 0
    # defaults count as given: the same request, spelled out
    same = create(http, key, bucket="p", key="x", size=10, metadata={"a": "b"}, sha256=None)
    assert same.status_code == 201 and same.json()["upload_id"] == first.json()["upload_id"]


def test_another_api_key_with_the_same_idempotency_key_gets_its_own_session(
    server: ServerProcess, http, probe: StoreProbe
) -> None:
    tag = uuid.uuid4().hex[:8]
    one = create_key(server, "--name", f"one-{tag}", "--scope", "upload", "--scope", "read")
    two = create_key(server, "--name", f"two-{tag}", "--scope", "upload", "--scope", "read")
    key, body = str(uuid.uuid4()), {"bucket": f"shared-{tag}", "key": "k", "size": 5}
    with client_with(server, one) as c1, client_with(server, two) as c2:
        a = create(c1, key, **body)
        b = create(c2, key, **body)
        assert a.status_code == b.status_code == 201, (a.text, b.text)
        assert a.json()["upload_id"] != b.json()["upload_id"]
        assert create(c1, key, **body).json()["upload_id"] == a.json()["upload_id"]
        assert create(c2, key, **body).json()["upload_id"] == b.json()["upload_id"]
    admin = create(http, key, **body)  # and the admin key is a caller of its own
    assert admin.json()["upload_id"] not in (a.json()["upload_id"], b.json()["upload_id"])
    assert sessions_in(probe, f"shared-{tag}") == 3


def test_without_the_header_every_create_opens_a_session(http, probe: StoreProbe) -> None:
    ids = {create(http, None, bucket="plain", key="k", size=1).json()["upload_id"] for _ in "ab"}
    assert len(ids) == 2 and sessions_in(probe, "plain") == 2


def test_the_key_lives_as_long_as_its_session(http, probe: StoreProbe) -> None:
    key = str(uuid.uuid4())
    body = {"bucket": "lives", "key": "k", "size": 3}
    first = create(http, key, **body).json()["upload_id"]
    expire(probe, first)
    second = create(http, key, **body)
    assert second.status_code == 201 and second.json()["upload_id"] != first
    assert http.get(f"/v1/uploads/{first}").status_code == 410
    assert http.delete(second.headers["location"]).status_code == 204
    third = create(http, key, **body)
    assert third.status_code == 201
    assert third.json()["upload_id"] not in (first, second.json()["upload_id"])


def test_a_repeat_after_the_session_was_finalized_reports_its_version(http) -> None:
    key, data = str(uuid.uuid4()), b"abc"
    cid = sha256_hex(data)
    first = create(http, key, bucket="done", key="k", size=3, sha256=sha256_hex(data))
    uid = first.json()["upload_id"]
    assert http.put(f"/v1/uploads/{uid}/chunks/{cid}", content=data).status_code == 201
    body = {"chunks": [{"id": cid, "size": 3}]}
    assert http.post(f"/v1/uploads/{uid}/finalize", json=body).status_code == 200
    again = create(http, key, bucket="done", key="k", size=3, sha256=sha256_hex(data))
    assert again.status_code == 201, again.text
    st = again.json()
    assert (st["upload_id"], st["state"], st["version"]["version"]) == (uid, "complete", 1)


def test_concurrent_creates_with_one_key_make_one_session(
    server: ServerProcess, probe: StoreProbe
) -> None:
    key, body = str(uuid.uuid4()), {"bucket": "race", "key": "k", "size": 7}
    barrier, ids, errors = threading.Barrier(8), [], []

    def go() -> None:
        with server.client() as c:
            barrier.wait()
            r = create(c, key, **body)
            (ids if r.status_code == 201 else errors).append(r.json().get("upload_id") or r.text)

    threads = [threading.Thread(target=go) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and len(set(ids)) == 1 and len(ids) == 8
    assert sessions_in(probe, "race") == 1


@pytest.mark.parametrize("value", ["", '""', "x" * 256, "caf\u00e9"])
def test_a_malformed_key_is_refused(http, probe: StoreProbe, value: str) -> None:
    r = http.post(
        "/v1/uploads",
        json={"bucket": "bad-key", "size": 1},
        headers={"Idempotency-Key": value.encode("utf-8")},
    )
    assert r.status_code == 400, r.text
    assert "Idempotency-Key" in r.json()["message"]
    assert sessions_in(probe, "bad-key") == 0
