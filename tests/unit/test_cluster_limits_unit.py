"""cluster.limits and the limits fields of the local config, without touching the cgroup tree."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cluster.limits import (CgroupLimits, Layout, cfs_quota, cluster_id, cpu_weight, detect_layout, limit_scope,
                            oom_reason)
from cluster.local_config import LocalConfigError, load_local_cluster, parse_local_config
from cluster.catalog import ModelSpec
from cluster.profile import Measurement, new_fields, scv, update_catalog_text

GOOD = {"name": "n1", "address": "127.0.1.1", "memory": 1000, "cpu": 2, "class": "small"}


def test_cfs_quota_uses_a_10_ms_period_and_the_kernel_minimum():
    assert cfs_quota(0.25) == (2500, 10_000)
    assert cfs_quota(1.0) == (10_000, 10_000)
    assert cfs_quota(2.5) == (25_000, 10_000)
    quota, period = cfs_quota(0.05)               # 0.5 ms would be below the kernel's 1 ms
    assert quota >= 1000 and abs(quota / period - 0.05) < 1e-3


def test_a_nodes_cpu_weight_is_in_proportion_to_its_cores():
    assert [cpu_weight(c, 1) for c in (0.25, 1.0, None, 0.0001, 1000)] == [256, 1024, 1024, 2, 262_144]
    assert [cpu_weight(c, 2) for c in (0.25, 1.0, None, 0.001, 1000)] == [25, 100, 100, 1, 10_000]


def test_cluster_ids_differ_per_state_file(tmp_path):
    a, b = cluster_id(tmp_path / "a.db"), cluster_id(tmp_path / "b.db")
    assert a != b and a.startswith("a-") and "/" not in a
    assert cluster_id(tmp_path / "a.db") == a


def test_oom_reason_names_the_limit():
    assert oom_reason(250000) == "killed: node memory limit 250000 KB exceeded (OOM)"


def _mountinfo(tmp_path: Path, lines: list[str]) -> str:
    path = tmp_path / "mountinfo"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_detect_v1_and_missing_controllers(tmp_path):
    v1 = _mountinfo(tmp_path, [
        "30 25 0:26 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct",
        "31 25 0:27 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory",
        "32 25 0:28 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw",
    ])
    layout, why = detect_layout(v1)
    assert layout.version == 1 and why == ""
    assert str(layout.cpu) == "/sys/fs/cgroup/cpu,cpuacct" and str(layout.memory) == "/sys/fs/cgroup/memory"
    only_cpu = _mountinfo(tmp_path, ["30 25 0:26 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu"])
    assert detect_layout(only_cpu) == (None, "no cgroup hierarchy with the memory controller")
    assert detect_layout(_mountinfo(tmp_path, ["1 0 0:1 / / rw - ext4 /dev/sda rw"]))[1] == \
        "no cgroup file system mounted"


def test_detect_v2_needs_both_controllers(tmp_path):
    root = tmp_path / "cg"
    root.mkdir()
    info = _mountinfo(tmp_path, [f"30 25 0:26 / {root} rw - cgroup2 cgroup2 rw"])
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    layout, _ = detect_layout(info)
    assert layout.version == 2 and layout.cpu == layout.memory == root
    (root / "cgroup.controllers").write_text("cpuset io pids\n")
    assert detect_layout(info)[0] is None


def test_the_quota_limits_inference_on_v1_only():
    """v1: the node's quota on `<node>/inference`, which the servers' inference threads join;
    v2 (a thread cannot share a cpu group with another process's) and EDGE_LIMIT_SCOPE=process:
    on the node group, for whole servers."""
    v1 = Layout(1, Path("/cg/cpu,cpuacct"), Path("/cg/memory"))
    limits = CgroupLimits(v1, "c1")
    assert limits.scope == "inference" and limits.status == "cgroup v1, enforced, CPU on inference"
    assert limits.inference_dir("nano") == Path("/cg/cpu,cpuacct/edge-inference/c1/nano/inference")
    whole = CgroupLimits(v1, "c1", scope="process")
    assert whole.inference_dir("nano") is None and whole.status == "cgroup v1, enforced"
    v2 = CgroupLimits(Layout(2, Path("/cg"), Path("/cg")), "c1", scope="inference")
    assert v2.scope == "process" and v2.inference_dir("nano") is None and v2.status == "cgroup v2, enforced"
    assert CgroupLimits(None, "c1").inference_dir("nano") is None


@pytest.mark.parametrize("value, scope", [(None, "inference"), ("", "inference"), (" Process ", "process"),
                                          ("inference", "inference")])
def test_limit_scope_reads_the_switch(value, scope):
    assert limit_scope(value) == scope


def test_a_bad_limit_scope_is_named():
    with pytest.raises(ValueError, match="EDGE_LIMIT_SCOPE must be 'inference' or 'process', got 'threads'"):
        limit_scope("threads")


def test_switched_off_status(monkeypatch):
    monkeypatch.setenv("EDGE_LOCAL_LIMITS", "0")
    limits = CgroupLimits.open("x")
    assert not limits.enabled and limits.status == "none (turned off by EDGE_LOCAL_LIMITS=0)"
    monkeypatch.delenv("EDGE_LOCAL_LIMITS")
    assert CgroupLimits.open("x", wanted=False, why_off="off in c.yaml").status == "none (off in c.yaml)"
    assert CgroupLimits(None, "x").wrap(["a", "b"], "n", "m") == ["a", "b"]


def test_wrap_joins_a_leaf_then_execs():
    from cluster.limits import Layout
    limits = CgroupLimits(Layout(1, Path("/cg/cpu"), Path("/cg/memory")), "c-1")
    command = limits.wrap(["python", "-m", "modelserver"], "nano-1", "digits_forest")
    assert command[:2] == ["/bin/sh", "-c"] and command[-3:] == ["python", "-m", "modelserver"]
    assert "/cg/cpu/edge-inference/c-1/nano-1/digits_forest.$$/cgroup.procs" in command[2]
    assert "/cg/memory/edge-inference/c-1/nano-1/digits_forest.$$/cgroup.procs" in command[2]
    assert command[2].endswith('exec "$@"')


@pytest.mark.parametrize("value, expect", [
    (0, "field 'cpu_quota' must be a finite number of cores >= 0.01"),
    (-1, "field 'cpu_quota' must be a finite number of cores >= 0.01"),
    (float("inf"), "field 'cpu_quota' must be a finite number of cores"),
    (float("nan"), "field 'cpu_quota' must be a finite number of cores"),
    ("half", "field 'cpu_quota' must be a number of cores, got 'half'"),
    (True, "field 'cpu_quota' must be a number of cores"),
])
def test_bad_cpu_quota_is_named(value, expect):
    with pytest.raises(LocalConfigError) as info:
        parse_local_config({"nodes": [{**GOOD, "cpu_quota": value}]}, source="c.yaml")
    assert "c.yaml: node 'n1': " + expect in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("field", ["cpu", "memory"])
def test_non_finite_numbers_are_refused(field):
    with pytest.raises(LocalConfigError, match=f"field '{field}' must be a finite number"):
        parse_local_config({"nodes": [{**GOOD, field: float("inf")}]}, source="c.yaml")


def test_limits_switch(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"limits": False, "nodes": [{**GOOD, "cpu_quota": 0.25}]}))
    config = load_local_cluster(path)
    assert config.limits is False and config.nodes[0].cpu_quota == 0.25
    path.write_text(yaml.safe_dump({"limits": "no", "nodes": [GOOD]}))
    with pytest.raises(LocalConfigError, match="field 'limits' must be true or false"):
        load_local_cluster(path)
    path.write_text(yaml.safe_dump({"nodes": [GOOD]}))
    assert load_local_cluster(path).limits is True and load_local_cluster(path).nodes[0].cpu_quota is None


def test_shipped_quotas_fit_a_two_core_host():
    config = load_local_cluster(Path(__file__).resolve().parent.parent.parent / "config" / "cluster.local.yaml")
    assert config.limits is True
    assert sum(n.cpu_quota for n in config.nodes) <= 2.0
    assert {n.node_class: n.cpu_quota for n in config.nodes} == {"small": 0.25, "large": 1.0}


CATALOG = """\
# header comment
models:
  - name: a
    image: img
    port: 1
    memory: 10
    cpu: 0.1
    exec_time: {small: 1.0, large: 0.5}

  # between
  - name: b
    image: img
    port: 2
    memory: 20
    cpu: 0.1
    exec_time:
      small: 2.0
      large: 1.0
    measured: {date: old}
"""


def test_update_catalog_text_keeps_comments_and_layout():
    updates = {"a": {"memory": 11000, "exec_time": {"small": 0.4, "large": 0.1}, "measured": {"date": "d"}},
               "b": {"memory": 22000, "exec_time": {"small": 0.8, "large": 0.2}, "measured": {"date": "d"}}}
    text = update_catalog_text(CATALOG, updates)
    assert text.startswith("# header comment\n") and "\n  # between\n" in text
    data = yaml.safe_load(text)["models"]
    assert data[0] == {"name": "a", "image": "img", "port": 1, "memory": 11000, "cpu": 0.1,
                       "exec_time": {"small": 0.4, "large": 0.1}, "measured": {"date": "d"}}
    assert data[1]["memory"] == 22000 and data[1]["exec_time"] == {"small": 0.8, "large": 0.2}
    assert data[1]["measured"] == {"date": "d"}
    assert "    measured: {date: d}\n\n  # between" in text
    with pytest.raises(ValueError, match="'c'"):
        update_catalog_text(CATALOG, {"c": {"memory": 1}})


def test_update_catalog_text_puts_the_idle_and_scv_lines_right_after_exec_time():
    updates = {"a": {"exec_time": {"small": 0.4}, "exec_time_idle": {"small": 0.3},
                     "exec_time_scv": {"small": 0.1}, "measured": {"date": "d"}},
               "b": {"exec_time_idle": {"small": 1.5}, "exec_time_scv": {"small": 0.2, "large": 0.0}}}
    text = update_catalog_text(CATALOG, updates)
    assert text.startswith("# header comment\n") and "\n  # between\n" in text
    assert ("    exec_time: {small: 0.4}\n    exec_time_idle: {small: 0.3}\n    exec_time_scv: {small: 0.1}\n"
            "    measured: {date: d}\n\n  # between\n") in text
    # b's block-style exec_time is not touched: the new lines follow its last line
    assert ("    exec_time:\n      small: 2.0\n      large: 1.0\n    exec_time_idle: {small: 1.5}\n"
            "    exec_time_scv: {small: 0.2, large: 0.0}\n    measured: {date: old}\n") in text
    data = yaml.safe_load(text)["models"]
    assert data[1]["exec_time"] == {"small": 2.0, "large": 1.0} and data[1]["exec_time_idle"] == {"small": 1.5}


def test_update_catalog_text_replaces_the_idle_line_and_none_removes_it():
    first = update_catalog_text(CATALOG, {"a": {"exec_time": {"small": 0.4}, "exec_time_idle": {"small": 0.3},
                                                "exec_time_scv": {"small": 0.1}}})
    again = update_catalog_text(first, {"a": {"exec_time": {"small": 0.5}, "exec_time_idle": {"small": 0.35},
                                              "exec_time_scv": {"small": 0.2}}})
    assert again == first.replace("0.4}", "0.5}").replace("0.3}", "0.35}").replace("0.1}", "0.2}")
    gone = update_catalog_text(again, {"a": {"exec_time_idle": None}, "b": {"exec_time_idle": None}})
    assert "exec_time_idle" not in gone
    assert gone == again.replace("    exec_time_idle: {small: 0.35}\n", "")


def test_new_fields_write_the_idle_time_only_for_classes_measured_idle():
    old = ModelSpec(name="m", image="i", port=1, model_file="m", memory=1, cpu=1.0,
                    exec_time={"large": 0.01, "small": 0.04, "tiny": 0.2},
                    exec_time_idle={"large": 0.009, "small": 0.03, "tiny": 0.15}, exec_time_scv={"tiny": 0.3})
    fast = Measurement("m", charged=1000, rss=2000, exec_time_1core=0.002, exec_time={"small": 0.0123456, "large": 0.002},
                       exec_time_idle={"small": 0.0100004}, exec_time_scv={"small": 0.012346, "large": 0.5})
    fields = new_fields(fast, old, date="d", host="h", cgroup="v2", quotas={"small": 0.25, "large": 1.0})
    assert list(fields) == ["memory", "exec_time", "exec_time_idle", "exec_time_scv", "measured"]
    assert fields["exec_time"] == {"large": 0.002, "small": 0.01235, "tiny": 0.2}      # the file's order kept
    # small: the new figure; large: measured, below IDLE_MIN, so no idle figure (not the stale one);
    # tiny: not measured this time, kept
    assert fields["exec_time_idle"] == {"small": 0.01, "tiny": 0.15}
    assert fields["exec_time_scv"] == {"tiny": 0.3, "small": 0.01235, "large": 0.5}
    bare = ModelSpec(name="m", image="i", port=1, model_file="m", memory=1, cpu=1.0, exec_time={"small": 0.04})
    none = new_fields(Measurement("m", 1000, 2000, 0.002, {"small": 0.002}, {}, {"small": 0.1}), bare,
                      date="d", host="h", cgroup="v2", quotas={"small": 0.25})
    assert none["exec_time_idle"] is None and none["exec_time_scv"] == {"small": 0.1}
    assert "exec_time_idle" not in update_catalog_text(CATALOG, {"a": none})


def test_scv_is_the_population_variance_over_the_squared_mean():
    assert scv([0.01] * 7) == 0.0
    assert scv([1.0, 3.0]) == pytest.approx(0.25)        # variance 1, mean 2


def test_sweep_removes_an_old_nodes_inference_group_with_it(tmp_path):
    """Plain folders stand for the tree (a cgroup folder is removed by rmdir once empty, as these):
    an idle node's `inference` group goes with it; a recent one (a deploy under way) stays."""
    import os
    import time

    limits = CgroupLimits(Layout(1, tmp_path / "cpu", tmp_path / "memory"), "c1")
    old, young = (tmp_path / "cpu" / "edge-inference" / "c0" / n for n in ("nano-1", "nano-2"))
    for node in (old, young):
        (node / "inference").mkdir(parents=True)
    hour_ago = time.time() - 7200
    for path in (old / "inference", old, young):
        os.utime(path, (hour_ago, hour_ago))
    limits.sweep(idle=3600)
    assert not old.exists()
    assert (young / "inference").is_dir()
