"""Each way a shard file can be damaged: up to m damaged shards are read around and the
chunk queued for repair with exactly those shards; m + 1 is an error naming object and
chunk, never wrong bytes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa

from edgestore.codec.shardfile import HEADER_SIZE
from edgestore.engine import Engine
from edgestore.errors import ChunkUnreadable
from edgestore.metadata.schema import repair_queue
from tests.helpers import MiB, blocks_of, random_bytes, read_all
from tests.shards import shard_paths

Damage = Callable[[Path, Path, Path], None]  # (shard, same index of another chunk, sibling)


def _flip(at: Callable[[int], int]) -> Damage:
    def damage(path: Path, _other: Path, _sibling: Path) -> None:
        blob = bytearray(path.read_bytes())
        blob[at(len(blob))] ^= 0x40
        path.write_bytes(bytes(blob))

    return damage


def _truncate(to: Callable[[int], int]) -> Damage:
    def damage(path: Path, _other: Path, _sibling: Path) -> None:
        blob = path.read_bytes()
        path.write_bytes(blob[: to(len(blob))])

    return damage


DAMAGES: dict[str, Damage] = {
    "header byte": _flip(lambda n: 20),
    "header checksum": _flip(lambda n: HEADER_SIZE - 1),
    "payload byte": _flip(lambda n: n // 2),
    "last byte": _flip(lambda n: n - 1),
    "truncated payload": _truncate(lambda n: n - 1),
    "truncated header": _truncate(lambda n: HEADER_SIZE // 2),
    "empty": _truncate(lambda n: 0),
    "missing": lambda path, _o, _s: path.unlink(),
    "another chunk's shard": lambda path, other, _s: path.write_bytes(other.read_bytes()),
    "a sibling shard": lambda path, _o, sibling: path.write_bytes(sibling.read_bytes()),
}


def _first_chunk(engine: Engine, version_id: str) -> str:
    return engine.objects.manifest(engine.objects.by_version_id(version_id))[0].chunk_id


@pytest.mark.parametrize("how", list(DAMAGES))
@pytest.mark.parametrize("extra", [0, 1], ids=["m", "m+1"])
def test_damaged_shards(engine: Engine, how: str, extra: int) -> None:
    data = random_bytes(2 * MiB, seed=41)
    v = engine.put(blocks_of(data, MiB), key="victim")
    other = engine.put(blocks_of(random_bytes(2 * MiB, seed=42), MiB), key="donor")
    cid = _first_chunk(engine, v.version_id)
    paths = shard_paths(engine, cid)
    donor = shard_paths(engine, _first_chunk(engine, other.version_id))
    assert len(paths) == engine.settings.ec_k + engine.settings.ec_m
    damaged = list(range(engine.settings.ec_m + extra))
    for i in damaged:  # data shards first: the ones a read needs
        DAMAGES[how](paths[i], donor[i], paths[-1 - i])
    if extra:
        with pytest.raises(ChunkUnreadable) as info:
            read_all(engine, v)
        assert cid in str(info.value) and "default/victim" in str(info.value)
        return
    assert read_all(engine, v) == data
    with engine.core.db.read() as conn:
        bad = conn.execute(
            sa.select(repair_queue.c.bad_shards).where(repair_queue.c.chunk_id == cid)
        ).scalar_one()
    assert sorted(bad) == damaged
