"""Testbed scenario files: load and validate one YAML document into frozen dataclasses.

Format (the keys are exactly these; anything else is an error):

```yaml
seed: 7                                             # integer >= 0: seeds the trace
nodes:                                              # optional; default: config/cluster.local.yaml
  - {name: nano-1, class: small, cpu: 0.25, memory: 250000}    # cpu in cores, memory in KB
zones:                                              # client zones and the TRUE round trips
  - {name: zone-1, rtt: {nano-1: 0.004, nano-2: 0.025, xavier: 0.012}}   # seconds, every node
alto: {zone-1: {nano-1: 0.008}}                     # optional: what the system is told (may lie)
phases:                                             # run in order
  - {duration: 60, rate: 20, burstiness: 1.0,       # seconds, requests/s, CV of inter-arrivals
     zones: {zone-1: 0.5, zone-2: 0.5},            # relative weights of the zones
     popularity: {zipf: 1.1}}                      # or explicit {model: weight, ...}
strategies: [kubernetes, thesis, nearest, ours]     # optional; default: those four
slo: 0.1                                            # optional; seconds
```

Rules: every zone names an RTT for every node and only for nodes of the scenario; `alto` may be
partial but names only known zones and nodes; weights are finite, >= 0 and sum to > 0; a Zipf
exponent `s` weighs the catalog's models (config/models.yaml, in file order) by 1/rank^s;
`burstiness` defaults to 1.0 (Poisson); a phase's rate is at most `MAX_RATE` requests/s (what the
client emulator can send on this machine) and the whole scenario at most `MAX_ARRIVALS` arrivals.
Every mistake is reported at once in a `ScenarioError` whose message is one line: the mistakes,
each as `<field path>: <what is wrong>`, joined by "; ".
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import yaml

__all__ = ["ScenarioError", "Scenario", "Node", "Zone", "Phase", "FrozenMap", "load_scenario",
           "parse_scenario", "STRATEGIES", "DEFAULT_STRATEGIES", "MAX_RATE", "MAX_ARRIVALS", "MAX_RTT",
           "MAX_BURSTINESS", "REPO_ROOT", "DEFAULT_CLUSTER", "DEFAULT_CATALOG", "SCENARIOS_DIR"]

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CLUSTER = REPO_ROOT / "config" / "cluster.local.yaml"
# this host's figures (`make setup` profiles the models into build/models.yaml), else the shipped ones:
# the same choice scripts/run_system.py makes, and the runner passes it on with --catalog
_MEASURED_CATALOG = REPO_ROOT / "build" / "models.yaml"
DEFAULT_CATALOG = _MEASURED_CATALOG if _MEASURED_CATALOG.is_file() else REPO_ROOT / "config" / "models.yaml"
SCENARIOS_DIR = Path(__file__).resolve().parent / "scenarios"

#: every strategy name a scenario may list (ours-load and ours-cloud are reserved for later)
STRATEGIES = ("kubernetes", "thesis", "nearest", "ours", "ours-load", "ours-cloud")
DEFAULT_STRATEGIES = ("kubernetes", "thesis", "nearest", "ours")
#: requests per second one phase may ask for. Measured (lookup mode, 20 ms RTT, against an
#: in-process recording server, 2 cores already loaded by other work): 200/s all sent, start
#: lateness p50 0.2 ms / p99 25 ms, ~0.3 core; 500/s all sent, lateness p50 7 ms / p99 110 ms,
#: ~0.8 core. Above that the arrival process is no longer what the trace says. The system under
#: test, on the same 2 cores, saturates far below this anyway. Each run's summary reports the
#: lateness (`start_lateness`).
MAX_RATE = 500.0
MAX_ARRIVALS = 1_000_000        # whole scenario (rate x duration summed over phases)
MAX_RTT = 10.0                  # seconds; the emulator holds every request this long at most
MAX_BURSTINESS = 10.0           # coefficient of variation of the inter-arrival times
MAX_DURATION = 86_400.0         # seconds per phase
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")   # the front-end's X-Client-Zone alphabet


class ScenarioError(ValueError):
    """The scenario file is missing, malformed or inconsistent (message: one line)."""


class FrozenMap(Mapping):
    """A read-only, hashable, picklable mapping that keeps its insertion order."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping | None = None) -> None:
        object.__setattr__(self, "_data", dict(data or {}))

    def __getitem__(self, key):
        return self._data[key]

    def __iter__(self) -> Iterator:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        return hash(tuple(self._data.items()))

    def __eq__(self, other) -> bool:
        return dict(self._data) == dict(other) if isinstance(other, Mapping) else NotImplemented

    def __setattr__(self, name, value):
        raise AttributeError("FrozenMap is read-only")

    def __reduce__(self):
        return (FrozenMap, (self._data,))

    def __repr__(self) -> str:
        return f"FrozenMap({self._data!r})"

    def to_dict(self) -> dict:
        return {k: v.to_dict() if isinstance(v, FrozenMap) else v for k, v in self._data.items()}


