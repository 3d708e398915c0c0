"""Listing a data dir's files as blobs, a part of it at a time.

An 8 TB data dir holds ~2M shard files: as one list they took hundreds of MB of a server
meant to run in ~256 MiB. Its fan-out dirs hold a few hundred to a few thousand each, so a
listing by prefix walks only the dir the prefix names, and `groups` hands the whole dir out
one top-level dir at a time.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Iterator
from pathlib import Path

from edgestore.storage.backend import BlobInfo


def walk(root: Path, prefix: str, *, skip: Collection[str] = ()) -> Iterator[BlobInfo]:
    """Every file under root whose key (path relative to root) starts with prefix, but the
    keys in `skip`; only the dir named by the prefix's part up to its last "/" is walked."""
    base = str(root)
    start = os.path.join(base, prefix.rsplit("/", 1)[0]) if "/" in prefix else base
    for dirpath, _dirnames, filenames in os.walk(start):
        rel = os.path.relpath(dirpath, base)
        for fn in filenames:
            key = fn if rel == "." else f"{rel}/{fn}"
            if key in skip or not key.startswith(prefix):
                continue
            try:
                st = os.stat(os.path.join(dirpath, fn))
            except FileNotFoundError:
                continue
            yield BlobInfo(key=key, size=st.st_size, mtime=st.st_mtime)


def groups(
    root: Path, lister: Callable[[str], Iterator[BlobInfo]], *, skip: Collection[str] = ()
) -> Iterator[list[BlobInfo]]:
    """Every file as `walk(root, "")` finds it, one top-level dir at a time (each listed by
    `lister(prefix)`), the files at the top first as a group of their own. Raises OSError
    at once if root cannot be read."""
    dirs: list[str] = []
    top: list[BlobInfo] = []
    with os.scandir(root) as it:
        for entry in it:
            if entry.is_dir():
                if not entry.is_symlink():  # as os.walk: a symlinked dir is not entered
                    dirs.append(entry.name)
                continue
            if entry.name in skip:
                continue
            try:
                st = entry.stat()
            except FileNotFoundError:
                continue
            top.append(BlobInfo(key=entry.name, size=st.st_size, mtime=st.st_mtime))
    return _groups(lister, top, sorted(dirs))


def _groups(
    lister: Callable[[str], Iterator[BlobInfo]], top: list[BlobInfo], dirs: list[str]
) -> Iterator[list[BlobInfo]]:
    yield top
    for name in dirs:
        yield list(lister(name + "/"))
