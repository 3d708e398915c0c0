"""Shard placement: distinct backends, an even spread of starts, stable keys."""

from __future__ import annotations

import hashlib
import random
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgestore.storage.local import MARKER, TMP_SUFFIX
from edgestore.storage.placement import doubled_up, parse_shard_key, place, shard_key
from edgestore.types import ChunkId, ShardRef

chunk_ids = st.binary(min_size=32, max_size=32).map(lambda b: ChunkId(b.hex()))
backend_lists = st.integers(1, 20).map(lambda n: [f"d{i}" for i in range(n)])


def random_chunk_id(rng: random.Random) -> ChunkId:
    return ChunkId(hashlib.sha256(rng.randbytes(16)).hexdigest())


@given(chunk=chunk_ids, backends=backend_lists, data=st.data())
def test_shards_land_on_distinct_backends(chunk, backends, data):
    shards = data.draw(st.integers(1, len(backends)))
    placed = place(chunk, shards, backends)
    assert len(placed) == shards
    assert len(set(placed)) == shards
    assert set(placed) <= set(backends)


@given(chunk=chunk_ids, backends=backend_lists, shards=st.integers(1, 40))
def test_more_shards_than_backends_spread_evenly(chunk, backends, shards):
    counts = Counter(place(chunk, shards, backends))
    assert set(counts) <= set(backends)
    assert max(counts.values()) - min(counts.values()) <= 1
    if shards >= len(backends):
        assert set(counts) == set(backends)


@given(chunk=chunk_ids, backends=backend_lists, shards=st.integers(1, 20))
def test_placement_is_deterministic(chunk, backends, shards):
    assert place(chunk, shards, backends) == place(ChunkId(str(chunk)), shards, list(backends))


@pytest.mark.parametrize("n_backends", [2, 3, 9, 12])
def test_shard_zero_is_spread_evenly(n_backends):
    """Chi-square of shard 0's backend over many random chunk ids stays near its mean."""
    rng = random.Random(20240601 + n_backends)
    backends = [f"d{i}" for i in range(n_backends)]
    samples = 9000
    counts = Counter(place(random_chunk_id(rng), 6, backends)[0] for _ in range(samples))
    assert set(counts) == set(backends)
    expected = samples / n_backends
    chi2 = sum((counts[b] - expected) ** 2 / expected for b in backends)
    # Generous bound: the 99.9th percentile for df <= 11 is about 31.3.
    assert chi2 < 32, (chi2, counts)


def test_start_rotates_with_the_chunk_id():
    backends = [f"d{i}" for i in range(9)]
    starts = {place(ChunkId(f"{i:08x}" + "0" * 56), 9, backends)[0] for i in range(9)}
    assert starts == set(backends)


def test_no_backends_is_an_error():
    with pytest.raises(ValueError):
        place(ChunkId("0" * 64), 3, [])


@given(
    chunk=chunk_ids,
    generation=st.text("0123456789abcdef", min_size=1, max_size=16),
    index=st.integers(0, 255),
)
def test_shard_key_round_trip(chunk, generation, index):
    key = shard_key(chunk, generation, index)
    assert key.startswith(chunk[:3] + "/")
    assert ".." not in key.split("/") and not key.startswith("/")
    assert parse_shard_key(key) == (chunk, generation, index)


def test_shard_keys_differ_by_generation_and_index():
    chunk = ChunkId("ab" * 32)
    keys = {shard_key(chunk, g, i) for g in ("aa11", "bb22") for i in range(9)}
    assert len(keys) == 18


CHUNK = "0123456789abcdef" * 4


@pytest.mark.parametrize(
    "name",
    [
        MARKER,
        f"012/{CHUNK}.a1b2c3.4.deadbeef{TMP_SUFFIX}",  # write_durably's temporary
        f"{CHUNK}.a1b2c3.4{TMP_SUFFIX}",
        f"012/{CHUNK}.a1b2c3",
        f"012/{CHUNK}.a1b2c3.x",
        f"012/{CHUNK}.a1b2c3.-1",
        f"012/{CHUNK[:-1]}.a1b2c3.4",
        "README",
        "",
    ],
)
def test_parse_shard_key_rejects_other_names(name):
    assert parse_shard_key(name) is None


@pytest.mark.parametrize(
    "name",
    [f"012/{CHUNK}.a1b2c3.²", f"zzz/{'z' * 64}.a1b2c3.4"],
    ids=["superscript-digit", "non-hex-chunk-id"],
)
def test_parse_shard_key_rejects_malformed_names(name):
    assert parse_shard_key(name) is None


@given(chunk_ids, backend_lists)
def test_what_place_does_is_never_doubled_up(chunk: ChunkId, backends: list[str]) -> None:
    """However few backends there are (3 for 9 shards: 3 on each), placement's own layout
    is what `doubled_up` compares against, never a finding."""
    refs = [ShardRef(chunk, i, b, f"k{i}", 1, "c") for i, b in enumerate(place(chunk, 9, backends))]
    assert doubled_up(refs, backends) is None


def test_more_on_one_backend_than_place_puts_there_is_doubled_up() -> None:
    chunk = ChunkId("0" * 64)
    nine = [f"d{i}" for i in range(9)]

    def refs(on: list[str]) -> list[ShardRef]:
        return [ShardRef(chunk, i, b, f"k{i}", 1, "c") for i, b in enumerate(on)]

    moved = place(chunk, 9, nine)
    moved[4] = moved[3]
    assert doubled_up(refs(moved), nine) == f"shard 4 shares data dir {moved[3]} with shard 3"
    three = ["d0", "d1", "d2"]
    on = place(chunk, 9, three)
    on[on.index("d0")] = "d1"  # 2, 4, 3: losing d1 costs 4 shards, more than m = 3
    assert doubled_up(refs(on), three) is not None
