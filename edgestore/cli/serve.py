"""`edgestore serve`: the upload server."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgestore.cli import output
from edgestore.cli.context import CliState
from edgestore.cli.main import app


@app.command()
def serve(
    ctx: typer.Context,
    host: Annotated[
        str | None, typer.Option(help="Address to listen on (default 127.0.0.1).")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Port (default 8080; 0 picks a free one).")
    ] = None,
    certfile: Annotated[
        Path | None, typer.Option(help="PEM certificate (chain): serve HTTPS.", show_default=False)
    ] = None,
    keyfile: Annotated[
        Path | None, typer.Option(help="PEM private key of --certfile.", show_default=False)
    ] = None,
    no_auth: Annotated[
        bool,
        typer.Option("--no-auth", help="No credentials needed: local experiments only (loopback)."),
    ] = False,
) -> None:
    """Run the upload server: tus at /files/, objects at /objects/, metrics at /metrics."""
    from edgestore.api.auth import check_bind
    from edgestore.api.server import run

    state: CliState = ctx.obj
    settings = state.settings(
        flags={
            "host": "--host",
            "port": "--port",
            "tls_certfile": "--certfile",
            "tls_keyfile": "--keyfile",
            "auth_enabled": "--no-auth",
        },
        host=host,
        port=port,
        tls_certfile=certfile,
        tls_keyfile=keyfile,
        auth_enabled=False if no_auth else None,
    )
    check_bind(settings)
    scheme = "https" if settings.tls_certfile else "http"
    host = f"[{settings.host}]" if ":" in settings.host else settings.host  # IPv6
    base = f"{scheme}://{host}:{settings.port or 'PORT'}"
    dirs = len(settings.resolved_data_dirs)
    where = "configured" if settings.data_dirs else f"under {settings.home}"
    banner = (
        f"edgestore serving {settings.resolved_database_url.split('://')[0]} metadata, "
        f"{dirs} data dirs {where}\n"
        f"  upload (tus):  {base}/files/\n"
        f"  download:      {base}/objects/{{bucket}}/{{key}}   list: {base}/objects\n"
        f"  health:        {base}/healthz  {base}/readyz  metrics: {base}/metrics\n"
        f"  API docs:      {base}/docs"
        + (
            "\n  PORT:          picked at start (--port 0), printed once listening"
            if not settings.port
            else ""
        )
    )
    if settings.log_format == "json":  # one JSON object per line: the banner is a record too
        run(settings, banner=banner)
    else:
        output.note(banner)
        run(settings)
