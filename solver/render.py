"""Render the AMPL model, data and run files of a problem (thesis 5.3.1) from templates/ampl/.

Pure: text in, text out, byte-for-byte deterministic (pinned by golden files in tests/golden/ampl/).
The files use only the part of AMPL that GNU MathProg also reads, so the `glpk` backend solves
exactly what the `ampl` backend hands to AMPL. Names are always quoted; numbers are written with
Python's shortest round-trip repr, so no digit of the problem is lost.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2

from solver.problem import Problem
from solver.queueing import tangent_points

TANGENT_TOL = 0.01      # `latency`: the tangents' error bound on h (solver/backends/highs_latency.py uses the same)

TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "templates" / "ampl"
KINDS = ("model", "data", "run")
_SUFFIX = {"model": "mod", "data": "dat", "run": "run"}


def file_names(formulation: str) -> dict[str, str]:
    """Return the file name of each kind for a formulation, e.g. {"model": "thesis.mod", ...}."""
    return {kind: f"{formulation}.{_SUFFIX[kind]}" for kind in KINDS}


def _environment() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)), undefined=jinja2.StrictUndefined,
                              trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True, autoescape=False)


def quote(name: str) -> str:
    """Return a name as an AMPL/MathProg quoted string literal."""
    return "'" + name.replace("'", "''") + "'"


def number(value: float | int) -> str:
    """Return a number in a form both AMPL and MathProg read back exactly."""
    if isinstance(value, int):
        return str(value)
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def context(problem: Problem, *, time_limit: float | None = None) -> dict[str, Any]:
    """Return the template variables of a problem."""
    node_names = [n.name for n in problem.nodes]
    nodes = [{"key": quote(n.name), "memory": number(n.memory), "cpu": number(n.cpu),
              "cost_per_request": number(n.cost_per_request), "cost_per_instance_hour": number(n.cost_per_instance_hour)}
             for n in problem.nodes]
    models = [{"key": quote(m.name), "memory": number(m.memory), "cpu": number(m.cpu),
               "exec_time": [number(problem.exec_time[m.name][n]) for n in node_names]} for m in problem.models]
    groups = [{"index": k + 1, "model": quote(g.model), "count": g.count,
               "rtt": [number(g.rtt[n]) for n in node_names]} for k, g in enumerate(problem.requests)]
    requests = []
    for k, g in enumerate(problem.requests):          # thesis: each group expanded into its requests
        rtt = [number(g.rtt[n]) for n in node_names]
        for _ in range(g.count):
            requests.append({"index": len(requests) + 1, "group": k, "model": quote(g.model), "rtt": rtt})
    return {
        "formulation": problem.formulation,
        "files": file_names(problem.formulation),
        "n_nodes": len(problem.nodes),
        "n_models": len(problem.models),
        "n_groups": len(problem.requests),
        "n_requests": problem.total_requests,
        "nodes": nodes,
        "models": models,
        "groups": groups,
        "requests": requests if problem.formulation == "thesis" else [],
        "deployed": [{"model": quote(m), "node": quote(n)} for m, n in problem.deployed]
                    if problem.formulation in ("placement", "latency") else [],
        "window": number(problem.window) if problem.window is not None else None,
        "max_util": number(problem.max_utilisation),
        "tangents": [number(float(v)) for v in tangent_points(problem.max_utilisation, TANGENT_TOL)[0]]
                    if problem.formulation == "latency" else [],
        "time_limit": number(time_limit) if time_limit else None,
    }


def render(problem: Problem, *, time_limit: float | None = None) -> dict[str, str]:
    """Return {file name: text} of the model, data and run files of a problem."""
    env = _environment()
    values = context(problem, time_limit=time_limit)
    names = file_names(problem.formulation)
    return {names[kind]: env.get_template(f"{names[kind]}.j2").render(values) for kind in KINDS}


def write_files(problem: Problem, directory: str | Path, *, time_limit: float | None = None) -> dict[str, Path]:
    """Render the files into a directory (created if needed); return {kind: path}."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    texts = render(problem, time_limit=time_limit)
    names = file_names(problem.formulation)
    paths = {}
    for kind in KINDS:
        path = folder / names[kind]
        path.write_text(texts[names[kind]], encoding="utf-8")
        paths[kind] = path
    return paths
