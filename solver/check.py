"""An independent feasibility checker and an explanation of infeasible problems.

The checker reads only the Problem's own fields (no arrays, no formulation matrices), so a bug
in the formulation or in a backend cannot hide from it. The objective is recomputed exactly with
rational arithmetic (`latency`: each instance's waiting exactly, their sum correctly rounded); capacities are compared with a relative tolerance of 1e-9 (decimal
capacities like 0.1 cores are not exact in binary floating point).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Iterable

from solver.problem import Assignment, Problem

TOLERANCE = 1e-9


def fits(used: float, capacity: float) -> bool:
    """Return True when `used` is within `capacity` (relative tolerance 1e-9)."""
    return used <= capacity + TOLERANCE * max(1.0, abs(capacity))


@dataclass
class CheckResult:
    """The checker's verdict on one assignment."""

    ok: bool
    violations: list[str] = field(default_factory=list)
    objective: float = 0.0                 # exact value of the assignment, rounded once to float
    memory_used: dict[str, float] = field(default_factory=dict)
    cpu_used: dict[str, float] = field(default_factory=dict)

    def summary(self, limit: int = 3) -> str:
        """Return the first violations on one line."""
        more = f" (and {len(self.violations) - limit} more)" if len(self.violations) > limit else ""
        return "; ".join(self.violations[:limit]) + more


def check_assignment(problem: Problem, assignment: Iterable[Assignment]) -> CheckResult:
    """Check an integral assignment against every constraint and recompute its objective exactly."""
    violations: list[str] = []
    nodes = {n.name: n for n in problem.nodes}
    models = {m.name: m for m in problem.models}
    placed: dict[tuple[int, str], int] = {}
    for a in assignment:
        if isinstance(a.request, bool) or not isinstance(a.request, int) or not 0 <= a.request < len(problem.requests):
            violations.append(f"assignment: request index {a.request!r} out of range")
            continue
        if a.node not in nodes:
            violations.append(f"assignment: unknown node {a.node!r}")
            continue
        if isinstance(a.count, bool) or not isinstance(a.count, int) or a.count < 0:
            violations.append(f"assignment: count {a.count!r} of request {a.request} is not a non-negative integer")
            continue
        if a.count:
            placed[(a.request, a.node)] = placed.get((a.request, a.node), 0) + a.count

    total = [0] * len(problem.requests)
    terms: list[tuple[int, float]] = []
    memory = dict.fromkeys(nodes, 0)
    cpu: dict[str, list[float]] = {n: [] for n in nodes}
    instances: set[tuple[str, str]] = set()
    for (k, node), count in placed.items():
        group = problem.requests[k]
        model = models[group.model]
        total[k] += count
        if problem.formulation == "thesis" and count > group.count:
            violations.append(f"requests[{k}]: {count} of its {group.count} requests on {node} (I is binary)")
        terms.append((count, group.rtt[node]))
        terms.append((count, problem.exec_time[group.model][node]))
        cpu[node].append(count * model.cpu)
        if problem.formulation == "thesis":
            memory[node] += count * model.memory
        else:
            instances.add((group.model, node))
    latency_terms: list[Fraction] = []
    if problem.formulation == "latency":
        latency_terms = _latency_terms(problem, placed, violations)
    if problem.formulation in ("placement", "latency"):
        deployed = set(map(tuple, problem.deployed))
        for model_name, node in instances:
            if (model_name, node) not in deployed:
                memory[node] += models[model_name].memory
    for k, group in enumerate(problem.requests):
        if problem.formulation == "thesis" and total[k] < group.count:
            violations.append(f"requests[{k}]: {total[k]} of {group.count} requests placed")
        elif problem.formulation in ("placement", "latency") and total[k] != group.count:
            violations.append(f"requests[{k}]: {total[k]} requests dispatched, count is {group.count}")
    used_cpu = {n: math.fsum(v) for n, v in cpu.items()}
    for name, node in nodes.items():
        if not fits(float(memory[name]), node.memory):
            violations.append(f"memory[{name}]: {float(memory[name]):g} KB used > {node.memory} KB "
                              f"({float(memory[name]) / node.memory:.2f}x)" if node.memory else
                              f"memory[{name}]: {float(memory[name]):g} KB used > 0 KB")
        if not fits(used_cpu[name], node.cpu):
            ratio = f" ({used_cpu[name] / node.cpu:.2f}x)" if node.cpu else ""
            violations.append(f"compute[{name}]: {used_cpu[name]:g} cores used > {node.cpu:g} cores{ratio}")
    objective = exact_sum(terms)
    if problem.formulation == "latency":
        # each instance's waiting is exact rational arithmetic rounded once, the sum correctly rounded
        # (one rational over every instance's own denominator grows too large to add at scale)
        objective = math.fsum([objective, *(float(t) for t in latency_terms)])
    return CheckResult(ok=not violations, violations=violations, objective=objective,
                       memory_used={n: float(v) for n, v in memory.items()}, cpu_used=used_cpu)


def exact_sum(terms: Iterable[tuple[int, float]]) -> float:
    """Return sum(count * value) computed exactly (floats are dyadic rationals), rounded once."""
    return float(exact_fraction(terms))


