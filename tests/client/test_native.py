"""Client.upload over the native protocol against a real server: round trips, dedup, resume
after an interruption, a file changing mid-upload, and the pieces (auto workers, hints)."""

from __future__ import annotations

import os
import threading
import uuid

import pytest

from edgestore.client import Client
from edgestore.client.concurrency import LEVELS, AutoWorkers, Gate, Stopped, Turn
from edgestore.client.http import error_from
from edgestore.client.native import chunker_params
from edgestore.client.resume import HintKey, ResumeHints
from edgestore.client.source import SourceFile, guess_content_type
from edgestore.errors import InvalidInput, MissingChunks, SourceChanged, UploadGone
from tests.helpers import KiB, MiB, random_bytes, sha256_hex, write_file
from tests.native import SMALL_PARAMS, chunks_of, pins_of, rows, versions_of


class Recorder:
    """A Progress that counts, and can run a hook after the n-th acknowledged chunk."""

    def __init__(self, after: int | None = None, hook=None) -> None:
        self.total = self.sent = self.skipped_bytes = self.calls = 0
        self.after, self.hook = after, hook

    def start(self, total: int) -> None:
        self.total = total

    def transferred(self, n: int) -> None:
        self.sent += n
        self.calls += 1
        if self.hook is not None and self.calls == self.after:
            self.hook()

    def skipped(self, n: int) -> None:
        self.skipped_bytes += n


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("workers", [1, 4, "auto"])
def test_upload_round_trip(server, http, tmp_path, hints_dir, workers) -> None:
    data = random_bytes(3 * MiB + 77, seed={1: 11, 4: 12, "auto": 13}[workers])
    src = write_file(tmp_path / "file.bin", data)
    progress = Recorder()
    r = Client(server.url, state_dir=hints_dir).upload(
        src, key=f"rt/{workers}", workers=workers, progress=progress
    )
    assert (r.sha256, r.size, r.protocol, r.resumed) == (
        sha256_hex(data),
        len(data),
        "native",
        False,
    )
    assert r.bytes_sent == len(data) and r.bytes_skipped == 0
    assert r.chunks == r.chunks_sent == len(chunks_of(data))
    assert (progress.total, progress.sent) == (len(data), len(data))
    assert http.get(f"/ids/{r.object_id}").content == data
    assert http.get(f"/ids/{r.object_id}/info").json()["sha256"] == sha256_hex(data)
    assert list(hints_dir.glob("*.json")) == []  # the hint goes with success


def test_key_defaults_to_the_file_name(server, tmp_path, hints_dir) -> None:
    src = write_file(tmp_path / "named.bin", b"hello native")
    r = Client(server.url, state_dir=hints_dir).upload(src, bucket="other")
    assert (r.bucket, r.key, r.version) == ("other", "named.bin", 1)


def test_content_type_is_guessed_from_the_file_name(server, http, tmp_path, hints_dir) -> None:
    """As tus and `edgestore put` do: a video uploaded without a content type is served as
    one (it was application/octet-stream over the native protocol, the CLI's default)."""
    client = Client(server.url, state_dir=hints_dir)
    clip = client.upload(write_file(tmp_path / "clip.mp4", b"not really a video"))
    blob = client.upload(write_file(tmp_path / "blob.unknownext", b"x"))
    assert http.get(f"/ids/{clip.object_id}/info").json()["content_type"] == "video/mp4"
    assert http.head(f"/ids/{clip.object_id}").headers["content-type"] == "video/mp4"
    assert http.get(f"/ids/{blob.object_id}/info").json()["content_type"] is None


def test_second_upload_sends_nothing(server, tmp_path, hints_dir) -> None:
    data = random_bytes(2 * MiB, seed=2)
    src = write_file(tmp_path / "same.bin", data)
    client = Client(server.url, state_dir=hints_dir)
    first = client.upload(src, key="twice")
    again = client.upload(src, key="twice")
    assert again.bytes_sent == 0 and again.bytes_skipped == len(data)
    assert (again.version, again.object_id) == (2, first.object_id)


