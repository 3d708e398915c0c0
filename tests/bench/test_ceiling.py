"""The ingest ceiling: cores over the summed stage costs, capped by serial stages and the disk."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.stages import CHUNK, CUTTING, DISK, FILE_HASH, READ, STAGES, ceiling, run_stages
from edgestore.config import load_settings


def _rates(value: float) -> dict[str, float]:
    return dict.fromkeys(STAGES, value)


def test_two_cores_over_the_summed_costs() -> None:
    c = ceiling(_rates(700.0))
    assert c.one_core == pytest.approx(100.0)
    assert c.value == pytest.approx(200.0) == pytest.approx(c.cpu)


def test_a_serial_stage_caps_it() -> None:
    rates = _rates(6000.0) | {FILE_HASH: 900.0}
    c = ceiling(rates)
    assert c.two_cores > 900.0
    assert c.value == 900.0 == c.cpu
    assert set(c.caps) == {CUTTING, FILE_HASH}


def test_a_slow_disk_caps_it_and_the_cores_alone_are_kept() -> None:
    c = ceiling(_rates(700.0), disk=150.0)
    assert c.value == 150.0
    assert c.caps[DISK] == 150.0
    assert c.cpu == pytest.approx(200.0)
    assert "wall rate[shard write]" in c.formula


def test_a_fast_disk_changes_nothing() -> None:
    assert ceiling(_rates(700.0), disk=10_000.0).value == pytest.approx(200.0)


def test_the_cutting_threads_read_is_in_the_sum_and_shares_the_chunkers_cap() -> None:
    """The thread that cuts the stream also reads the file into the chunker's buffer (the
    engine's `_pull`): that copy costs CPU and runs on the same, serial, thread."""
    rates = _rates(6000.0) | {READ: 2000.0, CHUNK: 2000.0}
    c = ceiling(rates)
    assert c.value == pytest.approx(1000.0)  # one thread does both: 1 / (1/2000 + 1/2000)
    assert c.one_core == pytest.approx(1 / (2 / 2000 + 5 / 6000))


def test_the_stage_run_times_the_read_into_the_chunker(tmp_path: Path) -> None:
    data = tmp_path / "random.bin"
    data.write_bytes(os.urandom(24 * 1024 * 1024))
    run = run_stages(data, load_settings(home=tmp_path / "s"), tmp_path / "shards")
    assert run.raw_bytes == 24 * 1024 * 1024
    assert run.timings[READ].cpu > 0
