"""Per-client limits: requests per second (429 + Retry-After), bandwidth (throttled, not
refused), concurrent uploads (429), X-Forwarded-For only from trusted proxies, and the same
limits shared by two nodes through the real Redis."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from starlette.types import Message, Receive, Scope, Send

from edgestore.api import limits
from edgestore.api.identity import Identity
from edgestore.api.limits import Limiter, Throttle, client_of, is_upload
from edgestore.config import load_settings
from edgestore.errors import ConfigError, RateLimited
from tests.api.access import client_with, create_key
from tests.helpers import MiB, TricklingPatch, random_bytes, tus_create, tus_patch
from tests.server import ServerProcess


def _scope(method: str = "GET", **extra: object) -> dict[str, object]:
    return {"type": "http", "method": method, "headers": [], "client": ("10.0.0.9", 5), **extra}


def test_client_is_the_key_else_the_address() -> None:
    assert client_of(_scope()) == "ip:10.0.0.9"
    key = Identity("key", frozenset({"read"}), key_id="abc")
    assert client_of(_scope(state={"identity": key})) == "key:abc"
    assert client_of(_scope(state={"identity": Identity("presigned")})) == "ip:10.0.0.9"
    assert is_upload(_scope("PATCH")) and is_upload(_scope("PUT"))
    assert not is_upload(_scope("POST"))
    tus_post = _scope("POST", headers=[(b"content-type", b"application/offset+octet-stream")])
    assert is_upload(tus_post)


def test_ipv6_clients_count_by_their_64_prefix() -> None:
    """An IPv6 client gets a whole /64 (2^64 addresses) from its provider: counted per
    address, it escaped every per-IP limit (rate, concurrent uploads, bandwidth) by sending
    each request from a new one."""
    one = client_of(_scope(client=("2001:db8:1:2::1", 5)))
    same_site = client_of(_scope(client=("2001:db8:1:2:ffff:ffff:ffff:9", 5)))
    other_site = client_of(_scope(client=("2001:db8:1:3::1", 5)))
    assert one == same_site == "ip:2001:db8:1:2::/64"
    assert other_site != one
    assert client_of(_scope(client=("::ffff:10.0.0.9", 5))) == "ip:10.0.0.9"  # IPv4, mapped
    assert client_of(_scope(client=("testclient", 5))) == "ip:testclient"  # not an address


def test_an_upload_slot_is_free_before_the_response_goes_out(tmp_path: Path) -> None:
    """A client that sends its next PATCH the moment it has the answer must not find its
    finished upload still holding the slot (a spurious 429; tus clients do not retry it)."""
    settings = load_settings(home=tmp_path, max_concurrent_uploads=1)
    limiter = Limiter(settings)
    slots_when_sent: list[int] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        # The status line and headers go out at the start: a 204 is complete to the client.
        if message["type"] == "http.response.start":
            slots_when_sent.append(sum(limiter._local_slots.values()))

    async def run() -> None:
        await limiter.start("test")
        throttle = Throttle(app, limiter=limiter)
        try:
            for _ in range(2):  # the second would be refused if the first still held it
                await throttle(_scope("PATCH", path="/files/x"), receive, send)
        finally:
            await limiter.stop()

    asyncio.run(run())
    assert slots_when_sent == [0, 0]


def test_an_upload_slot_is_renewed_on_a_timer_until_released(monkeypatch) -> None:
    """The lease is renewed while the request runs, whichever way its body arrives (a body
    read straight into the engine passes no message through `receive`), and stopping waits
    for a renewal under way, so none lands after the slot's release."""
    monkeypatch.setattr(limits, "LEASE_SECONDS", 0.2)  # renewed every 0.05 s
    events: list[str] = []

    async def renew() -> None:
        events.append("renew")
        await asyncio.sleep(0.03)
        events.append("renewed")

    async def run() -> None:
        renewing = limits._Renewing(renew)
        await asyncio.sleep(0.3)
        await renewing.stop()
        events.append("stopped")
        await asyncio.sleep(0.2)

    asyncio.run(run())
    assert events.count("renew") >= 3, events
    assert events[-1] == "stopped" and events[-2] == "renewed", events


