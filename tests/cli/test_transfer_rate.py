"""The bar's rate: bytes moved per second over a window, skipped bytes never in it."""

from __future__ import annotations

from rich.progress import Progress

from edgestore.cli.transfer_rate import WINDOW, SentRate, SentTimeRemainingColumn


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_rate_is_bytes_over_time_and_falls_on_a_stall() -> None:
    clock = Clock()
    rate = SentRate(clock)
    assert rate.per_second() is None
    rate.begin()
    clock.now += 2
    rate.add(1000)
    assert rate.per_second() == 500
    clock.now += 8  # nothing moves: the rate falls rather than hold its last value
    assert rate.per_second() == 100
    clock.now += WINDOW  # the sample left the window
    assert rate.per_second() == 0


def test_time_left_counts_skipped_bytes_as_done_but_not_as_speed() -> None:
    clock = Clock()
    rate = SentRate(clock)
    rate.begin()
    progress = Progress()
    task_id = progress.add_task("t", total=10_000)
    progress.update(task_id, advance=9_000)  # skipped: on the bar, not in the rate
    clock.now += 10
    rate.add(100)
    progress.update(task_id, advance=100)
    text = SentTimeRemainingColumn(rate).render(progress.tasks[0])
    assert text.plain == "0:01:30"  # 900 bytes left at 10 B/s
