"""The whole-file SHA-256 of native uploads, run while chunks arrive: finalize reads back only
what it did not cover, and a digest is never used for bytes other than the manifest's."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgestore.engine import Engine
from edgestore.engine.native import ManifestChunk, NativeUploads
from edgestore.errors import WholeFileMismatch
from tests.conftest import SettingsFactory
from tests.helpers import SMALL_CHUNKS, KiB, random_bytes, read_all, sha256_hex
from tests.native import chunks_of

Parts = list[tuple[str, bytes]]


def _announce(native: NativeUploads, upload_id: str, parts: Parts, offset: int = 0) -> list[str]:
    ids = [cid for cid, _ in parts]
    return native.missing(upload_id, ids, offset=offset, sizes=[len(c) for _, c in parts])


def _manifest(parts: Parts) -> list[ManifestChunk]:
    return [ManifestChunk(cid, len(c)) for cid, c in parts]


def _send_and_finalize(engine: Engine, upload_id: str, parts: Parts, data: bytes) -> str:
    """PUT every chunk, finalize with the file's digest, check the version; how it verified."""
    for cid, c in parts:
        engine.native.put_chunk(upload_id, cid, c)
    done = engine.native.finalize(upload_id, _manifest(parts), sha256_hex(data))
    assert read_all(engine, done.version) == data
    return done.verified_by


def _wait_hashed(engine: Engine, upload_id: str, nbytes: int) -> None:
    deadline = time.monotonic() + 20
    while engine.wholefile.progress(upload_id) != nbytes:
        assert time.monotonic() < deadline, engine.wholefile.progress(upload_id)
        time.sleep(0.01)


@pytest.fixture
def no_buffer_engine(make_settings: SettingsFactory) -> Iterator[Engine]:
    """No memory for chunks ahead of their turn: the digest reads them back instead."""
    with Engine.open(make_settings(**SMALL_CHUNKS, native_hash_buffer_bytes=0)) as eng:
        yield eng


def test_in_order_chunks_are_hashed_as_they_arrive(small_engine: Engine) -> None:
    native = small_engine.native
    data = random_bytes(700 * KiB, seed=11)
    parts = chunks_of(data)
    rec = native.create(size=len(data), key="streamed")
    assert _announce(native, rec.upload_id, parts) == list(dict.fromkeys(c for c, _ in parts))
    assert _send_and_finalize(small_engine, rec.upload_id, parts, data) == "streamed"
    assert small_engine.wholefile.parked_bytes == 0
    assert small_engine.wholefile.progress(rec.upload_id) is None


def test_chunks_ahead_of_their_turn_are_read_back_without_a_buffer(
    no_buffer_engine: Engine,
) -> None:
    eng = no_buffer_engine
    data = random_bytes(900 * KiB, seed=12)
    parts = chunks_of(data)
    assert len(parts) >= 6
    rec = eng.native.create(size=len(data), key="reversed")
    _announce(eng.native, rec.upload_id, parts)
    for cid, c in reversed(parts):
        eng.native.put_chunk(rec.upload_id, cid, c)
        assert eng.wholefile.parked_bytes == 0
    _wait_hashed(eng, rec.upload_id, len(data))  # read back while the upload was open
    done = eng.native.finalize(rec.upload_id, _manifest(parts), sha256_hex(data))
    assert done.verified_by == "streamed"
    assert read_all(eng, done.version) == data


