"""The experiment end to end: a 20-second scenario, two strategies, real processes and node limits.

`python -m testbed run` starts each strategy's system through scripts/run_system.py (what `make
run` uses), replays the same trace with the client emulator, and writes the results.
"""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import yaml

from testbed.scenario import load_scenario
from testbed.trace import generate_trace

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "testbed" / "scenarios" / "smoke.yaml"


def test_two_strategies_on_the_same_trace(tmp_path):
    out = tmp_path / "exp"
    done = subprocess.run([sys.executable, "-m", "testbed", "run", str(SMOKE), "--out", str(out),
                           "--strategies", "kubernetes,ours", "--every", "5", "--initial", "empty",
                           "--cpu-scale", "0.5"],
                          cwd=REPO, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    doc = json.loads((out / "results.json").read_text())
    trace = generate_trace(load_scenario(SMOKE))
    assert doc["initial"] == "empty"            # ours starts from nothing: on-demand provisioning is exercised
    assert doc["trace"]["requests"] == len(trace) and doc["scenario"]["seed"] == 11
    for name in ("kubernetes", "ours"):
        s = doc["strategies"][name]
        assert s["sent"] == len(trace)                        # every strategy saw the whole trace
        assert s["ok"] + s["failed"] == len(trace)
        assert s["ok"] >= 0.8 * len(trace), s["errors"]        # cold starts are waited out (Retry-After)
        assert {"mean", "p50", "p95", "p99"} <= set(s["latency"]) and s["latency"]["p50"] > 0
        assert len(s["phases"]) == 2 and set(s["zones"]) == {"zone-1", "zone-2"}
        assert s["instances"] and s["limits"]
        lines = (out / name / "requests.jsonl").read_text().splitlines()
        assert sorted(json.loads(line)["request_id"] for line in lines) == sorted(a.request_id for a in trace)
    ours = doc["strategies"]["ours"]
    assert ours["backend_runs"] and all(r["status"] in ("optimal", "feasible") for r in ours["backend_runs"]
                                       if r["requests"])
    assert ours["parts"]["server"] is not None                 # Server-Timing reached the clients
    assert doc["strategies"]["kubernetes"]["backend_runs"] == []
    for plot in ("latency_cdf.png", "p95_over_time.png", "instances_over_time.png"):
        assert (out / plot).stat().st_size > 1000
    assert "| ours |" in (out / "results.md").read_text()
    # --cpu-scale 0.5: every node at half its quota (the shipped nano-1's 0.25 core, xavier's 1 core),
    # the catalog measured again at those quotas, and the systems run with it.
    assert doc["calibration"]["scale"] == {"small": 0.5, "large": 0.5}
    assert doc["calibration"]["catalog"] == str(out / "models.yaml")
    assert "Nodes' cpu_quota scaled (small x 0.500, large x 0.500)" in (out / "results.md").read_text()
    for name in ("kubernetes", "ours"):
        nodes = yaml.safe_load((out / name / "cluster.yaml").read_text())["nodes"]
        assert {n["name"]: n["cpu_quota"] for n in nodes} == {"nano-1": 0.125, "xavier": 0.5}
        assert f"catalog:    {out / 'models.yaml'}" in (out / name / "run_system.log").read_text()
    measured = {m["name"]: m for m in yaml.safe_load((out / "models.yaml").read_text())["models"]}
    assert measured["half_plus_two"]["measured"]["cpu_quota"] == {"small": 0.125, "large": 0.5}




def _alive(pids: set[int]) -> set[int]:
    """The processes of `pids` still running (a zombie has stopped; its parent is gone)."""
    alive = set()
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.add(pid)
        except psutil.NoSuchProcess:
            continue
    return alive


def _cmdline(pid: int) -> list[str]:
    try:
        return psutil.Process(pid).cmdline()
    except psutil.Error:
        return []


def _descendants(pid: int) -> set[int]:
    try:
        return {p.pid for p in psutil.Process(pid).children(recursive=True)}
    except psutil.NoSuchProcess:
        return set()


def test_sigterm_stops_the_run_and_its_system(tmp_path):
    """A run killed by SIGTERM (a job's timeout) stops the strategy's system, which runs in sessions
    of its own (front-end, back-end, model servers): nothing of it is left running, and the run says
    it was interrupted."""
    out = tmp_path / "out"
    run = subprocess.Popen([sys.executable, "-m", "testbed", "run", str(SMOKE), "--out", str(out),
                            "--strategies", "ours", "--cpu-scale", "1"],
                           cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        system: set[int] = set()
        # the system is up once a model server runs under it (the spread deployment, before the trace)
        while run.poll() is None and time.monotonic() < deadline:
            system = _descendants(run.pid)
            if any("modelserver" in " ".join(_cmdline(p)) for p in _alive(system)):
                break
            time.sleep(0.2)
        assert run.poll() is None and len(_alive(system)) > 3, "the strategy's system never started"
        time.sleep(2)
        system = _descendants(run.pid)
        run.send_signal(signal.SIGTERM)
        _, err = run.communicate(timeout=90)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 130, err[-2000:]
    assert err.strip().splitlines()[-1].startswith("testbed: interrupted"), err[-2000:]
    assert "Traceback" not in err
    time.sleep(0.5)
    assert _alive(system) == set()
    assert not (out / "results.json").exists()
