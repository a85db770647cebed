"""The manifests in k8s/ and the Dockerfiles in docker/: valid, consistent, and least privilege.

The RBAC expectation is derived from `cluster.kubernetes.API_PERMISSIONS`, the list every API call
of the adapter is checked against, so a new call without a new rule (or a rule nobody uses) fails
here. Applying them to a real API server is tests/k8s/ (issue 6).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from cluster.kubernetes import API_PERMISSIONS, schema_problems

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
DOCKER = ROOT / "docker"
NS = "edge-inference"
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding"}


def documents() -> list[tuple[str, dict]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append((path.name, doc))
    return docs


def by_kind(kind: str) -> list[dict]:
    return [doc for _, doc in documents() if doc["kind"] == kind]


def one(kind: str, name: str | None = None) -> dict:
    found = [d for d in by_kind(kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_specs() -> list[dict]:
    specs = [d["spec"]["template"]["spec"] for d in by_kind("Deployment")]
    specs += [d["spec"]["jobTemplate"]["spec"]["template"]["spec"] for d in by_kind("CronJob")]
    return specs


def test_every_file_parses_with_the_expected_kinds():
    files = sorted(p.name for p in K8S.iterdir())
    assert files and all(f.endswith(".yaml") for f in files), files
    kinds = sorted(doc["kind"] for _, doc in documents())
    assert kinds == sorted(["Namespace", "ServiceAccount", "Role", "RoleBinding", "ClusterRole",
                            "ClusterRoleBinding", "ConfigMap", "ConfigMap", "ConfigMap", "Deployment",
                            "PodDisruptionBudget", "Service", "CronJob"])
    # `kubectl apply -f k8s/` goes in file-name order: the namespace must come first.
    assert [doc["kind"] for _, doc in documents()][0] == "Namespace"


@pytest.mark.parametrize("name,doc", documents(), ids=lambda v: v if isinstance(v, str) else v["kind"])
def test_objects_match_the_api_schema_and_namespace(name, doc):
    assert schema_problems(doc) == [], name
    assert re.match(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", doc["metadata"]["name"])
    if doc["kind"] in CLUSTER_SCOPED:
        assert "namespace" not in doc["metadata"]
    else:
        assert doc["metadata"]["namespace"] == NS
    # The adapter watches objects labelled managed-by=edge-inference as model servers: ours must not be.
    assert (doc["metadata"].get("labels") or {}).get("app.kubernetes.io/managed-by") is None
    assert one("Namespace")["metadata"]["name"] == NS


def _granted(rules: list[dict]) -> set[tuple[str, str, str, tuple[str, ...]]]:
    granted = set()
    for rule in rules:
        assert set(rule) <= {"apiGroups", "resources", "verbs", "resourceNames"}, "no nonResourceURLs expected"
        for value in (*rule["apiGroups"], *rule["resources"], *rule["verbs"]):
            assert "*" not in value, "no wildcards"
        names = tuple(sorted(rule.get("resourceNames") or ()))
        granted |= {(g, r, v, names) for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    return granted


def test_rbac_grants_exactly_what_the_adapter_uses():
    used_ns = {(p.group, p.resource, v, tuple(sorted(p.names))) for p in API_PERMISSIONS if not p.cluster_wide
               for v in p.verbs}
    used_cluster = {(p.group, p.resource, v, tuple(sorted(p.names))) for p in API_PERMISSIONS if p.cluster_wide
                    for v in p.verbs}
    roles, cluster_roles = by_kind("Role"), by_kind("ClusterRole")
    assert len(roles) == 1 and len(cluster_roles) == 1
    assert _granted(roles[0]["rules"]) == used_ns
    assert _granted(cluster_roles[0]["rules"]) == used_cluster
    # Cluster-wide access is read-only and limited to nodes.
    assert {r for _, r, _, _ in used_cluster} == {"nodes"}
    assert {v for _, _, v, _ in used_cluster} <= {"get", "list", "watch"}
    # ConfigMaps: the plan's one, never any other (nor create, which resourceNames cannot limit).
    assert {(v, n) for _, r, v, n in used_ns if r == "configmaps"} == {
        ("list", ("edge-inference-plan",)), ("watch", ("edge-inference-plan",)), ("update", ("edge-inference-plan",))}


def test_bindings_tie_the_roles_to_the_service_account_the_pods_use():
    account = one("ServiceAccount")["metadata"]["name"]
    for kind, role_kind in (("RoleBinding", "Role"), ("ClusterRoleBinding", "ClusterRole")):
        binding = one(kind)
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind,
                                      "name": one(role_kind)["metadata"]["name"]}
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": NS}]
    specs = pod_specs()
    assert len(specs) == 2
    for spec in specs:
        assert spec["serviceAccountName"] == account
        assert spec["securityContext"]["runAsNonRoot"] is True


def test_the_frontend_scales_out_with_a_budget_probes_and_spread():
    deployment, pdb = one("Deployment", "frontend"), one("PodDisruptionBudget", "frontend")
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1
    spec = deployment["spec"]["template"]["spec"]
    (spread,) = spec["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname"
    assert spread["labelSelector"]["matchLabels"].items() <= labels.items()
    (container,) = spec["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    plan = one("ConfigMap", "edge-inference-plan")
    assert "data" not in plan                   # re-applying must not wipe a written plan


def test_configmaps_carry_the_repository_config_files():
    models = one("ConfigMap", "edge-inference-models")["data"]["models.yaml"]
    assert yaml.safe_load(models) == yaml.safe_load((ROOT / "config" / "models.yaml").read_text()), \
        "k8s/20-configmaps.yaml is out of date: copy config/models.yaml into it"
    alto = one("ConfigMap", "edge-inference-alto")["data"]["alto-costmap.json"]
    assert json.loads(alto) == json.loads((ROOT / "config" / "alto-costmap.json").read_text()), \
        "k8s/20-configmaps.yaml is out of date: copy config/alto-costmap.json into it"
    # Every volume that mounts them names keys that exist.
    maps = {cm["metadata"]["name"]: cm.get("data") or {} for cm in by_kind("ConfigMap")}
    for spec in pod_specs():
        for volume in spec["volumes"]:
            for source in (volume.get("projected") or {}).get("sources", []):
                cm = source["configMap"]
                assert {item["key"] for item in cm["items"]} <= set(maps[cm["name"]])


def test_frontend_service_selects_the_frontend_pods():
    deployment, service = one("Deployment", "frontend"), one("Service", "frontend")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    port_names = {p["name"]: p["containerPort"] for p in container["ports"]}
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] in port_names and port["port"] == 5000
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["FRONTEND_CLUSTER"] == "kubernetes"
    assert env["FRONTEND_BIND"].endswith(f":{port_names[port['targetPort']]}")
    assert json.loads(env["FRONTEND_CLUSTER_SETTINGS"])["namespace"] == NS
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"


def test_backend_cronjob_passes_the_mode_flag_and_reaches_the_frontend():
    cron = one("CronJob")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    (container,) = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert args[args.index("--mode") + 1] in ("1", "2")
    service = one("Service", "frontend")
    assert "--frontend" not in args             # one replica's URL would miss the others' statistics
    assert args[args.index("--frontend-service") + 1] == service["metadata"]["name"]
    assert args[args.index("--cluster") + 1] == "kubernetes"
    assert "--token" not in args                      # never in the process arguments
    env = {e["name"]: e for e in container["env"]}
    assert env["BACKEND_TOKEN"]["valueFrom"]["secretKeyRef"]["key"] == "token"


def test_the_token_secret_is_referenced_consistently():
    names = set()
    for spec in pod_specs():
        for volume in spec.get("volumes", []):
            if "secret" in volume:
                names.add(volume["secret"]["secretName"])
        for container in spec["containers"]:
            for env in container.get("env", []):
                ref = (env.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    names.add(ref["name"])
    assert names == {"edge-inference-token"}


def test_every_image_has_a_dockerfile():
    images = {c["image"] for spec in pod_specs() for c in spec["containers"]}
    for image in images:
        match = re.fullmatch(r"edge-inference/([a-z]+):[\w.-]+", image)
        assert match, image
        assert (DOCKER / f"Dockerfile.{match.group(1)}").is_file()


@pytest.mark.parametrize("name", ["frontend", "backend", "modelserver"])
def test_dockerfiles(name):
    text = (DOCKER / f"Dockerfile.{name}").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", text, re.M)
    assert "pip install -r requirements.txt" in text
    assert re.search(r"^USER 10001$", text, re.M)
    for source in re.findall(r"^COPY (?!--)(\S+)", text, re.M):
        assert (ROOT / source).exists(), f"Dockerfile.{name}: COPY {source}: no such path"
    assert (DOCKER / f"Dockerfile.{name}.dockerignore").is_file()


def test_modelserver_image_takes_the_templates_flags():
    text = (DOCKER / "Dockerfile.modelserver").read_text()
    assert "build_models --out /models" in text               # where --model_base_path points
    assert 'ENTRYPOINT ["python", "-m", "modelserver", "--host", "0.0.0.0"]' in text


def test_only_the_adapter_imports_the_kubernetes_client():
    # Tests and benchmarks set clusters up as an operator would, so they may use the client.
    pattern = re.compile(r"^\s*(import kubernetes\b|from kubernetes\b)", re.M)
    offenders = []
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in (".venv", "tests", "bench", "build") or rel.parts[0].startswith("."):
            continue
        if pattern.search(path.read_text(errors="replace")) and rel != Path("cluster/kubernetes.py"):
            offenders.append(str(rel))
    assert offenders == []


def test_the_backend_cli_accepts_the_cronjob_arguments():
    from backend.__main__ import build_parser, config_from_args

    (container,) = one("CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    config = config_from_args(build_parser().parse_args(container["args"]))
    assert config.cluster_kind == "kubernetes" and config.mode in (1, 2)
    assert config.frontend_service == "frontend" and config.frontend == "service/frontend"


def test_the_frontend_settings_accept_the_deployment_environment():
    from frontend.config import load_settings

    (container,) = one("Deployment", "frontend")["spec"]["template"]["spec"]["containers"]
    settings = load_settings({e["name"]: e["value"] for e in container["env"] if "value" in e})
    assert settings.cluster == "kubernetes" and settings.cluster_settings == {"namespace": NS}
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert str(Path(settings.token_file).parent) in mounts
    assert str(Path(settings.database).parent) in mounts
    assert str(Path(settings.alto_cost_map).parent) in mounts
