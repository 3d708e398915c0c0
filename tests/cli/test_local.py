"""The local-mode CLI, run as a user runs it: a real process, real files, exit codes."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from edgestore.engine import ObjectSelector
from tests.helpers import MiB, random_bytes

EDGESTORE = [sys.executable, "-m", "edgestore"]


# What a command does with its arguments, files and output is the same on either database:
# such tests run on SQLite only (each starts several CLI processes, ~1 s apiece). Those where
# the database answers differently (paging, ids, out-of-range numbers) and the journey run on
# both.
ON_SQLITE = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


@pytest.fixture
def cli(tmp_path: Path, db_url: str):
    env = {
        **os.environ,
        "EDGESTORE_HOME": str(tmp_path / "home"),
        "EDGESTORE_DATABASE_URL": db_url,
    }

    def run(
        *args: str,
        input: bytes | None = None,
        ok: bool = True,
        python: bool = False,
        **more_env: str,
    ):
        command = [sys.executable, *args] if python else [*EDGESTORE, *args]
        proc = subprocess.run(
            command, env={**env, **more_env}, input=input, capture_output=True, timeout=120
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


@ON_SQLITE
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


@ON_SQLITE
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
        (("ls", "--limit", "-1"), 2, "--limit"),  # PostgreSQL: a LIMIT -1 traceback
        (("gc", "--grace", "-1"), 2, "--grace"),
        (("gc", "--grace", "7y"), 2, "unknown unit 'y'"),
        (("gc", "--grace", "1.5s"), 2, "not a whole number of seconds"),  # as gc_grace_seconds
        (("gc", "--grace", "1500ms"), 2, "--grace"),
    ],
)
def test_errors_have_exit_codes_and_messages(cli, args, code: int, message: str) -> None:
    res = cli(*args, input=b"x", ok=False)
    assert res.returncode == code, res.stderr.decode()
    assert message in res.stderr.decode()
    assert "Traceback" not in res.stderr.decode()


@ON_SQLITE
def test_gc_grace_takes_a_duration_with_units(cli, tmp_path: Path) -> None:
    """As gc_grace_seconds does: `--grace 1h` spares chunks unreferenced a moment ago."""
    (tmp_path / "a.bin").write_bytes(random_bytes(2 * MiB, seed=7))
    cli("put", str(tmp_path / "a.bin"), "--key", "a.bin", "--quiet")
    cli("rm", "a.bin", "--all")
    spared = json.loads(cli("gc", "--grace", "1h", "--json").stdout)
    assert spared["chunks_deleted"] == 0
    taken = json.loads(cli("gc", "--grace", "0s", "--json").stdout)
    assert taken["chunks_deleted"] > 0


@ON_SQLITE
def test_a_config_file_with_units_configures_the_store(cli, tmp_path: Path) -> None:
    """And an invalid one stops the command with exit 78, naming the key and the file."""
    good = tmp_path / "good.toml"
    good.write_text('chunk_min_size = "256 KiB"\nchunk_avg_size = "1MiB"\nchunk_max_size = "2M"\n')
    cli("--config", str(good), "init")
    data = random_bytes(6 * MiB, seed=8)
    (tmp_path / "b.bin").write_bytes(data)
    put = json.loads(cli("--config", str(good), "put", str(tmp_path / "b.bin"), "--json").stdout)
    assert put["chunks"] >= 3  # no chunk above 2 MiB
    bad = tmp_path / "bad.toml"
    bad.write_text('upload_expiry_seconds = "7y"\n')
    res = cli("--config", str(bad), "du", ok=False)
    assert res.returncode == 78
    assert f"upload_expiry_seconds (in {bad}): unknown unit 'y'" in res.stderr.decode()


@ON_SQLITE
def test_invalid_configuration_names_the_key(cli, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("ec_k = 0\n")
    res = cli("--config", str(bad), "du", ok=False)
    assert res.returncode == 78
    # Named where the bad value is: the file (not a variable nobody set).
    assert f"ec_k (in {bad})" in res.stderr.decode(), res.stderr.decode()
    assert "EDGESTORE_EC_K" not in res.stderr.decode()
    from_env = cli("du", ok=False, EDGESTORE_EC_K="0")
    assert from_env.returncode == 78 and "ec_k (EDGESTORE_EC_K)" in from_env.stderr.decode()


@ON_SQLITE
def test_put_of_a_missing_file_or_a_directory_is_a_usage_error(cli, tmp_path: Path) -> None:
    """It was a FileNotFoundError / IsADirectoryError traceback (exit 1); `upload` says it."""
    for path, says in ((tmp_path / "nope.bin", "does not exist"), (tmp_path, "is a directory")):
        res = cli("put", str(path), ok=False)
        err = " ".join(res.stderr.decode().replace("│", " ").split())  # typer's box wraps it
        assert res.returncode == 2 and says in err and "Traceback" not in err, err


@ON_SQLITE
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


def test_raising_k_plus_m_says_to_run_init(cli, tmp_path: Path) -> None:
    """The default dirs d9, d10 a higher k+m needs were refused as 'missing', with no word
    of the `edgestore init` that claims them."""
    src = tmp_path / "a.bin"
    src.write_bytes(random_bytes(300_000, seed=2))
    cli("put", str(src))
    src.write_bytes(random_bytes(300_000, seed=3))  # new chunks: they need the new dirs
    res = cli("put", str(src), "--key", "b.bin", ok=False, EDGESTORE_EC_K="8")
    err = " ".join(res.stderr.decode().split())
    assert res.returncode == 6 and "d9" in err and "edgestore init" in err, err
    cli("init", EDGESTORE_EC_K="8")
    cli("put", str(src), "--key", "b.bin", EDGESTORE_EC_K="8")


@ON_SQLITE
def test_output_in_a_pipe_is_neither_cut_nor_wrapped(cli, tmp_path: Path) -> None:
    """Piped, the console was 80 columns wide: `ls` cut object ids to 'c0ffee12-34…' and
    messages broke mid-sentence, so scripts got ids that resolve to nothing."""
    src = tmp_path / "a.bin"
    src.write_bytes(b"x" * 1000)
    key = "some/rather/long/directory/names/that/take/room/in/a/table/" + "k" * 40
    put = json.loads(cli("put", str(src), "--key", key, "--json").stdout)
    listing = cli("ls").stdout.decode()
    assert put["version"]["object_id"] in listing and key in listing, listing
    missing = "a-key-long-enough-to-push-the-message-past-eighty-columns-" * 2
    res = cli("get", missing, ok=False)
    assert f"error: object default/{missing} not found\n" == res.stderr.decode()


@ON_SQLITE
def test_get_to_a_fifo_writes_into_it(cli, tmp_path: Path) -> None:
    """`-o /dev/null` (or a named pipe) was written as /dev/null.part, then renamed over
    the device: as root that replaced /dev/null with a file; as a user, a traceback."""
    src = tmp_path / "a.bin"
    data = random_bytes(200_000, seed=3)
    src.write_bytes(data)
    cli("put", str(src))
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received = tmp_path / "received"
    with open(received, "wb") as sink:
        reader = subprocess.Popen(["cat", str(fifo)], stdout=sink)
        try:
            cli("get", "a.bin", "-o", str(fifo))
            reader.wait(timeout=30)
        finally:
            reader.kill()
    assert stat.S_ISFIFO(fifo.stat().st_mode) and not (tmp_path / "pipe.part").exists()
    assert received.read_bytes() == data


@ON_SQLITE
def test_get_that_cannot_write_leaves_no_part_file(cli, tmp_path: Path) -> None:
    """An output that fails midway was a traceback, leaving OUT.part behind (no `get`
    resumes it: it only took space)."""
    src = tmp_path / "a.bin"
    src.write_bytes(random_bytes(200_000, seed=4))
    cli("put", str(src))
    out = tmp_path / "out.bin"
    (tmp_path / "out.bin.part").mkdir()  # where get writes first: it cannot be opened
    res = cli("get", "a.bin", "-o", str(out), ok=False)
    err = res.stderr.decode()
    assert res.returncode == 4 and "Traceback" not in err and str(out) in err, err
    assert not out.exists()


@ON_SQLITE
def test_get_to_a_full_standard_output_says_so(cli, tmp_path: Path, db_url: str) -> None:
    """`get KEY -o - > file` on a full disk was an OSError traceback."""
    src = tmp_path / "a.bin"
    src.write_bytes(random_bytes(200_000, seed=5))
    cli("put", str(src))
    env = {**os.environ, "EDGESTORE_HOME": str(tmp_path / "home"), "EDGESTORE_DATABASE_URL": db_url}
    with open("/dev/full", "wb") as full:
        res = subprocess.run(
            [*EDGESTORE, "get", "a.bin", "-o", "-"], env=env, stdout=full, stderr=subprocess.PIPE
        )
    err = res.stderr.decode()
    assert res.returncode == 4 and "cannot write standard output" in err, err


@ON_SQLITE
@pytest.mark.disk  # /dev/shm must be another filesystem than its tmp_path
def test_init_refuses_an_empty_mount_point_and_says_so(cli, tmp_path: Path) -> None:
    """init claimed a dir on the root filesystem beside dirs that each have their own disk
    (a disk that did not mount), and exited 0 whatever dirs it left unusable."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("/dev/shm is not a separate file system here")
    if tmp_path.stat().st_dev != Path("/").stat().st_dev:
        pytest.skip("the temporary dir is not on the root filesystem here")
    with tempfile.TemporaryDirectory(dir=shm) as other:
        disk = str(Path(other) / "es")
        cli("init", EDGESTORE_DATA_DIRS=disk, EDGESTORE_REDUNDANCY="replication")
        (tmp_path / "mnt" / "disk2").mkdir(parents=True)
        both = f"{disk},{tmp_path / 'mnt' / 'disk2' / 'es'}"
        env = {"EDGESTORE_DATA_DIRS": both, "EDGESTORE_REDUNDANCY": "replication"}
        res = cli("init", ok=False, **env)
        out = " ".join((res.stdout + res.stderr).decode().split())
        assert res.returncode == 6 and "root filesystem" in out and "--shared-disk" in out, out
        assert not (tmp_path / "mnt" / "disk2" / "es").exists()
        assert "ready" in cli("init", "--shared-disk", **env).stdout.decode()


