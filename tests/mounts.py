"""Real filesystems for the disk-fault tests: a small tmpfs to fill (ENOSPC), a remount
read-only under a running store (EROFS), always unmounted at teardown.

Mounting needs root (CAP_SYS_ADMIN): where it is refused the tests skip with the reason,
unless EDGESTORE_REQUIRE_MOUNT is set (CI runs as root in its container), where they fail.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.require import unavailable


def _run(args: list[str]) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=30)


def mount_or_skip(args: list[str]) -> None:
    """`mount ARGS`, or skip (fail with EDGESTORE_REQUIRE_MOUNT) where mounting is refused."""
    try:
        _run(["mount", *args])
    except (OSError, subprocess.SubprocessError) as exc:
        said = (getattr(exc, "stderr", None) or b"").decode(errors="replace").strip()
        reason = f"cannot mount here (needs root/CAP_SYS_ADMIN): {said or exc}"
        unavailable("EDGESTORE_REQUIRE_MOUNT", reason)


def unmount(path: Path) -> None:
    """Unmount, lazily if busy (a server still holding a file there): never left mounted."""
    if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` (mount's syntax: "4m") at `path` (created), unmounted on exit."""
    path.mkdir(parents=True, exist_ok=True)
    mount_or_skip(["-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)])
    try:
        yield path
    finally:
        unmount(path)


def remount(path: Path, mode: str) -> None:
    """Remount the filesystem at `path` "ro" or "rw" (what an ext4 hitting errors does)."""
    _run(["mount", "-o", f"remount,{mode}", str(path)])


def fill(path: Path, leave: int) -> Path:
    """A file in `path` taking all its filesystem's room but `leave` bytes; returns it."""
    st = os.statvfs(path)
    free = st.f_bavail * st.f_frsize
    filler = path / "filler"
    with open(filler, "wb") as f:
        f.truncate(0)
        block = b"\0" * (1 << 20)
        left = max(0, free - leave)
        while left:
            left -= f.write(block[: min(len(block), left)])
    return filler
