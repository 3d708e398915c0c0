"""The Progress protocol (edgestore/client/results.py) as the client drives it: the optional
`committing()` step, and a Progress written without it."""

from __future__ import annotations

import pytest

from edgestore.client import Client
from tests.helpers import MiB, random_bytes, write_file


class Steps:
    """A Progress that records what it is told, in order."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def start(self, total: int) -> None:
        self.events.append("start")

    def transferred(self, n: int) -> None:
        self.events.append("transferred")

    def skipped(self, n: int) -> None:
        self.events.append("skipped")

    def committing(self) -> None:
        self.events.append("committing")


class Plain:
    """A Progress written before the committing step: it has the three methods only."""

    def __init__(self) -> None:
        self.sent = 0  # or found there

    def start(self, total: int) -> None:
        pass

    def transferred(self, n: int) -> None:
        self.sent += n

    def skipped(self, n: int) -> None:
        self.sent += n  # dedup: other tests' files may share chunks with this one


@pytest.mark.parametrize("protocol", ["native", "tus"])
def test_progress_is_told_when_the_commit_starts(server, tmp_path, hints_dir, protocol) -> None:
    """Finalize reads the whole file back on the server (minutes for 20 GB) while the bar stood
    at 100% as if done: an optional `committing()` says that step has begun."""
    seed = {"native": 60, "tus": 62}[protocol]  # one server for both: no dedup between them
    data = random_bytes(3 * MiB + 3, seed=seed)
    src = write_file(tmp_path / "c.bin", data)
    steps = Steps()
    client = Client(server.url, state_dir=hints_dir)
    r = client.upload(src, key=f"commit/{protocol}", workers=3, protocol=protocol, progress=steps)
    assert r.chunks > 1
    assert steps.events.count("committing") == 1 and steps.events[-1] == "committing"
    assert steps.events[0] == "start" and "transferred" in steps.events
    plain = Plain()
    src2 = write_file(tmp_path / "d.bin", random_bytes(MiB, seed=seed + 1))
    client.upload(src2, key=f"plain/{protocol}", workers=3, protocol=protocol, progress=plain)
    assert plain.sent == MiB
