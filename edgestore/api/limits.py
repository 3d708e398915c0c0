"""Per-client limits: requests per second, upload bandwidth, uploads streaming at once.

A client is its API key, else its IP address (the real one behind a trusted proxy: uvicorn
rewrites the peer address from X-Forwarded-For only for `trusted_proxies`, see
api/server.py). Counters live in the `limits` library's storage: in memory per node by
default, or on Redis so that every node counts the same client together.

- Requests: a sliding window per client; over it → 429 with Retry-After.
- Bandwidth: request bodies are metered as they stream; a client over its rate is *slowed
  down* (the body is read more slowly, TCP pushes back) rather than refused, because tus
  clients treat a 4xx in the middle of a PATCH as fatal, while a slow PATCH just finishes.
- Concurrent uploads: a lease per streaming upload request (a Redis sorted set when shared,
  so a node that dies mid-upload frees its slots when their leases lapse) → 429.

If Redis goes away while serving, limits fail open (logged), uploads keep working: a call
gives up after REDIS_TIMEOUT, and for RETRY_AFTER_FAILURE after a failure no request waits on
Redis at all (a partition would otherwise cost every request that timeout, once per call).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from limits import RateLimitItem, RateLimitItemPerSecond, parse_many
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.storage import storage_from_string
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edgestore.api import direct
from edgestore.api.errors import error_response
from edgestore.config import Settings
from edgestore.errors import RateLimited, StorageUnavailable
from edgestore.logonce import OncePer

log = logging.getLogger("edgestore.limits")

MiB = 1024 * 1024
EXEMPT_PATHS = frozenset({"/healthz", "/readyz"})  # load balancers probe these constantly
UPLOAD_CONTENT_TYPES = ("application/offset+octet-stream", "application/octet-stream")
LEASE_SECONDS = 120.0  # an upload slot not renewed for this long is free again
WARN_EVERY = 30.0
REDIS_TIMEOUT = 2.0  # seconds a Redis call (or connection) may take before failing open
RETRY_AFTER_FAILURE = 5.0  # after a failure, Redis is left alone (limits open) this long

# Take a slot if the client holds fewer than ARGV[3] unexpired ones (atomic on the server).
_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""

# Renew slot ARGV[2] to expire at ARGV[1], if still held (a late renewal never brings a
# released slot back), and the set with it: a renewal alone must keep a long upload's set.
_RENEW = """
if not redis.call('ZSCORE', KEYS[1], ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""


def _redacted(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def client_of(scope: Scope) -> str:
    """The client a request counts against: its API key, else its address (an IPv6 one by
    its /64, the least a provider hands one site: per address, one client could take 2^64
    budgets by changing its address each request)."""
    identity = scope.get("state", {}).get("identity")
    key_id = getattr(identity, "key_id", None)
    if key_id:
        return f"key:{key_id}"
    client = scope.get("client")
    return address_client(client[0] if client else "unknown")


def address_client(host: str) -> str:
    """The client an address counts as (see client_of)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return f"ip:{host}"  # a unix socket's peer, a test client's name
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return f"ip:{address.ipv4_mapped}"
        return f"ip:{ipaddress.IPv6Network((address, 64), strict=False)}"
    return f"ip:{address}"


def is_upload(scope: Scope) -> bool:
    method = scope["method"]
    if method in ("PATCH", "PUT"):
        return True
    if method != "POST":
        return False
    headers = Headers(scope=scope)
    if "upload-draft-interop-version" in headers:
        # An IETF draft creation: its content carries the representation's own Content-Type
        # (any, or none), so what makes it an upload is that it has content.
        length = headers.get("content-length")
        if length is not None:
            return length.strip() not in ("", "0")
        return "chunked" in headers.get("transfer-encoding", "").lower()
    content_type = headers.get("content-type", "").split(";")[0].strip().lower()
    return content_type in UPLOAD_CONTENT_TYPES


class Limiter:
    """The counters, in memory or on Redis; started and stopped with the app."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.request_items: list[RateLimitItem] = (
            parse_many(settings.rate_limit) if settings.rate_limit else []
        )
        self.bandwidth = settings.upload_bandwidth
        self.bandwidth_item = (
            RateLimitItemPerSecond(self.bandwidth, 1, namespace="edgestore-bytes")
            if self.bandwidth
            else None
        )
        # Charge at most a quarter second's worth at once, so a slow client still moves.
        self.step = min(MiB, max(self.bandwidth // 4, 1)) if self.bandwidth else 0
        self.max_uploads = settings.max_concurrent_uploads
        self.namespace = "edgestore"
        self.storage: Any = None
        self.strategy: SlidingWindowCounterRateLimiter | None = None
        self.redis: Any = None
        self._acquire: Any = None
        self._renew: Any = None
        self._down_until = 0.0  # monotonic: until then, the storage is not asked (failed)
        self._local_slots: Counter[str] = Counter()
        self._warn = OncePer(WARN_EVERY)  # a storage that stays down: said every 30 s

    @property
    def shared(self) -> bool:
        return self.settings.rate_limit_storage.startswith("redis")

    async def start(self, namespace: str) -> None:
        """Connect the storage; an unreachable Redis stops the server with a clear error."""
        self.namespace = f"edgestore:{namespace}"
        url = self.settings.rate_limit_storage
        if not (self.request_items or self.bandwidth_item or self.max_uploads):
            return
        options: dict[str, Any] = {}
        timeouts = {"socket_timeout": REDIS_TIMEOUT, "socket_connect_timeout": REDIS_TIMEOUT}
        if self.shared:
            options = {"implementation": "redispy", "key_prefix": self.namespace, **timeouts}
        self.storage = storage_from_string("async+" + url, **options)
        self.strategy = SlidingWindowCounterRateLimiter(self.storage)
        if not self.shared:
            return
        import redis.asyncio as aioredis

        self.redis = aioredis.from_url(url, **timeouts)
        self._acquire = self.redis.register_script(_ACQUIRE)
        self._renew = self.redis.register_script(_RENEW)
        try:
            await self.redis.ping()
        except Exception as exc:
            await self.stop()
            raise StorageUnavailable(
                f"rate_limit_storage (EDGESTORE_RATE_LIMIT_STORAGE) {_redacted(url)} is "
                f"unreachable: {exc}"
            ) from None

    async def stop(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()
            self.redis = None
        if self.shared and self.storage is not None:
            bridge = getattr(self.storage, "bridge", None)
            client = getattr(bridge, "storage", None)
            if client is not None and hasattr(client, "aclose"):
                await client.aclose()

    def _down(self) -> bool:
        """Whether the storage failed a moment ago: then limits are open without asking it."""
        return time.monotonic() < self._down_until

    def _fail_open(self, what: str) -> None:
        self._down_until = time.monotonic() + RETRY_AFTER_FAILURE
        if self._warn.due("storage"):
            log.warning("rate-limit storage failed (%s); not limiting for now", what, exc_info=True)

    # --- requests ---------------------------------------------------------------------------

    async def check_request(self, client: str) -> None:
        """Count one request; RateLimited (429) with Retry-After if the client is over."""
        if not self.request_items or self.strategy is None or self._down():
            return
        for item in self.request_items:
            try:
                if await self.strategy.hit(item, self.namespace, client):
                    continue
                stats = await self.strategy.get_window_stats(item, self.namespace, client)
            except Exception:
                self._fail_open("request count")
                return
            wait = min(max(stats.reset_time - time.time(), 1.0), float(item.get_expiry()))
            raise RateLimited(
                f"too many requests: this client is limited to {item}; retry in {wait:.0f} s",
                retry_after=wait,
            )

    # --- bandwidth --------------------------------------------------------------------------

    def metered(self, receive: Receive, client: str) -> Receive:
        """`receive`, slowed down to the client's bandwidth as body bytes arrive."""
        pending = 0

        async def receive_metered() -> Message:
            nonlocal pending
            message = await receive()
            if message["type"] == "http.request":
                pending += len(message.get("body", b""))
                while pending >= self.step:
                    await self.spend(client, self.step)
                    pending -= self.step
                if not message.get("more_body", False) and pending:
                    await self.spend(client, pending)
                    pending = 0
            return message

        return receive_metered

    async def spend(self, client: str, nbytes: int) -> None:
        """Charge `nbytes` of body to the client; returns once they may pass."""
        assert self.strategy is not None and self.bandwidth_item is not None
        while not self._down():
            try:
                item = self.bandwidth_item
                if await self.strategy.hit(item, self.namespace, client, cost=nbytes):
                    return
            except Exception:
                self._fail_open("bandwidth")
                return
            await asyncio.sleep(max(nbytes / self.bandwidth, 0.01))

    # --- concurrent uploads -----------------------------------------------------------------

    async def acquire_upload(self, client: str) -> str | None:
        """A slot for one streaming upload; RateLimited (429) if the client holds them all."""
        if not self.max_uploads:
            return None
        token = uuid.uuid4().hex
        if self.redis is None:
            if self._local_slots[client] >= self.max_uploads:
                self._refuse_upload()
            self._local_slots[client] += 1
            return token
        if self._down():
            return None
        now = time.time()
        try:
            taken = await self._acquire(
                keys=[f"{self.namespace}:uploads:{client}"],
                args=[now, now + LEASE_SECONDS, self.max_uploads, token, int(LEASE_SECONDS * 2)],
            )
        except Exception:
            self._fail_open("upload slots")
            return None
        if not taken:
            self._refuse_upload()
        return token

    def _refuse_upload(self) -> None:
        raise RateLimited(
            f"too many uploads at once: this client may stream {self.max_uploads} at a time; "
            "retry when one has finished",
            retry_after=1,
        )

    async def renew_upload(self, client: str, token: str) -> None:
        if self.redis is not None and not self._down():
            try:
                await self._renew(
                    keys=[f"{self.namespace}:uploads:{client}"],
                    args=[time.time() + LEASE_SECONDS, token, int(LEASE_SECONDS * 2)],
                )
            except Exception:
                self._fail_open("upload slots")

    async def release_upload(self, client: str, token: str) -> None:
        if self.redis is None:
            self._local_slots[client] -= 1
            if self._local_slots[client] <= 0:
                del self._local_slots[client]
            return
        if self._down():
            return  # its lease lapses by itself
        try:
            await self.redis.zrem(f"{self.namespace}:uploads:{client}", token)
        except Exception:
            self._fail_open("upload slots")


class Throttle:
    """The ASGI middleware: runs after authentication, so it knows the API key."""

    def __init__(self, app: ASGIApp, *, limiter: Limiter) -> None:
        self.app = app
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in EXEMPT_PATHS:
            await self.app(scope, receive, send)
            return
        limiter = self.limiter
        client = client_of(scope)
        slot = None
        try:
            await limiter.check_request(client)
            if is_upload(scope):
                slot = await limiter.acquire_upload(client)
        except RateLimited as exc:
            await error_response(exc)(scope, receive, send)
            return
        if limiter.bandwidth_item is not None:
            # Both ways a body can arrive pass its bytes through the meter.
            scope = direct.metered(scope, lambda n: limiter.spend(client, n), limiter.step)
            receive = limiter.metered(receive, client)
        if slot is None:
            await self.app(scope, receive, send)
            return
        renewing = _Renewing(lambda: limiter.renew_upload(client, slot)) if limiter.redis else None
        held = True

        async def release() -> None:
            nonlocal held
            if held:
                held = False
                if renewing is not None:
                    await renewing.stop()  # no renewal may land after the release
                await limiter.release_upload(client, slot)

        async def send_releasing(message: Message) -> None:
            # Free the slot before the response goes out: a client that sends its next
            # request as soon as it has the answer (a tus client's next PATCH, on this node or
            # another) must not find its own finished upload still counted (429). The server
            # writes the status line and headers at the start, and a 204 is whole with them.
            if message["type"] == "http.response.start":
                await release()
            await send(message)

        try:
            await self.app(scope, receive, send_releasing)
        finally:
            await release()


class _Renewing:
    """Renews an upload slot's lease every LEASE_SECONDS / 4 while its request runs.

    On a timer rather than as body bytes arrive, so that a body read straight into the
    engine (api/direct.py) keeps its slot too, and so does a request whose engine work
    outlasts its body. A node that dies stops renewing, and its slots lapse.
    """

    def __init__(self, renew: Callable[[], Awaitable[None]]) -> None:
        self._renew = renew
        self._stopping = asyncio.Event()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._stopping.wait(), LEASE_SECONDS / 4)
                return
            except TimeoutError:
                await self._renew()

    async def stop(self) -> None:
        """Stop, letting a renewal under way finish first (never cancelled half-sent)."""
        self._stopping.set()
        await asyncio.shield(self._task)


__all__ = ["Limiter", "Throttle", "client_of", "is_upload"]
