"""Opening the configured data dirs as named backends.

A dir's name is recorded in its marker file, so reordering the configuration never confuses
which disk holds which shard. Dirs are claimed (marker written) only when the store is new or
when the operator asks (`edgestore init`); afterwards a dir without its marker stays unavailable.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from edgestore.errors import StorageFull, StorageUnavailable
from edgestore.storage.backend import Usage
from edgestore.storage.local import EPOCH_MARKER, MARKER, LocalBackend, storage_error, write_durably

FlushMark = dict[int, int]  # filesystem -> flushes of it started so far


@dataclass
class DataDirs:
    """Backends by name, plus the reason each unavailable one is unavailable."""

    backends: dict[str, LocalBackend] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    single_disk: bool = False  # several dirs, one filesystem: bitrot protection only
    unclaimed: list[Path] = field(default_factory=list)  # configured, but missing or no marker
    # Flushes per filesystem: how many have started, and the highest-numbered one finished.
    _started: dict[int, int] = field(default_factory=dict, repr=False, compare=False)
    _finished: dict[int, int] = field(default_factory=dict, repr=False, compare=False)
    _flush_lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def flush(self, names: Iterable[str], *, since: FlushMark | None = None) -> None:
        """Make writes to these backends durable: one flush per filesystem they live on.

        `since`: the mark taken when those writes had completed (`flush_mark`). A filesystem
        that another caller's flush, started after that, has finished flushing is skipped:
        a syncfs makes every write completed before it began durable. (Nothing waits for
        another caller's flush: concurrent callers each flush, which the kernel overlaps
        better than a group commit here did.)
        """
        by_filesystem = {self.backends[n].filesystem: self.backends[n] for n in names}
        for fs, backend in by_filesystem.items():
            with self._flush_lock:
                if since is not None and self._finished.get(fs, 0) > since.get(fs, 0):
                    continue
                number = self._started[fs] = self._started.get(fs, 0) + 1
            backend.flush()
            with self._flush_lock:
                self._finished[fs] = max(self._finished.get(fs, 0), number)

    def flush_mark(self, names: Iterable[str]) -> FlushMark:
        """Take right after writes to these backends complete; see `flush(since=...)`."""
        filesystems = {self.backends[n].filesystem for n in names}
        with self._flush_lock:
            return {fs: self._started.get(fs, 0) for fs in filesystems}

    @property
    def names(self) -> list[str]:
        return sorted(self.backends, key=_natural)

    def writable_names(self) -> list[str]:
        """All data dirs, or StorageUnavailable naming the ones that cannot take writes."""
        if self.unavailable:
            detail = "; ".join(self.unavailable.values())
            if self.unclaimed:  # the operator must act, and the fix is not obvious from here
                detail += (
                    "; a data dir new to the configuration (added to data_dirs, or a higher "
                    "ec_k + ec_m or replicas with the default dirs) is claimed by running "
                    "`edgestore init`; a disk that failed to mount must be mounted first"
                )
            raise StorageUnavailable(f"cannot store new chunks: {detail}")
        return self.names


def check_room(backend: LocalBackend, min_free: int) -> None:
    """A data dir that can take a new file of up to `min_free` bytes now: there, claimed and
    writable (StorageUnavailable), with that much room (StorageFull). What the upkeep checks
    before it reads chunks to repair; /readyz checks the same, step by step, keeping the
    space figures for /metrics."""
    backend.check()
    check_free(backend, backend.usage(), min_free)


def check_free(backend: LocalBackend, space: Usage, min_free: int) -> None:
    """StorageFull unless the dir's `space` (as its filesystem reported it) has room for a
    new file of up to `min_free` bytes."""
    if space.free_bytes < min_free:
        raise StorageFull(
            f"data dir {backend.root} is full: {space.free_bytes} bytes free, less than one "
            f"chunk ({min_free} bytes)"
        )


def read_epoch(backend: LocalBackend) -> int | None:
    """The highest store epoch this dir has recorded (None: none yet, or unreadable, which
    tells nothing either way)."""
    try:
        return int(json.loads((backend.root / EPOCH_MARKER).read_bytes())["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def record_epoch(backend: LocalBackend, epoch: int) -> None:
    """Record `epoch` unless the dir has a higher one (nodes advancing at once); durable on
    return, so a crash never leaves the dir behind an epoch the database has forgotten."""
    if (read_epoch(backend) or 0) >= epoch:
        return
    try:
        write_durably(backend.root / EPOCH_MARKER, [json.dumps({"epoch": epoch}).encode()])
    except OSError as exc:
        raise storage_error(exc, backend.root) from None


def _natural(name: str) -> tuple[int, str]:
    digits = name.lstrip("d")
    return (int(digits), name) if digits.isdigit() else (1 << 30, name)


def _marker_name(path: Path) -> str | None:
    try:
        return json.loads((path / MARKER).read_bytes()).get("name")
    except (OSError, ValueError):
        return None


def _filesystem(path: Path) -> int | None:
    """The device of the filesystem `path` is (or, not created yet, would be) on."""
    for candidate in (path, *path.parents):
        try:
            return candidate.stat().st_dev
        except OSError:
            continue
    return None


def _on_a_disk_taken(claimed: list[Path], new: list[Path]) -> dict[Path, str]:
    """New dirs that look like an empty mount point (a disk that did not mount): on the root
    filesystem, or on a claimed dir's, while each claimed dir has a disk of its own."""
    root = _filesystem(Path("/"))
    own: dict[int, Path] = {}
    for path in claimed:
        fs = _filesystem(path)
        if fs is None or fs == root or fs in own:  # not one disk per dir: nothing to go by
            return {}
        own[fs] = path
    found: dict[Path, str] = {}
    for path in new if own else []:
        fs = _filesystem(path)
        if fs == root:
            found[path] = "the root filesystem"
        elif fs in own:
            found[path] = f"the disk of data dir {own[fs]}"
    return found


