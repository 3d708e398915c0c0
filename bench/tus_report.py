"""bench.tus's results: the figures of each (server, client, data set), the issue's targets
as ratios between them, and the report that prints them side by side.
"""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass, field

from rich.console import Console
from rich.table import Table

from bench.datasets import format_size

CHUNK_MIB = 50


@dataclass
class Measure:
    server: str
    client: str
    data: str
    rates: list[float] = field(default_factory=list)  # bytes/s per repeat
    cpu_per_gb: list[float] = field(default_factory=list)  # the deferred work's included
    peak_rss: list[int] = field(default_factory=list)
    # What the server left for later (peers.DeferredWork), done once it stopped: CPU, seconds.
    deferred_cpu_per_gb: list[float] = field(default_factory=list)
    deferred_seconds: list[float] = field(default_factory=list)
    failure: str = ""

    @property
    def measured(self) -> bool:
        """Every repeat ran and was verified (a failure stops the repeats after it)."""
        return bool(self.rates) and not self.failure

    @property
    def rate(self) -> float:
        return statistics.median(self.rates) if self.rates else 0.0

    @property
    def cpu(self) -> float:
        return statistics.median(self.cpu_per_gb) if self.cpu_per_gb else 0.0

    @property
    def rss(self) -> int:
        return max(self.peak_rss) if self.peak_rss else 0

    @property
    def deferred_cpu(self) -> float:
        return statistics.median(self.deferred_cpu_per_gb) if self.deferred_cpu_per_gb else 0.0

    @property
    def deferred_s(self) -> float:
        return statistics.median(self.deferred_seconds) if self.deferred_seconds else 0.0


def verdict(name: str, value: float, target: float, *, at_most: bool = False) -> dict[str, object]:
    ok = value <= target if at_most else value >= target
    return {
        "check": name,
        "value": round(value, 3),
        "target": target,
        "at_most": at_most,
        "pass": ok,
    }


def disk_line(kind: str, rate: float, results: list[Measure]) -> str:
    """What the disk allows edgestore, and how near it and the peers came (tus-js-client)."""
    ours = measure_of(results, "edgestore", "tus-js-client", kind).rate
    node = measure_of(results, "@tus/server", "tus-js-client", kind).rate
    return (
        f"disk: this data's shards, written the engine's way, went at {rate / 1e6:,.0f} MB/s "
        f"of raw data; edgestore (tus-js-client) reached {ours / max(rate, 1):.2f} of that, "
        f"@tus/server's rate is {node / max(rate, 1):.2f} of it"
    )


def deferred_line(m: Measure) -> str:
    """What a server did after the client was done, and how the figures count it."""
    return (
        f"{m.server} ← {m.client}: {m.deferred_cpu:.2f} of its CPU-s/GB are work it left for "
        f"later (the whole-file SHA-256 of a concatenation, read back by its upkeep): "
        f"{m.deferred_s:.1f} s per upload after the client was done, not in its MB/s"
    )


def failure_summary(detail: str) -> str:
    """A client's error, short enough for a table cell: the HTTP status and the server's
    reason where the client quotes them (tus-js-client: "response code: 501, response text:
    Concatenation extension is not (yet) supported..."), else the message's start."""
    found = re.search(r"response code: (\d{3}), response text: ([^\n,.]*)", detail)
    if found:
        return f"{found.group(1)}: {found.group(2).strip()}"[:60]
    return detail.strip()[:60] or "failed"


def measure_of(results: list[Measure], server: str, client: str, data: str) -> Measure:
    for m in results:
        if (m.server, m.client, m.data) == (server, client, data):
            return m
    m = Measure(server, client, data)
    results.append(m)
    return m


def _not_measured(name: str, target: float, *, at_most: bool = False) -> dict[str, object]:
    """A check one of whose figures is missing (a failed run): shown, never a pass."""
    return {"check": name, "value": "n/a", "target": target, "at_most": at_most, "pass": False}


