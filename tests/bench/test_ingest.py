"""bench.ingest keeps working: its smoke run measures every stage and the engine end to end.

Figures are not judged here (they belong to the benchmark's own report, on a quiet machine);
what is checked is that the benchmark ran every part and that what it stored is right.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.stages import STAGES


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
