"""Greedy fill and local search for the `latency` formulation, by marginal cost (waiting included).

The fixed-time formulations rank (group, node) pairs by a constant unit cost; here a request's
cost on an instance grows with the instance's load, so requests are placed in chunks, each on the
node where its marginal cost (round trip + service + the extra waiting it causes + opening the
instance) is lowest, and moves are accepted when the summed latency falls. Pure numpy.
"""
from __future__ import annotations

import numpy as np

from solver.deadline import NEVER, Deadline
from solver.queueing import wait

CHUNKS = 8          # a group's requests are placed in about this many steps
MOVE_NODES = 16     # nodes a request may move to in one local-search step (its cheapest candidates)


def _marginal(packer, g: int, nodes: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Summed cost of adding k requests of group g on each of `nodes` (inf where k == 0)."""
    a = packer.a
    m = int(a.group_model[g])
    n = packer.units[m, nodes]
    extra = wait(a, m, nodes, n + k) - wait(a, m, nodes, n)
    opening = np.where((n == 0) & ~a.deployed[m, nodes], a.cost_inst[nodes], 0.0)
    out = k * packer.cost[g, nodes] + extra + opening
    return np.where(k > 0, out, np.inf)


def fill_marginal(packer, *, deadline: Deadline = NEVER) -> None:
    """Place every remaining request in chunks on its cheapest node by marginal cost per request."""
    a = packer.a
    order = np.argsort(-packer.remaining, kind="stable")
    for n_done, g in enumerate(order.tolist()):
        if n_done % 256 == 0 and deadline.expired():
            return
        chunk = max(1, -(-int(packer.remaining[g]) // CHUNKS))
        nodes = packer.candidates[g]
        widened = False
        while packer.remaining[g] > 0:
            room = packer.room_all(g)[nodes]
            k = np.minimum(room, min(chunk, int(packer.remaining[g])))
            if not (k > 0).any():
                if widened or len(nodes) == a.n_nodes:
                    break
                nodes, widened = np.arange(a.n_nodes), True
                continue
            per = _marginal(packer, g, nodes, k) / np.maximum(k, 1)
            best = int(np.argmin(per))
            packer.add(g, int(nodes[best]), int(k[best]))


def improve_marginal(packer, *, passes: int = 20, deadline: Deadline = NEVER) -> None:
    """Move requests (all of a pair, half, or one) to the node that lowers the summed latency most."""
    a = packer.a
    for _ in range(passes):
        moved = False
        for n_done, (g, j) in enumerate(sorted(packer.x, key=lambda p: -packer.x[p])):
            if n_done % 256 == 0 and deadline.expired():
                return
            have = packer.x.get((g, j), 0)
            if not have:
                continue
            m = int(a.group_model[g])
            nodes = packer.candidates[g][:MOVE_NODES]
            nodes = nodes[nodes != j]
            if not len(nodes):
                continue
            best = (-1e-9, None, 0)
            for step in sorted({have, max(1, have // 2), 1}, reverse=True):
                n = int(packer.units[m, j])
                saved = float(step * packer.cost[g, j] + wait(a, m, j, n) - wait(a, m, j, n - step))
                if n == step and not a.deployed[m, j]:
                    saved += float(a.cost_inst[j])
                room = packer.room_all(g)[nodes]
                k = np.where(room >= step, step, 0)
                delta = _marginal(packer, g, nodes, k) - saved
                i = int(np.argmin(delta))
                if delta[i] < best[0]:
                    best = (float(delta[i]), int(nodes[i]), step)
            if best[1] is not None:
                packer.remove(g, j, best[2])
                packer.add(g, best[1], best[2])
                moved = True
        if not moved:
            return
