"""Helpers for the access-control tests: the CLI against a server's store, keys, the
store's signing secret, and clients that carry a given credential (or none)."""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import httpx
import sqlalchemy as sa

from edgestore.api import presign
from tests.server import ServerProcess


def cli(server: ServerProcess, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `edgestore ARGS` on the server's store (same home and database)."""
    done = subprocess.run(
        [sys.executable, "-m", "edgestore", *args],
        env=server.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if check:
        assert done.returncode == 0, f"{args}: {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


def create_key(server: ServerProcess, *args: str) -> str:
    """`edgestore keys create ARGS`; the key is the last line of stdout."""
    out = cli(server, "keys", "create", *args).stdout
    return out.strip().splitlines()[-1]


def key_id_of(server: ServerProcess, name: str) -> str:
    import json

    keys = json.loads(cli(server, "keys", "list", "--all", "--json").stdout)
    return next(k["key_id"] for k in keys if k["name"] == name)


def client_with(
    server: ServerProcess, key: str | None = None, headers: dict[str, str] | None = None
) -> httpx.Client:
    """A client sending `key` as a bearer token, or no credential at all."""
    auth = {"Authorization": f"Bearer {key}"} if key else {}
    return server.client(headers={**auth, **(headers or {})})


def store_secret(server: ServerProcess) -> bytes:
    """The store's signing secret, read from its database (to sign test grants)."""
    eng = sa.create_engine(server.database_url)
    try:
        with eng.connect() as conn:
            value = conn.execute(
                sa.text("SELECT value FROM server_secrets WHERE name = :n"),
                {"n": presign.SECRET_NAME},
            ).scalar_one()
    finally:
        eng.dispose()
    return bytes.fromhex(value)


def grant_url(
    server: ServerProcess,
    action: str,
    bucket: str,
    key: str,
    *,
    expires_in: int = 600,
    **limits: Any,
) -> str:
    grant = presign.Grant(action, bucket, key, int(time.time()) + expires_in, **limits)
    return presign.presigned_url(server.url, store_secret(server), grant)


def relative(url: str) -> str:
    """Path and query of an absolute URL (for a client with a base_url)."""
    u = httpx.URL(url)
    return u.raw_path.decode()
