"""bench.cli: its options, and real commands timed on a real store."""

from __future__ import annotations

import pytest

from bench.cli import main


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--runs", "0"], "must be at least 1"),
        (["--src", "/nonexistent"], "is not an edgestore checkout"),
        (["--commands", "ls,mkfs"], "unknown commands: mkfs"),
    ],
)
def test_bad_options_are_refused(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_commands_are_timed_on_a_store(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--runs", "1", "--commands", "get,ls"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split("|")[0].strip(): line.split("|")[1].split("/") for line in lines[2:]}
    assert set(rows) == {"get", "ls"}
    for wall, cpu in rows.values():
        assert int(wall) > 0 and int(cpu) > 0
