"""A store of an older release, upgraded at the next start, through the API as its users
meet it: uploads they left paused must go on with the credentials they had."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import sqlalchemy as sa

from edgestore.config import load_settings
from edgestore.engine import Engine
from edgestore.metadata.uploads import UploadRecord
from tests import stores
from tests.api.access import client_with, create_key
from tests.helpers import TUS, KiB, blocks_of, patch_headers, random_bytes, tus_metadata
from tests.server import ServerProcess

# The last revision before partials were recorded with their bucket in every case: releases
# up to it created every partial with none (its tus creation dropped the bucket).
BEFORE_BOUND_PARTIALS = "0012"


def test_a_bucket_keys_paused_parallel_upload_goes_on_after_the_upgrade(
    tmp_path: Path, db_url: str
) -> None:
    """A parallel upload a bucket-limited key left paused under a release whose partials had
    no bucket (one partial done, one with a staged tail, no final yet): after the upgrade
    every request of that key on them was 403, so the upload could never finish. The first
    key of a bucket to touch such a partial now binds it to that bucket, as a partial created
    today is: its own upload goes on, and a key of another bucket is refused it after."""
    home = tmp_path / "home"
    first, second = random_bytes(300 * KiB, seed=1), random_bytes(500 * KiB, seed=2)
    cut = 123 * KiB + 5  # mid-chunk: the bytes after the last cut are the staged tail
    done, paused = _paused_parallel_upload(home, db_url, first, second, cut)

    server = ServerProcess(home=home, database_url=db_url, auth=True).start()
    try:
        tag = uuid.uuid4().hex[:8]
        scopes = ("--scope", "upload", "--scope", "read")
        mine = create_key(server, "--name", f"a-{tag}", *scopes, "--bucket", f"a-{tag}")
        other = create_key(server, "--name", f"b-{tag}", *scopes, "--bucket", f"b-{tag}")
        urls = [f"{server.url}/files/{u.upload_id}" for u in (done, paused)]
        _resume_and_join(server, mine, urls, first, second, cut, f"a-{tag}")
        with client_with(server, other) as c:  # bound to the first key's bucket now
            for url in urls:
                assert c.head(url, headers=TUS).status_code == 403
            steal = {"Upload-Concat": "final;" + " ".join(urls)}
            steal["Upload-Metadata"] = tus_metadata({"key": "stolen"})
            assert c.post("/files/", headers={**TUS, **steal}).status_code == 403
    finally:
        server.stop()


def _unbound(db_url: str) -> set[str]:
    """The partials still waiting for a bucket (metadata/unbound.py), read from the store."""
    eng = sa.create_engine(db_url)
    try:
        with eng.connect() as conn:
            return set(conn.execute(sa.text("SELECT upload_id FROM unbound_partials")).scalars())
    finally:
        eng.dispose()


def test_a_refused_request_leaves_an_unbound_partial_unbound(tmp_path: Path, db_url: str) -> None:
    """Binding an unbound partial to the first key to touch it was done while finding the
    request's object, before the request was refused: a read-only key's GET (404, unfinished),
    a final refused for its key's prefix, or for another of its partials, each bound it to
    that key's bucket, and the paused upload's own key was refused it forever after. A request
    that is refused now binds nothing; the owner's key resumes and finishes the upload."""
    home = tmp_path / "home"
    first, second = random_bytes(200 * KiB, seed=3), random_bytes(300 * KiB, seed=4)
    cut = 77 * KiB + 3
    done, paused = _paused_parallel_upload(home, db_url, first, second, cut)

    server = ServerProcess(home=home, database_url=db_url, auth=True).start()
    try:
        ids = {done.upload_id, paused.upload_id}
        tag = uuid.uuid4().hex[:8]
        rw = ("--scope", "upload", "--scope", "read")
        owner = create_key(server, "--name", f"a-{tag}", *rw, "--bucket", f"a-{tag}")
        reader = create_key(server, "--name", f"r-{tag}", "--scope", "read", "--bucket", f"b-{tag}")
        narrow = create_key(
            server, "--name", f"p-{tag}", *rw, "--bucket", f"b-{tag}", "--prefix", "p/"
        )
        writer = create_key(server, "--name", f"w-{tag}", *rw, "--bucket", f"b-{tag}")
        stranger = create_key(server, "--name", f"c-{tag}", *rw, "--bucket", f"c-{tag}")
        urls = [f"{server.url}/files/{u.upload_id}" for u in (done, paused)]
        assert _unbound(db_url) == ids
        with client_with(server, reader) as c:  # lacks 'upload'; may not read a partial
            assert c.head(urls[1], headers=TUS).status_code == 403
            assert c.get(urls[1], headers=TUS).status_code == 403
        assert _unbound(db_url) == ids
        with client_with(server, narrow) as c:  # its final's key is outside its prefix
            final = {"Upload-Concat": "final;" + " ".join(urls)}
            final["Upload-Metadata"] = tus_metadata({"key": "q/joined"})
            assert c.post("/files/", headers={**TUS, **final}).status_code == 403
        assert _unbound(db_url) == ids
        with client_with(server, stranger) as c:
            theirs = {"Upload-Concat": "partial", "Upload-Length": "5"}
            r = c.post("/files/", headers={**TUS, **theirs})
            assert r.status_code == 201, r.text
            other_bucket = r.headers["Location"]
        with client_with(server, writer) as c:  # its second partial is of another bucket
            final = {"Upload-Concat": f"final;{urls[0]} {other_bucket}"}
            final["Upload-Metadata"] = tus_metadata({"key": "joined"})
            assert c.post("/files/", headers={**TUS, **final}).status_code == 403
        assert _unbound(db_url) == ids

        _resume_and_join(server, owner, urls, first, second, cut, f"a-{tag}")
        assert _unbound(db_url) == set()
    finally:
        server.stop()


