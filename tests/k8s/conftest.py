"""Fixtures for the tests against a real Kubernetes control plane (tests/k8s).

One control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok) is shared
by the whole session; metrics-server (metrics.k8s.io) runs only for the modules that ask for the
`metrics_server` fixture, so elsewhere the adapter estimates node CPU; each test gets its own namespace and its own KWOK nodes (unique names, a
unique loopback /24 for their InternalIPs) and removes them at teardown, so tests do not see each
other's objects and parallel pytest runs do not collide. The binaries come from tests/k8s/k8s_tools.py:
when they are missing, they are built once before the first test runs (outside the per-test
timeout, progress printed). A missing Go toolchain is an error, never a skip.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Iterator

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import k8s_tools as build  # noqa: E402
import controlplane  # noqa: E402
from controlplane import ControlPlane, ControlPlaneError  # noqa: E402
from metrics_server import MetricsServer  # noqa: E402
from k8s_support import (AUDIT_POLICY, AUDITED_GROUP, CATALOG, FRONTEND_TOKEN, KubeEnv,  # noqa: E402,F401
                         _suffix, wait_for)

REPO_ROOT = HERE.parent.parent
_BUILD_ERROR: list[str] = []


def _k8s_items(items: list[pytest.Item]) -> list[pytest.Item]:
    return [item for item in items if HERE in Path(str(item.fspath)).resolve().parents]


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build missing control-plane binaries before any test runs (outside the per-test timeout)."""
    if not _k8s_items(session.items) or session.config.option.collectonly:
        return
    if not build.missing_binaries():
        return
    capture = session.config.pluginmanager.getplugin("capturemanager")
    context = capture.global_and_fixture_disabled() if capture else _null()
    with context:
        print(f"\n[tests/k8s] building the Kubernetes control plane into {build.bin_dir()} "
              "(first run only; `make k8s-tools` does the same)", flush=True)
        try:
            build.build()
        except build.BuildError as exc:
            _BUILD_ERROR.append(str(exc))
            print(f"[tests/k8s] build failed: {exc}", flush=True)


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


@pytest.fixture(scope="session")
def audit_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of the API server's audit log (requests by AUDITED_GROUP only; see k8s_support)."""
    directory = tmp_path_factory.mktemp("apiserver-audit")
    (directory / "policy.yaml").write_text(AUDIT_POLICY)
    return directory / "audit.log"


@pytest.fixture(scope="session")
def control_plane(request: pytest.FixtureRequest, audit_log: Path) -> Iterator[ControlPlane]:
    """Start one loopback control plane for the session; stop it (every process) at the end."""
    if _BUILD_ERROR:
        pytest.fail(f"cannot build the Kubernetes control plane: {_BUILD_ERROR[0]}", pytrace=False)
    missing = build.missing_binaries()
    if missing:
        try:
            build.find_go()
        except build.BuildError as exc:
            pytest.fail(str(exc), pytrace=False)
        pytest.fail(f"control-plane binaries missing in {build.bin_dir()}: {', '.join(missing)}; "
                    "run `make k8s-tools`", pytrace=False)
    try:
        plane = ControlPlane.start(timeout=180, extra_args={"kube-apiserver": [
            f"--audit-policy-file={audit_log.parent / 'policy.yaml'}", f"--audit-log-path={audit_log}",
            "--audit-log-format=json", "--audit-log-mode=blocking"]})
    except ControlPlaneError as exc:
        pytest.fail(f"the Kubernetes control plane did not start: {exc}", pytrace=False)
    failed_before = request.session.testsfailed
    yield plane
    keep = request.session.testsfailed > failed_before
    if keep:
        sys.stderr.write(f"\n[tests/k8s] tests failed; control-plane logs kept in {plane.run_dir}\n")
    plane.stop(keep_logs=keep)


@pytest.fixture(scope="module")
def metrics_server(control_plane: ControlPlane) -> Iterator[MetricsServer]:
    """Run metrics-server with metrics.k8s.io registered and Available for one test module; remove both after."""
    try:
        server = MetricsServer(control_plane).start()
    except ControlPlaneError as exc:
        pytest.fail(f"metrics-server did not start: {exc}", pytrace=False)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def kube_admin(control_plane: ControlPlane):
    """Return an admin kubernetes ApiClient for the session's control plane."""
    from kubernetes import config

    from kubernetes import client as k8s

    client = config.new_client_from_config(config_file=str(control_plane.kubeconfig))
    # Audited users (KubeEnv.audited_cluster) act with full rights; only their requests are logged.
    k8s.RbacAuthorizationV1Api(client).create_cluster_role_binding({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": "edge-test-audited-admin"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": AUDITED_GROUP}]})
    yield client
    client.close()


@pytest.fixture
def kube(control_plane: ControlPlane, kube_admin, tmp_path: Path, audit_log: Path) -> Iterator[KubeEnv]:
    """Yield a KubeEnv: a fresh namespace (with its default service account) on the shared control plane."""
    from kubernetes import client

    core = client.CoreV1Api(kube_admin)
    namespace = f"t-{_suffix(8)}"
    core.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    env = KubeEnv(control_plane, kube_admin, namespace, tmp_path, audit_log)
    try:
        # Pods are refused until the service-account controller made the namespace's "default".
        wait_for(lambda: core.read_namespaced_service_account("default", namespace), timeout=30,
                 what=f"service account default in {namespace}")
        yield env
    finally:
        env.cleanup()


@pytest.fixture
def standin_factory(kube: KubeEnv, built_models: Path) -> Iterator[Callable]:
    """Yield make() -> a started ModelServerStandIn for the test's namespace (stopped at teardown)."""
    from standin import ModelServerStandIn

    made: list[ModelServerStandIn] = []

    def make(**kwargs) -> ModelServerStandIn:
        harness = ModelServerStandIn(kubeconfig=kube.kubeconfig, namespace=kube.namespace,
                                     catalog_path=kwargs.pop("catalog_path", CATALOG), models_dir=built_models,
                                     log_dir=kube.tmp_path / "standin", **kwargs)
        made.append(harness)
        return harness.start()

    yield make
    for harness in made:
        harness.stop()





@pytest.fixture
def frontend_factory(kube: KubeEnv) -> Iterator[Callable]:
    """Yield make(**settings) -> a started GunicornServer whose cluster is the test's namespace
    (`cluster_settings` adds to the adapter's settings)."""
    from tests.frontend_server import GunicornServer

    made: list[GunicornServer] = []

    def make(*, workers: int = 2, cluster_settings: dict | None = None, **settings) -> GunicornServer:
        config = {
            "cluster": "kubernetes",
            "cluster_settings": {"kubeconfig": str(kube.kubeconfig), "namespace": kube.namespace,
                                 "catalog_path": str(CATALOG), "node_class_label": "edge-inference/node-class",
                                 **(cluster_settings or {})},
            "database": str(kube.tmp_path / f"frontend-{len(made)}.db"),
            "token": FRONTEND_TOKEN, "refresh_interval": 0.2, **settings,
        }
        server = GunicornServer(config, workers=workers, threads=4,
                                log_path=kube.tmp_path / f"frontend-{len(made)}.log")
        made.append(server)
        return server.start(timeout=90)

    yield make
    for server in made:
        server.cleanup()
