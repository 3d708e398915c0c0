"""Opening a store: recorded parameters, layouts, the self-test."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from edgestore.engine import Engine, ObjectSelector
from edgestore.errors import StoreParamsMismatch
from edgestore.metadata.schema import chunks
from tests.helpers import SMALL_CHUNKS, KiB, MiB, blocks_of, random_bytes, read_all


def test_chunker_parameters_are_fixed_per_store(make_settings) -> None:
    Engine.open(make_settings()).close()
    with pytest.raises(StoreParamsMismatch, match="chunk_avg_size"):
        Engine.open(make_settings(chunk_avg_size=2 * MiB))


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
