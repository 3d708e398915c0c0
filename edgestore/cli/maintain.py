"""Local-mode integrity commands: `scrub` (check every shard) and `repair` (make damaged
chunks whole); see maintenance/repair.py."""

from __future__ import annotations

import typer

from edgestore.cli import output
from edgestore.cli.context import CliState
from edgestore.cli.local import JsonOpt
from edgestore.cli.main import app


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
def repair(ctx: typer.Context, json_out: JsonOpt = False) -> None:
    """Make chunks queued for repair whole: rebuild each from its intact shards and store it
    again on the data dirs writable now (a running server does this in the background too,
    and tries a chunk it could not rebuild again only hours later; this tries every one now).

    Exits 10 if a chunk could not be repaired: with fewer than k intact shards only an
    upload of the same bytes brings it back; one that failed otherwise (no writable data
    dirs, say) stays queued for the next try.
    """
    from edgestore.maintenance import repair as repairs

    state: CliState = ctx.obj
    with state.engine() as engine, output.status("repairing…", quiet=json_out) as show:
        report = repairs.repair(engine, progress=lambda _s, n: show(f"repair: {n} chunks"))
    if json_out:
        output.emit_json(report)
    else:
        output.fields(
            [
                ("queued chunks", str(report.queued)),
                ("repaired", str(report.repaired)),
                ("intact after all", str(report.intact)),
                ("unrecoverable", str(len(report.unrecoverable))),
                ("errors (still queued)", str(report.errors)),
                ("bytes rewritten", output.human_bytes(report.bytes_rewritten)),
                ("seconds", f"{report.seconds:.2f}"),
            ]
        )
        for cid in report.unrecoverable:
            output.note(
                f"chunk {cid}: fewer than k intact shards; uploading a file that contains "
                "it again restores it"
            )
    if report.unrecoverable or report.errors:
        raise typer.Exit(10)
