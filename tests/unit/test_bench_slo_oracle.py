"""bench/slo_oracle.py: the discrete-event replay a dispatcher with perfect knowledge is measured on."""
import json

import pytest

from bench.slo_oracle import main, measured_overheads, simulate
from testbed.trace import Arrival

RTT = {"z": {"near": 0.010, "far": 0.050}}
SERVICE = {("m", "near"): (0.040, 0.060), ("m", "far"): (0.020, 0.020)}


def burst(n: int, gap: float = 0.0) -> list[Arrival]:
    return [Arrival(offset=k * gap, phase=0, zone="z", model="m", request_id=f"r{k}", index=k) for k in range(n)]


def test_earliest_finish_queues_exactly_and_spills_to_the_far_node():
    r = simulate(burst(3), RTT, SERVICE, slo=0.1, overhead=0.0, dispatcher="earliest-finish", edge={"near"})
    # 1st: near, idle, 10 + 40 = 50 ms; 2nd: near would end at 5 + 40 + 60 + 5 = 110, far 25 + 20 + 25 = 70;
    # 3rd: near 110 against far 25 + 20 + 20 + 25 = 90: far again
    assert r.within == 3 and r.mean == pytest.approx((0.050 + 0.070 + 0.090) / 3)
    assert r.busy == pytest.approx({"near": 0.040, "far": 0.040})


def test_hopeless_requests_are_dropped_only_by_the_dropping_dispatcher():
    arrivals = burst(8)
    keep = simulate(arrivals, RTT, SERVICE, slo=0.1, overhead=0.0, dispatcher="earliest-finish", edge={"near"})
    drop = simulate(arrivals, RTT, SERVICE, slo=0.1, overhead=0.0, dispatcher="earliest-finish, hopeless dropped",
                    edge={"near"})
    assert keep.dropped == 0 and drop.dropped > 0 and drop.within >= keep.within
    assert drop.within + drop.dropped <= drop.requests


def test_nearest_never_uses_the_cloud_and_expected_delay_only_guesses():
    arrivals = burst(4, gap=0.001)
    nearest = simulate(arrivals, RTT, SERVICE, slo=0.1, overhead=0.002, dispatcher="nearest", edge={"near"})
    assert set(nearest.busy) == {"near"} and nearest.within == 1
    guess = simulate(arrivals, RTT, SERVICE, slo=0.1, overhead=0.0, dispatcher="expected-delay", edge={"near"},
                     drain=1.0)
    assert set(guess.busy) == {"near", "far"} and guess.within >= nearest.within


def test_the_cli_refuses_bad_input_in_one_line(capsys, tmp_path):
    assert main(["--overhead", "-1"]) == 2
    assert main(["--scenario", str(tmp_path / "none.yaml")]) == 2
    assert main(["--quantile", "0.4"]) == 2
    assert main(["--seeds", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and all(line.startswith("slo_oracle: ") for line in err)


def test_expected_delay_at_a_quantile_avoids_a_variable_node():
    # near: 10 ms + 40 ms idle, CV 0.5; far: 50 + 20 ms, deterministic. At the mean a lone request
    # goes near (50 < 70 ms); at z = 1.28 near counts 50 + 0.64 * 40 = 75.6 ms: far.
    one = burst(1)
    mean = simulate(one, RTT, SERVICE, slo=0.1, overhead=0.0, dispatcher="expected-delay", edge={"near"})
    tail = simulate(one, RTT, SERVICE, slo=0.1, overhead=0.0, dispatcher="expected-delay", edge={"near"},
                    spread={("m", "near"): 0.64})
    assert set(mean.busy) == {"near"} and set(tail.busy) == {"far"}


def test_variability_draws_each_service_around_its_mean_seeded():
    arrivals = burst(400, gap=1.0)          # never queued: each request alone on the near node
    flat = simulate(arrivals, {"z": {"near": 0.010}}, SERVICE, slo=0.1, overhead=0.0, dispatcher="nearest",
                    edge={"near"}, keep=True)
    assert flat.latencies == pytest.approx([0.050] * 400)
    varied = [simulate(arrivals, {"z": {"near": 0.010}}, SERVICE, slo=0.1, overhead=0.0, dispatcher="nearest",
                       edge={"near"}, variability={("m", "near"): 0.25}, seed=seed, keep=True) for seed in (1, 1, 2)]
    assert varied[0].latencies == varied[1].latencies != varied[2].latencies      # seeded
    work = [lat - 0.010 for lat in varied[0].latencies]
    mean = sum(work) / len(work)
    cv = (sum((w - mean) ** 2 for w in work) / len(work)) ** 0.5 / mean
    assert mean == pytest.approx(0.040, rel=0.08) and cv == pytest.approx(0.5, rel=0.15)
    assert varied[0].busy["near"] == pytest.approx(sum(work))
    # a model or node without an scv stays deterministic
    other = simulate(arrivals, {"z": {"near": 0.010}}, SERVICE, slo=0.1, overhead=0.0, dispatcher="nearest",
                     edge={"near"}, variability={("x", "near"): 0.25}, keep=True)
    assert other.latencies == flat.latencies


def test_overheads_can_be_drawn_per_request_from_a_runs_records(tmp_path):
    arrivals = burst(2, gap=1.0)
    slow = simulate(arrivals, RTT, SERVICE, slo=0.1, overhead=[0.0, 0.080], dispatcher="earliest-finish",
                    edge={"near"})
    assert slow.within == 1 and slow.mean == pytest.approx((0.050 + 0.130) / 2)
    records = tmp_path / "requests.jsonl"
    rows = [{"ok": True, "phase": 3, "zone": "z", "node": "near", "latency": 0.075, "server": 0.060},
            {"ok": False, "phase": 3, "zone": "z", "node": None, "latency": 10.0, "server": None},
            {"ok": True, "phase": 1, "zone": "z", "node": "far", "latency": 0.070, "server": 0.019}]
    records.write_text("\n".join(json.dumps(r) for r in rows))
    got = measured_overheads(records, RTT)
    assert sorted(got) == [1, 3] and got[3] == pytest.approx([0.005]) and got[1] == pytest.approx([0.001])


def test_spread_at_a_quantile():
    from solver.replay import spread_at

    assert spread_at(0.5, {("m", "near"): 0.25}) is None                 # the median: choose by the mean
    got = spread_at(0.9, {("m", "near"): 0.25, ("m", "far"): 0.0})
    assert got == {("m", "near"): pytest.approx(1.2816 * 0.5, rel=1e-4)}  # z(0.9) * CV; no scv, no margin
