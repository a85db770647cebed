"""testbed/trace.py: the seeded trace is deterministic and has the scenario's rates, CV, zones and popularity."""
from __future__ import annotations

import copy

import numpy as np
import pytest

from testbed.scenario import SCENARIOS_DIR, load_scenario, parse_scenario
from testbed.trace import counts, generate_trace, phase_arrival_times, read_trace, summarize, write_trace

ZONES = [{"name": "zone-1", "rtt": {"nano-1": 0.004, "xavier": 0.012}},
         {"name": "zone-2", "rtt": {"nano-1": 0.030, "xavier": 0.010}}]
NODES = [{"name": "nano-1", "class": "small", "cpu": 0.25, "memory": 250000},
         {"name": "xavier", "class": "large", "cpu": 1.0, "memory": 800000}]


def scenario(*phases, seed=7):
    return parse_scenario({"seed": seed, "nodes": copy.deepcopy(NODES), "zones": copy.deepcopy(ZONES),
                           "phases": [dict(p) for p in phases]})


def phase(**kw):
    return {"duration": 60, "rate": 20, "burstiness": 1.0, "zones": {"zone-1": 0.5, "zone-2": 0.5},
            "popularity": {"zipf": 1.1}, **kw}


def test_same_seed_same_trace_other_seed_other_trace():
    s = load_scenario(SCENARIOS_DIR / "default.yaml")
    a, b = generate_trace(s), generate_trace(s)
    assert a == b and len(a) > 1000
    other = generate_trace(scenario(phase(), seed=8))
    assert [x.offset for x in generate_trace(scenario(phase()))] != [x.offset for x in other]
    assert [x.index for x in a] == list(range(len(a))) and len({x.request_id for x in a}) == len(a)
    assert all(x.request_id.startswith("tb-7-") for x in a)


def test_changing_one_phase_leaves_the_others_alone():
    first = generate_trace(scenario(phase(), phase(rate=10)))
    second = generate_trace(scenario(phase(), phase(rate=30)))
    assert [a for a in first if a.phase == 0] == [a for a in second if a.phase == 0]


def test_offsets_are_sorted_and_inside_their_phase():
    s = scenario(phase(duration=30), phase(duration=20, burstiness=3.0), phase(duration=10, burstiness=0))
    trace = generate_trace(s)
    offsets = [a.offset for a in trace]
    assert offsets == sorted(offsets)
    for a in trace:
        p = s.phases[a.phase]
        assert p.start <= a.offset < p.end


@pytest.mark.parametrize("burstiness", [0.5, 1.0, 3.0])
def test_counts_match_rate_times_duration_over_a_long_trace(burstiness):
    s = scenario(phase(duration=2000, rate=20, burstiness=burstiness), phase(duration=1000, rate=5, burstiness=burstiness))
    per_phase = np.bincount([a.phase for a in generate_trace(s)])
    for p, n in zip(s.phases, per_phase):
        expected = p.rate * p.duration
        # the count of a renewal process has sd ~ CV * sqrt(n): 4 sd
        assert abs(n - expected) <= 4 * max(burstiness, 0.1) * expected ** 0.5 + 1


def test_constant_spacing_with_cv_zero():
    trace = generate_trace(scenario(phase(duration=2, rate=10, burstiness=0)))
    assert len(trace) == 20
    assert np.allclose(np.diff([a.offset for a in trace]), 0.1)


def test_rate_zero_is_an_idle_phase():
    trace = generate_trace(scenario(phase(duration=5, rate=0), phase(duration=5, rate=4)))
    assert trace and all(a.phase == 1 and a.offset >= 5 for a in trace)


@pytest.mark.parametrize("cv", [0.5, 1.0, 2.0, 3.0])
def test_inter_arrival_times_have_the_mean_and_cv_asked_for(cv):
    rng = np.random.Generator(np.random.PCG64(1))
    times = phase_arrival_times(rng, 50.0, cv, 4000.0)
    gaps = np.diff(times)
    assert gaps.mean() == pytest.approx(1 / 50, rel=0.05)
    assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.1)


def test_zone_weights_are_followed():
    trace = generate_trace(scenario(phase(duration=1000, zones={"zone-1": 0.8, "zone-2": 0.2})))
    share = sum(a.zone == "zone-1" for a in trace) / len(trace)
    assert share == pytest.approx(0.8, abs=0.02)


def test_zipf_popularity_follows_catalog_order():
    s = scenario(phase(duration=1000, rate=20, popularity={"zipf": 1.1}))
    models = s.models
    trace = generate_trace(s)
    n = [sum(a.model == m for a in trace) for m in models]
    assert n == sorted(n, reverse=True) and all(n)          # rank 1 (first in the catalog) most popular
    expected = np.array([1 / r ** 1.1 for r in range(1, len(models) + 1)])
    expected /= expected.sum()
    assert np.allclose(np.array(n) / len(trace), expected, atol=0.02)


def test_explicit_popularity_and_zero_weights():
    s = scenario(phase(duration=500, popularity={"digits_forest": 3, "half_plus_two": 1, "digits_logreg": 0}))
    trace = generate_trace(s)
    models = {a.model for a in trace}
    assert models == {"digits_forest", "half_plus_two"}
    assert sum(a.model == "digits_forest" for a in trace) / len(trace) == pytest.approx(0.75, abs=0.03)


def test_summary_counts_and_round_trip(tmp_path):
    s = load_scenario(SCENARIOS_DIR / "smoke.yaml")
    trace = generate_trace(s)
    summary = summarize(trace)
    assert summary["total"] == len(trace) == sum(counts(trace).values())
    assert sum(p["total"] for p in summary["phases"].values()) == len(trace)
    for (ph, zone, model), n in counts(trace).items():
        assert summary["phases"][str(ph)]["zones"][zone][model] == n
    write_trace(trace, tmp_path / "t.jsonl")
    assert read_trace(tmp_path / "t.jsonl") == trace
