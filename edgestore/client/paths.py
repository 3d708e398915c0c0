"""Where a download is written: shared by the client and the CLI's local `get` (which must not
load httpx for it)."""

from __future__ import annotations

from pathlib import Path

from edgestore.errors import InvalidInput


def output_path(out: Path | None, name: str) -> Path:
    """Where a download goes: `out`, or inside it when it is a directory (as cp does), or
    `name` in the current directory; InvalidInput when its directory does not exist."""
    target = out or Path(name)
    if target.is_dir():
        target = target / name
    if not target.parent.is_dir():
        raise InvalidInput(f"cannot write {target}: {target.parent} is not a directory")
    return target
