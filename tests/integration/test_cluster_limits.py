"""Node limits of the local cluster for real: CPU quota, memory limit and OOM, status, switch off.

These run as root with writable cgroups (this machine and CI). Anywhere else they fail under
CI=true, naming the reason, and skip otherwise.
"""
from __future__ import annotations

import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import psutil
import pytest
import yaml

from cluster import ClusterError
from cluster.limits import TOP, CgroupLimits

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
ROWS = 8                 # digits_cnn instances per request: ~60-130 ms of inference on one core


@pytest.fixture(autouse=True)
def cgroups_writable():
    probe = CgroupLimits.open("probe-writable")
    if not probe.enabled:
        message = f"node limits need writable cgroups: {probe.reason}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)


def small_catalog(tmp_path: Path, memory: int) -> Path:
    """The shipped catalog with half_plus_two declaring `memory` KB (to get past the declared check)."""
    data = yaml.safe_load((REPO_ROOT / "tests" / "fixtures" / "models.yaml").read_text())
    for entry in data["models"]:
        if entry["name"] == "half_plus_two":
            entry["memory"] = memory
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def server_pids(cluster, model: str, node: str) -> list[int]:
    """The model server's master and its workers."""
    with cluster.store.read() as conn:
        row = cluster.store.instance(conn, model, node)
    master = psutil.Process(row.pid)
    return [master.pid] + [c.pid for c in master.children(recursive=True)]


def cgroup_of(pid: int) -> str:
    return Path(f"/proc/{pid}/cgroup").read_text()


