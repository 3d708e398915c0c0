"""In-place ISA-L encoding: pyeclib's exact fragments, page-aligned, whatever the block held."""

from __future__ import annotations

import random
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyeclib.ec_iface import ECDriver

from edgestore.buffers import PAGE, AlignedPool, address_of
from edgestore.codec import isal
from edgestore.codec.erasure import ReedSolomon
from edgestore.codec.isal import FRAGMENT_HEADER, FrameEncoder

KiB = 1024
PARAMS = [(6, 3), (4, 2), (10, 4), (1, 1)]
_DRIVERS: dict[tuple[int, int], ECDriver] = {}
_ENCODERS: dict[tuple[int, int], FrameEncoder] = {}


def driver(k: int, m: int) -> ECDriver:
    if (k, m) not in _DRIVERS:
        _DRIVERS[(k, m)] = ECDriver(k=k, m=m, ec_type="isa_l_rs_cauchy")
    return _DRIVERS[(k, m)]


def encoder(k: int, m: int) -> FrameEncoder:
    if (k, m) not in _ENCODERS:
        loaded = FrameEncoder.load(k, m, "isa_l_rs_cauchy")
        assert loaded is not None, "pyeclib's wheel bundles ISA-L: the encoder must load"
        _ENCODERS[(k, m)] = loaded
    return _ENCODERS[(k, m)]


def test_the_default_codec_encodes_in_place():
    rs = ReedSolomon(6, 3)
    assert rs.backend == "isa_l_rs_cauchy"
    assert rs.encode_framed(b"x" * 1000, 84) is not None


def test_backends_without_isa_l_have_no_in_place_encoder():
    assert FrameEncoder.load(6, 3, "liberasurecode_rs_vand") is None
    assert ReedSolomon(6, 3, backend="liberasurecode_rs_vand").encode_framed(b"x", 84) is None


data_st = st.one_of(
    st.binary(max_size=4 * KiB),
    st.builds(lambda n, s: random.Random(s).randbytes(n), st.integers(0, 600 * KiB), st.integers()),
)


@settings(max_examples=60, deadline=None)
@given(params=st.sampled_from(PARAMS), data=data_st, reserve=st.sampled_from([0, 1, 84, 4096]))
def test_frames_are_pyeclibs_fragments_page_aligned(params, data, reserve):
    """Whatever the earlier chunks left in the pooled blocks (examples run in one process and
    reuse them), the fragment bytes are exactly pyeclib's."""
    k, m = params
    frames = encoder(k, m).encode(data, reserve)
    assert len(frames) == k + m
    assert all(address_of(f) % PAGE == 0 for f in frames)
    assert all(len(f) == reserve + FRAGMENT_HEADER + -(-len(data) // k) for f in frames)
    assert [bytes(f[reserve:]) for f in frames] == list(driver(k, m).encode(data))


def test_a_reused_block_with_stale_bytes_gives_the_same_fragments(monkeypatch):
    monkeypatch.setattr(isal, "POOL", AlignedPool(idle_blocks=4))
    big = random.Random(1).randbytes(3 * 1024 * 1024)
    first = encoder(6, 3).encode(big, 84)
    address = address_of(first[0])
    del first  # the block goes back to the pool, full of the big chunk's bytes
    small = b"\x01" * 1001
    frames = encoder(6, 3).encode(small, 84)
    assert address_of(frames[0]) == address, "the pool hands the same block out again"
    assert [bytes(f[84:]) for f in frames] == list(driver(6, 3).encode(small))


@pytest.mark.parametrize("lost", [(0, 1, 2), (3, 4, 5), (6, 7, 8), (0, 4, 8)])
def test_any_k_frames_decode(lost):
    data = random.Random(2).randbytes(1_500_001)
    rs = ReedSolomon(6, 3)
    frames = rs.encode_framed(data, 84)
    assert frames is not None
    survivors = {i: bytes(f[84:]) for i, f in enumerate(frames) if i not in lost}
    assert rs.decode(survivors) == data


def test_a_block_is_not_reused_while_a_view_of_it_lives():
    frames = encoder(6, 3).encode(b"a" * 100_000, 0)
    kept = frames[4]
    before = bytes(kept)
    address = address_of(frames[0])
    del frames
    again = encoder(6, 3).encode(b"b" * 100_000, 0)
    assert address_of(again[0]) != address
    assert bytes(kept) == before


def test_idle_blocks_are_bounded():
    held = [encoder(6, 3).encode(b"c" * (2 * 1024 * 1024), 84) for _ in range(6)]
    del held
    assert len(isal.POOL._idle) <= isal.POOL.idle_blocks


def test_threads_encode_at_once():
    """The pool and the shared tables are safe from every thread of the CPU pool."""
    errors: list[BaseException] = []
    rs = ReedSolomon(6, 3)

    def work(seed: int) -> None:
        try:
            for i in range(20):
                data = random.Random(seed * 100 + i).randbytes(200_000 + i)
                frames = rs.encode_framed(data, 84)
                assert frames is not None
                assert rs.decode({j: bytes(frames[j][84:]) for j in range(3, 9)}) == data
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
