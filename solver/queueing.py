"""The `latency` formulation's queueing model: each instance is an M/M/1 queue (pure numpy).

An instance of model m on node j serving n of the window's requests (W seconds) has arrival rate
n / W, service time s = exec_time[m, j] (measured at low load) and utilisation rho = s n / W. Its
requests each spend s / (1 - rho) in it, so their summed time is n s + wait(n) with

    wait(n) = s n rho / (1 - rho) = W h(rho),   h(rho) = rho^2 / (1 - rho),

convex and increasing on [0, 1). `h` does not depend on s, so one set of tangent points in rho
serves every instance, and a tangent cut's error is W times that of h (see `tangent_points`).
Why M/M/1 and not M/G/1: docs/solver.md.
"""
from __future__ import annotations

import functools
import math

import numpy as np

from solver.data import Arrays

BIG = float(1 << 62)


def h(rho: np.ndarray | float) -> np.ndarray | float:
    """Return rho^2 / (1 - rho) (inf at or above 1)."""
    rho = np.asarray(rho, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(rho < 1, rho * rho / (1 - rho), np.inf)
    return out if out.ndim else float(out)


def h_slope(rho: np.ndarray | float) -> np.ndarray | float:
    """Return h'(rho) = rho (2 - rho) / (1 - rho)^2."""
    rho = np.asarray(rho, dtype=float)
    out = rho * (2 - rho) / (1 - rho) ** 2
    return out if out.ndim else float(out)


def unit_caps(arrays: Arrays) -> np.ndarray:
    """Return (M, S) the most requests of the window an instance may serve at the utilisation ceiling."""
    s = arrays.exec_time
    with np.errstate(divide="ignore"):
        cap = np.where(s > 0, np.floor(arrays.max_util * arrays.window / np.where(s > 0, s, 1.0) + 1e-9), BIG)
    return np.minimum(cap, BIG)


def wait(arrays: Arrays, m: np.ndarray | int, j: np.ndarray | int, n: np.ndarray | float) -> np.ndarray | float:
    """Return the summed waiting time (s) of n requests on instance (m, j), beyond their service
    (at or above utilisation 1: a huge finite number, so searches never pick it)."""
    rho = np.minimum(arrays.exec_time[m, j] * n / arrays.window, 1 - 1e-12)
    return arrays.window * rho * rho / (1 - rho)


def tangent_points(max_util: float, tol: float) -> tuple[np.ndarray, float]:
    """Return tangent points in [0, max_util] whose cuts under-estimate h by at most `tol`
    anywhere in it, and the largest such error (for W h: W times it, per instance).

    Points are added left to right: the next one is the furthest whose tangent meets the
    current one where h exceeds both by <= tol (found by bisection; h is convex). Memoised: the
    bisections cost tens of ms, as much as a thesis-scale solve."""
    points, error = _tangent_points(float(max_util), float(tol))
    return np.array(points), error


@functools.lru_cache(maxsize=32)
def _tangent_points(max_util: float, tol: float) -> tuple[tuple[float, ...], float]:
    points = [0.0]
    while points[-1] < max_util:
        a = points[-1]
        lo, hi = a, max_util
        if _gap(a, hi) <= tol:
            points.append(max_util)
            break
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if _gap(a, mid) <= tol else (lo, mid)
        points.append(lo if lo > a else hi)
    points = np.unique(points)
    errors = [_gap(a, b) for a, b in zip(points, points[1:])]
    return tuple(points.tolist()), max(errors, default=0.0)


def _gap(a: float, b: float) -> float:
    """Largest h minus max(tangent at a, tangent at b) over [a, b]: at the tangents' crossing."""
    if b - a < 1e-15:
        return 0.0
    ta, tb = h_slope(a), h_slope(b)
    if tb - ta < 1e-15:
        return 0.0
    x = (h(b) - tb * b - h(a) + ta * a) / (ta - tb)
    return float(h(x) - (h(a) + ta * (x - a)))


def cut_rows(arrays: Arrays, m: np.ndarray, j: np.ndarray, rhos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (slope per request, intercept), each (len(m), len(rhos)), of the tangent cuts
    t >= slope * n + intercept of wait(n) on instances (m, j) at the given utilisations
    (an instance with no service time has no waiting: slope and intercept 0)."""
    s = arrays.exec_time[m, j].astype(float)[:, None]
    w = arrays.window
    rhos = np.asarray(rhos, dtype=float)[None, :]
    slope = s * h_slope(rhos)                        # d(W h(s n / W))/dn
    with np.errstate(divide="ignore", invalid="ignore"):
        intercept = np.where(s > 0, w * h(rhos) - slope * rhos * w / np.where(s > 0, s, 1.0), 0.0)
    return np.where(s > 0, slope, 0.0), intercept


def objective(arrays: Arrays, x: dict[tuple[int, int], int], units: np.ndarray,
              cost: np.ndarray | None = None) -> float:
    """Return the latency objective of a packer's assignment (float; the checker's is exact).
    `cost`: arrays.cost computed once by the caller (the property builds the whole G x S matrix)."""
    cost = arrays.cost if cost is None else cost
    lin = math.fsum(k * float(cost[g, j]) for (g, j), k in x.items())
    m, j = np.nonzero(units)
    waits = wait(arrays, m, j, units[m, j])
    opened = (units > 0) | arrays.deployed
    return lin + math.fsum(np.asarray(waits).tolist()) + float((opened * arrays.cost_inst[None, :]).sum())


def max_rho(arrays: Arrays, units: np.ndarray) -> float:
    """Return the largest instance utilisation of an assignment."""
    return float((arrays.exec_time * units / arrays.window).max(initial=0.0))
