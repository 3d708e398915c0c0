"""Commands that talk to a server: `upload` and `download`, through the client library
(loaded by the command that runs: every other command starts without httpx)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from edgestore import units
from edgestore.cli import output
from edgestore.cli.main import app
from edgestore.errors import InvalidInput

if TYPE_CHECKING:
    from edgestore.client import DownloadResult, UploadResult
    from edgestore.client.native import Workers

ApiKeyOpt = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar="EDGESTORE_API_KEY",
        help="API key, sent as 'Authorization: Bearer' (else $EDGESTORE_API_KEY).",
        show_default=False,
    ),
]
CaCertOpt = Annotated[
    Path | None,
    typer.Option(
        "--ca-cert",
        envvar="EDGESTORE_CA_CERT",
        help="Trust the CA certificate(s) in this PEM file (or directory) instead of the "
        "default ones: a private or self-signed server (else $EDGESTORE_CA_CERT).",
        show_default=False,
    ),
]
TimeoutOpt = Annotated[
    str,
    typer.Option(
        "--timeout",
        envvar="EDGESTORE_TIMEOUT",
        metavar="DURATION",
        help="How long a connection may stay silent (connecting: at most 10 s) before the "
        "request is retried: seconds, or 90s, 2m, 500ms ...; raise it on a slow or satellite "
        "link (else $EDGESTORE_TIMEOUT).",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a JSON summary at the end.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]


def parse_timeout(text: str) -> float:
    """--timeout: seconds above 0, read as the configuration reads durations (`90`, `2m`,
    `500ms`); 0 would fail every request (no sign, NaN or infinity reads at all)."""
    try:
        return units.positive_duration(text)
    except ValueError as exc:
        raise InvalidInput(f"--timeout {text!r}: {exc}") from None


def parse_workers(value: str) -> Workers:
    if value == "auto":
        return "auto"
    if value.isdigit() and 1 <= int(value) <= 64:
        return int(value)
    raise InvalidInput(f"--workers takes 'auto' or a number from 1 to 64, not {value!r}")


@app.command()
def upload(
    file: Annotated[Path, typer.Argument(help="File to upload.", exists=True, dir_okay=False)],
    url: Annotated[str, typer.Argument(help="Server URL (with --protocol tus: any tus endpoint).")],
    bucket: Annotated[str, typer.Option("--bucket", "-b", help="Bucket.")] = "default",
    key: Annotated[
        str | None, typer.Option("--key", "-k", help="Key (default: the file name).")
    ] = None,
    workers: Annotated[
        str,
        typer.Option(
            "--workers",
            "-w",
            help="Transfers at once, 1-64, or 'auto' (grows while it pays). Native: chunk "
            "bodies being sent, each with a second connection awaiting an answer; tus: parts.",
        ),
    ] = "auto",
    protocol: Annotated[
        str, typer.Option(help="native (sends only chunks the server lacks) or tus.")
    ] = "native",
    content_type: Annotated[
        str | None,
        typer.Option(
            "--content-type", help="Media type served with it (default: guessed from the name)."
        ),
    ] = None,
    api_key: ApiKeyOpt = None,
    ca_cert: CaCertOpt = None,
    timeout: TimeoutOpt = "60",
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Upload FILE in parallel and resumably; chunks the server already has never travel.

    Run the same command again after any failure (even a kill) and it continues.
    """
    from edgestore.client import Client

    if protocol not in ("native", "tus"):
        raise InvalidInput(f"--protocol takes native or tus, not {protocol!r}")
    client = Client(url, api_key, timeout=parse_timeout(timeout), ca_cert=ca_cert)
    with output.Transfer(f"upload {file.name}", None, quiet=quiet or json_out) as bar:
        result = client.upload(
            file,
            bucket=bucket,
            key=key,
            workers=parse_workers(workers),
            protocol=protocol,  # type: ignore[arg-type]
            progress=bar,
            content_type=content_type,
        )
    if json_out:
        output.emit_json(result)
    elif not quiet:
        output.fields(_upload_fields(result))


def _upload_fields(r: UploadResult) -> list[tuple[str, str]]:
    where = f"{r.bucket}/{r.key}" + (f" version {r.version}" if r.version else "")
    rate = output.human_bytes(r.bytes_sent / max(r.seconds, 1e-9))
    return [
        ("object", where),
        ("object id", r.object_id or "-"),
        ("sha256", r.sha256),
        ("size", f"{r.size} ({output.human_bytes(r.size)})"),
        ("sent", f"{output.human_bytes(r.bytes_sent)} at {rate}/s over {r.workers} connections"),
        ("already there", output.human_bytes(r.bytes_skipped)),
        ("seconds", f"{r.seconds:.2f}" + (" (resumed)" if r.resumed else "")),
    ]


@app.command()
def download(
    ref: Annotated[
        str, typer.Argument(metavar="URL|ID", help="Object URL, object id, or bucket/key.")
    ],
    out_path: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Output file, or a directory to write it into (default: the object's file name).",
        ),
    ] = None,
    workers: Annotated[
        int, typer.Option("--workers", "-w", min=1, max=64, help="Range requests at once.")
    ] = 4,
    server: Annotated[
        str | None,
        typer.Option(
            "--server", envvar="EDGESTORE_SERVER", help="Server URL, for an id or bucket/key."
        ),
    ] = None,
    api_key: ApiKeyOpt = None,
    ca_cert: CaCertOpt = None,
    timeout: TimeoutOpt = "60",
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Download an object with parallel range requests, resumably, verified against its
    SHA-256 before it takes its name (until then it is OUT.part)."""
    import httpx

    from edgestore.client import Client

    if ref.startswith(("http://", "https://")):
        try:
            # Only where connections go: a URL is fetched as given (a proxy's path prefix, a
            # pre-signed URL's query and all: client/download.py).
            base = str(httpx.URL(ref).copy_with(path="/", query=None, fragment=None))
        except httpx.InvalidURL as exc:
            raise InvalidInput(f"{ref!r} is not a valid URL: {exc}") from None
    elif server:
        base = server
    else:
        raise InvalidInput("an object id or bucket/key needs --server URL (or a full URL)")
    client = Client(base, api_key, timeout=parse_timeout(timeout), ca_cert=ca_cert)
    with output.Transfer(f"download {ref}", None, quiet=quiet or json_out) as bar:
        result = client.download(ref, out_path, workers=workers, progress=bar)
    if json_out:
        output.emit_json(result)
    elif not quiet:
        output.fields(_download_fields(result))


def _download_fields(r: DownloadResult) -> list[tuple[str, str]]:
    return [
        ("file", r.path),
        ("size", f"{r.size} ({output.human_bytes(r.size)})"),
        ("sha256", r.sha256 + ("" if r.verified else " (the server has none yet to compare)")),
        ("received", output.human_bytes(r.bytes_received)),
        ("resumed", output.human_bytes(r.bytes_resumed)),
        ("seconds", f"{r.seconds:.2f}"),
    ]
