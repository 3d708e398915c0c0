"""Local-mode integrity commands: `scrub` (check every shard), `repair` (make damaged
chunks whole; see maintenance/repair.py) and `check` (the metadata's consistency; see
maintenance/check.py)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Annotated

import typer

from edgestore.cli import output
from edgestore.cli.context import CliState
from edgestore.cli.local import JsonOpt
from edgestore.cli.main import app

if TYPE_CHECKING:
    from edgestore.maintenance.check import CheckReport


@app.command("scrub")
def scrub(ctx: typer.Context, json_out: JsonOpt = False) -> None:
    """Read every shard of every chunk and check it; queue damaged chunks for `repair`.

    Reads the whole store from its data dirs (no decoding): expect it to take as long as
    reading every shard file once. Exits 10 if damage was found.
    """
    from edgestore.maintenance import repair as repairs

    state: CliState = ctx.obj
    with state.engine() as engine, output.status("scrubbing…", quiet=json_out) as show:
        report = repairs.scrub(engine, progress=lambda _s, n: show(f"scrub: {n} chunks checked"))
    if json_out:
        output.emit_json(report)
    else:
        output.fields(
            [
                ("chunks checked", str(report.chunks_checked)),
                ("shard files checked", str(report.shard_files_checked)),
                ("bytes checked", output.human_bytes(report.bytes_checked)),
                ("damaged chunks", str(report.chunks_damaged)),
                ("bad shards", str(report.bad_shards)),
                ("seconds", f"{report.seconds:.2f}"),
            ]
        )
        if report.chunks_damaged:
            output.note("run `edgestore repair` to make the damaged chunks whole")
    if report.chunks_damaged:
        raise typer.Exit(10)


@app.command("repair")
def repair(
    ctx: typer.Context,
    spread: Annotated[
        bool,
        typer.Option(
            "--spread",
            help="First look through the whole shards table for chunks with two or more "
            "shards on one data dir (as `check` reports them) and queue them, so that this "
            "repair moves them too.",
        ),
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Make chunks queued for repair whole: rebuild each from its intact shards and write
    its bad shards again, each to its own data dir, or another with room where that one is
    full or gone (a running server does this in the background too, but leaves shards of a
    dir that is down where they are, and tries a chunk it could not rebuild again only hours
    later; this tries every one now).

    A shard rebuilt on a dir that holds another shard of its chunk leaves the chunk queued:
    once a dir holding none of its shards can take it (the lost disk replaced and claimed
    by `init`), repair moves it there, back to full fault tolerance; until then the chunk
    waits, counted as still doubled up.

    Exits 10 if a chunk could not be repaired: with fewer than k intact shards only an
    upload of the same bytes brings it back; one that failed otherwise (no writable data
    dirs, say) stays queued for the next try.
    """
    from edgestore.maintenance import repair as repairs
    from edgestore.maintenance import spread as spreading

    state: CliState = ctx.obj
    found: int | None = None
    with state.engine() as engine, output.status("repairing…", quiet=json_out) as show:
        if spread:
            found = spreading.queue_crowded(engine, lambda n: show(f"spread: {n} doubled up"))
        report = repairs.repair(engine, progress=lambda _s, n: show(f"repair: {n} chunks"))
    if json_out:
        output.emit_json({**dataclasses.asdict(report), "doubled_up_found": found})
    else:
        output.fields(
            [
                *([("doubled-up chunks found", str(found))] if found is not None else []),
                ("queued chunks", str(report.queued)),
                ("repaired", str(report.repaired)),
                ("intact after all", str(report.intact)),
                ("spread again", str(report.spread)),
                ("still doubled up (waiting)", str(report.crowded)),
                ("unrecoverable", str(len(report.unrecoverable))),
                ("errors (still queued)", str(report.errors)),
                ("bytes rewritten", output.human_bytes(report.bytes_rewritten)),
                ("seconds", f"{report.seconds:.2f}"),
            ]
        )
        if report.crowded:
            output.note(
                "chunks still doubled up wait for a data dir holding none of their shards "
                "(replace the lost disk and run `edgestore init`); repair moves them then"
            )
        for cid in report.unrecoverable:
            output.note(
                f"chunk {cid}: fewer than k intact shards; uploading a file that contains "
                "it again restores it"
            )
    if report.unrecoverable or report.errors:
        raise typer.Exit(10)


@app.command("check")
def check(
    ctx: typer.Context,
    fix: Annotated[
        bool,
        typer.Option(
            "--fix",
            help="Recount the chunk refcounts and bucket totals found wrong (safe while a "
            "server writes). Nothing else is changed.",
        ),
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Check the metadata database's consistency: each chunk's **refcount** against the
    manifest, upload part and pin rows that reference it, each bucket's **totals** against
    its versions, references to **chunk rows that do not exist**, chunks with **fewer shard
    rows** than needed to read them (k of k+m), versions whose manifest does not add up
    to their size, and chunks **doubled up**: with more shards on one data dir than
    placement puts there (a repair around a lost disk leaves them so; `repair --spread`
    moves them once a dir holding none of their shards can take them).

    Only the database is read (`scrub` reads the shard files). With `--fix`, refcounts and
    bucket totals are recounted from the rows they count, under the locks the writers take,
    so a server running on the same database loses no change; a reference to a missing chunk
    or a chunk short of shards is reported, never "fixed" by deleting what names it.

    Exits 0 if the store is consistent (with `--fix`: once what was found is fixed), 10 if
    inconsistencies remain.
    """
    from edgestore.maintenance import check as checks

    state: CliState = ctx.obj
    with state.engine() as engine, output.stages(quiet=json_out) as show:
        report = checks.check(engine, fix=fix, progress=show)
    if json_out:
        output.emit_json(report)
    else:
        _print_check(report)
    if report.unresolved:
        raise typer.Exit(10)


def _print_check(report: CheckReport) -> None:
    from edgestore.maintenance.check import CROWDED, FIXABLE

    rows = [
        ("chunks checked", str(report.chunks_checked)),
        ("buckets checked", str(report.buckets_checked)),
    ]
    for f in report.findings:
        value = str(f.found) + (f" ({f.fixed} fixed)" if report.fix and f.found else "")
        rows.append((f.description, value))
    rows.append(("seconds", f"{report.seconds:.2f}"))
    output.fields(rows)
    for f in report.findings:
        for example in f.examples:
            output.note(f"{f.kind}: {example}")
        if f.found > len(f.examples):
            output.note(f"{f.kind}: … and {f.found - len(f.examples)} more")
    fixable = sum(f.found - f.fixed for f in report.findings if f.kind in FIXABLE)
    doubled = report.of(CROWDED).found
    if fixable:
        output.note("run `edgestore check --fix` to recount the refcounts and bucket totals")
    if doubled:
        output.note(
            "chunks doubled up on a data dir lose more than one shard with it: run "
            "`edgestore repair --spread` to move them to dirs holding none of theirs"
        )
    if report.unresolved > fixable + doubled:
        output.note(
            "references to missing chunks, and chunks short of shard rows, name bytes the "
            "metadata no longer has: restore the database from a backup taken with its data "
            'dirs, or upload the files again (see docs/operations.md, "Checking the metadata")'
        )
