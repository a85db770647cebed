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
each as `<field path>: <what is wrong>`, joined by "; ". The document's shape (keys, types, finite
numbers) is checked by the shared layer (common/validation.py), the rules relating its parts here.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import yaml
from pydantic import Field as PydField

from cluster.catalog import host_catalog
from common.validation import Checked, Strict, ValidationError, problems

__all__ = ["ScenarioError", "Scenario", "Node", "Zone", "Phase", "FrozenMap", "load_scenario",
           "parse_scenario", "STRATEGIES", "DEFAULT_STRATEGIES", "MAX_RATE", "MAX_ARRIVALS", "MAX_RTT",
           "MAX_BURSTINESS", "REPO_ROOT", "DEFAULT_CLUSTER", "DEFAULT_CATALOG", "SCENARIOS_DIR"]

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CLUSTER = REPO_ROOT / "config" / "cluster.local.yaml"
# the catalog scripts/run_system.py would choose (the runner passes it on with --catalog)
DEFAULT_CATALOG = host_catalog()
SCENARIOS_DIR = Path(__file__).resolve().parent / "scenarios"

#: every strategy name a scenario may list (testbed/strategies.py configures each)
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


# -- validation: the document's shape by the shared layer (common/validation.py), then the rules
# -- that relate its parts (names known, weights, coverage) below ------------------------------
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


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    return {bool: "a boolean", str: "a string", list: "a list", dict: "a mapping",
            int: "an integer", float: "a number"}.get(type(value), type(value).__name__)


