"""`edgestore presign upload|download BUCKET KEY`: a pre-signed URL, signed with the store's
secret from the metadata database (the one every server node verifies with)."""

from __future__ import annotations

import ipaddress
import re
import time
from typing import TYPE_CHECKING, Annotated, Literal

import typer

from edgestore import units
from edgestore.api.presign import SECRET_NAME, Grant, presigned_url  # no FastAPI
from edgestore.cli import output
from edgestore.cli.context import CliState
from edgestore.cli.keys import database
from edgestore.cli.main import app
from edgestore.engine.keys import validate_bucket, validate_key
from edgestore.errors import InvalidInput

if TYPE_CHECKING:
    from edgestore.config import Settings

_MEDIA_TYPE = re.compile(r"[\x21-\x7e][\x20-\x7e]{0,254}")  # no control characters


def parse_duration(text: str) -> int:
    """--expires: whole seconds above 0, read as the configuration reads durations."""
    try:
        return int(units.positive_duration(text, whole=True))
    except ValueError as exc:
        raise InvalidInput(f"--expires {text!r}: {exc}") from None


def parse_size(text: str) -> int:
    """--max-size: bytes, read as the configuration reads sizes (10G is 10GiB, not 10GB)."""
    try:
        return units.parse_size(text)
    except ValueError as exc:
        raise InvalidInput(f"--max-size {text!r}: {exc} ({units.SIZE_FORMS})") from None


def _listen_url(settings: Settings) -> str:
    """The server's own address as a base URL: an IPv6 host in brackets (RFC 3986), and a
    warning for a wildcard one, where the server listens but no client elsewhere connects."""
    scheme = "https" if settings.tls_certfile else "http"
    host = settings.host.strip("[]")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is not None and address.is_unspecified:
        output.note(
            f"warning: host {settings.host} is where the server listens, not an address "
            "clients can reach: pass --url or set public_url to the URL clients use"
        )
    if address is not None and address.version == 6:
        host = f"[{host}]"
    return f"{scheme}://{host}:{settings.port}"


@app.command()
def presign(
    ctx: typer.Context,
    action: Annotated[
        Literal["upload", "download"], typer.Argument(help="upload (a tus endpoint) or download.")
    ],
    bucket: Annotated[str, typer.Argument(help="Bucket.")],
    key: Annotated[str, typer.Argument(help="Object key.")],
    expires: Annotated[
        str, typer.Option(help="Lifetime: seconds, or 90s, 15m, 1h30m, 7d, 2w ...")
    ] = "1h",
    max_size: Annotated[
        str | None,
        typer.Option(
            help="Upload: largest size: bytes, or 10GiB (= 10G), 10GB (10^9 bytes) ...",
            show_default=False,
        ),
    ] = None,
    content_type: Annotated[
        str | None, typer.Option(help="Upload: the content type it must have.", show_default=False)
    ] = None,
    url: Annotated[
        str | None,
        typer.Option(help="Server base URL (default: public_url, else http://host:port)."),
    ] = None,
) -> None:
    """Print a URL that lets its holder upload or download one object, and nothing else.

    The URL is printed alone on the last line of stdout.
    """
    state: CliState = ctx.obj
    settings = state.settings()
    validate_bucket(bucket)
    validate_key(key)
    seconds = parse_duration(expires)
    if seconds > settings.presign_max_seconds:
        raise InvalidInput(
            f"--expires {expires} is above presign_max_seconds ({settings.presign_max_seconds} s)"
        )
    if action == "download" and (max_size is not None or content_type is not None):
        raise InvalidInput("--max-size and --content-type only apply to upload URLs")
    if content_type is not None and not _MEDIA_TYPE.fullmatch(content_type):
        raise InvalidInput(f"--content-type {content_type!r} is not a printable ASCII media type")
    grant = Grant(
        action=action,
        bucket=bucket,
        key=key,
        expires=int(time.time()) + seconds,
        max_size=parse_size(max_size) if max_size is not None else None,
        content_type=content_type,
    )
    from edgestore.metadata import keys as key_rows

    with database(ctx) as db, db.write() as conn:
        secret = key_rows.server_secret(db, conn, SECRET_NAME)
    base = url or settings.public_url or _listen_url(settings)
    how = (
        "a tus endpoint: POST to create the upload, then PATCH the Location it returns"
        if action == "upload"
        else "GET or HEAD"
    )
    output.note(f"{action} of {bucket}/{key} until {output.when(grant.expires)} ({how}):")
    print(presigned_url(base, secret, grant))
