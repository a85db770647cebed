"""Capacity bookkeeping for building integral assignments: rounding, repair and the heuristics.

A `Packer` holds a partial assignment (units of each group on each node) and the memory and cpu
still free per node, under either formulation's memory rule (per request for `thesis`, once per
instance for `placement`, nothing for deployed instances). All of it is pure computation.
"""
from __future__ import annotations

import math

import numpy as np

from solver.data import Arrays
from solver.deadline import NEVER, Deadline
from solver.problem import Assignment

_SLACK = 1e-10      # stricter than the checker's 1e-9, so float drift never tips a node over
_BIG = 1 << 62


def _units(quotient: float) -> int:
    """Whole units in a capacity quotient (a tiny per-request need can make it overflow to inf)."""
    return _BIG if quotient >= _BIG else int(math.floor(quotient))


def candidate_nodes(arrays: Arrays, limit: int | None = None) -> np.ndarray:
    """Return each group's candidate nodes by ascending unit cost, the `limit` cheapest (default all)."""
    cost = arrays.cost
    k = arrays.n_nodes if limit is None else max(1, min(limit, arrays.n_nodes))
    if k < arrays.n_nodes:
        part = np.argpartition(cost, k - 1, axis=1)[:, :k]
        order = np.argsort(np.take_along_axis(cost, part, axis=1), axis=1, kind="stable")
        return np.take_along_axis(part, order, axis=1)
    return np.argsort(cost, axis=1, kind="stable")


