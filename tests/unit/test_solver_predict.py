"""solver.predict: a plan's mean latency under its dispatch, against the objective and simulations.

- with the defaults (idle = back-to-back pace, Poisson arrivals, exponential service, `split`) it is
  the `latency` objective's own M/M/1 figure, checked on real solves;
- `pooled` is M/M/k: against the Erlang C values in closed form and a simulated central queue;
- `split` with bursty arrivals against a simulated G/G/1 (Kingman's formula is an approximation:
  the tolerance says how close it is here);
- the idle pace, the dispersion and overload each change the answer as documented.
"""
from __future__ import annotations

import dataclasses
import random

import pytest

from solver import Assignment, Problem, solve
from solver.predict import MAX_CHOICES, erlang_c, predicted_mean, simulated_mean
from solver.replay import gamma_arrivals
from tests.unit.test_solver_latency import tiny_latency


def one_model(count: int, nodes: int, *, s: float = 0.1, window: float = 100.0) -> tuple[Problem, list[Assignment]]:
    """`count` requests of model m spread evenly over `nodes` nodes 10 ms away."""
    names = [f"n{j}" for j in range(nodes)]
    problem = Problem.from_dict({
        "formulation": "latency", "window": window,
        "nodes": [{"name": n, "memory": 100, "cpu": 8} for n in names],
        "models": [{"name": "m", "memory": 10, "cpu": 0.01}],
        "requests": [{"model": "m", "count": count, "rtt": {n: 0.01 for n in names}}],
        "exec_time": {"m": {n: s for n in names}}})
    share, extra = divmod(count, nodes)
    return problem, [Assignment(0, n, share + (j < extra)) for j, n in enumerate(names)]


@pytest.mark.parametrize("seed", range(6))
def test_defaults_reproduce_the_objective_of_a_real_solve(seed):
    problem = tiny_latency(seed, window=20.0)
    problem = dataclasses.replace(problem, nodes=[dataclasses.replace(n, cost_per_request=0.0,
                                                                      cost_per_instance_hour=0.0)
                                                  for n in problem.nodes])
    solution = solve(problem, solver="highs")
    assert solution.status == "optimal"
    mean = predicted_mean(problem, solution.assignment, dispatch="split")
    assert mean == pytest.approx(solution.objective / problem.total_requests, rel=1e-9)


def test_erlang_c_closed_forms():
    assert erlang_c(1, 0.7) == pytest.approx(0.7)                  # M/M/1: P(wait) = rho
    assert erlang_c(2, 1.0) == pytest.approx(1 / 3)                # M/M/2 at a = 1: a^2 / (2 + a) / ... = 1/3
    assert erlang_c(3, 0.0) == 0.0
    assert erlang_c(1000, 900.0) < erlang_c(10, 9.0) < erlang_c(2, 1.8)   # pooling: fewer wait


def test_pooled_one_instance_is_split():
    problem, assignment = one_model(600, 1)                         # 6 req/s at 0.1 s: rho 0.6
    pooled = predicted_mean(problem, assignment, dispatch="pooled")
    assert pooled == pytest.approx(predicted_mean(problem, assignment, dispatch="split"))
    assert pooled == pytest.approx(0.01 + 0.1 / (1 - 0.6))


def _mmk_wait(rate: float, servers: int, service: float, n: int, seed: int) -> float:
    """Mean wait in a simulated FCFS central queue with Poisson arrivals and exponential service."""
    rng = random.Random(seed)
    free = [0.0] * servers
    t = total = 0.0
    for _ in range(n):
        t += rng.expovariate(rate)
        k = min(range(servers), key=free.__getitem__)
        start = max(t, free[k])
        total += start - t
        free[k] = start + rng.expovariate(1 / service)
    return total / n


def test_pooled_is_the_simulated_central_queue():
    problem, assignment = one_model(3200, 4)                       # 32 req/s over 4 x 10/s: rho 0.8
    mean = predicted_mean(problem, assignment, dispatch="pooled")
    wait = mean - 0.01 - 0.1
    simulated = _mmk_wait(32.0, 4, 0.1, 200_000, seed=1)
    assert wait == pytest.approx(simulated, rel=0.08)
    split = predicted_mean(problem, assignment, dispatch="split") - 0.01 - 0.1
    assert split == pytest.approx(0.1 * 0.8 / 0.2) and wait < split / 3   # pooling queues far less


def _gamma_deterministic_wait(rate: float, cv: float, service: float, n: int, seed: int) -> float:
    """Mean wait of a single FCFS server, Gamma inter-arrivals with coefficient of variation cv,
    a fixed service time (Lindley's recursion)."""
    rng = random.Random(seed)
    shape = 1 / cv ** 2
    w = total = 0.0
    for _ in range(n):
        gap = rng.gammavariate(shape, 1 / (shape * rate))
        w = max(0.0, w + service - gap)
        total += w
    return total / n


