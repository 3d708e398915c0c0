"""bench.wan's targets: a check whose run failed is shown as not measured, never dropped.

The runs themselves need root and network namespaces; they are not run by the suite.
"""

from __future__ import annotations

import argparse

import pytest
from rich.console import Console

from bench.wan import Run, _print

LINK = 62.5e6
ARGS = argparse.Namespace(delay_ms=20, rate_mbit=500, loss=0.001)


def _ok(cc: str, client: str, rate: float) -> Run:
    return Run(cc, client, 1 << 30, seconds=(1 << 30) / rate, wire=1 << 30)


def _printed(runs: list[Run], capsys: pytest.CaptureFixture[str]) -> list[str]:
    _print(Console(width=300), runs, LINK, None, ARGS)
    out = capsys.readouterr().out
    return [line for line in out[out.index("targets") :].splitlines() if ": " in line]


def test_every_check_is_shown_when_every_run_worked(capsys: pytest.CaptureFixture[str]) -> None:
    runs = [
        _ok("bbr", "edgestore, auto", 55e6),
        _ok("cubic", "edgestore, auto", 30e6),
        _ok("cubic", "tuspy", 2e6),
        _ok("cubic", "tus-js-client, parallelUploads 6", 8e6),
    ]
    rows = _printed(runs, capsys)
    assert len(rows) == 3 and all("PASS" in r for r in rows), rows


def test_a_failed_run_fails_its_checks_instead_of_hiding_them(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A failed edgestore run used to drop its checks from the table (no FAIL anywhere)."""
    runs = [
        Run("bbr", "edgestore, auto", 1 << 30, failure="exit 6: connection reset"),
        Run("cubic", "edgestore, auto", 1 << 30, failure="exit 6: connection reset"),
        _ok("cubic", "tuspy", 2e6),
        Run("cubic", "tus-js-client, parallelUploads 6", 1 << 30, failure="timeout"),
    ]
    rows = _printed(runs, capsys)
    assert len(rows) == 3, rows
    for row in rows:
        assert "n/a" in row and "FAIL" in row, row


def test_checks_of_runs_not_asked_for_are_left_out(capsys: pytest.CaptureFixture[str]) -> None:
    """--only, or one congestion control: nothing to compare, nothing shown."""
    rows = _printed([_ok("bbr", "edgestore, auto", 55e6)], capsys)
    assert len(rows) == 1 and "bbr: edgestore auto, share of the link" in rows[0]