def _paused_parallel_upload(
    home: Path, db_url: str, first: bytes, second: bytes, cut: int
) -> tuple[UploadRecord, UploadRecord]:
    """A parallel upload as an older release left it paused: one partial done, one holding
    `second` up to `cut` (mid-chunk: a staged tail), no final; both without a bucket, as
    then. The schema is taken back to that release's, so the next start upgrades it."""
    with Engine.open(load_settings(home=home, database_url=db_url)) as eng:
        done = eng.uploads.create(length=len(first), is_partial=True)
        eng.uploads.append(done.upload_id, 0, blocks_of(first))
        paused = eng.uploads.create(length=len(second), is_partial=True)
        eng.uploads.append(paused.upload_id, 0, blocks_of(second[:cut]))
    stores.take_schema_back_to(db_url, BEFORE_BOUND_PARTIALS)
    return done, paused


def _resume_and_join(
    server: ServerProcess,
    key: str,
    urls: list[str],
    first: bytes,
    second: bytes,
    cut: int,
    bucket: str,
) -> None:
    """`key` resumes the paused partial at `cut`, finishes it, joins both into `bucket`'s
    object `joined`, and reads back first + second."""
    with client_with(server, key) as c:
        r = c.head(urls[1], headers=TUS)
        assert (r.status_code, r.headers.get("Upload-Offset")) == (200, str(cut))
        r = c.patch(urls[1], content=second[cut:], headers=patch_headers(cut))
        assert r.status_code == 204, r.text
        final = {"Upload-Concat": "final;" + " ".join(urls)}
        final["Upload-Metadata"] = tus_metadata({"key": "joined"})
        r = c.post("/files/", headers={**TUS, **final})
        assert r.status_code == 201, r.text
        body = c.get(f"/objects/{bucket}/joined").content
        assert hashlib.sha256(body).digest() == hashlib.sha256(first + second).digest()
