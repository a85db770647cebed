"""Validation of the model catalog: every error names the file, the model and the field."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cluster.catalog import DEFAULT_CATALOG, CatalogError, ModelSpec, load_catalog
from cluster.port import ClusterError

GOOD = {"name": "m1", "image": "tensorflow/serving:2.14.1", "port": 8501, "model_file": "m1",
        "memory": 1000, "cpu": 0.1, "exec_time": {"small": 0.01, "large": 0.005}}


def _write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def _error(tmp_path: Path, models: object) -> str:
    path = _write(tmp_path, {"models": models})
    with pytest.raises(CatalogError) as info:
        load_catalog(path)
    message = str(info.value)
    assert str(path) in message
    return message


def test_shipped_catalog_loads():
    catalog = load_catalog(DEFAULT_CATALOG)
    assert {"half_plus_two", "half_plus_three", "digits_logreg", "digits_forest"} <= set(catalog.names())
    assert len({spec.port for spec in catalog}) == len(catalog)
    assert all(spec.memory > 0 and spec.cpu > 0 and spec.exec_time for spec in catalog)
    # measured by `python -m cluster profile`: the variability at every class, the idle pace where it
    # differs (digits_cnn, the one model slow enough)
    assert all(spec.exec_time_scv.keys() == spec.exec_time.keys() for spec in catalog)
    assert catalog["digits_cnn"].exec_time_idle.keys() == catalog["digits_cnn"].exec_time.keys()


def test_good_catalog_parses(tmp_path):
    catalog = load_catalog(_write(tmp_path, {"models": [GOOD]}))
    assert catalog["m1"] == ModelSpec(name="m1", image=GOOD["image"], port=8501, model_file="m1",
                                      memory=1000, cpu=0.1, exec_time={"small": 0.01, "large": 0.005})
    assert "m1" in catalog and len(catalog) == 1


def test_model_file_defaults_to_name(tmp_path):
    entry = {k: v for k, v in GOOD.items() if k != "model_file"}
    assert load_catalog(_write(tmp_path, {"models": [entry]}))["m1"].model_file == "m1"


def test_exec_time_falls_back_to_slowest_class(tmp_path):
    spec = load_catalog(_write(tmp_path, {"models": [GOOD]}))["m1"]
    assert spec.exec_time_on("large") == 0.005
    assert spec.exec_time_on("unknown") == 0.01


def test_idle_time_and_scv_are_optional_and_the_idle_time_falls_back_to_back_to_back(tmp_path):
    entry = {**GOOD, "exec_time_idle": {"small": 0.007}, "exec_time_scv": {"small": 0.02, "large": 0}}
    catalog = load_catalog(_write(tmp_path, {"models": [entry, {**GOOD, "name": "m2", "port": 8502}]}))
    spec, plain = catalog["m1"], catalog["m2"]
    assert spec.exec_time_idle == {"small": 0.007} and spec.exec_time_scv == {"small": 0.02, "large": 0.0}
    assert spec.idle_time_on("small") == 0.007
    assert spec.idle_time_on("large") == 0.005          # not measured idle: the back-to-back pace
    assert spec.idle_time_on("unknown") == 0.01         # as exec_time_on: the slowest class
    assert spec.scv_on("small") == 0.02 and spec.scv_on("large") == 0.0 and spec.scv_on("unknown") is None
    assert plain.exec_time_idle == {} and plain.exec_time_scv == {}
    assert plain.idle_time_on("small") == 0.01 and plain.scv_on("small") is None


@pytest.mark.parametrize("field, value, expect", [
    ("image", "", "field 'image' must be a non-empty string"),
    ("image", None, "field 'image' must be a non-empty string"),
    ("port", 0, "field 'port' must be positive"),
    ("port", 70000, "field 'port' must be 1..65535"),
    ("port", "http", "field 'port' must be a positive number"),
    ("port", 80.5, "field 'port' must be an integer"),
    ("model_file", "../etc", "field 'model_file' must be a plain folder name"),
    ("model_file", "a/b", "field 'model_file' must be a plain folder name"),
    ("memory", -1, "field 'memory' must be positive"),
    ("memory", True, "field 'memory' must be a positive number"),
    ("cpu", 0, "field 'cpu' must be positive"),
    ("exec_time", {}, "field 'exec_time' must map node classes to seconds"),
    ("exec_time", [1], "field 'exec_time' must map node classes to seconds"),
    ("exec_time", {"small": -1}, "field 'exec_time.small' must be a non-negative number"),
    ("exec_time", {"small": "fast"}, "field 'exec_time.small' must be a non-negative number"),
    ("exec_time_idle", [1], "field 'exec_time_idle' must map node classes to seconds"),
    ("exec_time_idle", {"small": 0}, "field 'exec_time_idle.small' must be positive, got 0"),
    ("exec_time_idle", {"small": -0.1}, "field 'exec_time_idle.small' must be positive"),
    ("exec_time_idle", {"small": "fast"}, "field 'exec_time_idle.small' must be a positive number"),
    ("exec_time_scv", 0.5, "field 'exec_time_scv' must map node classes to squared coefficients of variation"),
    ("exec_time_scv", {"small": -1}, "field 'exec_time_scv.small' must be a non-negative number, got -1"),
    ("flavour", 1, "unknown field(s) flavour"),
])
def test_each_bad_field_is_named(tmp_path, field, value, expect):
    message = _error(tmp_path, [{**GOOD, field: value}])
    assert "model 'm1'" in message
    assert expect in message


@pytest.mark.parametrize("name", [None, "", "Has Space", "UPPER", "-lead", "x" * 60])
def test_bad_names_are_reported_by_position(tmp_path, name):
    assert "models[1]: field 'name'" in _error(tmp_path, [GOOD, {**GOOD, "name": name, "port": 9000}])


def test_duplicates_are_refused(tmp_path):
    message = _error(tmp_path, [GOOD, {**GOOD, "port": 9000}, {**GOOD, "name": "m2"}])
    assert "model 'm1': duplicate name" in message
    assert "model 'm2': field 'port' 8501 already used by 'm1'" in message


def test_every_error_is_reported_at_once(tmp_path):
    message = _error(tmp_path, [{**GOOD, "memory": 0, "cpu": "x"}, {**GOOD, "name": "m2", "port": -3}])
    assert "model 'm1': field 'memory'" in message
    assert "model 'm1': field 'cpu'" in message
    assert "model 'm2': field 'port'" in message


def test_entry_not_a_mapping(tmp_path):
    assert "models[0]: must be a mapping" in _error(tmp_path, ["m1"])


@pytest.mark.parametrize("text", ["models: []", "models: x", "[]", ""])
def test_bad_shapes(tmp_path, text):
    with pytest.raises(CatalogError, match="non-empty 'models' list"):
        load_catalog(_write(tmp_path, text))


def test_unreadable_and_invalid_yaml(tmp_path):
    with pytest.raises(CatalogError, match="cannot read"):
        load_catalog(tmp_path / "missing.yaml")
    with pytest.raises(CatalogError, match="not valid YAML"):
        load_catalog(_write(tmp_path, "models: [unclosed"))


def test_catalog_errors_are_cluster_errors():
    assert issubclass(CatalogError, ClusterError) and issubclass(CatalogError, ValueError)


@pytest.mark.parametrize("field, value, expect", [
    ("exec_time", {"small": float("nan")}, "field 'exec_time.small' must be a finite number, got nan"),
    ("exec_time", {"small": float("inf")}, "field 'exec_time.small' must be a finite number, got inf"),
    ("exec_time_idle", {"small": float("nan")}, "field 'exec_time_idle.small' must be a finite number, got nan"),
    ("exec_time_scv", {"large": float("inf")}, "field 'exec_time_scv.large' must be a finite number, got inf"),
    ("cpu", float("nan"), "field 'cpu' must be a finite number, got nan"),
    ("memory", float("-inf"), "field 'memory' must be a finite number, got -inf"),
    ("memory", "1000", "field 'memory' must be a positive number, got '1000'"),
    ("cpu", [1], "field 'cpu' must be a positive number, got [1]"),
    ("measured", {"rss_kb": float("nan")}, "field 'measured.rss_kb' must be a finite number"),
    ("measured", {"cpu_quota": {"small": float("inf")}}, "field 'measured.cpu_quota.small' must be a finite number"),
    ("measured", {"host": 3}, "field 'measured.host' must be a string, got 3"),
])
def test_non_finite_and_wrong_types_are_refused_naming_the_field(tmp_path, field, value, expect):
    message = _error(tmp_path, [{**GOOD, field: value}])
    assert f"model 'm1': {expect}" in message


def test_the_file_as_written_nan_is_refused(tmp_path):
    """The issue's example: `exec_time: {small: .nan}` in models.yaml fails at load, not in the solver."""
    path = tmp_path / "models.yaml"
    path.write_text("models:\n- {name: m1, image: x, port: 8501, memory: 10, cpu: 1, exec_time: {small: .nan}}\n")
    with pytest.raises(CatalogError, match=r"model 'm1': field 'exec_time.small' must be a finite number, got nan"):
        load_catalog(path)


def test_unknown_top_level_key_is_refused(tmp_path):
    path = _write(tmp_path, {"models": [GOOD], "modles": []})
    with pytest.raises(CatalogError, match=r"unknown field\(s\) modles"):
        load_catalog(path)


def test_the_host_catalog_is_the_measured_one_when_setup_wrote_it(tmp_path, monkeypatch):
    import cluster.catalog as catalog_module

    measured = tmp_path / "models.yaml"
    monkeypatch.setattr(catalog_module, "MEASURED_CATALOG", measured)
    assert catalog_module.host_catalog() == DEFAULT_CATALOG
    measured.write_text(DEFAULT_CATALOG.read_text())
    assert catalog_module.host_catalog() == measured
