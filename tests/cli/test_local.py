"""The local-mode CLI, run as a user runs it: a real process, real files, exit codes."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import MiB, random_bytes

EDGESTORE = [sys.executable, "-m", "edgestore"]


@pytest.fixture
def cli(tmp_path: Path, db_url: str):
    env = {
        **os.environ,
        "EDGESTORE_HOME": str(tmp_path / "home"),
        "EDGESTORE_DATABASE_URL": db_url,
    }

    def run(*args: str, input: bytes | None = None, ok: bool = True):
        proc = subprocess.run(
            [*EDGESTORE, *args], env=env, input=input, capture_output=True, timeout=120
        )
        if ok:
            assert proc.returncode == 0, proc.stderr.decode()
        return proc

    return run


def test_put_get_ls_stat_rm_du_gc(cli, tmp_path: Path) -> None:
    src = tmp_path / "movie.bin"
    data = random_bytes(6 * MiB, seed=1) + b"text " * 300_000
    src.write_bytes(data)
    put = json.loads(cli("put", str(src), "--key", "films/movie.bin", "--json").stdout)
    assert put["version"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert put["new_chunks"] == put["chunks"] >= 2

    again = json.loads(cli("put", str(src), "--key", "films/movie.bin", "--json").stdout)
    assert again["version"]["version"] == 2 and again["new_chunks"] == 0
    assert again["dedup_bytes"] == len(data)

    out = tmp_path / "back.bin"
    cli("get", "films/movie.bin", "-o", str(out), "--version", "1")
    assert out.read_bytes() == data
    by_id = cli("get", put["version"]["object_id"], "-o", "-").stdout
    assert by_id == data

    listing = json.loads(cli("ls", "films/", "--json").stdout)
    assert [(o["key"], o["version"]) for o in listing] == [("films/movie.bin", 2)]
    stat = json.loads(cli("stat", "films/movie.bin", "--json").stdout)
    assert [v["version"] for v in stat["versions"]] == [2, 1] and stat["chunks"] >= 2

    du = json.loads(cli("du", "--json").stdout)
    assert du["logical_bytes"] == 2 * len(data) and du["unique_bytes"] == len(data)
    assert du["dedup_ratio"] == pytest.approx(2.0)
    assert du["compression_ratio"] > 1.0 and 1.5 <= du["redundancy_overhead"] <= 4.0

    cli("rm", "films/movie.bin", "--all")
    du = json.loads(cli("du", "--json").stdout)  # deleted, not yet collected
    assert du["logical_bytes"] == 0 and du["unique_bytes"] == 0 and du["dedup_ratio"] == 1.0
    assert du["reclaimable_chunks"] == put["chunks"] and du["reclaimable_bytes"] > len(data)
    gc = json.loads(cli("gc", "--grace", "0", "--json").stdout)
    assert gc["chunks_deleted"] == put["chunks"]
    du = json.loads(cli("du", "--json").stdout)
    assert du["chunks"] == 0 and du["stored_bytes"] == 0 and du["reclaimable_bytes"] == 0


def test_put_guesses_the_content_type_from_the_name(cli, tmp_path: Path) -> None:
    """As `upload` does, so that a video stored locally plays when served; --content-type
    wins, and a name that says nothing leaves it unset."""
    for name in ("clip.mp4", "notes.txt", "blob.unknownext"):
        (tmp_path / name).write_bytes(b"x" * 10)
        cli("put", str(tmp_path / name))
    cli("put", str(tmp_path / "clip.mp4"), "--key", "forced", "--content-type", "text/plain")
    types = {o["key"]: o["content_type"] for o in json.loads(cli("ls", "--json").stdout)}
    assert types == {
        "clip.mp4": "video/mp4",
        "notes.txt": "text/plain",
        "blob.unknownext": None,
        "forced": "text/plain",
    }


def test_stdin_and_human_output(cli) -> None:
    res = cli("put", "-", "--key", "from-stdin", input=b"hello")
    assert "default/from-stdin" in res.stdout.decode()
    assert cli("get", "from-stdin", "-o", "-").stdout == b"hello"
    assert "from-stdin" in cli("ls").stdout.decode()


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("get", "missing"), 3, "not found"),
        (("put", "-", "--key", "../x"), 4, "'..'"),
        (("put", "-"), 4, "--key"),
        (("stat", "00000000-0000-0000-0000-000000000000"), 3, "not found"),
        (("frobnicate",), 2, "No such command"),
    ],
)
def test_errors_have_exit_codes_and_messages(cli, args, code: int, message: str) -> None:
    res = cli(*args, input=b"x", ok=False)
    assert res.returncode == code, res.stderr.decode()
    assert message in res.stderr.decode()
    assert "Traceback" not in res.stderr.decode()


def test_invalid_configuration_names_the_key(cli, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("ec_k = 0\n")
    res = cli("--config", str(bad), "du", ok=False)
    assert res.returncode == 78
    assert "ec_k" in res.stderr.decode() and "EDGESTORE_EC_K" in res.stderr.decode()


def test_put_of_a_missing_file_or_a_directory_is_a_usage_error(cli, tmp_path: Path) -> None:
    """It was a FileNotFoundError / IsADirectoryError traceback (exit 1); `upload` says it."""
    for path, says in ((tmp_path / "nope.bin", "does not exist"), (tmp_path, "is a directory")):
        res = cli("put", str(path), ok=False)
        err = " ".join(res.stderr.decode().replace("│", " ").split())  # typer's box wraps it
        assert res.returncode == 2 and says in err and "Traceback" not in err, err


def test_get_into_a_directory_or_a_missing_one(cli, tmp_path: Path) -> None:
    """`-o DIR` wrote DIR.part beside it and failed renaming it over DIR (a traceback)."""
    src = tmp_path / "movie.bin"
    src.write_bytes(b"frames" * 1000)
    cli("put", str(src), "--key", "films/movie.bin")
    into = tmp_path / "out"
    into.mkdir()
    cli("get", "films/movie.bin", "-o", str(into))
    assert (into / "movie.bin").read_bytes() == src.read_bytes()
    assert not (tmp_path / "out.part").exists()
    res = cli("get", "films/movie.bin", "-o", str(tmp_path / "nowhere" / "x"), ok=False)
    err = " ".join(res.stderr.decode().split())  # the console wraps long lines
    assert res.returncode == 4 and "not a directory" in err and "Traceback" not in err, err
