"""The solver's data: the problem file (issue 2's exact JSON format) and the Solution it answers.

This is the boundary other components code against (backend builds a `Problem`, reads a
`Solution`), so everything entering here is validated once, with every error reported on one
line as `field path: reason`, and nothing past this module has to re-check shapes or names.

Units: memory in KB (integers), cpu in cores (a model's cpu is per request), times in seconds.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from pydantic import ConfigDict, with_config

from common.validation import (MAX_NUMBER, Checked, Number, Strict, Text, ValidationError, check_number, one_of,
                               problems)

__all__ = [
    "FORMULATIONS", "NodeCap", "ModelReq", "RequestGroup", "Problem", "Assignment", "Solution",
    "ProblemError", "load_problem",
]

FORMULATIONS = ("thesis", "placement", "latency")
STATUSES = ("optimal", "repaired", "feasible", "infeasible", "time_limit", "error")
TIERS = ("edge", "cloud")
DEFAULT_MAX_UTILISATION = 0.85     # `latency`: no instance planned busier than this
# Names end up quoted in AMPL/MathProg data files and in Kubernetes object names: keep them plain.
# Every number must be at most MAX_NUMBER (2**53: integers stay exact as floats; sums and products of
# the capacities and costs stay finite). Memory in KB up to 8 EB, counts up to 9e15 requests.
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:/-]{0,99}$")


# The problem file's field types (common.validation's rules: finite, no booleans, at most 2**53).
KB = Number(int, what="a non-negative integer", unit="KB")
Cores = Number(float)
Count = Number(int, what="a non-negative integer")
Cost = Number(float)
Tier = Checked(str, one_of(TIERS))


def _row(value: Any) -> dict[str, Any]:
    """A {node: seconds} row: its shape here; its numbers and node names in Problem._check, which
    checks each shared row once (a large problem's groups share a few rows)."""
    if not isinstance(value, Mapping):
        raise ValueError("must be an object mapping node names to seconds")
    return value            # a key that is not a node's name is Problem._check's "unknown node"


Row = Checked(dict, _row)
# Unknown keys refused, no NaN; the same rules as common.validation.Strict, for these dataclasses.
_FILE_CONFIG = ConfigDict(extra="forbid", allow_inf_nan=False, hide_input_in_errors=True)


class ProblemError(ValueError):
    """A problem file or object that is malformed; `errors` holds every `field path: reason`."""

    def __init__(self, errors: str | list[str]) -> None:
        self.errors = [errors] if isinstance(errors, str) else list(errors)
        super().__init__("; ".join(self.errors))


@with_config(_FILE_CONFIG)
@dataclass(frozen=True)
class NodeCap:
    """A node and what the solver may use on it: memory (KB) and cpu (cores).

    `tier` (edge or cloud) and the costs are optional; only `latency` weighs the costs, in the
    objective's unit (seconds): `cost_per_request` is added to every request served there,
    `cost_per_instance_hour` to every instance there per hour of the window."""

    name: Text
    memory: KB
    cpu: Cores
    tier: Tier = "edge"
    cost_per_request: Cost = 0.0
    cost_per_instance_hour: Cost = 0.0


@with_config(_FILE_CONFIG)
@dataclass(frozen=True)
class ModelReq:
    """A model: memory per instance (KB) and cpu per request (cores)."""

    name: Text
    memory: KB
    cpu: Cores


@with_config(_FILE_CONFIG)
@dataclass(frozen=True)
class RequestGroup:
    """`count` identical requests for `model`, with their round-trip time (s) to every node."""

    model: Text
    count: Count
    rtt: Row


@dataclass(frozen=True)
class Problem:
    """One provisioning and dispatch problem (thesis chapter 3, or the `placement` variant)."""

    formulation: str
    nodes: list[NodeCap]
    models: list[ModelReq]
    requests: list[RequestGroup]
    exec_time: dict[str, dict[str, float]]
    deployed: list[tuple[str, str]] = field(default_factory=list)
    window: float | None = None         # `latency`: seconds the counts were observed over (rate = count / window)
    max_utilisation: float = DEFAULT_MAX_UTILISATION   # `latency`: ceiling on each instance's utilisation

    @classmethod
    def from_dict(cls, d: Any) -> Problem:
        """Build a validated Problem from the problem-file JSON; raise ProblemError naming the field."""
        errors: list[str] = []
        problem = _parse(d, errors)
        if problem is not None and not errors:
            problem._check(errors)
        if errors or problem is None:
            raise ProblemError(errors or ["problem: invalid"])
        return problem

    def to_dict(self) -> dict[str, Any]:
        """Return the problem-file JSON form."""
        out = {
            "formulation": self.formulation,
            "nodes": [_node_dict(n) for n in self.nodes],
            "models": [{"name": m.name, "memory": m.memory, "cpu": m.cpu} for m in self.models],
            "requests": [{"model": r.model, "count": r.count, "rtt": dict(r.rtt)} for r in self.requests],
            "exec_time": {m: dict(row) for m, row in self.exec_time.items()},
            "deployed": [{"model": m, "node": n} for m, n in self.deployed],
        }
        if self.window is not None:
            out["window"] = self.window
        if self.max_utilisation != DEFAULT_MAX_UTILISATION:
            out["max_utilisation"] = self.max_utilisation
        return out

    def validate(self) -> None:
        """Check a Problem built in code (names, signs, coverage); raise ProblemError on the first pass."""
        errors: list[str] = []
        self._check(errors)
        if errors:
            raise ProblemError(errors)

    def _check(self, errors: list[str]) -> None:
        if self.formulation not in FORMULATIONS:
            errors.append(f"formulation: must be one of {', '.join(FORMULATIONS)}, got {self.formulation!r}")
        node_names = _check_named("nodes", self.nodes, errors)
        model_names = _check_named("models", self.models, errors)
        if not self.nodes:
            errors.append("nodes: at least one node is needed")
        for kind, items in (("nodes", self.nodes), ("models", self.models)):
            for k, item in enumerate(items):
                _check_int(f"{kind}[{k}].memory", item.memory, errors)
                _check_number(f"{kind}[{k}].cpu", item.cpu, errors)
        for k, node in enumerate(self.nodes):
            if node.tier not in TIERS:
                errors.append(f"nodes[{k}].tier: must be one of {', '.join(TIERS)}, got {node.tier!r}")
            _check_number(f"nodes[{k}].cost_per_request", node.cost_per_request, errors)
            _check_number(f"nodes[{k}].cost_per_instance_hour", node.cost_per_instance_hour, errors)
        if self.formulation == "latency" and self.window is None:
            errors.append("window: missing (the `latency` formulation needs the seconds the counts were observed over)")
        if self.window is not None:
            _check_number("window", self.window, errors, positive=True)
        try:
            _utilisation(self.max_utilisation)
        except ValueError as exc:
            errors.append(f"max_utilisation: {exc}")
        node_set = set(node_names)
        checked: set[int] = set()             # groups often share one rtt mapping: check each once
        for k, group in enumerate(self.requests):
            where = f"requests[{k}]"
            if group.model not in model_names:
                errors.append(f"{where}.model: unknown model {group.model!r}")
            _check_int(f"{where}.count", group.count, errors)
            if not isinstance(group.rtt, Mapping):
                errors.append(f"{where}.rtt: must be an object mapping node names to seconds")
            elif id(group.rtt) not in checked:
                checked.add(id(group.rtt))
                _check_row(f"{where}.rtt", group.rtt, node_names, node_set, errors)
        if sum(g.count for g in self.requests if type(g.count) is int and 0 <= g.count <= MAX_NUMBER) > MAX_NUMBER:
            errors.append("requests: more than 2**53 requests in all")
        if not isinstance(self.exec_time, Mapping):
            errors.append("exec_time: must be an object mapping model names to {node: seconds}")
        else:
            for name in self.exec_time:
                if name not in model_names:
                    errors.append(f"exec_time.{name}: unknown model {name!r}")
            for name in model_names:
                row = self.exec_time.get(name)
                if row is None:
                    errors.append(f"exec_time.{name}: missing (every model needs an execution time on every node)")
                elif not isinstance(row, Mapping):
                    errors.append(f"exec_time.{name}: must be an object mapping node names to seconds")
                else:
                    _check_row(f"exec_time.{name}", row, node_names, node_set, errors)
        for k, pair in enumerate(self.deployed):
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
                errors.append(f"deployed[{k}]: must be a (model, node) pair")
                continue
            model, node = pair
            if model not in model_names:
                errors.append(f"deployed[{k}].model: unknown model {model!r}")
            if node not in node_set:
                errors.append(f"deployed[{k}].node: unknown node {node!r}")

    @property
    def total_requests(self) -> int:
        """Return the number of individual requests (sum of the groups' counts)."""
        return sum(g.count for g in self.requests)


@with_config(_FILE_CONFIG)
@dataclass
class Assignment:
    """`count` requests of group `request` (an index into Problem.requests) served on `node`."""

    request: Count
    node: Text
    count: Count


@dataclass
class Solution:
    """A solver's answer; `objective` is always the value of the integral `assignment` returned."""

    status: str
    objective: float | None
    bound: float | None
    solver: str
    seconds: float
    assignment: list[Assignment] = field(default_factory=list)
    placement: dict[str, dict[str, float]] = field(default_factory=dict)
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Return the Solution JSON of issue 2."""
        return {
            "status": self.status,
            "objective": _finite(self.objective),
            "bound": _finite(self.bound),
            "solver": self.solver,
            "seconds": round(self.seconds, 6),
            "assignment": [{"request": a.request, "node": a.node, "count": a.count} for a in self.assignment],
            "placement": {m: dict(row) for m, row in self.placement.items()},
            "message": self.message,
        }

    @classmethod
    def from_dict(cls, d: Any) -> Solution:
        """Build a Solution from its JSON form (as printed by `python -m solver solve`); raise
        ProblemError naming every bad field."""
        if not isinstance(d, Mapping):
            raise ProblemError("solution: must be a JSON object")
        try:
            file = _SolutionFile.model_validate(dict(d))
        except ValidationError as exc:
            raise ProblemError(problems(exc, named=_path_style, unknown_keys=_unknown_style)) from None
        return cls(status=file.status, objective=file.objective, bound=file.bound, solver=file.solver,
                   seconds=file.seconds, assignment=list(file.assignment),
                   placement={m: dict(row) for m, row in file.placement.items()}, message=file.message)

    @property
    def ok(self) -> bool:
        """Return True when the solution carries a usable assignment (optimal or feasible)."""
        return self.status in ("optimal", "repaired", "feasible")

    def pairs(self, problem: Problem) -> set[tuple[str, str]]:
        """Return the (model, node) pairs this solution sends traffic to."""
        return {(problem.requests[a.request].model, a.node) for a in self.assignment if a.count > 0}


def load_problem(path: str) -> Problem:
    """Read and validate a problem file (`-` reads standard input); raise ProblemError on any fault."""
    import sys

    try:
        if path == "-":
            text = sys.stdin.read()
        else:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
    except OSError as exc:
        raise ProblemError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise ProblemError(f"{path}: not UTF-8 text") from None
    return Problem.from_dict(parse_json(text, path))


def parse_json(text: str, path: str) -> Any:
    """Parse JSON text; raise ProblemError (one line) for anything json cannot take."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProblemError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except RecursionError:
        raise ProblemError(f"{path}: not valid JSON (nested too deeply)") from None
    except ValueError as exc:   # e.g. an integer literal longer than Python's 4,300-digit limit
        raise ProblemError(f"{path}: not valid JSON ({' '.join(str(exc).split())})") from None


# --- parsing (pure) ---------------------------------------------------------------------------

class _Deployed(Strict):
    model: Text
    node: Text


def _utilisation(value: Any) -> float:
    value = check_number(value, what="a number strictly between 0 and 1")
    if not 0 < value < 1:
        raise ValueError(f"must be a number strictly between 0 and 1, got {value!r}")
    return value


class _ProblemFile(Strict):
    """The problem file's shape and values; the references between its parts (names, rows that
    cover every node) are Problem._check's, shared with problems built in code."""

    formulation: Checked(str, one_of(FORMULATIONS))
    nodes: list[NodeCap]
    models: list[ModelReq]
    requests: list[RequestGroup]
    exec_time: dict[str, Row]
    deployed: list[_Deployed] = []
    window: Number(optional=True, positive=True) = None
    max_utilisation: Checked(float, _utilisation) = DEFAULT_MAX_UTILISATION


class _SolutionFile(Strict):
    """A Solution as `python -m solver solve` prints it (read back by `solver check`)."""

    status: Checked(str, one_of(STATUSES))
    objective: Number(optional=True, minimum=None) = None
    bound: Number(optional=True, minimum=None) = None
    solver: Checked(str, lambda v: v if isinstance(v, str) else _not_text(v)) = ""
    seconds: Number() = 0.0
    assignment: list[Assignment] = []
    placement: dict[str, dict[str, Number()]] = {}
    message: Checked(str, lambda v: v if isinstance(v, str) else _not_text(v)) = ""


def _not_text(value: Any) -> str:
    raise ValueError(f"must be a string, got {value!r}")


def _node_dict(n: NodeCap) -> dict[str, Any]:
    out: dict[str, Any] = {"name": n.name, "memory": n.memory, "cpu": n.cpu}
    if n.tier != "edge":
        out["tier"] = n.tier
    if n.cost_per_request:
        out["cost_per_request"] = n.cost_per_request
    if n.cost_per_instance_hour:
        out["cost_per_instance_hour"] = n.cost_per_instance_hour
    return out


def _path_style(field: str, text: str) -> str:
    return f"{field or 'problem'}: {'missing' if text == 'is required' else text}"


def _unknown_style(parent: str, names: list[str]) -> list[str]:
    return [f"{parent + '.' if parent else ''}{name}: unknown field" for name in sorted(names)]


def _parse(d: Any, errors: list[str]) -> Problem | None:
    if not isinstance(d, Mapping):
        errors.append("problem: must be a JSON object")
        return None
    try:
        file = _ProblemFile.model_validate(dict(d))
    except ValidationError as exc:
        errors.extend(problems(exc, named=_path_style, unknown_keys=_unknown_style))
        return None
    return Problem(formulation=file.formulation, nodes=list(file.nodes), models=list(file.models),
                   requests=list(file.requests), exec_time=dict(file.exec_time),
                   deployed=list(dict.fromkeys((e.model, e.node) for e in file.deployed)),
                   window=file.window, max_utilisation=file.max_utilisation)


def _check_named(kind: str, items: Iterable[Any], errors: list[str]) -> list[str]:
    names: list[str] = []
    seen: set[str] = set()
    for k, item in enumerate(items):
        name = item.name
        if not isinstance(name, str) or not _NAME.match(name):
            errors.append(f"{kind}[{k}].name: {name!r} is not a valid name "
                          "(1-100 letters, digits, '_', '.', ':', '/', '-'; not starting with a symbol)")
        elif name in seen:
            errors.append(f"{kind}[{k}].name: duplicate name {name!r}")
        else:
            seen.add(name)
        names.append(name)
    return names


def _check_number(where: str, value: Any, errors: list[str], **rules: Any) -> None:
    """The file's number rules (common.validation.check_number) for values built in code and for
    the rows, which the file's shape check leaves to Problem._check."""
    try:
        check_number(value, **rules)
    except ValueError as exc:
        errors.append(f"{where}: {exc}")


def _check_int(where: str, value: Any, errors: list[str]) -> None:
    _check_number(where, value, errors, kind=int, what="a non-negative integer")


def _check_row(where: str, row: Mapping[str, Any], node_names: list[str], node_set: set[str],
               errors: list[str]) -> None:
    for name, value in row.items():
        if name not in node_set:
            errors.append(f"{where}.{name}: unknown node {name!r}")
        elif not ((type(value) is float or type(value) is int) and 0 <= value <= MAX_NUMBER):
            # the plain valid number is settled by the line above (a 1,000-node problem has millions
            # of them; NaN fails the comparison); anything else gets the shared rule and its wording
            _check_number(f"{where}.{name}", value, errors)
    missing = [n for n in node_names if n not in row] if len(row) != len(node_names) or errors else []
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        errors.append(f"{where}: missing node(s) {', '.join(repr(n) for n in missing[:3])}{more}")


def _finite(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return float(value)
