"""The process-wide rules of the shard task (`ShardProcess`): shard slots, the prepare turn, the
one device thread, and the generate stage queued only once its shard holds the prepare turn."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable

import pytest

from difaug.run.shard_process import MAX_SHARDS_IN_FLIGHT, ShardProcess, shard_process, shards_in_flight


def _in_thread(fn: Callable[[], object]) -> threading.Thread:
    t = threading.Thread(target=fn, daemon=True)
    t.start()
    return t


def test_a_generate_stage_waits_for_its_own_prepare_turn() -> None:
    """Shard B's device work does not run while shard A prepares, even though the device is free:
    it waits until B itself holds the prepare turn (queued first, it would wait for B's items
    while A's generate waited behind it)."""
    process = ShardProcess()
    ran: list[str] = []
    with process.shard() as a, process.shard() as b:
        a_preparing = contextlib.ExitStack()
        a_preparing.enter_context(a.prepare())
        device = _in_thread(lambda: b.on_device(lambda: ran.append("b"), stopped=lambda: False))
        b_prepared = threading.Event()

        def prepare_b() -> None:
            with b.prepare():
                b_prepared.set()

        preparing = _in_thread(prepare_b)
        time.sleep(0.3)
        assert ran == [] and not b_prepared.is_set()  # A still holds the prepare turn
        a_preparing.close()
        preparing.join(5)
        device.join(5)
        assert b_prepared.is_set() and ran == ["b"]


def test_device_work_runs_on_one_thread_in_the_order_shards_prepared() -> None:
    process = ShardProcess()
    ran: list[tuple[str, int]] = []
    order = threading.Lock()  # the shards take their prepare turn in a known order
    order.acquire()

    def shard(name: str, first: bool) -> None:
        with process.shard() as turn:
            if not first:
                order.acquire()
            with turn.prepare():
                if first:
                    order.release()
                time.sleep(0.05)
            turn.on_device(lambda: ran.append((name, threading.get_ident())), stopped=lambda: False)

    threads = [_in_thread(lambda: shard("b", False)), _in_thread(lambda: shard("a", True))]
    for t in threads:
        t.join(5)
    assert [name for name, _ in ran] == ["a", "b"]
    assert len({ident for _, ident in ran}) == 1 and ran[0][1] != threading.get_ident()


def test_at_most_max_shards_in_flight() -> None:
    process = ShardProcess()
    third_started = threading.Event()
    with contextlib.ExitStack() as running:
        for _ in range(MAX_SHARDS_IN_FLIGHT):
            running.enter_context(process.shard())

        def third() -> None:
            with process.shard():
                third_started.set()

        t = _in_thread(third)
        assert not third_started.wait(0.3)
    assert third_started.wait(5)
    t.join(5)


def test_a_stopped_shard_gives_up_waiting_and_takes_its_turn_once() -> None:
    process = ShardProcess()
    with process.shard() as a, process.shard() as b:
        with a.prepare():
            assert b.on_device(lambda: "ran", stopped=lambda: True) is None
        with pytest.raises(RuntimeError, match="once"), a.prepare():
            pass


def test_shards_in_flight_swaps_the_process_state_for_the_block() -> None:
    before = shard_process()
    second = threading.Event()

    def another_shard() -> None:
        with one.shard():
            second.set()

    with shards_in_flight(1) as one:
        assert shard_process() is one is not before
        with one.shard():
            t = _in_thread(another_shard)
            assert not second.wait(0.3)  # one at a time
        assert second.wait(5)
    assert shard_process() is before
    t.join(5)
