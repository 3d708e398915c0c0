"""Resume hints on disk: readable by their owner only (they name local paths and, for tus,
upload URLs that let whoever holds them append to the upload on many servers)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from edgestore.client.resume import HintKey, ResumeHints
from edgestore.client.source import SourceFile
from tests.helpers import write_file


def test_hints_are_private_to_their_owner(tmp_path: Path) -> None:
    src = write_file(tmp_path / "f.bin", b"data")
    hints = ResumeHints(tmp_path / "cache" / "edgestore" / "uploads")
    key = HintKey("http://h:1/files/", "tus", str(src), "default", None)
    old = os.umask(0o022)  # the usual umask, under which files are world-readable
    try:
        with SourceFile(src) as source:
            hints.save(key, source.identity, {"parts": [{"url": "http://h:1/files/abc"}]})
            assert hints.load(key, source.identity) == {"parts": [{"url": "http://h:1/files/abc"}]}
    finally:
        os.umask(old)
    (hint,) = hints.directory.glob("*.json")
    assert stat.S_IMODE(hint.stat().st_mode) == 0o600
    assert stat.S_IMODE(hints.directory.stat().st_mode) == 0o700
