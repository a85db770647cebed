"""The manifests in k8s/ on a real API server: they apply cleanly, run, and RBAC grants exactly what is used.

The manifests name their namespace (edge-inference), so this module applies them once to the
session's control plane and deletes them again at the end.
"""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from cluster.kubernetes import API_PERMISSIONS
from k8s_support import REPO_ROOT, wait_for

NAMESPACE = "edge-inference"
SERVICE_ACCOUNT = f"system:serviceaccount:{NAMESPACE}:edge-inference"
MANIFESTS = REPO_ROOT / "k8s"


class Kubectl:
    def __init__(self, plane) -> None:
        self.binary = str(plane.bin_dir / "kubectl")
        self.kubeconfig = str(plane.kubeconfig)

    def __call__(self, *args: str, check: bool = True, stdin: str | None = None,
                 kubeconfig: str | None = None) -> subprocess.CompletedProcess:
        proc = subprocess.run([self.binary, f"--kubeconfig={kubeconfig or self.kubeconfig}", *args],
                              input=stdin, capture_output=True, text=True, timeout=120)
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc


@pytest.fixture(scope="module")
def kubectl(control_plane) -> Kubectl:
    return Kubectl(control_plane)


@pytest.fixture(scope="module")
def applied(kubectl: Kubectl) -> Iterator[subprocess.CompletedProcess]:
    """Apply k8s/ (strict field validation) plus the token Secret its README line asks for."""
    result = kubectl("apply", "--validate=strict", "-f", str(MANIFESTS))
    kubectl("-n", NAMESPACE, "create", "secret", "generic", "edge-inference-token",
            "--from-literal=token=manifest-test-token-0123456789")
    yield result
    kubectl("delete", "--wait=false", "--ignore-not-found", "-f", str(MANIFESTS), check=False)


def _can_i(kubectl: Kubectl, verb: str, resource: str, *, namespace: str | None = NAMESPACE) -> bool:
    scope = ["-n", namespace] if namespace else ["--all-namespaces"]
    proc = kubectl("auth", "can-i", verb, resource, f"--as={SERVICE_ACCOUNT}", *scope, check=False)
    if "doesn't have a resource type" in proc.stderr:
        # kubectl cannot map a group the server does not serve (metrics.k8s.io: metrics-server
        # runs for test_kube_metrics.py only) and answers "no" without asking; ask the authorizer.
        return _subject_access_review(kubectl, verb, resource, namespace=namespace)
    answer = proc.stdout.strip()
    assert answer in ("yes", "no"), proc.stderr
    return answer == "yes"


def _subject_access_review(kubectl: Kubectl, verb: str, resource: str, *, namespace: str | None) -> bool:
    name, _, group = resource.partition(".")
    attributes = {"verb": verb, "resource": name, "group": group}
    if namespace:
        attributes["namespace"] = namespace
    review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
              "spec": {"user": SERVICE_ACCOUNT, "resourceAttributes": attributes,
                       "groups": ["system:serviceaccounts", f"system:serviceaccounts:{NAMESPACE}",
                                  "system:authenticated"]}}
    out = kubectl("create", "-o", "json", "-f", "-", stdin=json.dumps(review)).stdout
    return bool(json.loads(out)["status"].get("allowed"))


def _resource(permission) -> str:
    return permission.resource + (f".{permission.group}" if permission.group else "")


def _targets(permission) -> list[str]:
    """What to ask `can-i` about: the resource, or each object a resourceNames rule names."""
    resource = _resource(permission)
    return [f"{resource}/{name}" for name in permission.names] or [resource]


def _rules(kubectl: Kubectl, user: str) -> set[tuple[str, str]]:
    """(resource, verb) pairs `kubectl auth can-i --list` shows for `user` in the namespace."""
    out = kubectl("auth", "can-i", "--list", f"--as={user}", "-n", NAMESPACE).stdout
    pairs = set()
    for line in out.splitlines()[1:]:
        if not line.strip() or line.lstrip().startswith("["):
            continue                                  # non-resource URL rows
        resource = line.split()[0]
        verbs = re.findall(r"\[([^\]]*)\]\s*$", line)
        for verb in (verbs[0].split() if verbs else []):
            pairs.add((resource, verb))
    return pairs


