"""Resume hints: a small JSON file per unfinished upload, naming its session.

Only a hint: the server is the source of truth (it says which chunks are missing, or a tus
upload's offset). The hint merely lets a rerun continue the same session instead of opening
another; it is ignored when the file changed (its size, mtime, ctime or inode differ), and
removed on success. Files live in $XDG_CACHE_HOME/edgestore/uploads (default
~/.cache/edgestore/uploads).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgestore.client.source import Identity


def default_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "edgestore" / "uploads"


@dataclass(frozen=True, slots=True)
class HintKey:
    """What an upload is: this file, to this server and destination, by this protocol."""

    server: str
    protocol: str
    path: str
    bucket: str
    key: str | None

    @property
    def name(self) -> str:
        text = "\n".join([self.server, self.protocol, self.path, self.bucket, self.key or ""])
        # surrogateescape: a path that is not UTF-8 names its hint too (its exact bytes)
        return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:32] + ".json"


class ResumeHints:
    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory or default_dir()

    def _file(self, key: HintKey) -> Path:
        return self.directory / key.name

    def load(self, key: HintKey, identity: Identity) -> dict[str, Any] | None:
        """The hint for this upload, if one exists for the file as it is now."""
        try:
            data = json.loads(self._file(key).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict):
            return None
        if data.get("file") != _identity(identity):
            # The file changed since (a rewrite that kept size and mtime still changes ctime,
            # a replacement the inode): the old session may hold bytes of other content.
            return None
        state = data.get("state")
        return state if isinstance(state, dict) else None

    def replaced(self, key: HintKey) -> dict[str, Any] | None:
        """The hint for this upload whatever the file is now: what a run that starts over
        replaces (its session, which it may release once its own upload is committed)."""
        try:
            data = json.loads(self._file(key).read_text())
        except (OSError, ValueError):
            return None
        state = data.get("state") if isinstance(data, dict) else None
        return state if isinstance(state, dict) else None

    def save(self, key: HintKey, identity: Identity, state: dict[str, Any]) -> None:
        """Write atomically (a killed client leaves the old hint or the new, never half)."""
        path = self._file(key)
        record = {
            "server": key.server,
            "protocol": key.protocol,
            "path": key.path,
            "bucket": key.bucket,
            "key": key.key,
            "size": identity.size,
            "mtime_ns": identity.mtime_ns,
            "file": _identity(identity),
            "state": state,
        }
        try:
            # Owner only: a hint names local paths and, for tus, upload URLs, which on many
            # servers let whoever holds them append to (or delete) the upload.
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(record, indent=1))
            os.replace(tmp, path)
        except OSError:
            pass  # no hint: a rerun opens a new session, and still sends only missing chunks

    def clear(self, key: HintKey) -> None:
        try:
            self._file(key).unlink()
        except OSError:
            pass


def _identity(identity: Identity) -> list[int]:
    """What tells this file as it is now from another one, or from itself rewritten: size,
    mtime, ctime (which no one can set back) and inode. Not the device number, which may
    differ after a reboot or a remount: a resume after one is the point of a hint."""
    return [identity.size, identity.mtime_ns, identity.ctime_ns, identity.inode]