class Packer:
    """A partial integral assignment with per-node free capacity."""

    def __init__(self, arrays: Arrays, candidates: np.ndarray | None = None) -> None:
        self.a = arrays
        self.cost = arrays.cost
        self.candidates = candidate_nodes(arrays) if candidates is None else candidates
        self.remaining = arrays.count.copy()
        self.x: dict[tuple[int, int], int] = {}
        self.mem_free = arrays.mem_cap.astype(float).copy()
        self.cpu_free = arrays.cpu_cap.astype(float).copy()
        self.mem_slack = _SLACK * np.maximum(1.0, arrays.mem_cap)
        self.cpu_slack = _SLACK * np.maximum(1.0, arrays.cpu_cap)
        self.units = np.zeros((arrays.n_models, arrays.n_nodes), dtype=np.int64)  # units per instance
        self.unit_cap = None              # `latency`: requests an instance may serve at the ceiling
        if arrays.latency:
            from solver.queueing import unit_caps

            self.unit_cap = unit_caps(arrays)

    # --- capacity -------------------------------------------------------------------------
    def room(self, g: int, j: int) -> int:
        """Return how many more requests of group g node j can take."""
        a = self.a
        m = a.group_model[g]
        cpu = a.cpu[m]
        k = _BIG if cpu <= 0 else _units((self.cpu_free[j] + self.cpu_slack[j]) / cpu)
        mem = a.mem[m]
        if a.placement:
            if mem > 0 and self.units[m, j] == 0 and not a.deployed[m, j] and mem > self.mem_free[j] + self.mem_slack[j]:
                return 0
        elif mem > 0:
            k = min(k, _units((self.mem_free[j] + self.mem_slack[j]) / mem))
        if self.unit_cap is not None:
            k = min(k, int(self.unit_cap[m, j]) - int(self.units[m, j]))
        return max(k, 0)

    def room_all(self, g: int) -> np.ndarray:
        """Return `room(g, j)` for every node j at once."""
        a = self.a
        m = a.group_model[g]
        cpu = a.cpu[m]
        if cpu > 0:
            k = np.floor((self.cpu_free + self.cpu_slack) / cpu)
        else:
            k = np.full(a.n_nodes, float(_BIG))
        mem = a.mem[m]
        if a.placement:
            if mem > 0:
                closed = (self.units[m] == 0) & ~a.deployed[m] & (mem > self.mem_free + self.mem_slack)
                k = np.where(closed, 0.0, k)
        elif mem > 0:
            k = np.minimum(k, np.floor((self.mem_free + self.mem_slack) / mem))
        if self.unit_cap is not None:
            k = np.minimum(k, self.unit_cap[m] - self.units[m])
        return np.maximum(k, 0.0)

    # --- changes --------------------------------------------------------------------------
    def add(self, g: int, j: int, k: int) -> None:
        """Serve k more requests of group g on node j (the caller checked `room`)."""
        if k <= 0:
            return
        a = self.a
        m = a.group_model[g]
        self.x[(g, j)] = self.x.get((g, j), 0) + k
        self.remaining[g] -= k
        self.cpu_free[j] -= k * a.cpu[m]
        if a.placement:
            if self.units[m, j] == 0 and not a.deployed[m, j]:
                self.mem_free[j] -= a.mem[m]
        else:
            self.mem_free[j] -= k * a.mem[m]
        self.units[m, j] += k

    def remove(self, g: int, j: int, k: int) -> None:
        """Take k requests of group g off node j."""
        if k <= 0:
            return
        a = self.a
        m = a.group_model[g]
        left = self.x[(g, j)] - k
        if left:
            self.x[(g, j)] = left
        else:
            del self.x[(g, j)]
        self.remaining[g] += k
        self.cpu_free[j] += k * a.cpu[m]
        self.units[m, j] -= k
        if a.placement:
            if self.units[m, j] == 0 and not a.deployed[m, j]:
                self.mem_free[j] += a.mem[m]
        else:
            self.mem_free[j] += k * a.mem[m]

    # --- building blocks --------------------------------------------------------------------
    def fill_pairs(self, g_order: np.ndarray, j_order: np.ndarray, *, deadline: Deadline = NEVER) -> None:
        """Visit (g, j) pairs in order, giving each as many of g's remaining requests as fit."""
        remaining = self.remaining
        for n, (g, j) in enumerate(zip(g_order.tolist(), j_order.tolist())):
            if n % 4096 == 0 and deadline.expired():
                return
            if remaining[g] > 0:
                k = min(int(remaining[g]), self.room(g, j))
                if k > 0:
                    self.add(g, j, k)

    def fill_cheapest(self, *, deadline: Deadline = NEVER) -> None:
        """Greedy: every candidate pair by ascending unit cost, each filled as far as it fits
        (`latency`: by marginal cost, waiting included, in chunks)."""
        if self.a.latency:
            from solver.latency_search import fill_marginal

            fill_marginal(self, deadline=deadline)
            return
        g = np.repeat(np.arange(self.a.n_groups), self.candidates.shape[1])
        j = self.candidates.ravel()
        g, j = g[self.remaining[g] > 0], j[self.remaining[g] > 0]
        order = np.argsort(self.cost[g, j], kind="stable")
        self.fill_pairs(g[order], j[order], deadline=deadline)
        if self.remaining.any() and self.candidates.shape[1] < self.a.n_nodes:
            self.fill_groups(np.flatnonzero(self.remaining > 0), deadline=deadline)

    def fill_groups(self, group_order: np.ndarray, *, by: np.ndarray | None = None,
                    deadline: Deadline = NEVER) -> None:
        """Each group in turn to its nodes in ascending `by` (default: unit cost) while they have room."""
        key = self.cost if by is None else by
        for g in group_order.tolist():
            if deadline.expired():
                return
            if self.remaining[g] <= 0:
                continue
            for j in np.argsort(key[g], kind="stable").tolist():
                k = min(int(self.remaining[g]), self.room(g, j))
                if k > 0:
                    self.add(g, j, k)
                    if self.remaining[g] == 0:
                        break

    def improve(self, *, passes: int = 20, deadline: Deadline = NEVER) -> None:
        """Local search: move requests to a cheaper node with room until no move helps (or time is up)."""
        if self.a.latency:
            from solver.latency_search import improve_marginal

            improve_marginal(self, passes=passes, deadline=deadline)
            return
        cost = self.cost
        for _ in range(passes):
            moved = False
            for n, (g, j) in enumerate(sorted(self.x, key=lambda p: -cost[p])):
                if n % 1024 == 0 and deadline.expired():
                    return
                k = self.x.get((g, j), 0)
                if not k:
                    continue
                here = cost[g, j]
                for j2 in self.candidates[g].tolist():
                    if cost[g, j2] >= here - 1e-12:
                        break
                    if j2 == j:
                        continue
                    step = min(k, self.room(g, j2))   # j2's room does not depend on node j
                    if step > 0:
                        self.remove(g, j, step)
                        self.add(g, j2, step)
                        moved = True
                        k -= step
                        if not k:
                            break
            if not moved:
                return

    def shed_overload(self) -> None:
        """Take requests off over-capacity nodes, dearest first, leaving them unassigned."""
        for j in np.flatnonzero((self.mem_free < -self.mem_slack) | (self.cpu_free < -self.cpu_slack)).tolist():
            for (g, jj) in sorted((p for p in self.x if p[1] == j), key=lambda p: -self.cost[p]):
                while (g, jj) in self.x and (self.mem_free[j] < -self.mem_slack[j] or self.cpu_free[j] < -self.cpu_slack[j]):
                    self.remove(g, jj, 1)
                if self.mem_free[j] >= -self.mem_slack[j] and self.cpu_free[j] >= -self.cpu_slack[j]:
                    break

    # --- results ----------------------------------------------------------------------------
    @property
    def complete(self) -> bool:
        """Return True when every request is served."""
        return not self.remaining.any()

    def feasible(self) -> bool:
        """Return True when no node is over capacity."""
        return bool((self.mem_free >= -self.mem_slack).all() and (self.cpu_free >= -self.cpu_slack).all()
                    and (self.unit_cap is None or (self.units <= self.unit_cap).all()))

    def objective(self) -> float:
        """Return the assignment's value."""
        if self.a.latency:
            from solver.queueing import objective

            return objective(self.a, self.x, self.units, self.cost)
        return math.fsum(k * float(self.cost[g, j]) for (g, j), k in self.x.items())

    def assignment(self) -> list[Assignment]:
        """Return the assignment, ordered by group then node."""
        names = self.a.node_names
        return [Assignment(request=int(g), node=names[j], count=int(k)) for (g, j), k in sorted(self.x.items()) if k]

    def placement(self) -> dict[str, dict[str, float]]:
        """Return the 0/1 placement matrix (instances with traffic, plus deployed ones)."""
        return integral_placement(self.a, self.units > 0)


def integral_placement(arrays: Arrays, used: np.ndarray) -> dict[str, dict[str, float]]:
    """Return {model: {node: 1.0}} for the used (model, node) pairs and deployed ones; absent = 0."""
    on = np.zeros((arrays.n_models, arrays.n_nodes), dtype=bool)
    if used.size:
        on |= used
    if arrays.placement:
        on |= arrays.deployed
    out: dict[str, dict[str, float]] = {m: {} for m in arrays.model_names}
    for m, j in zip(*np.nonzero(on)):
        out[arrays.model_names[m]][arrays.node_names[j]] = 1.0
    return out