def test_ls_pages_with_after_and_says_when_more_remain(cli) -> None:
    """`ls` stopped at --limit (1000 by default) without a word, and could not go on: a
    store of 1,500 objects looked like one of 1,000."""
    for key in ("a", "b", "c"):
        cli("put", "-", "--key", key, input=key.encode())
    first = cli("ls", "--limit", "2", "--json")
    assert [o["key"] for o in json.loads(first.stdout)] == ["a", "b"]
    assert "--after default/b" in first.stderr.decode()
    rest = cli("ls", "--limit", "2", "--after", "default/b", "--json")
    assert [o["key"] for o in json.loads(rest.stdout)] == ["c"]
    assert "--after" not in rest.stderr.decode()  # the last page
    exact = cli("ls", "--limit", "3", "--bucket", "default", "--json")
    assert len(json.loads(exact.stdout)) == 3 and "--after" not in exact.stderr.decode()
    mid = cli("ls", "--limit", "1", "--bucket", "default", "--after", "a", "--json")
    assert [o["key"] for o in json.loads(mid.stdout)] == ["b"]
    assert "--after b" in mid.stderr.decode()


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (("stat", "k", "--version", "99999999999"), 3),
        (("rm", "k", "--version", "4294967296"), 3),
        (("get", "k", "-o", "-", "--version", "0"), 3),
        (("ls", "--limit", "-1"), 2),
    ],
)
def test_out_of_range_numbers_are_errors_not_tracebacks(cli, args, code: int) -> None:
    """On PostgreSQL these reached the database, which refused them: a DataError traceback."""
    cli("put", "-", "--key", "k", input=b"x")
    res = cli(*args, ok=False)
    assert res.returncode == code, res.stderr.decode()
    assert "Traceback" not in res.stderr.decode()


