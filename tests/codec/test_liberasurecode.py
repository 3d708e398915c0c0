"""The direct liberasurecode binding: pyeclib's exact bytes, both ways, from any thread."""

from __future__ import annotations

import random
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyeclib.ec_iface import ECDriver

from edgestore.codec.erasure import ReedSolomon
from edgestore.codec.liberasurecode import Binding

KiB = 1024
BACKEND = ReedSolomon(6, 3).backend


@pytest.fixture(scope="module")
def binding() -> Binding:
    loaded = Binding.load(6, 3, BACKEND)
    assert loaded is not None, "the bundled liberasurecode must bind (pyeclib's wheel ships it)"
    return loaded


@pytest.fixture(scope="module")
def driver() -> ECDriver:
    return ECDriver(k=6, m=3, ec_type=BACKEND)


def test_reed_solomon_uses_the_binding():
    assert ReedSolomon(6, 3)._binding is not None


data_st = st.one_of(
    st.binary(max_size=4 * KiB),
    st.builds(lambda n, s: random.Random(s).randbytes(n), st.integers(0, 512 * KiB), st.integers()),
)


@settings(max_examples=60, deadline=None)
@given(data=data_st)
def test_fragments_identical_to_pyeclib(binding, driver, data):
    """Same library, same arguments: stores written before the binding read back unchanged."""
    ours = binding.encode(data)
    assert [bytes(f) for f in ours] == list(driver.encode(data))


@settings(max_examples=40, deadline=None)
@given(data=data_st, lost=st.sets(st.integers(0, 8), max_size=3))
def test_decodes_pyeclib_fragments_and_pyeclib_decodes_ours(binding, driver, data, lost):
    kept = [i for i in range(9) if i not in lost]
    theirs = driver.encode(data)
    assert binding.decode([theirs[i] for i in kept]) == data
    ours = binding.encode(data)
    assert driver.decode([bytes(ours[i]) for i in kept]) == data


def test_too_few_fragments_refused(binding):
    fragments = binding.encode(random.Random(1).randbytes(100 * KiB))
    with pytest.raises(ValueError, match="too few"):
        binding.decode(fragments[:5])


def test_unequal_fragments_refused(binding):
    fragments = binding.encode(b"x" * 1000)
    with pytest.raises(ValueError, match="differ"):
        binding.decode([fragments[0], bytes(fragments[1])[:-1], *fragments[2:6]])


def test_unknown_backend_gives_no_binding():
    assert Binding.load(6, 3, "no_such_backend") is None


def test_threads_encode_and_decode_at_once(binding):
    """One liberasurecode instance per thread; calls overlap without the GIL."""
    rng = random.Random(7)
    blobs = [rng.randbytes(rng.randint(1, 3 * 1024 * KiB)) for _ in range(8)]
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        try:
            for i in range(12):
                blob = blobs[(seed + i) % len(blobs)]
                fragments = binding.encode(blob)
                assert binding.decode(fragments[3:]) == blob
        except BaseException as exc:  # surfaced below: a thread's assert is otherwise lost
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
