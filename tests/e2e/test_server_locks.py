"""One writer per upload, across requests and across server processes.

- Two live PATCHes to one upload: the second is refused (423), bytes never interleave.
- A client whose connection drops (or goes silent) mid-PATCH can come back and continue
  within ~2 s: no lingering 423, the trap users of other tus servers fall into.
- Two server processes on one database: an upload moves between them; a live writer on one
  locks out the other; a writer killed with its node is taken over once its lease lapses
  (upload_lock_seconds, 6 s by default).
"""

from __future__ import annotations

import itertools
import threading
import time

import httpx
import pytest

from tests.helpers import (
    KiB,
    MiB,
    StoreProbe,
    TricklingPatch,
    patch_headers,
    random_bytes,
    sha256_hex,
    tus_create,
    tus_offset,
    tus_patch,
    upload_id_of,
)
from tests.server import ServerProcess

LEASE = 6.0  # the default upload_lock_seconds
RECONNECT = 2.5  # a returning client must be writing again within this (issue: "a few seconds")


def _finish(client: httpx.Client, url: str, data: bytes, *, timeout: float) -> float:
    """Do what a tus client does after a failure: HEAD, PATCH the rest from there, and on
    423 (locked) or 409 (the interrupted writer's last bytes landed meanwhile) try again,
    for up to `timeout` seconds. Returns how long it took."""
    started = time.monotonic()
    while True:
        offset = tus_offset(client, url)
        r = tus_patch(client, url, offset, data[offset:])
        took = time.monotonic() - started
        if r.status_code not in (409, 423) or took > timeout:
            break
        time.sleep(0.1)
    assert r.status_code == 204, (r.status_code, r.text, took)
    assert r.headers["Upload-Offset"] == str(len(data))
    return took


def _assert_object(client: httpx.Client, url: str, data: bytes) -> None:
    got = client.get(url)
    assert got.status_code == 200
    assert len(got.content) == len(data)
    assert sha256_hex(got.content) == sha256_hex(data)


@pytest.fixture
def node(fresh_server) -> ServerProcess:
    return fresh_server.start()


# --- one server ----------------------------------------------------------------------------


def test_a_second_live_patch_is_refused_and_nothing_interleaves(node) -> None:
    data = random_bytes(6 * MiB, seed=400)
    with node.client() as c:
        url = tus_create(c, len(data))
        assert tus_patch(c, url, 0, data[:MiB]).status_code == 204
        first = TricklingPatch(node.url, url, MiB, data[MiB:]).start()
        time.sleep(0.5)
        # the same bytes, and other bytes, from a second client at the same offset
        for body in (data[MiB : 2 * MiB], b"\xff" * MiB):
            r = tus_patch(c, url, MiB, body)
            assert r.status_code in (423, 409), r.status_code
        status, headers = first.finish()
        assert status == 204
        assert headers["upload-offset"] == str(len(data))
        _assert_object(c, url, data)


def test_racing_patches_one_wins_the_object_is_exact(node) -> None:
    data = random_bytes(24 * MiB, seed=401)
    with node.client() as c:
        url = tus_create(c, len(data))
    for round_ in range(3):
        with node.client() as c:
            offset = tus_offset(c, url)
        end = min(offset + 8 * MiB, len(data))
        barrier = threading.Barrier(2)
        results: list[int] = []

        def racer(
            body: bytes,
            offset: int = offset,
            barrier: threading.Barrier = barrier,
            results: list[int] = results,
        ) -> None:
            with node.client() as c:
                barrier.wait()
                results.append(
                    c.patch(url, content=body, headers=patch_headers(offset)).status_code
                )

        # one racer sends the real bytes, the other garbage of the same size
        racers = [
            threading.Thread(target=racer, args=(data[offset:end],)),
            threading.Thread(target=racer, args=(b"\x00" * (end - offset),)),
        ]
        for t in racers:
            t.start()
        for t in racers:
            t.join()
        assert sorted(results) in ([204, 409], [204, 423]), (round_, results)
        with node.client() as c:
            got = tus_offset(c, url)
            assert got == end
            if got == len(data):
                break
    with node.client() as c:
        # the garbage racer may have won a round: then the object is not `data`, but it is
        # exactly one racer's bytes per round, never a mix
        content = c.get(url).content
        assert len(content) == len(data)
        for lo in range(0, len(data), 8 * MiB):
            piece = content[lo : lo + 8 * MiB]
            assert piece in (data[lo : lo + 8 * MiB], b"\x00" * len(piece)), f"mixed at {lo}"


