"""Local-mode commands: work on the store in --home directly, without a server.

The engine (SQLAlchemy and all) loads inside the command that runs, not at CLI start; types
in command signatures stay light (typer evaluates them when the CLI starts)."""

from __future__ import annotations

import os
import shlex
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, BinaryIO

import typer

from edgestore.cli import output
from edgestore.cli.context import CliState
from edgestore.cli.main import app
from edgestore.engine.keys import DEFAULT_BUCKET
from edgestore.errors import InvalidInput, ObjectNotFound, StorageUnavailable

if TYPE_CHECKING:
    from edgestore.engine import Engine, VersionInfo
    from edgestore.engine.dedup import StoredChunk

BucketOpt = Annotated[str, typer.Option("--bucket", "-b", help="Bucket.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]
VersionOpt = Annotated[
    int | None, typer.Option("--version", "-V", help="Version number (default: latest).")
]


def _stat(engine: Engine, ref: str, bucket: str, version: int | None) -> VersionInfo:
    """The version KEY|ID names: an object id first, else a key in `bucket` (an upload sent
    without a key or file name is stored under its upload id, which is a UUID too)."""
    from edgestore.engine.objects import ObjectSelector, is_object_id

    by_key = ObjectSelector(bucket=bucket, key=ref, version=version)
    if not is_object_id(ref):
        return engine.objects.stat(by_key)
    try:
        return engine.objects.stat(ObjectSelector(object_id=ref.lower(), version=version))
    except ObjectNotFound:
        return engine.objects.stat(by_key)


def _version_fields(v: VersionInfo) -> list[tuple[str, str]]:
    return [
        ("key", f"{v.bucket}/{v.key}"),
        ("object id", v.object_id),
        ("version", str(v.version)),
        ("size", f"{v.size} ({output.human_bytes(v.size)})"),
        ("sha256", v.sha256 or "(not yet computed)"),
        ("etag", v.etag),
        ("content type", v.content_type or "-"),
        ("filename", v.filename or "-"),
        ("created", output.when(v.created_at)),
    ]


@app.command()
def init(
    ctx: typer.Context,
    shared_disk: Annotated[
        bool,
        typer.Option(
            "--shared-disk",
            help="Claim a new dir even on the root filesystem or another data dir's disk "
            "(refused by default while every data dir has a disk of its own: an empty mount "
            "point of a disk that did not mount looks just like that).",
        ),
    ] = False,
) -> None:
    """Create the store (if new) and claim data dirs added to the configuration.

    Exits with 6 when a data dir is left unusable (each is listed with its reason)."""
    from edgestore.storage.datadirs import SINGLE_DISK_WARNING

    state: CliState = ctx.obj
    with state.engine(initialise_dirs=True, claim_shared_disk=shared_disk) as engine:
        dirs = engine.core.dirs
        for name in dirs.names:
            status = dirs.unavailable.get(name, "ok")
            output.out.print(f"{name}: {dirs.backends[name].root} ({status})", highlight=False)
        if dirs.single_disk:
            output.note(f"warning: {SINGLE_DISK_WARNING}")
        if warning := engine.core.policy.dirs_warning(len(dirs.names)):
            output.note(f"warning: {warning}")
        if dirs.unavailable:  # a script running init must not go on as if it were ready
            raise StorageUnavailable(
                f"store {engine.core.store_id}: {len(dirs.unavailable)} data dir(s) unusable, "
                "listed above"
            )
        output.out.print(f"store {engine.core.store_id} ready", highlight=False)


@app.command()
def put(
    ctx: typer.Context,
    file: Annotated[
        Path, typer.Argument(help="File to store; '-' reads standard input (then give --key).")
    ],
    bucket: BucketOpt = DEFAULT_BUCKET,
    key: Annotated[
        str | None, typer.Option("--key", "-k", help="Key (default: file name).")
    ] = None,
    content_type: Annotated[
        str | None,
        typer.Option(
            "--content-type", help="Media type served with it (default: guessed from the name)."
        ),
    ] = None,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Store FILE as the next version of bucket/key (deduplicated, compressed, erasure-coded)."""
    from edgestore.client.source import guess_content_type

    state: CliState = ctx.obj
    stdin = str(file) == "-"
    if stdin and key is None:
        raise InvalidInput("reading standard input needs --key")
    if not stdin and (file.is_dir() or not file.exists()):  # typer's check would refuse '-'
        what = "is a directory" if file.is_dir() else "does not exist"
        raise typer.BadParameter(f"file {str(file)!r} {what}.", param_hint="'file'")
    key = key or file.name
    if content_type is None and not stdin:  # as `upload` does: a video served as one plays
        content_type = guess_content_type(file.name)
    total = None if stdin else file.stat().st_size
    stats = {"chunks": 0, "new_chunks": 0, "dedup_bytes": 0, "stored_bytes": 0}

    def on_chunk(c: StoredChunk) -> None:
        stats["chunks"] += 1
        if c.is_new:
            stats["new_chunks"] += 1
            stats["stored_bytes"] += c.stored_size
        else:
            stats["dedup_bytes"] += c.raw_size

    started = time.monotonic()
    with state.engine() as engine:
        source: BinaryIO = sys.stdin.buffer if stdin else open(file, "rb", buffering=0)  # noqa: SIM115
        try:
            with output.Transfer(f"put {key}", total, quiet=quiet or json_out) as bar:
                version = engine.put(
                    bar.track(source),  # read straight into the chunker
                    bucket=bucket,
                    key=key,
                    content_type=content_type,
                    filename=None if stdin else file.name,
                    on_chunk=on_chunk,
                )
        finally:
            if not stdin:
                source.close()
    seconds = time.monotonic() - started
    if json_out:
        output.emit_json({"version": version, "seconds": seconds, **stats})
        return
    output.fields(
        [
            *_version_fields(version),
            ("chunks", f"{stats['chunks']} ({stats['new_chunks']} new)"),
            ("deduplicated", output.human_bytes(stats["dedup_bytes"])),
            ("written", output.human_bytes(stats["stored_bytes"])),
            ("rate", f"{output.human_bytes(version.size / max(seconds, 1e-9))}/s"),
        ]
    )


@app.command()
def get(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(metavar="KEY|ID", help="Object key or object id.")],
    out_path: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Output file, or a directory to write it into ('-' for stdout; default: "
            "the key's name).",
        ),
    ] = None,
    bucket: BucketOpt = DEFAULT_BUCKET,
    version: VersionOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Write an object version to a file, verified chunk by chunk."""
    from edgestore.client.paths import output_path

    state: CliState = ctx.obj
    with state.engine() as engine:
        info = _stat(engine, ref, bucket, version)
        name = Path(info.key).name or info.object_id
        if out_path is not None and str(out_path) == "-":
            try:
                for piece in engine.objects.read(info):
                    sys.stdout.buffer.write(piece)
                sys.stdout.buffer.flush()
            except BrokenPipeError:
                raise  # `| head`: the reader is done, click exits quietly
            except OSError as exc:  # a full disk under `> file`: say so, not a traceback
                raise InvalidInput(f"cannot write standard output: {exc.strerror}") from None
            return
        target = output_path(out_path, name)
        # A device or a pipe (-o /dev/null) is written as it is: renaming OUT.part over it
        # would replace the device node with a file (as root) or fail.
        special = target.exists() and not target.is_file()
        partial = target if special else target.with_name(target.name + ".part")
        try:
            with (
                open(partial, "wb") as f,
                output.Transfer(f"get {info.key}", info.size, quiet=quiet) as bar,
            ):
                for piece in engine.objects.read(info):
                    f.write(piece)
                    bar.advance(len(piece))
            if not special:
                os.replace(partial, target)
        except BaseException as exc:
            if not special:  # nothing resumes a local get: a partial file only takes space
                _remove(partial)
            if isinstance(exc, OSError):
                raise InvalidInput(f"cannot write {target}: {exc.strerror or exc}") from None
            raise
    if not quiet:
        output.note(f"wrote {target} ({output.human_bytes(info.size)})")


def _remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:  # a directory in its way, say: the error that brought us here is the news
        pass


@app.command("ls")
def list_objects(
    ctx: typer.Context,
    prefix: Annotated[str, typer.Argument(help="Key prefix.")] = "",
    bucket: Annotated[
        str | None, typer.Option("--bucket", "-b", help="Bucket (default: all).")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many.")] = 1000,
    after: Annotated[
        str | None,
        typer.Option(
            help="Start after this key (bucket/key without --bucket): the next page, as the "
            "note at the end of a full page says."
        ),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """List objects (latest versions) by key prefix, in pages of --limit."""
    from edgestore.metadata.objects import cursor

    state: CliState = ctx.obj
    with state.engine() as engine:
        # One more than shown: whether a next page exists, so the note is never a false one.
        found = engine.objects.list(bucket=bucket, prefix=prefix, after=after, limit=limit + 1)
    more, found = len(found) > limit, found[:limit]
    if more:
        nxt = shlex.quote(cursor(found[-1], bucket))
        output.note(f"more objects: for the next page, add --after {nxt}")
    if json_out:
        output.emit_json(found)
        return
    output.table(
        ["bucket", "key", "version", "size", "modified", "object id"],
        (
            [
                v.bucket,
                v.key,
                str(v.version),
                output.human_bytes(v.size),
                output.when(v.created_at),
                v.object_id,
            ]
            for v in found
        ),
    )


@app.command()
def stat(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(metavar="KEY|ID", help="Object key or object id.")],
    bucket: BucketOpt = DEFAULT_BUCKET,
    version: VersionOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Show an object version and the object's version history."""
    state: CliState = ctx.obj
    with state.engine() as engine:
        info = _stat(engine, ref, bucket, version)
        history = engine.objects.versions(info.object_id)
        chunks = engine.objects.chunk_count(info)
    if json_out:
        output.emit_json({"version": info, "chunks": chunks, "versions": history})
        return
    output.fields([*_version_fields(info), ("chunks", str(chunks))])
    output.table(
        ["version", "size", "sha256", "created"],
        (
            [
                str(v.version),
                output.human_bytes(v.size),
                (v.sha256 or "-")[:16],
                output.when(v.created_at),
            ]
            for v in history
        ),
        title="versions",
    )


@app.command()
def rm(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(metavar="KEY|ID", help="Object key or object id.")],
    bucket: BucketOpt = DEFAULT_BUCKET,
    version: VersionOpt = None,
    all_versions: Annotated[bool, typer.Option("--all", help="Delete every version.")] = False,
) -> None:
    """Delete an object version (the latest by default); space returns after `gc`."""
    state: CliState = ctx.obj
    with state.engine() as engine:
        info = _stat(engine, ref, bucket, version)
        doomed = engine.objects.versions(info.object_id) if all_versions else [info]
        for v in doomed:
            engine.objects.delete(v)
            output.note(f"deleted {v.bucket}/{v.key} version {v.version}")


@app.command()
def du(ctx: typer.Context, json_out: JsonOpt = False) -> None:
    """Space used: logical, unique (after dedup), stored (after compression and redundancy)."""
    from edgestore.storage.datadirs import SINGLE_DISK_WARNING

    state: CliState = ctx.obj
    with state.engine() as engine:
        u = engine.objects.usage()
        single_disk = engine.core.dirs.single_disk
    if json_out:
        output.emit_json(
            {
                **output.as_json(u),
                "dedup_ratio": u.dedup_ratio,
                "compression_ratio": u.compression_ratio,
                "redundancy_overhead": u.redundancy_overhead,
            }
        )
        return
    output.fields(
        [
            ("objects", f"{u.objects} ({u.versions} versions, {u.open_uploads} uploads open)"),
            ("logical bytes", output.human_bytes(u.logical_bytes)),
            ("unique bytes", f"{output.human_bytes(u.unique_bytes)} in {u.chunks} chunks"),
            ("compressed bytes", output.human_bytes(u.compressed_bytes)),
            ("stored bytes", output.human_bytes(u.stored_bytes)),
            ("dedup ratio", f"{u.dedup_ratio:.2f}x"),
            ("compression ratio", f"{u.compression_ratio:.2f}x"),
            ("redundancy overhead", f"{u.redundancy_overhead:.2f}x"),
            (
                "reclaimable by gc",
                f"{output.human_bytes(u.reclaimable_bytes)} in {u.reclaimable_chunks} chunks",
            ),
        ]
    )
    if single_disk:
        output.note(f"warning: {SINGLE_DISK_WARNING}")


def _whole_seconds(text: str) -> int:
    """A duration option standing in for a whole-second setting, read as that setting is
    (`6h`, `1h30m`, `90`): `1.5s`, which the setting refuses, is refused here too."""
    from edgestore import units

    try:
        return units.parse_whole_duration(text)
    except ValueError as exc:
        raise typer.BadParameter(f"{text!r}: {exc} ({units.WHOLE_DURATION_FORMS})") from None


@app.command("gc")
def collect_garbage(
    ctx: typer.Context,
    grace: Annotated[
        int | None,
        typer.Option(
            parser=_whole_seconds,
            metavar="DURATION",
            help="Spare garbage younger than this: whole seconds, or 30m, 6h, 1d ... (default: "
            "gc_grace_seconds).",
        ),
    ] = None,
    accept_restored: Annotated[
        bool,
        typer.Option(
            "--accept-restored-metadata",
            help="The metadata database was restored from an older backup and is to stay: "
            "collect anyway (the shards of versions written after that backup are deleted).",
        ),
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Remove expired uploads, unreferenced chunks and orphan shard files (never what an
    upload in progress holds, whatever the grace).

    Refuses, deleting nothing (exit 5), while the metadata database is behind its data dirs:
    restored from an older backup (see docs/operations.md, "Backup and restore")."""
    from edgestore.maintenance import gc

    state: CliState = ctx.obj
    with state.engine() as engine, output.status("collecting garbage…", quiet=json_out) as show:
        report = gc.collect(
            engine,
            grace=grace,
            progress=lambda stage, n: show(f"gc: {stage} {n}"),
            accept_restored=accept_restored,
        )
    if json_out:
        output.emit_json(report)
        return
    output.fields(
        [
            ("uploads expired", str(report.uploads_expired)),
            ("chunks deleted", str(report.chunks_deleted)),
            ("shard files deleted", str(report.shard_files_deleted)),
            ("bytes freed", output.human_bytes(report.bytes_freed + report.orphan_bytes)),
            ("orphan files deleted", str(report.orphan_files_deleted)),
            ("errors", str(report.errors)),
            ("seconds", f"{report.seconds:.2f}"),
        ]
    )
