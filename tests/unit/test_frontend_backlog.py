"""expected-delay's backlog: one process's (Backlog) and every worker's (SharedBacklog, a real file)."""
import multiprocessing
import os

import pytest

from frontend.backlog import SLOTS, Backlog, SharedBacklog, backlog_path


@pytest.fixture(params=["process", "shared"])
def make(request, tmp_path):
    opened = []

    def make(drain=1.0):
        backlog = Backlog(drain) if request.param == "process" else SharedBacklog(tmp_path / "fe.db-backlog", drain)
        opened.append(backlog)
        return backlog
    yield make
    for backlog in opened:
        backlog.close()


def test_drains_one_second_per_second(make):
    backlog = make()
    backlog.charge("n-a", 0.5, 10.0)
    backlog.charge("n-a", 0.5, 10.2)            # 0.3 left, plus 0.5
    assert backlog.seconds(["n-a", "n-b"], 10.2) == {"n-a": pytest.approx(0.8), "n-b": 0.0}
    assert backlog.seconds(["n-a"], 10.7)["n-a"] == pytest.approx(0.3)
    assert backlog.seconds(["n-a"], 12.0)["n-a"] == 0.0


def test_drains_at_the_configured_share(make):
    backlog = make(drain=0.5)
    backlog.charge("n-a", 1.0, 0.0)
    assert backlog.seconds(["n-a"], 1.0)["n-a"] == pytest.approx(0.5)
    backlog.charge("n-a", 0.25, 1.0)
    assert backlog.seconds(["n-a"], 2.0)["n-a"] == pytest.approx(0.25)
    # a node sent 13 requests of 71 ms a second: drained at 0.85 its backlog grows, at 1 it keeps up
    for drain, grows in ((0.85, True), (1.0, False)):
        b = make(drain=drain)
        for i in range(130):
            b.charge(f"n-{drain}", 0.071, i / 13)
        assert (b.seconds([f"n-{drain}"], 10.0)[f"n-{drain}"] > 0.5) is grows


@pytest.mark.parametrize("drain", [0, -0.1, 1.5])
def test_a_drain_outside_0_1_is_refused(drain, tmp_path):
    with pytest.raises(ValueError, match="drain"):
        Backlog(drain)
    with pytest.raises(ValueError, match="drain"):
        SharedBacklog(tmp_path / "b", drain)


def test_a_count_from_before_a_reboot_is_stale_not_work_ahead(make):
    backlog = make()
    backlog.charge("n-a", 2.0, 5_000.0)          # the monotonic clock restarted: now is 10 s after boot
    assert backlog.seconds(["n-a"], 10.0)["n-a"] == 0.0
    backlog.charge("n-a", 0.5, 10.0)
    assert backlog.seconds(["n-a"], 10.0)["n-a"] == pytest.approx(0.5)
    # another worker's clock read a moment ahead is work ahead all the same
    backlog.charge("n-b", 0.5, 20.3)
    backlog.charge("n-b", 0.5, 20.0)
    assert backlog.seconds(["n-b"], 20.3)["n-b"] == pytest.approx(1.0)


def test_workers_that_open_the_same_file_count_each_others_work(tmp_path):
    path = backlog_path(tmp_path / "frontend.db")
    assert path.name == "frontend.db-backlog"
    one, two = SharedBacklog(path, 0.85), SharedBacklog(path, 0.85)
    try:
        one.charge("nano-1", 0.07, 100.0)
        two.charge("nano-1", 0.07, 100.0)
        two.charge("cloud", 0.02, 100.0)
        for backlog in (one, two):
            assert backlog.seconds(["nano-1", "cloud", "nano-2"], 100.0) == {
                "nano-1": pytest.approx(0.14), "cloud": pytest.approx(0.02), "nano-2": 0.0}
        # a third opening (a restarted worker) keeps what is there
        three = SharedBacklog(path, 0.85)
        assert three.seconds(["nano-1"], 100.1)["nano-1"] == pytest.approx(0.14 - 0.085)
        three.close()
    finally:
        one.close()
        two.close()