def test_a_dropped_connection_leaves_no_lingering_lock(node) -> None:
    data = random_bytes(8 * MiB, seed=402)
    with node.client() as c:
        url = tus_create(c, len(data))
        writer = TricklingPatch(node.url, url, 0, data, first=3 * MiB).start()
        time.sleep(1.2)  # a commit interval: some of it becomes durable
        sent = writer.sent
        writer.drop()  # RST: the client vanished mid-PATCH
        dropped = time.monotonic()
        offset = tus_offset(c, url)
        assert offset <= sent
        # the durable prefix is the client's bytes, whatever was cut off after it
        probe = StoreProbe(node.database_url)
        try:
            uid = upload_id_of(url)
            deadline = time.monotonic() + 3
            while probe.upload(uid)["lock_owner"] and time.monotonic() < deadline:
                time.sleep(0.02)  # the cut writer commits what it had, then lets go
            assert probe.assert_durable_prefix(uid, data) >= offset
        finally:
            probe.close()
        waited = _finish(c, url, data, timeout=10)
        assert time.monotonic() - dropped <= RECONNECT, f"locked for {waited:.1f}s after a drop"
        _assert_object(c, url, data)


def test_a_closed_connection_leaves_no_lingering_lock(node) -> None:
    data = random_bytes(4 * MiB, seed=403)
    with node.client() as c:
        url = tus_create(c, len(data))
        writer = TricklingPatch(node.url, url, 0, data, first=MiB).start()
        time.sleep(0.3)
        writer.close()  # FIN mid-body
        closed = time.monotonic()
        _finish(c, url, data, timeout=10)
        assert time.monotonic() - closed <= RECONNECT
        _assert_object(c, url, data)


def test_a_silent_client_is_taken_over_within_seconds(node) -> None:
    data = random_bytes(4 * MiB, seed=404)
    with node.client() as c:
        url = tus_create(c, len(data))
        writer = TricklingPatch(node.url, url, 0, data, first=MiB).start()
        time.sleep(0.3)
        writer.silence()  # the connection stays open, nothing more arrives
        try:
            silent = time.monotonic()
            _finish(c, url, data, timeout=RECONNECT + 1)
            assert time.monotonic() - silent <= RECONNECT + 1
            _assert_object(c, url, data)
        finally:
            writer.close()


# --- two servers on one database -----------------------------------------------------------


@pytest.fixture
def two_nodes(fresh_server):
    """Nodes A and B: two `edgestore serve` processes sharing the database and data dirs."""
    a = fresh_server.start()
    b = ServerProcess(home=a.home, database_url=a.database_url, env_extra=dict(a.env_extra))
    b.start()
    try:
        yield a, b
    finally:
        b.kill()


def test_an_upload_continues_on_another_node(two_nodes) -> None:
    a, b = two_nodes
    data = random_bytes(14 * MiB + 5, seed=410)
    cuts = [0, 3 * MiB + 1, 5 * MiB, 11 * MiB + 7, len(data)]
    with a.client() as ca, b.client() as cb:
        url = tus_create(ca, len(data))
        path = httpx.URL(url).path
        for i, (lo, hi) in enumerate(itertools.pairwise(cuts)):
            c = (ca, cb)[i % 2]
            assert tus_offset(c, path) == lo
            r = tus_patch(c, path, lo, data[lo:hi])
            assert r.status_code == 204, r.text
        _assert_object(ca, path, data)
        _assert_object(cb, path, data)