def open_data_dirs(
    paths: list[Path], store_id: str, *, initialise: bool, claim_shared_disk: bool = False
) -> DataDirs:
    """Open each configured dir; with `initialise`, claim dirs that have no marker yet, except
    one that looks like an empty mount point (see _on_a_disk_taken) unless `claim_shared_disk`.
    """
    dirs = DataDirs()
    markers = {p: _marker_name(p) for p in paths}
    taken = {n for n in markers.values() if n}
    suspect: dict[Path, str] = {}
    if initialise and not claim_shared_disk:
        suspect = _on_a_disk_taken(
            [p for p in paths if markers[p]], [p for p in paths if not markers[p]]
        )
    next_free = 0
    for path in paths:
        name = markers[path]
        if name is None:
            if initialise and path not in suspect:
                while f"d{next_free}" in taken:
                    next_free += 1
                name = f"d{next_free}"
                taken.add(name)
                LocalBackend(name, path, store_id).initialise()
            else:
                name = f"unclaimed:{path}"
                dirs.unclaimed.append(path)
        backend = LocalBackend(name, path, store_id)
        if name in dirs.backends:
            dirs.unavailable[name] = f"data dir {path} duplicates {dirs.backends[name].root}"
            continue
        dirs.backends[name] = backend
        if path in suspect:
            dirs.unavailable[name] = (
                f"data dir {path} was not claimed: it is on {suspect[path]}, while every other "
                "data dir has a disk of its own (a disk that did not mount, leaving an empty "
                "mount point?); mount it and run `edgestore init` again, or claim it as it is "
                "with `edgestore init --shared-disk`"
            )
            continue
        try:
            backend.check()
        except StorageUnavailable as exc:
            dirs.unavailable[name] = str(exc)
    dirs.single_disk = len(paths) > 1 and (
        len({p.resolve().stat().st_dev for p in paths if p.exists()}) == 1
    )
    return dirs


SINGLE_DISK_WARNING = (
    "all data dirs are on one disk: erasure coding then protects against bitrot, not against "
    "losing the disk; give each data dir its own disk (EDGESTORE_DATA_DIRS)"
)
