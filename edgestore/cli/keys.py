"""`edgestore keys create|list|revoke`: API keys, managed on the metadata database directly
(the server reads them from there, so no server needs to run)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated

import typer

from edgestore.cli import output
from edgestore.cli.context import CliState
from edgestore.cli.main import app
from edgestore.engine.keys import validate_bucket, validate_key

if TYPE_CHECKING:  # SQLAlchemy loads when a command opens the database, not at CLI start
    from edgestore.metadata import keys as key_rows
    from edgestore.metadata.db import Database

keys_app = typer.Typer(
    help="Create, list and revoke API keys.", no_args_is_help=True, rich_markup_mode="markdown"
)
app.add_typer(keys_app, name="keys")

JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


@contextmanager
def database(ctx: typer.Context) -> Iterator[Database]:
    """The store's metadata database, migrated (a new store gets its tables)."""
    from edgestore.metadata.db import Database

    state: CliState = ctx.obj
    db = Database(state.settings().resolved_database_url)
    try:
        db.migrate()
        yield db
    finally:
        db.close()


def _row(k: key_rows.ApiKey) -> dict[str, object]:
    return {
        "key_id": k.key_id,
        "name": k.name,
        "scopes": sorted(k.scopes),
        "bucket": k.bucket,
        "prefix": k.prefix,
        "created_at": k.created_at,
        "last_used_at": k.last_used_at,
        "revoked_at": k.revoked_at,
    }


@keys_app.command("create")
def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Option("--name", "-n", help="What the key is for.")],
    scope: Annotated[
        list[str],
        typer.Option("--scope", "-s", help="upload, read or admin; repeat for several."),
    ],
    bucket: Annotated[
        str | None, typer.Option("--bucket", "-b", help="Only this bucket.", show_default=False)
    ] = None,
    prefix: Annotated[
        str | None,
        typer.Option("--prefix", "-p", help="Only keys starting with this.", show_default=False),
    ] = None,
) -> None:
    """Create a key; the key itself is printed alone on the last line, and never again."""
    if bucket is not None:
        validate_bucket(bucket)
    if prefix:
        validate_key(prefix)
    from edgestore.metadata import keys as key_rows

    with database(ctx) as db, db.write() as conn:
        key, secret = key_rows.create(
            conn, name=name, scopes=frozenset(scope), bucket=bucket, prefix=prefix
        )
    output.note(
        f"created API key {key.key_id} ({key.name}; {', '.join(sorted(key.scopes))}; "
        f"{_limits(key)}); the key is shown only now:"
    )
    print(secret)  # alone and unstyled, for scripts: KEY=$(edgestore keys create ... | tail -1)


def _limits(k: key_rows.ApiKey) -> str:
    parts = ([f"bucket {k.bucket}"] if k.bucket else []) + (
        [f"prefix {k.prefix}"] if k.prefix else []
    )
    return ", ".join(parts) or "all buckets"


@keys_app.command("list")
def list_keys(
    ctx: typer.Context,
    all_keys: Annotated[bool, typer.Option("--all", help="Include revoked keys.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """The keys (ids, names, scopes, limits, use); never their secrets."""
    from rich.table import Table

    from edgestore.metadata import keys as key_rows

    with database(ctx) as db, db.read() as conn:
        found = key_rows.list_keys(conn, include_revoked=all_keys)
    if json_out:
        output.emit_json([_row(k) for k in found])
        return
    table = Table(show_edge=False, header_style="bold")
    table.add_column("id", no_wrap=True, min_width=12)
    for column in ("name", "scopes", "limited to", "last used", "revoked"):
        table.add_column(column)
    for k in found:
        table.add_row(
            k.key_id,
            k.name,
            ",".join(sorted(k.scopes)),
            _limits(k),
            output.when(k.last_used_at) if k.last_used_at else "never",
            output.when(k.revoked_at) if k.revoked_at else "-",
        )
    output.out.print(table)


@keys_app.command("revoke")
def revoke(
    ctx: typer.Context, key_id: Annotated[str, typer.Argument(help="The key's id.")]
) -> None:
    """Revoke a key: every node refuses it within seconds (their caches are short)."""
    from edgestore.metadata import keys as key_rows

    with database(ctx) as db, db.write() as conn:
        was = key_rows.get(conn, key_id).revoked_at
        key = key_rows.revoke(conn, key_id)
    if was is not None:  # nothing changed: say so, rather than claim a revocation
        output.out.print(
            f"API key {key.key_id} ({key.name}) was already revoked at {output.when(was)}",
            highlight=False,
        )
        return
    output.out.print(f"revoked API key {key.key_id} ({key.name})", highlight=False)