def test_split_with_bursts_is_kingman_near_a_simulated_gg1():
    problem, assignment = one_model(800, 1)                         # 80% busy, one instance
    scv = {"m": {"n0": 0.0}}                                        # fixed service time
    poisson = predicted_mean(problem, assignment, dispatch="split", scv=scv) - 0.01 - 0.1
    bursty = predicted_mean(problem, assignment, dispatch="split", scv=scv, dispersion={"m": 4.0}) - 0.01 - 0.1
    assert bursty == pytest.approx(4 * poisson)                      # (4 + 0) / 2 against (1 + 0) / 2
    assert poisson == pytest.approx(0.1 * 0.8 / 0.2 / 2)            # M/D/1: half of M/M/1
    simulated = _gamma_deterministic_wait(8.0, 2.0, 0.1, 300_000, seed=2)
    assert bursty == pytest.approx(simulated, rel=0.15)            # Kingman: 0.80 s here, simulated 0.89


def test_a_random_share_of_a_bursty_stream_is_smoother():
    problem, assignment = one_model(1000, 2)                        # 10 req/s over two: rho 0.5 each
    got = predicted_mean(problem, assignment, dispatch="split", dispersion={"m": 9.0}) - 0.01 - 0.1
    # each instance gets half the stream: c_a^2 = 0.5 * 9 + 0.5 = 5, waiting factor (5 + 1) / 2 = 3
    assert got == pytest.approx(0.1 * 0.5 / 0.5 * 3)


def test_idle_pace_at_low_load_and_the_back_to_back_pace_near_saturation():
    idle = {"m": {"n0": 0.06}}
    problem, light = one_model(1, 1, window=10_000.0)               # rho 1e-5
    assert predicted_mean(problem, light, dispatch="split", idle=idle) == pytest.approx(0.01 + 0.06, rel=1e-3)
    problem, busy = one_model(800, 1)                               # rho 0.8: 0.06 + 0.04 * 0.8 of service
    got = predicted_mean(problem, busy, dispatch="split", idle=idle)
    assert got == pytest.approx(0.01 + 0.06 + 0.04 * 0.8 + 0.1 * 0.8 / 0.2)
    # in a pool a request runs back to back only when it has to wait: with probability Erlang C, not rho
    problem, pooled = one_model(1800, 4)                            # 18 req/s over 4 x 10/s: rho 0.45
    idle4 = {"m": {f"n{j}": 0.06 for j in range(4)}}
    c = erlang_c(4, 1.8)
    assert 0.1 < c < 0.45
    got = predicted_mean(problem, pooled, dispatch="pooled", idle=idle4)
    assert got == pytest.approx(0.01 + 0.06 + 0.04 * c + c * 0.1 / (4 * 0.55))
    faster_than_b2b = {"m": {"n0": 0.5}}                            # an idle figure above b2b is capped at it
    assert predicted_mean(problem, busy, dispatch="split", idle=faster_than_b2b) == pytest.approx(
        predicted_mean(problem, busy, dispatch="split"))


def test_overload_unknown_window_nothing_assigned_and_a_bad_dispatch():
    problem, assignment = one_model(1000, 1)                        # 10 req/s at 0.1 s: rho 1
    assert predicted_mean(problem, assignment, dispatch="split") is None
    assert predicted_mean(problem, assignment, dispatch="pooled") is None
    problem, assignment = one_model(100, 2)
    assert predicted_mean(dataclasses.replace(problem, window=None), assignment, dispatch="pooled") is None
    assert predicted_mean(problem, [], dispatch="pooled") is None
    with pytest.raises(ValueError, match="dispatch must be one of pooled, split"):
        predicted_mean(problem, assignment, dispatch="random")


# -- simulated_mean: expected-delay's own choice replayed (solver.replay) -------------------------------

def test_simulated_one_node_is_m_d_1():
    problem, assignment = one_model(5_000, 1, window=1_000.0)       # 5 req/s at 0.1 s, deterministic: rho 0.5
    got = simulated_mean(problem, assignment)
    assert got == pytest.approx(0.01 + 0.1 + 0.5 * 0.1 / (2 * 0.5), rel=0.05)     # Pollaczek-Khinchine, c_s = 0
    assert got == simulated_mean(problem, assignment)                # seeded: the same figure every run
    bursty = simulated_mean(problem, assignment, dispersion={"m": 9.0})
    # against Lindley's recursion over Gamma gaps of SCV 9: Kingman's (c_a^2 + c_s^2) / 2 = 4.5 times
    # M/D/1's waiting is 3 times too little for gaps this clumped, which is why the replay exists
    draw, wait, total, n = random.Random(1), 0.0, 0.0, 200_000
    for _ in range(n):
        wait = max(0.0, wait + 0.1 - draw.gammavariate(1 / 9, 9 / 5))
        total += wait
    assert bursty - 0.11 == pytest.approx(total / n, rel=0.2)
    assert bursty - 0.11 > 2 * 4.5 * (got - 0.11)


