"""Copies of large byte buffers that let other threads run, and bytes objects filled that way.

Python copies a buffer (`bytes(view)`, `target[a:b] = source`) with the GIL held, so while
the thread that cuts chunks moves ~3 copies of every uploaded byte (into the chunker's
buffer, out as a chunk, and the leftover back to the front), hashing, zstd, erasure coding
and the event loop wait for it: measured with py-spy, those copies were a third of all the
time the GIL was held during an ingest. `ctypes.memmove` is a foreign call, which releases
the GIL; it also ran at ~12 GB/s here against ~6.6 GB/s for a memoryview slice assignment.

Small copies stay plain Python: below GIL_FREE_MIN, giving the GIL away and taking it back
costs more than the copy.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

Buffer = bytes | bytearray | memoryview

GIL_FREE_MIN = 256 * 1024

_PyBUF_SIMPLE = 0
_PyBUF_WRITABLE = 1


class _PyBuffer(ctypes.Structure):
    """`Py_buffer` from the stable buffer protocol (Include/pybuffer.h)."""

    _fields_ = [
        ("buf", ctypes.c_void_p),
        ("obj", ctypes.c_void_p),
        ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t),
        ("readonly", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p),
        ("shape", ctypes.c_void_p),
        ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p),
        ("internal", ctypes.c_void_p),
    ]


_get_buffer = ctypes.pythonapi.PyObject_GetBuffer
_get_buffer.argtypes = [ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int]
_get_buffer.restype = ctypes.c_int
_release_buffer = ctypes.pythonapi.PyBuffer_Release
_release_buffer.argtypes = [ctypes.POINTER(_PyBuffer)]
_release_buffer.restype = None
_new_bytes = ctypes.pythonapi.PyBytes_FromStringAndSize
_new_bytes.argtypes = [ctypes.c_void_p, ctypes.c_ssize_t]
_new_bytes.restype = ctypes.py_object


@contextmanager
def _pinned(obj: object, flags: int) -> Iterator[_PyBuffer]:
    """The buffer's memory, held (the exporter can neither move nor free it) until exit."""
    view = _PyBuffer()
    if _get_buffer(obj, ctypes.byref(view), flags) != 0:  # ctypes raised already if it failed
        raise BufferError("cannot get the buffer")
    try:
        yield view
    finally:
        _release_buffer(ctypes.byref(view))


def copy_into(target: bytearray | memoryview, offset: int, source: Buffer) -> int:
    """Copy `source` into `target` at `offset` (the ranges may overlap); returns its length.

    Both must be contiguous; the target writable. Raises ValueError rather than write outside
    the target.
    """
    src = memoryview(source).cast("B") if not isinstance(source, bytes) else source
    n = len(src)
    if offset < 0 or offset + n > memoryview(target).nbytes:
        raise ValueError(f"copy of {n} bytes at {offset} does not fit a {len(target)}-byte buffer")
    if n < GIL_FREE_MIN:
        memoryview(target).cast("B")[offset : offset + n] = src
        return n
    with _pinned(target, _PyBUF_WRITABLE) as dst, _pinned(src, _PyBUF_SIMPLE) as s:
        assert dst.buf is not None and s.buf is not None
        ctypes.memmove(dst.buf + offset, s.buf, n)
    return n


def bytes_of(source: Buffer) -> bytes:
    """`bytes(source)`, with the copy made without the GIL when it is large.

    The new object is filled before anything else can see it, as C code does with
    PyBytes_FromStringAndSize(NULL, n); after that it is an ordinary immutable bytes.
    """
    src = memoryview(source).cast("B")
    n = len(src)
    if n < GIL_FREE_MIN:
        return bytes(src)
    out: bytes = _new_bytes(None, n)
    with _pinned(out, _PyBUF_SIMPLE) as dst, _pinned(src, _PyBUF_SIMPLE) as s:
        assert dst.buf is not None and s.buf is not None
        ctypes.memmove(dst.buf, s.buf, n)
    return out


@contextmanager
def pointer_to(source: Buffer) -> Iterator[tuple[int, int]]:
    """(address, length) of a contiguous buffer, read-only ones too, held until exit: for C
    code that reads it (ctypes' from_buffer would need a writable one, or a copy)."""
    with _pinned(source, _PyBUF_SIMPLE) as view:
        yield (view.buf or 0), view.len


def address_of(source: Buffer) -> int:
    """Where the buffer's first byte is in memory (to check alignment; not to be kept)."""
    with pointer_to(source) as (address, _length):
        return address


def fill_zero(target: bytearray | memoryview, offset: int, n: int) -> None:
    """Zero n bytes of target from offset, without the GIL when it is large."""
    if offset < 0 or n < 0 or offset + n > memoryview(target).nbytes:
        raise ValueError(f"{n} bytes at {offset} do not fit a {len(target)}-byte buffer")
    if n < GIL_FREE_MIN:
        memoryview(target).cast("B")[offset : offset + n] = bytes(n)
        return
    with _pinned(target, _PyBUF_WRITABLE) as dst:
        assert dst.buf is not None
        ctypes.memset(dst.buf + offset, 0, n)


