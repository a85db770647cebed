"""The one status vocabulary every backend translates its native status into (PuLP's convention).

- `optimal`: the returned assignment is proven optimal for its formulation.
- `repaired`: the MILP's optimum was proven, but turning its columns into an integral assignment
  changed it (the repair step shed or moved requests); the assignment is feasible and `bound` is
  still a true lower bound, but the returned assignment itself is not proven optimal.
- `feasible`: the assignment satisfies every constraint; optimality is not proven (heuristics,
  rounded relaxations, a MILP stopped by its time limit).
- `infeasible`: no assignment satisfies the capacities (or, for the iterative-search baseline,
  the one it returns does not); the message says which capacity cannot be met.
- `time_limit`: `--time-limit` ran out before the backend had any feasible assignment (no
  assignment; exit status 1). When the limit stops a backend that already has one, the answer is
  `feasible` (the best found) and its message starts with `time limit reached`.
- `error`: the backend failed or is unavailable; the message says why.
"""
from __future__ import annotations

OPTIMAL = "optimal"
REPAIRED = "repaired"
FEASIBLE = "feasible"
INFEASIBLE = "infeasible"
TIME_LIMIT = "time_limit"
ERROR = "error"
ALL = (OPTIMAL, REPAIRED, FEASIBLE, INFEASIBLE, TIME_LIMIT, ERROR)
TIME_LIMIT_NOTE = "time limit reached"    # how a `feasible` answer stopped by the limit says so

# Exit statuses of `python -m solver solve`.
EXIT_OK = 0            # optimal, repaired or feasible
EXIT_NO_SOLUTION = 1   # infeasible, time_limit, or the backend failed to produce an assignment; a file
                       # that cannot be written (render --out)
EXIT_BAD_INPUT = 2     # malformed file, unknown names, negative numbers, bad arguments
EXIT_UNAVAILABLE = 3   # the requested backend is not installed (e.g. AMPL)
