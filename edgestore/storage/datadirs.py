"""Opening the configured data dirs as named backends.

A dir's name is recorded in its marker file, so reordering the configuration never confuses
which disk holds which shard. Dirs are claimed (marker written) only when the store is new or
when the operator asks (`edgestore init`); afterwards a dir without its marker stays unavailable.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from edgestore.errors import StorageUnavailable
from edgestore.storage.local import MARKER, LocalBackend


@dataclass
class DataDirs:
    """Backends by name, plus the reason each unavailable one is unavailable."""

    backends: dict[str, LocalBackend] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    single_disk: bool = False  # several dirs, one filesystem: bitrot protection only

    def flush(self, names: Iterable[str]) -> None:
        """Make writes to these backends durable: one flush per filesystem they live on.

        (Concurrent callers each flush: the kernel overlaps them better than a group commit
        here did, which measured slower.)
        """
        by_filesystem = {self.backends[n].filesystem: self.backends[n] for n in names}
        for backend in by_filesystem.values():
            backend.flush()

    @property
    def names(self) -> list[str]:
        return sorted(self.backends, key=_natural)

    def writable_names(self) -> list[str]:
        """All data dirs, or StorageUnavailable naming the ones that cannot take writes."""
        if self.unavailable:
            detail = "; ".join(self.unavailable.values())
            raise StorageUnavailable(f"cannot store new chunks: {detail}")
        return self.names


def _natural(name: str) -> tuple[int, str]:
    digits = name.lstrip("d")
    return (int(digits), name) if digits.isdigit() else (1 << 30, name)


def _marker_name(path: Path) -> str | None:
    try:
        return json.loads((path / MARKER).read_bytes()).get("name")
    except (OSError, ValueError):
        return None


def open_data_dirs(paths: list[Path], store_id: str, *, initialise: bool) -> DataDirs:
    """Open each configured dir; with `initialise`, claim dirs that have no marker yet."""
    dirs = DataDirs()
    taken = {n for n in (_marker_name(p) for p in paths) if n}
    next_free = 0
    for path in paths:
        name = _marker_name(path)
        if name is None:
            if initialise:
                while f"d{next_free}" in taken:
                    next_free += 1
                name = f"d{next_free}"
                taken.add(name)
                LocalBackend(name, path, store_id).initialise()
            else:
                name = f"unclaimed:{path}"
        backend = LocalBackend(name, path, store_id)
        if name in dirs.backends:
            dirs.unavailable[name] = f"data dir {path} duplicates {dirs.backends[name].root}"
            continue
        dirs.backends[name] = backend
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
