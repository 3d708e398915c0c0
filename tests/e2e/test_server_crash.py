"""kill -9 the real server in the middle of a large PATCH, restart it, resume.

What tuspyserver gets wrong (the final file is longer than the original whenever the kill
lands inside a PATCH) and what neither tusd nor @tus/server promise (they do not fsync before
acknowledging): after every kill, HEAD's offset is
  - at least every offset acknowledged before the kill (acknowledged bytes are never lost),
  - at most what the client sent (nothing invented, nothing duplicated),
  - exactly the client's bytes below it (the parts' chunk ids are the SHA-256s of the client's
    slices, the staged tail's checksum is theirs),
and the finished object is byte-identical.
"""

from __future__ import annotations

import httpx
import pytest

from tests.helpers import (
    MiB,
    OffsetWatcher,
    StoreProbe,
    paced,
    patch_headers,
    patch_when_unlocked,
    random_bytes,
    sha256_hex,
    tus_create,
    tus_offset,
    upload_id_of,
)

SIZE = 64 * MiB
# upload_lock_seconds, shortened from the default 6 s to keep these tests quick: a killed
# writer's lease blocks the upload no longer than this (test_server_locks uses the default)
LEASE = 3.0
PIECE_DELAY = 0.008  # 256 KiB every 8 ms: ~30 MB/s, slow enough for commits mid-request


@pytest.fixture
def node(fresh_server):
    """The server under test, with a short write lease."""
    fresh_server.env_extra["EDGESTORE_UPLOAD_LOCK_SECONDS"] = str(LEASE)
    return fresh_server


def _stream_until_killed(node, url: str, data: bytes, offset: int, kill_after: int) -> int:
    """PATCH data[offset:] and kill -9 the server once `kill_after` bytes are sent; return
    the absolute offset the client had sent when the server died."""
    progress = [offset]
    body = paced(
        data,
        offset,
        delay=PIECE_DELAY,
        stop_after=kill_after,
        on_stop=node.kill,
        progress=progress,
    )
    with httpx.Client(timeout=30) as c:
        try:
            r = c.patch(url, content=body, headers=patch_headers(offset))
        except httpx.TransportError:
            pass  # the expected outcome: the server died under the request
        else:
            pytest.fail(f"the request outlived a kill -9: {r.status_code} {r.text}")
    assert node.proc.poll() is not None
    return progress[0]


@pytest.mark.slow
@pytest.mark.parametrize(
    "kill_points_mib",
    [(3,), (41,), (30, 31, 60)],  # each kill after the first lands after a resume
    ids=["early", "mid", "three-times-one-right-after-resume"],
)
def test_kill_9_mid_patch_then_resume(node, kill_points_mib: tuple[int, ...]) -> None:
    data = random_bytes(SIZE, seed=300 + sum(kill_points_mib))
    node.start()
    probe = StoreProbe(node.database_url)
    try:
        with node.client() as c:
            url = tus_create(c, len(data), metadata={"key": "crash.bin"})
        uid = upload_id_of(url)
        offset = 0
        for point in kill_points_mib:
            with OffsetWatcher(url) as watcher:
                sent = _stream_until_killed(node, url, data, offset, point * MiB - offset)
            acknowledged = watcher.highest
            node.start()
            with node.client() as c:
                durable = tus_offset(c, url)
            assert acknowledged <= durable <= sent, (acknowledged, durable, sent)
            assert probe.assert_durable_prefix(uid, data) == durable
            offset = durable
            with node.client() as c:  # the dead writer's lease lapses within LEASE
                r, waited = patch_when_unlocked(c, url, offset, b"", timeout=LEASE + 3)
                assert r.status_code == 204 and waited <= LEASE + 3, (r.status_code, waited)
        with node.client() as c:
            r = c.patch(url, content=data[offset:], headers=patch_headers(offset))
            assert r.status_code == 204, r.text
            assert r.headers["Upload-Offset"] == str(SIZE)
            got = c.get(url)
            assert got.status_code == 200
            assert len(got.content) == SIZE  # not one byte duplicated
            assert sha256_hex(got.content) == sha256_hex(data)
            assert got.headers["X-Edgestore-Sha256"] == sha256_hex(data)
            by_key = c.head("/objects/default/crash.bin")
            assert by_key.headers["X-Edgestore-Sha256"] == sha256_hex(data)
    finally:
        probe.close()


@pytest.mark.slow
def test_offsets_are_acknowledged_while_a_long_patch_streams(node) -> None:
    """The staged tail lets HEAD report progress during a PATCH, not only after it, and
    what HEAD reported survives a kill -9 an instant later."""
    data = random_bytes(60 * MiB, seed=310)
    node.start()
    with node.client() as c:
        url = tus_create(c, len(data))
    with OffsetWatcher(url, interval=0.02) as watcher:
        sent = _stream_until_killed(node, url, data, 0, 45 * MiB)
    moving = sorted(set(watcher.seen))
    assert len(moving) >= 2 and moving[-1] > 0, moving  # progress was visible mid-request
    node.start()
    with node.client() as c:
        durable = tus_offset(c, url)
    assert watcher.highest <= durable <= sent


@pytest.mark.slow
def test_kill_9_during_a_checksummed_patch_keeps_nothing_of_it(node) -> None:
    """With Upload-Checksum a PATCH is all or nothing, even when the server dies under it."""
    import base64
    import hashlib

    data = random_bytes(40 * MiB, seed=311)
    node.start()
    with node.client() as c:
        url = tus_create(c, len(data))
        assert c.patch(url, content=data[:MiB], headers=patch_headers(0)).status_code == 204
    digest = base64.b64encode(hashlib.sha1(data[MiB:]).digest()).decode()
    body = paced(data, MiB, delay=PIECE_DELAY, stop_after=30 * MiB, on_stop=node.kill)
    with httpx.Client(timeout=30) as c, pytest.raises(httpx.TransportError):
        c.patch(
            url, content=body, headers=patch_headers(MiB, **{"Upload-Checksum": f"sha1 {digest}"})
        )
    node.start()
    with node.client() as c:
        assert tus_offset(c, url) == MiB
        r, _ = patch_when_unlocked(c, url, MiB, data[MiB:], timeout=LEASE + 3)
        assert r.status_code == 204
        assert sha256_hex(c.get(url).content) == sha256_hex(data)
