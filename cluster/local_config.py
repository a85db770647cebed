"""The local cluster's node list (config/cluster.local.yaml), validated as a whole.

Pure: reading and checking the file touches nothing else. Every node must sit on its own loopback
address (127.x.x.x) so model servers on different "nodes" never collide and nothing is exposed
beyond this machine; an operator sees every mistake at once, each naming the file, the node and
the field (common/validation.py).

Limits: a node may carry `cpu_quota`, the cores *of this host* its cgroup may use (`cpu` stays the
node's cores as the solver sees them; the two are different scales on purpose: a 4-core Nano is
played by a quarter of one host core). Its declared `memory` is also its real memory limit. A
top-level `limits: false` turns both off (see cluster.limits).
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field as PydField

from common.validation import (Checked, Flag, Number, Strict, Text, ValidationError, check_number, problems,
                               validated)

from .port import ClusterError
from .yamlcheck import read_yaml

__all__ = ["LocalNodeSpec", "LocalConfigError", "load_local_config", "parse_local_config",
           "LocalClusterConfig", "load_local_cluster", "parse_local_cluster", "DEFAULT_LOCAL_CONFIG"]

DEFAULT_LOCAL_CONFIG = Path(__file__).resolve().parent.parent / "config" / "cluster.local.yaml"
# Node names appear in URLs, log file names and Kubernetes labels: DNS-1123 label alphabet.
_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_TIERS = ("edge", "cloud")
_MIN_CPU_QUOTA = 0.01       # cores; below this the kernel's 1 ms minimum quota needs a > 0.1 s period
_LOOPBACK = ipaddress.ip_network("127.0.0.0/8")


class LocalConfigError(ClusterError, ValueError):
    """The local cluster description is missing, malformed or inconsistent."""


@dataclass(frozen=True)
class LocalNodeSpec:
    """One declared local node. Memory in KB, cpu in cores."""

    name: str
    address: str            # loopback IPv4 address its model servers bind to
    memory: int             # KB available to model instances (declared, not measured)
    cpu: float              # cores
    node_class: str         # matches a catalog exec_time key (e.g. "small", "large")
    cpu_quota: float | None = None   # cores of this host its cgroup may use (None: no CPU ceiling)
    tier: str = "edge"               # "cloud": a cloud site (far, large; the front-end falls back to it)
    cost_per_request: float = 0.0    # objective seconds per request served here (--formulation latency)
    cost_per_instance_hour: float = 0.0  # objective seconds per instance-hour here

    def labels(self) -> dict[str, str]:
        """The node's labels as the Cluster port reports them (class, and tier and costs when set)."""
        out = {"node-class": self.node_class}
        if self.tier != "edge":
            out["topology"] = self.tier
        if self.cost_per_request:
            out["cost-per-request"] = repr(self.cost_per_request)
        if self.cost_per_instance_hour:
            out["cost-per-instance-hour"] = repr(self.cost_per_instance_hour)
        return out


@dataclass(frozen=True)
class LocalClusterConfig:
    """The whole description: its nodes and whether their limits are enforced."""

    nodes: list[LocalNodeSpec]
    limits: bool = True             # top-level `limits: false` runs every node unconstrained


def _address(value: object) -> str:
    reason = f"must be a loopback IPv4 address 127.x.x.x, got {value!r}"
    if not isinstance(value, str):
        raise ValueError(reason)
    try:
        address = ipaddress.IPv4Address(value.strip())
    except ValueError:
        raise ValueError(reason) from None
    if address not in _LOOPBACK or address in (_LOOPBACK.network_address, _LOOPBACK.broadcast_address):
        raise ValueError(reason)
    return str(address)


def _name(value: object) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise ValueError(f"must match {_NAME.pattern}, got {value!r}")
    return value


def _tier(value: object) -> str:
    if value not in _TIERS:
        raise ValueError(f"must be one of {', '.join(_TIERS)}, got {value!r}")
    return str(value)


