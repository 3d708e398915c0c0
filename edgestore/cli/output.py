"""All CLI printing: human tables and progress on the terminal, or JSON with --json."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape

from edgestore.types import Readable

if TYPE_CHECKING:
    from rich.progress import Progress

    from edgestore.cli.transfer_rate import SentRate


def _console(*, stderr: bool) -> Console:
    """A terminal's console; piped or redirected, one that never cuts or breaks a line to
    fit 80 columns (scripts read whole object ids and one-line messages)."""
    console = Console(stderr=stderr)
    if console.is_terminal:
        return console
    return Console(stderr=stderr, width=1 << 16, soft_wrap=True)


out = _console(stderr=False)
err = _console(stderr=True)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"


def when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def as_json(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return {k: as_json(v) for k, v in asdict(value).items()}
    if isinstance(value, dict):
        return {k: as_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [as_json(v) for v in value]
    return value


def emit_json(value: Any) -> None:
    sys.stdout.write(json.dumps(as_json(value), indent=2, sort_keys=True) + "\n")


def table(columns: list[str], rows: Iterable[list[str]], *, title: str | None = None) -> None:
    from rich.table import Table  # here, not at CLI start (as rich.progress below)
    from rich.text import Text

    t = Table(*columns, title=title, show_edge=False, header_style="bold")
    for row in rows:
        t.add_row(*(Text(cell) for cell in row))  # plain text: a key is not markup
    out.print(t)


def fields(pairs: list[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in pairs)
    for k, v in pairs:
        # Values (keys, file names, messages) are data: '[/]' in a key is not markup.
        out.print(f"[bold]{escape(k.ljust(width))}[/bold]  {escape(v)}", highlight=False)


def error(message: str) -> None:
    err.print(f"[bold red]error:[/bold red] {escape(message)}", highlight=False)


def note(message: str) -> None:
    err.print(message, highlight=False, markup=False)


@contextmanager
def status(message: str, *, quiet: bool = False) -> Iterator[Callable[[str], None]]:
    """A spinner line on stderr for work of unknown length, and a function that updates its
    text; nothing when quiet (--json)."""
    if quiet:
        yield lambda _text: None
        return
    spinner = err.status(message)
    spinner.start()
    try:
        yield spinner.update
    finally:
        spinner.stop()


@contextmanager
def stages(*, quiet: bool = False) -> Iterator[Callable[[str, int, int | None], None]]:
    """A progress bar on stderr for a job that goes through stages of counted items (a bar
    with done/total and the time left where the total is known, a spinner where not), and a
    function `(stage, done, total)` that moves it; nothing when quiet or not a terminal."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=quiet or not err.is_terminal,
    )
    tasks: dict[str, Any] = {}

    def update(stage: str, done: int, total: int | None) -> None:
        if stage not in tasks:
            tasks[stage] = progress.add_task(stage, total=total)
        progress.update(tasks[stage], completed=done, total=total)

    with progress:
        yield update


class Transfer:
    """A byte progress bar on stderr (rate and ETA of the bytes that travel: skipped ones
    fill the bar, not the rate); silent when quiet or not a terminal."""

    def __init__(self, description: str, total: int | None, *, quiet: bool = False) -> None:
        self._rate: SentRate | _Silent = _Silent()
        self._progress: Progress | _Silent = _Silent()
        if not quiet and err.is_terminal:
            self._make_bar()
        self._task = self._progress.add_task(description, total=total, detail="")
        self._description = description
        self._skipped = 0

    def _make_bar(self) -> None:
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

        from edgestore.cli.transfer_rate import SentRate, SentSpeedColumn, SentTimeRemainingColumn

        self._rate = SentRate()
        self._progress = Progress(
            TextColumn("{task.description}", markup=False),  # a key is not markup
            BarColumn(),
            DownloadColumn(binary_units=True),
            SentSpeedColumn(self._rate),
            SentTimeRemainingColumn(self._rate),
            TextColumn("{task.fields[detail]}"),
            console=err,
            transient=False,
        )

    def __enter__(self) -> Transfer:
        self._rate.begin()
        self._progress.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_exc: object) -> None:
        """The bar stays on the terminal: after a failure it says so, or a native upload
        whose every chunk was sent before its commit failed stood at 100%, as if done."""
        description = self._description  # done: no longer "committing…"
        if exc_type is not None:
            what = "interrupted" if issubclass(exc_type, KeyboardInterrupt) else "failed"
            description = f"{self._description}: {what}"
        self._progress.update(self._task, description=description)
        self._progress.stop()

    def advance(self, n: int) -> None:
        """`n` bytes moved (sent, received or read): the bar and the rate."""
        self._rate.add(n)
        self._progress.advance(self._task, n)

    def describe(self, description: str) -> None:
        self._description = description
        self._progress.update(self._task, description=description)

    # The client library's Progress protocol (edgestore.client.results.Progress).

    def start(self, total: int) -> None:
        self._rate.begin()  # the rate counts from the transfer, not from opening a session
        self._progress.update(self._task, total=total)

    def transferred(self, n: int) -> None:
        self.advance(n)

    def skipped(self, n: int) -> None:
        """Bytes the server already had: they count as done, and are shown apart."""
        self._skipped += n
        detail = f"{human_bytes(self._skipped)} already there" if self._skipped else ""
        self._progress.update(self._task, advance=n, detail=detail)

    def committing(self) -> None:
        """Every byte is sent and the server commits (a native finalize hashes the whole file
        back: minutes for 20 GB); the bar at 100% said "done" meanwhile."""
        self._progress.update(self._task, description=f"{self._description}: committing…")

    def track(self, source: Readable) -> Readable:
        """The same source, advancing the bar by what each read returns."""
        return _TrackedReader(source, self.advance)


class _Silent:
    """The bar and its rate when nothing is shown (quiet, or stderr not a terminal: scripts,
    the test suite): every call does nothing, and rich.progress (~15 ms to import) and its
    rendering stay out of the command."""

    def __getattr__(self, _name: str) -> Callable[..., None]:
        return _nothing


def _nothing(*_args: object, **_kwargs: object) -> None:
    return None


class _TrackedReader:
    def __init__(self, source: Readable, advance: Callable[[int], None]) -> None:
        self._source = source
        self._advance = advance

    def readinto(self, buffer: memoryview, /) -> int | None:
        n = self._source.readinto(buffer)
        if n:
            self._advance(n)
        return n
