"""The testbed's --cpu-scale: this host's speed against the reference catalog's, and scaled quotas."""
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from testbed.calibrate import REFERENCE_CATALOG, auto_scale, corrected, parse_scale

REPO = Path(__file__).resolve().parents[2]


def _catalog(path: Path, cpu_times: dict[str, float | None]) -> Path:
    models = []
    for name, cpu in cpu_times.items():
        entry = {"name": name, "memory": 1000, "exec_time": {"small": 0.01}}
        if cpu is not None:
            entry["measured"] = {"cpu_time": cpu, "host": "h"}
        models.append(entry)
    path.write_text(yaml.safe_dump({"models": models}))
    return path


def test_the_scale_is_the_heaviest_models_cpu_time_ratio_never_above_one(tmp_path):
    reference = _catalog(tmp_path / "ref.yaml", {"light": 0.0005, "heavy": 0.016, "unmeasured": None})
    # The light model's ratio (fixed per-request costs) would say 0.8; the heavy one decides.
    fast = _catalog(tmp_path / "fast.yaml", {"light": 0.0004, "heavy": 0.008, "unmeasured": 0.001})
    scale, why = auto_scale(fast, reference)
    assert scale == pytest.approx(0.5) and "heavy" in why and "x 0.500" in why
    slow = _catalog(tmp_path / "slow.yaml", {"light": 0.001, "heavy": 0.024})
    scale, why = auto_scale(slow, reference)
    assert scale == 1.0 and "not faster" in why
    assert auto_scale(reference, reference)[0] == 1.0                    # no figures of this host
    none = _catalog(tmp_path / "none.yaml", {"light": None, "heavy": None})
    scale, why = auto_scale(none, reference)
    assert scale == 1.0 and "share no model" in why


def test_the_shipped_reference_catalog_has_a_heavy_measured_model():
    scale, why = auto_scale(REFERENCE_CATALOG)
    assert scale == 1.0 and "reference catalog" in why
    doc = yaml.safe_load(REFERENCE_CATALOG.read_text())
    assert max(m.get("measured", {}).get("cpu_time", 0) for m in doc["models"]) >= 0.005


@pytest.mark.parametrize("text, value", [("auto", None), ("AUTO", None), ("0.5", 0.5), ("1", 1.0)])
def test_cpu_scale_values(text, value):
    assert parse_scale(text) == value


@pytest.mark.parametrize("text", ["0", "-0.5", "1.5", "fast", "", "nan"])
def test_bad_cpu_scale_values_are_refused(text):
    with pytest.raises(ValueError, match="--cpu-scale: expected 'auto' or a number in"):
        parse_scale(text)


