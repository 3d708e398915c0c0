"""Chunk identity (SHA-256), shard checksums (XXH3-128) and a resumable whole-file SHA-256.

The resumable hasher exists because a tus upload spans many requests, processes and even
nodes: its SHA-256 state is saved with every durable offset, so the whole-file digest is
ready the moment the last byte lands, with no second pass over 20 GB.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
from collections.abc import Callable, Iterator
from typing import Protocol

import xxhash

from edgestore.buffers import Buffer, pointer_to
from edgestore.errors import UnsupportedChecksum
from edgestore.types import ChunkId


def chunk_id(data: Buffer) -> ChunkId:
    """A chunk's identity: the lower-case hex SHA-256 of its raw bytes."""
    return ChunkId(hashlib.sha256(data).hexdigest())


def shard_checksum(data: Buffer) -> str:
    """Bitrot check for one shard's payload: XXH3-128, ~12 GB/s, not a security hash."""
    return xxhash.xxh3_128_hexdigest(data)


def header_checksum(data: Buffer) -> int:
    return xxhash.xxh3_64_intdigest(data)


class Hasher(Protocol):
    def update(self, data: Buffer, /) -> None: ...
    def digest(self) -> bytes: ...
    def hexdigest(self) -> str: ...


# Names as in the tus checksum extension's registry (IANA "Hash Function Textual Names").
_CHECKSUM_ALGORITHMS: dict[str, Callable[[], Hasher]] = {
    "sha1": hashlib.sha1,
    "md5": hashlib.md5,
    "sha256": hashlib.sha256,
    "sha512": hashlib.sha512,
}
CHECKSUM_ALGORITHMS = tuple(_CHECKSUM_ALGORITHMS)


def new_checksum(algorithm: str) -> Hasher:
    """A hasher for a client-declared checksum algorithm (tus Upload-Checksum)."""
    try:
        return _CHECKSUM_ALGORITHMS[algorithm.lower()]()
    except KeyError:
        raise UnsupportedChecksum(
            f"unsupported checksum algorithm {algorithm!r}; "
            f"supported: {', '.join(CHECKSUM_ALGORITHMS)}"
        ) from None


class _Sha256Ctx(ctypes.Structure):
    """OpenSSL's SHA256_CTX (openssl/sha.h), a stable public struct of 112 bytes."""

    _fields_ = (
        ("h", ctypes.c_uint32 * 8),
        ("Nl", ctypes.c_uint32),
        ("Nh", ctypes.c_uint32),
        ("data", ctypes.c_uint32 * 16),
        ("num", ctypes.c_uint),
        ("md_len", ctypes.c_uint),
    )


def _libcrypto_candidates() -> Iterator[str]:
    # By soname first (dlopen finds them; 3 is the one Python's own hashlib loaded, mostly):
    # ctypes.util.find_library runs ldconfig (or gcc), ~30 ms of every CLI command's start.
    yield from ("libcrypto.so.3", "libcrypto.so.1.1")
    if name := ctypes.util.find_library("crypto"):
        yield name


def _load_libcrypto() -> ctypes.CDLL | None:
    for name in _libcrypto_candidates():
        try:
            lib = ctypes.CDLL(name)
            for fn in (lib.SHA256_Init, lib.SHA256_Update, lib.SHA256_Final):
                fn.restype = ctypes.c_int
            lib.SHA256_Update.argtypes = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
        except (OSError, AttributeError):
            continue
        return lib
    return None


_LIBCRYPTO = _load_libcrypto()
STATE_SIZE = ctypes.sizeof(_Sha256Ctx)


_BLOCK = 64
_DIGEST = 32


def _check(ctx: _Sha256Ctx) -> None:
    """Refuse a state OpenSSL would trust to its harm: states come back from the database,
    and one whose buffer fill (`num`) is damaged made the next update copy past the 64-byte
    block (a segmentation fault: the whole server gone). The fill must also agree with the
    bit count, and the digest length be SHA-256's."""
    if ctx.num >= _BLOCK or ctx.md_len != _DIGEST or (ctx.Nl >> 3) % _BLOCK != ctx.num:
        raise ValueError(
            f"SHA-256 state is damaged (buffered {ctx.num} bytes, digest length {ctx.md_len}, "
            f"bit count {ctx.Nl})"
        )


class ResumableSha256:
    """SHA-256 whose state can be saved as bytes and resumed elsewhere (OpenSSL, GIL released).

    `available()` is False where libcrypto cannot be loaded; callers then fall back to
    hashing the stored object once it is complete.
    """

    def __init__(self, state: bytes | None = None) -> None:
        if _LIBCRYPTO is None:
            raise RuntimeError("libcrypto is not available: no resumable SHA-256")
        if state is None:
            self._ctx = _Sha256Ctx()
            _LIBCRYPTO.SHA256_Init(ctypes.byref(self._ctx))
        else:
            if len(state) != STATE_SIZE:
                raise ValueError(f"SHA-256 state must be {STATE_SIZE} bytes, got {len(state)}")
            self._ctx = _Sha256Ctx.from_buffer_copy(state)
            _check(self._ctx)

    @staticmethod
    def available() -> bool:
        return _LIBCRYPTO is not None

    def update(self, data: Buffer) -> None:
        """Hash any contiguous buffer in place (read-only views of shared memory included:
        chunks are views of the chunker's buffer), without the GIL."""
        with pointer_to(data) as (address, size):
            if size:
                _LIBCRYPTO.SHA256_Update(  # type: ignore[union-attr]
                    ctypes.byref(self._ctx), address, size
                )

    def state(self) -> bytes:
        return bytes(self._ctx)

    def copy(self) -> ResumableSha256:
        return ResumableSha256(self.state())

    def digest(self) -> bytes:
        ctx = _Sha256Ctx.from_buffer_copy(bytes(self._ctx))  # finalising must not consume us
        out = (ctypes.c_ubyte * 32)()
        _LIBCRYPTO.SHA256_Final(out, ctypes.byref(ctx))  # type: ignore[union-attr]
        return bytes(out)

    def hexdigest(self) -> str:
        return self.digest().hex()
