"""Baselines to measure the optimisers against: the thesis's iterative search and three heuristics.

Each checks `--time-limit` in its loops: stopped with every request placed it answers `feasible`
(the local search keeps what it improved so far), stopped earlier it answers `time_limit`.
"""
from __future__ import annotations

import numpy as np

from solver import status as st
from solver.backends.base import Backend
from solver.check import check_assignment
from solver.data import Arrays
from solver.deadline import NEVER, Deadline
from solver.packing import Packer, candidate_nodes
from solver.problem import Problem, Solution

GREEDY_CANDIDATES = 64      # the greedy looks at each group's cheapest nodes first (all, if it must)


class SearchBackend(Backend):
    """Thesis 6.1's iterative search: everything on the node with the smallest summed latency."""

    name = "search"
    description = ("the thesis's iterative search (6.1): per node, the sum of latency plus execution time "
                   "over all requests; the smallest wins, capacity ignored")

    def _solve(self, problem: Problem, arrays: Arrays, *, time_limit: float | None,
               keep_files: str | None) -> Solution:
        deadline = Deadline(time_limit)
        per_node = arrays.count.astype(float) @ arrays.cost
        best = int(np.argmin(per_node))
        packer = Packer(arrays, np.zeros((arrays.n_groups, 0), dtype=np.int64))     # no candidate lists needed
        for n, g in enumerate(np.flatnonzero(arrays.count > 0).tolist()):
            if n % 1024 == 0 and deadline.expired():
                return _heuristic(problem, packer, self.name, "iterative search", deadline)
            packer.add(g, best, int(arrays.count[g]))          # no room check: the thesis had none
        node = arrays.node_names[best]
        solution = Solution(status=st.FEASIBLE, objective=float(per_node[best]), bound=None, solver=self.name,
                            seconds=0.0, assignment=packer.assignment(), placement=packer.placement(),
                            message=f"iterative search: all {problem.total_requests} requests on {node}, "
                                    f"the smallest per-node sum of latency + execution time")
        verdict = check_assignment(problem, solution.assignment)
        if not verdict.ok:
            solution.status = st.INFEASIBLE
            solution.message += f"; it ignores capacity and violates {verdict.summary()}"
        return solution


class NearestBackend(Backend):
    """Each request to its lowest-RTT node with room."""

    name = "nearest"
    description = "each request to its lowest-RTT node with room"

    def _solve(self, problem: Problem, arrays: Arrays, *, time_limit: float | None,
               keep_files: str | None) -> Solution:
        deadline = Deadline(time_limit)
        packer = Packer(arrays, np.zeros((arrays.n_groups, 0), dtype=np.int64))     # fill_groups sorts by rtt
        packer.fill_groups(np.arange(arrays.n_groups), by=arrays.rtt, deadline=deadline)
        return _heuristic(problem, packer, self.name, "nearest node with room", deadline)


class LeastLoadedBackend(Backend):
    """Each request to the node with the lowest cpu utilisation that has room (the thesis's front-end rule)."""

    name = "least-loaded"
    description = "each request to the node with the lowest cpu utilisation that has room"

    def _solve(self, problem: Problem, arrays: Arrays, *, time_limit: float | None,
               keep_files: str | None) -> Solution:
        deadline = Deadline(time_limit)
        packer = Packer(arrays, np.zeros((arrays.n_groups, 0), dtype=np.int64))
        cost = packer.cost
        cap = np.where(arrays.cpu_cap > 0, arrays.cpu_cap, np.inf)
        for g in np.flatnonzero(arrays.count > 0).tolist():
            while packer.remaining[g] > 0:
                if deadline.expired():
                    return _heuristic(problem, packer, self.name, "least-loaded node with room", deadline)
                room = packer.room_all(g)
                nodes = np.flatnonzero(room > 0)
                if not len(nodes):
                    break
                load = (arrays.cpu_cap[nodes] - packer.cpu_free[nodes]) / cap[nodes]
                j = int(nodes[np.lexsort((cost[g, nodes], load))[0]])
                packer.add(g, j, 1)
        return _heuristic(problem, packer, self.name, "least-loaded node with room", deadline)


class GreedyBackend(Backend):
    """Cheapest (group, node) pairs first, then a local search: fast on very large instances."""

    name = "greedy"
    description = "cheapest (request, node) pairs first, then moves to cheaper nodes with room"

    def _solve(self, problem: Problem, arrays: Arrays, *, time_limit: float | None,
               keep_files: str | None) -> Solution:
        deadline = Deadline(time_limit)
        packer = greedy_packer(arrays, deadline=deadline)
        return _heuristic(problem, packer, self.name, "greedy by unit cost, improved by local search", deadline)


def greedy_packer(arrays: Arrays, *, candidates: int = GREEDY_CANDIDATES, passes: int = 10,
                  deadline: Deadline = NEVER) -> Packer:
    """Return the greedy assignment (possibly incomplete when capacity or time runs out)."""
    packer = Packer(arrays, candidate_nodes(arrays, candidates))
    packer.fill_cheapest(deadline=deadline)
    if packer.complete:
        packer.improve(passes=passes, deadline=deadline)
    return packer


def _heuristic(problem: Problem, packer: Packer, name: str, what: str, deadline: Deadline = NEVER) -> Solution:
    if not packer.complete and deadline.hit:
        left = int(packer.remaining.sum())
        return Solution(status=st.TIME_LIMIT, objective=None, bound=None, solver=name, seconds=0.0,
                        message=f"{st.TIME_LIMIT_NOTE}: {what}: {left} request(s) not placed yet")
    if not packer.complete:
        left = int(packer.remaining.sum())
        return Solution(status=st.ERROR, objective=None, bound=None, solver=name, seconds=0.0,
                        message=f"{what}: {left} request(s) found no node with room (a heuristic proves "
                                f"nothing: --solver highs decides whether they fit)")
    return Solution(status=st.FEASIBLE, objective=packer.objective(), bound=None, solver=name, seconds=0.0,
                    assignment=packer.assignment(), placement=packer.placement(),
                    message=(f"{st.TIME_LIMIT_NOTE}: " if deadline.hit else "") + what)