def test_manifests_apply_cleanly_and_idempotently(kubectl, applied):
    assert "Warning" not in applied.stderr, applied.stderr
    created = applied.stdout.splitlines()
    kinds = {line.split("/")[0] for line in created}
    assert {"namespace", "serviceaccount", "role.rbac.authorization.k8s.io",
            "rolebinding.rbac.authorization.k8s.io", "clusterrole.rbac.authorization.k8s.io",
            "clusterrolebinding.rbac.authorization.k8s.io", "configmap", "deployment.apps", "service",
            "cronjob.batch"} <= kinds, applied.stdout
    again = kubectl("apply", "--validate=strict", "-f", str(MANIFESTS))
    # kubectl always re-sends a PodDisruptionBudget's selector (its patch strategy is "replace") and
    # so reports it "configured"; the object is not changed: its generation stays 1.
    pdb = "poddisruptionbudget.policy/frontend configured"
    assert again.stdout.strip() and all(line.endswith("unchanged") or line == pdb
                                        for line in again.stdout.splitlines()), again.stdout
    generation = kubectl("-n", NAMESPACE, "get", "pdb", "frontend", "-o", "jsonpath={.metadata.generation}").stdout
    assert generation == "1"
    server_dry_run = kubectl("apply", "--dry-run=server", "--validate=strict", "-f", str(MANIFESTS))
    assert "Warning" not in server_dry_run.stderr


def test_frontend_rolls_out_on_a_node_behind_a_nodeport_service(kube, kubectl, applied):
    nodes = {kube.add_node(f"fe{i}", memory_kb=4_000_000, cpu=4.0) for i in range(3)}
    kubectl("-n", NAMESPACE, "rollout", "status", "deployment/frontend", "--timeout=90s")
    pods = kube.core.list_namespaced_pod(NAMESPACE, label_selector="app.kubernetes.io/name=frontend").items
    # Three replicas Running on the test's nodes. The spread is ScheduleAnyway (a smaller site
    # still runs all three), a preference: pods pending before the nodes exist may all land on
    # the first node that becomes ready, so one per node is not asserted here.
    assert len(pods) == 3 and {p.status.phase for p in pods} == {"Running"}
    assert {p.spec.node_name for p in pods} <= nodes
    assert pods[0].spec.topology_spread_constraints[0].topology_key == "kubernetes.io/hostname"
    assert all(p.spec.service_account_name == "edge-inference" for p in pods)
    wait_for(lambda: kubectl("-n", NAMESPACE, "get", "pdb", "frontend", "-o",
                             "jsonpath={.status.disruptionsAllowed}").stdout == "1",
             timeout=30, what="the PodDisruptionBudget allowing one disruption of three")
    service = kube.core.read_namespaced_service("frontend", NAMESPACE)
    assert service.spec.type == "NodePort" and 30000 <= service.spec.ports[0].node_port <= 32767
    selected = kube.core.list_namespaced_pod(NAMESPACE, label_selector=",".join(
        f"{k}={v}" for k, v in service.spec.selector.items())).items
    assert sorted(p.metadata.name for p in selected) == sorted(p.metadata.name for p in pods)


def test_backend_cronjob_carries_the_mode_flag_and_its_job_completes(kube, kubectl, applied):
    kube.add_node("be", memory_kb=4_000_000, cpu=4.0)
    cronjob = kubectl("-n", NAMESPACE, "get", "cronjob", "backend", "-o",
                      "jsonpath={.spec.jobTemplate.spec.template.spec.containers[0].args}").stdout
    args = re.findall(r'"([^"]*)"', cronjob)
    assert "--mode" in args and args[args.index("--mode") + 1] in ("1", "2")
    assert "kubernetes" in args
    kubectl("-n", NAMESPACE, "create", "job", "--from=cronjob/backend", "backend-now")
    kubectl("-n", NAMESPACE, "wait", "--for=condition=complete", "job/backend-now", "--timeout=90s")
    pods = kube.core.list_namespaced_pod(NAMESPACE, label_selector="job-name=backend-now").items
    assert pods and all(p.spec.service_account_name == "edge-inference" for p in pods)


def test_rbac_grants_every_call_the_adapter_makes(kubectl, applied):
    for permission in API_PERMISSIONS:
        for verb in permission.verbs:
            namespace = None if permission.cluster_wide else NAMESPACE
            for target in _targets(permission):
                assert _can_i(kubectl, verb, target, namespace=namespace), (verb, target)


@pytest.mark.parametrize("verb, resource, namespace", [
    ("update", "deployments.apps", NAMESPACE), ("patch", "deployments.apps", NAMESPACE),
    ("deletecollection", "deployments.apps", NAMESPACE), ("update", "services", NAMESPACE),
    ("create", "pods", NAMESPACE), ("delete", "pods", NAMESPACE), ("get", "pods", NAMESPACE),
    ("get", "secrets", NAMESPACE), ("list", "configmaps", NAMESPACE), ("create", "pods/exec", NAMESPACE),
    ("update", "configmaps/edge-inference-models", NAMESPACE), ("create", "configmaps", NAMESPACE),
    ("delete", "configmaps/edge-inference-plan", NAMESPACE),
    ("create", "deployments.apps", "default"), ("delete", "services", "kube-system"),
    ("list", "deployments.apps", None), ("create", "nodes", None), ("delete", "nodes", None),
    ("patch", "nodes", None), ("create", "namespaces", None), ("create", "clusterrolebindings", None),
    ("escalate", "roles", NAMESPACE), ("impersonate", "serviceaccounts", NAMESPACE),
])
def test_rbac_grants_nothing_more(kubectl, applied, verb, resource, namespace):
    assert not _can_i(kubectl, verb, resource, namespace=namespace)


