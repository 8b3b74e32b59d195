"""Idle workers' cores lent to a busy one: the broker's rule and the worker's runner."""
from __future__ import annotations

import threading
import time

import pytest

from mxserve.worker.broker.state import WorkerState, lendable_threads
from mxserve.worker.lent_cores import LEND_MIN_MS, LentCores


def worker(name: str, threads: int = 1, busy_with: int = 0) -> WorkerState:
    state = WorkerState(identity=name.encode(), model="m", device="cpu", pid=1,
                        max_batch_size=4, last_seen=0.0, threads=threads)
    if busy_with:
        state.batch = {"r": None}  # type: ignore[dict-item]
        state.threads_in_use = busy_with
    return state


def test_a_worker_alone_busy_gets_every_core():
    a, b = worker("a"), worker("b")
    assert lendable_threads(a, [a, b], cores=2) == 2


def test_a_worker_dispatched_while_another_is_busy_gets_its_share():
    a, b = worker("a"), worker("b", busy_with=1)
    assert lendable_threads(a, [a, b], cores=2) == 1


def test_cores_lent_to_a_busy_worker_are_not_lent_twice():
    a, b, c, d = worker("a"), worker("b", busy_with=2), worker("c"), worker("d")
    assert lendable_threads(a, [a, b, c, d], cores=4) == 2
    b.threads_in_use = 4  # b was alone when it got its batch
    assert lendable_threads(a, [a, b, c, d], cores=4) == 1  # never less than its share


def test_gpu_workers_and_workers_with_every_core_are_left_alone():
    gpu = worker("gpu", threads=0)
    assert lendable_threads(gpu, [gpu], cores=2) == 0
    wide = worker("wide", threads=2)
    assert lendable_threads(wide, [wide], cores=2) == 2


def test_gpu_workers_do_not_count_as_using_cores():
    a, gpu = worker("a"), worker("gpu", threads=0, busy_with=0)
    gpu.batch = {"r": None}  # type: ignore[dict-item]
    assert lendable_threads(a, [a, gpu], cores=2) == 2


def where_it_ran() -> int:
    return threading.get_ident()


def lent(threads: int, forward_ms: float = 0.0) -> LentCores:
    cores = LentCores(own_threads=1)
    cores.lent_threads = threads
    if forward_ms:
        cores.observe(forward_ms)
    return cores


def test_short_forwards_and_unlent_batches_run_on_the_calling_thread():
    here = threading.get_ident()
    assert lent(2).run(where_it_ran) == here  # no forward time known yet
    assert lent(2, LEND_MIN_MS / 2).run(where_it_ran) == here  # too short to gain
    assert lent(1, 60.0).run(where_it_ran) == here  # nothing lent
    assert lent(0, 60.0).run(where_it_ran) == here
    never = LentCores(own_threads=0)  # GPU, threaded engine, subgraphs
    never.lent_threads = 2
    never.observe(60.0)
    assert never.run(where_it_ran) == here


def test_the_first_forward_teaches_it_whether_lending_pays():
    cores = lent(2)
    cores.run(lambda: time.sleep(LEND_MIN_MS * 2 / 1000))
    assert cores.forward_ms >= LEND_MIN_MS
    assert cores.run(where_it_ran) != threading.get_ident()


def test_long_forwards_on_lent_cores_run_on_one_long_lived_thread_per_width():
    cores = lent(2, 60.0)
    first = cores.run(where_it_ran)
    assert first != threading.get_ident()
    assert cores.run(where_it_ran) == first  # the same thread again: MXNet leaks on new ones
    cores.lent_threads = 3
    assert cores.run(where_it_ran) not in (first, threading.get_ident())


def test_an_error_on_the_wide_thread_is_raised_to_the_caller():
    cores = lent(2, 60.0)

    def fails() -> None:
        raise ValueError("inside the forward")

    with pytest.raises(ValueError, match="inside the forward"):
        cores.run(fails)
    assert cores.run(lambda: 7) == 7  # and the thread still serves


def test_warm_up_runs_on_the_widest_thread_before_any_request_and_leaves_nothing_lent():
    cores = lent(0, 60.0)
    ran_on: list[int] = []
    cores.warm_up(lambda: ran_on.append(cores.run(where_it_ran)), widest=2)
    assert ran_on and ran_on[0] != threading.get_ident()
    assert cores.lent_threads == 0  # the next batch gets only what the broker says
    cores.lent_threads = 2
    assert cores.run(where_it_ran) == ran_on[0]  # the thread it warmed


@pytest.mark.parametrize("own, widest, forward_ms", [
    (1, 2, LEND_MIN_MS / 2),  # forwards too short to be lent
    (0, 2, 60.0),  # never lent (GPU, threaded engine, subgraphs)
    (2, 2, 60.0),  # it has every core already
])
def test_warm_up_does_nothing_for_a_worker_never_lent(own, widest, forward_ms):
    cores = LentCores(own_threads=own)
    cores.observe(forward_ms)
    ran_on: list[int] = []
    cores.warm_up(lambda: ran_on.append(cores.run(where_it_ran)), widest)
    assert ran_on == []


def test_lending_lasts_one_batch_even_when_it_raises():
    cores = lent(0, 60.0)
    with cores.lending(2):
        assert cores.run(where_it_ran) != threading.get_ident()
    assert cores.lent_threads == 0 and cores.run(where_it_ran) == threading.get_ident()
    with pytest.raises(RuntimeError), cores.lending(2):
        raise RuntimeError("the batch failed")
    assert cores.lent_threads == 0
