"""A data dir on a local disk as a storage backend, and the one durable-write function.

A data dir is claimed by a marker file naming the store; a dir without it (say, a disk that
failed to mount, leaving an empty mount point) is refused rather than silently filled.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import mmap
import os
import secrets
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from edgestore.buffers import AlignedPool, address_of, copy_into
from edgestore.errors import ShardMissing, StorageError, StorageFull, StorageUnavailable
from edgestore.storage import listing
from edgestore.storage.backend import BlobInfo, Buffer, Usage

MARKER = ".edgestore-datadir"
EPOCH_MARKER = ".edgestore-epoch"  # the store epoch this dir has seen (storage/datadirs.py)
TMP_SUFFIX = ".tmp"

_FULL = {errno.ENOSPC, errno.EDQUOT}
DIRECT_ALIGN = 4096
_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024


def storage_error(exc: OSError, where: Path | str) -> StorageError:
    """Translate an OSError into the domain error that says what the operator must fix."""
    if exc.errno in _FULL:
        return StorageFull(f"data dir {where} is full: {exc.strerror}")
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return StorageUnavailable(f"data dir {where} is not writable: {exc.strerror}")
    if exc.errno == errno.ENOENT:
        return StorageUnavailable(f"data dir {where} is missing: {exc.strerror}")
    return StorageUnavailable(f"data dir {where} failed: {exc.strerror or exc}")


def fsync_dir(path: Path | str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_buffered(fd: int, parts: Sequence[Buffer]) -> None:
    views = [memoryview(p).cast("B") for p in parts]
    while views:
        written = os.writev(fd, views[:_IOV_MAX])
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if views and written:
            views[0] = views[0][written:]


_direct_buffers = threading.local()


# Each I/O thread's aligned staging buffer. O_DIRECT needs page-aligned memory, so a file's
# bytes are copied through it piece by piece: 12 I/O threads x 1 MiB instead of x the
# largest shard (~1.4 MiB) each, which counted with many concurrent uploads; 1 MiB holds
# a typical shard (~0.8 MiB) in one write (256 KiB pieces cost measurably more kernel time).
DIRECT_PIECE = 1024 * 1024


def _aligned_buffer() -> mmap.mmap:
    buf: mmap.mmap | None = getattr(_direct_buffers, "buf", None)
    if buf is None:
        buf = _direct_buffers.buf = mmap.mmap(-1, DIRECT_PIECE)
    return buf


# Blocks that O_DIRECT reads land in: one per reading thread at a time, reused. A shard is
# copied out of its block at once, so a block is back in the pool as soon as get() returns.
# A pool's blocks are all as large as its largest request: files above READ_POOL_MAX (a
# staged tail of up to one max-size chunk; shards are ~1.4 MiB at most with the defaults)
# get blocks of their own, unmapped after use, so one such read cannot make every later
# block (and the idle ones kept) that large.
READ_POOL_MAX = 4 * 1024 * 1024
_READ_BLOCKS = AlignedPool(idle_blocks=8)
_LARGE_READ_BLOCKS = AlignedPool(idle_blocks=0)


def _read_direct(fd: int, limit: int | None = None) -> bytes | None:
    """The file (its first `limit` bytes) through O_DIRECT, or None if it must be read
    through the page cache.

    Shards are written past the page cache (see _write_direct), so reading one through it
    would first fill fresh cache pages, and on this kind of VM that was the whole cost of a
    cold read: 1 GB of ~0.8 MB shard files at ~400 MB/s and ~1.8 s of kernel CPU buffered,
    against 1.4-2.9 GB/s and ~0.1 s through O_DIRECT into a reused block plus one copy out.
    Where the cache does hold the file's last page (written that way), the kernel writes it
    back first if it is dirty, so the bytes are the same either way.
    """
    size = os.fstat(fd).st_size
    if limit is not None:
        size = min(size, limit)
    if size == 0:
        return b""
    length = -(-size // DIRECT_ALIGN) * DIRECT_ALIGN
    block = (_READ_BLOCKS if length <= READ_POOL_MAX else _LARGE_READ_BLOCKS).get(length)
    try:
        got = 0
        while got < size:
            n = os.preadv(fd, [block[got:]], got)
            if n == 0:  # shorter than it was a moment ago: not a shard (they never change)
                return None
            got += n
            if got < size and got % DIRECT_ALIGN:
                return None  # an unaligned short read: the rest must not go direct
        return bytes(block[:size])
    finally:
        block.release()


def _write_direct(fd: int, parts: Sequence[Buffer]) -> None:
    """Write the file's whole pages through O_DIRECT, its last partial page through the page
    cache.

    A file given as one page-aligned buffer (a shard laid out by codec/isal.py) goes to the
    kernel as it is; other files are copied through the thread's aligned buffer, DIRECT_PIECE
    bytes at a time. The last partial page used to be padded, written directly, and cut back
    with ftruncate: ext4 then read that block back from the disk, synchronously, to zero its
    end (ext4_block_zero_page_range; perf sched showed it as the one disk read in the write
    path, once per shard). Written through the page cache instead (O_DIRECT turned off on
    the descriptor for it), it needs no truncate, and the same syncfs or fsync that makes
    the file's metadata durable writes it out.

    Bypassing the page cache for the rest cut kernel CPU per GiB written by ~8x on this kind
    of VM (measured: 0.5 s instead of 4.5 s for 1.6 GB of 700 KB shard files).
    """
    if len(parts) == 1 and address_of(parts[0]) % DIRECT_ALIGN == 0:
        whole = memoryview(parts[0]).cast("B")
        pages = len(whole) // DIRECT_ALIGN * DIRECT_ALIGN
        if pages:
            _pwrite_all(fd, whole[:pages], 0)
        _write_cached(fd, whole[pages:], pages)
        return
    buf = _aligned_buffer()
    view = memoryview(buf)
    try:
        total = 0  # bytes of the file written so far
        fill = 0  # bytes in buf
        for p in parts:
            src = memoryview(p).cast("B")
            while src:
                take = min(len(src), DIRECT_PIECE - fill)
                fill += copy_into(buf, fill, src[:take])
                src = src[take:]
                if fill == DIRECT_PIECE:
                    _pwrite_all(fd, view, total)
                    total += fill
                    fill = 0
        pages = fill // DIRECT_ALIGN * DIRECT_ALIGN
        if pages:
            _pwrite_all(fd, view[:pages], total)
        _write_cached(fd, view[pages:fill], total + pages)
    finally:
        view.release()


def _write_cached(fd: int, data: memoryview, offset: int) -> None:
    """The last partial page, through the page cache (see _write_direct)."""
    if not data:
        return
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    if flags & os.O_DIRECT:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_DIRECT)
    _pwrite_all(fd, data, offset)


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    written = 0
    while written < len(data):
        written += os.pwrite(fd, data[written:], offset + written)


def _write_file(path: Path, parts: Sequence[Buffer], *, direct: bool, exclusive: bool) -> int:
    """Create path and write parts into it; returns the open fd (the caller syncs, closes)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_EXCL if exclusive else os.O_TRUNC)
    fd = os.open(path, flags | (os.O_DIRECT if direct else 0), 0o644)
    try:
        if direct:
            _write_direct(fd, parts)
        else:
            _write_buffered(fd, parts)
    except BaseException:
        os.close(fd)
        raise
    return fd


