"""What an upload may read: the name the user gave (not a symlink's target), and a clear
refusal, never a traceback or a hang, for what cannot be re-read (a pipe, a directory)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from edgestore.client import Client
from edgestore.client.source import SourceFile
from edgestore.errors import InvalidInput
from tests.helpers import write_file


def test_a_symlink_is_uploaded_under_its_own_name(server, http, tmp_path, hints_dir) -> None:
    """`upload latest.iso` where latest.iso -> build-1234.iso stores latest.iso (the key, the
    file name and the content type were all taken from the target's name)."""
    target = write_file(tmp_path / "build-1234.bin", b"the build")
    link = tmp_path / "latest.mp4"
    link.symlink_to(target.name)
    r = Client(server.url, state_dir=hints_dir).upload(link)
    assert r.key == "latest.mp4"
    info = http.get(f"/ids/{r.object_id}/info").json()
    assert (info["filename"], info["content_type"]) == ("latest.mp4", "video/mp4")
    assert http.get(f"/ids/{r.object_id}").content == b"the build"


def test_a_directory_is_refused_as_input(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="not a regular file"):
        SourceFile(tmp_path)


def test_a_fifo_is_refused_at_once_rather_than_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    raised: list[BaseException] = []

    def open_it() -> None:
        try:
            SourceFile(fifo)
        except BaseException as exc:
            raised.append(exc)

    t = threading.Thread(target=open_it, daemon=True)
    t.start()
    t.join(5)
    if t.is_alive():  # unblock the open, so the thread ends
        with open(fifo, "wb"):
            pass
        t.join(5)
        pytest.fail("opening a FIFO waited for a writer")
    assert len(raised) == 1 and isinstance(raised[0], InvalidInput), raised
    assert "not a regular file" in str(raised[0])


def test_a_missing_file_is_invalid_input(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=r"cannot read .*gone\.bin: No such file"):
        SourceFile(tmp_path / "gone.bin")
