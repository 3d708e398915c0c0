"""Benchmark data sets written to files: random bytes, and compressible text that never dedups.

The text set is a tar of the Python standard library's sources, repeated up to the target size
with a counter stamped into every 64 KiB block, so no chunk repeats (see `make_text`).
"""

from __future__ import annotations

import atexit
import hashlib
import os
import re
import shutil
import sysconfig
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

WRITE_BLOCK = 4 * MiB
STAMP_EVERY = 64 * KiB  # far below the chunker's 1 MiB minimum: every chunk gets stamps
KINDS = ("random", "text")

_UNITS = {
    "": 1,
    "b": 1,
    "k": KiB,
    "kib": KiB,
    "m": MiB,
    "mib": MiB,
    "g": GiB,
    "gib": GiB,
    "t": 1024 * GiB,
    "tib": 1024 * GiB,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*", re.IGNORECASE)

# Compiled or bundled binaries in the stdlib tree; the text set is meant to be sources.
_SKIP_DIRS = {"__pycache__", "site-packages", "dist-packages", "lib-dynload", "_bundled"}
_SKIP_SUFFIXES = {".so", ".a", ".pyc", ".whl", ".exe", ".dll"}


def parse_size(text: str) -> int:
    """'1GiB', '256MiB', '64M' (binary), '500MB' (decimal) or plain bytes."""
    m = _SIZE.fullmatch(text)
    unit = m.group(2).lower() if m else ""
    if m is None or unit not in _UNITS:
        raise ValueError(f"not a size: {text!r} (try 1GiB, 256MiB, 500MB or a byte count)")
    return int(float(m.group(1)) * _UNITS[unit])


def format_size(n: int) -> str:
    for unit, scale in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= scale:
            value = n / scale
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.2f} {unit}"
    return f"{n} B"


@dataclass(frozen=True, slots=True)
class Dataset:
    kind: str
    path: Path
    size: int


def read_blocks(path: Path, block_size: int) -> Iterator[bytes]:
    """The file as blocks of `block_size` bytes (the last one shorter)."""
    with open(path, "rb", buffering=0) as f:
        while block := f.read(block_size):
            yield block


def sha256_of(path: Path) -> str:
    """The file's SHA-256 (hashlib, apart from the code under measurement), to verify what a
    server or the engine stored; reading it also leaves the file in the page cache."""
    h = hashlib.sha256()
    for block in read_blocks(path, WRITE_BLOCK):
        h.update(block)
    return h.hexdigest()


def warm(path: Path) -> None:
    """Read the file through the page cache (untimed), so every contestant's client reads it
    from memory alike: a data set left from an earlier run (`ensure` found it) is cold."""
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(WRITE_BLOCK)
        while f.readinto(buf):
            pass


def make_random(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(WRITE_BLOCK, left)
            f.write(os.urandom(n))
            left -= n


def stdlib_tar(path: Path) -> int:
    """Write a tar of the standard library's source files; return its size."""
    root = Path(sysconfig.get_paths()["stdlib"])
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(
                d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("config-")
            )
            for name in sorted(filenames):
                file = Path(dirpath, name)
                if file.suffix in _SKIP_SUFFIXES or not file.is_file() or file.is_symlink():
                    continue
                tar.add(file, arcname=str(file.relative_to(root.parent)), recursive=False)
    return path.stat().st_size


def make_text(path: Path, size: int) -> None:
    """Compressible data: the stdlib tar, repeated, each 64 KiB block stamped with its number.

    Concatenated copies of one tar would be almost all dedup hits after the first copy, so
    the first 16 bytes of every 64 KiB block become the block's index in hex: text-like,
    costing nothing in compression, and making every chunk (at least 1 MiB) unique.
    """
    source = path.with_name(path.name + ".stdlib.tar")
    try:
        if stdlib_tar(source) < STAMP_EVERY:
            raise RuntimeError(f"the stdlib tar {source} is implausibly small")
        block_index = 0
        left = size
        with open(path, "wb") as out:
            while left:
                for piece in read_blocks(source, STAMP_EVERY):
                    if not left:
                        break
                    buf = bytearray(piece[:left])
                    stamp = b"%016x" % block_index
                    n = min(len(stamp), len(buf))
                    buf[:n] = stamp[:n]
                    out.write(buf)
                    left -= len(buf)
                    block_index += 1
    finally:
        source.unlink(missing_ok=True)


def ensure(kind: str, workdir: Path, size: int) -> Dataset:
    """The data set of this kind and size in workdir, generated unless already there."""
    if kind not in KINDS:
        raise ValueError(f"unknown data set {kind!r}; choose from {', '.join(KINDS)}")
    path = workdir / f"{kind}-{size}.bin"
    if not (path.is_file() and path.stat().st_size == size):
        tmp = path.with_name(path.name + ".partial")
        (make_random if kind == "random" else make_text)(tmp, size)
        tmp.rename(path)
        settle()
    return Dataset(kind, path, size)


def settle() -> None:
    """Write every dirty page out before a measurement starts (untimed).

    A server that makes its bytes durable (syncfs, fsync) would otherwise also pay for writing
    back whatever was left dirty before it: the data set just generated, or the previous
    server's uploads that were never synced (the peers don't sync).
    """
    os.sync()


# --- stores of finished runs --------------------------------------------------------------

# A finished run's files are deleted so that the deletion does not tax the next run:
#  * a tree of many files (an edgestore store: k+m shard files per chunk) when the benchmark
#    ends. This kind of machine's ext4 has no journal, and there every new inode is checked
#    against the inodes deleted in the last minute or more ("recently_deleted"): after a
#    deleted store of a few thousand shards, ~9% of the server's CPU in the next upload (perf);
#  * a few big files (a peer's upload) at once. Kept, their gigabytes stay in the page cache
#    and the next buffered writer pays to reclaim it (measured: the peers' CPU per GB doubled
#    in a benchmark that kept everything, from ~1.3-1.8 to ~3.7-4.0 CPU-s/GB).
KEEP_FREE = 16 * GiB
MANY_FILES = 64
_discarded: list[Path] = []


def _many_files(path: Path) -> bool:
    count = 0
    for _dir, _subdirs, files in os.walk(path):
        count += len(files)
        if count > MANY_FILES:
            return True
    return False


def discard(path: Path) -> None:
    """Delete a finished run's files now, or when the benchmark ends if they are many
    (see above; also now if the disk runs low)."""
    try:
        free = shutil.disk_usage(path if path.exists() else path.parent).free
    except FileNotFoundError:
        return
    if free < KEEP_FREE or not _many_files(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        _discarded.append(path)


def ensure_free(path: Path, needed: int) -> int:
    """Delete kept runs, oldest first, until the filesystem of `path` has `needed` bytes free
    beyond KEEP_FREE (the next run's files must fit, with room to spare); returns the free
    bytes. Kept runs are deleted now rather than fill the disk (a full disk fails the run
    being measured, and anything else writing there)."""
    free = shutil.disk_usage(path).free
    while _discarded and free < needed + KEEP_FREE:
        shutil.rmtree(_discarded.pop(0), ignore_errors=True)
        free = shutil.disk_usage(path).free
    return free


def empty_discarded() -> None:
    """Delete everything `discard` kept (call when the measurements are over)."""
    while _discarded:
        shutil.rmtree(_discarded.pop(), ignore_errors=True)


atexit.register(empty_discarded)  # also when a benchmark stops on an error