PAGE = 4096
_GRAIN = 1024 * 1024  # block sizes are rounded up to this, so blocks fit many requests

_libc = ctypes.CDLL(None, use_errno=True)
_mmap = _libc.mmap
_mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
]
_mmap.restype = ctypes.c_void_p
_munmap = _libc.munmap
_munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_munmap.restype = ctypes.c_int
_MAP_FAILED = ctypes.c_void_p(-1).value


def _map(capacity: int) -> int:
    """Anonymous memory of its own, not from the heap: multi-MiB blocks freed there left
    holes that kept the heap (and RSS) large (8 concurrent uploads: ~60 MiB more)."""
    address = _mmap(
        None,
        capacity,
        mmap.PROT_READ | mmap.PROT_WRITE,
        mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
        -1,
        0,
    )
    if address in (None, _MAP_FAILED):
        raise MemoryError(f"cannot map {capacity} bytes: {os.strerror(ctypes.get_errno())}")
    return int(address)


class _Lease:
    """Gives its block back to the pool when the last view of the block is gone."""

    def __init__(self, pool: AlignedPool, address: int, capacity: int) -> None:
        self.pool, self.address, self.capacity = pool, address, capacity

    def __del__(self) -> None:
        try:
            self.pool._give_back(self.address, self.capacity)
        except Exception:
            pass


_POOLS: weakref.WeakSet[AlignedPool] = weakref.WeakSet()


def trim_pools(older_than: float) -> int:
    """Unmap the idle blocks of every pool that waited more than `older_than` seconds
    (the server's upkeep calls this); returns bytes freed."""
    return sum(pool.trim(older_than) for pool in list(_POOLS))


class AlignedPool:
    """Page-aligned blocks (for O_DIRECT writes straight from them), reused.

    A block goes back to the pool only when nothing can reach it any more: every view of it
    holds it alive (CPython frees it, and the pool takes it back, when the last view goes),
    so a reused block cannot change bytes that someone still reads.

    Reuse is the point: fresh memory costs a page fault and a zeroed page per 4 KiB, and on
    this kind of VM that made erasure coding a 4 MiB chunk into a fresh block 4.6 ms of CPU
    against 0.33 ms into a reused one. So blocks are all made as large as the largest request
    so far (any idle block then serves any request, where mixed sizes made a pool of a few
    blocks miss and map anew), and up to `idle_blocks` wait for reuse; the rest are unmapped,
    and so are those still idle when the server's upkeep comes by (`trim_pools`).

    A reused block holds old bytes: whoever takes one writes every byte it will use.
    """

    def __init__(self, idle_blocks: int) -> None:
        self.idle_blocks = idle_blocks
        self._idle: list[tuple[int, int, float]] = []  # (capacity, address, idle since)
        _POOLS.add(self)
        self._capacity = _GRAIN  # of new blocks: the largest request so far, rounded up
        self._lock = threading.RLock()  # RLock: a lease may end inside get() on this thread

    def get(self, size: int) -> memoryview:
        """A writable, page-aligned view of `size` bytes (contents undefined)."""
        if size < 0:
            raise ValueError(f"negative size {size}")
        address = 0
        with self._lock:
            self._capacity = max(self._capacity, -(-size // _GRAIN) * _GRAIN)
            capacity = self._capacity
            while self._idle and not address:
                old_capacity, old_address, _ = self._idle.pop()
                if old_capacity >= size:
                    capacity, address = old_capacity, old_address
                else:  # made before a larger request: too small from now on
                    _munmap(old_address, old_capacity)
        if not address:
            address = _map(capacity)
        array = (ctypes.c_char * size).from_address(address)
        array.lease = _Lease(self, address, capacity)  # type: ignore[attr-defined]
        return memoryview(array).cast("B")

    def _give_back(self, address: int, capacity: int) -> None:
        with self._lock:
            if len(self._idle) < self.idle_blocks and capacity >= self._capacity:
                self._idle.append((capacity, address, time.monotonic()))
                return
        _munmap(address, capacity)

    def trim(self, older_than: float) -> int:
        """Unmap the blocks idle for more than `older_than` seconds; returns bytes freed.

        Idle blocks are spares for a busy store; one that went quiet gives them back."""
        cutoff = time.monotonic() - older_than
        with self._lock:
            stale = [b for b in self._idle if b[2] < cutoff]
            self._idle = [b for b in self._idle if b[2] >= cutoff]
        for capacity, address, _ in stale:
            _munmap(address, capacity)
        return sum(capacity for capacity, _, _ in stale)

    @property
    def idle(self) -> int:
        """Bytes waiting for reuse."""
        with self._lock:
            return sum(c for c, _, _ in self._idle)
