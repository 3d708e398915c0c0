"""CLI start-up: the wall and CPU time of short `edgestore` commands on a small local store.

Every command is a fresh Python process that imports the CLI and, but for `--help`, opens the
store, so their cost is mostly start-up, paid on every command a user types and every one of
the hundreds the test suite runs. Each command runs `--runs` times (after one warm-up), in
turns with `--src`'s when given (a worktree of the commit before a change): compare medians,
this kind of machine drifts by ~10% between identical runs.

    python -m bench.cli                      # this checkout
    python -m bench.cli --src /tmp/old       # ... and another one, run in turns
    python -m bench.cli --compile            # no cached bytecode (PYTHONDONTWRITEBYTECODE)

By default each checkout's bytecode is cached (in the scratch dir), as in an installed
package; `--compile` has every process compile edgestore's sources again, as it does where
PYTHONDONTWRITEBYTECODE is set.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
SMALL = 10_000  # bytes of the file `put` stores (inline: no erasure coding)
COMMANDS = {
    "--help": ["--help"],
    "upload --help": ["upload", "--help"],
    "ls": ["ls"],
    "put": ["put", "{small}", "--key", "put.bin", "--quiet"],
    "get": ["get", "kept.bin", "-o", "{out}"],
    "stat": ["stat", "kept.bin"],
    "du": ["du"],
    "keys list": ["keys", "list"],
}


class Checkout:
    """One source tree, its own store, and how to run its `edgestore`."""

    def __init__(self, src: Path, scratch: Path, compile_each_time: bool) -> None:
        self.src = src
        self.scratch = scratch
        self.env = {**os.environ, "PYTHONPATH": str(src), "EDGESTORE_HOME": str(scratch / "home")}
        self.env.pop("EDGESTORE_DATABASE_URL", None)
        self.env.pop("EDGESTORE_CONFIG", None)
        if compile_each_time:
            self.env["PYTHONDONTWRITEBYTECODE"] = "1"
        else:
            self.env.pop("PYTHONDONTWRITEBYTECODE", None)
            self.env["PYTHONPYCACHEPREFIX"] = str(scratch / "pycache")

    def run(self, args: list[str]) -> tuple[float, float]:
        """(wall, CPU) seconds of `edgestore *args`; its working dir is the scratch dir, so
        `python -m` imports the checkout named, not the one in the current directory."""
        small, out = self.scratch / "small.bin", self.scratch / "out.bin"
        argv = [a.format(small=small, out=out) for a in args]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "edgestore", *argv],
            env=self.env,
            cwd=self.scratch,
            capture_output=True,
            timeout=300,
        )
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode != 0:
            raise RuntimeError(f"{self.src}: edgestore {' '.join(argv)}: {done.stderr.decode()}")
        return wall, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime

    def prepare(self) -> None:
        (self.scratch / "small.bin").write_bytes(os.urandom(SMALL))
        self.run(["init"])
        self.run(["put", "{small}", "--key", "kept.bin", "--quiet"])


def measure(checkouts: list[Checkout], names: list[str], runs: int) -> dict[str, list[str]]:
    """Per command, each checkout's "wall ms / CPU ms" medians, the checkouts in turns."""
    for checkout in checkouts:
        checkout.prepare()
    table: dict[str, list[str]] = {}
    for name in names:
        for checkout in checkouts:
            checkout.run(COMMANDS[name])  # warm-up: bytecode written, files in the page cache
        times: list[list[tuple[float, float]]] = [[] for _ in checkouts]
        for _ in range(runs):
            for checkout, mine in zip(checkouts, times, strict=True):
                mine.append(checkout.run(COMMANDS[name]))
        table[name] = [
            f"{statistics.median(w for w, _ in t) * 1000:.0f} / "
            f"{statistics.median(c for _, c in t) * 1000:.0f}"
            for t in times
        ]
    return table


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.cli", description=__doc__.split("\n\n")[0])
    p.add_argument("--src", type=Path, default=None, help="also run this checkout, in turns")
    p.add_argument("--runs", type=int, default=10, help="runs of each command (default 10)")
    p.add_argument("--compile", action="store_true", help="no cached bytecode")
    p.add_argument(
        "--commands", default=",".join(COMMANDS), help="comma-separated, of: " + ", ".join(COMMANDS)
    )
    args = p.parse_args(argv)
    names = [n.strip() for n in args.commands.split(",") if n.strip()]
    if unknown := [n for n in names if n not in COMMANDS]:
        p.error(f"unknown commands: {', '.join(unknown)}")
    if args.runs < 1:
        p.error("--runs must be at least 1")
    if args.src is not None and not (args.src / "edgestore" / "__init__.py").is_file():
        p.error(f"--src {args.src} is not an edgestore checkout")
    sources = [HERE] + ([args.src.resolve()] if args.src is not None else [])
    scratch = Path(tempfile.mkdtemp(prefix="edgestore-bench-cli-"))
    try:
        checkouts = []
        for i, src in enumerate(sources):
            (scratch / str(i)).mkdir()
            checkouts.append(Checkout(src, scratch / str(i), args.compile))
        table = measure(checkouts, names, args.runs)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    bytecode = "compiled by each process" if args.compile else "cached"
    print(f"median wall / CPU ms of {args.runs} runs; bytecode {bytecode}")
    print(f"{'command':15}" + "".join(f" | {str(s)[-28:]:>28}" for s in sources))
    for name, cells in table.items():
        print(f"{name:15}" + "".join(f" | {cell:>28}" for cell in cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
