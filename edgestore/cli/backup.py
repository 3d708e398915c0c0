"""`edgestore backup`: snapshot the metadata database while the store runs, or check a
backup (`--check`); see maintenance/backup.py and docs/operations.md."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from edgestore.cli import output
from edgestore.cli.context import CliState
from edgestore.cli.local import JsonOpt
from edgestore.cli.main import app
from edgestore.errors import InvalidInput

if TYPE_CHECKING:
    from edgestore.metadata.backup import BackupContents


@app.command("backup")
def backup(
    ctx: typer.Context,
    path: Annotated[
        Path,
        typer.Argument(
            metavar="OUT|FILE",
            help="The backup file to write, or a directory to write edgestore-TIME.db (or "
            ".pgdump) into; with --check, the backup to check.",
        ),
    ],
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="Check the backup FILE (read-only): integrity, schema revision, and what "
            "it holds. Exits 10 if it is damaged or not restorable by this release.",
        ),
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Overwrite OUT if it exists.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Back up the metadata database while the server runs, or check a backup (--check).

    The metadata is the index without which shards are anonymous; uploads go on meanwhile.
    SQLite: a compact copy of the database file; PostgreSQL:
    a pg_dump custom-format archive (pg_dump must be on PATH). The copy is checked, fsynced
    and renamed into place; a later restore of it is recognised by gc, which then deletes
    nothing until told (see `gc --accept-restored-metadata`)."""
    if check:
        _check(path, json_out)
        return
    from edgestore.maintenance import backup as backups

    state: CliState = ctx.obj
    with state.engine() as engine:
        out = path / backups.default_name(engine.core.db.is_postgres) if path.is_dir() else path
        try:
            with output.status("backing up the metadata…", quiet=json_out):
                report = backups.take(engine, out, force=force)
        except FileExistsError:
            raise typer.BadParameter(
                f"{str(out)!r} exists; give another name, or --force to overwrite it",
                param_hint="'OUT'",
            ) from None
        except OSError as exc:  # no such directory, no room, no permission
            raise InvalidInput(f"cannot write {out}: {exc.strerror or exc}") from None
    if report.warning:
        output.note(f"warning: a restore of this backup may go unrecognised: {report.warning}")
    if json_out:
        output.emit_json(report)
        return
    output.fields(
        [
            ("backup", report.path),
            ("size", output.human_bytes(report.bytes)),
            *_contents_fields(report.contents),
            ("store epoch now", "-" if report.epoch is None else str(report.epoch)),
            ("seconds", f"{report.seconds:.2f}"),
        ]
    )


def _check(path: Path, json_out: bool) -> None:
    from edgestore.metadata.backup import inspect

    if not path.is_file():
        raise typer.BadParameter(f"{str(path)!r} is not a file.", param_hint="'FILE'")
    try:
        with output.status("checking the backup…", quiet=json_out):
            found = inspect(path)
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None
    if json_out:
        output.emit_json(found)
    else:
        output.fields([("backup", found.path), *_contents_fields(found)])
        for problem in found.problems:
            output.error(problem)
    if found.problems:
        raise typer.Exit(10)


def _contents_fields(c: BackupContents) -> list[tuple[str, str]]:
    newest = "-" if c.newest_version_at is None else output.when(c.newest_version_at)
    return [
        ("format", c.format),
        ("schema revision", c.schema_revision or "-"),
        ("store epoch", "-" if c.epoch is None else str(c.epoch)),
        ("objects", f"{c.objects} ({c.versions} versions)"),
        ("logical bytes", output.human_bytes(c.logical_bytes)),
        ("chunks", str(c.chunks)),
        ("newest version", newest),
        ("check", "ok" if not c.problems else "FAILED"),
    ]