def _number_rule(value: Any, *, minimum: float = 0.0, strict: bool = False, maximum: float | None = None,
                 integer: bool = False) -> float:
    """A finite number >= minimum (> when strict), <= maximum; raise ValueError saying why not."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"must be {'an integer' if integer else 'a number'}, got {_kind(value)}")
    if integer and not isinstance(value, int):
        raise ValueError(f"must be an integer, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"must be a finite number, got {value!r}")
    if value < minimum or (strict and value == minimum):
        raise ValueError(f"must be {'>' if strict else '>='} {minimum:g}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"must be <= {maximum:g}, got {value!r}")
    return value


def _num(**rules: Any):
    return lambda value: _number_rule(value, **rules)


def _number(value: Any, path: str, errors: _Errors, **rules: Any) -> float | None:
    """_number_rule for values checked against the rest of the document; None (and an error) when bad."""
    try:
        return _number_rule(value, **rules)
    except ValueError as exc:
        errors.add(path, str(exc))
        return None


def _name_rule(value: Any) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise ValueError(f"must be 1-64 characters of letters, digits, '_', '.', ':' or '-' "
                         f"(starting with a letter or digit), got {value!r}")
    return value


def _mapping_rule(value: Any) -> dict:
    if not isinstance(value, dict):
        raise ValueError(f"must be a mapping, got {_kind(value)}")
    bad = [key for key in value if not isinstance(key, str)]
    if bad:
        raise ValueError(f"key {bad[0]!r} is not a string")
    return value


def _list_rule(value: Any) -> list:
    if not isinstance(value, list) or not value:
        raise ValueError(f"must be a non-empty list, got {_kind(value)}")
    return value


def _tier_rule(value: Any) -> str:
    if value not in TIERS:
        raise ValueError(f"must be one of {', '.join(TIERS)}, got {value!r}")
    return value


def _optional(check):
    return lambda value: None if value is None else check(value)


class _NodeDoc(Strict):
    name: Checked(str, _name_rule)
    node_class: Checked(Any, lambda v: v) = PydField(alias="class")        # a class of the catalog: below
    cpu: Checked(float, _num(strict=True))
    memory: Checked(int, _num(strict=True, integer=True))
    tier: Checked(str, _tier_rule) = "edge"
    cpu_quota: Checked(float | None, _optional(_num(strict=True))) = None


class _ZoneDoc(Strict):
    name: Checked(str, _name_rule)
    rtt: Checked(dict, _mapping_rule)                                    # one per node: below


class _PhaseDoc(Strict):
    duration: Checked(float, _num(strict=True, maximum=MAX_DURATION))
    rate: Checked(float, _num())
    burstiness: Checked(float, _num(maximum=MAX_BURSTINESS)) = 1.0
    zones: Checked(dict, _mapping_rule)
    popularity: Checked(dict, _mapping_rule)


class _ScenarioDoc(Strict):
    seed: Checked(int, _num(integer=True))
    nodes: Checked(list, _list_rule) = None
    zones: Checked(list, _list_rule)
    phases: Checked(list, _list_rule)
    alto: Checked(dict, _mapping_rule) = None
    strategies: Checked(list, _list_rule) = None
    slo: Checked(float | None, _optional(_num(strict=True, maximum=3600.0))) = None


def _shape(model: type[Strict], value: Any, path: str, errors: _Errors) -> Any:
    """Validate `value` against `model`; add every problem under `path`; None when any."""
    if not isinstance(value, dict):
        errors.add(path or "scenario", f"must be a mapping, got {_kind(value)}")
        return None
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        for line in problems(exc, named=lambda field, text: f"{_path(path, field) or 'scenario'}: "
                                                            f"{'missing' if text == 'is required' else text}",
                             unknown_keys=lambda parent, names: [
                                 f"{_path(_path(path, parent) if parent else path, name)}: unknown key"
                                 for name in sorted(names)]):
            errors.items.append(line)
        unknown = {e["loc"][0] for e in exc.errors() if e["type"] == "extra_forbidden" and len(e["loc"]) == 1}
        if unknown and len(unknown) == len(exc.errors()):      # only stray keys: the rest still counts
            return model.model_validate({k: v for k, v in value.items() if k not in unknown})
        return None


def _weights(value: Any, path: str, errors: _Errors, known: tuple[str, ...], what: str) -> dict[str, float] | None:
    """{name: weight} with names from `known`, finite weights >= 0 summing to > 0: normalised."""
    if not value:
        errors.add(path, f"must name at least one {what.split(' ')[0]}")
        return None
    out: dict[str, float] = {}
    ok = True
    for key, weight in value.items():
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
_NODE_KEYS = ("name", "class", "cpu", "memory")
_NODE_OPTIONAL = ("tier", "cpu_quota")
TIERS = ("edge", "cloud")


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
    top = _shape(_ScenarioDoc, data, "", errors)
    if not isinstance(data, dict):
        errors.raise_if_any()
    raw = {k: v for k, v in data.items() if isinstance(k, str)}

    # nodes
    nodes_default = "nodes" not in raw
    raw_nodes = read_cluster_nodes(cluster_path) if nodes_default else raw["nodes"]
    where = f"nodes (from {cluster_path})" if nodes_default else "nodes"
    nodes: list[Node] = []
    for i, entry in enumerate(raw_nodes if isinstance(raw_nodes, list) else []):
        p = f"{where}[{i}]"
        doc = _shape(_NodeDoc, entry, p, errors)
        name = doc.name if doc is not None else None
        if name is not None and name in {n.name for n in nodes}:
            errors.add(f"{p}.name", f"{name!r} is listed twice")
            continue
        node_class = entry.get("class") if isinstance(entry, dict) else None
        if "class" in (entry if isinstance(entry, dict) else {}) and (
                not isinstance(node_class, str) or (classes and node_class not in classes)):
            errors.add(f"{p}.class", f"must be a node class of the catalog ({', '.join(sorted(classes))}), "
                                     f"got {node_class!r}")
            continue
        if doc is not None:
            nodes.append(Node(name=doc.name, node_class=doc.node_class, cpu=float(doc.cpu), memory=int(doc.memory),
                              tier=doc.tier, cpu_quota=doc.cpu_quota))
    node_names = tuple(n.name for n in nodes)

    # zones
    zones: list[Zone] = []
    for i, entry in enumerate(raw.get("zones") if isinstance(raw.get("zones"), list) else []):
        p = f"zones[{i}]"
        doc = _shape(_ZoneDoc, entry, p, errors)
        if doc is None:
            continue
        if doc.name in {z.name for z in zones}:
            errors.add(f"{p}.name", f"{doc.name!r} is listed twice")
            continue
        rtt = _node_costs(doc.rtt, f"zones.{doc.name}.rtt", errors, node_names, complete=True)
        if rtt is not None:
            zones.append(Zone(name=doc.name, rtt=FrozenMap(rtt)))
    zone_names = tuple(z.name for z in zones)

    # alto
    alto = None
    if isinstance(raw.get("alto"), dict):
        told = {}
        for zone, costs in raw["alto"].items():
            if zone not in zone_names:
                errors.add(f"alto.{zone}", "not a zone of this scenario")
                continue
            try:
                costs = _mapping_rule(costs)
            except ValueError as exc:
                errors.add(f"alto.{zone}", str(exc))
                continue
            checked = _node_costs(costs, f"alto.{zone}", errors, node_names, complete=False)
            if checked is not None:
                told[zone] = FrozenMap(checked)
        alto = FrozenMap(told)

    # phases
    phases: list[Phase] = []
    start = 0.0
    raw_phases = raw.get("phases")
    for i, entry in enumerate(raw_phases if isinstance(raw_phases, list) else []):
        p = f"phases[{i}]"
        doc = _shape(_PhaseDoc, entry, p, errors)
        if not isinstance(entry, dict):
            continue
        rate = doc.rate if doc is not None else None
        if rate is not None and rate > MAX_RATE:
            errors.add(f"{p}.rate", f"{rate:g} requests/s is more than the client emulator sends (at most {MAX_RATE:g})")
        zone_weights = _weights(doc.zones, f"{p}.zones", errors, zone_names, "zone of this scenario") \
            if doc is not None else None
        popularity, zipf = (_popularity(doc.popularity, f"{p}.popularity", errors, models, catalog_path.name)
                            if doc is not None else (None, None))
        if doc is None or rate > MAX_RATE or zone_weights is None or popularity is None:
            continue
        phases.append(Phase(index=i, start=start, duration=float(doc.duration), rate=float(rate),
                            burstiness=float(doc.burstiness), zones=FrozenMap(zone_weights),
                            popularity=FrozenMap(popularity), zipf=zipf))
        start += float(doc.duration)
    total = sum(p.expected_requests for p in phases)
    if total > MAX_ARRIVALS:
        errors.add("phases", f"rate x duration adds up to {total:.0f} requests, more than {MAX_ARRIVALS}")

    # strategies
    strategies = DEFAULT_STRATEGIES
    if isinstance(raw.get("strategies"), list) and raw["strategies"]:
        seen: list[str] = []
        for i, name in enumerate(raw["strategies"]):
            if not isinstance(name, str) or name not in STRATEGIES:
                errors.add(f"strategies[{i}]", f"unknown strategy {name!r} (known: {', '.join(STRATEGIES)})")
            elif name in seen:
                errors.add(f"strategies[{i}]", f"{name!r} is listed twice")
            else:
                seen.append(name)
        strategies = tuple(seen)

    errors.raise_if_any()
    return Scenario(seed=int(top.seed), nodes=tuple(nodes), zones=tuple(zones), alto=alto, phases=tuple(phases),
                    strategies=tuple(strategies), slo=float(top.slo) if top.slo is not None else None,
                    models=models, nodes_default=nodes_default, path=path,
                    catalog_path=catalog_path, cluster_path=cluster_path)


def _node_costs(value: dict, path: str, errors: _Errors, node_names: tuple[str, ...], *,
                complete: bool) -> dict[str, float] | None:
    out: dict[str, float] = {}
    ok = True
    for node, seconds in value.items():
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
        missing = [n for n in node_names if n not in value]
        if missing:
            errors.add(path, f"no rtt for node(s) {', '.join(missing)} (every zone needs one for every node)")
            ok = False
    return {n: out[n] for n in node_names if n in out} if ok else None


def _popularity(value: dict, path: str, errors: _Errors, models: tuple[str, ...], catalog_name: str):
    """(model -> probability in catalog order, zipf exponent or None), or (None, None) after errors."""
    if "zipf" in value:
        if len(value) > 1:
            errors.add(path, "either {zipf: s} alone or explicit {model: weight, ...}, not both")
            return None, None
        s = _number(value["zipf"], f"{path}.zipf", errors, maximum=20.0)
        if s is None:
            return None, None
        raw = [1.0 / (rank ** s) for rank in range(1, len(models) + 1)]
        total = sum(raw)
        return {m: w / total for m, w in zip(models, raw)}, float(s)
    return _weights(value, path, errors, models, f"model of the catalog ({catalog_name})"), None


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