def test_insertion_in_the_middle_resends_a_few_chunks(server, tmp_path, hints_dir) -> None:
    data = random_bytes(4 * MiB, seed=3)
    client = Client(server.url, state_dir=hints_dir)
    client.upload(write_file(tmp_path / "a.bin", data), key="edit/a")
    mid = len(data) // 2
    edited = data[:mid] + random_bytes(64 * KiB, seed=4) + data[mid:]
    r = client.upload(write_file(tmp_path / "b.bin", edited), key="edit/b")
    assert r.chunks_sent <= 3
    assert r.bytes_sent <= 3 * SMALL_PARAMS.max_size
    assert r.bytes_skipped + r.bytes_sent >= len(edited)


def test_empty_file(server, http, tmp_path, hints_dir) -> None:
    r = Client(server.url, state_dir=hints_dir).upload(write_file(tmp_path / "e", b""), key="empty")
    assert (r.size, r.sha256, r.chunks) == (0, sha256_hex(b""), 0)
    assert http.get(f"/ids/{r.object_id}").content == b""


def test_interrupted_upload_resumes_the_same_session(server, probe, tmp_path, hints_dir) -> None:
    data = random_bytes(4 * MiB, seed=5)
    src = write_file(tmp_path / "resume.bin", data)
    client = Client(server.url, state_dir=hints_dir)

    def boom() -> None:
        raise Interrupted

    with pytest.raises(Interrupted):
        client.upload(src, key="resume", workers=2, progress=Recorder(after=10, hook=boom))
    (hint,) = hints_dir.glob("*.json")
    session = rows(probe, "SELECT upload_id FROM uploads WHERE key = 'resume'")[0][0]
    held = sum(len(c) for cid, c in dict(chunks_of(data)).items() if cid in pins_of(probe, session))
    assert held >= 10 * SMALL_PARAMS.min_size

    r = client.upload(src, key="resume", workers=2)
    assert r.resumed and r.upload == session
    assert r.bytes_sent <= len(data) - held and r.bytes_skipped >= held
    assert r.sha256 == sha256_hex(data) and not hint.exists()


class HeldAtStart(Recorder):
    """Holds its upload just after the session is open (and the hint written)."""

    def __init__(self) -> None:
        super().__init__()
        self.opened, self.go = threading.Event(), threading.Event()

    def start(self, total: int) -> None:
        super().start(total)
        self.opened.set()
        assert self.go.wait(60)


def test_two_uploads_of_one_file_at_once_both_end_with_its_version(
    server, probe, tmp_path, hints_dir
) -> None:
    """The second run continues the session the first one's hint names; whichever finalizes
    second used to fail with "already finalized" (exit code 5) though the file was stored."""
    data = random_bytes(2 * MiB, seed=6)
    src = write_file(tmp_path / "twice.bin", data)
    held = HeldAtStart()
    first: list[object] = []

    def run_first() -> None:
        try:
            first.append(
                Client(server.url, state_dir=hints_dir).upload(src, key="at-once", progress=held)
            )
        except BaseException as exc:
            first.append(exc)

    t = threading.Thread(target=run_first)
    t.start()
    try:
        assert held.opened.wait(60)
        second = Client(server.url, state_dir=hints_dir).upload(src, key="at-once")
    finally:
        held.go.set()
        t.join(60)
    (r,) = first
    assert not isinstance(r, BaseException), r
    assert second.resumed and second.upload == r.upload  # one session, hence one version
    assert (r.object_id, r.version, r.sha256) == (second.object_id, 1, sha256_hex(data))
    assert versions_of(probe, "at-once") == 1


