"""The `edgestore` command: global options, the sub-commands, and the error → exit-code table."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from edgestore import __version__
from edgestore import errors as e
from edgestore.cli import output
from edgestore.cli.context import CliState

app = typer.Typer(
    name="edgestore",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Markdown joins a docstring's wrapped lines into one paragraph; typer's "rich" mode
    # printed each line break, so help text broke mid-sentence on any terminal width.
    rich_markup_mode="markdown",
)

# The one error → exit-code table of the CLI (HTTP statuses live in api/errors.py).
EXIT_CODES: list[tuple[type[e.EdgestoreError], int]] = [
    (e.ConfigError, 78),  # EX_CONFIG
    (e.StoreParamsMismatch, 78),
    (e.SelfTestFailed, 70),  # EX_SOFTWARE
    (e.NotFound, 3),
    (e.UploadGone, 3),
    (e.InvalidInput, 4),
    (e.SourceChanged, 4),
    (e.OffsetConflict, 5),
    (e.UploadLocked, 5),
    (e.UploadStateError, 5),
    (e.PreconditionFailed, 5),
    (e.MissingChunks, 5),
    (e.MetadataBehind, 5),
    (e.StorageFull, 6),
    (e.StorageError, 6),
    (e.TransferInterrupted, 7),
    (e.Unauthorized, 8),
    (e.Forbidden, 8),
    (e.QuotaExceeded, 9),
    (e.RateLimited, 9),
    (e.ServerBusy, 9),
]


def exit_code_for(exc: e.EdgestoreError) -> int:
    for cls, code in EXIT_CODES:
        if isinstance(exc, cls):
            return code
    return 1


def _version(value: bool) -> None:
    if value:
        output.out.print(f"edgestore {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", "-c", help="TOML config file (else $EDGESTORE_CONFIG).", show_default=False
        ),
    ] = None,
    home: Annotated[
        Path | None,
        typer.Option(
            "--home",
            help="Store home (else $EDGESTORE_HOME, else the config file's home, else ./data).",
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log details.")] = False,
    _show_version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show version.")
    ] = False,
) -> None:
    """Self-hosted upload and storage server for huge files.

    serve runs the server, upload and download talk to one; every other command works on
    the store in --home (its database and data dirs) directly.
    """
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    ctx.obj = CliState(config_file=config, home=home)


def _register() -> None:
    from edgestore.cli import (  # noqa: F401  (they register their commands)
        backup,
        keys,
        local,
        maintain,
        presign,
        remote,
        serve,
    )


_register()


def main() -> None:
    """Console entry point: usage errors are typer's; domain errors map to exit codes here."""
    try:
        app()
    except e.EdgestoreError as exc:
        output.error(exc.message)
        sys.exit(exit_code_for(exc))
    except KeyboardInterrupt:
        output.error("interrupted")
        sys.exit(130)
