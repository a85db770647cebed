"""Shared fixtures: the built models and throw-away local clusters on unique loopback addresses.

`local_cluster_factory` is meant for every component's tests (cluster, front-end, back-end): each
cluster it makes gets its own random loopback block 127.<r>.<r>.<2..> and its own state file, so
tests of different helpers can run at the same time without their model servers colliding, and
every server a test started is stopped at teardown even when the test fails.
"""
from __future__ import annotations

import fcntl
import random
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterator

import psutil
import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
MODELS_DIR = REPO_ROOT / "build" / "models"
CATALOG = REPO_ROOT / "tests" / "fixtures" / "models.yaml"


def _models_present(models_dir: Path) -> bool:
    from cluster.catalog import load_catalog

    for spec in load_catalog(CATALOG):
        folder = models_dir / spec.model_file
        if not folder.is_dir() or not any(folder.glob("*/model.onnx")):
            return False
    return True


@pytest.fixture(scope="session")
def built_models() -> Path:
    """Return build/models, building the shipped models first when missing (under a file lock)."""
    if _models_present(MODELS_DIR):
        return MODELS_DIR
    if not (REPO_ROOT / "modelserver" / "build_models.py").exists():
        pytest.skip("modelserver/build_models.py is not there yet: cannot build the models")
    MODELS_DIR.parent.mkdir(parents=True, exist_ok=True)
    with open(MODELS_DIR.parent / ".models.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)        # concurrent test runs build once
        if not _models_present(MODELS_DIR):
            subprocess.run([sys.executable, "-m", "modelserver.build_models", "--out", str(MODELS_DIR)],
                           cwd=REPO_ROOT, check=True, timeout=600)
    return MODELS_DIR


def unique_loopback_prefix() -> str:
    """Return a random loopback /24 prefix "127.a.b" away from the shipped 127.0.x.x nodes."""
    return f"127.{random.randint(2, 254)}.{random.randint(2, 254)}"


DEFAULT_NODES = [
    {"name": "node-a", "memory": 250000, "cpu": 2.0, "class": "small"},
    {"name": "node-b", "memory": 250000, "cpu": 2.0, "class": "small"},
    {"name": "node-c", "memory": 800000, "cpu": 4.0, "class": "large"},
]


def write_cluster_config(path: Path, nodes: list[dict] | None = None) -> list[dict]:
    """Write a local cluster config with unique loopback addresses; return the node entries."""
    prefix = unique_loopback_prefix()
    entries = []
    for index, node in enumerate(nodes or DEFAULT_NODES):
        entry = {"name": f"node-{chr(ord('a') + index)}", "memory": 250000, "cpu": 2.0, "class": "small"}
        entry.update(node)
        entry.setdefault("address", f"{prefix}.{index + 2}")
        entries.append(entry)
    path.write_text(yaml.safe_dump({"nodes": entries}, sort_keys=False))
    return entries


def _kill_servers_on(addresses: set[str]) -> None:
    """Kill any model server still bound to one of `addresses` (safety net after reset())."""
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if "modelserver" in cmdline and "--host" in cmdline:
            host = cmdline[cmdline.index("--host") + 1] if cmdline.index("--host") + 1 < len(cmdline) else ""
            if host in addresses:
                try:
                    proc.kill()
                except psutil.Error:
                    pass


@pytest.fixture
def local_cluster_factory(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable]:
    """Yield make(nodes=None, *, state_path=None, models_dir=None, catalog_path=None, **kw) -> LocalCluster.

    `nodes` is a list of partial node entries (name, memory, cpu, class; address is filled in
    with a unique loopback address). Every cluster made is reset() at teardown.
    """
    from cluster.local import LocalCluster

    made: list[LocalCluster] = []
    addresses: set[str] = set()

    def make(nodes: list[dict] | None = None, *, state_path: str | Path | None = None,
             models_dir: str | Path | None = None, catalog_path: str | Path | None = None,
             **kwargs) -> LocalCluster:
        index = len(made)
        config = tmp_path / f"cluster-{index}.yaml"
        entries = write_cluster_config(config, nodes)
        addresses.update(e["address"] for e in entries)
        if models_dir is None:
            models_dir = request.getfixturevalue("built_models")
        kwargs.setdefault("stop_grace", 3.0)
        cluster = LocalCluster(config, catalog_path=catalog_path or CATALOG,
                               state_path=state_path or tmp_path / f"cluster-{index}.db",
                               models_dir=models_dir, **kwargs)
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        try:
            cluster.reset()
        except Exception:  # teardown must go on; the safety net below still runs
            pass
    _kill_servers_on(addresses)


@pytest.fixture
def local_cluster(local_cluster_factory) -> "LocalCluster":  # noqa: F821
    """Return a three-node LocalCluster (node-a, node-b small; node-c large) on unique addresses."""
    return local_cluster_factory()
