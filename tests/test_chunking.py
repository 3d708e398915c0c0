"""StreamChunker: same cuts as FastCDC over the whole buffer, however the stream is split."""

from __future__ import annotations

import gc
import hashlib
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyfastcdc import FastCDC

from edgestore import chunking
from edgestore.buffers import AlignedPool
from edgestore.chunking import (
    DEFAULT_PARAMS,
    StreamChunker,
    chunk_stream,
    make_cdc,
)
from edgestore.types import ChunkerParams

KiB = 1024
MiB = 1024 * KiB

SMALL = ChunkerParams(min_size=256, avg_size=1 * KiB, max_size=4 * KiB)

# (min, avg, max) within pyfastcdc's bounds: min [64, 1 MiB], avg [256, 4 MiB], max [1 KiB, 16 MiB].
params_strategy = st.builds(
    ChunkerParams,
    min_size=st.sampled_from([64, 256, 1 * KiB]),
    avg_size=st.sampled_from([256, 1 * KiB, 4 * KiB]),
    max_size=st.sampled_from([1 * KiB, 4 * KiB, 16 * KiB]),
).filter(lambda p: p.min_size <= p.avg_size <= p.max_size)


@st.composite
def stream_data(draw, max_random_size=3 * MiB):
    """Bytes of several kinds: small arbitrary, large random, low-entropy repeats, zeros."""
    kind = draw(st.sampled_from(["binary", "random", "pattern", "zeros"]))
    if kind == "binary":
        return draw(st.binary(max_size=20 * KiB))
    size = draw(st.integers(0, max_random_size))
    if kind == "random":
        return random.Random(draw(st.integers(0, 2**32))).randbytes(size)
    if kind == "pattern":
        unit = draw(st.binary(min_size=1, max_size=300))
        return (unit * (size // len(unit) + 1))[:size]
    return bytes(size)


@st.composite
def split(draw, data):
    """Split data into pieces (empty and 1-byte included), each as bytes/bytearray/memoryview."""
    sizes = st.one_of(
        st.just(0), st.just(1), st.integers(0, 20 * KiB), st.integers(0, max(len(data), 1))
    )
    pieces = []
    pos = 0
    for size in draw(st.lists(sizes, max_size=40)):
        pieces.append(data[pos : pos + size])
        pos = min(pos + size, len(data))
    pieces.append(data[pos:])
    kinds = draw(st.lists(st.sampled_from([bytes, bytearray, memoryview]), min_size=len(pieces)))
    return [kind(p) for kind, p in zip(kinds, pieces, strict=False)]


def reference_chunks(data, params):
    cdc = FastCDC(params.avg_size, min_size=params.min_size, max_size=params.max_size)
    return [bytes(c.data) for c in cdc.cut_buf(data)]


def feed_all(chunker, pieces):
    out = []
    for piece in pieces:
        out += chunker.feed(piece)
    return out


def assert_size_bounds(chunks, params):
    assert all(chunks), "no chunk may be empty"
    for c in chunks[:-1]:
        assert params.min_size <= len(c) <= params.max_size
    if chunks:
        assert len(chunks[-1]) <= params.max_size


@pytest.mark.parametrize("lend", [False, True])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(params=params_strategy, data=st.data())
def test_any_split_gives_the_whole_buffer_cuts(lend, params, data):
    """With lend=True every chunk is a view of the chunker's buffers, all kept to the end: a
    buffer written again after it lent a chunk would show here as a chunk that changed."""
    stream = data.draw(stream_data())
    pieces = data.draw(split(stream))
    chunker = StreamChunker(params, lend=lend)
    emitted = b""
    chunks = []
    for piece in pieces:
        new = chunker.feed(piece)
        chunks += new
        emitted += b"".join(new)
        # Nothing is lost or duplicated: emitted chunks + tail = everything fed so far.
        assert emitted + chunker.tail == stream[: len(emitted) + chunker.tail_length]
        assert chunker.tail_length <= 2 * params.max_size
    chunks += chunker.finish()

    assert chunks == reference_chunks(stream, params)
    assert b"".join(chunks) == stream
    assert_size_bounds(chunks, params)


class ShortReads:
    """A Readable that returns at most the next of `sizes` bytes per read (a pipe, a socket)."""

    def __init__(self, data: bytes, sizes: list[int]) -> None:
        self._data, self._pos, self._sizes = data, 0, sizes
        self.calls = 0

    def readinto(self, buffer: memoryview) -> int:
        self.calls += 1
        size = self._sizes[self.calls % len(self._sizes)] if self._sizes else len(buffer)
        n = min(len(buffer), max(size, 1), len(self._data) - self._pos)
        buffer[:n] = self._data[self._pos : self._pos + n]
        self._pos += n
        return n


@pytest.mark.parametrize("lend", [False, True])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(params=params_strategy, data=st.data())
def test_reading_straight_into_the_buffer_gives_the_whole_buffer_cuts(lend, params, data):
    """fill() with short reads of any size, a cap per call and a saved tail to start from."""
    stream = data.draw(stream_data())
    start = data.draw(st.integers(0, min(len(stream), params.max_size)))
    sizes = data.draw(st.lists(st.integers(1, 64 * KiB), max_size=8))
    cap = data.draw(st.integers(1, 3 * params.max_size))
    chunker = StreamChunker(params, stream[:start], lend=lend)
    source = ShortReads(stream[start:], sizes)
    chunks, pos = [], start
    while piece := chunker.fill(source.readinto, cap):
        assert bytes(piece) == stream[pos : pos + len(piece)]  # the view is what was read
        assert len(piece) <= cap
        pos += len(piece)
        while (chunk := chunker.pop()) is not None:
            chunks.append(chunk)
    chunks += chunker.finish()

    assert pos == len(stream)
    assert chunks == reference_chunks(stream, params)


def test_fill_refuses_a_non_blocking_source_with_nothing_ready():
    chunker = StreamChunker(SMALL)
    with pytest.raises(BlockingIOError):
        chunker.fill(lambda buffer: None, 100)
    assert chunker.tail_length == 0


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(params=params_strategy, data=st.data())
def test_resuming_from_the_saved_tail_gives_the_same_chunks(params, data):
    """An interrupted upload resumes from the chunks already taken plus the saved tail."""
    stream = data.draw(stream_data(max_random_size=1 * MiB))
    cut = data.draw(st.integers(0, len(stream)))
    first = StreamChunker(params)
    chunks = feed_all(first, data.draw(split(stream[:cut])))
    tail = first.tail
    del first  # the first process is gone; only the chunks and the tail survive

    second = StreamChunker(params, tail=tail)
    assert second.tail == tail
    chunks += feed_all(second, data.draw(split(stream[cut:])))
    chunks += second.finish()

    assert chunks == reference_chunks(stream, params)
    assert b"".join(chunks) == stream


@pytest.mark.parametrize("lend", [False, True])
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(params=params_strategy, data=st.data())
def test_settled_cuts_at_append_ends_match_the_whole_buffer_cuts(lend, params, data):
    """pop_settled after any piece (an append that ends mid-stream) takes only cuts that the
    whole stream makes too, and leaves a tail that resumes to the same chunks."""
    stream = data.draw(stream_data(max_random_size=1 * MiB))
    pieces = data.draw(split(stream))
    chunker = StreamChunker(params, lend=lend)
    chunks = []
    for piece in pieces:
        chunks += chunker.feed(piece)
        if data.draw(st.booleans()):  # this append ends here: cut what is settled
            while (chunk := chunker.pop_settled()) is not None:
                chunks.append(chunk)
            if data.draw(st.booleans()):  # the next append resumes from the staged tail
                chunker = StreamChunker(params, tail=chunker.tail_view(), lend=lend)
            # else it goes on with the same chunker (kept warm between requests)
    chunks += chunker.finish()

    assert chunks == reference_chunks(stream, params)


def test_lent_chunks_are_views_that_outlive_the_buffer_moving_on():
    data = random.Random(7).randbytes(6 * MiB)
    chunker = StreamChunker(SMALL, lend=True)
    chunks = chunker.feed(data[: 3 * MiB]) + chunker.feed(data[3 * MiB :]) + chunker.finish()
    assert all(isinstance(c, memoryview) and c.readonly for c in chunks)
    assert b"".join(chunks) == data  # none was written over by the bytes cut after it
    assert [bytes(c) for c in chunks] == reference_chunks(data, SMALL)


def test_a_lending_chunker_hands_its_blocks_back_when_the_chunks_are_gone(monkeypatch):
    """A block comes back only when the chunker and every chunk cut from it are gone; then
    it serves the next stream (no new memory)."""
    pool = AlignedPool(idle_blocks=1000)  # keeps every block handed back, to count them
    monkeypatch.setattr(chunking, "LENDING_BLOCKS", pool)
    params = ChunkerParams(min_size=64 * KiB, avg_size=256 * KiB, max_size=1 * MiB)
    data = random.Random(8).randbytes(8 * MiB)

    def cut_all() -> None:
        chunker = StreamChunker(params, lend=True)
        chunks = chunker.feed(data)
        assert pool.idle == 0  # each block holds the chunker's bytes or a lent chunk
        assert b"".join(chunks) + chunker.tail == data
        del chunks, chunker
        gc.collect()

    cut_all()
    blocks = pool.idle
    assert blocks >= 2 * MiB * 2  # it moved on to new blocks (2 MiB each) at least once
    cut_all()
    assert pool.idle == blocks  # the second stream reused them all


def test_pop_settled_does_not_rescan_a_tail_that_barely_grew():
    """Small requests: each ends with pop_settled; a tail already scanned without finding a
    cut is scanned again only once RESCAN_AFTER more bytes arrived."""
    chunker = StreamChunker(DEFAULT_PARAMS)
    scans = 0
    real = chunker._cut_length

    def counting() -> int:
        nonlocal scans
        scans += 1
        return real()

    chunker._cut_length = counting  # type: ignore[method-assign]
    data = bytes(DEFAULT_PARAMS.max_size - 1)  # zeros: no cut before max_size
    chunker.push(data[: DEFAULT_PARAMS.min_size + 1])
    assert chunker.pop_settled() is None and scans == 1
    fed = DEFAULT_PARAMS.min_size + 1
    for _ in range(15):  # 15 requests of 64 KiB: under RESCAN_AFTER in all
        chunker.push(data[fed : fed + 64 * KiB])
        fed += 64 * KiB
        assert chunker.pop_settled() is None
    assert scans == 1
    chunker.push(data[fed : fed + StreamChunker.RESCAN_AFTER])
    assert chunker.pop_settled() is None and scans == 2


def test_pop_settled_leaves_an_uncertain_cut_in_the_tail():
    """Random bytes shorter than min_size, or with no cut found before the end, stay."""
    chunker = StreamChunker(SMALL)
    chunker.feed(random.Random(3).randbytes(SMALL.min_size))
    assert chunker.pop_settled() is None
    assert chunker.tail_length == SMALL.min_size
    flat = StreamChunker(SMALL)
    flat.feed(bytes(SMALL.max_size - 1))  # zeros: FastCDC finds no cut point, only max_size
    assert flat.pop_settled() is None


def test_pop_settled_takes_the_cuts_found_inside_the_tail():
    data = random.Random(5).randbytes(3 * SMALL.max_size)
    chunker = StreamChunker(SMALL)
    chunker.feed(data[: SMALL.max_size - 1])  # below max_size: pop() would wait
    assert chunker.pop() is None
    settled = []
    while (chunk := chunker.pop_settled()) is not None:
        settled.append(chunk)
    assert settled, "random bytes have cut points well before max_size"
    assert settled == reference_chunks(data, SMALL)[: len(settled)]


@settings(max_examples=30, deadline=None)
@given(stream=stream_data(max_random_size=256 * KiB), block=st.integers(1, 64 * KiB))
def test_chunk_stream_matches_the_reference(stream, block):
    blocks = (stream[i : i + block] for i in range(0, len(stream), block))
    assert list(chunk_stream(blocks, SMALL)) == reference_chunks(stream, SMALL)


def test_make_cdc_uses_the_params():
    cdc = make_cdc(SMALL)
    assert (cdc.min_size, cdc.avg_size, cdc.max_size) == (256, 1 * KiB, 4 * KiB)


@pytest.mark.parametrize("params", [SMALL, DEFAULT_PARAMS])
def test_empty_stream_gives_no_chunks(params):
    chunker = StreamChunker(params)
    assert chunker.feed(b"") == []
    assert chunker.feed(bytearray()) == []
    assert chunker.finish() == []
    assert chunker.tail == b""
    assert list(chunk_stream([], params)) == []


def test_default_params_are_1_4_8_mib():
    assert (DEFAULT_PARAMS.min_size, DEFAULT_PARAMS.avg_size, DEFAULT_PARAMS.max_size) == (
        1 * MiB,
        4 * MiB,
        8 * MiB,
    )


def test_default_params_mean_chunk_size_on_random_data():
    data = random.Random(1234).randbytes(20 * MiB)
    chunks = list(chunk_stream(data[i : i + MiB] for i in range(0, len(data), MiB)))
    assert b"".join(chunks) == data
    assert chunks == reference_chunks(data, DEFAULT_PARAMS)
    assert_size_bounds(chunks, DEFAULT_PARAMS)
    mean = len(data) / len(chunks)
    assert 2 * MiB <= mean <= 8 * MiB, f"mean chunk {mean / MiB:.2f} MiB over {len(chunks)}"


def _ids(data):
    return [hashlib.sha256(c).hexdigest() for c in chunk_stream([data], SMALL)]


def _common_prefix(a, b):
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_an_insertion_changes_only_nearby_chunks(seed):
    rng = random.Random(seed)
    data = rng.randbytes(512 * KiB)
    at = rng.randrange(len(data) // 4, 3 * len(data) // 4)
    edited = data[:at] + rng.randbytes(rng.randint(1, 300)) + data[at:]

    before, after = _ids(data), _ids(edited)
    assert len(before) > 100  # enough chunks for the check to mean something
    assert 1 <= len(set(before) - set(after)) <= 3
    assert 1 <= len(set(after) - set(before)) <= 3
    # Every chunk that ends before the edit is kept, in order; after a resync, so is the rest.
    ends_before = 0
    offset = 0
    for chunk in chunk_stream([data], SMALL):
        offset += len(chunk)
        if offset > at:
            break
        ends_before += 1
    head = _common_prefix(before, after)
    tail = _common_prefix(before[::-1], after[::-1])
    assert head >= ends_before
    assert head + tail >= len(before) - 3