def near_and_far(count: int, far_rtt: float) -> Problem:
    """One group of `count` requests over a 1,000 s window, 1 ms from `near` and `far_rtt` from
    `far`, both serving in 0.1 s."""
    return Problem.from_dict({
        "formulation": "latency", "window": 1_000.0,
        "nodes": [{"name": "near", "memory": 100, "cpu": 8}, {"name": "far", "memory": 100, "cpu": 8}],
        "models": [{"name": "m", "memory": 10, "cpu": 0.01}],
        "requests": [{"model": "m", "count": count, "rtt": {"near": 0.001, "far": far_rtt}}],
        "exec_time": {"m": {"near": 0.1, "far": 0.1}}})


def test_simulated_sends_to_the_far_node_only_when_the_near_queue_is_longer_than_the_detour():
    problem = near_and_far(1_000, 0.5)
    split = [Assignment(0, "near", 500), Assignment(0, "far", 500)]   # the plan splits; dispatch does not
    light = simulated_mean(problem, split)                             # 1 req/s: rho 0.1 on the near node alone
    assert light == pytest.approx(0.001 + 0.1 + 0.1 * 0.1 / (2 * 0.9), rel=0.05)
    assert predicted_mean(problem, split, dispatch="pooled") > 0.25   # the closed form charges the detour
    # Mode 1: an instance that stays deployed is a choice too, though the plan routes nothing there
    near_only = dataclasses.replace(problem, deployed=[("m", "far")])
    assert simulated_mean(near_only, [Assignment(0, "near", 1_000)]) == pytest.approx(light, rel=0.05)


def test_simulated_chooses_at_the_front_ends_quantile_with_the_services_variability():
    problem = near_and_far(5_000, 0.05)
    split = [Assignment(0, "near", 2_500), Assignment(0, "far", 2_500)]
    plain = simulated_mean(problem, split)
    # at the mean (quantile 0.5) the variability moves no choice
    assert simulated_mean(problem, split, scv={"m": {"near": 1.0}}, quantile=0.5) == plain
    # at 0.9 a near service varying with CV 1 counts 128 ms beyond its mean, more than the 49 ms
    # detour: the far node takes requests it would not at the mean, and the mean latency grows
    assert simulated_mean(problem, split, scv={"m": {"near": 1.0}}) > plain + 0.02
    # equally variable nodes: the margin is the same on both, the choice barely moves
    assert simulated_mean(problem, split, scv={"m": {"near": 1.0, "far": 1.0}}) == pytest.approx(plain, rel=0.02)


def test_simulated_refuses_overload_an_unknown_window_nothing_and_a_too_large_replay():
    problem, assignment = one_model(1000, 1)                           # 10 req/s at 0.1 s: rho 1
    assert simulated_mean(problem, assignment) is None
    problem, assignment = one_model(100, 2)
    assert simulated_mean(dataclasses.replace(problem, window=None), assignment) is None
    assert simulated_mean(problem, []) is None
    assert simulated_mean(problem, assignment, arrivals=MAX_CHOICES) is None    # 2 choices each: too many


def test_gamma_arrivals_have_the_asked_rate_and_dispersion():
    rates = {("m", "a"): 30.0, ("m", "b"): 10.0, ("q", "a"): 5.0}
    drawn = gamma_arrivals(rates, {"m": 9.0}, horizon=2_000.0, seed=3)
    assert drawn == sorted(drawn, key=lambda a: a.offset) and drawn == gamma_arrivals(rates, {"m": 9.0},
                                                                                       horizon=2_000.0, seed=3)
    for model, rate, idc in (("m", 40.0, 9.0), ("q", 5.0, 1.0)):
        per_second = [0] * 2_000
        for a in drawn:
            if a.model == model:
                per_second[int(a.offset)] += 1
        mean = sum(per_second) / len(per_second)
        var = sum((c - mean) ** 2 for c in per_second) / len(per_second)
        assert mean == pytest.approx(rate, rel=0.1) and var / mean == pytest.approx(idc, rel=0.25)
    zones = [a.zone for a in drawn if a.model == "m"]
    assert zones.count("a") / len(zones) == pytest.approx(0.75, abs=0.02)
