"""zstd compression of chunks, kept raw when it does not pay.

Compressors are per thread: a `ZstdCompressor` shared between threads crashes the process
(see FACTS.md). Incompressible data (media, archives) is detected on a small sample first, so
it costs almost nothing instead of a full zstd pass that saves nothing.
"""

from __future__ import annotations

import threading

import zstandard

from edgestore.types import Compression

Buffer = bytes | bytearray | memoryview

PROBE_MIN_SIZE = 512 * 1024  # below this, compress directly: the probe would cost as much
PROBE_SIZE = 64 * 1024
PROBE_LEVEL = 1

_local = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    cache: dict[int, zstandard.ZstdCompressor] | None = getattr(_local, "cctx", None)
    if cache is None:
        cache = _local.cctx = {}
    cctx = cache.get(level)
    if cctx is None:
        cctx = cache[level] = zstandard.ZstdCompressor(level=level, write_content_size=True)
    return cctx


def _decompressor() -> zstandard.ZstdDecompressor:
    dctx: zstandard.ZstdDecompressor | None = getattr(_local, "dctx", None)
    if dctx is None:
        dctx = _local.dctx = zstandard.ZstdDecompressor()
    return dctx


def _worth_trying(raw: Buffer, min_saving: float) -> bool:
    """Compress a sample from the middle at a fast level; skip zstd if even that saves little."""
    if len(raw) < PROBE_MIN_SIZE:
        return True
    mid = (len(raw) - PROBE_SIZE) // 2
    sample = memoryview(raw)[mid : mid + PROBE_SIZE]
    packed = len(_compressor(PROBE_LEVEL).compress(sample))
    return packed <= PROBE_SIZE * (1.0 - min_saving)


def compress(raw: Buffer, level: int = 3, min_saving: float = 0.03) -> tuple[Compression, Buffer]:
    """Return (codec, stored bytes): zstd when it saves at least `min_saving`, else `raw`
    itself (not a copy: a chunk may be a view of the chunker's buffer)."""
    if len(raw) and _worth_trying(raw, min_saving):
        packed = _compressor(level).compress(raw)
        if len(packed) <= len(raw) * (1.0 - min_saving):
            return Compression.ZSTD, packed
    return Compression.NONE, raw


def decompress(codec: Compression | str, stored: Buffer, raw_size: int) -> bytes:
    """Inverse of `compress`: exactly `raw_size` bytes, or ValueError.

    The frame's declared size is checked before decompressing (zstandard trusts it over
    max_output_size), so a corrupt or hostile frame cannot make us allocate more.
    """
    if codec == Compression.NONE:
        if len(stored) != raw_size:
            raise ValueError(f"raw chunk is {len(stored)} bytes, expected {raw_size}")
        return bytes(stored)
    if codec == Compression.ZSTD:
        try:
            declared = zstandard.frame_content_size(stored)
            if declared not in (raw_size, zstandard.CONTENTSIZE_UNKNOWN):
                raise ValueError(f"zstd frame declares {declared} bytes, expected {raw_size}")
            raw = _decompressor().decompress(stored, max_output_size=raw_size)
        except zstandard.ZstdError as exc:  # a damaged frame: the same ValueError as the rest
            raise ValueError(f"zstd frame cannot be decompressed: {exc}") from None
        if len(raw) != raw_size:
            raise ValueError(f"zstd frame gave {len(raw)} bytes, expected {raw_size}")
        return raw
    raise ValueError(f"unknown compression {codec!r}")
