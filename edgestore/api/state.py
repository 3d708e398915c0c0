"""What every request handler reaches through `request.app.state.services`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from fastapi import Request

from edgestore.api.metrics import Metrics
from edgestore.api.readiness import Readiness
from edgestore.api.slots import Slots
from edgestore.config import Settings
from edgestore.engine import Engine

# Upload requests each hold a thread while their body streams in (most of it waiting on the
# socket); this caps how many can stream at once before new ones queue.
MAX_STREAMING_UPLOADS = 64


@dataclass
class Services:
    settings: Settings
    engine: Engine
    metrics: Metrics = field(default_factory=Metrics)
    # What /readyz last found wrong (full text), so its log says each change once.
    readiness_problems: tuple[str, ...] = ()
    readiness: Readiness = field(init=False)
    uploads: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(
            MAX_STREAMING_UPLOADS, thread_name_prefix="edgestore-upload"
        )
    )

    # Set once the server begins to shut down: a request still waiting on its client's body
    # stops waiting (503), as a streaming append does, instead of holding the shutdown.
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    # Object bodies being sent (api/download.py): each holds its current chunk while its
    # client reads, outside the engine's read-ahead budget.
    downloads: Slots = field(init=False)
    # Told at the shutdown signal too, not only once the drain of requests is over (up to
    # its 20 s): the upkeep, which would otherwise go on starting rounds meanwhile.
    on_shutdown: list[Callable[[], None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.downloads = Slots(self.settings.max_concurrent_downloads)
        self.readiness = Readiness(self.engine)

    def begin_shutdown(self, reason: str) -> None:
        """Refuse new appends, stop running ones, bodies being read and the upkeep (on the
        event loop)."""
        self.engine.uploads.stop_all(reason)
        self.stopping.set()
        for stop in self.on_shutdown:
            stop()

    def close(self) -> None:
        self.readiness.close()
        self.uploads.shutdown(wait=True)


def services(request: Request) -> Services:
    return request.app.state.services