def exact_fraction(terms: Iterable[tuple[int, float]]) -> Fraction:
    """Return sum(count * value) as an exact rational."""
    ratios = [(count, *float(value).as_integer_ratio()) for count, value in terms]
    if not ratios:
        return Fraction(0)
    scale = max(d for _, _, d in ratios)            # every denominator is a power of two
    total = sum(count * n * (scale // d) for count, n, d in ratios)
    return Fraction(total, scale)


def _latency_terms(problem: Problem, placed: dict[tuple[int, str], int], violations: list[str]) -> list[Fraction]:
    """The `latency` objective beyond sum(count * (rtt + exec_time)), each term exact: each request's cost
    per request on its node, each instance's M/M/1 waiting W rho^2 / (1 - rho) with rho = s n / W,
    and each instance's cost per hour over the window; a violation for rho above the ceiling."""
    nodes = {n.name: n for n in problem.nodes}
    window = Fraction(problem.window)
    ceiling = Fraction(problem.max_utilisation)
    per_instance: dict[tuple[str, str], int] = {}
    out: list[Fraction] = []
    for (k, node), count in placed.items():
        model = problem.requests[k].model
        per_instance[(model, node)] = per_instance.get((model, node), 0) + count
        out.append(count * Fraction(nodes[node].cost_per_request))
    for (model, node), n in sorted(per_instance.items()):
        rho = Fraction(problem.exec_time[model][node]) * n / window
        if rho > ceiling * (1 + Fraction(1, 10**9)):
            violations.append(f"utilisation['{model}','{node}']: {float(rho):.4g} > max_utilisation "
                              f"{problem.max_utilisation:g} ({n} requests in {problem.window:g} s)")
            if rho >= 1:
                continue
        out.append(window * rho * rho / (1 - rho))
    opened = set(per_instance) | set(map(tuple, problem.deployed))
    for _, node in opened:
        out.append(Fraction(nodes[node].cost_per_instance_hour) * window / 3600)
    return out


def explain_infeasible(problem: Problem) -> str:
    """Return which capacity cannot be met, by the simplest argument that shows it."""
    nodes = problem.nodes
    models = {m.name: m for m in problem.models}
    deployed = set(map(tuple, problem.deployed)) if problem.formulation != "thesis" else set()
    reasons: list[str] = []
    if problem.formulation == "latency":
        overload = _overload(problem, deployed)
        if overload:
            return overload
    for k, group in enumerate(problem.requests):
        if group.count <= 0:
            continue
        model = models[group.model]
        if not any(_one_fits(model, node, (group.model, node.name) in deployed) for node in nodes):
            biggest = max(nodes, key=lambda n: n.memory)
            fastest = max(nodes, key=lambda n: n.cpu)
            reasons.append(f"requests[{k}] (model {group.model}): no node has room for one request "
                           f"(needs {model.memory} KB and {model.cpu:g} cores; largest memory "
                           f"{biggest.memory} KB on {biggest.name}, largest cpu {fastest.cpu:g} on {fastest.name})")
    if reasons:
        return _join(reasons)
    cpu_need = math.fsum(g.count * models[g.model].cpu for g in problem.requests)
    cpu_have = math.fsum(n.cpu for n in nodes)
    if not fits(cpu_need, cpu_have):
        reasons.append(f"compute: the requests need {cpu_need:g} cores in total, the nodes have {cpu_have:g}")
    mem_have = sum(n.memory for n in nodes)
    if problem.formulation == "thesis":
        mem_need = sum(g.count * models[g.model].memory for g in problem.requests)
        if mem_need > mem_have:
            reasons.append(f"memory: the requests need {mem_need} KB in total (memory is charged per request), "
                           f"the nodes have {mem_have} KB")
    else:
        wanted = {g.model for g in problem.requests if g.count > 0}
        missing = sorted(m for m in wanted if not any(dm == m for dm, _ in deployed))
        mem_need = sum(models[m].memory for m in missing)
        if mem_need > mem_have:
            reasons.append(f"memory: one instance each of {', '.join(missing)} needs {mem_need} KB, "
                           f"the nodes have {mem_have} KB")
    if reasons:
        return _join(reasons)
    if problem.formulation == "latency":
        return ("memory, compute and utilisation: the requests cannot be packed onto the nodes within the "
                f"capacities with every instance at utilisation <= {problem.max_utilisation:g}")
    return ("memory and compute: the requests cannot be packed onto the nodes within both capacities "
            "(each fits somewhere and the totals suffice, but no assignment satisfies every node)")


def _overload(problem: Problem, deployed: set) -> str:
    """`latency`: the models whose arrival rate reaches what all their possible instances serve
    at the utilisation ceiling (each node that could hold one instance; memory shared ignored)."""
    rates: dict[str, int] = {}
    for group in problem.requests:
        rates[group.model] = rates.get(group.model, 0) + group.count
    reasons = []
    for model in problem.models:
        n = rates.get(model.name, 0)
        if not n:
            continue
        capacity = 0.0
        for node in problem.nodes:
            if not _one_fits(model, node, (model.name, node.name) in deployed):
                continue
            s = problem.exec_time[model.name][node.name]
            capacity = float("inf") if s <= 0 else capacity + problem.max_utilisation / s
        rate = n / problem.window
        if rate > capacity * (1 + 1e-9):
            reasons.append(f"overload: model {model.name} receives {rate:.4g} requests/s, its instances on every "
                           f"node that can hold one serve at most {capacity:.4g}/s at utilisation "
                           f"<= {problem.max_utilisation:g}")
    return _join(reasons)


def _one_fits(model: object, node: object, deployed: bool) -> bool:
    memory_ok = deployed or fits(model.memory, node.memory)  # type: ignore[attr-defined]
    return memory_ok and fits(model.cpu, node.cpu)  # type: ignore[attr-defined]


def _join(reasons: list[str], limit: int = 3) -> str:
    more = f" (and {len(reasons) - limit} more)" if len(reasons) > limit else ""
    return "; ".join(reasons[:limit]) + more
