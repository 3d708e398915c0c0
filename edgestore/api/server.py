"""Running the app under uvicorn, with a shutdown that cuts uploads cleanly.

On SIGTERM/SIGINT, uploads still streaming are told to stop at once: each keeps (makes
durable) every byte it received and answers 503, so its client resumes from HEAD against this
node after a restart, or another. Then uvicorn drains the remaining requests.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from pathlib import Path
from types import FrameType

import uvicorn

from edgestore.api.app import create_app
from edgestore.api.auth import check_bind
from edgestore.api.logs import configure
from edgestore.api.protocol import BoundedHttpToolsProtocol
from edgestore.config import Settings
from edgestore.errors import ConfigError

log = logging.getLogger("edgestore.server")
GRACEFUL_SECONDS = 20


class _Server(uvicorn.Server):
    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """SIGTERM/SIGINT: ask the running appends to stop, keeping what they received.

        Not from here: a signal handler runs between two bytecodes of whatever the main
        thread was doing, possibly inside the event loop's `queue.put` to an upload's body
        bridge, holding the very lock that interrupting that upload takes: the main thread
        then waited on itself and the server never stopped (seen once in CI). The loop runs
        the stop as a callback instead, outside any such section.
        """
        services = getattr(self.config.app.state, "services", None)  # type: ignore[union-attr]
        if services is not None:
            stop = functools.partial(services.engine.uploads.stop_all, "server is shutting down")
            try:
                asyncio.get_running_loop().call_soon_threadsafe(stop)  # takes no lock
            except RuntimeError:  # no loop running in this thread (starting up, say)
                threading.Thread(target=stop, name="edgestore-stop", daemon=True).start()
        super().handle_exit(sig, frame)


def run(
    settings: Settings, *, ssl_certfile: str | None = None, ssl_keyfile: str | None = None
) -> None:
    check_bind(settings)
    ssl_certfile = ssl_certfile or _tls_file(settings.tls_certfile, "tls_certfile")
    ssl_keyfile = ssl_keyfile or _tls_file(settings.tls_keyfile, "tls_keyfile")
    configure(settings.log_level, settings.log_format)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        # asyncio's loop, not uvloop: it reads into the buffer the protocol offers (2 MiB),
        # where uvloop reads 256 KiB per wakeup of the GIL-contended loop (see api/protocol.py)
        loop="asyncio",
        http=BoundedHttpToolsProtocol,  # httptools, large reads, a cap on request heads
        lifespan="on",
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=GRACEFUL_SECONDS,
        timeout_keep_alive=75,
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
        # X-Forwarded-For/-Proto are believed from trusted_proxies only (uvicorn's own
        # default trusts 127.0.0.1, which would let any local client pick its rate-limit id).
        proxy_headers=bool(settings.trusted_proxies),
        forwarded_allow_ips=list(settings.trusted_proxies) or None,
    )
    _Server(config).run()


def _tls_file(path: Path | None, name: str) -> str | None:
    if path is None:
        return None
    if not path.is_file():
        raise ConfigError(f"{name} (EDGESTORE_{name.upper()}) {path} is not a readable file")
    return str(path)