def targets(
    results: list[Measure], kinds: list[str], concurrent: dict[str, object]
) -> list[dict[str, object]]:
    def ratio(
        name: str,
        ours: tuple[str, str],
        theirs: tuple[str, str],
        kind: str,
        target: float,
        *,
        cpu: bool = False,
    ) -> dict[str, object]:
        """ours / theirs, MB/s or (cpu) CPU-s/GB; not measured unless both are: a stand-in
        for a missing baseline (1 B/s) made any ratio against a failed peer a PASS."""
        a, b = measure_of(results, *ours, kind), measure_of(results, *theirs, kind)
        if not (a.measured and b.measured):
            return _not_measured(f"{kind}: {name}", target, at_most=cpu)
        if cpu:
            return verdict(f"{kind}: {name}", a.cpu / max(b.cpu, 1e-9), target, at_most=True)
        return verdict(f"{kind}: {name}", a.rate / b.rate, target)

    single, par = ("edgestore", "tus-js-client"), ("edgestore", "tus-js-client x4")
    checks = []
    for kind in kinds:
        checks += [
            ratio(
                "edgestore / @tus/server (tus-js-client)",
                single,
                ("@tus/server", "tus-js-client"),
                kind,
                1.0,
            ),
            ratio(
                "CPU-s/GB edgestore / tuspyserver",
                single,
                ("tuspyserver", "tus-js-client"),
                kind,
                2.5,
                cpu=True,
            ),
            ratio(
                "parallelUploads 4, edgestore / tuspyserver",
                par,
                ("tuspyserver", "tus-js-client x4"),
                kind,
                2.0,
            ),
            ratio("parallelUploads 4 / edgestore single stream", par, single, kind, 1.0),
            ratio(
                "second upload of the same file / first",
                ("edgestore", "tus-js-client, same file again"),
                single,
                kind,
                1.5,
            ),
        ]
    if concurrent:
        name = f"peak RSS MiB, {concurrent['uploads']} concurrent uploads"
        if "failure" in concurrent:  # not measured: not a pass
            checks.append(_not_measured(name, 300, at_most=True))
        else:
            rss = int(concurrent["peak_rss"])  # type: ignore[call-overload]
            checks.append(verdict(name, rss / 2**20, 300, at_most=True))
    return checks


def print_results(
    out: Console,
    results: list[Measure],
    kinds: list[str],
    size: int,
    concurrent: dict[str, object],
    checks: list[dict[str, object]],
    disk: dict[str, float] | None = None,
    chunk_mib: int = CHUNK_MIB,
) -> None:
    for kind in kinds:
        t = Table(
            title=f"{kind} data, {format_size(size)} per upload in {chunk_mib} MiB requests",
            title_justify="left",
        )
        for col in (
            "server",
            "client",
            "MB/s (median)",
            "min–max",
            "server CPU-s/GB",
            "server peak RSS",
        ):
            t.add_column(col, justify="left" if col in ("server", "client") else "right")
        for m in results:
            if m.data != kind:
                continue
            if m.failure:
                t.add_row(m.server, m.client, "n/a", failure_summary(m.failure), "", "")
                continue
            later = f" ({m.deferred_cpu:.2f} later)" if m.deferred_cpu else ""
            t.add_row(
                m.server,
                m.client,
                f"{m.rate / 1e6:,.0f}",
                f"{min(m.rates) / 1e6:,.0f}–{max(m.rates) / 1e6:,.0f}",
                f"{m.cpu:.2f}{later}",
                f"{m.rss / 2**20:,.0f} MiB",
            )
        out.print(t)
        for m in results:
            if m.data == kind and not m.failure and m.deferred_cpu:
                out.print(deferred_line(m))
        if disk and kind in disk:
            out.print(disk_line(kind, disk[kind], results))
    if concurrent and "failure" in concurrent:
        out.print(f"edgestore, {concurrent['uploads']} concurrent uploads: {concurrent['failure']}")
    elif concurrent:
        each = format_size(int(concurrent["each"]))  # type: ignore[call-overload]
        rss = int(concurrent["peak_rss"]) / 2**20  # type: ignore[call-overload]
        rate = float(concurrent["aggregate_rate"]) / 1e6  # type: ignore[arg-type]
        out.print(
            f"edgestore, {concurrent['uploads']} concurrent uploads of {each}: "
            f"peak RSS {rss:,.0f} MiB, aggregate {rate:,.0f} MB/s"
        )
    t = Table(title="targets (issue 3)", title_justify="left")
    for col in ("check", "measured", "target", ""):
        t.add_column(col)
    for c in checks:
        op = "≤" if c["at_most"] else "≥"
        t.add_row(
            str(c["check"]),
            f"{c['value']}",
            f"{op} {c['target']}",
            "[green]PASS[/]" if c["pass"] else "[red]FAIL[/]",
        )
    out.print(t)
