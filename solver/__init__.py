"""Where models run and where requests go: the thesis's optimisation problem and its solvers.

    from solver import Problem, Solution, solve, ProblemError
    solution = solve(Problem.from_dict(data), solver="highs", time_limit=10)

Exceptions: `ProblemError` (a ValueError) for a malformed problem; a solve itself never raises
for an infeasible or failed problem, it returns a Solution with status `infeasible` or `error`.
"""
from solver.api import BACKENDS, backend_names, get_backend, solve
from solver.problem import Assignment, ModelReq, NodeCap, Problem, ProblemError, RequestGroup, Solution

__all__ = ["Problem", "Solution", "Assignment", "NodeCap", "ModelReq", "RequestGroup", "ProblemError",
           "solve", "BACKENDS", "backend_names", "get_backend"]
