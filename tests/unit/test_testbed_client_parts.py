"""testbed/clients.py, pure parts: Server-Timing parsing, example bodies, the summary."""
from __future__ import annotations

import pytest

from testbed.clients import (ClientResults, RequestRecord, example_body, parse_server_timing, run_clients,
                             server_seconds)
from testbed.scenario import SCENARIOS_DIR, load_scenario


@pytest.mark.parametrize("header, expected", [
    ("app;dur=12.5", {"app": 0.0125}),
    ('db;dur=53, app;dur=47.2;desc="a; b, c"', {"db": 0.053, "app": 0.0472}),
    ('cache;desc="Cache Read";dur=23.2', {"cache": 0.0232}),
    ("miss, app;dur=1", {"miss": None, "app": 0.001}),
    ('app;dur="3"', {"app": 0.003}),
    ("app;DUR=2", {"app": 0.002}),
    ("app;dur=abc, x;dur=-1, y;dur=nan", {"app": None, "x": None, "y": None}),
    ("app;dur=1, app;dur=2", {"app": 0.001}),          # the first occurrence wins
    ("app;dur=20, pace;dur=70, pace-idle;dur=48.5", {"app": 0.020, "pace": 0.070, "pace-idle": 0.0485}),
    ("", {}),
    (None, {}),
])
def test_parse_server_timing(header, expected):
    assert parse_server_timing(header) == pytest.approx(expected) if expected else parse_server_timing(header) == {}


def test_repeated_headers_and_the_server_part():
    assert parse_server_timing(["db;dur=5", "app;dur=7"]) == pytest.approx({"db": 0.005, "app": 0.007})
    assert server_seconds("total;dur=30, app;dur=20") == pytest.approx(0.020)      # app wins
    assert server_seconds("proxy;dur=30, model;dur=20") == pytest.approx(0.030)    # else the largest
    assert server_seconds("miss") is None and server_seconds(None) is None
    assert server_seconds(parse_server_timing("wait;dur=5, app;dur=20, pace;dur=70")) == pytest.approx(0.020)


def test_example_bodies_fit_the_shipped_models():
    assert example_body("half_plus_two") == {"instances": [1.0, 2.0, 5.0]}
    assert len(example_body("digits_forest")["instances"][0]) == 64


def test_summary_counts_failures_as_the_timeout():
    def rec(i, phase, zone, ok, latency, error=None, started=0.0):
        return RequestRecord(request_id=f"r{i}", index=i, phase=phase, zone=zone, client=0, model="m",
                             scheduled=0.0, started=started, node="n" if ok else None, ok=ok,
                             latency=latency, error=error, network=latency if ok else None)
    records = [rec(0, 0, "a", True, 0.05), rec(1, 0, "a", True, 0.2), rec(2, 0, "b", False, 10.0, "timeout"),
               rec(3, 1, "a", False, 10.0, "client overload", started=None)]
    results = ClientResults(mode="lookup", frontend="http://x", scheduled=5, records=records, seconds=1.0,
                            started_at=0.0, timeout=10.0, slo=0.1)
    s = results.summary()
    assert (s["arrivals"], s["sent"], s["ok"], s["failed"], s["not_sent_stopped"]) == (4, 3, 2, 2, 1)
    assert s["latency"]["p99"] == 10.0 and s["latency"]["p50"] == 0.2 and s["latency_ok"]["mean"] == pytest.approx(0.125)
    assert s["slo_met"] == 0.25 and s["errors"] == {"timeout": 1, "client overload": 1}
    assert s["phases"]["0"]["zones"]["a"]["ok"] == 2 and s["phases"]["0"]["zones"]["b"]["failed"] == 1
    assert s["phases"]["1"]["sent"] == 0 and s["phases"]["0"]["nodes"] == {"n": 2}


def test_bad_arguments_are_refused():
    scenario = load_scenario(SCENARIOS_DIR / "smoke.yaml")
    with pytest.raises(ValueError, match="mode"):
        run_clients("http://127.0.0.1:9", scenario, mode="carrier-pigeon")
    with pytest.raises(ValueError, match="timeout"):
        run_clients("http://127.0.0.1:9", scenario, timeout=0)
