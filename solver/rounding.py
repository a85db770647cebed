"""Turn a relaxed (fractional) solution into a feasible integral assignment: round, repair, improve.

Used by the `ipopt` and `ampl` backends, whose relaxation gives the thesis's fractional
"probabilities". The relaxation's integral parts are kept where they fit, the rest is placed by
ascending unit cost, then a local search moves requests to cheaper nodes with room. When that
cannot place everything (memory packing can defeat a greedy), a first-fit-decreasing order by
memory is tried as well; the best complete assignment wins.
"""
from __future__ import annotations

import numpy as np

from solver.data import Arrays
from solver.deadline import NEVER, Deadline
from solver.packing import Packer


def round_relaxed(arrays: Arrays, pair_g: np.ndarray, pair_j: np.ndarray, x: np.ndarray,
                  *, candidates: np.ndarray | None = None, deadline: Deadline = NEVER) -> Packer | None:
    """Return a complete, feasible Packer built from fractional x over (pair_g, pair_j), or None.

    With a deadline, every loop stops when it passes: the local search keeps what it improved so
    far, and a fill that ran out of time gives None (the caller reports `time_limit`).
    """
    attempts = []
    order = np.lexsort((arrays.cost[pair_g, pair_j], -x))        # by x descending, then cheaper first
    keep = np.floor(x[order] + 1e-6) >= 1                        # only the pairs with an integral part
    packer = Packer(arrays, candidates)
    for g, j, value in zip(pair_g[order][keep].tolist(), pair_j[order][keep].tolist(), x[order][keep].tolist()):
        units = min(int(np.floor(value + 1e-6)), int(packer.remaining[g]))
        if units > 0:
            packer.add(g, j, min(units, packer.room(g, j)))
    packer.fill_cheapest(deadline=deadline)
    attempts.append(packer)
    if not packer.complete and not deadline.expired():
        attempts.append(first_fit_decreasing(arrays, candidates, deadline=deadline))
    best = None
    for attempt in attempts:
        if attempt.complete and attempt.feasible():
            attempt.improve(deadline=deadline)
            if best is None or attempt.objective() < best.objective():
                best = attempt
    return best


def first_fit_decreasing(arrays: Arrays, candidates: np.ndarray | None = None, *,
                         deadline: Deadline = NEVER) -> Packer:
    """Place the groups with the most memory-hungry requests first, each to its cheapest nodes."""
    packer = Packer(arrays, candidates)
    per_request = arrays.mem[arrays.group_model] + 1e-9 * arrays.cpu[arrays.group_model]
    packer.fill_groups(np.argsort(-per_request, kind="stable"), deadline=deadline)
    return packer
