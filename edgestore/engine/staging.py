"""Staged tails: the bytes of an upload after its last chunk boundary, kept durably between
requests in a small file on two data dirs (O_DIRECT + syncfs, like shards).

Staging a tail costs one write of at most one max-size chunk per request, instead of pushing
megabytes through the metadata database; two copies on distinct data dirs survive the loss
of one disk, and any node can read them to continue the upload.
"""

from __future__ import annotations

import logging
import os
import secrets
from concurrent.futures import Executor, Future

from edgestore.codec.hashing import shard_checksum
from edgestore.errors import StorageError
from edgestore.metadata.uploads import TailRef
from edgestore.storage.datadirs import DataDirs, FlushMark
from edgestore.storage.placement import place

log = logging.getLogger(__name__)

COPIES = 2
PREFIX = "staging/"


class PendingTail:
    """A tail being written to its data dirs; `finish()` makes it durable and names it.

    Started as soon as an append's last byte arrives, the copies are written while the
    append's last chunks are still being stored, instead of after them: one disk round trip
    less per request before the client hears the new offset (a tus client sending 50 MiB
    requests makes 20 of them per GiB).

    When no chunk was cut since the staged tail `grows` was written, the new tail is that one
    plus what arrived: only the new bytes are written, after the old ones in the same files,
    which stay valid for the old (still committed) record until the new one commits. Without
    this, a client sending small requests had its whole tail (up to one max-size chunk)
    written twice per request: 64 KiB requests wrote ~70x their own size.

    Only a tail this process wrote is grown: appends to one upload never overlap within a
    process (a newcomer waits for the old writer to end), but a writer in another process
    that outlived its lease could still be writing into a file it staged, after its
    successor's commit; growing only one's own files keeps that writer out of them.
    """

    def __init__(
        self,
        dirs: DataDirs,
        io: Executor,
        upload_id: str,
        base: int,
        data: bytes | memoryview,
        *,
        grows: TailRef | None = None,
    ) -> None:
        self._dirs = dirs
        names = dirs.writable_names()
        self.extends = (
            grows is not None
            and len(data) > grows.length
            and _written_here(grows.key)
            and set(grows.backends) <= set(names)
        )
        if grows is not None and self.extends:
            self.ref = TailRef(grows.key, grows.backends, len(data), shard_checksum(data))
            start = grows.length
        else:
            chosen = place(_as_chunk(upload_id), min(COPIES, len(names)), names)
            chosen = list(dict.fromkeys(chosen))  # fewer dirs than copies: one copy per dir
            self.ref = TailRef(
                f"{PREFIX}{upload_id}/{base}.{_process_tag()}-{secrets.token_hex(4)}",
                tuple(chosen),
                len(data),
                shard_checksum(data),
            )
            start = 0
        # No temporary name, as for shards: nothing points at new files until the checkpoint
        # that names them commits, after finish(); gc removes them otherwise.
        piece = memoryview(data)[start:]
        self._writes: list[Future[FlushMark]] = [
            io.submit(self._write, name, start, piece) for name in self.ref.backends
        ]

    def _write(self, name: str, start: int, piece: memoryview) -> FlushMark:
        """One copy; returns the flush mark taken as it completed."""
        backend = self._dirs.backends[name]
        if start:
            backend.write_at(self.ref.key, start, [piece])
        else:
            backend.write(self.ref.key, [piece])  # O_DIRECT
        return self._dirs.flush_mark([name])

    def finish(self) -> TailRef:
        """Wait for the copies and make them durable (one flush per filesystem).

        The copies are written while the append's last chunks are stored, and each chunk's
        flush makes durable what was written before it began: a filesystem flushed that way
        since the copies were complete is not flushed again (one syncfs less per request).
        """
        errors = [exc for exc in (w.exception() for w in self._writes) if exc is not None]
        if not errors:
            since: FlushMark = {}
            for w in self._writes:
                for fs, mark in w.result().items():
                    since[fs] = max(since.get(fs, 0), mark)
            try:
                self._dirs.flush(self.ref.backends, since=since)
            except Exception as exc:
                errors.append(exc)
        if errors:
            self.discard()
            raise errors[0]
        return self.ref

    def cancel(self) -> None:
        """The append failed: wait for the writes to end, then remove what they wrote."""
        for w in self._writes:
            w.exception()
        self.discard()

    def discard(self) -> None:
        """Remove new files; grown ones stay (their committed prefix is still in use, and
        the bytes past it are ignored)."""
        if not self.extends:
            drop(self._dirs, self.ref)


def stage(
    dirs: DataDirs, io: Executor, upload_id: str, base: int, data: bytes | memoryview
) -> TailRef:
    """Write the tail durably to COPIES data dirs (at once, on the shard-I/O pool)."""
    return PendingTail(dirs, io, upload_id, base, data).finish()


_tag: tuple[int, str] | None = None


def _process_tag() -> str:
    """A token naming this process in tail keys (renewed in a forked child)."""
    global _tag
    if _tag is None or _tag[0] != os.getpid():
        _tag = (os.getpid(), secrets.token_hex(4))
    return _tag[1]


def _written_here(key: str) -> bool:
    return key.rsplit(".", 1)[-1].startswith(_process_tag() + "-")


def load(dirs: DataDirs, ref: TailRef, *, damaged: list[str] | None = None) -> bytes:
    """The staged bytes, from the first copy that is intact.

    `damaged`: gets the names of the data dirs whose copy could not be used (a tail read
    around one must not be grown in place: the damaged copy would stay damaged under a
    record that says it holds the tail).
    """
    problems = []
    for name in ref.backends:
        backend = dirs.backends.get(name)
        if backend is None:
            problems.append(f"{name}: data dir unavailable")
            continue
        try:
            data = backend.get(ref.key, ref.length)
        except StorageError as exc:
            problems.append(f"{name}: {exc}")
            if damaged is not None:
                damaged.append(name)
            continue
        # A grown tail's file may hold more than the record (a write whose commit never
        # came): the record's length is what counts, and all that is read.
        if len(data) == ref.length and shard_checksum(data) == ref.checksum:
            if problems:
                log.warning("staged tail %s read around: %s", ref.key, "; ".join(problems))
            return data
        problems.append(f"{name}: checksum mismatch")
        if damaged is not None:
            damaged.append(name)
    raise StorageError(f"staged tail {ref.key} is unreadable: {'; '.join(problems)}")


def drop(dirs: DataDirs, ref: TailRef | None) -> None:
    """Remove a tail's files (best effort: gc removes what is left)."""
    if ref is None:
        return
    for name in ref.backends:
        backend = dirs.backends.get(name)
        if backend is None:
            continue
        try:
            backend.delete(ref.key)
        except StorageError as exc:
            log.warning("could not remove staged tail %s on %s: %s", ref.key, name, exc)


def _as_chunk(upload_id: str) -> str:
    """A hex string to rotate placement by, derived from the upload id."""
    return upload_id.replace("-", "").ljust(8, "0")