@dataclass(frozen=True)
class Node:
    name: str
    node_class: str          # `class` in the file
    cpu: float               # cores (as the solver sees them)
    memory: int              # KB
    tier: str = "edge"       # "cloud": used only by the strategies that have a cloud tier (ours-cloud)
    cpu_quota: float | None = None   # cores of this host its servers may use; None: the shipped node's, else cpu

    def to_dict(self) -> dict:
        extra = {"tier": self.tier} if self.tier != "edge" else {}
        if self.cpu_quota is not None:
            extra["cpu_quota"] = self.cpu_quota
        return {"name": self.name, "class": self.node_class, "cpu": self.cpu, "memory": self.memory, **extra}


@dataclass(frozen=True)
class Zone:
    name: str
    rtt: FrozenMap           # node -> seconds (ground truth; the system never sees it)

    @property
    def mean_rtt(self) -> float:
        return sum(self.rtt.values()) / len(self.rtt) if self.rtt else 0.0


@dataclass(frozen=True)
class Phase:
    index: int
    start: float             # seconds from the start of the run (sum of earlier durations)
    duration: float          # seconds
    rate: float              # requests per second
    burstiness: float        # coefficient of variation of the inter-arrival times (1 = Poisson)
    zones: FrozenMap         # zone -> probability (normalised, sums to 1, zero weights dropped)
    popularity: FrozenMap    # model -> probability (normalised, catalog order, zeros dropped)
    zipf: float | None       # the exponent when popularity was given as {zipf: s}

    @property
    def end(self) -> float:
        return self.start + self.duration

    @property
    def expected_requests(self) -> float:
        return self.rate * self.duration


