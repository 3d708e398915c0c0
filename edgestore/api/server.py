"""Running the app under uvicorn, with a shutdown that cuts uploads cleanly.

On SIGTERM/SIGINT, uploads still streaming are told to stop at once: each keeps (makes
durable) every byte it received and answers 503, so its client resumes from HEAD against this
node after a restart, or another. Then uvicorn drains the remaining requests.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import ssl
import sys
import threading
from pathlib import Path
from types import FrameType

import uvicorn
from fastapi import FastAPI
from uvicorn.config import STARTUP_FAILURE

from edgestore.api import connections
from edgestore.api.app import create_app
from edgestore.api.auth import check_bind
from edgestore.api.logs import configure
from edgestore.api.protocol import configured
from edgestore.config import Settings
from edgestore.engine import Engine
from edgestore.errors import ConfigError

log = logging.getLogger("edgestore.server")
GRACEFUL_SECONDS = 20


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, *, json_logs: bool = False) -> None:
        super().__init__(config)
        self.json_logs = json_logs  # what it prints itself goes through the log too

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
            reason = "server is shutting down"
            try:
                loop = asyncio.get_running_loop()
                loop.call_soon_threadsafe(services.begin_shutdown, reason)  # takes no lock
            except RuntimeError:  # no loop running in this thread (starting up, say)
                stop = functools.partial(services.engine.uploads.stop_all, reason)
                threading.Thread(target=stop, name="edgestore-stop", daemon=True).start()
        super().handle_exit(sig, frame)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        asyncio.get_running_loop().set_exception_handler(connections.AcceptErrorLog())
        await super().startup(sockets)
        if self.started and self.config.port == 0:  # the banner could only say PORT
            port = self.servers[0].sockets[0].getsockname()[1]
            if self.json_logs:
                log.info("edgestore listening on port %d", port)  # one JSON line, like the rest
            else:
                sys.stderr.write(f"edgestore listening on port {port}\n")
                sys.stderr.flush()


def run(
    settings: Settings,
    *,
    ssl_certfile: str | None = None,
    ssl_keyfile: str | None = None,
    banner: str | None = None,
) -> None:
    """Serve until a signal; `banner` (where it listens) is logged as one record once logs
    are configured: with EDGESTORE_LOG_FORMAT=json a plain text line would break the stream."""
    check_bind(settings)
    ssl_certfile = ssl_certfile or _tls_file(settings.tls_certfile, "tls_certfile")
    ssl_keyfile = ssl_keyfile or _tls_file(settings.tls_keyfile, "tls_keyfile")
    if ssl_certfile is not None:
        _check_tls_pair(ssl_certfile, ssl_keyfile)
    configure(settings.log_level, settings.log_format)
    if banner is not None:
        log.info("%s", banner)
    # The store is opened here rather than in the app's start-up, so that one that cannot
    # open (parameters that disagree with the store's, a database that does not answer) is
    # the CLI's error: a message and the exit code of its kind, not uvicorn's traceback and
    # its exit code 3 (which reads as "not found").
    engine = Engine.open(settings)
    try:
        _serve(create_app(settings, engine), settings, ssl_certfile, ssl_keyfile)
    finally:
        engine.close()


def _serve(
    app: FastAPI, settings: Settings, ssl_certfile: str | None, ssl_keyfile: str | None
) -> None:
    open_files = connections.open_files_limit()
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        # asyncio's loop, not uvloop: it reads into the buffer the protocol offers (2 MiB),
        # where uvloop reads 256 KiB per wakeup of the GIL-contended loop (see api/protocol.py)
        loop="asyncio",
        # httptools, large reads, a cap on request heads, a deadline for them and for a
        # client taking response bytes, and a cap on connections below the open files limit
        http=configured(
            settings.request_head_timeout,
            settings.send_timeout,
            connections.connection_cap(open_files),
            connections.ConnectionCounts(
                settings.max_connections_per_client, settings.trusted_proxies
            ),
        ),
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
    try:
        _Server(config, json_logs=settings.log_format == "json").run()
    except SystemExit as exc:
        if exc.code == STARTUP_FAILURE:  # uvicorn logged why (say, the address is in use)
            raise SystemExit(1) from None
        raise


def _check_tls_pair(certfile: str, keyfile: str | None) -> None:
    """A certificate and key that do not load stop the start with a message, as the docs say."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(certfile, keyfile)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(
            f"tls_certfile {certfile} and tls_keyfile {keyfile} (EDGESTORE_TLS_CERTFILE or "
            "serve --certfile, EDGESTORE_TLS_KEYFILE or serve --keyfile) are not a PEM "
            f"certificate chain and its private key: {exc}"
        ) from None


def _tls_file(path: Path | None, name: str) -> str | None:
    if path is None:
        return None
    if not path.is_file():
        flag = "--" + name.removeprefix("tls_")  # either may have set it: name both
        raise ConfigError(
            f"{name} (EDGESTORE_{name.upper()} or serve {flag}) {path} is not a readable file"
        )
    return str(path)
