"""Reed-Solomon encoding by ISA-L straight into page-aligned shard files.

liberasurecode's encode (codec/liberasurecode.py) returns each fragment in a buffer of its
own, 16-byte aligned; shards are written with O_DIRECT, which needs page-aligned memory, so
every shard byte was copied once more into an aligned buffer on its way to the disk: ~11% of
the server's CPU during an upload. Here the k+m shard files of a chunk are laid out in one
pooled, page-aligned block, each with room for the shard header in front, and ISA-L (the
library under pyeclib's `isa_l_rs_*` backends) computes parity in place. The writer then
hands the block to the kernel as it is.

The bytes are liberasurecode's fragment format exactly (its 80-byte header, then the data):
`FrameEncoder.load` proves it against pyeclib on sample sizes, including blocks reused with
stale bytes, and returns None if anything differs, so callers keep the copying path. Shards
from either path read back through either.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import pyeclib
from pyeclib.ec_iface import ECDriver

from edgestore.buffers import PAGE, AlignedPool, Buffer, address_of, copy_into, fill_zero

FRAGMENT_HEADER = 80  # sizeof(fragment_header_t) in liberasurecode
_META = 59  # sizeof(fragment_metadata_t): what the header's CRC-32 covers
_SIZES = struct.Struct("<IIIQ")  # idx, size, backend metadata size, original data size
_CRC_AT = 67  # after the metadata, magic and library version
_MATRICES = {"isa_l_rs_cauchy": "gf_gen_cauchy1_matrix", "isa_l_rs_vand": "gf_gen_rs_matrix"}
# Big, then small (into the big one's stale block), then odd: the self-test's sizes.
_SELF_TEST_SIZES = (4 * 1024 * 1024 + 7, 1, 100, 4095, 65_537, 1_048_579, 0, 8 * 1024 * 1024)

# Shard blocks of the chunks just written, kept for the next ones. The engine has at most
# workers + 1 (3 on two cores) chunks in flight, so this many blocks serve it without a miss.
POOL = AlignedPool(idle_blocks=4)


def _library() -> ctypes.CDLL | None:
    """The ISA-L that pyeclib's wheel bundles, else the system's."""

    def candidates() -> Iterator[str]:
        libs = Path(pyeclib.__file__).parent.parent / "pyeclib.libs"
        yield from (str(p) for p in sorted(libs.glob("libisal*")))
        if found := ctypes.util.find_library("isal"):  # only then: it runs ldconfig, ~30 ms
            yield found

    for path in candidates():
        try:
            lib = ctypes.CDLL(path)  # CDLL: calls release the GIL
            for symbol in ("ec_init_tables", "ec_encode_data", *_MATRICES.values()):
                getattr(lib, symbol)
        except (OSError, AttributeError):
            continue
        return lib
    return None


class FrameEncoder:
    """k data + m parity shard files of one chunk, each `reserve` bytes of room (for the
    caller's header) then a liberasurecode fragment, in one page-aligned block."""

    def __init__(self, lib: ctypes.CDLL, k: int, m: int, backend: str, template: bytes) -> None:
        self.k, self.m = k, m
        self._lib = lib
        self._template = template
        self._backend_metadata = _SIZES.unpack_from(template)[2]  # 0 for ISA-L; kept as found
        matrix = (ctypes.c_ubyte * ((k + m) * k))()
        getattr(lib, _MATRICES[backend])(matrix, k + m, k)
        self._tables = (ctypes.c_ubyte * (k * m * 32))()
        lib.ec_init_tables(k, m, ctypes.byref(matrix, k * k), self._tables)
        lib.ec_encode_data.argtypes = [
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        lib.ec_encode_data.restype = None

    @classmethod
    def load(cls, k: int, m: int, backend: str) -> FrameEncoder | None:
        """An encoder proven byte-identical to pyeclib for these parameters, or None."""
        lib = _library()
        if lib is None or backend not in _MATRICES:
            return None
        try:
            driver = ECDriver(k=k, m=m, ec_type=backend)
            template = bytes(driver.encode(b"\0")[0][:FRAGMENT_HEADER])
            encoder = cls(lib, k, m, backend, template)
            for size in _SELF_TEST_SIZES:
                data = os.urandom(size)
                reserve = 84 if size % 2 else 0
                frames = encoder.encode(data, reserve)
                if [bytes(f[reserve:]) for f in frames] != list(driver.encode(data)):
                    return None
                if any(address_of(f) % PAGE for f in frames):
                    return None
        except (OSError, ValueError, TypeError, AttributeError, MemoryError):
            return None
        return encoder

    def encode(self, data: Buffer, reserve: int) -> list[memoryview]:
        """The shard files, each a view of `reserve + 80 + ceil(len/k)` bytes starting on a
        page; bytes [0, reserve) of each are the caller's to fill (they hold stale bytes)."""
        k, m = self.k, self.m
        n = len(data)
        size = -(-n // k)  # liberasurecode pads the data to a multiple of k (w=8: 1-byte words)
        length = reserve + FRAGMENT_HEADER + size
        stride = -(-length // PAGE) * PAGE
        block = POOL.get(stride * (k + m))
        base = address_of(block)
        at = [i * stride + reserve + FRAGMENT_HEADER for i in range(k + m)]
        for i in range(k):
            piece = memoryview(data)[i * size : (i + 1) * size]
            copy_into(block, at[i], piece)
            fill_zero(block, at[i] + len(piece), size - len(piece))
        if size:
            pointers = (ctypes.c_void_p * (k + m))(*(base + a for a in at))
            self._lib.ec_encode_data(
                size,
                k,
                m,
                self._tables,
                pointers,
                ctypes.byref(pointers, k * ctypes.sizeof(ctypes.c_void_p)),
            )
        header = bytearray(self._template)
        frames = []
        for i in range(k + m):
            _SIZES.pack_into(header, 0, i, size, self._backend_metadata, n)
            struct.pack_into("<I", header, _CRC_AT, zlib.crc32(header[:_META]))
            start = i * stride
            block[start + reserve : start + reserve + FRAGMENT_HEADER] = header
            frames.append(block[start : start + length])
        return frames