def _charge_many(path: str, node: str, times: int) -> None:
    backlog = SharedBacklog(path, 1.0)
    for _ in range(times):
        backlog.charge(node, 0.001, 1_000.0)
    backlog.close()


def test_processes_charging_at_once_lose_no_work(tmp_path):
    # Four processes (as gunicorn's workers, forked) charge the same two nodes at the same time:
    # without the file lock, read-modify-write races lose updates.
    path = str(tmp_path / "fe.db-backlog")
    SharedBacklog(path).close()
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_charge_many, args=(path, f"n-{i % 2}", 2_000)) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    backlog = SharedBacklog(path)
    try:
        assert backlog.seconds(["n-0", "n-1"], 1_000.0) == {"n-0": pytest.approx(4.0), "n-1": pytest.approx(4.0)}
    finally:
        backlog.close()


def test_a_drained_slot_is_reused_and_a_full_table_counts_in_the_process(tmp_path, caplog):
    backlog = SharedBacklog(tmp_path / "b", 1.0)
    try:
        for i in range(SLOTS):                   # every slot busy until t = 11
            backlog.charge(f"node-{i}", 1.0, 10.0)
        backlog.charge("late", 0.5, 10.0)        # no slot: this process still counts it
        assert "no free slot" in caplog.text
        assert backlog.seconds(["late", "node-7"], 10.0) == {"late": 0.5, "node-7": 1.0}
        # once drained, slots are free for new names, and the old names read as drained
        backlog.charge("newcomer", 0.3, 20.0)
        other = SharedBacklog(tmp_path / "b", 1.0)
        assert other.seconds(["newcomer", "node-7", "late"], 20.0) == {"newcomer": pytest.approx(0.3),
                                                                       "node-7": 0.0, "late": 0.0}
        other.close()
    finally:
        backlog.close()


@pytest.mark.parametrize("content", [b"", b"not a backlog file", b"EDGEBKL0" + bytes(200_000)])
def test_a_file_of_another_layout_starts_empty(tmp_path, content):
    path = tmp_path / "b"
    path.write_bytes(content)
    backlog = SharedBacklog(path)
    try:
        assert backlog.seconds(["n-a"], 1.0) == {"n-a": 0.0}
        backlog.charge("n-a", 0.5, 1.0)
        assert backlog.seconds(["n-a"], 1.0) == {"n-a": 0.5}
    finally:
        backlog.close()
    assert os.path.getsize(path) == 16 + SLOTS * 32


def test_an_unwritable_place_is_an_error_the_caller_sees(tmp_path):
    with pytest.raises(OSError):
        SharedBacklog(tmp_path / "missing-dir" / "b")


def test_the_front_end_shares_its_backlog_only_for_expected_delay_and_falls_back_when_it_cannot(tmp_path, caplog):
    from frontend.config import settings_from_mapping
    from frontend.runtime import _backlog

    db = tmp_path / "frontend.db"
    shared = _backlog(settings_from_mapping({"database": str(db), "policy": "expected-delay"}))
    assert isinstance(shared, SharedBacklog) and shared.path == backlog_path(db)
    shared.close()
    assert type(_backlog(settings_from_mapping({"database": str(db), "policy": "expected-delay",
                                                "backlog_shared": False}))) is Backlog
    assert type(_backlog(settings_from_mapping({"database": str(tmp_path / "other.db")}))) is Backlog
    assert not (tmp_path / "other.db-backlog").exists()          # lowest-cpu: no file
    blocked = tmp_path / "blocked.db"
    backlog_path(blocked).mkdir()                                  # the file's place is taken
    fallback = _backlog(settings_from_mapping({"database": str(blocked), "policy": "expected-delay",
                                               "backlog_drain": 0.5}))
    assert type(fallback) is Backlog and fallback.drain == 0.5
    assert "each worker counts its own" in caplog.text
