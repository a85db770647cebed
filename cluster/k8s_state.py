"""Turn Kubernetes API objects into the port's `Node` and `Deployment`.

Pure: the inputs are API-shaped dicts (the JSON the API server sends, camelCase keys), the outputs
are `cluster.port` dataclasses. The adapter feeds it from its watch cache; the unit tests feed it
hand-written dicts. Nothing here imports `kubernetes`.

Accounting rules (what the solver and the front-end see):

- memory_total: the node's allocatable memory, in KB (KiB, the catalog's unit).
- memory_used: memory requests of *our* pods on the node, plus, for our Deployments pinned to the
  node whose pod is not there yet, their template's requests (so a just-created instance counts
  at once). Other workloads' requests are not seen: the adapter watches only its own objects.
- cpu_usage: the node's usage from metrics.k8s.io when served; otherwise an estimate, the cpu
  requests of our pods on the node, capped at allocatable.
- A Deployment is ready when it has an available replica, its Service has a nodePort, and its
  node is Ready with an address; the endpoint is `InternalIP:nodePort`.
- Tier and costs: the node's own labels pass through unchanged, so a node labelled
  `topology=cloud` is a cloud site and `cost-per-request` / `cost-per-instance-hour` price it
  (`cluster.port.node_tier`, `node_costs`), exactly as the local cluster reports its `tier: cloud`
  nodes. `tier_label_problems` names the values those readers would silently take as edge or 0.
"""
from __future__ import annotations

import math
from collections import defaultdict
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Iterable, Mapping

from .k8s_render import MODEL_ANNOTATION, NODE_ANNOTATION
from .port import COST_HOUR_LABEL, COST_REQUEST_LABEL, TIER_LABEL, Deployment, Node

__all__ = [
    "NODE_CLASS_KEY", "UNKNOWN_CLASS", "parse_quantity", "parse_cpu", "parse_memory_kb",
    "parse_time", "node_ready", "node_schedulable", "node_address", "node_hostname",
    "identity", "pod_active", "pod_node", "pod_requests", "template_requests",
    "deployment_available", "node_port", "format_endpoint", "metrics_cpu",
    "estimate_cpu_usage", "memory_used_by_node", "build_node", "build_nodes",
    "build_deployments", "pod_problem", "pod_ready", "ready_pod_urls", "tier_label_problems",
]

NODE_CLASS_KEY = "node-class"      # key of the node class in port.Node.labels
UNKNOWN_CLASS = "unknown"          # class reported for a node without the class label

_BINARY = {"Ki": 2 ** 10, "Mi": 2 ** 20, "Gi": 2 ** 30, "Ti": 2 ** 40, "Pi": 2 ** 50, "Ei": 2 ** 60}
_DECIMAL = {"n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1),
            "k": Decimal("1e3"), "M": Decimal("1e6"), "G": Decimal("1e9"), "T": Decimal("1e12"),
            "P": Decimal("1e15"), "E": Decimal("1e18")}


def _get(obj: Mapping[str, Any] | None, *path: str, default: Any = None) -> Any:
    for key in path:
        if not isinstance(obj, Mapping):
            return default
        obj = obj.get(key)
    return default if obj is None else obj


def parse_quantity(quantity: str | int | float) -> Decimal:
    """Parse a Kubernetes resource quantity ("250m", "1.5", "4Gi", "1e3", "1500000n") exactly."""
    if isinstance(quantity, bool):
        raise ValueError(f"not a quantity: {quantity!r}")
    if isinstance(quantity, (int, float)):
        return Decimal(str(quantity))
    text = str(quantity).strip()
    if not text:
        raise ValueError("empty quantity")
    if text[-2:] in _BINARY:
        number, factor = text[:-2], Decimal(_BINARY[text[-2:]])
    elif text[-1] in _DECIMAL and not text[-1].isdigit():
        number, factor = text[:-1], _DECIMAL[text[-1]]
    else:
        number, factor = text, Decimal(1)
    try:
        value = Decimal(number)
    except InvalidOperation as exc:
        raise ValueError(f"not a quantity: {quantity!r}") from exc
    if not value.is_finite():
        raise ValueError(f"not a quantity: {quantity!r}")
    return value * factor


