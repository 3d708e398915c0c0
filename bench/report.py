"""Printing benchmark results: rich tables for people, a plain dict for `--json`.

MB/s and GB/s are decimal (10^6, 10^9 bytes per second), as in FACTS.md.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bench.datasets import format_size


@dataclass(frozen=True, slots=True)
class Spread:
    """Median and range of one figure over the repeats."""

    median: float
    lo: float
    hi: float

    @classmethod
    def of(cls, values: Iterable[float]) -> Spread:
        v = list(values)
        return cls(statistics.median(v), min(v), max(v))


@dataclass(frozen=True, slots=True)
class Throughput:
    """An operation over `size` bytes, repeated: its rate and what it cost in CPU."""

    rate: Spread  # bytes per wall-clock second
    cpu_per_gb: Spread  # CPU seconds of all threads per GB (10^9 bytes)
    cores: Spread  # CPU seconds per wall-clock second: how many cores it kept busy

    @classmethod
    def of(cls, size: int, runs: Iterable[tuple[float, float]]) -> Throughput:
        """runs: (wall seconds, CPU seconds) per repeat."""
        r = list(runs)
        return cls(
            Spread.of(size / wall for wall, _ in r),
            Spread.of(cpu / (size / 1e9) for _, cpu in r),
            Spread.of(cpu / wall for wall, cpu in r),
        )


@dataclass(frozen=True, slots=True)
class Verdict:
    """A measured ratio against its target (higher is better unless `at_most`)."""

    name: str
    value: float
    target: float
    at_most: bool = False

    @property
    def passed(self) -> bool:
        return self.value <= self.target if self.at_most else self.value >= self.target


def mbps(bytes_per_second: float) -> str:
    return f"{bytes_per_second / 1e6:,.0f}"


def _range(s: Spread) -> str:
    return f"{mbps(s.lo)}–{mbps(s.hi)}"


def _verdict(v: Verdict) -> str:
    return "[green]PASS[/]" if v.passed else "[red]FAIL[/]"


def machine(console: Console, info: Mapping[str, str]) -> None:
    table = Table(title="Machine and libraries", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for key, value in info.items():
        table.add_row(key, value)
    console.print(table)


def stages(
    console: Console,
    title: str,
    rows: Mapping[str, tuple[Spread, Spread]],
    extra: Iterable[tuple[str, Spread]],
) -> None:
    """rows: stage → (wall-clock rate, CPU-time rate), both in raw input bytes per second."""
    table = Table(title=title, title_justify="left")
    table.add_column("stage (one thread)")
    table.add_column("MB/s (median)", justify="right")
    table.add_column("min–max", justify="right")
    table.add_column("MB/s per CPU-s", justify="right")
    for name, (wall, cpu) in rows.items():
        table.add_row(name, mbps(wall.median), _range(wall), mbps(cpu.median))
    for name, spread in extra:
        table.add_row(f"[dim]{name}[/]", mbps(spread.median), _range(spread), "")
    console.print(table)


def ceiling(
    console: Console,
    formula: str,
    terms: Mapping[str, float],
    value: float,
    full: Verdict,
    *,
    cpu_only: float | None = None,
) -> None:
    """`cpu_only`: full ingest against the cores' ceiling, without the disk's cap."""
    parts = ", ".join(f"{name} {mbps(rate)}" for name, rate in terms.items())
    console.print(f"2-core ceiling = {escape(formula)}")
    console.print(f"               = min({escape(parts)}) = [bold]{mbps(value)} MB/s[/]")
    console.print(
        f"full ingest / ceiling = [bold]{full.value:.0%}[/] "
        f"(target ≥ {full.target:.0%}) {_verdict(full)}"
    )
    if cpu_only is not None:
        console.print(f"full ingest / the cores' ceiling alone (no disk cap) = {cpu_only:.0%}")


def engine(
    console: Console,
    title: str,
    rows: Iterable[tuple[str, Throughput, Verdict, str]],
) -> None:
    """rows: (operation, figures, verdict against its target, what the ratio compares to)."""
    table = Table(title=title, title_justify="left")
    table.add_column("engine (all cores)")
    table.add_column("MB/s (median)", justify="right")
    table.add_column("min–max", justify="right")
    table.add_column("CPU-s/GB", justify="right")
    table.add_column("cores busy", justify="right")
    table.add_column("ratio", justify="right")
    table.add_column("vs")
    table.add_column("target", justify="right")
    table.add_column("")
    for name, t, verdict, versus in rows:
        table.add_row(
            name,
            mbps(t.rate.median),
            _range(t.rate),
            f"{t.cpu_per_gb.median:.2f}",
            f"{t.cores.median:.2f}",
            f"{verdict.value:.2f}x",
            versus,
            f"{'≤' if verdict.at_most else '≥'} {verdict.target:.2f}x",
            _verdict(verdict),
        )
    console.print(table)


_OUTCOME = {"PASS": "[green]PASS[/]", "FAIL": "[red]FAIL[/]", "n/a": "[yellow]n/a[/]"}


def rss(
    console: Console,
    size: int,
    figures: tuple[int, int, float] | str,
    target: int,
    target_size: int,
    outcome: str,
) -> None:
    """figures: (peak, baseline after Engine.open, MB/s), or why it was not measured;
    outcome: PASS, FAIL or n/a (not measured, or a pass on less data than the target's)."""
    if isinstance(figures, str):
        measured = f"not measured ({escape(figures)})"
    else:
        peak, baseline, rate = figures
        measured = (
            f"[bold]{format_size(peak)}[/] ({format_size(baseline)} after Engine.open), "
            f"{mbps(rate)} MB/s"
        )
    console.print(
        f"Peak RSS ingesting {format_size(size)} of random data (separate process): "
        f"{measured}; target ≤ {format_size(target)} for {format_size(target_size)}: "
        f"{_OUTCOME[outcome]}"
    )


def jsonable(value: Any) -> Any:
    """Dataclasses (nested) to dicts, for `--json`."""
    if isinstance(value, Verdict):
        return {**asdict(value), "passed": value.passed}
    if hasattr(value, "__dataclass_fields__"):
        return {k: jsonable(v) for k, v in asdict(value).items()}
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value