@dataclass(frozen=True)
class Scenario:
    seed: int
    nodes: tuple[Node, ...]
    zones: tuple[Zone, ...]
    alto: FrozenMap | None   # zone -> node -> seconds told to the system (None: not given)
    phases: tuple[Phase, ...]
    strategies: tuple[str, ...]
    slo: float | None        # seconds
    models: tuple[str, ...]  # the catalog's models, in catalog order
    nodes_default: bool      # True when `nodes` was omitted (taken from cluster_path)
    path: Path | None = None
    catalog_path: Path = DEFAULT_CATALOG
    cluster_path: Path = DEFAULT_CLUSTER

    # -- look-ups --------------------------------------------------------------------------------
    @property
    def node_names(self) -> tuple[str, ...]:
        return tuple(n.name for n in self.nodes)

    @property
    def zone_names(self) -> tuple[str, ...]:
        return tuple(z.name for z in self.zones)

    @property
    def duration(self) -> float:
        return sum(p.duration for p in self.phases)

    @property
    def expected_requests(self) -> float:
        return sum(p.expected_requests for p in self.phases)

    def zone(self, name: str) -> Zone:
        for zone in self.zones:
            if zone.name == name:
                return zone
        raise KeyError(name)

    def rtt(self, zone: str, node: str) -> float:
        """The true round trip (seconds) between a client zone and a node."""
        return self.zone(zone).rtt[node]

    def rtt_map(self) -> dict[str, dict[str, float]]:
        """zone -> node -> true RTT seconds (a plain, mutable copy)."""
        return {z.name: dict(z.rtt) for z in self.zones}

    def told_costs(self) -> dict[str, dict[str, float]]:
        """zone -> node -> seconds the system is told: `alto` where given, the true RTT elsewhere."""
        told = self.rtt_map()
        for zone, costs in (self.alto or {}).items():
            told[zone].update(costs)
        return told

    def alto_cost_map(self) -> dict:
        """The told costs as an RFC 7285 cost map (the shape of config/alto-costmap.json)."""
        return {"meta": {"cost-type": {"cost-mode": "numerical", "cost-metric": "delay"}},
                "cost-map": self.told_costs()}

    def cluster_nodes(self) -> list[dict]:
        """The nodes as local-cluster config entries (name, class, cpu, memory; no address)."""
        return [n.to_dict() for n in self.nodes]

    def summary(self) -> dict:
        return {
            "path": str(self.path) if self.path else None, "seed": self.seed,
            "nodes": [n.name for n in self.nodes] if not self.nodes_default
            else {"default": str(self.cluster_path), "names": [n.name for n in self.nodes]},
            "zones": {z.name: dict(z.rtt) for z in self.zones},
            "alto": self.alto.to_dict() if self.alto is not None else None,
            "phases": [{"start": p.start, "duration": p.duration, "rate": p.rate,
                        "burstiness": p.burstiness, "expected_requests": round(p.expected_requests, 1),
                        "zones": dict(p.zones), "popularity": {m: round(w, 4) for m, w in p.popularity.items()},
                        **({"zipf": p.zipf} if p.zipf is not None else {})}
                       for p in self.phases],
            "strategies": list(self.strategies), "slo": self.slo,
            "duration": self.duration, "expected_requests": round(self.expected_requests, 1),
        }


# -- validation helpers --------------------------------------------------------------------------
class _Errors:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, path: str, message: str) -> None:
        self.items.append(f"{path}: {message}")

    def raise_if_any(self) -> None:
        if self.items:
            raise ScenarioError(_one_line("; ".join(self.items)))


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _path(parent: str, key: Any) -> str:
    return f"{parent}.{key}" if parent else str(key)


def _mapping(value: Any, path: str, errors: _Errors, *, required: tuple = (), optional: tuple = ()) -> dict | None:
    """Check `value` is a mapping with string keys, the required keys and no others."""
    if not isinstance(value, dict):
        errors.add(path or "scenario", f"must be a mapping, got {_kind(value)}")
        return None
    ok = True
    for key in value:
        if not isinstance(key, str):
            errors.add(path or "scenario", f"key {key!r} is not a string")
            ok = False
        elif (required or optional) and key not in required and key not in optional:
            allowed = ", ".join(list(required) + list(optional))
            errors.add(_path(path, key), f"unknown key (allowed: {allowed})")
            ok = False
    for key in required:
        if key not in value:
            errors.add(_path(path, key), "missing")
            ok = False
    return value if ok else {k: v for k, v in value.items() if isinstance(k, str)}


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    return {bool: "a boolean", str: "a string", list: "a list", dict: "a mapping",
            int: "an integer", float: "a number"}.get(type(value), type(value).__name__)