def _cpu_quota(value: object) -> float | None:
    """The optional `cpu_quota`: a finite number of cores >= 0.01, or absent/null for none."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"must be a number of cores, got {value!r}")
    try:
        return float(check_number(value, minimum=_MIN_CPU_QUOTA))
    except ValueError:
        raise ValueError(f"must be a finite number of cores >= {_MIN_CPU_QUOTA}, got {value!r}") from None


class _NodeEntry(Strict):
    """One entry of `nodes:` as written in the file."""

    name: Checked(str, _name)
    address: Checked(str, _address)
    memory: Number(int, positive=True, unit="KB")
    cpu: Number(float, positive=True)
    node_class: Text = PydField(alias="class")
    cpu_quota: Checked(float | None, _cpu_quota) = None
    tier: Checked(str, _tier) = "edge"
    cost_per_request: Number(float) = 0.0
    cost_per_instance_hour: Number(float) = 0.0


class _ClusterFile(Strict):
    nodes: list[Any]
    limits: Flag = True


def _node(errors: list[str], source: str, index: int, entry: object) -> LocalNodeSpec | None:
    where = f"{source}: nodes[{index}]"
    if not isinstance(entry, dict):
        errors.append(f"{where}: must be a mapping with name, address, memory, cpu, class")
        return None
    name = entry.get("name")
    if isinstance(name, str) and _NAME.match(name):
        where = f"{source}: node '{name}'"
    node = validated(_NodeEntry, entry, errors, where)
    if node is None:
        return None
    return LocalNodeSpec(name=node.name, address=node.address, memory=node.memory, cpu=node.cpu,
                         node_class=node.node_class.strip(), cpu_quota=node.cpu_quota, tier=node.tier,
                         cost_per_request=node.cost_per_request, cost_per_instance_hour=node.cost_per_instance_hour)


def parse_local_config(data: object, *, source: str = "<config>") -> list[LocalNodeSpec]:
    """Validate parsed YAML; raise LocalConfigError listing every problem."""
    return parse_local_cluster(data, source=source).nodes


def parse_local_cluster(data: object, *, source: str = "<config>") -> LocalClusterConfig:
    """Validate parsed YAML (nodes and the top-level `limits` switch); raise LocalConfigError."""
    if not isinstance(data, dict) or not isinstance(data.get("nodes"), list) or not data["nodes"]:
        raise LocalConfigError(f"{source}: must be a mapping with a non-empty 'nodes' list")
    errors: list[str] = []
    limits = True
    try:
        limits = _ClusterFile.model_validate(data).limits
    except ValidationError as exc:
        errors.extend(f"{source}: {problem}".replace(": unknown field(s)", ": unknown top-level field(s)")
                      for problem in problems(exc))
    nodes: list[LocalNodeSpec] = []
    names: set[str] = set()
    addresses: dict[str, str] = {}
    for index, entry in enumerate(data["nodes"]):
        spec = _node(errors, source, index, entry)
        if spec is None:
            continue
        if spec.name in names:
            errors.append(f"{source}: node '{spec.name}': field 'name' duplicates an earlier node")
            continue
        if spec.address in addresses:
            errors.append(f"{source}: node '{spec.name}': field 'address' {spec.address} "
                          f"already used by node '{addresses[spec.address]}'")
            continue
        names.add(spec.name)
        addresses[spec.address] = spec.name
        nodes.append(spec)
    if errors:
        raise LocalConfigError("; ".join(errors))
    return LocalClusterConfig(nodes=nodes, limits=limits)


def load_local_config(path: str | Path = DEFAULT_LOCAL_CONFIG) -> list[LocalNodeSpec]:
    """Load and validate a local cluster description; raise LocalConfigError listing every problem."""
    return load_local_cluster(path).nodes


def load_local_cluster(path: str | Path = DEFAULT_LOCAL_CONFIG) -> LocalClusterConfig:
    """Load and validate the description with its `limits` switch; raise LocalConfigError."""
    path = Path(path)
    data = read_yaml(path, LocalConfigError)
    return parse_local_cluster(data, source=str(path))