def test_stored_chunks_are_read_back_once_the_session_sends_one(small_engine: Engine) -> None:
    """A pure re-upload reads nothing (finalize knows the manifest); a partly new file has
    its already stored chunks read back during the upload."""
    native = small_engine.native
    data = random_bytes(800 * KiB, seed=13)
    parts = chunks_of(data)
    small_engine.put(iter([data[: len(data) // 2]]), key="first-half")
    rec = native.create(size=len(data), key="second")
    lacking = set(_announce(native, rec.upload_id, parts))
    assert lacking and len(lacking) < len(parts)
    time.sleep(0.1)
    assert small_engine.wholefile.progress(rec.upload_id) == 0  # nothing sent: nothing read
    for cid, c in parts:
        if cid in lacking:
            native.put_chunk(rec.upload_id, cid, c)
    _wait_hashed(small_engine, rec.upload_id, len(data))
    done = native.finalize(rec.upload_id, _manifest(parts), sha256_hex(data))
    assert done.verified_by == "streamed"

    again = native.create(size=len(data), key="again")
    assert _announce(native, again.upload_id, parts) == []
    done = native.finalize(again.upload_id, _manifest(parts), sha256_hex(data))
    assert done.verified_by == "known-manifest"
    assert small_engine.wholefile.progress(again.upload_id) is None


def test_a_manifest_unlike_the_announced_order_is_read_back(small_engine: Engine) -> None:
    """The digest covers the announced order; finalize of another order must not use it."""
    native = small_engine.native
    data = random_bytes(700 * KiB, seed=14)
    parts = chunks_of(data)
    swapped = [parts[1], parts[0], *parts[2:]]
    other = b"".join(c for _, c in swapped)
    rec = native.create(size=len(data), key="swapped")
    _announce(native, rec.upload_id, parts)
    for cid, c in parts:
        native.put_chunk(rec.upload_id, cid, c)
    _wait_hashed(small_engine, rec.upload_id, len(data))
    with pytest.raises(WholeFileMismatch):  # the announced order's digest is not accepted
        native.finalize(rec.upload_id, _manifest(swapped), sha256_hex(data))
    done = native.finalize(rec.upload_id, _manifest(swapped), sha256_hex(other))
    assert done.verified_by == "read-back"
    assert read_all(small_engine, done.version) == other


def test_a_changed_announcement_drops_the_digest(small_engine: Engine) -> None:
    native = small_engine.native
    data = random_bytes(600 * KiB, seed=15)
    parts = chunks_of(data)
    rec = native.create(size=len(data), key="changed")
    _announce(native, rec.upload_id, parts[:3])
    _announce(native, rec.upload_id, parts[:3])  # a resumed client says the same: kept
    assert small_engine.wholefile.progress(rec.upload_id) is not None
    _announce(native, rec.upload_id, [parts[1]], offset=0)  # something else at offset 0
    assert small_engine.wholefile.progress(rec.upload_id) is None
    assert _send_and_finalize(small_engine, rec.upload_id, parts, data) == "read-back"


def test_wrong_announced_sizes_never_reach_a_version(small_engine: Engine) -> None:
    native = small_engine.native
    data = random_bytes(500 * KiB, seed=16)
    parts = chunks_of(data)
    rec = native.create(size=len(data), key="sizes")
    ids = [cid for cid, _ in parts]
    native.missing(
        rec.upload_id, ids, offset=0, sizes=[len(parts[0][1]) + 1] + [1] * (len(ids) - 1)
    )
    assert _send_and_finalize(small_engine, rec.upload_id, parts, data) == "read-back"


def test_a_silent_session_gives_its_buffer_to_an_active_one(
    small_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A session finalized on another node never comes back here: its waiting bodies must
    not hold the memory for an hour. Both sessions still finalize correctly."""
    from edgestore.engine import wholefile

    native, wf = small_engine.native, small_engine.wholefile
    first, second = random_bytes(600 * KiB, seed=18), random_bytes(600 * KiB, seed=19)
    parts1, parts2 = chunks_of(first), chunks_of(second)
    wf.budget_bytes = len(first)
    s1 = native.create(size=len(first), key="silent")
    _announce(native, s1.upload_id, parts1)
    for cid, c in parts1[1:]:  # its first chunk never comes: the rest wait in memory
        native.put_chunk(s1.upload_id, cid, c)
    held = wf.parked_bytes
    assert held == len(first) - len(parts1[0][1])
    wf.budget_bytes = held  # full
    s2 = native.create(size=len(second), key="active")
    _announce(native, s2.upload_id, parts2)
    native.put_chunk(s2.upload_id, *parts2[-1])  # no room, and the other is not idle yet
    assert wf.parked_bytes == held
    monkeypatch.setattr(wholefile, "PARKED_IDLE_SECONDS", 0.0)
    time.sleep(0.01)
    native.put_chunk(s2.upload_id, *parts2[-2])  # now the silent session's bodies go
    assert wf.parked_bytes == len(parts2[-2][1])
    for parts, rec, data in ((parts2, s2, second), (parts1, s1, first)):
        _send_and_finalize(small_engine, rec.upload_id, parts, data)


def test_abort_releases_buffered_chunks(small_engine: Engine) -> None:
    native = small_engine.native
    data = random_bytes(600 * KiB, seed=17)
    parts = chunks_of(data)
    rec = native.create(size=len(data), key="aborted")
    _announce(native, rec.upload_id, parts)
    for cid, c in parts[1:]:  # the first never comes: the rest wait in memory
        native.put_chunk(rec.upload_id, cid, c)
    assert small_engine.wholefile.parked_bytes == len(data) - len(parts[0][1])
    native.abort(rec.upload_id)
    assert small_engine.wholefile.parked_bytes == 0


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    size=st.integers(1, 900 * KiB),
    seed=st.integers(0, 2**32 - 1),
    budget_chunks=st.integers(0, 8),
    stored_first=st.booleans(),
    wrong_first=st.booleans(),
)
def test_any_arrival_order_gives_the_file_digest(
    small_engine: Engine,
    size: int,
    seed: int,
    budget_chunks: int,
    stored_first: bool,
    wrong_first: bool,
) -> None:
    """Whatever the order of arrival, the buffer left and the chunks stored before, finalize
    accepts exactly the file's SHA-256 and the version holds the file."""
    wf = small_engine.wholefile
    wf.budget_bytes = budget_chunks * SMALL_CHUNKS["chunk_max_size"]
    data = random_bytes(size, seed=seed % 1000) + seed.to_bytes(4, "big")
    parts = chunks_of(data)
    if stored_first:
        small_engine.put(iter([data[: len(data) // 3]]), key=f"prefix-{seed}")
    native = small_engine.native
    rec = native.create(size=len(data), key=f"any-{seed}")
    lacking = set(_announce(native, rec.upload_id, parts))
    order = [p for p in dict(parts).items() if p[0] in lacking]
    random.Random(seed).shuffle(order)
    for cid, c in order:
        native.put_chunk(rec.upload_id, cid, c)
    if wrong_first:
        with pytest.raises(WholeFileMismatch):
            native.finalize(rec.upload_id, _manifest(parts), sha256_hex(data + b"x"))
    done = native.finalize(rec.upload_id, _manifest(parts), sha256_hex(data))
    assert read_all(small_engine, done.version) == data
    assert wf.parked_bytes == 0


def test_the_orders_followed_are_bounded_in_all(
    small_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each session's announced order was bounded by its size, but not their sum: 256
    sessions of 1 TiB announcing made-up ids (cheap: nothing is sent) held ~50 GB of
    memory. Past the bound a session is not followed (finalize reads back), and what a
    finished session held is room again."""
    from edgestore.engine import wholefile

    monkeypatch.setattr(wholefile, "MAX_FOLLOWED_ENTRIES", 10)
    native, wf = small_engine.native, small_engine.wholefile
    rng = random.Random(5)

    def fake(n: int) -> Parts:
        return [(rng.randbytes(32).hex(), b"x" * KiB) for _ in range(n)]

    def session(key: str) -> str:
        return native.create(size=1024 * KiB, key=key).upload_id

    a, b, c = session("bounded/a"), session("bounded/b"), session("bounded/c")
    _announce(native, a, fake(8))
    _announce(native, b, fake(5))  # 13 in all: b is not followed
    assert (wf.progress(a), wf.progress(b)) == (0, None)
    _announce(native, a, fake(3), offset=8 * KiB)  # nor a, once it passes the bound
    assert wf.progress(a) is None
    _announce(native, c, fake(10))  # what a held was given back
    assert wf.progress(c) == 0
    native.abort(c)
    _announce(native, b, fake(4))  # a session not followed before may be now
    assert (wf.progress(b), wf.followed_entries) == (0, 4)
    native.abort(b)
    assert wf.followed_entries == 0
