"""The local cluster with real model-server processes on unique loopback addresses."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request

import psutil
import pytest

from cluster import (ClusterError, InsufficientMemory, NodeNotReady, UnknownModel, UnknownNode,
                     open_cluster)
from cluster.local import LocalCluster
from cluster.local_proc import port_in_use

from tests.waiting import wait_for

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def predict(endpoint: str, model: str, instances: list, *, timeout: float = 10.0) -> dict:
    body = json.dumps({"instances": instances}).encode()
    request = urllib.request.Request(f"http://{endpoint}/v1/models/{model}:predict", data=body,
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def servers_on(address: str) -> list[psutil.Process]:
    """Return the top-level model-server processes bound to `address`."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if "modelserver" in cmdline and "--host" in cmdline and address in cmdline:
            found.append(proc)
    return [p for p in found if p.ppid() not in {q.pid for q in found}]


def node(cluster, name):
    return next(n for n in cluster.nodes() if n.name == name)


def test_deploy_predict_report_remove(local_cluster):
    cluster = local_cluster
    a = cluster.specs[0]
    deployment = cluster.deploy("half_plus_two", "node-a")
    assert deployment.ready and deployment.node == "node-a" and deployment.model == "half_plus_two"
    assert deployment.endpoint == f"{a.address}:8501"
    assert predict(deployment.endpoint, "half_plus_two", [1.0, 2.0, 5.0]) == {"predictions": [2.5, 3.0, 4.5]}

    [listed] = cluster.deployments()
    assert listed == deployment
    info = node(cluster, "node-a")
    assert info.ready and info.memory_used == 60000 and info.memory_available == 250000 - 60000
    assert info.memory_rss > 10_000, "a model server holds more than 10 MB resident"
    assert info.labels == {"node-class": "small"}
    idle = node(cluster, "node-b")
    assert idle.memory_used == 0 and idle.memory_rss == 0 and idle.cpu_usage == 0.0

    again = cluster.deploy("half_plus_two", "node-a")              # idempotent
    assert again == deployment
    assert len(servers_on(a.address)) == 1

    cluster.remove("half_plus_two", "node-a")
    assert cluster.deployments() == []
    assert servers_on(a.address) == []
    assert not port_in_use(a.address, 8501)
    assert node(cluster, "node-a").memory_used == 0
    cluster.remove("half_plus_two", "node-a")                      # idempotent


def test_open_cluster_factory_returns_local(tmp_path, local_cluster):
    other = open_cluster("local", config_path=local_cluster.config_path,
                         state_path=local_cluster.state_path, models_dir=local_cluster.models_dir)
    assert isinstance(other, LocalCluster)
    assert [n.name for n in other.nodes()] == ["node-a", "node-b", "node-c"]


def test_deploy_without_wait_becomes_ready_on_read(local_cluster):
    deployment = local_cluster.deploy("half_plus_three", "node-c", wait=False)
    assert deployment.ready is False
    ready = wait_for(lambda: [d for d in local_cluster.deployments() if d.ready], 60, "the instance ready")
    assert ready and ready[0].model == "half_plus_three"
    assert predict(ready[0].endpoint, "half_plus_three", [2.0]) == {"predictions": [4.0]}
    # A later waiting deploy of the same pair returns the same instance.
    assert local_cluster.deploy("half_plus_three", "node-c").created == deployment.created


def test_memory_refusal(local_cluster_factory):
    cluster = local_cluster_factory([{"name": "tiny", "memory": 50000}, {"name": "mid", "memory": 100000}])
    with pytest.raises(InsufficientMemory) as info:
        cluster.deploy("half_plus_two", "tiny")
    assert "needs 60000 KB" in str(info.value) and "50000 KB available" in str(info.value)
    cluster.deploy("half_plus_two", "mid", wait=False)
    with pytest.raises(InsufficientMemory) as info:
        cluster.deploy("half_plus_three", "mid")
    assert "needs 60000 KB" in str(info.value) and "40000 KB available" in str(info.value)
    assert [(d.model, d.node) for d in cluster.deployments()] == [("half_plus_two", "mid")]
    assert servers_on(cluster.specs[0].address) == []


