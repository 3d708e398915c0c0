"""The shard file format (version 1): a fixed header, then the payload.

Every shard carries enough to be checked and identified on its own, without the database:

    offset size  field
    0      4     magic b"ESHD"
    4      1     format version (1)
    5      1     layout (1 = Reed-Solomon EC, 2 = replica)
    6      1     shard index
    7      1     k (shards needed)
    8      1     m (extra shards)
    9      1     compression of the chunk's stored bytes (0 = none, 1 = zstd)
    10     2     reserved, zero
    12     32    chunk id (raw SHA-256 of the chunk's raw bytes)
    44     8     payload length (little-endian)
    52     8     stored chunk length (the compressed bytes that were encoded)
    60     16    XXH3-128 of the payload
    76     8     XXH3-64 of bytes 0..75 (the header's own checksum)
    84     -     payload

All integers little-endian. docs/formats.md documents this beside the manifest format.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from edgestore.buffers import Buffer
from edgestore.codec.hashing import header_checksum, shard_checksum
from edgestore.errors import CorruptShard
from edgestore.types import ChunkId, Compression, Layout

if TYPE_CHECKING:
    from edgestore.codec.erasure import RedundancyCodec

MAGIC = b"ESHD"
VERSION = 1
_BODY = struct.Struct("<4sBBBBBBH32sQQ16s")
_CHECK = struct.Struct("<Q")
HEADER_SIZE = _BODY.size + _CHECK.size

_LAYOUT_CODES = {Layout.EC: 1, Layout.REPLICA: 2}
_LAYOUTS = {v: k for k, v in _LAYOUT_CODES.items()}
_COMPRESSION_CODES = {Compression.NONE: 0, Compression.ZSTD: 1}
_COMPRESSIONS = {v: k for k, v in _COMPRESSION_CODES.items()}


@dataclass(frozen=True, slots=True)
class ShardHeader:
    chunk_id: ChunkId
    layout: Layout
    shard_index: int
    k: int
    m: int
    compression: Compression
    payload_length: int
    stored_length: int
    payload_checksum: str


def header_bytes(fields: ShardHeader) -> bytes:
    """The HEADER_SIZE bytes that open the shard file."""
    body = _BODY.pack(
        MAGIC,
        VERSION,
        _LAYOUT_CODES[fields.layout],
        fields.shard_index,
        fields.k,
        fields.m,
        _COMPRESSION_CODES[fields.compression],
        0,
        bytes.fromhex(fields.chunk_id),
        fields.payload_length,
        fields.stored_length,
        bytes.fromhex(fields.payload_checksum),
    )
    return body + _CHECK.pack(header_checksum(body))


def pack(header_fields: ShardHeader, payload: Buffer) -> list[Buffer]:
    """Header and payload as separate buffers, ready for a vectored write."""
    if len(payload) != header_fields.payload_length:
        raise ValueError("payload length differs from the header's")
    return [header_bytes(header_fields), payload]


@dataclass(frozen=True, slots=True)
class ShardFile:
    header: ShardHeader
    parts: list[Buffer]  # the file's bytes, in order


def build(
    codec: RedundancyCodec,
    chunk: ChunkId,
    layout: Layout,
    k: int,
    m: int,
    compression: Compression,
    stored: Buffer,
) -> list[ShardFile]:
    """Every shard file of a stored chunk, ready to write.

    Where the codec lays the shards out in page-aligned memory, each file is one buffer with
    its header written in front: O_DIRECT writes it without a copy (see codec/isal.py).
    """
    frames = codec.encode_framed(stored, HEADER_SIZE)
    payloads = codec.encode(stored) if frames is None else [f[HEADER_SIZE:] for f in frames]
    files = []
    for index, payload in enumerate(payloads):
        fields = make_header(chunk, layout, index, k, m, compression, len(stored), payload)
        if frames is None:
            files.append(ShardFile(fields, pack(fields, payload)))
        else:
            frames[index][:HEADER_SIZE] = header_bytes(fields)
            files.append(ShardFile(fields, [frames[index]]))
    return files


def make_header(
    chunk: ChunkId,
    layout: Layout,
    shard_index: int,
    k: int,
    m: int,
    compression: Compression,
    stored_length: int,
    payload: Buffer,
) -> ShardHeader:
    return ShardHeader(
        chunk_id=chunk,
        layout=layout,
        shard_index=shard_index,
        k=k,
        m=m,
        compression=compression,
        payload_length=len(payload),
        stored_length=stored_length,
        payload_checksum=shard_checksum(payload),
    )


def parse_header(blob: bytes | memoryview) -> ShardHeader:
    if len(blob) < HEADER_SIZE:
        raise CorruptShard(
            f"shard is {len(blob)} bytes, shorter than its {HEADER_SIZE}-byte header"
        )
    body = bytes(blob[: _BODY.size])
    (check,) = _CHECK.unpack_from(blob, _BODY.size)
    if header_checksum(body) != check:
        raise CorruptShard("shard header checksum mismatch")
    magic, version, layout, index, k, m, comp, _, raw_id, plen, slen, psum = _BODY.unpack(body)
    if magic != MAGIC:
        raise CorruptShard("not an edgestore shard (bad magic)")
    if version != VERSION:
        raise CorruptShard(f"unsupported shard format version {version}")
    try:
        return ShardHeader(
            chunk_id=ChunkId(raw_id.hex()),
            layout=_LAYOUTS[layout],
            shard_index=index,
            k=k,
            m=m,
            compression=_COMPRESSIONS[comp],
            payload_length=plen,
            stored_length=slen,
            payload_checksum=psum.hex(),
        )
    except KeyError as exc:
        raise CorruptShard(f"unknown code in shard header: {exc}") from None


def unpack(blob: bytes, expect_chunk: ChunkId | None = None) -> tuple[ShardHeader, memoryview]:
    """Parse and fully verify a shard file; the payload is returned only if intact."""
    header = parse_header(blob)
    payload = memoryview(blob)[HEADER_SIZE:]
    if len(payload) != header.payload_length:
        raise CorruptShard(
            f"shard payload is {len(payload)} bytes, header says {header.payload_length}"
        )
    if shard_checksum(payload) != header.payload_checksum:
        raise CorruptShard("shard payload checksum mismatch")
    if expect_chunk is not None and header.chunk_id != expect_chunk:
        raise CorruptShard(f"shard belongs to chunk {header.chunk_id}, expected {expect_chunk}")
    return header, payload