@pytest.mark.redis
def test_a_late_renewal_does_not_bring_a_released_slot_back(redis_url: str, tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path, max_concurrent_uploads=1, rate_limit_storage=redis_url)
    limiter = Limiter(settings)

    async def run() -> list[int]:
        await limiter.start(f"test-{time.monotonic_ns()}")
        try:
            token = await limiter.acquire_upload("ip:1")
            assert token is not None
            await limiter.renew_upload("ip:1", token)
            held = await limiter.redis.zcard(f"{limiter.namespace}:uploads:ip:1")
            await limiter.release_upload("ip:1", token)
            await limiter.renew_upload("ip:1", token)  # too late: must not re-add it
            after = await limiter.redis.zcard(f"{limiter.namespace}:uploads:ip:1")
            return [held, after]
        finally:
            await limiter.stop()

    assert asyncio.run(run()) == [1, 0]


@pytest.mark.redis
def test_a_long_upload_keeps_its_slot_past_the_key_expiry(redis_url: str, tmp_path: Path) -> None:
    """The slots' sorted set expired 2 x LEASE_SECONDS after the client's last acquire,
    renewals or not: after 4 minutes a client's long uploads held no slot at all, and it could
    start max_concurrent_uploads more. A renewal keeps the set alive too."""
    settings = load_settings(home=tmp_path, max_concurrent_uploads=1, rate_limit_storage=redis_url)
    limiter = Limiter(settings)

    async def run() -> None:
        await limiter.start(f"test-{time.monotonic_ns()}")
        try:
            token = await limiter.acquire_upload("ip:1")
            assert token is not None
            key = f"{limiter.namespace}:uploads:ip:1"
            await limiter.redis.expire(key, 1)  # 4 minutes have passed since the acquire
            await limiter.renew_upload("ip:1", token)
            await asyncio.sleep(1.2)
            with pytest.raises(RateLimited):
                await limiter.acquire_upload("ip:1")  # its one upload still streams
        finally:
            await limiter.stop()

    asyncio.run(run())


class _FrozenLink:
    """A TCP relay to Redis that can stop relaying while keeping its connections open: Redis
    unreachable behind a dead link (no reset, no answer), as a network partition looks."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.frozen = False
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}/0"

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while data := await src.read(65536):
                while self.frozen:
                    await asyncio.sleep(0.05)
                dst.write(data)
                await dst.drain()

        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            up_writer.close()
            writer.close()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()


@pytest.mark.redis
def test_redis_that_stops_answering_fails_open_without_hanging(
    redis_url: str, tmp_path: Path
) -> None:
    """Redis reachable at start, then silent (a partition): every request waited on it with
    no timeout at all, so the whole server hung. Limits fail open within a bounded time, and
    the next requests do not each wait for it again."""
    parts = urlsplit(redis_url)

    async def run() -> list[float]:
        link = _FrozenLink((parts.hostname or "127.0.0.1", parts.port or 6379))
        url = await link.start()
        settings = load_settings(
            home=tmp_path, rate_limit="100/second", max_concurrent_uploads=1,
            upload_bandwidth=MiB, rate_limit_storage=url,
        )  # fmt: skip
        limiter = Limiter(settings)
        await limiter.start(f"test-{time.monotonic_ns()}")
        took = []
        try:
            await limiter.check_request("ip:1")
            link.frozen = True
            for _ in range(3):
                t = time.monotonic()
                await asyncio.wait_for(limiter.check_request("ip:1"), 20)
                token = await asyncio.wait_for(limiter.acquire_upload("ip:1"), 20)
                await asyncio.wait_for(limiter.spend("ip:1", 1000), 20)
                if token is not None:
                    await asyncio.wait_for(limiter.release_upload("ip:1", token), 20)
                took.append(time.monotonic() - t)
        finally:
            link.frozen = False
            await limiter.stop()
            await link.stop()
        return took

    took = asyncio.run(run())
    assert took[0] < 8 and max(took[1:]) < 0.5, took


@pytest.fixture
def start(tmp_path: Path):
    """Start servers of the test's own on one SQLite store; all stopped afterwards."""
    running: list[ServerProcess] = []

    def starter(auth: bool = False, **env: str) -> ServerProcess:
        proc = ServerProcess(
            home=tmp_path / "home",
            database_url=f"sqlite:///{tmp_path / 'meta.db'}",
            auth=auth,
            env_extra={f"EDGESTORE_{k.upper()}": v for k, v in env.items()},
        )
        running.append(proc)
        return proc.start()

    yield starter
    for proc in running:
        proc.stop()


def _burst(client: httpx.Client, n: int, path: str = "/objects", **kw: object) -> list[int]:
    _clear_of_a_minute_boundary()
    return [client.get(path, **kw).status_code for _ in range(n)]  # type: ignore[arg-type]


