"""What every request handler reaches through `request.app.state.services`."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from fastapi import Request

from edgestore.api.metrics import Metrics
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
    uploads: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(
            MAX_STREAMING_UPLOADS, thread_name_prefix="edgestore-upload"
        )
    )

    def close(self) -> None:
        self.uploads.shutdown(wait=True)


def services(request: Request) -> Services:
    return request.app.state.services
