"""bench.ingest keeps working: its smoke run measures every stage and the engine end to end.

Figures are not judged here (they belong to the benchmark's own report, on a quiet machine);
what is checked is that the benchmark ran every part and that what it stored is right.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import datasets
from bench.datasets import Dataset, MiB
from bench.ingest import engine_run
from bench.stages import STAGES
from edgestore.engine.objects import Objects
from edgestore.metadata.stats import StoreUsage


def test_quick_run_measures_every_stage_and_the_engine(tmp_path: Path) -> None:
    out = tmp_path / "ingest.json"
    argv = [sys.executable, "-m", "bench.ingest", "--quick", "--workdir", str(tmp_path / "w")]
    proc = subprocess.run(
        [*argv, "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert set(report["datasets"]) == {"random", "text"}
    for kind, ds in report["datasets"].items():
        assert ds["size"] == 64 * 1024 * 1024
        assert set(ds["stage_cpu"]) == set(STAGES)
        assert all(s["median"] > 0 for s in ds["stage_cpu"].values())
        ceiling = ds["ceiling"]
        assert 0 < ceiling["value"] <= min(ceiling["caps"].values())
        for phase in ("ingest", "read", "reingest"):
            assert ds[phase]["rate"]["median"] > 0
        assert [v["name"] for v in ds["verdicts"]] == [
            "full / ceiling",
            "read-back / full",
            "re-ingest / full",
        ]
        assert ds["sha256_matches"], kind
        assert ds["chunks"] > 0 and ds["dedup_ratio"] >= 1.0
    assert report["datasets"]["random"]["compression_ratio"] < 1.05  # random stays raw
    assert report["datasets"]["text"]["compression_ratio"] > 2  # text compresses


def _dataset(tmp_path: Path, size: int = 4 * MiB) -> Dataset:
    path = tmp_path / "random.bin"
    path.write_bytes(os.urandom(size))
    return Dataset("random", path, size)


def test_read_back_is_timed_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The store's usage (an SQL aggregate, for the report) is no part of the read-back."""
    real = Objects.usage

    def slow_usage(self: Objects) -> StoreUsage:
        time.sleep(1.0)
        return real(self)

    monkeypatch.setattr(Objects, "usage", slow_usage)
    ds = _dataset(tmp_path)
    run = engine_run(ds, tmp_path / "store", datasets.sha256_of(ds.path))
    assert run.read_s < 1.0
    assert run.ingest_s < 1.0 and run.reingest_s < 1.0


def test_a_run_that_stored_other_bytes_is_an_error(tmp_path: Path) -> None:
    """Both puts are read back in full (untimed) and compared with the file."""
    ds = _dataset(tmp_path)
    with pytest.raises(RuntimeError, match="first put read back as 4194304 bytes, SHA-256"):
        engine_run(ds, tmp_path / "store", "0" * 64)  # not the file's digest
    engine_run(ds, tmp_path / "store2", datasets.sha256_of(ds.path))  # the file's: fine


@pytest.mark.parametrize(
    ("size", "peak", "verdict"),
    [
        (4 * 1024 * MiB, 200 * MiB, "PASS"),
        (4 * 1024 * MiB, 300 * MiB, "FAIL"),
        (8 * 1024 * MiB, 250 * MiB, "PASS"),
        (1024 * MiB, 200 * MiB, "n/a"),  # the issue's target is for 4 GiB: no pass below it
        (1024 * MiB, 300 * MiB, "FAIL"),  # over it on less data fails all the more
    ],
)
def test_peak_rss_passes_only_at_the_issues_size(size: int, peak: int, verdict: str) -> None:
    from bench.ingest import rss_verdict

    assert rss_verdict(size, peak) == verdict


def test_a_skipped_rss_test_is_reported_not_left_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench.ingest import main

    out = tmp_path / "r.json"
    argv = ["--size", "2MiB", "--data", "random", "--repeat", "1", "--rss-size", "900000GiB"]
    assert main([*argv, "--workdir", str(tmp_path / "w"), "--json", str(out)]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert (
        "Peak RSS ingesting 900000 GiB of random data (separate process): not measured (" in printed
    )
    assert "target ≤ 256 MiB for 4 GiB: n/a" in printed
    rss = json.loads(out.read_text())["rss"]
    assert rss["passed"] is None and "free" in rss["skipped"]