def post(endpoint: str, model: str, body: bytes) -> float:
    host, port = endpoint.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        started = time.perf_counter()
        conn.request("POST", f"/v1/models/{model}:predict", body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        assert response.status == 200
        return time.perf_counter() - started
    finally:
        conn.close()


def assert_inference_alone_is_limited(cluster, nodes: dict, workers: dict) -> None:
    """cgroup v1: each node's quota is on its `inference` group, which holds the worker's inference
    thread and nothing else; the node group has none (v2: the quota stays on the node group)."""
    for name in nodes:
        group = cluster.limits.layout.cpu / TOP / cluster.limits.cluster / name
        inference = cluster.limits.inference_dir(name)
        if cluster.limits.layout.version == 2:
            assert inference is None
            continue
        assert inference == group / "inference"
        quota = {"nano": "2500", "xavier": "10000"}[name]
        assert (inference / "cpu.cfs_quota_us").read_text().strip() == quota
        assert (group / "cpu.cfs_quota_us").read_text().strip() == "-1"
        threads = {t.id for t in workers[name].threads()}
        limited = {int(t) for t in (inference / "tasks").read_text().split()}
        # one inference at a time on a node of up to one core: one thread, the worker's, not its main one
        assert len(limited) == 1 and limited <= threads and workers[name].pid not in limited, (limited, threads)


def test_a_quarter_core_node_is_about_four_times_slower(local_cluster_factory):
    cluster = local_cluster_factory([
        {"name": "nano", "memory": 250000, "cpu": 4.0, "cpu_quota": 0.25, "class": "small"},
        {"name": "xavier", "memory": 800000, "cpu": 8.0, "cpu_quota": 1.0, "class": "large"},
    ])
    # digits_cnn: a model whose cost is its inference, which the quota limits (cluster/limits.py).
    nodes = {name: cluster.deploy("digits_cnn", name) for name in ("nano", "xavier")}
    workers = {}
    for name in nodes:
        pids = server_pids(cluster, "digits_cnn", name)
        assert len(pids) >= 2, "a gunicorn master and its worker"
        for pid in pids:       # the master was placed before it forked: its worker inherited
            assert re.search(rf"/{TOP}/{cluster.limits.cluster}/{name}/digits_cnn\.\d+$",
                             cgroup_of(pid), re.M), cgroup_of(pid)
        workers[name] = psutil.Process(pids[-1])
    body = json.dumps({"instances": [[float((i * 7 + j) % 16) for j in range(64)]
                                     for i in range(ROWS)]}).encode()
    assert_inference_alone_is_limited(cluster, nodes, workers)
    for endpoint in nodes.values():
        post(endpoint.endpoint, "digits_cnn", body)                 # warm-up
    # Interleaved, so both nodes see the same background load; the best of three rounds counts,
    # because another process can take the 1-core node's core but nothing can lift the quarter's.
    rounds = []
    for _ in range(3):
        walls: dict[str, list[float]] = {"nano": [], "xavier": []}
        cores: dict[str, list[float]] = {"nano": [], "xavier": []}
        for _ in range(4):
            for name, deployment in nodes.items():
                before = sum(workers[name].cpu_times()[:2])
                walls[name].append(post(deployment.endpoint, "digits_cnn", body))
                cores[name].append((sum(workers[name].cpu_times()[:2]) - before) / walls[name][-1])
        ratio = statistics.median(walls["nano"]) / statistics.median(walls["xavier"])
        rounds.append((ratio, {n: round(statistics.median(c), 2) for n, c in cores.items()},
                       {n: round(statistics.median(w), 3) for n, w in walls.items()}))
        if 2.5 <= ratio <= 6.0:
            break
    ratio, cores_used, medians = max(rounds, key=lambda r: r[1]["xavier"])
    print(f"nano/xavier = {ratio:.2f}, medians {medians} s, cores used {cores_used}")
    # The ceiling holds whatever the host's load: the nano never gets more than a quarter core.
    assert cores_used["nano"] <= 0.32, rounds
    # And the 1-core node is not held to a quarter.
    assert cores_used["xavier"] >= 0.45, rounds
    if cores_used["xavier"] >= 0.75 or 2.5 <= ratio <= 6.0:
        assert 2.5 <= ratio <= 6.0, rounds
    else:
        # Other processes held the host's cores (load average above the core count): the 1-core
        # node got what was left, so its request took longer than on an idle host. The ratio must
        # then still be what the two nodes' measured shares of a core say it is.
        expected = cores_used["xavier"] / cores_used["nano"]
        assert 0.75 * expected <= ratio <= 1.25 * expected, rounds
        warnings.warn(f"host saturated (load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores): "
                      f"the 1-core node got {cores_used['xavier']} core, nano/xavier = {ratio:.2f} "
                      f"instead of ~4")


def test_a_server_over_its_node_memory_is_reported_failed(local_cluster_factory, tmp_path):
    # Declared 20000 KB gets past the declared-memory check; a model server really needs ~40 MB
    # (anonymous memory), more than the node's 30000 KB limit.
    cluster = local_cluster_factory([{"name": "tiny", "memory": 30000, "cpu": 1.0, "cpu_quota": 0.5},
                                     {"name": "roomy", "memory": 250000, "cpu": 1.0}],
                                    catalog_path=small_catalog(tmp_path, 20000))
    reason = "killed: node memory limit 30000 KB exceeded (OOM)"
    with pytest.raises(ClusterError) as info:
        cluster.deploy("half_plus_two", "tiny", timeout=60)
    assert reason in str(info.value) and "\n" not in str(info.value)
    [failed] = cluster.deployments()
    assert (failed.model, failed.node, failed.ready, failed.reason) == ("half_plus_two", "tiny", False, reason)
    assert {n.name: n.memory_used for n in cluster.nodes()}["tiny"] == 20000, "a failed deployment keeps its place"

    # Without waiting: every read until it fails and after says not ready, never serving.
    cluster.remove("half_plus_two", "tiny")
    cluster.deploy("half_plus_two", "tiny", wait=False)
    seen = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        [d] = cluster.deployments()
        seen.append((d.ready, d.reason))
        if d.reason:
            break
        time.sleep(0.1)
    for _ in range(10):
        [d] = cluster.deployments()
        seen.append((d.ready, d.reason))
        time.sleep(0.1)
    assert not any(ready for ready, _ in seen), seen
    assert seen[-1] == (False, reason)
    status = subprocess.run([sys.executable, "-m", "cluster", "--config", str(cluster.config_path),
                             "--state", str(cluster.state_path), "--catalog", str(cluster.catalog_path),
                             "status"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stderr
    assert reason in status.stdout
    # Its processes are gone (gunicorn would otherwise respawn the killed worker for ever).
    assert not [p for p in psutil.process_iter(["cmdline"])
                if cluster.specs[0].address in (p.info["cmdline"] or [])]

    # The same server on a node with room serves; redeploying on the tiny node fails again.
    assert cluster.deploy("half_plus_two", "roomy").ready
    with pytest.raises(ClusterError, match=re.escape(reason)):
        cluster.deploy("half_plus_two", "tiny", timeout=60)


def test_limits_status_and_cleanup(local_cluster_factory):
    cluster = local_cluster_factory([{"name": "node-a", "memory": 250000, "cpu": 2.0, "cpu_quota": 0.5}])
    assert re.fullmatch(r"cgroup v2, enforced|cgroup v1, enforced, CPU on inference", cluster.limits_status)
    version = cluster.limits.layout.version
    cluster.deploy("half_plus_two", "node-a")
    [group] = cluster.limits.node_dirs("node-a")[-1:]
    # a half-core node runs one inference at a time (cluster/local.py)
    [leaf] = [d for d in group.iterdir() if d.is_dir() and d.name.startswith("half_plus_two.")]
    command = psutil.Process(int(leaf.name.rsplit(".", 1)[1])).cmdline()
    assert command[command.index("--max_concurrent_inferences") + 1] == "1", command
    if version == 1:
        cpu = cluster.limits.layout.cpu / TOP / cluster.limits.cluster / "node-a"
        # the quota on the servers' inference threads (--inference_cgroup), the weight on the node
        assert command[command.index("--inference_cgroup") + 1] == str(cpu / "inference"), command
        assert (cpu / "inference" / "cpu.cfs_quota_us").read_text().strip() == "5000"
        assert (cpu / "inference" / "cpu.cfs_period_us").read_text().strip() == "10000"
        assert (cpu / "cpu.cfs_quota_us").read_text().strip() == "-1"
        assert (cpu / "inference" / "cpu.shares").read_text().strip() == "65536"    # before the HTTP threads
        assert (cpu / "cpu.shares").read_text().strip() == "512"     # in proportion to its half core
        assert int((group / "memory.limit_in_bytes").read_text()) == 250000 * 1024
    else:
        assert (group / "cpu.max").read_text().split() == ["5000", "10000"]
        assert (group / "cpu.weight").read_text().strip() == "50"
        assert int((group / "memory.max").read_text()) == 250000 * 1024

    out = subprocess.run([sys.executable, "-m", "cluster", "--config", str(cluster.config_path),
                          "--state", str(cluster.state_path), "status"],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"limits: {cluster.limits_status}" in out.stdout.splitlines()
    data = json.loads(subprocess.run([sys.executable, "-m", "cluster", "--config", str(cluster.config_path),
                                      "--state", str(cluster.state_path), "status", "--json"],
                                     cwd=REPO_ROOT, capture_output=True, text=True, timeout=60).stdout)
    assert data["limits"] == cluster.limits_status

    cluster.reset()                         # empty groups go with the cluster
    for mount in cluster.limits.layout.mounts:
        assert not (mount / TOP / cluster.limits.cluster).exists()


def test_limits_turned_off_still_serve(local_cluster_factory, monkeypatch, tmp_path):
    # 30000 KB would OOM-kill the server (see above); unconstrained, it serves.
    monkeypatch.setenv("EDGE_LOCAL_LIMITS", "0")
    cluster = local_cluster_factory([{"name": "node-a", "memory": 30000, "cpu": 1.0, "cpu_quota": 0.25}],
                                    catalog_path=small_catalog(tmp_path, 20000))
    assert cluster.limits_status == "none (turned off by EDGE_LOCAL_LIMITS=0)"
    deployment = cluster.deploy("half_plus_two", "node-a")
    assert deployment.ready
    assert post(deployment.endpoint, "half_plus_two", b'{"instances": [1.0]}') > 0
    for pid in server_pids(cluster, "half_plus_two", "node-a"):
        assert f"/{TOP}/" not in cgroup_of(pid)
    cluster.reset()

    # The other switch: `limits: false` in the description (read again when the file changes).
    monkeypatch.delenv("EDGE_LOCAL_LIMITS")
    data = yaml.safe_load(cluster.config_path.read_text())
    cluster.config_path.write_text(yaml.safe_dump({"limits": False, **data}))
    os.utime(cluster.config_path, ns=(time.time_ns(), time.time_ns() + 10**9))
    cluster.nodes()
    assert cluster.limits_status.startswith("none (turned off by 'limits: false' in ")
    assert cluster.deploy("half_plus_two", "node-a").ready
    out = subprocess.run([sys.executable, "-m", "cluster", "--config", str(cluster.config_path),
                          "--state", str(cluster.state_path), "--catalog", str(cluster.catalog_path),
                          "status"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0].startswith("limits: none (turned off by 'limits: false' in ")


def profile(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cluster", "profile", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)


def test_profile_dry_run_measures_one_model(tmp_path, built_models):
    catalog = tmp_path / "models.yaml"
    original = (REPO_ROOT / "config" / "models.yaml").read_text()
    catalog.write_text(original)
    result = profile("--dry-run", "--json", "--model", "digits_forest", "--catalog", str(catalog),
                     "--models-dir", str(built_models))
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["written"] is False and list(out["models"]) == ["digits_forest"]
    fields = out["models"]["digits_forest"]
    assert 20_000 <= fields["memory"] <= 400_000 and fields["memory"] % 1000 == 0
    measured = fields["measured"]
    assert measured["cpu_quota"] == {"small": 0.25, "large": 1.0}     # from config/cluster.local.yaml
    assert measured["rss"] >= measured["charged"] > 0
    assert set(fields["exec_time"]) >= {"small", "large"}
    assert all(0 < s < 5 for s in fields["exec_time"].values())
    assert_idle_and_scv(fields)
    assert catalog.read_text() == original, "a dry run writes nothing"

    text = profile("--dry-run", "--model", "half_plus_two", "--catalog", str(catalog),
                   "--models-dir", str(built_models))
    assert text.returncode == 0, text.stderr
    assert "half_plus_two" in text.stdout and "dry run:" in text.stdout
    assert catalog.read_text() == original


def assert_idle_and_scv(fields: dict) -> None:
    """Every class has its back-to-back variability; an idle pace exactly where back to back is slow enough."""
    from cluster.profile import IDLE_MIN

    assert set(fields["exec_time_scv"]) == set(fields["exec_time"])
    assert all(0 <= x < 50 for x in fields["exec_time_scv"].values())
    idle = fields["exec_time_idle"] or {}
    assert set(idle) == {c for c, s in fields["exec_time"].items() if s >= IDLE_MIN}
    assert all(0 < s < 5 for s in idle.values())


def test_profile_measures_the_idle_pace_of_a_slow_model(tmp_path, built_models):
    """digits_cnn is slower than IDLE_MIN back to back at every class: it gets an idle figure at each."""
    catalog = tmp_path / "models.yaml"
    catalog.write_text((REPO_ROOT / "config" / "models.yaml").read_text())
    started = time.monotonic()
    result = profile("--dry-run", "--json", "--model", "digits_cnn", "--catalog", str(catalog),
                     "--models-dir", str(built_models))
    assert result.returncode == 0, result.stderr
    fields = json.loads(result.stdout)["models"]["digits_cnn"]
    assert set(fields["exec_time_idle"]) == {"small", "large"}
    assert_idle_and_scv(fields)
    assert time.monotonic() - started < 60


def test_profile_writes_the_catalog_keeping_its_comments(tmp_path, built_models):
    from cluster.catalog import load_catalog

    catalog = tmp_path / "models.yaml"
    original = (REPO_ROOT / "config" / "models.yaml").read_text()
    catalog.write_text(original)
    result = profile("--model", "half_plus_three", "--catalog", str(catalog), "--models-dir", str(built_models))
    assert result.returncode == 0, result.stderr
    text = catalog.read_text()
    comments = [line for line in original.splitlines() if line.lstrip().startswith("#")]
    assert comments == [line for line in text.splitlines() if line.lstrip().startswith("#")]
    before, after = load_catalog(REPO_ROOT / "config" / "models.yaml"), load_catalog(catalog)
    assert after.names() == before.names()
    changed = yaml.safe_load(text)["models"]
    entry = next(m for m in changed if m["name"] == "half_plus_three")
    assert entry["measured"]["date"] and entry["memory"] == after["half_plus_three"].memory
    assert after["half_plus_three"].exec_time["small"] == entry["exec_time"]["small"]
    assert after["half_plus_three"].exec_time_scv == entry["exec_time_scv"]
    assert_idle_and_scv(entry | {"exec_time_idle": entry.get("exec_time_idle")})
    for name in before.names():                     # the other models are untouched
        if name != "half_plus_three":
            assert after[name] == before[name]
    assert "digits_forest" not in result.stdout


def test_profile_out_writes_a_measured_copy_and_leaves_the_catalog(tmp_path, built_models):
    from cluster.catalog import load_catalog

    catalog = tmp_path / "models.yaml"
    original = (REPO_ROOT / "tests" / "fixtures" / "models.yaml").read_text()
    catalog.write_text(original)
    out = tmp_path / "measured" / "models.yaml"
    result = profile("--model", "half_plus_two", "--catalog", str(catalog), "--models-dir", str(built_models),
                     "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert catalog.read_text() == original, "--out leaves --catalog as it is"
    measured, declared = load_catalog(out), load_catalog(catalog)
    assert measured.names() == declared.names()
    entry = next(m for m in yaml.safe_load(out.read_text())["models"] if m["name"] == "half_plus_two")
    assert entry["measured"]["charged"] > 0
    # memory is the charged figure plus the 10% headroom, rounded up to 1000 KB
    assert entry["memory"] >= entry["measured"]["charged"] * 1.1 and entry["memory"] % 1000 == 0
    # a model that was not profiled keeps its declared figures in the copy
    assert measured["digits_cnn"].memory == declared["digits_cnn"].memory


def test_limit_scope_process_puts_the_quota_on_the_whole_server(local_cluster_factory, monkeypatch):
    """EDGE_LIMIT_SCOPE=process: as before inference had a group of its own, the node's quota on
    the node group, which the whole server is in, and no --inference_cgroup."""
    monkeypatch.setenv("EDGE_LIMIT_SCOPE", "process")
    cluster = local_cluster_factory([{"name": "node-a", "memory": 250000, "cpu": 2.0, "cpu_quota": 0.5}])
    assert cluster.limits.inference_dir("node-a") is None
    cluster.deploy("half_plus_two", "node-a")
    [pid, *_] = server_pids(cluster, "half_plus_two", "node-a")
    assert "--inference_cgroup" not in psutil.Process(pid).cmdline()
    if cluster.limits.layout.version == 1:
        cpu = cluster.limits.layout.cpu / TOP / cluster.limits.cluster / "node-a"
        assert (cpu / "cpu.cfs_quota_us").read_text().strip() == "5000"
        assert not (cpu / "inference").exists()