def test_the_cli_refuses_a_bad_scale_before_doing_anything(tmp_path):
    out = tmp_path / "exp"
    done = subprocess.run([sys.executable, "-m", "testbed", "run", "testbed/scenarios/smoke.yaml", "--out", str(out),
                           "--cpu-scale", "2"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == ["testbed: --cpu-scale: expected 'auto' or a number in (0, 1], got '2'"]
    assert not out.exists()


def test_every_node_quota_is_scaled_in_the_cluster_file(tmp_path):
    from testbed.runner import _cluster_file
    from testbed.scenario import SCENARIOS_DIR, Node, load_scenario

    scenario = load_scenario(SCENARIOS_DIR / "smoke.yaml")
    cloud = Node(name="cloud", node_class="large", cpu=16.0, memory=4_000_000, tier="cloud", cpu_quota=1.0)
    scenario = dataclasses.replace(scenario, nodes=(*scenario.nodes, cloud))
    plain = yaml.safe_load(_cluster_file(scenario, tmp_path / "a.yaml", list(scenario.nodes)).read_text())
    scaled = yaml.safe_load(_cluster_file(scenario, tmp_path / "b.yaml", list(scenario.nodes), 0.4).read_text())
    before = {n["name"]: n for n in plain["nodes"]}
    after = {n["name"]: n for n in scaled["nodes"]}
    assert after["cloud"]["cpu_quota"] == pytest.approx(0.4)
    for name in before:
        assert after[name]["cpu_quota"] == pytest.approx(0.4 * before[name]["cpu_quota"], abs=1e-4)
        assert after[name]["memory"] == before[name]["memory"] and after[name]["cpu"] == before[name]["cpu"]


def test_run_experiment_refuses_a_scale_out_of_range(tmp_path):
    from testbed.runner import run_experiment
    from testbed.scenario import SCENARIOS_DIR, load_scenario

    with pytest.raises(ValueError, match=r"cpu_scale: expected a number in \(0, 1\]"):
        run_experiment(load_scenario(SCENARIOS_DIR / "smoke.yaml"), tmp_path / "out", cpu_scale=1.5)
    assert not (tmp_path / "out" / "trace.jsonl").exists()


def test_auto_falls_back_to_the_plain_quotas_when_the_catalog_cannot_be_measured(tmp_path, monkeypatch):
    """Where the models cannot be measured at the scaled quotas (no cgroups: the quotas are not
    enforced either), `auto` runs the nodes as they are; an asked-for scale is an error."""
    import testbed.runner as runner
    from testbed.scenario import SCENARIOS_DIR, load_scenario

    doc = yaml.safe_load(REFERENCE_CATALOG.read_text())
    for entry in doc["models"]:
        if "measured" in entry:
            entry["measured"]["cpu_time"] /= 2                    # a host twice as fast
    fast = tmp_path / "fast.yaml"
    fast.write_text(yaml.safe_dump(doc))
    scenario = load_scenario(SCENARIOS_DIR / "smoke.yaml", catalog_path=fast)

    def refuse(*args, **kwargs):
        raise RuntimeError("cannot measure the models at the scaled quotas: profiling needs cgroup limits")
    monkeypatch.setattr(runner, "profile_at", refuse)
    said = []
    kept, calibration = runner._calibrate(scenario, tmp_path, None, said.append)
    assert calibration["scale"] == {"small": 1.0, "large": 1.0}
    assert "x 0.500, but cannot measure" in calibration["why"]
    assert kept.catalog_path == fast and calibration["catalog"] == str(fast) and len(said) == 2
    with pytest.raises(RuntimeError, match="profiling needs cgroup limits"):
        runner._calibrate(scenario, tmp_path, 0.5, said.append)


def test_each_class_is_corrected_by_its_measured_service_time(tmp_path):
    reference = tmp_path / "ref.yaml"
    reference.write_text(yaml.safe_dump({"models": [
        {"name": "light", "exec_time": {"small": 0.001, "large": 0.001}, "measured": {"cpu_time": 0.0005}},
        {"name": "heavy", "exec_time": {"small": 0.070, "large": 0.017}, "measured": {"cpu_time": 0.016}}]}))
    measured = tmp_path / "here.yaml"
    measured.write_text(yaml.safe_dump({"models": [
        {"name": "light", "exec_time": {"small": 0.004, "large": 0.001, "tiny": 0.5}},
        {"name": "heavy", "exec_time": {"small": 0.080, "large": 0.0085}}]}))
    scales, ratios = corrected({"small": 0.45, "large": 0.45, "tiny": 0.45}, measured, reference)
    # heavy decides (light's 4x is its fixed costs); slower than the reference -> more quota, capped at 1
    assert ratios == pytest.approx({"small": 80 / 70, "large": 0.5})
    assert scales == pytest.approx({"small": 0.45 * 80 / 70, "large": 0.225, "tiny": 0.45})
    assert corrected({"small": 0.95}, measured, reference)[0] == {"small": 1.0}


def _twice_as_fast(tmp_path):
    """The smoke scenario with a catalog of this host at half the reference's CPU time for the
    heaviest model (a host twice as fast), and that model's reference entry."""
    from testbed.scenario import SCENARIOS_DIR, load_scenario

    doc = yaml.safe_load(REFERENCE_CATALOG.read_text())
    heavy = max((m for m in doc["models"] if "measured" in m), key=lambda m: m["measured"]["cpu_time"])
    heavy["measured"]["cpu_time"] /= 2
    fast = tmp_path / "fast.yaml"
    fast.write_text(yaml.safe_dump(doc))
    return load_scenario(SCENARIOS_DIR / "smoke.yaml", catalog_path=fast), heavy


def test_auto_measures_twice_when_the_first_guess_is_off(tmp_path, monkeypatch):
    """The correction loop, with a stand-in for the profiler whose service time is the CPU time
    over the quota plus 10% (what a small quota costs beyond its share)."""
    import testbed.runner as runner

    scenario, heavy = _twice_as_fast(tmp_path)
    quotas = []

    def profile(config, catalog, out, models_dir):
        nodes = {n["class"]: n["cpu_quota"] for n in yaml.safe_load(config.read_text())["nodes"]}
        quotas.append(nodes)
        mine = yaml.safe_load(catalog.read_text())
        for m in mine["models"]:
            if m["name"] == heavy["name"]:
                m["exec_time"] = {c: 1.1 * heavy["measured"]["cpu_time"] / q for c, q in nodes.items()}
        out.write_text(yaml.safe_dump(mine))
        return "table"
    monkeypatch.setattr(runner, "profile_at", profile)
    ran, calibration = runner._calibrate(scenario, tmp_path, None, lambda line: None)
    assert ran.catalog_path == tmp_path / "models.yaml" and calibration["catalog"] == str(tmp_path / "models.yaml")
    assert quotas[0] == {"small": 0.125, "large": 0.5}                   # 0.25 and 1 core x 0.5 (CPU time)
    assert len(quotas) == 2 and quotas[1]["small"] > 0.125                  # then corrected once
    ref = {c: heavy["exec_time"][c] for c in ("small", "large")}
    ratio = {c: 1.1 * heavy["measured"]["cpu_time"] / quotas[0][c] / ref[c] for c in ref}
    assert calibration["scale"] == pytest.approx({c: min(1.0, 0.5 * ratio[c]) for c in ref})
    assert "so quota x small" in calibration["why"]
    assert calibration["ratio"] == pytest.approx({"small": 1.0, "large": 1.0}, rel=1e-3)   # then on the reference
    assert calibration["why"].endswith("at the quotas run: small 1.000, large 1.000 of the reference's service time")
    # an asked-for scale is measured once and kept
    quotas.clear()
    _, given = runner._calibrate(scenario, tmp_path, 0.5, lambda line: None)
    assert len(quotas) == 1 and given["scale"] == {"small": 0.5, "large": 0.5}


def test_an_outlier_measurement_is_corrected_by_the_next_round(tmp_path, monkeypatch):
    """A first profile where the large class took 1.7x its share (a busy moment) sends its quota too
    high; the next profile measures it too fast and brings it back; a class within 5% is left."""
    import testbed.runner as runner
    from testbed.calibrate import CALIBRATION_ROUNDS

    scenario, heavy = _twice_as_fast(tmp_path)
    ref = {c: heavy["exec_time"][c] for c in ("small", "large")}
    base = {"small": 0.125, "large": 0.5}          # the first guess, at which the nodes run as the reference
    quotas = []

    def profile(config, catalog, out, models_dir):
        nodes = {n["class"]: n["cpu_quota"] for n in yaml.safe_load(config.read_text())["nodes"]}
        quotas.append(nodes)
        first = len(quotas) == 1
        mine = yaml.safe_load(catalog.read_text())
        for m in mine["models"]:
            if m["name"] == heavy["name"]:      # on the reference at the first guess, but one outlier
                m["exec_time"] = {c: ref[c] * (base[c] / q) * (1.7 if first and c == "large" else 1.0)
                                  for c, q in nodes.items()}
        out.write_text(yaml.safe_dump(mine))
        return "table"
    monkeypatch.setattr(runner, "profile_at", profile)
    _, calibration = runner._calibrate(scenario, tmp_path, None, lambda line: None)
    assert quotas[0] == {"small": 0.125, "large": 0.5}
    assert quotas[1] == {"small": 0.125, "large": pytest.approx(0.85)}   # small within 5%: kept
    assert len(quotas) == 3 and quotas[2] == {"small": 0.125, "large": pytest.approx(0.5)}
    assert calibration["ratio"] == pytest.approx({"small": 1.0, "large": 1.0}, rel=1e-3)
    assert CALIBRATION_ROUNDS == 3


def test_each_class_runs_at_the_round_measured_closest_to_the_reference(tmp_path, monkeypatch):
    """Three noisy profiles (large's second quota measured 1.03 and then 0.90): the run does not take
    the last correction, which nothing measured, but each class's best measured round, with its
    figures."""
    import testbed.runner as runner

    scenario, heavy = _twice_as_fast(tmp_path)
    ref = {c: heavy["exec_time"][c] for c in ("small", "large")}
    measured = [{"small": 0.877, "large": 1.2}, {"small": 1.10, "large": 1.03}, {"small": 1.29, "large": 0.90}]
    quotas = []

    def profile(config, catalog, out, models_dir):
        nodes = {n["class"]: n["cpu_quota"] for n in yaml.safe_load(config.read_text())["nodes"]}
        quotas.append(nodes)
        factor = measured[len(quotas) - 1]
        mine = yaml.safe_load(catalog.read_text())
        for m in mine["models"]:
            if m["name"] == heavy["name"]:
                m["exec_time"] = {c: ref[c] * factor[c] for c in nodes}
                m["exec_time_idle"] = {c: 0.8 * ref[c] * factor[c] for c in nodes}
                m["measured"]["cpu_quota"] = dict(nodes)
        out.write_text(yaml.safe_dump(mine))
        return "table"
    monkeypatch.setattr(runner, "profile_at", profile)
    ran, calibration = runner._calibrate(scenario, tmp_path, None, lambda line: None)
    assert len(quotas) == 3 and quotas[2]["large"] == quotas[1]["large"]     # large within 5% in round 2: kept
    # both classes run at round 2's quotas, the closest measured (small 1.10, large 1.03)
    assert calibration["scale"] == pytest.approx({c: q / {"small": 0.25, "large": 1.0}[c]
                                                  for c, q in quotas[1].items()}, rel=1e-3)
    assert calibration["ratio"] == pytest.approx({"small": 1.10, "large": 1.03})
    assert [r["ratio"] == pytest.approx(m) for r, m in zip(calibration["rounds"], measured)] == [True] * 3
    assert "small round 2" in calibration["why"] and "large round 2" in calibration["why"]
    # the catalog the systems plan with carries round 2's figures for both classes
    entry = next(m for m in yaml.safe_load(ran.catalog_path.read_text())["models"] if m["name"] == heavy["name"])
    assert entry["exec_time"] == pytest.approx({c: ref[c] * measured[1][c] for c in ref})
    assert entry["exec_time_idle"] == pytest.approx({c: 0.8 * ref[c] * measured[1][c] for c in ref})
    assert entry["measured"]["cpu_quota"] == pytest.approx(quotas[1])
    assert (tmp_path / "models.round3.yaml").is_file()


def test_best_rounds_per_class():
    from testbed.calibrate import best_rounds

    assert best_rounds([{"a": 0.8, "b": 1.2}, {"a": 1.1, "b": 1.01}, {"a": 0.95}]) == {"a": 2, "b": 1}
    assert best_rounds([{"a": 0.75}, {"a": 1.25}]) == {"a": 1}          # a tie: the later round
    assert best_rounds([]) == {}
