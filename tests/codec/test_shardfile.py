"""Shard file format v1: round trip, every corruption detected, layout as documented."""

from __future__ import annotations

import hashlib
import struct

import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from edgestore.codec import shardfile
from edgestore.codec.erasure import ReedSolomon, Replication
from edgestore.codec.shardfile import (
    HEADER_SIZE,
    MAGIC,
    VERSION,
    ShardHeader,
    make_header,
    pack,
    parse_header,
    unpack,
)
from edgestore.errors import CorruptShard
from edgestore.types import ChunkId, Compression, Layout

chunk_ids = st.binary(min_size=32, max_size=32).map(lambda b: ChunkId(b.hex()))
payloads = st.binary(max_size=4096)


@st.composite
def shards(draw):
    payload = draw(payloads)
    header = make_header(
        chunk=draw(chunk_ids),
        layout=draw(st.sampled_from([Layout.EC, Layout.REPLICA])),
        shard_index=draw(st.integers(0, 255)),
        k=draw(st.integers(1, 255)),
        m=draw(st.integers(0, 255)),
        compression=draw(st.sampled_from(list(Compression))),
        stored_length=draw(st.integers(0, 2**64 - 1)),
        payload=payload,
    )
    return header, payload


def blob_of(header, payload):
    return b"".join(pack(header, payload))


def sample_shard(payload=b"payload bytes" * 10):
    header = make_header(
        ChunkId(hashlib.sha256(b"chunk").hexdigest()),
        Layout.EC,
        shard_index=4,
        k=6,
        m=3,
        compression=Compression.ZSTD,
        stored_length=12345,
        payload=payload,
    )
    return header, payload


def with_valid_header_checksum(body: bytes) -> bytes:
    """Re-seal a (deliberately altered) 76-byte header body with its XXH3-64."""
    assert len(body) == 76
    return body + struct.pack("<Q", xxhash.xxh3_64_intdigest(body))


@settings(max_examples=150)
@given(shard=shards())
def test_pack_unpack_round_trip(shard):
    header, payload = shard
    parts = pack(header, payload)
    assert len(parts) == 2 and len(parts[0]) == HEADER_SIZE and parts[1] == payload
    blob = b"".join(parts)
    got_header, got_payload = unpack(blob, expect_chunk=header.chunk_id)
    assert got_header == header
    assert bytes(got_payload) == payload
    assert parse_header(blob[:HEADER_SIZE]) == header


