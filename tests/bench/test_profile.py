"""bench.profile: its counters, its options, and one real upload measured end to end."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from bench import peers
from bench.profile import _disk_counters, deferred_line, disk_of, main
from tests.require import unavailable


def test_the_work_dirs_disk_is_found_and_counts(tmp_path: Path) -> None:
    disk = disk_of(tmp_path)
    if disk is None:
        pytest.skip("the work dir's device is not in /proc/diskstats (a container overlay?)")
    busy_before, written_before = _disk_counters(disk)
    (tmp_path / "f").write_bytes(os.urandom(4 * 1024 * 1024))
    os.sync()
    busy_after, written_after = _disk_counters(disk)
    assert busy_after >= busy_before
    assert written_after >= written_before + 4 * 1024 * 1024


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--parallel", "0"], "must be at least 1"),
        (["--repeat", "0"], "must be at least 1"),
        (["--src", "/nonexistent"], "is not an edgestore checkout"),
        (["--file", "/nonexistent"], "is not a file"),
        (["--size", "2 gigs"], "not a size: '2 gigs'"),
    ],
)
def test_bad_options_are_refused(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@pytest.fixture
def node_peers() -> None:
    """node, npm and ../shared/peers; skips without them, unless EDGESTORE_REQUIRE_INTEROP
    is set (CI), where that is a failure."""
    reason = None
    if shutil.which("node") is None or shutil.which("npm") is None:
        reason = "node and npm are needed"
    elif not peers.SHARED_PEERS.is_dir():
        reason = f"peer scripts not found at {peers.SHARED_PEERS}"
    if reason:
        unavailable("EDGESTORE_REQUIRE_INTEROP", reason)


@pytest.mark.interop
def test_an_upload_and_its_repeat_are_measured(
    node_peers: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    work = tmp_path / "w"
    assert main(["--size", "8MiB", "--again", "--workdir", str(work)]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("│ ")]
    assert [row.split("│")[1].strip() for row in rows] == ["first", "same file again"]
    for row in rows:
        cells = [c.strip() for c in row.split("│")[2:-1]]
        mb_s, server_cpu, client_cpu = (float(c.replace(",", "")) for c in cells[:3])
        assert mb_s > 0 and server_cpu > 0 and client_cpu > 0
    # A second upload of the same bytes writes almost nothing (every chunk is known).
    first, again = (float(row.split("│")[-2].strip().rstrip("x")) for row in rows)
    assert again < first


def test_work_left_for_later_is_reported_per_gb_sent() -> None:
    """A parallel upload's whole-file SHA-256 is the upkeep's (a read-back, after the
    client is done): not in the server's CPU during the upload, so it gets its own line."""
    line = deferred_line(2, peers.DeferredWork(versions=1, seconds=3.3, cpu=1.4), 2 * 10**9)
    assert line.startswith("repeat 2: the server left the whole-file SHA-256 of 1 concat")
    assert "3.3 s and 0.70 CPU-s/GB more" in line
