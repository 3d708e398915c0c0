"""The whole-file SHA-256 of an append, skipping the bytes a stored version already hashed.

SHA-256 cannot be combined from the chunks' digests, so every byte of an upload is hashed
twice: once for its chunk's id, once in file order for the whole-file digest. When an upload
starts with the same chunks as a stored version (the same file sent again, a file that grew,
an edit past the start), the second pass is known in advance: each manifest entry records
the running SHA-256 state after it (`manifests.sha_state`). So while the upload's chunks
follow such a version's manifest, chunk id for chunk id, the state is taken from there
instead of hashed; at the first chunk that differs, hashing goes on from the last state.

Nothing is trusted that the bytes did not prove: a chunk's id is the SHA-256 of the bytes
that arrived, the same chunk ids in the same order are the same bytes, and a recorded state
was computed by this server from such bytes (or taken the same way). A state is used only
where every entry before it matched, from the version's first entry or from a state equal
to the upload's own; an entry without a state ends the following.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from edgestore.buffers import Buffer
from edgestore.codec.hashing import ResumableSha256
from edgestore.engine.dedup import StoredChunk
from edgestore.metadata import prefixes as prefix_rows
from edgestore.metadata.db import Database

log = logging.getLogger(__name__)
T = TypeVar("T")

PAGE = 512  # manifest entries read at once while following a version


class RunningDigest:
    """One append's whole-file SHA-256, fed its chunks in order (on one thread: the lane).

    `seq` and `state`: the upload's next part number and its hash state there.
    """

    def __init__(self, db: Database, upload_id: str, seq: int, state: bytes) -> None:
        self._db = db
        self._upload_id = upload_id
        self._seq = seq
        self._hasher = ResumableSha256(state)  # its state: the upload's, before the next part
        self._following = True  # no chunk has differed yet (nor a lookup failed)
        self._version: str | None = None
        self._entries: list[tuple[str, int, bytes | None]] = []
        self._first = seq  # the seq of _entries[0]

    def step(self, chunk: Buffer, stored: Future[StoredChunk]) -> bytes:
        """The state after `chunk`, the upload's next part. `stored` resolves to its id."""
        if self._following and self._version is None and self._seq > 0:
            self._version = self._lookup(
                lambda conn: prefix_rows.version_continuing(
                    conn, self._upload_id, self._seq - 1, self._hasher.state()
                )
            )
            self._following = self._version is not None  # else: no waiting for chunk ids
        state = self._known(len(chunk), stored) if self._following else None
        if state is None:
            self._hasher.update(chunk)
            state = self._hasher.state()
        else:
            self._hasher = ResumableSha256(state)
        self._seq += 1
        return state

    def _known(self, length: int, stored: Future[StoredChunk]) -> bytes | None:
        """The recorded state after this chunk, if the upload still follows a version."""
        try:
            chunk_id = stored.result().chunk_id
        except Exception:  # the chunk was not stored: the append fails on its own
            self._following = False
            return None
        entry = self._entry()
        if entry is None or not _matches(entry, chunk_id, length):
            # Another version may share the upload's bytes so far and go on with this chunk
            # (several versions of a growing file: whichever was found first ends sooner).
            self._version = self._lookup(
                lambda conn: prefix_rows.version_with_entry(
                    conn, chunk_id, self._seq, self._hasher.state() if self._seq else None
                )
            )
            self._entries = []
            entry = self._entry()
        if entry is None or not _matches(entry, chunk_id, length):
            self._following = False
            return None
        return entry[2]

    def _entry(self) -> tuple[str, int, bytes | None] | None:
        """The followed version's entry at this seq, if any."""
        version = self._version
        if version is None:
            return None
        index = self._seq - self._first
        if not 0 <= index < len(self._entries):
            self._entries = (
                self._lookup(lambda conn: prefix_rows.entry_states(conn, version, self._seq, PAGE))
                or []
            )
            self._first, index = self._seq, 0
        return self._entries[index] if index < len(self._entries) else None

    def _lookup(self, query: Callable[[Connection], T]) -> T | None:
        """A query's answer, or None if the database cannot tell now: hashing goes on as
        without a stored version."""
        try:
            with self._db.read() as conn:
                return query(conn)
        except SQLAlchemyError as exc:
            log.warning("cannot follow a stored version's hash states: %s", exc)
            return None


def _matches(entry: tuple[str, int, bytes | None], chunk_id: str, length: int) -> bool:
    return entry[:2] == (chunk_id, length) and entry[2] is not None
