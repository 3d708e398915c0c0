"""Opening a store: recorded parameters, layouts, the self-test."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from edgestore.codec import erasure
from edgestore.engine import Engine, ObjectSelector
from edgestore.engine import core as engine_core
from edgestore.errors import StoreParamsMismatch
from edgestore.metadata.schema import chunks, repair_queue, shards
from tests.helpers import SMALL_CHUNKS, KiB, MiB, blocks_of, random_bytes, read_all


def test_chunker_parameters_are_fixed_per_store(make_settings) -> None:
    Engine.open(make_settings()).close()
    with pytest.raises(StoreParamsMismatch, match="chunk_avg_size") as caught:
        Engine.open(make_settings(chunk_avg_size=2 * MiB))
    # What to do about it, not only what is wrong.
    assert "set them back to the store's: chunk_avg_size = 4194304" in str(caught.value)


def test_changing_ec_parameters_keeps_old_data_readable(make_settings) -> None:
    a = random_bytes(2 * MiB, seed=1)
    b = random_bytes(2 * MiB, seed=2)
    with Engine.open(make_settings(**SMALL_CHUNKS)) as e:
        va = e.put(blocks_of(a), key="a")
    dirs = [make_settings().home / "shards" / f"d{i}" for i in range(9)]
    with Engine.open(make_settings(ec_k=4, ec_m=2, data_dirs=dirs, **SMALL_CHUNKS)) as e:
        vb = e.put(blocks_of(b), key="b")
        assert read_all(e, va) == a and read_all(e, vb) == b
        with e.core.db.read() as conn:
            kinds = set(
                conn.execute(
                    sa.select(chunks.c.ec_k, chunks.c.ec_m).where(chunks.c.layout == "ec")
                ).all()
            )
        assert kinds == {(6, 3), (4, 2)}


def test_layouts_by_size(make_settings) -> None:
    """Tiny chunks live in the database, small ones as m+1 copies, the rest EC k+m."""
    with Engine.open(make_settings(**SMALL_CHUNKS)) as e:
        e.put(iter([b"tiny"]), key="tiny")
        e.put(iter([random_bytes(4 * KiB, seed=3)]), key="small")
        e.put(iter([random_bytes(200 * KiB, seed=4)]), key="large")
        with e.core.db.read() as conn:
            layouts = dict(conn.execute(sa.select(chunks.c.raw_size, chunks.c.layout)).all())
        assert layouts.pop(4) == "inline" and layouts.pop(4 * KiB) == "replica"
        assert set(layouts.values()) == {"ec"}  # the 200 KiB object's chunks
        for key, size in (("tiny", 4), ("small", 4 * KiB), ("large", 200 * KiB)):
            v = e.objects.stat(ObjectSelector(bucket="default", key=key))
            assert v.size == size and len(read_all(e, v)) == size


def test_replication_mode(make_settings) -> None:
    data = random_bytes(1 * MiB, seed=5)
    with Engine.open(make_settings(redundancy="replication", replicas=3, **SMALL_CHUNKS)) as e:
        assert len(e.core.dirs.names) == 3
        v = e.put(blocks_of(data), key="r")
        assert read_all(e, v) == data
        usage = e.objects.usage()
        assert abs(usage.redundancy_overhead - 3.0) < 0.01


def _queued_repairs(e: Engine) -> int:
    with e.core.db.read() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(repair_queue)).scalar_one()


@pytest.mark.parametrize(
    "later", [{"redundancy": "replication"}, {"ec_k": 4, "ec_m": 2}], ids=["replication", "4+2"]
)
def test_default_dirs_an_earlier_k_plus_m_created_stay_in_use(make_settings, later) -> None:
    """With the default data dirs, fewer shards per chunk (or replication) later must not
    drop the dirs that hold the old chunks' shards: 6+3 -> 3 copies left 3 of 9 shards."""
    data = random_bytes(2 * MiB, seed=6)
    with Engine.open(make_settings(**SMALL_CHUNKS)) as e:
        v = e.put(blocks_of(data), key="old")
    with Engine.open(make_settings(**later, **SMALL_CHUNKS)) as e:
        assert len(e.core.dirs.names) == 9 and not e.core.dirs.unavailable
        assert read_all(e, v) == data
        assert _queued_repairs(e) == 0  # read from intact shards, not around missing ones
        new = random_bytes(1 * MiB, seed=7)
        assert read_all(e, e.put(blocks_of(new), key="new")) == new


def test_ec_backend_is_recorded_when_a_replicated_store_turns_to_ec(
    make_settings, tmp_path, monkeypatch
) -> None:
    """A store begun in replication mode recorded no EC backend, so each start picked its
    own: a node where another backend came first decoded the EC chunks with the wrong
    matrix, and a chunk with a lost data shard could not be read."""
    dirs = [tmp_path / f"disk{i}" for i in range(9)]
    with Engine.open(make_settings(redundancy="replication", data_dirs=dirs, **SMALL_CHUNKS)):
        pass
    data = random_bytes(1 * MiB, seed=8)
    with Engine.open(make_settings(data_dirs=dirs, **SMALL_CHUNKS)) as e:
        first = e.core.policy.ec_backend
        assert e.core.params["ec_backend"] == first
        v = e.put(blocks_of(data), key="ec")
        with e.core.db.read() as conn:
            lost = conn.execute(
                sa.select(shards.c.backend, shards.c.key)
                .join(chunks, chunks.c.chunk_id == shards.c.chunk_id)
                .where(chunks.c.layout == "ec", shards.c.shard_index == 0)
            ).all()
        for row in lost:
            (e.core.dirs.backends[row.backend].root / row.key).unlink()
    other = next(b for b in erasure._RS_BACKENDS if b != first)
    monkeypatch.setattr(erasure, "_pick_backend", lambda k, m: other)
    with Engine.open(make_settings(data_dirs=dirs, **SMALL_CHUNKS)) as e:
        assert e.core.params["ec_backend"] == first
        assert read_all(e, v) == data


def test_a_store_opened_twice_at_its_creation_has_its_dirs_claimed(
    make_settings, monkeypatch
) -> None:
    """`serve` and a CLI command started together on a fresh home: the one that finds the
    store already recorded must also find its data dirs claimed. The creator is held in its
    self-test (after the store's parameters are recorded) while the other opens."""
    settings = make_settings()
    creator_held, other_opened = threading.Event(), threading.Event()
    real_self_test = engine_core.self_test

    def held_self_test(ec_backend: str | None) -> None:
        if threading.current_thread().name == "creator":
            creator_held.set()
            other_opened.wait(30)
        real_self_test(ec_backend)

    monkeypatch.setattr(engine_core, "self_test", held_self_test)
    errors: list[BaseException] = []

    def create() -> None:
        try:
            Engine.open(settings).close()
        except BaseException as exc:
            errors.append(exc)

    creator = threading.Thread(target=create, name="creator")
    creator.start()
    try:
        assert creator_held.wait(30)
        with Engine.open(settings) as other:
            unavailable = dict(other.core.dirs.unavailable)
    finally:
        other_opened.set()
        creator.join(60)
    assert unavailable == {}
    assert errors == []
