"""The CPU pool's ordered map with read-ahead, and the budget that caps read-ahead across
every reader of a store (slow downloads held decoded chunks without limit)."""

from __future__ import annotations

import threading

from edgestore.engine.pipeline import Budget, CpuPool


def test_results_keep_their_order_with_and_without_a_budget() -> None:
    pool = CpuPool(2)
    try:
        for budget in (None, Budget(1), Budget(0)):
            assert list(pool.map_ordered(lambda x: x * x, range(50), 4, budget)) == [
                x * x for x in range(50)
            ]
    finally:
        pool.shutdown()


def test_an_empty_budget_means_no_read_ahead() -> None:
    pool = CpuPool(2)
    started: list[int] = []
    lock = threading.Lock()

    def work(x: int) -> int:
        with lock:
            started.append(x)
        return x

    try:
        for x in pool.map_ordered(work, range(20), 4, Budget(0)):
            with lock:
                assert max(started) == x, "a chunk was decoded ahead without a token"
    finally:
        pool.shutdown()


def test_readers_share_the_budget_and_give_every_token_back() -> None:
    pool = CpuPool(2)
    budget = Budget(3)
    started = [0]
    lock = threading.Lock()

    def work(x: int) -> int:
        with lock:
            started[0] += 1
        return x

    try:
        a = pool.map_ordered(work, range(100), 8, budget)
        b = pool.map_ordered(work, range(100), 8, budget)
        consumed = 0
        for _ in range(11):
            next(a)
            next(b)
            consumed += 2
            # In flight: one per stream of its own, and at most 3 more between them (without
            # the budget, 8 per stream).
            assert started[0] - consumed <= 2 + 3
        a.close()  # a download that stops early (client gone)
        assert list(b) == list(range(11, 100))
        assert budget.free == 3
    finally:
        pool.shutdown()


def test_a_stream_that_ends_gives_back_the_token_it_took_for_nothing() -> None:
    pool = CpuPool(2)
    budget = Budget(2)
    try:
        assert list(pool.map_ordered(lambda x: x, range(3), 8, budget)) == [0, 1, 2]
        assert budget.free == 2
    finally:
        pool.shutdown()


def test_items_that_fail_to_come_give_back_the_token_taken_for_them() -> None:
    """The items' iterator raising (a download's manifest page gone with its deleted version,
    a database error) ended the map with the token taken for the next item still out: each
    such download lost the store one token for good, until nothing read ahead any more."""
    pool = CpuPool(2)
    budget = Budget(4)

    def items():
        yield from range(3)
        raise LookupError("manifest ends early")

    try:
        for _ in range(3):
            got = []
            try:
                for x in pool.map_ordered(lambda x: x, items(), 8, budget):
                    got.append(x)
            except LookupError:
                pass
            assert budget.free == 4
    finally:
        pool.shutdown()