def test_unknown_model_and_node(local_cluster):
    with pytest.raises(UnknownModel, match="nonexistent"):
        local_cluster.deploy("nonexistent", "node-a")
    with pytest.raises(UnknownNode, match="node-z"):
        local_cluster.deploy("half_plus_two", "node-z")
    with pytest.raises(UnknownModel):
        local_cluster.remove("nonexistent", "node-a")
    with pytest.raises(UnknownNode):
        local_cluster.remove("half_plus_two", "node-z")
    for action in (local_cluster.node_down, local_cluster.node_up):
        with pytest.raises(UnknownNode):
            action("node-z")
    assert issubclass(UnknownModel, ClusterError) and issubclass(UnknownNode, ClusterError)


def test_cpu_usage_follows_load(local_cluster):
    busy = local_cluster.deploy("digits_forest", "node-a")
    local_cluster.deploy("digits_forest", "node-b")
    digits = [[float((i * 7 + j) % 16) for j in range(64)] for i in range(32)]
    stop = threading.Event()

    def load():
        while not stop.is_set():
            try:
                predict(busy.endpoint, "digits_forest", digits)
            except OSError:
                pass

    threads = [threading.Thread(target=load, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        def loaded():
            nodes = {n.name: n for n in local_cluster.nodes()}
            return nodes if nodes["node-a"].cpu_usage > max(0.2, 2 * nodes["node-b"].cpu_usage) else None
        nodes = wait_for(loaded, 30, "the loaded node's CPU above the idle one's", interval=1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=15)
    assert nodes, "the loaded node's measured CPU never rose above the idle node's"
    assert nodes["node-a"].cpu_usage > nodes["node-b"].cpu_usage
    assert nodes["node-c"].cpu_usage == 0.0
    # Once the load stops, the usage falls back.
    settled = wait_for(lambda: node(local_cluster, "node-a").cpu_usage < 0.2, 20, "node-a idle again", interval=1.0)
    assert settled


def test_node_down_and_up(local_cluster):
    first = local_cluster.deploy("half_plus_two", "node-a")
    local_cluster.deploy("half_plus_three", "node-a")
    address = local_cluster.specs[0].address
    local_cluster.node_down("node-a")
    down = node(local_cluster, "node-a")
    assert down.ready is False and down.memory_used == 120000 and down.cpu_usage == 0.0
    listed = local_cluster.deployments()
    assert sorted(d.model for d in listed) == ["half_plus_three", "half_plus_two"]
    assert not any(d.ready for d in listed)
    assert servers_on(address) == []
    assert not port_in_use(address, 8501)
    with pytest.raises(NodeNotReady):
        local_cluster.deploy("digits_logreg", "node-a")
    local_cluster.node_down("node-a")                                  # idempotent

    restarted = local_cluster.node_up("node-a")
    assert sorted(d.model for d in restarted) == ["half_plus_three", "half_plus_two"]
    assert node(local_cluster, "node-a").ready
    again = {d.model: d for d in local_cluster.deployments()}
    assert all(d.ready for d in again.values())
    assert again["half_plus_two"].created == first.created, "a node returns with its last deployments"
    assert predict(again["half_plus_two"].endpoint, "half_plus_two", [1.0]) == {"predictions": [2.5]}
    assert local_cluster.node_up("node-a") == []                       # idempotent
    assert len(servers_on(address)) == 2


def test_remove_on_a_down_node_forgets_it(local_cluster):
    local_cluster.deploy("half_plus_two", "node-b", wait=False)
    local_cluster.node_down("node-b")
    local_cluster.remove("half_plus_two", "node-b")
    local_cluster.node_up("node-b")
    assert local_cluster.deployments() == []
    assert servers_on(local_cluster.specs[1].address) == []


def test_state_is_shared_and_survives_the_owner(local_cluster_factory):
    owner = local_cluster_factory()
    config, state, models_dir = owner.config_path, owner.state_path, owner.models_dir
    deployment = owner.deploy("half_plus_two", "node-b")
    del owner                                    # the owning object goes away; the server stays
    # A second instance (a restarted owner) sees the same cluster, as does the CLI in a subprocess.
    second = LocalCluster(config, state_path=state, models_dir=models_dir)
    assert second.deployments() == [deployment]
    out = subprocess.run([sys.executable, "-m", "cluster", "--config", str(config), "--state", str(state),
                          "status", "--json"],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    assert [(d["model"], d["node"], d["ready"]) for d in status["deployments"]] == [("half_plus_two", "node-b", True)]
    assert {n["name"]: n["memory_used"] for n in status["nodes"]}["node-b"] == 60000

    # A server killed behind the cluster's back is reported gone, and its memory freed.
    [server] = servers_on(second.specs[1].address)
    server.send_signal(signal.SIGKILL)
    server.wait(timeout=10)
    assert wait_for(lambda: second.deployments() == [], 15, "the killed server gone")
    assert node(second, "node-b").memory_used == 0


def test_stale_entries_after_a_reboot_are_dropped(local_cluster):
    deployment = local_cluster.deploy("half_plus_two", "node-c")
    [server] = servers_on(local_cluster.specs[2].address)
    # Simulate a reboot: the recorded pid now belongs to another process (different start time).
    with sqlite3.connect(local_cluster.state_path) as conn:
        conn.execute("UPDATE instances SET create_time = create_time - 1000")
    try:
        assert local_cluster.deployments() == []
        assert node(local_cluster, "node-c").memory_used == 0
    finally:
        server.kill()
        server.wait(timeout=10)
    # A recorded pid that no longer exists at all is dropped too.
    with sqlite3.connect(local_cluster.state_path) as conn:
        conn.execute("INSERT INTO instances VALUES ('half_plus_two', 'node-a', '127.0.0.9', 8501, 60000, "
                     "999999999, 1.0, 1, 1.0, 'x.log')")
    assert local_cluster.deployments() == []
    assert deployment.ready


# Each process imports the cluster first, then sleeps until a shared instant, so their deploys race
# for real instead of being serialised by interpreter start-up.
RACER = """
import json, sys, time
from cluster.local import LocalCluster
config, state, models, start = sys.argv[1:5]
cluster = LocalCluster(config, state_path=state, models_dir=models)
time.sleep(max(0.0, float(start) - time.time()))
d = cluster.deploy("half_plus_two", "node-a")
print(json.dumps({"endpoint": d.endpoint, "ready": d.ready, "created": d.created}))
"""


def test_concurrent_deploys_from_separate_processes_start_one_server(local_cluster):
    start = time.time() + 3.0
    args = [str(local_cluster.config_path), str(local_cluster.state_path), str(local_cluster.models_dir),
            str(start)]
    procs = [subprocess.Popen([sys.executable, "-c", RACER, *args], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], results
    answers = [json.loads(out) for out, _ in results]
    assert all(a["ready"] for a in answers)
    assert len({(a["endpoint"], a["created"]) for a in answers}) == 1, "all three got the same instance"
    assert len(servers_on(local_cluster.specs[0].address)) == 1
    # The deploying processes have exited; the server outlives them.
    [d] = local_cluster.deployments()
    assert d.ready
    assert predict(d.endpoint, "half_plus_two", [5.0]) == {"predictions": [4.5]}


def test_cli_deploy_outlives_the_cli(local_cluster):
    cmd = [sys.executable, "-m", "cluster", "--config", str(local_cluster.config_path),
           "--state", str(local_cluster.state_path), "--models-dir", str(local_cluster.models_dir),
           "--json", "deploy", "half_plus_three", "node-b"]
    result = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    endpoint = json.loads(result.stdout)["endpoint"]
    assert predict(endpoint, "half_plus_three", [2.0]) == {"predictions": [4.0]}


def test_server_that_dies_at_startup_is_cleaned_up(local_cluster_factory, tmp_path, built_models):
    broken = tmp_path / "models"
    (broken / "half_plus_two" / "1").mkdir(parents=True)
    (broken / "half_plus_two" / "1" / "model.onnx").write_bytes(b"this is not an onnx model")
    cluster = local_cluster_factory(models_dir=broken)
    with pytest.raises(ClusterError) as info:
        cluster.deploy("half_plus_two", "node-a", timeout=60)
    message = str(info.value)
    assert "exited during start-up" in message and "log:" in message
    assert "\n" not in message
    assert cluster.deployments() == []
    assert servers_on(cluster.specs[0].address) == []
    with pytest.raises(ClusterError, match="not found"):
        cluster.deploy("digits_forest", "node-a")


def test_reset_stops_everything(local_cluster):
    local_cluster.deploy("half_plus_two", "node-a", wait=False)
    local_cluster.deploy("half_plus_two", "node-b", wait=False)
    local_cluster.node_down("node-b")
    local_cluster.reset()
    assert local_cluster.deployments() == []
    assert all(n.ready and n.memory_used == 0 for n in local_cluster.nodes())
    for spec in local_cluster.specs:
        assert servers_on(spec.address) == []


def test_config_changes_are_picked_up(local_cluster):
    import yaml
    path = local_cluster.config_path
    data = yaml.safe_load(path.read_text())
    extra = {**data["nodes"][0], "name": "node-new", "address": data["nodes"][0]["address"][:-1] + "9"}
    path.write_text(yaml.safe_dump({"nodes": data["nodes"] + [extra]}))
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert [n.name for n in local_cluster.nodes()][-1] == "node-new"
    path.write_text("nodes: [broken")                  # a bad edit keeps the last good config
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 2 * 10**9))
    assert [n.name for n in local_cluster.nodes()][-1] == "node-new"


def test_deploy_timeout_stops_the_server_it_started(local_cluster):
    with pytest.raises(ClusterError, match="did not answer within"):
        local_cluster.deploy("half_plus_two", "node-a", timeout=0.001)
    assert local_cluster.deployments() == []
    assert servers_on(local_cluster.specs[0].address) == []


def test_port_held_by_a_foreign_process_is_refused(local_cluster_factory):
    import socket
    cluster = local_cluster_factory(stop_grace=0.2)
    with socket.socket() as sock:
        sock.bind((cluster.specs[0].address, 8501))
        sock.listen()
        with pytest.raises(ClusterError, match="already in use"):
            cluster.deploy("half_plus_two", "node-a")
    assert cluster.deployments() == []
    assert servers_on(cluster.specs[0].address) == []


def test_a_removed_instance_drains_out_of_dispatch_before_it_stops(local_cluster_factory):
    """remove(): reported not ready ("terminating") but still serving for drain_seconds, its memory
    still counted; a deploy of the same pair meanwhile waits for it to be gone, then starts afresh."""
    cluster = local_cluster_factory(drain_seconds=2.0)
    first = cluster.deploy("half_plus_two", "node-a")
    remover = threading.Thread(target=cluster.remove, args=("half_plus_two", "node-a"))
    began = time.monotonic()
    remover.start()
    wait_until = began + 0.5
    while time.monotonic() < wait_until and [d.reason for d in cluster.deployments()] != ["terminating"]:
        time.sleep(0.05)
    [listed] = cluster.deployments()
    assert not listed.ready and listed.reason == "terminating"
    assert predict(first.endpoint, "half_plus_two", [1.0]) == {"predictions": [2.5]}   # still serving
    assert node(cluster, "node-a").memory_used == 60000                             # still holding memory
    again = cluster.deploy("half_plus_two", "node-a")          # waits for the old one to be gone
    assert time.monotonic() - began >= 2.0
    remover.join(timeout=30)
    assert again.ready and again.created > first.created
    assert predict(again.endpoint, "half_plus_two", [1.0]) == {"predictions": [2.5]}
    assert len(servers_on(cluster.specs[0].address)) == 1


def test_remove_without_drain_stops_at_once(local_cluster_factory):
    cluster = local_cluster_factory(drain_seconds=0)
    cluster.deploy("half_plus_two", "node-a")
    seen: list = []
    watcher = threading.Thread(target=lambda: seen.extend(d.reason for _ in range(20) for d in cluster.deployments()))
    watcher.start()
    cluster.remove("half_plus_two", "node-a")
    watcher.join(timeout=30)
    assert "terminating" not in seen
    assert cluster.deployments() == [] and servers_on(cluster.specs[0].address) == []
