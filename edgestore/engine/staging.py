"""Staged tails: the bytes of an upload after its last chunk boundary, kept durably between
requests in a small file on two data dirs (O_DIRECT + fsync, like shards).

Staging a tail costs one write of at most one max-size chunk per request, instead of pushing
megabytes through the metadata database; two copies on distinct data dirs survive the loss
of one disk, and any node can read them to continue the upload.
"""

from __future__ import annotations

import logging
import secrets

from edgestore.codec.hashing import shard_checksum
from edgestore.errors import StorageError
from edgestore.metadata.uploads import TailRef
from edgestore.storage.datadirs import DataDirs
from edgestore.storage.placement import place

log = logging.getLogger(__name__)

COPIES = 2
PREFIX = "staging/"


def stage(dirs: DataDirs, upload_id: str, base: int, data: bytes | memoryview) -> TailRef:
    """Write the tail durably to COPIES data dirs, one after the other: a tail is up to one
    max-size chunk, and writing the copies in turn keeps one aligned copy of it in memory, not
    one per data dir (with many uploads ending requests at once, that adds up)."""
    key = f"{PREFIX}{upload_id}/{base}.{secrets.token_hex(6)}"
    names = dirs.writable_names()
    chosen = place(_as_chunk(upload_id), min(COPIES, len(names)), names)
    chosen = list(dict.fromkeys(chosen))  # fewer dirs than copies: one copy per dir
    errors: list[Exception] = []
    for name in chosen:
        try:
            dirs.backends[name].put(key, [data])
        except Exception as exc:
            errors.append(exc)
            break
    ref = TailRef(key, tuple(chosen), len(data), shard_checksum(data))
    if errors:
        drop(dirs, ref)
        raise errors[0]
    return ref


def load(dirs: DataDirs, ref: TailRef) -> bytes:
    """The staged bytes, from the first copy that is intact."""
    problems = []
    for name in ref.backends:
        backend = dirs.backends.get(name)
        if backend is None:
            problems.append(f"{name}: data dir unavailable")
            continue
        try:
            data = backend.get(ref.key)
        except StorageError as exc:
            problems.append(f"{name}: {exc}")
            continue
        if len(data) == ref.length and shard_checksum(data) == ref.checksum:
            return data
        problems.append(f"{name}: checksum mismatch")
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
