"""Chunk ids, client checksums and the resumable whole-file SHA-256."""

from __future__ import annotations

import array
import hashlib
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgestore.codec.hashing import (
    CHECKSUM_ALGORITHMS,
    STATE_SIZE,
    ResumableSha256,
    _Sha256Ctx,
    chunk_id,
    new_checksum,
)
from edgestore.errors import InvalidInput, UnsupportedChecksum

needs_libcrypto = pytest.mark.skipif(
    not ResumableSha256.available(),
    reason="libcrypto not loadable: ResumableSha256 unavailable (callers fall back)",
)


def _readonly_view(data: bytes) -> memoryview:
    """A read-only view of writable memory, as a chunk lent by the chunker is."""
    return memoryview(bytearray(data)).toreadonly()


buffer_kinds = st.sampled_from([bytes, bytearray, memoryview, _readonly_view])


@st.composite
def pieces(draw):
    """Data split into pieces (empty ones included), each of a random buffer type."""
    data = draw(st.binary(max_size=5000))
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=12)))
    bounds = [0, *cuts, len(data)]
    parts = [data[a:b] for a, b in itertools.pairwise(bounds)]
    return data, [draw(buffer_kinds)(p) for p in parts]


@needs_libcrypto
@settings(max_examples=200)
@given(split=pieces())
def test_resumable_sha256_equals_hashlib_for_any_split(split):
    data, parts = split
    hasher = ResumableSha256()
    seen = b""
    for part in parts:
        hasher.update(part)
        seen += bytes(part)
        assert hasher.digest() == hashlib.sha256(seen).digest()
    assert hasher.hexdigest() == hashlib.sha256(data).hexdigest()


@needs_libcrypto
@settings(max_examples=200)
@given(split=pieces(), data=st.data())
def test_saved_state_resumes_in_a_new_hasher(split, data):
    whole, parts = split
    at = data.draw(st.integers(0, len(parts)))
    first = ResumableSha256()
    for part in parts[:at]:
        first.update(part)
    state = first.state()
    assert isinstance(state, bytes) and len(state) == STATE_SIZE
    del first  # the request that hashed the first part is gone

    second = ResumableSha256(state)
    for part in parts[at:]:
        second.update(part)
    assert second.digest() == hashlib.sha256(whole).digest()


@needs_libcrypto
def test_digest_does_not_consume_the_hasher():
    hasher = ResumableSha256()
    hasher.update(b"hello ")
    assert hasher.digest() == hasher.digest() == hashlib.sha256(b"hello ").digest()
    hasher.update(b"world")
    assert hasher.hexdigest() == hashlib.sha256(b"hello world").hexdigest()


@needs_libcrypto
def test_copy_is_independent():
    original = ResumableSha256()
    original.update(b"abc")
    clone = original.copy()
    clone.update(b"def")
    assert original.digest() == hashlib.sha256(b"abc").digest()
    assert clone.digest() == hashlib.sha256(b"abcdef").digest()


@needs_libcrypto
def test_empty_input_is_the_sha256_of_nothing():
    hasher = ResumableSha256()
    hasher.update(b"")
    assert hasher.hexdigest() == hashlib.sha256(b"").hexdigest()


@needs_libcrypto
def test_large_update_crossing_block_boundaries():
    data = bytes(range(256)) * 40_000 + b"x" * 63
    hasher = ResumableSha256()
    hasher.update(memoryview(data)[:100_001])
    hasher.update(bytearray(data[100_001:]))
    assert hasher.digest() == hashlib.sha256(data).digest()


@needs_libcrypto
@pytest.mark.parametrize("size", [0, 1, STATE_SIZE - 1, STATE_SIZE + 1])
def test_state_of_the_wrong_size_is_refused(size):
    with pytest.raises(ValueError, match=str(STATE_SIZE)):
        ResumableSha256(b"\0" * size)


def _damaged_state(**fields: int) -> bytes:
    """A saved state after 100 bytes, with some of OpenSSL's fields overwritten."""
    hasher = ResumableSha256()
    hasher.update(b"x" * 100)
    ctx = _Sha256Ctx.from_buffer_copy(hasher.state())
    for name, value in fields.items():
        setattr(ctx, name, value)
    return bytes(ctx)


@needs_libcrypto
@pytest.mark.parametrize(
    "fields",
    [{"num": 64}, {"num": 100_000_000}, {"num": 35}, {"md_len": 4096}, {"Nl": 7}],
    ids=["num-64", "num-huge", "num-disagrees", "md_len", "bit-count"],
)
def test_a_damaged_state_is_refused_not_trusted(fields):
    """A state is read back from the database (an upload's, or a stored version's manifest
    that an upload follows) and handed to OpenSSL as it is: with a damaged buffer fill
    (`num`), its next update copied past the 64-byte block and the whole server died of a
    segmentation fault. A state whose fields disagree is refused with a ValueError."""
    with pytest.raises(ValueError, match="SHA-256 state"):
        ResumableSha256(_damaged_state(**fields))


@needs_libcrypto
def test_saved_states_are_accepted_at_every_fill():
    for n in range(130):
        hasher = ResumableSha256()
        hasher.update(b"y" * n)
        assert ResumableSha256(hasher.state()).hexdigest() == hashlib.sha256(b"y" * n).hexdigest()


@needs_libcrypto
def test_update_with_a_multibyte_memoryview_hashes_every_byte():
    words = array.array("I", range(1000))
    hasher = ResumableSha256()
    hasher.update(memoryview(words))
    assert hasher.digest() == hashlib.sha256(words).digest()


@pytest.mark.parametrize("name", ["sha1", "md5", "sha256", "SHA256", "Sha1"])
def test_new_checksum_supports_the_tus_algorithms(name):
    hasher = new_checksum(name)
    hasher.update(b"some ")
    hasher.update(b"bytes")
    expected = hashlib.new(name.lower(), b"some bytes")
    assert hasher.digest() == expected.digest()
    assert hasher.hexdigest() == expected.hexdigest()


def test_checksum_algorithms_include_the_required_ones():
    assert {"sha1", "md5", "sha256"} <= set(CHECKSUM_ALGORITHMS)


@pytest.mark.parametrize("name", ["crc32", "blake3", "sha3-256", "", "sha 256"])
def test_new_checksum_refuses_unknown_algorithms_by_name(name):
    with pytest.raises(UnsupportedChecksum) as info:
        new_checksum(name)
    assert repr(name) in str(info.value)
    assert info.value.code == "unsupported_checksum"
    assert isinstance(info.value, InvalidInput)


@given(data=st.binary(max_size=4096), kind=buffer_kinds)
def test_chunk_id_is_lowercase_hex_sha256(data, kind):
    cid = chunk_id(kind(data))
    assert cid == hashlib.sha256(data).hexdigest()
    assert len(cid) == 64
    assert cid == cid.lower()
    assert set(cid) <= set("0123456789abcdef")


def test_chunk_id_known_answer():
    assert chunk_id(b"abc") == ("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
