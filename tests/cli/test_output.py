"""What the progress bar leaves on the terminal: true after a failure too."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from edgestore.cli import output
from edgestore.errors import TransferInterrupted


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
