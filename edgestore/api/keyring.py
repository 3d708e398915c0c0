"""API keys as the server checks them: a presented secret verified against the database,
and the key behind a pre-signed URL or upload token checked to be still active, both with
a short cache so that PATCH-heavy uploads cost no query per request.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time

from edgestore.errors import NotFound, Unauthorized
from edgestore.metadata import keys as key_rows
from edgestore.metadata.db import Database
from edgestore.metadata.keys import ApiKey

log = logging.getLogger("edgestore.auth")

CACHE_SECONDS = 5.0  # a revoked key stops working on every node within this
CACHE_ENTRIES = 10_000
TOUCH_SECONDS = 60.0  # last_used_at is written at most this often per key
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="edgestore"'}


class KeyRing:
    """Verifies bearer keys against the database, with a short cache so that PATCH-heavy
    uploads cost no query per request; keeps last_used_at roughly current."""

    def __init__(self) -> None:
        self.db: Database | None = None
        self._cache: dict[str, tuple[float, ApiKey | None]] = {}
        self._by_id: dict[str, tuple[float, ApiKey | None]] = {}
        self._touched: dict[str, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def verify(self, secret: str) -> ApiKey:
        digest = key_rows.hash_secret(secret)
        hit = self._cache.get(digest)
        if hit is not None and hit[0] > time.monotonic():
            key = hit[1]
        else:
            key = await asyncio.to_thread(self._fetch, digest)
            if len(self._cache) >= CACHE_ENTRIES:
                self._cache.clear()
            self._cache[digest] = (time.monotonic() + CACHE_SECONDS, key)
        if key is None or not hmac.compare_digest(key.secret_hash, digest):
            raise Unauthorized("unknown API key", headers=CHALLENGE)
        if key.revoked_at is not None:
            raise Unauthorized(f"API key {key.key_id} was revoked", headers=CHALLENGE)
        self._touch(key.key_id)
        return key

    async def require_active(self, key_id: str, what: str) -> None:
        """Pass if the key that minted `what` (a pre-signed URL, an upload token) is still
        active: revoking a key voids what it signed, within the same few seconds."""
        hit = self._by_id.get(key_id)
        if hit is not None and hit[0] > time.monotonic():
            key = hit[1]
        else:
            key = await asyncio.to_thread(self._fetch_id, key_id)
            if len(self._by_id) >= CACHE_ENTRIES:
                self._by_id.clear()
            self._by_id[key_id] = (time.monotonic() + CACHE_SECONDS, key)
        if key is None:
            raise Unauthorized(f"the API key {key_id} that signed {what} does not exist")
        if key.revoked_at is not None:
            raise Unauthorized(f"the API key {key_id} that signed {what} was revoked")

    def _fetch_id(self, key_id: str) -> ApiKey | None:
        assert self.db is not None, "KeyRing used before the app started"
        with self.db.read() as conn:
            try:
                return key_rows.get(conn, key_id)
            except NotFound:
                return None

    def _fetch(self, digest: str) -> ApiKey | None:
        assert self.db is not None, "KeyRing used before the app started"
        with self.db.read() as conn:
            return key_rows.by_hash(conn, digest)

    def _touch(self, key_id: str) -> None:
        t = time.time()
        if t - self._touched.get(key_id, 0.0) < TOUCH_SECONDS:
            return
        self._touched[key_id] = t

        def write() -> None:
            assert self.db is not None
            try:
                # Skipped, not waited for, while another process (a CLI command, a second
                # server) holds SQLite's write lock: a thread held up to 30 s per key, then a
                # warning with a traceback. The next request after it tries again.
                if not self.db.try_write(lambda conn: key_rows.touch(conn, key_id, t)):
                    self._touched.pop(key_id, None)
            except Exception:  # bookkeeping only: never fail a request over it
                log.warning("could not record the use of API key %s", key_id, exc_info=True)

        task = asyncio.ensure_future(asyncio.to_thread(write))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