def test_a_live_writer_on_one_node_locks_out_the_other(two_nodes) -> None:
    a, b = two_nodes
    data = random_bytes(4 * MiB, seed=411)
    with a.client() as ca, b.client() as cb:
        url = tus_create(ca, len(data))
        path = httpx.URL(url).path
        writer = TricklingPatch(a.url, url, 0, data, first=MiB).start()
        time.sleep(0.5)
        for _ in range(3):  # still locked while A's writer keeps sending
            assert tus_patch(cb, path, tus_offset(cb, path), b"x").status_code in (423, 409)
            time.sleep(0.5)
        status, _ = writer.finish()
        assert status == 204
        _assert_object(cb, path, data)


def test_a_dropped_client_on_one_node_can_continue_on_the_other(two_nodes) -> None:
    a, b = two_nodes
    data = random_bytes(6 * MiB, seed=412)
    with a.client() as ca, b.client() as cb:
        url = tus_create(ca, len(data))
        path = httpx.URL(url).path
        writer = TricklingPatch(a.url, url, 0, data, first=2 * MiB).start()
        time.sleep(0.5)
        writer.drop()
        dropped = time.monotonic()
        _finish(cb, path, data, timeout=10)
        assert time.monotonic() - dropped <= RECONNECT
        _assert_object(ca, path, data)


@pytest.mark.slow
def test_a_node_killed_mid_patch_is_taken_over_after_its_lease(two_nodes) -> None:
    a, b = two_nodes
    data = random_bytes(8 * MiB, seed=413)
    with b.client() as cb:
        url = tus_create(cb, len(data))
        path = httpx.URL(url).path
        writer = TricklingPatch(a.url, a.url + path, 0, data, first=3 * MiB).start()
        time.sleep(1.5)
        sent = writer.sent
        a.kill()
        killed = time.monotonic()
        writer.close()
        offset = tus_offset(cb, path)
        assert offset <= sent
        waited = _finish(cb, path, data, timeout=LEASE + 4)
        took = time.monotonic() - killed
        assert took <= LEASE + 3, f"node B waited {took:.1f}s ({waited:.1f}s of 423s)"
        _assert_object(cb, path, data)


@pytest.mark.slow
def test_a_silent_client_on_one_node_is_taken_over_after_the_lease(two_nodes) -> None:
    """Across nodes a silent writer stops renewing its lease, so the other node may take over
    once it lapses; the silent writer, should it wake, must not commit over it."""
    a, b = two_nodes
    data = random_bytes(4 * MiB, seed=414)
    with a.client() as ca, b.client() as cb:
        url = tus_create(ca, len(data))
        path = httpx.URL(url).path
        writer = TricklingPatch(a.url, url, 0, data, first=MiB).start()
        time.sleep(0.3)
        writer.silence()
        silent = time.monotonic()
        try:
            _finish(cb, path, data, timeout=LEASE + 4)
            assert time.monotonic() - silent <= LEASE + 3
            # the old writer wakes up and sends the rest of its body: it must not land
            try:
                writer.finish(timeout=10)
            except (OSError, ConnectionError):
                pass
            _assert_object(ca, path, data)
            assert tus_offset(ca, path) == len(data)
        finally:
            writer.close()


def test_trickling_writer_sanity(node) -> None:
    """The raw-socket writer the tests above rely on completes an upload on its own."""
    data = random_bytes(600 * KiB, seed=415)
    with node.client() as c:
        url = tus_create(c, len(data))
        status, headers = TricklingPatch(node.url, url, 0, data).start().finish()
        assert status == 204 and headers["upload-offset"] == str(len(data))
        _assert_object(c, url, data)
