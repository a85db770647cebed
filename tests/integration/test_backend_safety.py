"""The back-end's safety rules on the real system: failed solves, the cap, dry-run, crashes, errors."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from test_backend_support import (FOREST, HP2, HP3, LOGREG, actions, make_system,  # noqa: F401
                                  wait_for)

A, B, C = "node-a", "node-b", "node-c"
REPO = Path(__file__).resolve().parents[2]


def test_a_failed_solve_deletes_nothing(make_system):
    """Demand for a model no node can hold makes the problem infeasible: Mode 2 then deletes nothing."""
    system = make_system([{"name": A, "memory": 100000, "class": "small"},
                          {"name": B, "memory": 100000, "class": "small"}])
    system.deploy([(HP2, A), (HP3, B)])        # nobody asks for these: Mode 2 would delete both
    for _ in range(3):                          # FOREST needs 120000 KB: on-demand provisioning refuses
        assert system.request(FOREST, "z-a").status_code == 503
    plan_before = system.plan()
    for mode in (2, 1):
        code, report = system.backend(mode, "--idle-seconds", "0", "--min-requests", "1000")
        assert code == 1
        assert report["solver"]["status"] in ("infeasible", "error")
        assert report["actions"] == [] and report["plan"]["solved"] is False
        assert any("nothing deleted" in e for e in report["errors"])
        assert system.pairs() == {(HP2, A), (HP3, B)}
    assert system.plan() == plan_before        # no dispatch plan pushed from a failed solve


def test_the_deletion_cap(make_system):
    system = make_system()
    system.seed_demand({(HP2, "z-a"): 5}, keep=[(HP2, A)])
    system.deploy([(HP3, B), (LOGREG, B), (FOREST, C)])
    code, report = system.backend(2, "--max-deletions", "1")
    assert code == 0
    deleted = actions(report, "delete")
    held = {(a["model"], a["node"]) for a in report["actions"] if a.get("skipped")}
    assert len(deleted) == 1 and len(held) == 2 and report["summary"]["skipped"] == 2
    assert all("max-deletions" in a["skipped"] for a in report["actions"] if a.get("skipped"))
    assert system.pairs() == {(HP2, A)} | held
    code, report = system.backend(2, "--max-deletions", "5")       # the next run finishes the job
    assert code == 0 and system.pairs() == {(HP2, A)}


def test_dry_run_changes_nothing(make_system, capsys):
    system = make_system()
    system.seed_demand({(HP2, "z-a"): 5})
    system.deploy([(HP3, B), (LOGREG, C)])
    before = system.pairs()
    keep = system.tmp / "kept"
    code, report = system.backend(2, "--dry-run", "--keep-files", str(keep))
    out = capsys.readouterr().out
    assert code == 0 and report["dry_run"] is True
    assert actions(report, "provision", done=False) == {(HP2, A)}
    assert actions(report, "delete", done=False) == {(HP3, B), (LOGREG, C)}
    assert all(a["skipped"] == "dry run" for a in report["actions"])
    assert system.pairs() == before and system.plan() is None
    # the plan and the rendered Kubernetes objects are printed
    assert f"# provision {HP2} on {A}" in out and f"# delete {HP3} on {B}" in out
    assert "kind: Deployment" in out and "kind: Service" in out and 'kubernetes.io/hostname: "node-a"' in out
    # --keep-files leaves the problem and solution behind, in the solver's own file format
    from solver import Problem
    problem = Problem.from_dict(json.loads((keep / "backend-problem.json").read_text()))
    assert problem.total_requests == 5 and problem.deployed == []
    assert json.loads((keep / "backend-solution.json").read_text())["status"] == report["solver"]["status"]


def test_keep_files_write_failure_is_reported(make_system):
    """A --keep-files folder that cannot be written is a warning in the report, not silence."""
    system = make_system()
    system.seed_demand({(HP2, "z-a"): 5})
    blocker = system.tmp / "not-a-folder"
    blocker.write_text("a file where the folder should be")
    code, report = system.backend(2, "--dry-run", "--keep-files", str(blocker / "kept"))
    assert code == 0 and report["solver"]["status"] in ("optimal", "feasible")
    assert any(w.startswith(f"--keep-files {blocker / 'kept'}: cannot write") for w in report["warnings"])


def test_both_modes_give_the_same_placement_when_nothing_is_deployed(make_system):
    system = make_system()
    system.seed_demand({(HP2, "z-a"): 4, (HP3, "z-b"): 2, (LOGREG, "z-c"): 3, (FOREST, "z-a"): 2})
    assert system.pairs() == set()
    _, one = system.backend(1, "--dry-run")
    _, two = system.backend(2, "--dry-run")
    assert one["inputs"]["memory"] == "available" and two["inputs"]["memory"] == "total"
    assert one["plan"]["desired"] == two["plan"]["desired"] and one["plan"]["desired"]
    assert actions(one, "provision", done=False) == actions(two, "provision", done=False)


def test_unreachable_cluster_changes_nothing(make_system, tmp_path, capsys):
    system = make_system()
    system.seed_demand({(HP2, "z-a"): 3})
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the state directory should be")
    system.extra = []
    argv = system.argv(1)
    argv[argv.index("--cluster-state") + 1] = str(blocker / "cluster.db")
    from backend.__main__ import main
    code = main(argv)
    err = capsys.readouterr().err
    assert code in (2, 3) and err.count("\n") == 1 and "Traceback" not in err
    assert system.pairs() == set()


def test_a_run_killed_mid_apply_is_repaired_by_the_next(make_system):
    system = make_system()
    system.seed_demand({(HP2, "z-a"): 3, (HP3, "z-a"): 3, (LOGREG, "z-b"): 3, (FOREST, "z-c"): 3})
    argv = system.argv(1, "--concurrency", "1", "--wait-ready")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "backend", *argv], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        wait_for(lambda: len(system.pairs()) >= 1, timeout=60, what="the first provision")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    partial = system.pairs()
    expected = {(HP2, A), (HP3, A), (LOGREG, B), (FOREST, C)}
    assert 1 <= len(partial) < 4 and partial <= expected
    code, report = system.backend(1, "--wait-ready")   # the lock was dropped with the killed run
    assert code == 0, report["errors"]
    assert system.pairs() == expected
    assert actions(report, "provision") == expected - partial
    wait_for(lambda: all(d.ready for d in system.cluster.deployments()), what="every instance ready")


def test_every_runs_a_loop_that_stops_cleanly_on_sigint(make_system, tmp_path):
    system = make_system()
    system.seed_demand({(HP2, "z-a"): 3})
    argv = system.argv(1, "--every", "0.5")
    at = argv.index("--report")
    del argv[at:at + 2]                              # reports go to stdout, one JSON line a run
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "backend", *argv], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        wait_for(lambda: system.pairs() == {(HP2, A)}, timeout=60, what="the loop to provision")
        time.sleep(1.2)                              # at least one more run
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == 0, err
    lines = [line for line in out.splitlines() if line.strip()]
    assert all(line.startswith("{") for line in lines), out       # nothing but the JSON reports
    reports = [json.loads(line) for line in lines]
    assert len(reports) >= 2 and all(r["mode"] == 1 for r in reports)
    assert "Traceback" not in err
    # stderr is not a terminal here: the shared JSON log format (docs/operating.md)
    logged = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert {"component": "backend", "level": "info", "message": "stopped", "event": "stopped"}.items() \
        <= logged[-1].items()
    finished = [r for r in logged if r.get("event") == "run_finished"]
    assert len(finished) >= 2 and all(r["mode"] == 1 and r["exit_code"] == 0 for r in finished)
