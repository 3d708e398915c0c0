"""The file being uploaded: positional reads from any thread, and change detection.

An upload reads a file over minutes; if it changes meanwhile, the bytes sent could mix old
and new content. The file's identity (size, mtime, ctime, inode) is taken when it is opened
and compared before anything is committed: any difference fails the upload (SourceChanged).
"""

from __future__ import annotations

import mimetypes
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from edgestore.errors import InvalidInput, SourceChanged

READ_BLOCK = 4 * 1024 * 1024


def guess_content_type(name: str) -> str | None:
    """The media type a file's name suggests (None if it says nothing): uploaded without
    one, a video would be served as application/octet-stream and not play."""
    return mimetypes.guess_type(name)[0]


@dataclass(frozen=True, slots=True)
class Identity:
    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    device: int

    @classmethod
    def of(cls, st: os.stat_result) -> Identity:
        return cls(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


class SourceFile:
    """An open regular file; `pread` is safe from many threads (no shared file position)."""

    def __init__(self, path: str | Path) -> None:
        # Absolute, but symlinks kept: the name the user gave is the object's default key
        # and file name (a link `latest.iso` is not uploaded as its target's name), and a
        # pipe's /dev/stdin must not become an unopenable /proc/self/fd/pipe:[…].
        self.path = Path(os.path.abspath(path))
        try:
            # O_NONBLOCK: opening a FIFO would otherwise wait for a writer (it is refused
            # below); it changes nothing for a regular file.
            self._fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise InvalidInput(f"cannot read {self.path}: {exc.strerror}") from None
        try:
            st = os.fstat(self._fd)
            if not stat.S_ISREG(st.st_mode):
                raise InvalidInput(
                    f"{self.path} is not a regular file: an upload re-reads its bytes to "
                    "resume and to check them, which a directory, pipe or standard input "
                    "cannot give (save it to a file first)"
                )
        except BaseException:
            os.close(self._fd)
            raise
        self.identity = Identity.of(st)
        self.size = st.st_size

    @property
    def name(self) -> str:
        """The file's name as text a request can carry: bytes that are not UTF-8 (a name
        from a Latin-1 disk, kept by Python as surrogates that no JSON or header encodes)
        become U+FFFD. The object's default key and recorded file name."""
        return os.fsencode(self.path.name).decode("utf-8", "replace")

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> SourceFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def pread(self, offset: int, size: int) -> bytes:
        """Exactly `size` bytes at `offset`; SourceChanged if the file got shorter."""
        data = os.pread(self._fd, size, offset)
        while len(data) < size:
            more = os.pread(self._fd, size - len(data), offset + len(data))
            if not more:
                raise self.changed(f"it ended at {offset + len(data)} bytes, not {self.size}")
            data += more
        return data

    def blocks(self, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """The bytes [start, end) in blocks of READ_BLOCK."""
        end = self.size if end is None else end
        pos = start
        while pos < end:
            block = self.pread(pos, min(READ_BLOCK, end - pos))
            pos += len(block)
            yield block

    def check_unchanged(self) -> None:
        """SourceChanged unless the path still names the same, unmodified file."""
        try:
            now = Identity.of(os.stat(self.path))
        except FileNotFoundError:
            raise self.changed("it was removed") from None
        if now != self.identity:
            raise self.changed("its size or modification time differ")

    def changed(self, why: str) -> SourceChanged:
        return SourceChanged(
            f"{self.path} changed while it was being uploaded ({why}); nothing was committed. "
            "Run the command again to upload its current content."
        )