def test_rbac_rules_are_exactly_the_adapters_api_permissions(kubectl, applied):
    # What every authenticated identity may do anyway (self reviews), seen from an unbound account.
    kubectl("-n", NAMESPACE, "create", "serviceaccount", "baseline-nobody")
    baseline = _rules(kubectl, f"system:serviceaccount:{NAMESPACE}:baseline-nobody")
    ours = _rules(kubectl, SERVICE_ACCOUNT) - baseline
    expected = {(_resource(p), verb) for p in API_PERMISSIONS for verb in p.verbs}
    assert ours == expected


def test_the_adapter_works_as_the_service_account(kube, kubectl, applied, tmp_path: Path):
    token = kubectl("-n", NAMESPACE, "create", "token", "edge-inference", "--duration=20m").stdout.strip()
    config = tmp_path / "sa.kubeconfig"
    plane = kube.plane
    config.write_text(f"""apiVersion: v1
kind: Config
clusters:
- name: edge-test
  cluster: {{server: "{plane.server}", certificate-authority: "{plane.run_dir / 'pki' / 'ca.crt'}"}}
users:
- name: edge-inference
  user: {{token: "{token}"}}
contexts:
- name: sa
  context: {{cluster: edge-test, user: edge-inference}}
current-context: sa
""")
    from cluster.kubernetes import KubernetesCluster
    from cluster.port import ClusterError

    node = kube.add_node("sa", memory_kb=500_000)
    with KubernetesCluster(kubeconfig=config, namespace=NAMESPACE, catalog_path=REPO_ROOT / "tests" / "fixtures" / "models.yaml",
                           node_class_label="edge-inference/node-class") as cluster:
        dep = cluster.deploy("half_plus_two", node, timeout=60)
        assert dep.ready and dep.endpoint.startswith(kube.nodes[node] + ":")
        assert node in {n.name for n in cluster.nodes()}
        cluster.remove("half_plus_two", node)
        wait_for(lambda: cluster.deployments() == [], timeout=60, what="the instance removed")
    # The same identity cannot act in another namespace.
    with KubernetesCluster(kubeconfig=config, namespace=kube.namespace,
                           catalog_path=REPO_ROOT / "tests" / "fixtures" / "models.yaml") as other:
        with pytest.raises(ClusterError):
            other.deploy("half_plus_two", node, timeout=10)


# The render settings an operator sets (--cluster-setting render={...} / cluster_settings.render).
EVERY_RENDER_SETTING = {
    "image": "registry.example/edge-inference/modelserver:0.1.0", "image_pull_secret": "regcred",
    "model_url": "https://models.example/{model}.tar.gz", "cpu_request_concurrency": 2, "cpu_limit_concurrency": 8,
    "node_selector": {"edge.example/site": "lyon"},
    "tolerations": [{"key": "edge.example/dedicated", "operator": "Exists", "effect": "NoSchedule"}]}


def test_rendered_instances_with_every_setting_apply_strictly_and_run(kube, kubectl, tmp_path: Path):
    from cluster.catalog import load_catalog
    from cluster.k8s_render import render_instance
    from cluster.k8s_settings import render_settings_from

    settings = render_settings_from(EVERY_RENDER_SETTING, namespace=kube.namespace)
    catalog = load_catalog(REPO_ROOT / "config" / "models.yaml")
    text = "\n---\n".join(render_instance(spec, "node-x", settings).text for spec in catalog)
    (tmp_path / "rendered.yaml").write_text(text)
    for extra in (["--dry-run=server"], []):
        out = kubectl("apply", "--validate=strict", *extra, "-f", str(tmp_path / "rendered.yaml"))
        assert "Warning" not in out.stderr, out.stderr
    stored = kube.apps.read_namespaced_deployment("half-plus-two-node-x", kube.namespace).spec.template.spec
    assert stored.init_containers[0].args[1] == "https://models.example/half_plus_two.tar.gz"
    assert stored.node_selector == {"edge.example/site": "lyon", "kubernetes.io/hostname": "node-x"}
    assert stored.image_pull_secrets[0].name == "regcred" and stored.tolerations[0].key == "edge.example/dedicated"
    # The adapter deploys with them: the scheduler places the pod only on a node carrying the extra label.
    node = kube.add_node("site", memory_kb=1_000_000, labels={"edge.example/site": "lyon"})
    cluster = kube.cluster(render=EVERY_RENDER_SETTING)
    dep = cluster.deploy("half_plus_two", node, timeout=60)
    assert dep.ready
    pods = kube.core.list_namespaced_pod(kube.namespace, label_selector="model=half_plus_two").items
    assert [p.spec.node_name for p in pods if p.spec.node_name] == [node]
    assert pods[0].spec.containers[0].image == EVERY_RENDER_SETTING["image"]