def test_a_rerun_with_other_content_type_or_metadata_stores_those(
    server, http, tmp_path, hints_dir
) -> None:
    # The session was opened with the first run's content type and metadata; continuing it
    # would commit those, not what the rerun asks for.
    data = random_bytes(2 * MiB, seed=14)
    src = write_file(tmp_path / "typed.bin", data)
    client = Client(server.url, state_dir=hints_dir)
    with pytest.raises(Interrupted):
        client.upload(
            src,
            key="typed",
            workers=1,
            content_type="text/plain",
            metadata={"note": "draft"},
            progress=Recorder(after=1, hook=_raise),
        )
    r = client.upload(src, key="typed", content_type="application/x-final", metadata={"note": "ok"})
    info = http.get(f"/ids/{r.object_id}/info").json()
    assert (info["content_type"], info["metadata"]) == ("application/x-final", {"note": "ok"})
    assert r.bytes_sent < len(data)  # the chunks the first run stored are not sent again


@pytest.mark.parametrize("change", ["content type", "file"])
def test_a_session_the_rerun_does_not_continue_is_aborted_once_it_commits(
    server, probe, tmp_path, hints_dir, change
) -> None:
    """The hint named a session the rerun could not continue (the file changed, or another
    content type): it stayed open for a week, its pins holding chunks of the old content and
    its size reserved against the bucket's quota (QuotaExceeded for the next uploads)."""
    data = random_bytes(2 * MiB, seed={"content type": 16, "file": 17}[change])
    key = f"superseded/{change}"
    src = write_file(tmp_path / "superseded.bin", data)
    client = Client(server.url, state_dir=hints_dir)
    with pytest.raises(Interrupted):
        client.upload(src, key=key, workers=1, progress=Recorder(after=2, hook=_raise))
    ((old, _),) = rows(probe, "SELECT upload_id, state FROM uploads WHERE key = :k", k=key)
    assert pins_of(probe, old)
    kwargs = {}
    if change == "file":
        write_file(src, data[: MiB // 2] + b"edited" + data[MiB // 2 :])
    else:
        kwargs["content_type"] = "application/x-other"
    r = client.upload(src, key=key, **kwargs)
    assert not r.resumed and r.upload != old
    states = dict(rows(probe, "SELECT upload_id, state FROM uploads WHERE key = :k", k=key))
    assert states == {old: "terminated", r.upload: "complete"}
    assert pins_of(probe, old) == set()
    assert r.bytes_sent < len(data)  # the old session's chunks were found, not sent again


def test_a_stale_hint_opens_a_new_session(server, probe, tmp_path, hints_dir) -> None:
    data = random_bytes(1 * MiB, seed=6)
    src = write_file(tmp_path / "stale.bin", data)
    client = Client(server.url, state_dir=hints_dir)
    with pytest.raises(Interrupted):
        client.upload(src, key="stale", progress=Recorder(after=1, hook=_raise))
    old = rows(probe, "SELECT upload_id FROM uploads WHERE key = 'stale'")[0][0]
    probe.set_expires_at(old, 1.0)
    r = client.upload(src, key="stale")
    assert not r.resumed and r.upload != old and r.sha256 == sha256_hex(data)


def _raise() -> None:
    raise Interrupted


def test_file_changed_during_upload_commits_nothing(server, probe, http, tmp_path, hints_dir):
    data = random_bytes(4 * MiB, seed=7)
    src = write_file(tmp_path / "moving.bin", data)

    def scribble() -> None:
        with open(src, "r+b") as f:
            f.seek(3 * MiB)
            f.write(b"changed!")

    client = Client(server.url, state_dir=hints_dir)
    with pytest.raises(SourceChanged, match="changed while it was being uploaded"):
        client.upload(src, key="moving", workers=1, progress=Recorder(after=1, hook=scribble))
    assert versions_of(probe, "moving") == 0
    session = rows(probe, "SELECT upload_id, state FROM uploads WHERE key = 'moving'")[0]
    assert session[1] == "terminated" and pins_of(probe, session[0]) == set()
    assert list(hints_dir.glob("*.json")) == []
    r = client.upload(src, key="moving")  # the new content uploads fine
    assert http.get(f"/ids/{r.object_id}").content == src.read_bytes()


def test_file_grown_during_upload_commits_nothing(server, probe, tmp_path, hints_dir) -> None:
    src = write_file(tmp_path / "growing.bin", random_bytes(2 * MiB, seed=8))

    def append() -> None:
        with open(src, "ab") as f:
            f.write(b"more")

    with pytest.raises(SourceChanged):
        Client(server.url, state_dir=hints_dir).upload(
            src, key="growing", workers=1, progress=Recorder(after=1, hook=append)
        )
    assert versions_of(probe, "growing") == 0


def test_upload_with_an_api_key(auth_server, tmp_path, hints_dir) -> None:
    from edgestore.errors import Unauthorized

    src = write_file(tmp_path / "auth.bin", random_bytes(300 * KiB, seed=9))
    r = Client(auth_server.url, auth_server.admin_key, state_dir=hints_dir).upload(src)
    assert r.size == 300 * KiB
    with pytest.raises(Unauthorized):
        Client(auth_server.url, state_dir=hints_dir).upload(src, key="nokey")


def test_a_file_name_that_is_not_utf8_uploads_under_a_readable_name(
    server, http, tmp_path, hints_dir
) -> None:
    """A name in another encoding (Latin-1 from an old disk or share) reaches Python with
    surrogates that no JSON or header can carry: the upload died in httpx with a traceback,
    even with --key given (the file name is sent too)."""
    data = random_bytes(200 * KiB, seed=15)
    src = write_file(tmp_path / os.fsdecode(b"caf\xe9.bin"), data)
    client = Client(server.url, state_dir=hints_dir)
    r = client.upload(src)
    assert (r.key, r.sha256) == ("caf\ufffd.bin", sha256_hex(data))
    info = http.get(f"/ids/{r.object_id}/info").json()
    assert info["filename"] == "caf\ufffd.bin"
    assert client.upload(src, key="named").key == "named"
    assert list(hints_dir.glob("*.json")) == []


def test_bad_workers_are_refused(server, tmp_path, hints_dir) -> None:
    with pytest.raises(InvalidInput):
        Client(server.url, state_dir=hints_dir).upload(write_file(tmp_path / "w", b"x"), workers=0)


# --- pieces --------------------------------------------------------------------------------------


def _drive(auto: AutoWorkers, rates: dict[int, float]) -> list[int]:
    """Feed `auto` the bytes a path with these per-level rates would move; its levels."""
    t, sent = 0.0, 0
    levels = []
    while not auto.settled and t < 100:
        t += 0.25
        sent += int(rates[auto.level] * 0.25)
        levels.append(auto.update(sent, t))
    return levels


def test_auto_workers_grow_while_it_pays_then_hold() -> None:
    auto = AutoWorkers(warmup=0.5, window=2.0)
    rates = {6: 14e6, 8: 18e6, 11: 18.2e6, 16: 30e6}  # 11 adds only ~1%: hold 11
    levels = _drive(auto, rates)
    assert auto.settled and auto.level == 11
    assert [lvl for lvl, _ in auto.history] == [6, 8, 11]
    assert levels[0] == 6 and max(levels) == 11


def test_auto_workers_undo_a_step_that_hurts() -> None:
    auto = AutoWorkers(warmup=0.5, window=2.0)
    rates = {6: 14e6, 8: 12e6, 11: 30e6, 16: 30e6}  # 8 is worse than 6: back to 6
    levels = _drive(auto, rates)
    assert auto.settled and auto.level == 6
    assert [lvl for lvl, _ in auto.history] == [6, 8]
    assert max(levels) == 8 and levels[-1] == 6


def test_auto_workers_stop_at_the_cap_and_ignore_idle_windows() -> None:
    auto = AutoWorkers(warmup=0.0, window=1.0)
    t, sent = 0.0, 0
    auto.update(sent, t)
    t += 5
    assert auto.update(sent, t) == LEVELS[0]  # nothing moved: no verdict
    for _ in range(200):
        t += 0.5
        sent += auto.level * 10 * MiB  # throughput proportional to connections
        auto.update(sent, t)
    assert auto.settled and auto.level == LEVELS[-1]


def test_gate_width_changes_while_threads_wait() -> None:
    import threading

    gate = Gate(1)
    assert gate.acquire()
    entered = threading.Event()

    def second() -> None:
        gate.acquire()
        entered.set()

    threading.Thread(target=second, daemon=True).start()
    assert not entered.wait(0.3)
    gate.set_limit(2)
    assert entered.wait(2)


def test_a_turn_is_held_once_and_given_back_once() -> None:
    """A sender holds its turn while a body is sent (a retry takes it again, a second take
    is a no-op) and gives it back once, however many times it is asked to."""
    import threading

    gate, stop = Gate(1), threading.Event()
    turn, other = Turn(gate, stop), Turn(gate, stop)
    turn.take()
    turn.take()  # the first try's body already holds it
    stop.set()
    with pytest.raises(Stopped):  # the gate is full: a stopping upload does not wait
        other.take()
    stop.clear()
    turn.give()
    turn.give()  # the loop's cleanup after the body already gave it back
    other.take()
    stop.set()
    assert not gate.acquire(stop)  # one turn, held: nobody else gets in
    other.give()
    assert gate.acquire(stop)


def test_hint_is_ignored_once_the_file_changes(tmp_path) -> None:
    src = write_file(tmp_path / "h.bin", b"one")
    hints = ResumeHints(tmp_path / "hints")
    key = HintKey("http://s", "native", str(src), "default", "h.bin")
    with SourceFile(src) as f:
        hints.save(key, f.identity, {"upload_id": "u1"})
        assert hints.load(key, f.identity) == {"upload_id": "u1"}
    os.utime(src, ns=(1, 1))
    with SourceFile(src) as f:
        assert hints.load(key, f.identity) is None
    hints.clear(key)
    assert list((tmp_path / "hints").iterdir()) == []


def test_unknown_chunker_is_refused() -> None:
    params = {"chunker": {"algorithm": "rabin", "hash": "sha256", "min_size": 1}}
    with pytest.raises(InvalidInput, match="rabin"):
        chunker_params(params)
    ok = {"chunker": {"algorithm": "fastcdc2020", "hash": "sha256", "min_size": 16384}}
    ok["chunker"].update(avg_size=65536, max_size=262144)
    assert chunker_params(ok) == SMALL_PARAMS


def test_server_errors_come_back_as_domain_errors() -> None:
    import httpx

    def response(status: int, body: dict) -> httpx.Response:
        return httpx.Response(status, json=body, request=httpx.Request("POST", "http://s/x"))

    missing = error_from(
        response(409, {"error": "missing_chunks", "message": "m", "missing": ["a"]})
    )
    assert isinstance(missing, MissingChunks) and missing.chunk_ids == ["a"]
    gone = error_from(response(410, {"error": "upload_gone", "message": "expired"}))
    assert isinstance(gone, UploadGone) and "expired" in str(gone) and "HTTP 410" in str(gone)
    assert isinstance(error_from(response(400, {"error": "invalid_request"})), InvalidInput)


def test_a_hinted_creation_key_of_another_request_is_replaced(
    server, http, probe, tmp_path, hints_dir
) -> None:
    """A hint's key (from a creation whose answer never came) that the server bound to
    another request: the rerun opens its session with a new key rather than fail."""
    src = write_file(tmp_path / "k.bin", random_bytes(50 * KiB, seed=77))
    key = f'"{uuid.uuid4()}"'
    headers = {"Idempotency-Key": key}
    other = http.post("/v1/uploads", json={"key": "hinted", "size": 1}, headers=headers)
    assert other.status_code == 201
    wanted = {"content_type": guess_content_type(src.name), "metadata": {}}
    with SourceFile(src) as f:
        hint = HintKey(server.url, "native", str(src), "default", "hinted")
        ResumeHints(hints_dir).save(hint, f.identity, {"idempotency_key": key, **wanted})
    r = Client(server.url, state_dir=hints_dir).upload(src, key="hinted")
    assert r.version == 1 and r.upload != other.json()["upload_id"]
