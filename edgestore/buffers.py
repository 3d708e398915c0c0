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
