"""modelserver/inference.py: inference calls on threads of their own, which join a cgroup."""
from __future__ import annotations

import threading
import time

import pytest

from modelserver.inference import InferenceThreads, cgroup_tasks_file, join_cgroup


def test_calls_run_on_the_inference_thread_in_arrival_order():
    pool = InferenceThreads(1)
    try:
        order: list[int] = []
        ran_on: set[int] = set()

        def work(i: int) -> int:
            ran_on.add(threading.get_native_id())
            time.sleep(0.01)
            order.append(i)
            return i * i

        results: dict[int, int] = {}
        threads = []
        for i in range(5):
            t = threading.Thread(target=lambda i=i: results.__setitem__(i, pool.call(work, i)))
            t.start()
            time.sleep(0.002)               # each asks after the one before
            threads.append(t)
        for t in threads:
            t.join()
        assert order == list(range(5))
        assert results == {i: i * i for i in range(5)}
        assert ran_on == set(pool.native_ids) and threading.get_native_id() not in ran_on
    finally:
        pool.close()


def test_an_exception_is_raised_in_the_caller_and_the_thread_goes_on():
    pool = InferenceThreads(2)
    try:
        with pytest.raises(ZeroDivisionError):
            pool.call(lambda: 1 / 0)
        assert pool.call(lambda a, b: a + b, 2, 3) == 5
        assert len(pool.native_ids) == 2
    finally:
        pool.close()


def test_threads_that_cannot_join_their_group_stop_the_pool(tmp_path):
    with pytest.raises(OSError, match=f"cannot join the inference cgroup {tmp_path}"):
        InferenceThreads(2, tmp_path)
    assert not (tmp_path / "tasks").exists()        # never created: a folder is not a cgroup


def test_join_writes_the_thread_id_to_the_groups_file(tmp_path):
    """The kernel's files stand in as plain files here (tests/integration/test_cluster_limits.py
    checks the real v1 group): v2's `cgroup.threads` is preferred when the group has it."""
    (tmp_path / "tasks").write_text("")
    assert cgroup_tasks_file(tmp_path) == tmp_path / "tasks"
    pool = InferenceThreads(1, tmp_path)
    try:
        assert (tmp_path / "tasks").read_text() == str(pool.native_ids[0])
    finally:
        pool.close()
    (tmp_path / "cgroup.threads").write_text("")
    assert cgroup_tasks_file(tmp_path) == tmp_path / "cgroup.threads"
    join_cgroup(tmp_path)
    assert (tmp_path / "cgroup.threads").read_text() == str(threading.get_native_id())


def test_at_least_one_thread():
    with pytest.raises(ValueError):
        InferenceThreads(0)
