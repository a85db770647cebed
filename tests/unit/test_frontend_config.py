"""Front-end settings from a mapping, a file and FRONTEND_* variables."""
import json

import pytest

from frontend.config import REPO_ROOT, ConfigError, Settings, load_settings, settings_from_mapping


def test_defaults():
    s = Settings()
    assert s.policy == "lowest-cpu" and s.refresh_interval == 1.0 and s.prediction_cache_entries == 0
    assert s.catalog_path == REPO_ROOT / "config" / "models.yaml"
    assert s.database_path == REPO_ROOT / ".run" / "frontend.db"


def test_mapping_overlays_defaults_and_reports_every_error():
    s = settings_from_mapping({"policy": "round-robin", "max-body": 1024, "token": "t"})
    assert s.policy == "round-robin" and s.max_body == 1024 and s.token == "t"
    with pytest.raises(ConfigError) as info:
        settings_from_mapping({"policy": "best", "refresh_interval": -1, "max_body": 1.5, "colour": "red",
                               "rtt": {"z": {"n": "far"}}})
    text = str(info.value)
    for part in ("policy", "refresh_interval", "max_body", "colour: unknown setting", "rtt.z"):
        assert part in text


def test_dispatch_quantile_is_a_tail_quantile():
    assert Settings().dispatch_quantile == 0.9
    assert settings_from_mapping({"dispatch_quantile": 0.5}).dispatch_quantile == 0.5     # the mean
    for bad in (0.49, 1.0, "high", None):
        with pytest.raises(ConfigError, match="dispatch_quantile"):
            settings_from_mapping({"dispatch_quantile": bad})
    assert load_settings({"FRONTEND_DISPATCH_QUANTILE": "0.99"}).dispatch_quantile == 0.99


def test_catalog_follows_cluster_settings():
    s = settings_from_mapping({"cluster_settings": {"catalog_path": "/tmp/cat.yaml"}})
    assert str(s.catalog_path) == "/tmp/cat.yaml"
    s = settings_from_mapping({"catalog": "x.yaml", "cluster_settings": {"catalog_path": "/tmp/cat.yaml"}})
    assert s.catalog_path == REPO_ROOT / "x.yaml"


def test_file_then_environment(tmp_path):
    path = tmp_path / "frontend.yaml"
    path.write_text("policy: nearest\nrefresh_interval: 2.5\nrtt: {z1: {n1: 0.01}}\n")
    env = {"FRONTEND_CONFIG": str(path), "FRONTEND_REFRESH_INTERVAL": "0.5", "FRONTEND_TOKEN": "abc",
           "FRONTEND_CLUSTER_SETTINGS": json.dumps({"state_path": "/tmp/s.db"}),
           # Kubernetes service links for a Service named "frontend" must not break start-up
           "FRONTEND_PORT": "tcp://10.0.0.1:5000", "FRONTEND_SERVICE_HOST": "10.0.0.1",
           "FRONTEND_WORKERS": "3"}
    s = load_settings(env)
    assert s.policy == "nearest" and s.refresh_interval == 0.5 and s.token == "abc"
    assert s.rtt == {"z1": {"n1": 0.01}} and s.cluster_settings == {"state_path": "/tmp/s.db"}


def test_bad_file_and_bad_variables(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("policy: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings({"FRONTEND_CONFIG": str(path)})
    path.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_settings({"FRONTEND_CONFIG": str(path)})
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings({"FRONTEND_CONFIG": str(tmp_path / "missing.yaml")})
    with pytest.raises(ConfigError, match="FRONTEND_CALL_TIMEOUT"):
        load_settings({"FRONTEND_CALL_TIMEOUT": "soon"})
    with pytest.raises(ConfigError, match="FRONTEND_RTT"):
        load_settings({"FRONTEND_RTT": "{not json"})
    with pytest.raises(ConfigError, match="FRONTEND_BACKLOG_SHARED: must be true or false"):
        load_settings({"FRONTEND_BACKLOG_SHARED": "sometimes"})


@pytest.mark.parametrize("raw, value", [("false", False), ("0", False), ("No", False), ("true", True), ("1", True)])
def test_a_flag_from_the_environment(raw, value):
    assert load_settings({"FRONTEND_BACKLOG_SHARED": raw}).backlog_shared is value


def test_token_file(tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    assert settings_from_mapping({"token_file": str(token)}).resolved_token() == "s3cret"
    assert settings_from_mapping({"token_file": str(token), "token": "x"}).resolved_token() == "x"
    with pytest.raises(ConfigError):
        settings_from_mapping({"token_file": str(tmp_path / "nope")}).resolved_token()


@pytest.mark.parametrize("key, value, expect", [
    ("refresh_interval", float("nan"), "refresh_interval: must be a finite number, got nan"),
    ("call_timeout", float("inf"), "call_timeout: must be a finite number, got inf"),
    ("rtt", {"z": {"n": float("nan")}}, "rtt.z.n: must be a finite number, got nan"),
    ("max_body", "1024", "max_body: must be a non-negative number, got '1024'"),
    ("policy", 3, "policy: must be one of"),
    ("token", 5, "token: must be a string, got 5"),
    ("cluster_settings", [1], "cluster_settings: must be a mapping, got [1]"),
    ("refresh_intervall", 1.0, "refresh_intervall: unknown setting"),
])
def test_non_finite_wrong_types_and_unknown_keys_are_named(key, value, expect):
    with pytest.raises(ConfigError) as info:
        settings_from_mapping({key: value})
    assert expect in str(info.value)


def test_nan_in_the_file_and_the_environment_is_refused(tmp_path):
    path = tmp_path / "frontend.yaml"
    path.write_text("refresh_interval: .nan\nprovision_timeout: .inf\n")
    with pytest.raises(ConfigError) as info:
        load_settings({"FRONTEND_CONFIG": str(path)})
    assert "refresh_interval: must be a finite number" in str(info.value)
    assert "provision_timeout: must be a finite number" in str(info.value)      # all errors at once
    for raw in ("nan", "inf", "-inf"):
        with pytest.raises(ConfigError, match="FRONTEND_CALL_TIMEOUT: must be a finite number"):
            load_settings({"FRONTEND_CALL_TIMEOUT": raw})
