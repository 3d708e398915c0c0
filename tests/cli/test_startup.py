"""CLI start-up cost: every command imports the CLI and most open the store, so each loads and
does only what it uses. The server stack (FastAPI, Starlette, uvicorn) and the HTTP client
(httpx) load only in `serve`, `upload` and `download`; the rate limiter only where one is
configured; the PostgreSQL dialect only for a PostgreSQL store; the progress bar only on a
terminal. Opening the store starts no process (ctypes.util.find_library runs ldconfig, ~30 ms
each) and does not self-test the in-place ISA-L encoder (~0.1 s), which only writing a chunk
needs. One module-level import anywhere under edgestore.cli, or in a module a local command
imports, or such a lookup at import time, and these fail."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

HEAVY = ("fastapi", "starlette", "uvicorn", "httpx")
# What no local command here needs (a SQLite store, the default rate limit, not a terminal).
UNUSED_LOCALLY = ("limits", "sqlalchemy.dialects.postgresql", "rich.progress")

# Runs the CLI as `python -m edgestore` does, then prints the modules it loaded, the shared
# libraries it opened through ctypes and the processes it started (Python's audit events).
_DRIVER = """
import atexit, json, sys
seen = {"ctypes.dlopen": [], "subprocess.Popen": []}
sys.addaudithook(lambda event, args: seen[event].append(str(args[0])) if event in seen else None)
atexit.register(lambda: print(json.dumps({"modules": sorted(sys.modules), **seen}),
                              file=sys.stderr))
sys.argv = ["edgestore", *sys.argv[1:]]
from edgestore.cli.main import main
main()
"""


@dataclass(frozen=True)
class Started:
    modules: set[str]
    packages: set[str]  # top-level
    opened: list[str]  # shared libraries, by the name given to ctypes
    spawned: list[str]


def _start(tmp_path: Path, *args: str, stdin: bytes | None = None) -> Started:
    env = {
        **os.environ,
        "EDGESTORE_HOME": str(tmp_path / "home"),
        "EDGESTORE_DATABASE_URL": f"sqlite:///{tmp_path / 'meta.db'}",
    }
    done = subprocess.run(
        [sys.executable, "-c", _DRIVER, *args],
        env=env,
        input=stdin,
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr.decode()
    found = json.loads(done.stderr.decode().strip().splitlines()[-1])
    modules = set(found["modules"])
    return Started(
        modules=modules,
        packages={m.split(".")[0] for m in modules},
        opened=found["ctypes.dlopen"],
        spawned=found["subprocess.Popen"],
    )


def test_importing_the_cli_loads_no_server_or_http_client() -> None:
    code = f"import sys, edgestore.cli.main; print([m for m in {HEAVY!r} if m in sys.modules])"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "args",
    [
        ("--help",),
        ("upload", "--help"),
        ("put", "-", "--key", "a.txt", "--quiet"),
        ("ls",),
        ("stat", "a.txt"),
        ("get", "a.txt", "-o", "-"),
        ("du",),
        ("gc",),
        ("scrub",),
        ("keys", "list"),
        ("presign", "download", "b", "k"),
        ("rm", "a.txt"),
    ],
    ids=lambda a: " ".join(a),
)
def test_local_commands_load_and_do_only_what_they_use(tmp_path: Path, args: tuple[str]) -> None:
    # A store at the schema's head (creating one runs alembic, which loads every dialect it
    # knows), and an object to act on.
    if "--help" not in args:
        _start(tmp_path, "put", "-", "--key", "a.txt", "--quiet", stdin=b"hello")
    started = _start(tmp_path, *args, stdin=b"hello" if args[0] == "put" else None)
    assert started.packages & set(HEAVY) == set()
    assert started.modules & set(UNUSED_LOCALLY) == set()
    assert started.spawned == []
    # Nothing here encodes a chunk (5 bytes are stored inline): no in-place encoder.
    assert [lib for lib in started.opened if "isal" in Path(lib).name] == []