def parse_cpu(quantity: str | int | float) -> float:
    """Return a CPU quantity in cores ("250m" -> 0.25, "1500000n" -> 0.0015)."""
    return float(parse_quantity(quantity))


def parse_memory_kb(quantity: str | int | float, *, round_up: bool = False) -> int:
    """Return a memory quantity in KB (KiB): floor for capacities, ceil with `round_up` for requests."""
    kb = parse_quantity(quantity) / 1024
    return int(math.ceil(kb) if round_up else math.floor(kb))


def parse_time(stamp: str | None) -> float:
    """Return an RFC 3339 API timestamp as unix seconds (0.0 when missing)."""
    if not stamp:
        return 0.0
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def node_ready(node: Mapping[str, Any]) -> bool:
    """Return True when the node's Ready condition is True."""
    for cond in _get(node, "status", "conditions", default=[]):
        if cond.get("type") == "Ready":
            return cond.get("status") == "True"
    return False


def node_schedulable(node: Mapping[str, Any]) -> bool:
    """Return False for a cordoned node (spec.unschedulable)."""
    return not _get(node, "spec", "unschedulable", default=False)


def node_address(node: Mapping[str, Any]) -> str:
    """Return the node's InternalIP (else ExternalIP, else Hostname; "" when none)."""
    addresses = _get(node, "status", "addresses", default=[])
    for kind in ("InternalIP", "ExternalIP", "Hostname"):
        for entry in addresses:
            if entry.get("type") == kind and entry.get("address"):
                return entry["address"]
    return ""


def node_hostname(node: Mapping[str, Any]) -> str:
    """Return the node's kubernetes.io/hostname label (the node name when absent)."""
    name = _get(node, "metadata", "name", default="")
    return _get(node, "metadata", "labels", "kubernetes.io/hostname", default=name)


def identity(obj: Mapping[str, Any]) -> tuple[str, str] | None:
    """Return the true (model, node) an object of ours belongs to, from its annotations."""
    annotations = _get(obj, "metadata", "annotations", default={})
    model, node = annotations.get(MODEL_ANNOTATION), annotations.get(NODE_ANNOTATION)
    if isinstance(model, str) and isinstance(node, str) and model and node:
        return model, node
    return None


def pod_active(pod: Mapping[str, Any]) -> bool:
    """Return True while a pod holds resources (not Succeeded or Failed)."""
    return _get(pod, "status", "phase", default="Pending") not in ("Succeeded", "Failed")


def pod_node(pod: Mapping[str, Any]) -> str | None:
    """Return the node the pod is bound to (None while unscheduled)."""
    return _get(pod, "spec", "nodeName") or None


def _spec_requests(spec: Mapping[str, Any]) -> tuple[float, int]:
    """Effective pod requests: max(sum of containers, largest init container), per resource."""
    def one(container: Mapping[str, Any]) -> tuple[float, int]:
        requests = _get(container, "resources", "requests", default={})
        limits = _get(container, "resources", "limits", default={})
        # The API server defaults a missing request to the limit.
        cpu = requests.get("cpu", limits.get("cpu"))
        mem = requests.get("memory", limits.get("memory"))
        return (parse_cpu(cpu) if cpu is not None else 0.0,
                parse_memory_kb(mem, round_up=True) if mem is not None else 0)

    cpu = mem = 0
    for container in spec.get("containers") or []:
        c, m = one(container)
        cpu += c
        mem += m
    for container in spec.get("initContainers") or []:
        c, m = one(container)
        cpu, mem = max(cpu, c), max(mem, m)
    return float(cpu), int(mem)


def pod_requests(pod: Mapping[str, Any]) -> tuple[float, int]:
    """Return a pod's (cpu cores, memory KB) requests."""
    return _spec_requests(_get(pod, "spec", default={}))


def template_requests(deployment: Mapping[str, Any]) -> tuple[float, int]:
    """Return (cpu cores, memory KB) requested by all replicas of a Deployment's pod template."""
    cpu, mem = _spec_requests(_get(deployment, "spec", "template", "spec", default={}))
    replicas = _get(deployment, "spec", "replicas", default=1)
    return cpu * replicas, mem * replicas


