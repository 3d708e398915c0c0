"""The command line's help: what `edgestore --help` and each command's --help print."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def _help(*args: str) -> str:
    env = {**os.environ, "COLUMNS": "400", "TERMINAL_WIDTH": "400"}
    done = subprocess.run(
        [sys.executable, "-m", "edgestore", *args, "--help"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


@pytest.mark.parametrize(
    ("args", "sentence"),
    [
        ((), "every other command works on the store in --home (its database and data dirs)"),
        ((), "orphan shard files (never what an upload in progress holds, whatever the grace)."),
        ((), "rebuild each from its intact shards and write its bad shards again, each to"),
        (("repair",), "with fewer than k intact shards only an upload of the same bytes brings"),
    ],
)
def test_help_paragraphs_are_not_broken_where_the_docstring_wraps(
    args: tuple[str, ...], sentence: str
) -> None:
    """A docstring's line breaks are not the terminal's: typer's default rich mode printed
    them, so on a wide terminal a sentence stopped mid-line and went on below."""
    assert any(sentence in line for line in _help(*args).splitlines())