def _number(value: Any, path: str, errors: _Errors, *, minimum: float = 0.0, strict: bool = False,
            maximum: float | None = None, integer: bool = False) -> float | None:
    """A finite number >= minimum (> when strict), <= maximum; None (and an error) otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        errors.add(path, f"must be {'an integer' if integer else 'a number'}, got {_kind(value)}")
        return None
    if integer and not isinstance(value, int):
        errors.add(path, f"must be an integer, got {value!r}")
        return None
    if not math.isfinite(value):
        errors.add(path, f"must be a finite number, got {value!r}")
        return None
    if value < minimum or (strict and value == minimum):
        errors.add(path, f"must be {'>' if strict else '>='} {minimum:g}, got {value!r}")
        return None
    if maximum is not None and value > maximum:
        errors.add(path, f"must be <= {maximum:g}, got {value!r}")
        return None
    return value


def _name(value: Any, path: str, errors: _Errors) -> str | None:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        errors.add(path, f"must be 1-64 characters of letters, digits, '_', '.', ':' or '-' "
                         f"(starting with a letter or digit), got {value!r}")
        return None
    return value


def _weights(value: Any, path: str, errors: _Errors, known: tuple[str, ...], what: str) -> dict[str, float] | None:
    """{name: weight} with names from `known`, finite weights >= 0 summing to > 0: normalised."""
    data = _mapping(value, path, errors)
    if data is None:
        return None
    if not data:
        errors.add(path, f"must name at least one {what.split(' ')[0]}")
        return None
    out: dict[str, float] = {}
    ok = True
    for key, weight in data.items():
        if key not in known:
            errors.add(_path(path, key), f"not a {what}")
            ok = False
            continue
        number = _number(weight, _path(path, key), errors)
        if number is None:
            ok = False
        else:
            out[key] = float(number)
    if not ok:
        return None
    total = sum(out.values())
    if not total > 0:
        errors.add(path, "weights must sum to a positive number")
        return None
    # in `known` order so the trace does not depend on how the file orders its keys
    return {k: out[k] / total for k in known if out.get(k, 0.0) > 0}


# -- side files (read with yaml directly: the testbed does not import cluster/) -------------------
def _read_yaml_file(path: Path, what: str) -> Any:
    try:
        return yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ScenarioError(_one_line(f"{what} {path}: cannot read ({exc.strerror or exc})")) from None
    except yaml.YAMLError as exc:
        raise ScenarioError(_one_line(f"{what} {path}: not valid YAML ({exc})")) from None


def read_catalog(path: Path) -> tuple[tuple[str, ...], set[str]]:
    """The catalog's model names in file order and the node classes its exec_time knows."""
    data = _read_yaml_file(path, "catalog")
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, list) or not all(isinstance(m, dict) and isinstance(m.get("name"), str) for m in models):
        raise ScenarioError(f"catalog {path}: expected 'models: [{{name: ...}}, ...]'")
    names = tuple(m["name"] for m in models)
    classes = {c for m in models if isinstance(m.get("exec_time"), dict) for c in m["exec_time"]}
    return names, classes


def read_cluster_nodes(path: Path) -> list[dict]:
    """The node entries (name, class, cpu, memory) of a local-cluster config file."""
    data = _read_yaml_file(path, "cluster config")
    nodes = data.get("nodes") if isinstance(data, dict) else None
    if not isinstance(nodes, list) or not nodes or not all(isinstance(n, dict) for n in nodes):
        raise ScenarioError(f"cluster config {path}: expected 'nodes: [{{name: ...}}, ...]'")
    return [{k: n.get(k) for k in _NODE_KEYS + _NODE_OPTIONAL if k in _NODE_KEYS or k in n} for n in nodes]


# -- the loader ----------------------------------------------------------------------------------
_TOP_REQUIRED = ("seed", "zones", "phases")
_TOP_OPTIONAL = ("nodes", "alto", "strategies", "slo")
_NODE_KEYS = ("name", "class", "cpu", "memory")
_NODE_OPTIONAL = ("tier", "cpu_quota")
TIERS = ("edge", "cloud")
_ZONE_KEYS = ("name", "rtt")
_PHASE_REQUIRED = ("duration", "rate", "zones", "popularity")
_PHASE_OPTIONAL = ("burstiness",)


