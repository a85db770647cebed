"""The Kubernetes adapter's settings, validated without the client library or an API server."""
from __future__ import annotations

import math
import subprocess
import sys

import pytest

from cluster.k8s_settings import CacheSettings


@pytest.mark.parametrize("field, value", [
    ("resync_seconds", 0), ("metrics_seconds", -1.0), ("backoff_max_seconds", math.nan),
    ("request_timeout_seconds", math.inf), ("connect_timeout_seconds", "5"), ("sync_timeout_seconds", -1),
    ("page_size", 0), ("page_size", 2.5), ("namespace", ""),
])
def test_cache_settings_refuse_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        CacheSettings(**{field: value})


def test_settings_and_the_watch_loop_load_without_the_kubernetes_client():
    code = ("import sys, cluster.k8s_settings, cluster.k8s_watch, cluster.k8s_render, cluster.k8s_state; "
            "print('kubernetes' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# --- render settings from the command line and the front-end's configuration ------------------

from cluster.catalog import load_catalog  # noqa: E402
from cluster.k8s_render import RenderSettings, render_instance  # noqa: E402
from cluster.k8s_settings import render_settings_from  # noqa: E402

EVERY = {"image": "registry.example/edge-inference/modelserver:0.1.0", "image_pull_secret": "regcred",
         "model_url": "https://models.example/{model}.tar.gz", "cpu_request_concurrency": 2,
         "cpu_limit_concurrency": 8, "memory_limit": False, "node_selector": {"edge.example/site": "lyon"},
         "tolerations": [{"key": "edge.example/dedicated", "operator": "Exists", "effect": "NoSchedule"}]}


def test_every_operator_setting_reaches_the_rendered_objects():
    settings = render_settings_from(EVERY, namespace="prod")
    spec = load_catalog()["half_plus_two"]
    pod = render_instance(spec, "node-1", settings).deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == EVERY["image"] and pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["nodeSelector"] == {"edge.example/site": "lyon", "kubernetes.io/hostname": "node-1"}
    assert pod["tolerations"] == EVERY["tolerations"]
    assert "memory" not in container["resources"]["limits"]
    assert container["resources"]["requests"]["cpu"] == f"{max(10, round(spec.cpu * 2000))}m"
    (init,) = pod["initContainers"]
    assert init["image"] == "edge-inference/modelserver:0.1.0"
    assert init["command"] == ["python", "-m", "modelserver.fetch"]
    assert init["args"] == ["--url", "https://models.example/half_plus_two.tar.gz", "--dest", "/models/half_plus_two"]
    assert pod["volumes"] == [{"name": "models", "emptyDir": {}}]
    assert container["volumeMounts"] == init["volumeMounts"][:0] + [{"name": "models", "mountPath": "/models",
                                                                     "readOnly": True}]


@pytest.mark.parametrize("value, message", [
    ({"image_pull_secret": {"name": "x"}}, "render.image_pull_secret: Input should be a valid string"),
    ({"imgae": "x"}, "render.imgae: unknown setting (known: namespace,"),
    ({"cpu_limit_concurrency": math.nan}, "render.cpu_limit_concurrency: Input should be a finite number"),
    ({"tolerations": [{"key": "a", "effct": "NoSchedule"}]}, "tolerations[0]: unknown field(s) effct"),
    ({"model_url": "s3://bucket/{model}"}, "model_url must be an http://, https:// or file:// URL"),
    ({"model_url": "http://x/{model}", "models_host_path": "/srv/models"}, "exclude each other"),
    ({"node_selector": {"kubernetes.io/hostname": "n"}}, "the adapter's pin"),
    ({"node_selector": {"bad key!": "v"}}, "not a valid label selector"),
    ({"min_cpu_millicores": "ten", "memory_limit": "maybe"}, "render.min_cpu_millicores: Input should be a valid integer"),
    ("regcred", "expected an object of render settings"),
])
def test_bad_render_settings_are_refused_naming_the_field(value, message):
    with pytest.raises(ValueError) as info:
        render_settings_from(value)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_several_bad_fields_are_reported_at_once():
    with pytest.raises(ValueError) as info:
        render_settings_from({"min_cpu_millicores": "ten", "memory_limit": "maybe"})
    assert "render.min_cpu_millicores" in str(info.value) and "render.memory_limit" in str(info.value)


def test_the_adapter_refuses_bad_render_settings_before_any_api_call(tmp_path):
    from cluster.kubernetes import KubernetesCluster
    from cluster.port import ClusterError, ClusterUnavailable

    with pytest.raises(ClusterError, match="render settings: render.imgae: unknown setting") as info:
        KubernetesCluster(kubeconfig=tmp_path / "missing", render={"imgae": "x"})
    assert not isinstance(info.value, ClusterUnavailable)


@pytest.mark.parametrize("setting, message", [
    ('render={"image_pull_secret": {"a": 1}}', "render.image_pull_secret: Input should be a valid string"),
    ('render={"tolerations": "all"}', "render.tolerations: Input should be a valid tuple"),
])
def test_the_backend_cli_reports_a_bad_render_setting_in_one_line(setting, message, tmp_path, capsys):
    from backend.__main__ import main

    code = main(["--mode", "1", "--frontend", "http://127.0.0.1:9", "--cluster", "kubernetes", "--alto", "",
                 "--cluster-setting", f"kubeconfig={tmp_path / 'missing'}", "--cluster-setting", setting,
                 "--lock", str(tmp_path / "lock")])
    err = capsys.readouterr().err
    assert code != 0 and message in err and "Traceback" not in err, err


def test_the_frontend_configuration_refuses_a_bad_render_setting_at_start(tmp_path):
    from frontend import create_app
    from frontend.config import ConfigError

    with pytest.raises(ConfigError, match=r"render settings: render.image: Input should be a valid string"):
        create_app({"cluster": "kubernetes", "token": "t" * 24, "database": str(tmp_path / "fe.db"),
                    "cluster_settings": {"kubeconfig": str(tmp_path / "missing"), "render": {"image": ["x"]}}})
