"""`python -m cluster` in a subprocess: output, exit codes, one-line errors and never a traceback."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent.parent


def cli(cluster, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    base = [sys.executable, "-m", "cluster", "--config", str(cluster.config_path),
            "--state", str(cluster.state_path), "--models-dir", str(cluster.models_dir),
            "--catalog", str(cluster.catalog_path)]
    return subprocess.run(base + list(args), cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def test_lifecycle_through_the_cli(local_cluster):
    deployed = cli(local_cluster, "deploy", "half_plus_two", "node-a", "--json")
    assert deployed.returncode == 0, deployed.stderr
    data = json.loads(deployed.stdout)
    assert data["ready"] is True and data["endpoint"] == f"{local_cluster.specs[0].address}:8501"
    # The library sees what the CLI did.
    assert [(d.model, d.node, d.ready) for d in local_cluster.deployments()] == [("half_plus_two", "node-a", True)]

    text = cli(local_cluster, "status")
    assert text.returncode == 0 and "half_plus_two" in text.stdout and "node-a" in text.stdout
    status = json.loads(cli(local_cluster, "--json", "status").stdout)
    nodes = {n["name"]: n for n in status["nodes"]}
    assert nodes["node-a"]["memory_used"] == 60000 and nodes["node-a"]["memory_rss"] > 0
    assert nodes["node-a"]["labels"] == {"node-class": "small"}
    assert set(nodes["node-a"]) >= {"address", "ready", "memory_total", "memory_available",
                                    "cpu_capacity", "cpu_usage"}

    down = cli(local_cluster, "node-down", "node-a")
    assert down.returncode == 0, down.stderr
    assert not local_cluster.node("node-a").ready
    failed = cli(local_cluster, "deploy", "half_plus_three", "node-a")
    assert failed.returncode == 1 and "down" in one_line_error(failed)
    up = cli(local_cluster, "node-up", "node-a", "--json")
    assert up.returncode == 0, up.stderr
    assert [d["model"] for d in json.loads(up.stdout)["deployments"]] == ["half_plus_two"]

    removed = cli(local_cluster, "remove", "half_plus_two", "node-a")
    assert removed.returncode == 0 and local_cluster.deployments() == []
    assert cli(local_cluster, "remove", "half_plus_two", "node-a").returncode == 0
    local_cluster.deploy("half_plus_two", "node-b", wait=False)
    assert cli(local_cluster, "reset").returncode == 0
    assert local_cluster.deployments() == []


@pytest.mark.parametrize("args, fragment", [
    (["deploy", "no_such_model", "node-a"], "unknown model 'no_such_model'"),
    (["deploy", "half_plus_two", "node-z"], "unknown node 'node-z'"),
    (["remove", "half_plus_two", "node-z"], "unknown node 'node-z'"),
    (["node-down", "node-z"], "unknown node 'node-z'"),
    (["frobnicate"], "invalid choice"),
    (["deploy", "half_plus_two"], "the following arguments are required"),
    (["deploy", "half_plus_two", "node-a", "--timeout", "soon"], "invalid float value"),
    ([], "the following arguments are required"),
])
def test_bad_input_exits_2(local_cluster, args, fragment):
    result = cli(local_cluster, *args)
    assert result.returncode == 2
    assert fragment in one_line_error(result)


def test_bad_config_and_catalog_exit_2(tmp_path, local_cluster):
    bad = tmp_path / "bad.yaml"
    bad.write_text("nodes:\n  - {name: n1, address: 10.1.1.1, memory: 1, cpu: 1, class: small}\n")
    result = subprocess.run([sys.executable, "-m", "cluster", "--config", str(bad), "--state",
                             str(tmp_path / "s.db"), "status"], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    line = one_line_error(result)
    assert str(bad) in line and "node 'n1'" in line and "field 'address'" in line
    result = cli(local_cluster, "--catalog", str(tmp_path / "missing.yaml"), "status")
    assert result.returncode == 2 and "cannot read" in one_line_error(result)


def test_cluster_failures_exit_1(local_cluster_factory, tmp_path):
    cluster = local_cluster_factory([{"name": "tiny", "memory": 1000}])
    result = cli(cluster, "deploy", "half_plus_two", "tiny")
    assert result.returncode == 1
    assert "needs 60000 KB" in one_line_error(result)
    unusable = tmp_path / "a-directory"
    unusable.mkdir()
    result = subprocess.run([sys.executable, "-m", "cluster", "--config", str(cluster.config_path),
                             "--state", str(unusable), "status"], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 1
    assert "cluster state" in one_line_error(result)


def test_help_works():
    result = subprocess.run([sys.executable, "-m", "cluster", "--help"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=60, env={**os.environ})
    assert result.returncode == 0
    for command in ("status", "deploy", "remove", "node-down", "node-up", "reset"):
        assert command in result.stdout


@pytest.mark.parametrize("args, fragment", [
    (["--config", "/bin/ls", "status"], "not UTF-8"),
    (["--config", "{binary}", "status"], "not UTF-8"),
    (["--config", "{deep}", "status"], "nested too deeply"),
    (["--config", "{folder}", "status"], "cannot read"),
    (["--config", "{huge}", "status"], "too large"),
    (["--catalog", "/bin/ls", "status"], "not UTF-8"),
    (["--catalog", "{binary}", "status"], "not UTF-8"),
    (["--catalog", "{deep}", "status"], "nested too deeply"),
    (["--state", "/bin/ls", "status"], "not an SQLite database"),
    (["--state", "{binary}", "status"], "not an SQLite database"),
    (["--models-dir", "/bin/ls", "status"], "not a folder"),
    (["deploy", "m", "n", "--timeout", "-5"], "--timeout"),
    (["deploy", "m", "n", "--timeout", "nan"], "--timeout"),
    (["deploy", "m", "n", "--timeout", "inf"], "--timeout"),
    (["deploy", "m", "n", "--timeout", "0"], "--timeout"),
    (["node-up", "n", "--timeout", "1e300"], "--timeout"),
    (["node-up", "n", "--timeout", "-inf"], "--timeout"),
])
def test_bad_files_and_numbers_exit_2_in_one_line(tmp_path, args, fragment):
    (tmp_path / "binary").write_bytes(b"\xff\xfe\x00\x01" * 64)
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (tmp_path / "huge.yaml").write_text(
        "nodes:\n  - {name: n1, address: 127.0.0.2, memory: 1" + "0" * 400 + ", cpu: 1, class: small}\n")
    files = {"binary": tmp_path / "binary", "deep": tmp_path / "deep.json", "folder": tmp_path,
             "huge": tmp_path / "huge.yaml"}
    # the defaults first, so that the file under test (given after them) is the one used
    base = [sys.executable, "-m", "cluster", "--state", str(tmp_path / "s.db")]
    result = subprocess.run(base + [a.format(**files) for a in args], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert fragment in one_line_error(result)