@settings(max_examples=300)
@given(shard=shards(), data=st.data())
def test_any_single_bit_flip_is_detected(shard, data):
    blob = bytearray(blob_of(*shard))
    bit = data.draw(st.integers(0, len(blob) * 8 - 1), label="bit")
    blob[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(CorruptShard):
        unpack(bytes(blob))


def test_a_bit_flip_in_every_header_byte_is_detected():
    header, payload = sample_shard()
    blob = blob_of(header, payload)
    for pos in range(HEADER_SIZE):
        for bit in (0, 7):
            bad = bytearray(blob)
            bad[pos] ^= 1 << bit
            with pytest.raises(CorruptShard):
                unpack(bytes(bad))


@settings(max_examples=150)
@given(shard=shards(), data=st.data())
def test_truncation_is_detected(shard, data):
    blob = blob_of(*shard)
    cut = data.draw(st.integers(0, len(blob) - 1), label="kept bytes")
    with pytest.raises(CorruptShard):
        unpack(blob[:cut])


@given(shard=shards(), extra=st.binary(min_size=1, max_size=64))
def test_trailing_bytes_are_detected(shard, extra):
    with pytest.raises(CorruptShard):
        unpack(blob_of(*shard) + extra)


def test_wrong_chunk_is_detected():
    header, payload = sample_shard()
    other = ChunkId(hashlib.sha256(b"another chunk").hexdigest())
    with pytest.raises(CorruptShard) as info:
        unpack(blob_of(header, payload), expect_chunk=other)
    assert header.chunk_id in str(info.value) and other in str(info.value)


def _reseal(offset: int, value: bytes) -> bytes:
    header, payload = sample_shard()
    body = bytearray(blob_of(header, payload)[:76])
    body[offset : offset + len(value)] = value
    return with_valid_header_checksum(bytes(body)) + payload


@pytest.mark.parametrize("version", [0, 2, 255])
def test_unknown_version_is_detected(version):
    with pytest.raises(CorruptShard, match="version"):
        unpack(_reseal(4, bytes([version])))


def test_bad_magic_is_detected():
    with pytest.raises(CorruptShard, match="magic"):
        unpack(_reseal(0, b"NOPE"))


@pytest.mark.parametrize(("offset", "code"), [(5, 0), (5, 3), (9, 2), (9, 255)])
def test_unknown_layout_or_compression_code_is_detected(offset, code):
    with pytest.raises(CorruptShard):
        unpack(_reseal(offset, bytes([code])))


@pytest.mark.parametrize("size", [0, 1, HEADER_SIZE - 1])
def test_shorter_than_a_header_is_detected(size):
    header, payload = sample_shard()
    with pytest.raises(CorruptShard, match=str(HEADER_SIZE)):
        parse_header(blob_of(header, payload)[:size])


def test_header_size_matches_the_documented_layout():
    assert HEADER_SIZE == 84
    assert "84     -     payload" in (shardfile.__doc__ or "")


def test_bytes_sit_at_the_documented_offsets():
    """Decode a packed shard by hand, following the table in the module docstring."""
    payload = bytes(range(200))
    header = make_header(
        ChunkId(hashlib.sha256(b"documented").hexdigest()),
        Layout.REPLICA,
        shard_index=7,
        k=1,
        m=2,
        compression=Compression.NONE,
        stored_length=0x0102030405060708,
        payload=payload,
    )
    blob = blob_of(header, payload)
    assert blob[0:4] == MAGIC == b"ESHD"
    assert blob[4] == VERSION == 1
    assert blob[5] == 2  # replica
    assert blob[6] == 7  # shard index
    assert blob[7] == 1  # k
    assert blob[8] == 2  # m
    assert blob[9] == 0  # compression none
    assert blob[10:12] == b"\0\0"  # reserved
    assert blob[12:44] == hashlib.sha256(b"documented").digest()
    assert struct.unpack_from("<Q", blob, 44)[0] == len(payload)
    assert blob[52:60] == bytes([8, 7, 6, 5, 4, 3, 2, 1])  # little-endian stored length
    assert blob[60:76] == xxhash.xxh3_128_digest(payload)
    assert struct.unpack_from("<Q", blob, 76)[0] == xxhash.xxh3_64_intdigest(blob[:76])
    assert blob[84:] == payload

    ec = make_header(header.chunk_id, Layout.EC, 0, 6, 3, Compression.ZSTD, 1, payload)
    ec_blob = blob_of(ec, payload)
    assert (ec_blob[5], ec_blob[9]) == (1, 1)  # EC, zstd


def test_make_header_records_the_payload():
    header, payload = sample_shard()
    assert isinstance(header, ShardHeader)
    assert header.payload_length == len(payload)
    assert header.payload_checksum == xxhash.xxh3_128_hexdigest(payload)


# --- building a chunk's shard files -----------------------------------------------------------


class _CopyingOnly:
    """The same Reed-Solomon codec without its in-place encoder (the fallback path)."""

    def __init__(self, inner: ReedSolomon) -> None:
        self.inner = inner
        self.total, self.needed = inner.total, inner.needed

    def encode(self, data: bytes):  # type: ignore[no-untyped-def]
        return self.inner.encode(data)

    def encode_framed(self, data: bytes, reserve: int) -> None:
        return None

    def decode(self, shards):  # type: ignore[no-untyped-def]
        return self.inner.decode(shards)


@settings(max_examples=25, deadline=None)
@given(data=st.binary(max_size=70_000), cid=chunk_ids)
def test_in_place_and_copied_shard_files_are_the_same_bytes(data, cid):
    rs = ReedSolomon(6, 3)
    framed = shardfile.build(rs, cid, Layout.EC, 6, 3, Compression.NONE, data)
    copied = shardfile.build(_CopyingOnly(rs), cid, Layout.EC, 6, 3, Compression.NONE, data)
    assert len(framed[0].parts) == 1, "ISA-L lays each file out in one aligned buffer"
    assert [b"".join(f.parts) for f in framed] == [b"".join(f.parts) for f in copied]
    assert [f.header for f in framed] == [f.header for f in copied]
    for index, f in enumerate(framed):
        header, payload = unpack(b"".join(f.parts), cid)
        assert header.shard_index == index and len(payload) == header.payload_length


def test_replicas_are_built_from_the_chunk_itself():
    data = b"replicated" * 100
    files = shardfile.build(
        Replication(3), ChunkId("ab" * 32), Layout.REPLICA, 1, 2, Compression.NONE, data
    )
    assert [unpack(b"".join(f.parts))[1].tobytes() for f in files] == [data] * 3
