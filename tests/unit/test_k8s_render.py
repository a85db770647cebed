"""Rendering of the per-(model, node) Deployment and Service: pure, no API server."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from cluster.catalog import ModelSpec, load_catalog
from cluster.k8s_render import (RenderError, RenderSettings, instance_context, label_value, object_name,
                                render_instance, render_template, resources_for, yaml_scalar)
from cluster.kubernetes import schema_problems

FIXTURE_CATALOG = Path(__file__).resolve().parents[1] / "fixtures" / "models.yaml"

DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def spec(**overrides) -> ModelSpec:
    base = dict(name="half_plus_two", image="tensorflow/serving:2.14.1", port=8501, model_file="half_plus_two",
                memory=60000, cpu=0.05, exec_time={"small": 0.004})
    base.update(overrides)
    return ModelSpec(**base)


def test_shipped_catalog_renders_expected_objects():
    catalog = load_catalog(FIXTURE_CATALOG)
    for model in catalog:
        out = render_instance(model, "nano-1")
        dep, svc = out.deployment, out.service
        assert (dep["apiVersion"], dep["kind"], svc["apiVersion"], svc["kind"]) == ("apps/v1", "Deployment", "v1", "Service")
        assert dep["metadata"]["name"] == svc["metadata"]["name"] == out.name
        assert dep["metadata"]["namespace"] == "edge-inference"
        labels = {"app.kubernetes.io/managed-by": "edge-inference", "model": model.name, "node": "nano-1"}
        assert dep["metadata"]["labels"] == labels == svc["metadata"]["labels"]
        assert dep["spec"]["selector"]["matchLabels"] == labels == dep["spec"]["template"]["metadata"]["labels"]
        assert svc["spec"]["selector"] == labels
        pod = dep["spec"]["template"]["spec"]
        assert pod["nodeSelector"] == {"kubernetes.io/hostname": "nano-1"}
        (container,) = pod["containers"]
        assert container["image"] == model.image
        assert container["args"] == [f"--rest_api_port={model.port}", f"--model_name={model.name}",
                                     f"--model_base_path=/models/{model.name}"]
        assert container["ports"] == [{"name": "http", "containerPort": model.port, "protocol": "TCP"}]
        probe = container["readinessProbe"]["httpGet"]
        assert probe == {"path": f"/v1/models/{model.name}", "port": "http"}
        assert container["resources"]["requests"]["memory"] == f"{model.memory}Ki"
        assert container["resources"]["limits"]["memory"] == f"{model.memory}Ki"
        assert svc["spec"]["type"] == "NodePort" and svc["spec"]["externalTrafficPolicy"] == "Local"
        assert svc["spec"]["ports"] == [{"name": "http", "protocol": "TCP", "port": model.port, "targetPort": "http"}]
        assert dep["metadata"]["annotations"] == {"edge-inference/model": model.name, "edge-inference/node": "nano-1"}
        # The text is what --dry-run prints: both documents, and the same objects.
        assert list(yaml.safe_load_all(out.text)) == [dep, svc]


def test_rendered_objects_match_the_api_schema():
    settings = RenderSettings(models_host_path="/srv/models", image_pull_secret="regcred",
                              tolerations=({"key": "kwok.x-k8s.io/node", "operator": "Exists",
                                            "effect": "NoSchedule"},))
    for model in load_catalog(FIXTURE_CATALOG):
        out = render_instance(model, "nano-1", settings)
        assert schema_problems(out.deployment) == []
        assert schema_problems(out.service) == []
    pod = out.deployment["spec"]["template"]["spec"]
    assert pod["volumes"] == [{"name": "models", "hostPath": {"path": "/srv/models", "type": "Directory"}}]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["tolerations"][0]["key"] == "kwok.x-k8s.io/node"


def test_schema_check_catches_a_misspelt_field():
    out = render_instance(spec(), "n")
    broken = yaml.safe_load(yaml.safe_dump(out.deployment))
    broken["spec"]["template"]["spec"]["nodeSelecter"] = {"a": "b"}
    assert any("nodeSelecter" in p for p in schema_problems(broken))


@pytest.mark.parametrize("model,node", [
    ("half_plus_two", "nano-1"),
    ("digits_forest", "ip-10-0-0-12.eu-west-1.compute.internal"),
    ("a_very_long_model_name_with_many_underscores_x", "worker-node-with-a-rather-long-hostname-0001.example.org"),
    ("3d_pose", "Node_Upper.Case"),
    ("m", "n" * 253),
])
def test_object_names_are_dns_labels(model, node):
    name = object_name(model, node)
    assert len(name) <= 63 and DNS1035.match(name), name
    assert object_name(model, node) == name          # stable
    out = render_instance(spec(name=model), node)
    assert out.deployment["metadata"]["name"] == name
    assert LABEL_VALUE.match(out.deployment["metadata"]["labels"]["node"])
    assert len(out.deployment["metadata"]["labels"]["node"]) <= 63
    assert out.deployment["metadata"]["annotations"]["edge-inference/node"] == node   # the true name


def test_short_names_are_readable_and_long_ones_get_a_hash():
    assert object_name("half_plus_two", "nano-1") == "half-plus-two-nano-1"
    a = object_name("model_" + "x" * 60, "node-a")
    b = object_name("model_" + "x" * 60, "node-b")
    assert a != b and len(a) == len(b) == 63
    assert re.search(r"-[0-9a-f]{8}$", a)


def test_label_values_keep_valid_names_and_repair_others():
    assert label_value("half_plus_two") == "half_plus_two"
    assert label_value("nano-1") == "nano-1"
    long = "n" * 100
    assert len(label_value(long)) <= 63 and label_value(long) != label_value(long + "x")
    assert LABEL_VALUE.match(label_value("-weird/name-"))
    assert label_value("a/b") != label_value("a-b")       # repaired values stay distinct


@pytest.mark.parametrize("hostile", [
    'x"\nevil: true',
    "x\n  injected: 1\n---\nkind: Secret",
    "x' : {a: 1}",
    "{a: b}",
    "&anchor *alias !!python/object:os.system",
    "tab\tnul\x00 bell\x07 del\x7f nel\x85 ls\u2028 emoji\U0001F600 \\back\\slash",
    "# not a comment",
    "",
])
def test_hostile_values_cannot_inject_yaml(hostile):
    out = render_instance(spec(image=hostile), hostile or "n")
    container = out.deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == hostile
    assert out.deployment["metadata"]["annotations"]["edge-inference/node"] == (hostile or "n")
    assert out.deployment["spec"]["template"]["spec"]["nodeSelector"] == {"kubernetes.io/hostname": hostile or "n"}
    assert set(out.deployment) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(container) == {"name", "image", "env", "args", "ports", "readinessProbe", "resources"}
    assert "evil" not in out.deployment and "injected" not in out.deployment["metadata"]


def test_yaml_filter_round_trips_values():
    for value in ["plain", "quo\"te", "back\\slash", "ünïcode", "\U0001F600", 7, 1.5, True, None,
                  {"k": ["a", 1]}, []]:
        assert yaml.safe_load(yaml_scalar(value)) == value


def test_strict_undefined_catches_a_missing_field():
    context = instance_context(spec(), "nano-1")
    del context["model"]["image"]
    with pytest.raises(RenderError, match="image"):
        render_template("deployment.yaml.j2", context)
    context = instance_context(spec(), "nano-1")
    del context["hostname"]
    with pytest.raises(RenderError, match="hostname"):
        render_template("deployment.yaml.j2", context)
    context = instance_context(spec(), "nano-1")
    del context["labels"]["node"]
    with pytest.raises(RenderError, match="node"):
        render_template("service.yaml.j2", context)


def test_a_value_without_the_yaml_filter_is_refused():
    with pytest.raises(RenderError, match="without the yaml filter"):
        render_template("inline", {"name": "x\nevil: 1"}, source="name: {{ name }}\n")
    assert render_template("inline", {"port": 8501}, source="port: {{ port }}\n") == "port: 8501\n"


def test_resource_rule():
    assert resources_for(spec(cpu=0.05, memory=60000)) == {
        "requests": {"cpu": "50m", "memory": "60000Ki"}, "limits": {"cpu": "200m", "memory": "60000Ki"}}
    tiny = resources_for(spec(cpu=0.001))
    assert tiny["requests"]["cpu"] == "10m" and tiny["limits"]["cpu"] == "10m"     # the floor
    settings = RenderSettings(cpu_request_concurrency=2, cpu_limit_concurrency=None, memory_limit=False)
    assert resources_for(spec(cpu=0.2), settings) == {"requests": {"cpu": "400m", "memory": "60000Ki"}, "limits": {}}
    assert resources_for(spec(cpu=0.0333), RenderSettings())["requests"]["cpu"] == "34m"   # rounded up
    with pytest.raises(ValueError):
        RenderSettings(cpu_request_concurrency=4, cpu_limit_concurrency=2)


def test_settings_change_namespace_and_owner_label():
    settings = dataclasses.replace(RenderSettings(), namespace="prod-edge", managed_by="edge-x")
    out = render_instance(spec(), "n", settings)
    assert out.deployment["metadata"]["namespace"] == out.service["metadata"]["namespace"] == "prod-edge"
    assert out.service["spec"]["selector"]["app.kubernetes.io/managed-by"] == "edge-x"


def test_hostname_label_may_differ_from_the_node_name():
    out = render_instance(spec(), "node-1", hostname="node-1.local")
    assert out.deployment["spec"]["template"]["spec"]["nodeSelector"] == {"kubernetes.io/hostname": "node-1.local"}
    assert out.deployment["metadata"]["labels"]["node"] == "node-1"
