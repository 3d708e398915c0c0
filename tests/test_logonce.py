"""OncePer: a subject is said once per period, whatever the threads; the memory is bounded."""

from __future__ import annotations

import threading
import time

from edgestore.logonce import OncePer


def test_a_subject_is_due_once_per_period_and_others_apart() -> None:
    once = OncePer(0.2)
    assert once.due("d2") and not once.due("d2")
    assert once.due("d3")  # another subject: its own period
    time.sleep(0.25)
    assert once.due("d2") and not once.due("d2")


def test_threads_at_once_say_it_once() -> None:
    once = OncePer(60)
    said: list[bool] = []
    start = threading.Barrier(8)

    def race() -> None:
        start.wait()
        said.append(once.due("data dir d2 is missing"))

    threads = [threading.Thread(target=race) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert said.count(True) == 1


def test_subjects_past_the_bound_are_forgotten() -> None:
    """Messages naming files have no bound: past it every subject is forgotten (and due)."""
    once = OncePer(60, max_subjects=3)
    assert all(once.due(s) for s in "abc") and not once.due("a")
    assert once.due("d")  # the fourth: the memory is cleared
    assert once.due("a")
