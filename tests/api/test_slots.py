"""Slots: at most N holders at once, the rest waiting their turn briefly and in order; a
waiter that gives up or is cancelled never takes a slot with it."""

from __future__ import annotations

import asyncio

import pytest

from edgestore.api.slots import Slots


def test_at_most_limit_holders_then_a_brief_wait() -> None:
    async def run() -> None:
        slots = Slots(2)
        first = await slots.take(wait=0.05)
        second = await slots.take(wait=0.05)
        assert first is not None and second is not None and slots.held == 2
        assert await slots.take(wait=0.05) is None  # none freed up in time
        first()
        first()  # releasing twice frees one slot, once
        assert slots.held == 1
        third = await slots.take(wait=0.05)
        assert third is not None and slots.held == 2
        second()
        third()
        assert slots.held == 0

    asyncio.run(run())


def test_a_freed_slot_goes_to_the_longest_waiting() -> None:
    async def run() -> None:
        slots = Slots(1)
        held = await slots.take(wait=0)
        assert held is not None
        order: list[str] = []

        async def wait_for_it(name: str) -> None:
            release = await slots.take(wait=5)
            assert release is not None
            order.append(name)
            await asyncio.sleep(0.01)
            release()

        tasks = [asyncio.create_task(wait_for_it(n)) for n in ("a", "b", "c")]
        await asyncio.sleep(0.05)
        assert await slots.take(wait=0) is None  # no jumping the queue
        held()
        await asyncio.gather(*tasks)
        assert order == ["a", "b", "c"] and slots.held == 0

    asyncio.run(run())


def test_a_waiter_that_gives_up_or_is_cancelled_takes_no_slot() -> None:
    async def run() -> None:
        slots = Slots(1)
        held = await slots.take(wait=0)
        assert held is not None
        assert await slots.take(wait=0.01) is None
        waiter = asyncio.create_task(slots.take(wait=5))
        await asyncio.sleep(0.01)
        waiter.cancel()  # the client went away while waiting
        with pytest.raises(asyncio.CancelledError):
            await waiter
        held()
        assert slots.held == 0
        again = await slots.take(wait=0)
        assert again is not None and slots.held == 1

    asyncio.run(run())


def test_zero_means_unlimited() -> None:
    async def run() -> None:
        slots = Slots(0)
        releases = [await slots.take(wait=0) for _ in range(1000)]
        assert all(r is not None for r in releases)

    asyncio.run(run())