def deployment_available(deployment: Mapping[str, Any]) -> bool:
    """Return True when the Deployment has an available replica and is not being deleted."""
    if _get(deployment, "metadata", "deletionTimestamp"):
        return False
    return (_get(deployment, "status", "availableReplicas", default=0) or 0) >= 1


def node_port(service: Mapping[str, Any] | None) -> int | None:
    """Return the Service's first nodePort (None until allocated)."""
    for port in _get(service, "spec", "ports", default=[]):
        if port.get("nodePort"):
            return int(port["nodePort"])
    return None


def format_endpoint(address: str, port: int | None) -> str:
    """Return "host:port" ("[v6]:port" for IPv6; "" when either part is unknown)."""
    if not address or not port:
        return ""
    host = f"[{address}]" if ":" in address else address
    return f"{host}:{port}"


def metrics_cpu(items: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """Return node name -> cores in use from a metrics.k8s.io NodeMetrics list's items."""
    usage: dict[str, float] = {}
    for item in items:
        name = _get(item, "metadata", "name")
        cpu = _get(item, "usage", "cpu")
        if name and cpu is not None:
            try:
                usage[name] = parse_cpu(cpu)
            except ValueError:
                continue
    return usage


def estimate_cpu_usage(requested_cores: float, allocatable_cores: float) -> float:
    """Estimate a node's cpu usage when metrics are not served: requests, capped at allocatable."""
    return max(0.0, min(requested_cores, allocatable_cores))


def _active_pods_by_node(pods: Iterable[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    by_node: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for pod in pods:
        name = pod_node(pod)
        if name and pod_active(pod):
            by_node[name].append(pod)
    return by_node


def memory_used_by_node(pods: Iterable[Mapping[str, Any]],
                        deployments: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Return node -> KB requested by our instances (the accounting rule in the module doc)."""
    used: dict[str, int] = defaultdict(int)
    placed: set[tuple[str, str]] = set()
    for name, node_pods in _active_pods_by_node(pods).items():
        for pod in node_pods:
            used[name] += pod_requests(pod)[1]
            ident = identity(pod)
            if ident and ident[1] == name:
                placed.add(ident)
    for dep in deployments:
        ident = identity(dep)
        if ident and ident not in placed:
            used[ident[1]] += template_requests(dep)[1]
    return dict(used)


def build_node(node: Mapping[str, Any], *, pods: Iterable[Mapping[str, Any]] = (),
               memory_used: int = 0, cpu_usage: float | None = None,
               node_class_label: str = "edge-inference/node-class") -> Node:
    """Convert one API Node into a port Node; `pods` are our active pods on it.

    `cpu_usage` is the measured usage (metrics.k8s.io); None means estimate it from `pods`."""
    status = _get(node, "status", default={})
    allocatable = status.get("allocatable") or status.get("capacity") or {}
    cpu_capacity = parse_cpu(allocatable.get("cpu", 0))
    memory_total = parse_memory_kb(allocatable.get("memory", 0))
    if cpu_usage is None:
        cpu_usage = estimate_cpu_usage(sum(pod_requests(p)[0] for p in pods), cpu_capacity)
    labels = dict(_get(node, "metadata", "labels", default={}))
    labels[NODE_CLASS_KEY] = labels.get(node_class_label) or UNKNOWN_CLASS
    return Node(
        name=_get(node, "metadata", "name", default=""),
        address=node_address(node),
        ready=node_ready(node),
        memory_total=memory_total,
        memory_used=memory_used,
        cpu_capacity=cpu_capacity,
        cpu_usage=float(cpu_usage),
        labels=labels,
    )


def tier_label_problems(node: Mapping[str, Any]) -> list[str]:
    """Return one line per tier or cost label of the node that the port's readers would ignore.

    Why: on the local cluster a bad `tier` or cost stops start-up; a node label cannot be checked
    before it is set, so the adapter logs these instead of silently serving the node as a free edge node."""
    labels = _get(node, "metadata", "labels", default={})
    name = _get(node, "metadata", "name", default="?")
    problems = []
    tier = labels.get(TIER_LABEL)
    if tier is not None and tier not in ("edge", "cloud"):
        problems.append(f"node {name}: label {TIER_LABEL}={tier!r} is neither 'edge' nor 'cloud'; "
                        "the node counts as edge")
    for key in (COST_REQUEST_LABEL, COST_HOUR_LABEL):
        value = labels.get(key)
        if value is None:
            continue
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not (math.isfinite(number) and number >= 0):
            problems.append(f"node {name}: label {key}={value!r} is not a finite number >= 0; counted as 0")
    return problems


def build_nodes(nodes: Iterable[Mapping[str, Any]], pods: Iterable[Mapping[str, Any]],
                deployments: Iterable[Mapping[str, Any]], metrics: Mapping[str, float] | None, *,
                node_class_label: str = "edge-inference/node-class") -> list[Node]:
    """Convert every API Node, charging our pods and Deployments; `metrics`: name -> cores or None."""
    pods = list(pods)
    by_node = _active_pods_by_node(pods)
    used = memory_used_by_node(pods, deployments)
    result = []
    for node in nodes:
        name = _get(node, "metadata", "name", default="")
        measured = metrics.get(name) if metrics is not None else None
        result.append(build_node(node, pods=by_node.get(name, ()), memory_used=used.get(name, 0),
                                 cpu_usage=measured, node_class_label=node_class_label))
    result.sort(key=lambda n: n.name)
    return result


def build_deployments(deployments: Iterable[Mapping[str, Any]],
                      services: Mapping[str, Mapping[str, Any]],
                      nodes: Mapping[str, Mapping[str, Any]]) -> list[Deployment]:
    """Convert our Deployments (not those being deleted); `services`/`nodes` are keyed by name."""
    result = []
    for dep in deployments:
        ident = identity(dep)
        if ident is None or _get(dep, "metadata", "deletionTimestamp"):
            continue
        model, node_name = ident
        service = services.get(_get(dep, "metadata", "name", default=""))
        if service is not None and identity(service) != ident:
            service = None
        node = nodes.get(node_name)
        endpoint = format_endpoint(node_address(node) if node else "", node_port(service))
        ready = bool(endpoint) and node is not None and node_ready(node) and deployment_available(dep)
        result.append(Deployment(model=model, node=node_name, endpoint=endpoint, ready=ready,
                                 created=parse_time(_get(dep, "metadata", "creationTimestamp"))))
    result.sort(key=lambda d: (d.model, d.node))
    return result


def pod_problem(pods: Iterable[Mapping[str, Any]]) -> str:
    """Return why the given pods are not ready yet, as one line ("" when nothing is known)."""
    reasons: list[str] = []
    for pod in pods:
        name = _get(pod, "metadata", "name", default="?")
        before = len(reasons)
        for cond in _get(pod, "status", "conditions", default=[]):
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
                reasons.append(f"pod {name}: {cond.get('reason', 'Unschedulable')}: {cond.get('message', '')}".strip())
        for cs in _get(pod, "status", "containerStatuses", default=[]):
            waiting = _get(cs, "state", "waiting")
            if waiting and waiting.get("reason"):
                reasons.append(f"pod {name}: {waiting['reason']}: {waiting.get('message', '')}".strip(": "))
        if len(reasons) == before:
            reasons.append(f"pod {name}: phase {_get(pod, 'status', 'phase', default='Pending')}")
    return "; ".join(reasons)


def pod_ready(pod: Mapping[str, Any]) -> bool:
    """Return True for a pod that is Ready, has an IP and is not being deleted (an endpoint's rule)."""
    if _get(pod, "metadata", "deletionTimestamp") or not _get(pod, "status", "podIP"):
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in _get(pod, "status", "conditions", default=[]))


def ready_pod_urls(pods: Iterable[Mapping[str, Any]], target_port: int | str) -> list[str]:
    """Return http://<pod IP>:<port> of the ready pods; a named `target_port` is looked up in each
    pod's container ports (a pod without it is left out)."""
    urls = []
    for pod in pods:
        if not pod_ready(pod):
            continue
        port: Any = target_port
        if isinstance(target_port, str) and not target_port.isdigit():
            port = next((p.get("containerPort") for c in _get(pod, "spec", "containers", default=[])
                         for p in c.get("ports") or [] if p.get("name") == target_port), None)
            if port is None:
                continue
        urls.append(f"http://{format_endpoint(_get(pod, 'status', 'podIP'), int(port))}")
    return sorted(urls)