# libc among the process's own symbols: ctypes.util.find_library("c") ran ldconfig, ~30 ms
# of every CLI command's start.
_libc = ctypes.CDLL(None, use_errno=True)


def sync_filesystem(path: Path) -> None:
    """syncfs(2): everything written to path's filesystem is on stable storage on return.

    One call (one journal commit and one device cache flush) makes a whole batch of new files
    durable, where fsync of each file and of its directory costs two commits per file
    (measured here: 9 shard files in ~5 ms instead of ~33 ms, a third of the CPU).
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if _libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(path))
    finally:
        os.close(fd)


def write_durably(path: Path, parts: Sequence[Buffer], *, direct: bool = False) -> None:
    """Write a file so that after return it survives a crash: tmp, fsync, rename, fsync dir.

    Readers never see a partial file: until the rename the bytes live under a temporary name,
    which garbage collection removes if the process dies first. `direct` writes through
    O_DIRECT (the caller falls back to buffered writes where the filesystem refuses it).
    """
    tmp = path.with_name(f"{path.name}.{secrets.token_hex(4)}{TMP_SUFFIX}")
    try:
        fd = _write_file(tmp, parts, direct=direct, exclusive=True)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(path.parent)


class LocalBackend:
    """Blobs as files under one directory, fanned out by key prefix."""

    def __init__(self, name: str, root: Path, store_id: str | None = None) -> None:
        self.name = name
        self.root = Path(root)
        self.store_id = store_id
        self._known_dirs: set[Path] = set()
        self._direct = hasattr(os, "O_DIRECT")  # until the filesystem says otherwise
        self._direct_read = self._direct
        self._device: int | None = None

    def __repr__(self) -> str:
        return f"LocalBackend({self.name!r}, {str(self.root)!r})"

    # --- claiming the directory ---------------------------------------------------------------

    def initialise(self) -> None:
        """Create the dir and its marker (first start of a new store only)."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            marker = self.root / MARKER
            if not marker.exists():
                body = json.dumps({"store_id": self.store_id, "name": self.name}).encode()
                write_durably(marker, [body])
        except OSError as exc:
            raise storage_error(exc, self.root) from None

    def check(self) -> None:
        marker = self.root / MARKER
        try:
            info = json.loads(marker.read_bytes())
        except FileNotFoundError:
            if not self.root.is_dir():
                raise StorageUnavailable(f"data dir {self.root} is missing") from None
            raise StorageUnavailable(
                f"data dir {self.root} has no {MARKER} marker: not initialised for this store "
                "(an unmounted disk?)"
            ) from None
        except (OSError, ValueError) as exc:
            raise StorageUnavailable(f"data dir {self.root} cannot be read: {exc}") from None
        if self.store_id is not None and info.get("store_id") != self.store_id:
            raise StorageUnavailable(
                f"data dir {self.root} belongs to another store ({info.get('store_id')})"
            )
        if info.get("name") not in (None, self.name):  # another disk of this store mounted here
            raise StorageUnavailable(
                f"data dir {self.root} is data dir {info.get('name')}, not {self.name} "
                "(disks swapped since the server started?)"
            )
        if not os.access(self.root, os.W_OK):
            raise StorageUnavailable(f"data dir {self.root} is not writable")

    def usage(self) -> Usage:
        try:
            st = os.statvfs(self.root)
        except OSError as exc:
            raise storage_error(exc, self.root) from None
        return Usage(total_bytes=st.f_blocks * st.f_frsize, free_bytes=st.f_bavail * st.f_frsize)

    # --- blobs ----------------------------------------------------------------------------------

    def _path(self, key: str) -> Path:
        if key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"invalid blob key {key!r}")
        return self.root / key

    def _ensure_dir(self, directory: Path, *, sync: bool = True) -> None:
        """Create directory (and parents) if needed; `sync=False` leaves making the new
        entries durable to a later flush().

        A new store creates a fan-out dir for most of its first few thousand chunks (9 per
        chunk): a stat of the marker and one mkdir each, not the syscalls of checking the data
        dir and walking up. The marker is checked before any new dir is made: once the data
        dir has lost it (an unmounted disk), nothing new is created there.
        """
        if directory in self._known_dirs:
            return
        if not os.path.exists(self.root / MARKER):
            # The disk unmounted under a running server: new dirs would land on the empty
            # mount point, and their files vanish when the disk is mounted again.
            if not self.root.is_dir():
                raise StorageUnavailable(f"data dir {self.root} is missing")
            raise StorageUnavailable(
                f"data dir {self.root} has lost its {MARKER} marker (its disk unmounted?)"
            )
        if directory != self.root:  # the usual case, a fan-out dir: two syscalls
            try:
                os.mkdir(directory)
            except FileExistsError:
                self._known_dirs.add(directory)
                return
            except FileNotFoundError:
                pass  # a parent is missing: the data dir itself, or a level between
            else:
                if sync:
                    fsync_dir(directory.parent)
                self._known_dirs.add(directory)
                return
        missing = []
        d = directory
        while not d.exists() and d != self.root:
            missing.append(d)
            d = d.parent
        for d in reversed(missing):
            try:
                d.mkdir()
            except FileExistsError:
                pass
            if sync:
                fsync_dir(d.parent)  # the new entry must survive a crash too
        self._known_dirs.add(directory)

    def put(self, key: str, parts: Sequence[Buffer]) -> None:
        path = self._path(key)
        try:
            self._ensure_dir(path.parent)
            try:
                write_durably(path, parts, direct=self._direct)
            except OSError as exc:
                if not (self._direct and exc.errno == errno.EINVAL):
                    raise
                self._direct = False  # e.g. tmpfs: no O_DIRECT there; buffered from now on
                write_durably(path, parts)
        except OSError as exc:
            self._known_dirs.discard(path.parent)
            raise storage_error(exc, self.root) from None

    def write(self, key: str, parts: Sequence[Buffer]) -> None:
        """Write a blob without making it durable yet: `flush()` does that for a whole batch.

        No temporary name: a blob written but not flushed when the process dies is an orphan
        no index row points at (rows are inserted only after `flush()`), and gc removes it.
        """
        path = self._path(key)
        try:
            self._ensure_dir(path.parent, sync=False)
            try:
                fd = _write_file(path, parts, direct=self._direct, exclusive=False)
            except OSError as exc:
                if not (self._direct and exc.errno == errno.EINVAL):
                    raise
                self._direct = False
                fd = _write_file(path, parts, direct=False, exclusive=False)
            os.close(fd)
        except OSError as exc:
            self._known_dirs.discard(path.parent)
            raise storage_error(exc, self.root) from None

    def write_at(self, key: str, offset: int, parts: Sequence[Buffer]) -> None:
        """Write the parts into the blob at `offset`, creating it if missing, keeping the
        bytes before `offset` (bytes past the end of what is written are left as they were).
        Durable only after `flush()`.

        Through the page cache: the offset is rarely aligned, and the pieces are small (what
        a request added to an upload's staged tail).
        """
        if offset < 0:
            raise ValueError(f"negative offset {offset}")
        path = self._path(key)
        try:
            self._ensure_dir(path.parent, sync=False)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                position = offset
                for p in parts:
                    view = memoryview(p).cast("B")
                    _pwrite_all(fd, view, position)
                    position += len(view)
            finally:
                os.close(fd)
        except OSError as exc:
            self._known_dirs.discard(path.parent)
            raise storage_error(exc, self.root) from None

    def flush(self) -> None:
        """Make every `write()` so far durable (syncfs of this dir's filesystem)."""
        try:
            sync_filesystem(self.root)
        except OSError as exc:
            raise storage_error(exc, self.root) from None

    @property
    def filesystem(self) -> int:
        """The filesystem's device id: dirs sharing it need one flush between them."""
        if self._device is None:
            self._device = os.stat(self.root).st_dev
        return self._device

    def get(self, key: str, limit: int | None = None) -> bytes:
        if limit is not None and limit < 0:
            raise ValueError(f"negative limit {limit}")
        path = self._path(key)
        try:
            if self._direct_read and (data := self._get_direct(path, limit)) is not None:
                return data
            with open(path, "rb") as f:
                return f.read(-1 if limit is None else limit)
        except FileNotFoundError:
            if not self.root.is_dir():
                raise StorageUnavailable(f"data dir {self.root} is missing") from None
            if not (self.root / MARKER).exists():  # the empty mount point of a lost disk
                raise StorageUnavailable(f"data dir {self.root} lost its marker") from None
            raise ShardMissing(f"{key} not found in data dir {self.root}") from None
        except OSError as exc:
            raise storage_error(exc, self.root) from None

    def _get_direct(self, path: Path, limit: int | None) -> bytes | None:
        """The file through O_DIRECT (see _read_direct); None: read it through the page
        cache, from now on too if the filesystem refused O_DIRECT."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_DIRECT)
            try:
                return _read_direct(fd, limit)
            finally:
                os.close(fd)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            # Refused at the open (e.g. tmpfs) or at the read (a device whose blocks exceed
            # a page).
            self._direct_read = False
            return None

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise storage_error(exc, self.root) from None

    def stat(self, key: str) -> BlobInfo | None:
        try:
            st = self._path(key).stat()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise storage_error(exc, self.root) from None
        return BlobInfo(key=key, size=st.st_size, mtime=st.st_mtime)

    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        if not self.root.is_dir():
            raise StorageUnavailable(f"data dir {self.root} is missing")
        if "/" in prefix:
            self._path(prefix.rsplit("/", 1)[0])  # refuses a prefix outside the dir
        return listing.walk(self.root, prefix, skip=(MARKER, EPOCH_MARKER))

    def list_groups(self) -> Iterator[list[BlobInfo]]:
        if not self.root.is_dir():
            raise StorageUnavailable(f"data dir {self.root} is missing")
        try:
            return listing.groups(self.root, self.list, skip=(MARKER, EPOCH_MARKER))
        except OSError as exc:
            raise storage_error(exc, self.root) from None
