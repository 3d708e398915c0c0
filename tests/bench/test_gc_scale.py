"""bench.gc_scale: a store of rows alone (`build --no-files`) that `du` measures as built."""

from __future__ import annotations

from pathlib import Path

from bench.gc_scale import build, job
from edgestore.config import load_settings
from edgestore.engine import Engine


def test_a_rows_only_store_has_no_shard_files_and_du_counts_it(tmp_path: Path) -> None:
    home, db = tmp_path / "home", f"sqlite:///{tmp_path / 'meta.db'}"
    build(home, db, n_chunks=30, orphans=5, unreferenced=4, files=False)
    files = [p for p in home.rglob("*") if p.is_file()]
    assert files and all(p.name.startswith(".") for p in files)  # the dirs' markers alone
    assert job(home, db, "du")["result"] == 26
    with Engine.open(load_settings(home=home, database_url=db)) as engine:
        u = engine.objects.usage()
    shard = -(-(4 << 20) // 6)  # each of a 4 MiB chunk's 6+3 shards
    assert (u.chunks, u.reclaimable_chunks) == (26, 4)
    assert (u.stored_bytes, u.reclaimable_bytes) == (26 * 9 * shard, 4 * 9 * shard)
