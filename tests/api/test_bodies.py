"""Bodies streamed the queued way (api/bodies.py: chunked requests): a slow engine is not a
quiet client, and a client that leaves has every byte that reached the server kept."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from starlette.requests import ClientDisconnect

from edgestore.api.bodies import BLOCK, run_with_body
from edgestore.errors import TransferInterrupted
from tests.helpers import KiB, random_bytes


def _run(
    body: AsyncIterator[bytes],
    work: Callable[[Iterator[bytes], Callable[[str], None]], bytes],
    *,
    idle_timeout: float = 1.0,
) -> bytes:
    async def scenario() -> bytes:
        with ThreadPoolExecutor(1) as pool:
            return await run_with_body(
                pool, body, work, idle_timeout=idle_timeout, on_received=lambda _n: None
            )

    return asyncio.run(scenario())


def _collect(rest_after: int | None = None, rest: float = 0.0):
    """The engine's side: joins the blocks; after `rest_after` bytes it stops reading for
    `rest` seconds, once (storing chunks on a slow disk). Interruptions are recorded."""
    seen: dict[str, object] = {}

    def work(blocks: Iterator[bytes], _interrupt: Callable[[str], None]) -> bytes:
        out = bytearray()
        rested = False
        try:
            for block in blocks:
                out += block
                if rest_after is not None and len(out) >= rest_after and not rested:
                    rested = True
                    time.sleep(rest)
        except TransferInterrupted as exc:
            seen["interrupted"] = str(exc)
            seen["kept"] = bytes(out)
            raise
        return bytes(out)

    return work, seen


def test_an_engine_busy_longer_than_the_idle_timeout_is_not_a_quiet_client() -> None:
    """While the engine stores what it has, the queue is full and the loop stops reading:
    the client's silence is the server's doing. The idle clock must not run then (it did,
    and a chunked upload on a busy disk was cut with "no bytes from the client for 60s")."""
    data = random_bytes(3 * BLOCK * 4, seed=1)

    async def body() -> AsyncIterator[bytes]:
        for i in range(0, len(data), 64 * KiB):  # a steady client, a piece every 5 ms
            yield data[i : i + 64 * KiB]
            await asyncio.sleep(0.005)

    work, seen = _collect(rest_after=BLOCK, rest=2.5)  # idle_timeout 1 s, checked each second
    assert _run(body(), work) == data, seen


def test_a_client_that_goes_quiet_is_still_cut() -> None:
    data = random_bytes(BLOCK + 5, seed=2)

    async def body() -> AsyncIterator[bytes]:
        yield data
        await asyncio.sleep(30)  # a client that is gone without closing
        yield b"never"

    work, seen = _collect()
    started = time.monotonic()
    with pytest.raises(TransferInterrupted):
        _run(body(), work)
    assert time.monotonic() - started < 5
    assert seen["kept"] == data


def test_a_client_that_disconnects_has_every_byte_received_kept() -> None:
    """Pieces smaller than a batch that arrived before the disconnect reach the engine too
    (they used to be dropped: an upload whose last bytes all arrived was then not complete,
    and the client had to send them again)."""
    data = random_bytes(BLOCK + 100 * KiB, seed=3)

    async def body() -> AsyncIterator[bytes]:
        for i in range(0, len(data), 64 * KiB):
            yield data[i : i + 64 * KiB]
        raise ClientDisconnect()

    work, seen = _collect()
    with pytest.raises(TransferInterrupted):
        _run(body(), work)
    assert seen["kept"] == data


def test_a_body_that_fails_otherwise_ends_the_engine_side_too() -> None:
    """An error of any other kind while the body is read (a bug in a layer below) must not
    leave the engine's thread waiting for the next block, and the request with it: the
    engine is told the body ended early (keeping what arrived), and the error goes on up."""
    data = random_bytes(100 * KiB, seed=4)

    async def body() -> AsyncIterator[bytes]:
        yield data
        raise OSError("a layer below broke")

    work, seen = _collect()

    async def scenario() -> BaseException | None:
        with ThreadPoolExecutor(1) as pool:
            try:
                await run_with_body(pool, body(), work, on_received=lambda _n: None)
            except OSError as exc:
                return exc
        return None

    raised = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert isinstance(raised, OSError) and "a layer below broke" in str(raised)
    assert seen["kept"] == data
