"""Reed-Solomon and replication: any `needed` shards rebuild the chunk, fewer refuse."""

from __future__ import annotations

import itertools
import random
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgestore.codec.erasure import RedundancyCodec, ReedSolomon, Replication

KiB = 1024

RS_PARAMS = [(1, 1), (2, 1), (4, 2), (6, 3), (10, 4)]
_CODECS: dict[tuple[int, int], ReedSolomon] = {}


def rs(k: int, m: int) -> ReedSolomon:
    if (k, m) not in _CODECS:
        _CODECS[(k, m)] = ReedSolomon(k, m)
    return _CODECS[(k, m)]


chunk_data = st.one_of(
    st.sampled_from([b"", b"\x00", b"\xff"]),
    st.binary(max_size=4 * KiB),
    st.builds(lambda n, s: random.Random(s).randbytes(n), st.integers(0, 256 * KiB), st.integers()),
)


@pytest.mark.parametrize(("k", "m"), RS_PARAMS)
def test_protocol_shape(k, m):
    codec: RedundancyCodec = rs(k, m)
    assert (codec.total, codec.needed) == (k + m, k)
    shards = codec.encode(b"x" * 1000)
    assert len(shards) == k + m
    assert len({len(s) for s in shards}) == 1, "all shards have the same size"


@settings(max_examples=80, deadline=None)
@given(params=st.sampled_from(RS_PARAMS), data=chunk_data, draw=st.data())
def test_any_k_shards_rebuild_the_chunk(params, data, draw):
    k, m = params
    codec = rs(k, m)
    shards = codec.encode(data)
    indices = draw.draw(
        st.lists(st.integers(0, k + m - 1), min_size=k, max_size=k + m, unique=True),
        label="surviving shards",
    )
    # The mapping's order must not matter: shards arrive in whatever order reads finish.
    assert codec.decode({i: shards[i] for i in indices}) == data


@settings(max_examples=40, deadline=None)
@given(params=st.sampled_from(RS_PARAMS), data=chunk_data, draw=st.data())
def test_fewer_than_k_shards_are_refused(params, data, draw):
    k, m = params
    codec = rs(k, m)
    shards = codec.encode(data)
    indices = draw.draw(st.lists(st.integers(0, k + m - 1), max_size=k - 1, unique=True))
    with pytest.raises(ValueError, match=str(k)):
        codec.decode({i: shards[i] for i in indices})


@pytest.mark.parametrize(
    ("k", "m"),
    [
        (4, 2),
        (6, 3),
        (10, 4),
        (8, 5),
        (10, 6),
    ],
)
def test_every_k_subset_rebuilds_the_chunk(k, m):
    """Exhaustive: an erasure code must survive the loss of *any* m shards."""
    codec = rs(k, m)
    data = random.Random(k * 100 + m).randbytes(10_000)
    shards = codec.encode(data)
    failed = []
    for subset in itertools.combinations(range(k + m), k):
        try:
            ok = codec.decode({i: shards[i] for i in subset}) == data
        except Exception as exc:  # any failure is a lost chunk
            ok = False
            subset = (*subset, repr(exc)[:60])
        if not ok:
            failed.append(subset)
    assert failed == [], f"{len(failed)} of the {k}-subsets did not decode: {failed[:3]}"


@pytest.mark.parametrize(("k", "m"), [(0, 1), (1, 0), (-1, 2)])
def test_invalid_rs_params_are_refused(k, m):
    with pytest.raises(ValueError):
        ReedSolomon(k, m)


def test_rs_codec_is_usable_from_several_threads():
    codec = ReedSolomon(6, 3)
    failures: list[int] = []

    def work(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(30):
            data = rng.randbytes(rng.randrange(64 * KiB))
            shards = codec.encode(data)
            keep = rng.sample(range(9), 6)
            if codec.decode({i: shards[i] for i in keep}) != data:
                failures.append(seed)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


@settings(max_examples=60)
@given(copies=st.integers(1, 6), data=st.binary(max_size=2 * KiB), draw=st.data())
def test_replication_rebuilds_from_any_single_copy(copies, data, draw):
    codec = Replication(copies)
    assert (codec.total, codec.needed) == (copies, 1)
    shards = codec.encode(data)
    assert shards == [data] * copies
    index = draw.draw(st.integers(0, copies - 1))
    assert codec.decode({index: shards[index]}) == data
    some = draw.draw(st.lists(st.integers(0, copies - 1), min_size=1, unique=True))
    assert codec.decode({i: shards[i] for i in some}) == data


def test_replication_needs_one_copy():
    with pytest.raises(ValueError):
        Replication(3).decode({})
    with pytest.raises(ValueError):
        Replication(0)
