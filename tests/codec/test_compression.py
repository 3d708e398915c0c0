"""zstd per chunk, raw when it does not pay; per-thread compressors."""

from __future__ import annotations

import random
import threading
from pathlib import Path

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

import edgestore
from edgestore.codec.compression import PROBE_MIN_SIZE, compress, decompress
from edgestore.errors import EdgestoreError
from edgestore.types import Compression

KiB = 1024
MiB = 1024 * KiB

# What a failed decompression may raise: zstd's own error or a domain/value error.
DECOMPRESS_ERRORS = (zstandard.ZstdError, ValueError, EdgestoreError)


def text_like(size: int, seed: int = 0) -> bytes:
    """Python-source-like text: the project's own modules, shuffled and repeated."""
    root = Path(edgestore.__file__).parent
    lines = [line for p in sorted(root.rglob("*.py")) for line in p.read_bytes().splitlines(True)]
    rng = random.Random(seed)
    out = bytearray()
    while len(out) < size:
        start = rng.randrange(len(lines))
        out += b"".join(lines[start : start + 40])
    return bytes(out[:size])


@settings(max_examples=150, deadline=None)
@given(
    raw=st.one_of(
        st.binary(max_size=8 * KiB),
        st.builds(lambda n, s: text_like(n, s), st.integers(0, 64 * KiB), st.integers(0, 99)),
    ),
    level=st.sampled_from([-7, -1, 1, 3, 9, 19]),
    min_saving=st.sampled_from([0.0, 0.03, 0.5]),
    kind=st.sampled_from([bytes, bytearray, memoryview]),
)
def test_round_trip(raw, level, min_saving, kind):
    given = kind(raw)
    codec, stored = compress(given, level=level, min_saving=min_saving)
    if codec == Compression.NONE:
        assert stored is given  # kept as given, not copied (chunks may be views)
        assert bytes(stored) == raw
    else:
        assert codec == Compression.ZSTD
        assert isinstance(stored, bytes)
        assert len(stored) <= len(raw) * (1.0 - min_saving)
    assert decompress(codec, stored, len(raw)) == raw
    # The codec name as stored in the database works too.
    assert decompress(str(codec), stored, len(raw)) == raw


def test_empty_is_stored_raw():
    assert compress(b"") == (Compression.NONE, b"")
    assert decompress(Compression.NONE, b"", 0) == b""


@pytest.mark.parametrize("size", [PROBE_MIN_SIZE - 1, 1 * MiB, 3 * MiB + 17])
def test_incompressible_data_is_kept_raw(size):
    raw = random.Random(size).randbytes(size)
    codec, stored = compress(raw)
    assert codec == Compression.NONE
    assert stored == raw
    assert decompress(codec, stored, size) == raw


@pytest.mark.parametrize("size", [10 * KiB, 2 * MiB])
def test_text_is_compressed(size):
    raw = text_like(size)
    codec, stored = compress(raw, level=3)
    assert codec == Compression.ZSTD
    assert len(stored) < 0.5 * len(raw)
    assert decompress(codec, stored, size) == raw


def test_unknown_codec_is_refused():
    with pytest.raises(ValueError, match="lz4"):
        decompress("lz4", b"abc", 3)


def test_frame_without_content_size_bigger_than_raw_size_raises():
    frame = zstandard.ZstdCompressor(write_content_size=False).compress(b"a" * 100_000)
    with pytest.raises(DECOMPRESS_ERRORS):
        decompress(Compression.ZSTD, frame, 1000)


def test_garbage_is_not_decompressed():
    with pytest.raises(DECOMPRESS_ERRORS):
        decompress(Compression.ZSTD, b"definitely not a zstd frame", 100)


def test_frame_bigger_than_raw_size_raises():
    _, frame = compress(b"a" * 100_000)
    with pytest.raises(DECOMPRESS_ERRORS):
        decompress(Compression.ZSTD, frame, 1000)


def test_raw_bytes_longer_than_raw_size_raise():
    with pytest.raises(DECOMPRESS_ERRORS):
        decompress(Compression.NONE, b"x" * 10, 5)


def test_compressors_are_safe_to_use_from_many_threads():
    """A ZstdCompressor shared between threads segfaults (FACTS.md): each needs its own."""
    threads_n, rounds = 8, 60
    barrier = threading.Barrier(threads_n)
    failures: list[str] = []

    def work(seed: int) -> None:
        rng = random.Random(seed)
        barrier.wait()
        for i in range(rounds):
            raw = text_like(rng.randrange(1, 256 * KiB), seed=rng.randrange(1000))
            level = rng.choice([1, 3])
            codec, stored = compress(raw, level=level)
            if codec != Compression.ZSTD or decompress(codec, stored, len(raw)) != raw:
                failures.append(f"thread {seed} round {i}: {codec} did not round-trip")

    threads = [threading.Thread(target=work, args=(n,)) for n in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