def load_scenario(path: str | Path, *, catalog_path: str | Path | None = None,
                  cluster_path: str | Path | None = None) -> Scenario:
    """Read and validate a scenario file; raise ScenarioError (one line) on any mistake."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ScenarioError(_one_line(f"scenario {path}: cannot read ({exc.strerror or exc})")) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or exc
        raise ScenarioError(_one_line(f"scenario {path}: not valid YAML{where}: {problem}")) from None
    return parse_scenario(data, path=path, catalog_path=catalog_path, cluster_path=cluster_path)


def parse_scenario(data: Any, *, path: Path | None = None, catalog_path: str | Path | None = None,
                   cluster_path: str | Path | None = None) -> Scenario:
    """Validate an already-parsed scenario document (see load_scenario)."""
    catalog_path = Path(catalog_path) if catalog_path is not None else DEFAULT_CATALOG
    cluster_path = Path(cluster_path) if cluster_path is not None else DEFAULT_CLUSTER
    models, classes = read_catalog(catalog_path)
    errors = _Errors()
    top = _mapping(data, "", errors, required=_TOP_REQUIRED, optional=_TOP_OPTIONAL)
    if top is None:
        errors.raise_if_any()

    seed = top.get("seed")
    if "seed" in top:
        seed = _number(seed, "seed", errors, integer=True)

    # nodes
    nodes_default = "nodes" not in top
    raw_nodes = read_cluster_nodes(cluster_path) if nodes_default else top["nodes"]
    where = f"nodes (from {cluster_path})" if nodes_default else "nodes"
    nodes: list[Node] = []
    if not isinstance(raw_nodes, list) or not raw_nodes:
        errors.add("nodes", f"must be a non-empty list, got {_kind(raw_nodes)}")
    else:
        for i, raw in enumerate(raw_nodes):
            p = f"{where}[{i}]"
            entry = _mapping(raw, p, errors, required=_NODE_KEYS, optional=_NODE_OPTIONAL)
            if entry is None or any(k not in entry for k in _NODE_KEYS):
                continue
            name = _name(entry["name"], f"{p}.name", errors)
            if name is not None and name in {n.name for n in nodes}:
                errors.add(f"{p}.name", f"{name!r} is listed twice")
                name = None
            node_class = entry["class"]
            if not isinstance(node_class, str) or (classes and node_class not in classes):
                errors.add(f"{p}.class", f"must be a node class of the catalog ({', '.join(sorted(classes))}), "
                                         f"got {node_class!r}")
                node_class = None
            cpu = _number(entry["cpu"], f"{p}.cpu", errors, strict=True)
            memory = _number(entry["memory"], f"{p}.memory", errors, strict=True, integer=True)
            tier = entry.get("tier", "edge")
            if tier not in TIERS:
                errors.add(f"{p}.tier", f"must be one of {', '.join(TIERS)}, got {tier!r}")
                tier = None
            quota = entry.get("cpu_quota")
            if quota is not None:
                quota = _number(quota, f"{p}.cpu_quota", errors, strict=True)
                quota = False if quota is None else float(quota)
            if None not in (name, node_class, cpu, memory, tier) and quota is not False:
                nodes.append(Node(name=name, node_class=node_class, cpu=float(cpu), memory=int(memory),
                                  tier=tier, cpu_quota=quota))
    node_names = tuple(n.name for n in nodes)

    # zones
    zones: list[Zone] = []
    raw_zones = top.get("zones")
    if "zones" in top:
        if not isinstance(raw_zones, list) or not raw_zones:
            errors.add("zones", f"must be a non-empty list, got {_kind(raw_zones)}")
        else:
            for i, raw in enumerate(raw_zones):
                p = f"zones[{i}]"
                entry = _mapping(raw, p, errors, required=_ZONE_KEYS)
                if entry is None or any(k not in entry for k in _ZONE_KEYS):
                    continue
                name = _name(entry["name"], f"{p}.name", errors)
                if name is not None and name in {z.name for z in zones}:
                    errors.add(f"{p}.name", f"{name!r} is listed twice")
                    name = None
                label = f"zones[{i}]" if name is None else f"zones.{name}"
                rtt = _node_costs(entry["rtt"], f"{label}.rtt", errors, node_names, complete=True)
                if name is not None and rtt is not None:
                    zones.append(Zone(name=name, rtt=FrozenMap(rtt)))
    zone_names = tuple(z.name for z in zones)

    # alto
    alto = None
    if "alto" in top:
        raw_alto = _mapping(top["alto"], "alto", errors)
        if raw_alto is not None:
            told = {}
            for zone, costs in raw_alto.items():
                if zone not in zone_names:
                    errors.add(f"alto.{zone}", "not a zone of this scenario")
                    continue
                checked = _node_costs(costs, f"alto.{zone}", errors, node_names, complete=False)
                if checked is not None:
                    told[zone] = FrozenMap(checked)
            alto = FrozenMap(told)

    # phases
    phases: list[Phase] = []
    raw_phases = top.get("phases")
    start = 0.0
    if "phases" in top:
        if not isinstance(raw_phases, list) or not raw_phases:
            errors.add("phases", f"must be a non-empty list, got {_kind(raw_phases)}")
        else:
            for i, raw in enumerate(raw_phases):
                p = f"phases[{i}]"
                entry = _mapping(raw, p, errors, required=_PHASE_REQUIRED, optional=_PHASE_OPTIONAL)
                if entry is None:
                    continue
                duration = _number(entry.get("duration"), f"{p}.duration", errors, strict=True,
                                   maximum=MAX_DURATION) if "duration" in entry else None
                rate = None
                if "rate" in entry:
                    rate = _number(entry["rate"], f"{p}.rate", errors)
                    if rate is not None and rate > MAX_RATE:
                        errors.add(f"{p}.rate", f"{rate:g} requests/s is more than the client emulator "
                                                f"sends (at most {MAX_RATE:g})")
                        rate = None
                burstiness = _number(entry.get("burstiness", 1.0), f"{p}.burstiness", errors,
                                     maximum=MAX_BURSTINESS)
                zone_weights = _weights(entry["zones"], f"{p}.zones", errors, zone_names, "zone of this scenario") \
                    if "zones" in entry else None
                popularity, zipf = (_popularity(entry["popularity"], f"{p}.popularity", errors, models, catalog_path.name)
                                    if "popularity" in entry else (None, None))
                if None in (duration, rate, burstiness, zone_weights, popularity):
                    continue
                phases.append(Phase(index=i, start=start, duration=float(duration), rate=float(rate),
                                    burstiness=float(burstiness), zones=FrozenMap(zone_weights),
                                    popularity=FrozenMap(popularity), zipf=zipf))
                start += float(duration)
            total = sum(p.expected_requests for p in phases)
            if total > MAX_ARRIVALS:
                errors.add("phases", f"rate x duration adds up to {total:.0f} requests, more than {MAX_ARRIVALS}")

    # strategies
    strategies = DEFAULT_STRATEGIES
    if "strategies" in top:
        raw = top["strategies"]
        if not isinstance(raw, list) or not raw:
            errors.add("strategies", f"must be a non-empty list, got {_kind(raw)}")
        else:
            seen: list[str] = []
            for i, name in enumerate(raw):
                if not isinstance(name, str) or name not in STRATEGIES:
                    errors.add(f"strategies[{i}]", f"unknown strategy {name!r} (known: {', '.join(STRATEGIES)})")
                elif name in seen:
                    errors.add(f"strategies[{i}]", f"{name!r} is listed twice")
                else:
                    seen.append(name)
            strategies = tuple(seen)

    slo = None
    if "slo" in top and top["slo"] is not None:
        slo = _number(top["slo"], "slo", errors, strict=True, maximum=3600.0)

    errors.raise_if_any()
    return Scenario(seed=int(seed), nodes=tuple(nodes), zones=tuple(zones), alto=alto, phases=tuple(phases),
                    strategies=tuple(strategies), slo=float(slo) if slo is not None else None,
                    models=models, nodes_default=nodes_default, path=path,
                    catalog_path=catalog_path, cluster_path=cluster_path)


def _node_costs(value: Any, path: str, errors: _Errors, node_names: tuple[str, ...], *,
                complete: bool) -> dict[str, float] | None:
    data = _mapping(value, path, errors)
    if data is None:
        return None
    out: dict[str, float] = {}
    ok = True
    for node, seconds in data.items():
        if node not in node_names:
            errors.add(_path(path, node), "not a node of this scenario")
            ok = False
            continue
        number = _number(seconds, _path(path, node), errors, maximum=MAX_RTT)
        if number is None:
            ok = False
        else:
            out[node] = float(number)
    if complete:
        missing = [n for n in node_names if n not in data]
        if missing:
            errors.add(path, f"no rtt for node(s) {', '.join(missing)} (every zone needs one for every node)")
            ok = False
    return {n: out[n] for n in node_names if n in out} if ok else None


def _popularity(value: Any, path: str, errors: _Errors, models: tuple[str, ...], catalog_name: str):
    """(model -> probability in catalog order, zipf exponent or None), or (None, None) after errors."""
    data = _mapping(value, path, errors)
    if data is None:
        return None, None
    if "zipf" in data:
        if len(data) > 1:
            errors.add(path, "either {zipf: s} alone or explicit {model: weight, ...}, not both")
            return None, None
        s = _number(data["zipf"], f"{path}.zipf", errors, maximum=20.0)
        if s is None:
            return None, None
        raw = [1.0 / (rank ** s) for rank in range(1, len(models) + 1)]
        total = sum(raw)
        return {m: w / total for m, w in zip(models, raw)}, float(s)
    return _weights(data, path, errors, models, f"model of the catalog ({catalog_name})"), None


def describe(scenario: Scenario) -> str:
    """A short human-readable summary (what `python -m testbed check` prints)."""
    lines = [f"scenario {scenario.path or '(inline)'}: seed {scenario.seed}, "
             f"{scenario.duration:g} s, ~{scenario.expected_requests:.0f} requests, "
             f"slo {scenario.slo if scenario.slo is not None else '-'}",
             f"  nodes ({'default ' + str(scenario.cluster_path) if scenario.nodes_default else 'scenario'}): "
             + ", ".join(f"{n.name} ({n.node_class}, {n.cpu:g} cpu, {n.memory} KB)" for n in scenario.nodes)]
    for zone in scenario.zones:
        told = (scenario.alto or {}).get(zone.name, {})
        lines.append(f"  zone {zone.name}: " + ", ".join(
            f"{node} {rtt * 1000:g} ms" + (f" (told {told[node] * 1000:g})" if node in told and told[node] != rtt else "")
            for node, rtt in zone.rtt.items()))
    for phase in scenario.phases:
        pop = f"zipf {phase.zipf:g}" if phase.zipf is not None else \
            ", ".join(f"{m} {w:.2f}" for m, w in phase.popularity.items())
        lines.append(f"  phase {phase.index}: {phase.start:g}-{phase.end:g} s, {phase.rate:g} req/s, "
                     f"CV {phase.burstiness:g}, zones " + ", ".join(f"{z} {w:.2f}" for z, w in phase.zones.items())
                     + f"; popularity {pop}")
    lines.append(f"  strategies: {', '.join(scenario.strategies)}")
    return "\n".join(lines)
