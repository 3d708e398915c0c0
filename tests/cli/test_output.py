"""What the progress bar leaves on the terminal: true after a failure too."""

from __future__ import annotations

import io
import re
import time

import pytest
from rich.console import Console

from edgestore.cli import output
from edgestore.errors import TransferInterrupted
from tests.helpers import MiB


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    screen = io.StringIO()
    monkeypatch.setattr(output, "err", Console(file=screen, force_terminal=True, width=150))
    return screen


@pytest.mark.parametrize(
    ("raised", "says"), [(TransferInterrupted("x"), "failed"), (KeyboardInterrupt(), "interrupted")]
)
def test_a_transfer_that_fails_says_so_on_its_bar(terminal, raised, says) -> None:
    """Every byte sent, then the commit failed: the bar stood at 100% as if all went well."""
    with pytest.raises(type(raised)), output.Transfer("upload f.bin", None) as bar:
        bar.start(1000)
        bar.transferred(1000)
        raise raised
    last = terminal.getvalue().rsplit("\r", 1)[-1]
    assert f"upload f.bin: {says}" in last


def test_a_transfer_that_succeeds_keeps_its_name(terminal) -> None:
    with output.Transfer("upload f.bin", None) as bar:
        bar.start(1000)
        bar.transferred(1000)
    assert "upload f.bin" in terminal.getvalue()
    assert "failed" not in terminal.getvalue()


def test_the_bar_says_when_the_upload_is_committing(terminal) -> None:
    """A native finalize (the server hashing 20 GB back) showed a bar at 100% as if done."""
    with output.Transfer("upload f.bin", None) as bar:
        bar.start(1000)
        bar.transferred(1000)
        bar.committing()
        time.sleep(0.3)  # rich redraws ten times a second
        while_committing = terminal.getvalue().rsplit("\r", 1)[-1]
    assert "upload f.bin: committing…" in while_committing
    assert "committing" not in terminal.getvalue().rsplit("\r", 1)[-1]  # done: its name again


def _rate(frame: str) -> float:
    """The transfer rate a bar frame shows, in MiB/s."""
    found = re.search(r"([\d.]+) ?([kKMG]i?B|B)/s", frame)
    assert found, frame
    scale = {"B": 1, "kB": 1e3, "KiB": 2**10, "MB": 1e6, "MiB": 2**20, "GB": 1e9, "GiB": 2**30}
    return float(found[1]) * scale[found[2]] / MiB


def test_the_rate_counts_only_bytes_sent(terminal) -> None:
    """rich's rate counted the skipped bytes of a resume as sent: 900 MiB "sent" in no time."""
    with output.Transfer("upload f.bin", None) as bar:
        bar.start(1000 * MiB)
        bar.transferred(MiB)
        bar.skipped(900 * MiB)  # another part of a tus upload, resumed
        time.sleep(0.5)
        bar.transferred(MiB)
        time.sleep(0.5)
    rate = _rate(terminal.getvalue().rsplit("\r", 1)[-1])
    assert 0 < rate < 5  # 2 MiB in a second or more
