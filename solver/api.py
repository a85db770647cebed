"""The Python entry point: `solve(problem, solver=..., time_limit=..., keep_files=...)`."""
from __future__ import annotations

from solver.backends.base import Backend
from solver.problem import Problem, Solution


def _registry() -> dict[str, type[Backend]]:
    from solver.backends.ampl import AmplBackend
    from solver.backends.baselines import GreedyBackend, LeastLoadedBackend, NearestBackend, SearchBackend
    from solver.backends.glpk import GlpkBackend
    from solver.backends.highs import HighsBackend
    from solver.backends.ipopt import IpoptBackend
    from solver.backends.large import LpFixBackend

    classes = [IpoptBackend, HighsBackend, AmplBackend, GlpkBackend, LpFixBackend,
               SearchBackend, NearestBackend, LeastLoadedBackend, GreedyBackend]
    return {cls.name: cls for cls in classes}


BACKENDS: dict[str, type[Backend]] = _registry()


def backend_names() -> list[str]:
    """Return the names accepted by `solve(..., solver=NAME)`."""
    return list(BACKENDS)


def get_backend(name: str) -> Backend:
    """Return a backend by name; raise KeyError naming the choices."""
    try:
        return BACKENDS[name]()
    except KeyError:
        raise KeyError(f"unknown solver {name!r}; choose from {', '.join(BACKENDS)}") from None


def solve(problem: Problem, *, solver: str = "ipopt", time_limit: float | None = None,
          keep_files: str | None = None) -> Solution:
    """Solve a problem with the named backend; raise ProblemError if the problem is malformed."""
    backend = get_backend(solver)
    problem.validate()
    return backend.solve(problem, time_limit=time_limit, keep_files=keep_files)
