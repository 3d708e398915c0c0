"""Slots: at most N holders at once; the others wait their turn in order, briefly.

Event-loop only (no locks): taking and releasing happen on the server's loop. A freed slot
passes straight to the longest waiting request, so none jumps the queue.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

Release = Callable[[], None]


class Slots:
    def __init__(self, limit: int) -> None:
        self.limit = limit  # 0: unlimited
        self.held = 0
        self._waiting: deque[asyncio.Future[None]] = deque()

    async def take(self, wait: float) -> Release | None:
        """A slot's release (idempotent), or None when none freed up within `wait` s."""
        if not self.limit:
            return _nothing
        if self.held < self.limit and not self._waiting:
            self.held += 1
            return self._releaser()
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(turn)
        try:
            await asyncio.wait({turn}, timeout=wait)
        except BaseException:  # cancelled: its client went away while it waited
            self._give_up(turn)
            raise
        if turn.done():  # handed over by a release (even one at the very deadline)
            return self._releaser()
        self._give_up(turn)
        return None

    def _give_up(self, turn: asyncio.Future[None]) -> None:
        if turn.done() and not turn.cancelled():
            self._release()  # handed over just now: pass it on
            return
        turn.cancel()
        self._waiting.remove(turn)

    def _release(self) -> None:
        while self._waiting:
            turn = self._waiting.popleft()
            if not turn.done():
                turn.set_result(None)  # the slot changes hands; `held` stays
                return
        self.held -= 1

    def _releaser(self) -> Release:
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._release()

        return release


def _nothing() -> None:
    pass