def _clear_of_a_minute_boundary(margin: float = 10.0) -> None:
    """Per-minute limits use fixed windows weighted by a sliding estimate: just after a
    minute starts, the previous minute's 5 hits weigh 4.99, and a 6th request passes (seen
    once in CI). A burst starts where the minute has at least `margin` seconds left."""
    left = 60 - time.time() % 60
    if left < margin:
        time.sleep(left + 0.5)


def test_requests_per_client_get_429_with_retry_after(start) -> None:
    server = start(auth=True, rate_limit="5/minute")
    other = create_key(server, "--name", "other", "--scope", "read")
    with server.client() as c:
        codes = _burst(c, 7)
        assert codes[:5] == [200] * 5 and codes[5:] == [429, 429]
        r = c.get("/objects")
        assert r.json()["error"] == "rate_limited" and "5 per 1 minute" in r.json()["message"]
        assert 1 <= int(r.headers["Retry-After"]) <= 60
        assert c.get("/healthz").status_code == 200  # probes are never limited
    with client_with(server, other) as c:  # another key: its own budget
        assert _burst(c, 5) == [200] * 5


def test_refused_requests_count_against_their_address(start) -> None:
    """A request refused for its credentials (an unknown key, a forged URL) is counted too,
    against its address: else a client could try keys or signatures without any limit, each
    unknown key costing the database a query."""
    server = start(auth=True, rate_limit="5/minute")
    with client_with(server, "esk_" + "x" * 43) as c:
        codes = _burst(c, 7)
        assert codes[:5] == [401] * 5 and codes[5:] == [429, 429], codes
        r = c.get("/objects?es_action=download&es_signature=forged")
        assert r.status_code == 429 and r.json()["error"] == "rate_limited"
        assert 1 <= int(r.headers["Retry-After"]) <= 60
    with server.client() as c:  # a valid key counts apart from the address: its own budget
        assert _burst(c, 5) == [200] * 5


def test_forwarded_for_counts_only_from_trusted_proxies(start) -> None:
    untrusted = start(rate_limit="3/minute")
    with untrusted.client() as c:
        codes = [
            c.get("/objects", headers={"X-Forwarded-For": f"10.0.0.{i}"}).status_code
            for i in range(5)
        ]
        assert codes == [200, 200, 200, 429, 429]  # spoofed addresses do not buy more
    trusted = start(rate_limit="3/minute", trusted_proxies="127.0.0.0/8")
    with trusted.client() as c:
        for ip in ("10.0.0.1", "10.0.0.2"):
            assert _burst(c, 3, headers={"X-Forwarded-For": ip}) == [200] * 3
            assert c.get("/objects", headers={"X-Forwarded-For": ip}).status_code == 429
        # a client-supplied entry left of the proxy's does not change who is counted
        spoof = {"X-Forwarded-For": "1.2.3.4, 10.0.0.1"}
        assert c.get("/objects", headers=spoof).status_code == 429


@pytest.mark.parametrize("path", ["direct", "queued"])
def test_bandwidth_is_throttled_not_refused(start, path: str) -> None:
    """Both ways a body arrives are metered: straight into the engine's buffer (a body with a
    Content-Length, api/direct.py) and queued (a chunked one)."""
    server = start(upload_bandwidth=str(MiB))
    data = random_bytes(3 * MiB, seed=1)
    body = data if path == "direct" else iter([data[:MiB], data[MiB:]])
    with server.client() as c:
        url = tus_create(c, len(data))
        began = time.monotonic()
        r = tus_patch(c, url, 0, body)
        took = time.monotonic() - began
        metrics = c.get("/metrics").text
    assert r.status_code == 204, r.text
    assert r.headers["Upload-Offset"] == str(len(data))
    assert took >= 1.5, f"3 MiB at 1 MiB/s took only {took:.2f}s"
    assert f'edgestore_upload_bodies_total{{path="{path}"}} 1.0' in metrics
    other = "queued" if path == "direct" else "direct"
    assert f'edgestore_upload_bodies_total{{path="{other}"}} 0.0' in metrics


def test_concurrent_uploads_per_client(start) -> None:
    server = start(max_concurrent_uploads="1")
    data = random_bytes(MiB, seed=2)
    with server.client() as c:
        first, second = tus_create(c, len(data)), tus_create(c, len(data))
        slow = TricklingPatch(server.url, first, 0, data, interval=0.05).start()
        try:
            time.sleep(0.5)
            r = tus_patch(c, second, 0, data)
            assert r.status_code == 429, r.text
            assert "1 at a time" in r.json()["message"] and r.headers["Retry-After"] == "1"
            status, _ = slow.finish()
            assert status == 204
        finally:
            slow.close()
        assert tus_patch(c, second, 0, data).status_code == 204


