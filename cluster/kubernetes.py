"""The Kubernetes adapter of the Cluster port: one Deployment + one NodePort Service per (model, node).

This is the only module that imports the `kubernetes` client library (the kopf convention): every
API call goes through `KubernetesCluster._call`, which checks the call against `API_PERMISSIONS`
(the one list the RBAC manifests in k8s/ are tested against) and turns the client's exceptions
into the port's (`ClusterError` and subclasses, raised `from` the client's exception). Rendering
(`k8s_render`) and state conversion (`k8s_state`) are pure and live elsewhere, so they are tested
without an API server and the client library can change without the change spreading; the
settings (`k8s_settings`) and the list/watch loop (`k8s_watch`) have their own modules too.

Reads are answered from a watch-backed cache, never a list call per question: one thread per
resource (nodes cluster-wide; our Deployments, Services and Pods in the namespace, selected by
`app.kubernetes.io/managed-by`) lists, then watches from the list's resourceVersion, re-lists on
410 Gone and at least every `resync_seconds`, and backs off exponentially on errors. A further
thread polls metrics.k8s.io for node CPU every `metrics_seconds`; when the API is not served the
nodes' CPU is estimated from our pods' requests (k8s_state).

Exception mapping::

    connection refused / reset / timeout, TLS failure, 429, 5xx -> ClusterUnavailable
    404 on a node                                                 -> UnknownNode
    401 / 403                                                      -> ClusterError ("not permitted")
    anything else from the API                                     -> ClusterError (with its message)
    missing or broken kubeconfig                                   -> ClusterUnavailable
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import urllib3
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException, OpenApiException
from kubernetes.config.config_exception import ConfigException

from . import k8s_state as state
from .k8s_settings import PLAN_CONFIGMAP, PLAN_KEY, CacheSettings, render_settings_from
from .k8s_watch import Reflector, name_of as _name
from .catalog import DEFAULT_CATALOG, Catalog, CatalogError, load_catalog
from .k8s_render import (MANAGED_BY_LABEL, RenderError, RenderSettings, object_name, render_instance)
from .port import (Cluster, ClusterError, ClusterUnavailable, Deployment, InsufficientMemory, Node,
                   NodeNotReady, UnknownModel, UnknownNode)

__all__ = [
    "KubernetesCluster", "CacheSettings", "ApiPermission", "API_PERMISSIONS", "schema_problems",
]

log = logging.getLogger("cluster.kubernetes")


@dataclass(frozen=True)
class ApiPermission:
    """One kind of API call the adapter makes; k8s/rbac.yaml must grant exactly these."""

    group: str                 # API group ("" is the core group)
    resource: str              # plural resource name
    verbs: tuple[str, ...]     # verbs used on it
    cluster_wide: bool         # True: granted by a ClusterRole; False: a Role in our namespace
    names: tuple[str, ...] = ()   # resourceNames the rule is limited to (empty: any object)


# Every call below is checked against this list at run time, and the RBAC test compares it with
# the Role and ClusterRole in k8s/, so the code and the manifests cannot drift apart silently.
API_PERMISSIONS: tuple[ApiPermission, ...] = (
    # get: deploy() on a node the cache has not seen yet (just added).
    ApiPermission("", "nodes", ("get", "list", "watch"), cluster_wide=True),
    ApiPermission("metrics.k8s.io", "nodes", ("list",), cluster_wide=True),
    # get: confirm an existing object is ours before treating 409 as done or deleting it.
    ApiPermission("apps", "deployments", ("get", "list", "watch", "create", "delete"), cluster_wide=False),
    ApiPermission("", "services", ("get", "list", "watch", "create", "delete"), cluster_wide=False),
    # list: also the front-end replicas behind a Service (frontend_replicas), by its selector.
    ApiPermission("", "pods", ("list", "watch"), cluster_wide=False),
    # The plan every front-end replica watches and the back-end updates (k8s/20-configmaps.yaml
    # creates it): this one ConfigMap only; list/watch by a metadata.name field selector.
    ApiPermission("", "configmaps", ("list", "watch", "update"), cluster_wide=False, names=(PLAN_CONFIGMAP,)),
)
_ALLOWED = {(p.group, p.resource, verb) for p in API_PERMISSIONS for verb in p.verbs}


# --- errors ---------------------------------------------------------------------------------

def _api_message(exc: ApiException) -> str:
    body = exc.body
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if body:
        try:
            message = json.loads(body).get("message")
            if message:
                return str(message)
        except (ValueError, AttributeError):
            return str(body).strip().splitlines()[0][:300] if str(body).strip() else str(exc.reason)
    return str(exc.reason or "").strip().splitlines()[0] if exc.reason else "no details"


def _translate(exc: BaseException, what: str, host: str) -> ClusterError:
    if isinstance(exc, ApiException):
        status = exc.status or 0
        message = _api_message(exc)
        if status == 0 or status == 429 or status >= 500:
            return ClusterUnavailable(f"{what}: Kubernetes API at {host} unavailable ({status or 'no status'}): {message}")
        if status in (401, 403):
            return ClusterError(f"{what}: not permitted ({status}): {message}")
        return ClusterError(f"{what}: {status}: {message}")
    if isinstance(exc, (urllib3.exceptions.HTTPError, OSError)):
        reason = getattr(exc, "reason", None) or exc
        return ClusterUnavailable(f"{what}: cannot reach the Kubernetes API at {host}: {reason}")
    return ClusterError(f"{what}: {exc}")


# --- configuration ----------------------------------------------------------------------------

def _default_kubeconfig_exists() -> bool:
    paths = os.environ.get("KUBECONFIG", "")
    candidates = [p for p in paths.split(os.pathsep) if p] or [os.path.expanduser("~/.kube/config")]
    return any(os.path.exists(p) for p in candidates)


def _api_client(*, kubeconfig: str | None, context: str | None, in_cluster: bool) -> k8s_client.ApiClient:
    cfg = k8s_client.Configuration()
    try:
        # Without an explicit choice, a pod with no kubeconfig uses its service account (as kubectl does).
        if in_cluster or (kubeconfig is None and context is None and not _default_kubeconfig_exists()
                          and os.environ.get("KUBERNETES_SERVICE_HOST")):
            k8s_config.load_incluster_config(client_configuration=cfg)
        else:
            k8s_config.load_kube_config(config_file=str(kubeconfig) if kubeconfig else None, context=context,
                                        client_configuration=cfg, persist_config=False)
    except (ConfigException, OSError, ValueError, TypeError, KeyError) as exc:
        raise ClusterUnavailable(f"cannot load the Kubernetes configuration: {exc}") from exc
    # Retry only what is safe to retry: failures to connect, never a request already sent.
    cfg.retries = urllib3.Retry(total=2, connect=2, read=0, status=0, redirect=0, other=0, backoff_factor=0.2)
    cfg.connection_pool_maxsize = max(cfg.connection_pool_maxsize or 0, 16)
    return k8s_client.ApiClient(cfg)


@dataclass(frozen=True)
class _Snapshot:
    generation: int
    nodes: list[Node]
    node_by_name: dict[str, Node]
    deployments: list[Deployment]
    memory_used: dict[str, int]


class KubernetesCluster(Cluster):
    """Run model servers on a Kubernetes cluster; state from a watch-backed cache."""

    def __init__(self, *, kubeconfig: str | Path | None = None, context: str | None = None,
                 in_cluster: bool = False, namespace: str = "edge-inference",
                 catalog_path: str | Path = DEFAULT_CATALOG,
                 node_class_label: str = "edge-inference/node-class",
                 resync_seconds: float = 300.0, metrics_seconds: float = 15.0,
                 sync_timeout_seconds: float = 30.0,
                 render: RenderSettings | Mapping[str, Any] | None = None,
                 cache: CacheSettings | None = None) -> None:
        try:
            self.catalog: Catalog = load_catalog(catalog_path)
        except CatalogError as exc:
            raise ClusterError(str(exc)) from exc
        self.settings = cache or CacheSettings(namespace=namespace, node_class_label=node_class_label,
                                               resync_seconds=resync_seconds, metrics_seconds=metrics_seconds,
                                               sync_timeout_seconds=sync_timeout_seconds)
        try:
            self.render_settings = render_settings_from(render if render is not None else RenderSettings(),
                                                        namespace=self.settings.namespace)
        except ValueError as exc:
            raise ClusterError(f"render settings: {exc}") from None
        self._api = _api_client(kubeconfig=str(kubeconfig) if kubeconfig else None, context=context,
                                in_cluster=in_cluster)
        self._host = self._api.configuration.host
        self._core = k8s_client.CoreV1Api(self._api)
        self._apps = k8s_client.AppsV1Api(self._api)
        self._custom = k8s_client.CustomObjectsApi(self._api)
        self._cond = threading.Condition()
        self._generation = 0
        self._snapshot_cache: _Snapshot | None = None
        self._label_warned: set[str] = set()                 # tier/cost label problems already logged
        self._stopping = threading.Event()
        self._deploy_lock = threading.Lock()
        self._pending: dict[str, tuple[str, int]] = {}      # object name -> (node, KB) created, not yet seen
        self._removing: dict[str, tuple[str, float]] = {}   # object name -> (node, monotonic time) deleted by us
        self._metrics: dict[str, float] | None = None
        self.metrics_served: bool | None = None              # None until the first poll
        ns = self.settings.namespace
        selector = f"{MANAGED_BY_LABEL}={self.render_settings.managed_by}"
        self._reflectors = {
            "nodes": Reflector(self, "nodes", "", "nodes", self._core.list_node, None),
            "deployments": Reflector(self, "deployments", "apps", "deployments",
                                      _bind(self._apps.list_namespaced_deployment, ns), selector),
            "services": Reflector(self, "services", "", "services",
                                   _bind(self._core.list_namespaced_service, ns), selector),
            "pods": Reflector(self, "pods", "", "pods", _bind(self._core.list_namespaced_pod, ns), selector),
        }
        # Started by the first plan_document() call: only the front-end reads the plan.
        self._plan_reflector = Reflector(self, "plan", "", "configmaps", _bind(self._core.list_namespaced_config_map, ns),
                                         None, field_selector=f"metadata.name={PLAN_CONFIGMAP}")
        self._plan_lock = threading.Lock()
        self._metrics_thread = threading.Thread(target=self._poll_metrics, name="k8s-metrics", daemon=True)
        for reflector in self._reflectors.values():
            reflector.start()
        self._metrics_thread.start()

    # --- the one door to the API ---------------------------------------------------------------

    def _call(self, verb: str, group: str, resource: str, fn: Callable[..., Any], *args: Any,
              stream: bool = False, read_timeout: float | None = None, **kwargs: Any) -> Any:
        """Make one API call declared in API_PERMISSIONS; return parsed JSON (or the raw stream)."""
        if (group, resource, verb) not in _ALLOWED:
            raise AssertionError(f"undeclared API call {verb} {group or 'core'}/{resource}: add it to API_PERMISSIONS")
        timeout = (self.settings.connect_timeout_seconds, read_timeout or self.settings.request_timeout_seconds)
        what = f"{verb} {resource}" + (f" {args[0]}" if args and verb in ("get", "delete") else "")
        try:
            response = fn(*args, _preload_content=False, _request_timeout=timeout, **kwargs)
            if stream:
                return response
            data = response.data
            response.release_conn()
        except (ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise _translate(exc, what, self._host) from exc
        try:
            return json.loads(data) if data else {}
        except ValueError as exc:
            raise ClusterError(f"{what}: the API server sent invalid JSON") from exc

    def _translate(self, exc: BaseException, what: str) -> ClusterError:
        """Turn a client or transport exception into the port's error (for the watch threads)."""
        return _translate(exc, what, self._host)

    # --- cache bookkeeping ---------------------------------------------------------------------

    def _changed(self) -> None:
        """Record a cache change; the caller holds self._cond."""
        self._generation += 1
        self._cond.notify_all()

    def _notify(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _synced(self) -> bool:
        return all(r.synced.is_set() for r in self._reflectors.values())

    def wait_synced(self, timeout: float | None = None) -> bool:
        """Wait until every watched resource has been listed once; return whether it has."""
        with self._cond:
            return self._cond.wait_for(lambda: self._synced() or self._stopping.is_set(), timeout) and self._synced()

    def _require_synced(self) -> None:
        """Wait for the first full list; fail fast when every pending list has failed."""
        if self._stopping.is_set():
            raise ClusterError("the Kubernetes cluster adapter is closed")
        if self._synced():
            return

        def settled() -> bool:
            pending = [r for r in self._reflectors.values() if not r.synced.is_set()]
            return not pending or self._stopping.is_set() or all(r.last_error is not None for r in pending)

        with self._cond:
            self._cond.wait_for(settled, self.settings.sync_timeout_seconds)
        if self._synced():
            return
        errors = [r.last_error for r in self._reflectors.values() if not r.synced.is_set() and r.last_error]
        if errors:
            first = errors[0]
            raise type(first)(str(first)) from first
        raise ClusterUnavailable(f"the Kubernetes API at {self._host} did not answer within "
                                 f"{self.settings.sync_timeout_seconds:g}s")

    def _store(self, kind: str) -> dict[str, dict[str, Any]]:
        return self._reflectors[kind].store

    def _snapshot(self) -> _Snapshot:
        with self._cond:
            cached = self._snapshot_cache
            if cached is not None and cached.generation == self._generation:
                return cached
            generation = self._generation
            nodes = list(self._store("nodes").values())
            pods = list(self._store("pods").values())
            deployments = list(self._store("deployments").values())
            services = dict(self._store("services"))
            metrics = self._metrics
        node_objects = {_name(n): n for n in nodes}
        self._warn_labels(nodes)
        built_nodes = state.build_nodes(nodes, pods, deployments, metrics,
                                        node_class_label=self.settings.node_class_label)
        snapshot = _Snapshot(
            generation=generation,
            nodes=built_nodes,
            node_by_name={n.name: n for n in built_nodes},
            deployments=state.build_deployments(deployments, services, node_objects),
            memory_used=state.memory_used_by_node(pods, deployments),
        )
        with self._cond:
            if self._snapshot_cache is None or self._snapshot_cache.generation < generation:
                self._snapshot_cache = snapshot
        return snapshot

    def _warn_labels(self, nodes: list[dict[str, Any]]) -> None:
        """Log each tier or cost label the port would ignore (state.tier_label_problems), once."""
        for node in nodes:
            for problem in state.tier_label_problems(node):
                with self._cond:
                    if problem in self._label_warned:
                        continue
                    self._label_warned.add(problem)
                log.warning(problem)

    def _wait_change(self, generation: int, timeout: float) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._generation != generation or self._stopping.is_set(),
                                max(0.0, timeout))

    def _poll_metrics(self) -> None:
        warned = False
        while not self._stopping.is_set():
            try:
                data = self._call("list", "metrics.k8s.io", "nodes", self._custom.list_cluster_custom_object,
                                  "metrics.k8s.io", "v1beta1", "nodes")
                metrics: dict[str, float] | None = state.metrics_cpu(data.get("items") or [])
                self.metrics_served = True
                warned = False
            except ClusterError as exc:
                metrics = None
                self.metrics_served = False
                if not warned and not self._stopping.is_set():
                    log.info("metrics.k8s.io not usable, estimating node cpu from pod requests: %s", exc)
                    warned = True
            with self._cond:
                if metrics != self._metrics:
                    self._metrics = metrics
                    self._changed()
            self._stopping.wait(self.settings.metrics_seconds)

    # --- the port ------------------------------------------------------------------------------

    def nodes(self) -> list[Node]:
        """Return every node, ready or not, from the cache."""
        self._require_synced()
        return list(self._snapshot().nodes)

    def deployments(self) -> list[Deployment]:
        """Return every model instance (not those being deleted), from the cache."""
        self._require_synced()
        return list(self._snapshot().deployments)

    def manifest(self, model: str, node: str) -> str:
        """Return the YAML deploy() would send for (model, node), without calling the API."""
        spec = self._spec(model)
        node_obj = self._store("nodes").get(node)
        hostname = state.node_hostname(node_obj) if node_obj else None
        return render_instance(spec, node, self.render_settings, hostname=hostname).text

    def deploy(self, model: str, node: str, *, wait: bool = True, timeout: float = 60.0) -> Deployment:
        """Create the Deployment then the Service for (model, node); existing objects count as done."""
        deadline = time.monotonic() + timeout
        spec = self._spec(model)
        self._require_synced()
        node_obj = self._node_object(node)
        if not state.node_ready(node_obj):
            raise NodeNotReady(f"node {node} is not ready")
        if not state.node_schedulable(node_obj):
            raise NodeNotReady(f"node {node} is cordoned (unschedulable)")
        try:
            rendered = render_instance(spec, node, self.render_settings, hostname=state.node_hostname(node_obj))
        except RenderError as exc:
            raise ClusterError(f"cannot render {model} on {node}: {exc}") from exc
        name = rendered.name
        self._wait_not_deleting(name, (model, node), deadline)
        reserved = False
        while True:
            with self._deploy_lock:
                existing = self._store("deployments").get(name)
                if existing is not None and state.identity(existing) == (model, node):
                    break
                generation = self._generation
                try:
                    self._check_memory(spec.memory, model, node, node_obj)
                except InsufficientMemory:
                    # A removal on this node frees memory only once its pods are gone (Foreground
                    # deletion): wait for that, as the local adapter's synchronous remove does.
                    if not self._freeing(node) or time.monotonic() >= deadline:
                        raise
                else:
                    # Reserve the memory, then create outside the lock so deploys run in parallel.
                    self._pending[name] = (node, spec.memory)
                    reserved = True
            if reserved:
                try:
                    self._create("deployments", self._apps.create_namespaced_deployment, rendered.deployment,
                                 (model, node))
                except BaseException:
                    with self._deploy_lock:
                        self._pending.pop(name, None)
                    raise
                break
            self._wait_change(generation, min(1.0, deadline - time.monotonic()))
        self._create("services", self._core.create_namespaced_service, rendered.service, (model, node))
        if not wait:
            return self._current(model, node) or Deployment(model=model, node=node, endpoint="", ready=False,
                                                            created=time.time())
        return self._wait_ready(model, node, timeout, deadline)

    def remove(self, model: str, node: str) -> None:
        """Delete the Service and the Deployment of (model, node), foreground; gone counts as done."""
        name = object_name(model, node)
        self._delete("services", self._core.read_namespaced_service, self._core.delete_namespaced_service,
                     name, (model, node))
        self._delete("deployments", self._apps.read_namespaced_deployment,
                     self._apps.delete_namespaced_deployment, name, (model, node))
        with self._deploy_lock:
            self._pending.pop(name, None)
            self._removing[name] = (node, time.monotonic())

    # --- the plan and the front-end replicas (not part of the port) -----------------------------

    def plan_document(self) -> tuple[str, str] | None:
        """Return (resourceVersion, JSON text) of the plan in the ConfigMap `edge-inference-plan`,
        from a watch started by the first call; None while there is none (or not listed yet)."""
        with self._plan_lock:
            if not self._plan_reflector.is_alive() and not self._stopping.is_set():
                self._plan_reflector.start()
        with self._cond:
            obj = self._plan_reflector.store.get(PLAN_CONFIGMAP)
        if obj is None:
            return None
        text = (obj.get("data") or {}).get(PLAN_KEY)
        if not text:
            return None
        return str((obj.get("metadata") or {}).get("resourceVersion") or ""), text

    def write_plan(self, plan: Mapping[str, Any]) -> None:
        """Replace the plan in the ConfigMap `edge-inference-plan` (which the manifests create)."""
        ns = self.settings.namespace
        body = {"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": PLAN_CONFIGMAP, "namespace": ns,
                             "labels": {"app.kubernetes.io/part-of": "edge-inference"}},
                "data": {PLAN_KEY: json.dumps(dict(plan), sort_keys=True)}}
        try:
            self._call("update", "", "configmaps", self._core.replace_namespaced_config_map, PLAN_CONFIGMAP, ns, body)
        except ClusterError as exc:
            if isinstance(exc.__cause__, ApiException) and exc.__cause__.status == 404:
                raise ClusterError(f"ConfigMap {PLAN_CONFIGMAP} not found in namespace {ns}: "
                                   "apply k8s/20-configmaps.yaml, which creates it") from exc
            raise

    def frontend_replicas(self, service: str) -> list[str]:
        """Return http://<pod IP>:<port> of every ready pod behind `service` (what its EndpointSlices
        would list), read from the Service's selector and the pods at the time of the call."""
        ns = self.settings.namespace
        svc = self._call("get", "", "services", self._core.read_namespaced_service, service, ns)
        selector = (svc.get("spec") or {}).get("selector") or {}
        ports = (svc.get("spec") or {}).get("ports") or []
        if not selector or not ports:
            raise ClusterError(f"service {service} has no selector or no port: cannot find its pods")
        target = ports[0].get("targetPort", ports[0].get("port"))
        label_selector = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
        pods = self._call("list", "", "pods", self._core.list_namespaced_pod, ns, label_selector=label_selector)
        return state.ready_pod_urls(pods.get("items") or [], target)

    def close(self) -> None:
        """Stop the watches and the metrics poller and release connections."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._notify()
        for reflector in [*self._reflectors.values(), self._plan_reflector]:
            reflector.stop()
        for thread in [*self._reflectors.values(), self._plan_reflector, self._metrics_thread]:
            if thread.is_alive():
                thread.join(timeout=5.0)
        try:
            self._api.close()
        except Exception:
            pass

    def __enter__(self) -> "KubernetesCluster":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- helpers -------------------------------------------------------------------------------

    def _spec(self, model: str):
        if model not in self.catalog:
            raise UnknownModel(f"unknown model {model!r} (catalog: {', '.join(self.catalog.names())})")
        return self.catalog[model]

    def _node_object(self, node: str) -> dict[str, Any]:
        cached = self._store("nodes").get(node)
        if cached is not None:
            return cached
        try:
            return self._call("get", "", "nodes", self._core.read_node, node)
        except ClusterError as exc:
            cause = exc.__cause__
            if isinstance(cause, ApiException) and cause.status == 404:
                raise UnknownNode(f"unknown node {node!r}") from cause
            raise

    def _freeing(self, node: str) -> bool:
        """Return True while an instance of ours on `node` is being deleted (its memory is coming back)."""
        now = time.monotonic()
        with self._cond:
            deployments = self._store("deployments")
            for name, (pnode, since) in list(self._removing.items()):
                # Gone from the cache (and long enough for the watch to have caught up): done.
                if name not in deployments and now - since > 2.0:
                    del self._removing[name]
            if any(pnode == node for pnode, _ in self._removing.values()):
                return True
            objects = [(d, state.identity(d)) for d in deployments.values()]
            objects += [(p, (None, state.pod_node(p))) for p in self._store("pods").values()]
        return any((obj.get("metadata") or {}).get("deletionTimestamp") and ident and ident[1] == node
                   for obj, ident in objects)

    def _check_memory(self, need: int, model: str, node: str, node_obj: Mapping[str, Any]) -> None:
        # Only this node's objects: rebuilding the whole snapshot here (under the deploy lock)
        # made each deploy cost ~0.3 s at 1,000 nodes and 2,000 pods.
        with self._cond:
            deployments = self._store("deployments")
            for name in [n for n in self._pending if n in deployments]:
                del self._pending[name]
            pods = [p for p in self._store("pods").values() if state.pod_node(p) == node]
            ours = [d for d in deployments.values() if (state.identity(d) or ("", ""))[1] == node]
        pending = sum(kb for n, (pnode, kb) in self._pending.items() if pnode == node)
        total = state.build_node(node_obj).memory_total
        used = state.memory_used_by_node(pods, ours).get(node, 0) + pending
        if total - used < need:
            raise InsufficientMemory(f"cannot deploy {model} on {node}: needs {need} KB, "
                                     f"{max(0, total - used)} KB of {total} KB allocatable is free")

    def _owned(self, obj: Mapping[str, Any], ident: tuple[str, str]) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return labels.get(MANAGED_BY_LABEL) == self.render_settings.managed_by and state.identity(obj) == ident

    def _create(self, kind: str, create_fn: Callable[..., Any], body: dict[str, Any],
                ident: tuple[str, str]) -> None:
        group = "apps" if kind == "deployments" else ""
        name = _name(body)
        try:
            self._call("create", group, kind, create_fn, self.settings.namespace, body)
            return
        except ClusterError as exc:
            cause = exc.__cause__
            if not (isinstance(cause, ApiException) and cause.status == 409):
                raise
        read_fn = self._apps.read_namespaced_deployment if kind == "deployments" else self._core.read_namespaced_service
        existing = self._call("get", group, kind, read_fn, name, self.settings.namespace)
        if not self._owned(existing, ident):
            raise ClusterError(f"cannot create {kind[:-1]} {name} for {ident[0]} on {ident[1]}: "
                               f"an object with that name exists and belongs to something else")
        if (existing.get("metadata") or {}).get("deletionTimestamp"):
            raise ClusterError(f"{kind[:-1]} {name} is still being deleted; deploy again once it is gone")

    def _delete(self, kind: str, read_fn: Callable[..., Any], delete_fn: Callable[..., Any], name: str,
                ident: tuple[str, str]) -> None:
        group = "apps" if kind == "deployments" else ""
        ns = self.settings.namespace
        try:
            existing = self._call("get", group, kind, read_fn, name, ns)
        except ClusterError as exc:
            if isinstance(exc.__cause__, ApiException) and exc.__cause__.status == 404:
                return
            raise
        if not self._owned(existing, ident):
            raise ClusterError(f"refusing to delete {kind[:-1]} {name}: it does not belong to "
                               f"{ident[0]} on {ident[1]}")
        uid = (existing.get("metadata") or {}).get("uid")
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Foreground"}
        if uid:
            body["preconditions"] = {"uid": uid}
        try:
            self._call("delete", group, kind, delete_fn, name, ns, body=body)
        except ClusterError as exc:
            cause = exc.__cause__
            # 404: already gone; 409: the uid precondition failed, someone replaced it meanwhile.
            if isinstance(cause, ApiException) and cause.status in (404, 409):
                return
            raise

    def _current(self, model: str, node: str) -> Deployment | None:
        """The instance (model, node) as deployments() would show it, built from its objects alone."""
        name = object_name(model, node)
        with self._cond:
            dep = self._store("deployments").get(name)
            service = self._store("services").get(name)
            node_obj = self._store("nodes").get(node)
        if dep is None:
            return None
        built = state.build_deployments([dep], {name: service} if service else {},
                                        {node: node_obj} if node_obj else {})
        return next((d for d in built if d.model == model and d.node == node), None)

    def _wait_not_deleting(self, name: str, ident: tuple[str, str], deadline: float) -> None:
        while True:
            snapshot_gen = self._generation
            busy = [obj for obj in (self._store("deployments").get(name), self._store("services").get(name))
                    if obj is not None and (obj.get("metadata") or {}).get("deletionTimestamp")
                    and state.identity(obj) == ident]
            if not busy:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ClusterError(f"{ident[0]} on {ident[1]} is still being deleted")
            self._wait_change(snapshot_gen, remaining)

    def _wait_ready(self, model: str, node: str, timeout: float, deadline: float) -> Deployment:
        while True:
            generation = self._generation
            current = self._current(model, node)
            if current is not None and current.ready:
                return current
            with self._cond:
                node_obj = self._store("nodes").get(node)
            if node_obj is not None and not state.node_ready(node_obj):
                raise NodeNotReady(f"node {node} became not ready while {model} was starting")
            if self._stopping.is_set():
                raise ClusterError("the Kubernetes cluster adapter is closed")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                with self._cond:
                    pods = [p for p in self._store("pods").values() if state.identity(p) == (model, node)]
                detail = state.pod_problem(pods) or ("no pod yet" if current is not None else "not seen yet")
                raise ClusterError(f"{model} on {node} not ready after {timeout:g}s: {detail}")
            self._wait_change(generation, remaining)


def _bind(fn: Callable[..., Any], namespace: str) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        return fn(namespace, *args, **kwargs)
    return call


def schema_problems(obj: Mapping[str, Any]) -> list[str]:
    """Return where `obj` departs from the client's schema of its kind (unknown or mistyped fields)."""
    api_version, kind = obj.get("apiVersion", ""), obj.get("kind", "")
    version = str(api_version).rsplit("/", 1)[-1]
    class_name = version[:1].upper() + version[1:] + str(kind)
    model = getattr(k8s_client, class_name, None)
    if model is None:
        return [f"no schema for {api_version} {kind}"]
    try:
        parsed = model.from_dict(dict(obj))
    except (ValueError, TypeError, OpenApiException) as exc:
        return [f"{kind}: {' '.join(str(exc).split())}"]
    back = k8s_client.ApiClient().sanitize_for_serialization(parsed)
    problems: list[str] = []

    def compare(original: Any, roundtrip: Any, path: str) -> None:
        if isinstance(original, Mapping):
            if not isinstance(roundtrip, Mapping):
                problems.append(f"{path}: not an object in the schema")
                return
            for key, value in original.items():
                if key not in roundtrip:
                    problems.append(f"{path}.{key}: unknown field")
                else:
                    compare(value, roundtrip[key], f"{path}.{key}")
        elif isinstance(original, list):
            if not isinstance(roundtrip, list) or len(roundtrip) != len(original):
                problems.append(f"{path}: not a list in the schema")
                return
            for index, (a, b) in enumerate(zip(original, roundtrip)):
                compare(a, b, f"{path}[{index}]")
        elif original != roundtrip and str(original) != str(roundtrip):
            problems.append(f"{path}: {original!r} became {roundtrip!r}")

    compare(obj, back, str(kind))
    return problems
