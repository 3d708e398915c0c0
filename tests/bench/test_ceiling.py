"""The ingest ceiling: cores over the summed stage costs, capped by serial stages and the disk."""

from __future__ import annotations

import pytest

from bench.stages import CHUNK, DISK, FILE_HASH, STAGES, ceiling


def _rates(value: float) -> dict[str, float]:
    return dict.fromkeys(STAGES, value)


def test_two_cores_over_the_summed_costs() -> None:
    c = ceiling(_rates(600.0))
    assert c.one_core == pytest.approx(100.0)
    assert c.value == pytest.approx(200.0) == pytest.approx(c.cpu)


def test_a_serial_stage_caps_it() -> None:
    rates = _rates(6000.0) | {CHUNK: 900.0}
    c = ceiling(rates)
    assert c.two_cores > 900.0
    assert c.value == 900.0 == c.cpu
    assert set(c.caps) == {CHUNK, FILE_HASH}


def test_a_slow_disk_caps_it_and_the_cores_alone_are_kept() -> None:
    c = ceiling(_rates(600.0), disk=150.0)
    assert c.value == 150.0
    assert c.caps[DISK] == 150.0
    assert c.cpu == pytest.approx(200.0)
    assert "wall rate[shard write]" in c.formula


def test_a_fast_disk_changes_nothing() -> None:
    assert ceiling(_rates(600.0), disk=10_000.0).value == pytest.approx(200.0)