def test_an_ietf_creation_with_content_takes_an_upload_slot(start) -> None:
    """The IETF draft's creation carries the representation's own Content-Type (image/png,
    or none): it streams a body like any tus creation-with-upload and must count."""
    draft = [(b"upload-draft-interop-version", b"6"), (b"content-type", b"image/png")]
    assert is_upload(_scope("POST", headers=[*draft, (b"content-length", b"5")]))
    assert is_upload(_scope("POST", headers=[*draft, (b"transfer-encoding", b"chunked")]))
    assert not is_upload(_scope("POST", headers=[*draft, (b"content-length", b"0")]))
    server = start(max_concurrent_uploads="1")
    data = random_bytes(MiB, seed=4)
    with server.client() as c:
        first = tus_create(c, len(data))
        slow = TricklingPatch(server.url, first, 0, data, interval=0.05).start()
        try:
            time.sleep(0.5)
            headers = {
                "Upload-Draft-Interop-Version": "6",
                "Upload-Complete": "?1",
                "Content-Type": "image/png",
            }
            r = c.post("/files/", content=data, headers=headers)
            assert r.status_code == 429, r.text
            status, _ = slow.finish()
            assert status == 204
        finally:
            slow.close()


@pytest.mark.redis
def test_two_nodes_share_limits_through_redis(start, redis_url: str) -> None:
    env = {"rate_limit": "6/minute", "rate_limit_storage": redis_url, "max_concurrent_uploads": "1"}
    a, b = start(**env), start(**env)
    with a.client() as ca, b.client() as cb:
        assert _burst(ca, 3) == [200] * 3
        assert _burst(cb, 3) == [200] * 3
        assert ca.get("/objects").status_code == 429
        assert cb.get("/objects").status_code == 429


@pytest.mark.redis
def test_upload_slots_are_shared_through_redis(start, redis_url: str) -> None:
    env = {"rate_limit_storage": redis_url, "max_concurrent_uploads": "1"}
    a, b = start(**env), start(**env)
    data = random_bytes(MiB, seed=4)
    with a.client() as ca, b.client() as cb:
        first, second = tus_create(ca, len(data)), tus_create(cb, len(data))
        slow = TricklingPatch(a.url, first, 0, data, interval=0.05).start()
        try:
            time.sleep(0.5)
            assert tus_patch(cb, second, 0, data).status_code == 429
            assert slow.finish()[0] == 204
        finally:
            slow.close()
        assert tus_patch(cb, second, 0, data).status_code == 204


@pytest.mark.redis
def test_bandwidth_through_redis(start, redis_url: str) -> None:
    server = start(upload_bandwidth=str(2 * MiB), rate_limit_storage=redis_url)
    data = random_bytes(4 * MiB, seed=5)
    with server.client() as c:
        url = tus_create(c, len(data))
        began = time.monotonic()
        assert tus_patch(c, url, 0, data).status_code == 204
        assert time.monotonic() - began >= 1.0


def test_unreachable_redis_stops_the_server_with_a_clear_error(tmp_path: Path) -> None:
    server = ServerProcess(
        home=tmp_path / "home",
        database_url=f"sqlite:///{tmp_path / 'meta.db'}",
        env_extra={"EDGESTORE_RATE_LIMIT": "5/second",
                   "EDGESTORE_RATE_LIMIT_STORAGE": "redis://:topsecret@127.0.0.1:1/0"},
    )  # fmt: skip
    with pytest.raises(RuntimeError, match="server exited early"):
        server.start(timeout=20)
    assert "rate_limit_storage (EDGESTORE_RATE_LIMIT_STORAGE)" in server.log()
    assert "unreachable" in server.log() and "topsecret" not in server.log()


@pytest.mark.parametrize(
    ("setting", "value", "words"),
    [
        ("rate_limit", "lots", "rate_limit (EDGESTORE_RATE_LIMIT)"),
        ("rate_limit_storage", "mongodb://db", "use memory:// or redis://"),
        ("trusted_proxies", "10.0.0.0/8,proxy.example", "not an IP address or CIDR"),
        ("upload_bandwidth", "-1", "upload_bandwidth"),
    ],
)
def test_limit_settings_are_checked_when_loaded(setting: str, value: str, words: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(words)):
        load_settings(**{setting: value})
    assert load_settings(rate_limit="").rate_limit == ""
    assert load_settings(trusted_proxies="10.0.0.0/8, ::1").trusted_proxies == ["10.0.0.0/8", "::1"]