@ON_SQLITE
def test_keys_with_brackets_are_printed_as_they_are(cli) -> None:
    """Rich read '[/]' and '[red]' in a key as markup: `put` stored the object and then
    crashed printing it, `ls` crashed for the whole store, `rm` after deleting; '[red]' was
    printed as nothing."""
    keys = ["x[/]y", "p[red]q"]
    for key in keys:
        assert key in cli("put", "-", "--key", key, input=b"x").stdout.decode()
    listing = cli("ls", "--bucket", "default").stdout.decode()
    assert all(key in listing for key in keys), listing
    assert "x[/]y" in cli("stat", "x[/]y").stdout.decode()
    assert "x[/]y" in cli("rm", "x[/]y").stderr.decode()
    missing = cli("get", "x[/]y", ok=False)
    assert missing.returncode == 3 and "x[/]y" in missing.stderr.decode()


@ON_SQLITE
def test_stat_of_a_huge_manifest_counts_its_chunks_without_loading_them(
    cli, tmp_path: Path, db_url: str
) -> None:
    """`stat` loaded the whole manifest to count its entries: for a 10 TB object (2.5 million
    chunks) that was gigabytes of memory for one number. (SQLite only: the CLI's code is the
    same on both, and writing 300,000 manifest rows took PostgreSQL 20 s of the suite.)"""
    from edgestore.config import load_settings
    from edgestore.engine import Engine
    from edgestore.metadata import objects as object_rows

    entries = 300_000
    cli("put", "-", "--key", "small", input=b"x")
    with Engine.open(load_settings(home=tmp_path / "home", database_url=db_url)) as engine:
        small = engine.objects.stat(ObjectSelector(bucket="default", key="small"))
        (chunk,) = engine.objects.manifest(small)
        db = engine.core.db
        with db.write() as conn:
            object_rows.create_version(
                db,
                conn,
                bucket="default",
                key="huge",
                entries=[(chunk.chunk_id, i, 1) for i in range(entries)],
                sha256=None,
                content_type=None,
                filename=None,
                user_metadata={},
                take_refs=True,
            )

    def peak_kib(key: str) -> tuple[int, dict]:
        """The CLI's peak resident memory, measured in a process of its own."""
        probe = (
            "import resource, subprocess, sys; "
            "p = subprocess.run(sys.argv[1:], capture_output=True); "
            "sys.stderr.buffer.write(p.stderr); sys.stdout.buffer.write(p.stdout); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)"
        )
        res = cli("-c", probe, *EDGESTORE, "stat", key, "--json", python=True)
        return int(res.stderr.decode().split()[-1]), json.loads(res.stdout)

    base, _ = peak_kib("small")
    peak, shown = peak_kib("huge")
    assert shown["chunks"] == entries
    assert peak - base < 15_000, (base, peak)  # KiB; loading it took 35 to 100 MB more


def test_a_key_that_looks_like_an_object_id_is_found_by_key(cli) -> None:
    """A tus upload without a key or filename is stored under its upload id, a UUID: `get`,
    `stat` and `rm` took every UUID for an object id and said "not found"."""
    key = "0b6f4c5e-3f1a-4d2b-9c8e-7a6b5c4d3e2f"
    cli("put", "-", "--key", key, input=b"by key")
    assert cli("get", key, "-o", "-").stdout == b"by key"
    assert json.loads(cli("stat", key, "--json").stdout)["version"]["key"] == key
    cli("rm", key)
    assert cli("get", key, "-o", "-", ok=False).returncode == 3
