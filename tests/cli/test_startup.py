"""CLI start-up cost: every command imports the CLI, so the server stack (FastAPI, Starlette,
uvicorn) and the HTTP client (httpx) must load only in the commands that use them (`serve`,
`upload`, `download`). One module-level import of either anywhere under edgestore.cli, or in
a module a local command imports, and these fail."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("fastapi", "starlette", "uvicorn", "httpx")

# Runs the CLI as `python -m edgestore` does, then prints the top-level packages it loaded.
_DRIVER = """
import atexit, json, sys
atexit.register(lambda: print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})),
                              file=sys.stderr))
sys.argv = ["edgestore", *sys.argv[1:]]
from edgestore.cli.main import main
main()
"""


def _loaded(tmp_path: Path, *args: str, stdin: bytes | None = None) -> set[str]:
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
    return set(json.loads(done.stderr.decode().strip().splitlines()[-1]))


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
def test_local_commands_load_no_server_or_http_client(tmp_path: Path, args: tuple[str]) -> None:
    if args[0] in ("stat", "get", "rm"):  # an object to act on
        _loaded(tmp_path, "put", "-", "--key", "a.txt", "--quiet", stdin=b"hello")
    stdin = b"hello" if args[0] == "put" else None
    assert _loaded(tmp_path, *args, stdin=stdin) & set(HEAVY) == set()
