"""`difaug.core.parallel.parallel_map`: results in input order, progress per chunk up to the total,
errors not swallowed; the default pool size within its bounds."""

from __future__ import annotations

import threading
import time

import pytest

from difaug.core import parallel
from difaug.core.parallel import MAX_WORKERS, MIN_WORKERS, default_workers, parallel_map


def test_results_come_in_input_order_even_when_later_items_finish_first() -> None:
    def slow_first(x: int) -> int:
        time.sleep(0.002 * (50 - x) if x < 50 else 0)
        return x * x

    items = list(range(200))
    assert list(parallel_map(slow_first, items, workers=4)) == [x * x for x in items]


def test_work_runs_on_several_threads() -> None:
    seen: set[int] = set()
    barrier = threading.Barrier(2, timeout=5)

    def meet(x: int) -> int:
        seen.add(threading.get_ident())
        if x < 2:
            barrier.wait()  # the first two chunks can only both pass if they run at once
        return x

    assert list(parallel_map(meet, [0, 1], workers=2)) == [0, 1]
    assert len(seen) == 2


def test_progress_counts_up_to_the_total_with_the_label() -> None:
    calls: list[tuple[str, int, int]] = []
    out = list(
        parallel_map(str, list(range(1000)), workers=2, progress=lambda *a: calls.append(a), label="x")
    )
    assert len(out) == 1000
    assert {c[0] for c in calls} == {"x"} and {c[2] for c in calls} == {1000}
    done = [c[1] for c in calls]
    assert done == sorted(done) and done[-1] == 1000 and len(done) > 1  # chunked: more than one report


def test_an_error_in_one_item_reaches_the_caller() -> None:
    def fail_on_7(x: int) -> int:
        if x == 7:
            raise ValueError("item 7")
        return x

    with pytest.raises(ValueError, match="item 7"):
        list(parallel_map(fail_on_7, list(range(20)), workers=2))


def test_nothing_to_do() -> None:
    calls: list[tuple[str, int, int]] = []
    assert list(parallel_map(str, [], progress=lambda *a: calls.append(a))) == [] and calls == []


@pytest.mark.parametrize(
    ("cores", "expected"), [(1, MIN_WORKERS), (4, 8), (64, MAX_WORKERS), (None, MIN_WORKERS)]
)
def test_default_workers_is_two_per_core_within_bounds(
    monkeypatch: pytest.MonkeyPatch, cores: int | None, expected: int
) -> None:
    monkeypatch.setattr(parallel.os, "cpu_count", lambda: cores)
    assert default_workers() == expected
