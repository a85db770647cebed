"""The client emulator (testbed/clients.py) against a real front-end and real model servers, and
against a tiny recording server standing in for a front-end that reports the measurement headers."""
from __future__ import annotations

import json
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from statistics import median

import pytest
import requests
import yaml

from conftest_frontend import AUTH, make_frontend  # noqa: F401
from testbed.clients import run_clients
from testbed.scenario import SCENARIOS_DIR, load_scenario, parse_scenario
from testbed.trace import counts, generate_trace

HP2, HP3 = "half_plus_two", "half_plus_three"


def smoke(seconds: float = 4.0, **changes):
    """testbed/scenarios/smoke.yaml with each phase shortened to `seconds`."""
    data = yaml.safe_load((SCENARIOS_DIR / "smoke.yaml").read_text())
    for phase in data["phases"]:
        phase["duration"] = seconds
        phase.update(changes)
    return parse_scenario(data)


def test_smoke_scenario_against_the_real_frontend(make_frontend, tmp_path):
    scenario = smoke(4.0, rate=8)
    # half_plus_two only on xavier, half_plus_three only on nano-1: zone-1 reaches xavier at 50 ms
    # and zone-2 reaches nano-1 at 50 ms whatever the dispatch policy
    fe = make_frontend(nodes=scenario.cluster_nodes(), deploy=((HP2, "xavier"), (HP3, "nano-1")))
    trace = generate_trace(scenario)
    out = tmp_path / "run.jsonl"
    lines: list[str] = []
    results = run_clients(fe.url, scenario, mode="lookup", out_path=out, progress=lines.append)
    assert results.scheduled == len(trace) and results.sent == len(trace)
    assert [r for r in results.records if not r.ok] == []
    assert counts(results.records) == counts(trace)          # exactly the trace, per phase/zone/model
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["request_id"] for r in rows) == sorted(a.request_id for a in trace)
    for record in results.records:
        expected_node = "xavier" if record.model == HP2 else "nano-1"
        assert record.node == expected_node
        rtt = scenario.rtt(record.zone, record.node)
        assert record.latency >= rtt
        assert abs(record.started - record.scheduled) < 0.5
        if rtt == 0.05:
            assert record.latency >= 0.05 and record.network >= 0.05, record
    far = [r for r in results.records if scenario.rtt(r.zone, r.node) == 0.05]
    assert far, "the trace should hold requests to a node 50 ms away"
    # the reported network part is the emulated 50 ms plus loopback (and, while the model servers
    # send no Server-Timing, their own few ms); the median, since other tests may share the cores
    assert median(r.network for r in far) == pytest.approx(0.05, abs=0.010)
    summary = results.summary()
    assert summary["ok"] == len(trace) and summary["failed"] == 0
    assert set(summary["phases"]) == {"0", "1"} and summary["latency"]["p99"] >= 0.05
    # the front-end recorded every lookup with the zone and, once a client had an answer, its latency
    recorded = requests.get(f"{fe.url}/stats/requests", headers=AUTH, timeout=10).json()["requests"]
    assert len(recorded) == len(trace) and {r["zone"] for r in recorded} == {"zone-1", "zone-2"}
    assert all(r["kind"] == "lookup" for r in recorded)
    assert any(r["latency"] is not None and r["latency"] >= 0.05 for r in recorded)


def test_proxy_mode_against_the_real_frontend(make_frontend):
    scenario = smoke(2.0, rate=6)
    fe = make_frontend(nodes=scenario.cluster_nodes(), deploy=((HP2, "xavier"), (HP3, "nano-1")))
    results = run_clients(fe.url, scenario, mode="proxy")
    assert results.sent == results.scheduled and results.ok == results.scheduled
    # the front-end names the serving node (X-Served-By) and its own time (Server-Timing: app)
    for record in results.records:
        assert record.node == ("xavier" if record.model == HP2 else "nano-1"), record
        assert record.server is not None and record.latency >= scenario.rtt(record.zone, record.node)
    far = [r for r in results.records if scenario.rtt(r.zone, r.node) == 0.05]
    assert far and median(r.network for r in far) == pytest.approx(0.05, abs=0.010)


# -- a recording stand-in for the front-end and a model server ----------------------------------------
class Recorder:
    """GET /services/<m> answers node `far` at this server; POST .../:predict answers with Server-Timing."""

    def __init__(self, server_ms: float = 20.0, node: str = "xavier",
                 paces: str = ", pace;dur=17.5, pace-idle;dur=12.25") -> None:
        self.seen: list[tuple[str, str, dict]] = []
        self.lock = threading.Lock()
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            wbufsize = 65536     # head and body in one send (no Nagle/delayed-ACK stall)

            def log_message(self, *args):
                pass

            def _answer(self, status: int, payload: dict, extra: dict | None = None) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                with recorder.lock:
                    recorder.seen.append(("GET", self.path, dict(self.headers)))
                model = self.path.rsplit("/", 1)[-1]
                host, port = self.server.server_address[:2]
                self._answer(200, {"model": model, "node": node, "endpoint": f"{host}:{port}",
                                   "url": f"http://{host}:{port}/v1/models/{model}"})

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                self.rfile.read(length)
                with recorder.lock:
                    recorder.seen.append(("POST", self.path, dict(self.headers)))
                time.sleep(server_ms / 1000)
                extra = {"Server-Timing": f'db;dur=1.5;desc="a, b", app;dur={server_ms}{paces}'}
                if self.path.startswith("/services/"):
                    extra["X-Served-By"] = node
                self._answer(200, {"predictions": [2.5, 3.0, 4.5]}, extra)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def recorder():
    rec = Recorder()
    yield rec
    rec.close()


def _single_zone_scenario(tmp_path: Path, rate: float = 10, duration: float = 2.0):
    path = tmp_path / "one.yaml"
    path.write_text(yaml.safe_dump({
        "seed": 3,
        "nodes": [{"name": "nano-1", "class": "small", "cpu": 1.0, "memory": 250000},
                  {"name": "xavier", "class": "large", "cpu": 4.0, "memory": 800000}],
        "zones": [{"name": "zone-1", "rtt": {"nano-1": 0.004, "xavier": 0.05}}],
        "phases": [{"duration": duration, "rate": rate, "burstiness": 0.0, "zones": {"zone-1": 1},
                    "popularity": {HP2: 1}}],
    }))
    return load_scenario(path)


@pytest.mark.parametrize("mode", ["lookup", "proxy"])
def test_measurement_headers_reach_the_frontend(recorder, tmp_path, mode):
    scenario = _single_zone_scenario(tmp_path)
    results = run_clients(recorder.url, scenario, mode=mode, clients_per_zone=2)
    assert results.ok == results.scheduled == 20
    front = [h for method, path, h in recorder.seen if path.startswith("/services/")]
    assert len(front) == 20
    for record in results.records:
        assert record.node == "xavier" and record.server == pytest.approx(0.020)
        assert record.pace == pytest.approx(0.0175) and record.pace_idle == pytest.approx(0.01225)
        assert record.latency >= 0.05 + 0.020 and record.network >= 0.05
    assert median(r.network for r in results.records) == pytest.approx(0.05, abs=0.010)
    with_rtt = [h for h in front if "X-Client-RTT" in h]
    # two clients, arrivals 100 ms apart and each call ~75 ms: only the first of each lacks a report
    assert len(with_rtt) >= 20 - 2
    for headers in with_rtt:
        assert headers["X-Client-RTT-Node"] == "xavier" and headers["X-Client-Zone"] == "zone-1"
        assert float(headers["X-Client-RTT"]) >= 0.05
        assert float(headers["X-Client-Latency"]) >= 0.07
        # the node's pace from that answer's Server-Timing, and the model it is for
        assert float(headers["X-Client-Pace"]) == pytest.approx(0.0175) and headers["X-Client-Pace-Model"] == HP2
        assert headers["X-Client-Pace-Idle"] == "0.012250"      # and its idle-start time, in seconds
    # what was reported is what was measured: the network part, not the end-to-end time
    reported = sorted(float(h["X-Client-RTT"]) for h in with_rtt)
    measured = sorted(r.network for r in results.records)
    assert median(reported) == pytest.approx(0.05, abs=0.010)
    assert set(round(x, 6) for x in reported) <= set(round(x, 6) for x in measured)


@pytest.mark.parametrize("paces, sent", [
    (", pace-idle;dur=48.5", {"X-Client-Pace-Idle": "0.048500", "X-Client-Pace-Model": HP2}),
    (", pace;dur=64.25", {"X-Client-Pace": "0.064250", "X-Client-Pace-Model": HP2}),
    (", pace;dur=1e6, pace-idle;dur=9e5", {"X-Client-Pace": "60.000000", "X-Client-Pace-Idle": "60.000000",
                                           "X-Client-Pace-Model": HP2}),          # capped at a minute
    ("", {}),
])
def test_the_pace_figures_are_echoed_apart_with_the_model_for_either(tmp_path, paces, sent):
    recorder = Recorder(paces=paces)
    try:
        results = run_clients(recorder.url, _single_zone_scenario(tmp_path, rate=10, duration=1.0),
                              clients_per_zone=1)
    finally:
        recorder.close()
    assert results.ok == results.scheduled == 10
    front = [h for method, path, h in recorder.seen if path.startswith("/services/")]
    with_rtt = [h for h in front if "X-Client-RTT" in h]
    assert len(with_rtt) >= 8             # one client: its lookups but the first (or two) report
    for headers in with_rtt:
        assert {k: v for k, v in headers.items() if k.startswith("X-Client-Pace")} == sent, headers
    assert not any(k.startswith("X-Client-Pace") for h in front if "X-Client-RTT" not in h for k in h)


def test_overload_and_failures_are_counted(recorder, tmp_path):
    # one slot, 50 arrivals/s, each call holds 50 ms + 20 ms: most arrivals find no free slot
    scenario = _single_zone_scenario(tmp_path, rate=50, duration=1.0)
    results = run_clients(recorder.url, scenario, mode="lookup", max_in_flight=1, timeout=2.0)
    overloaded = [r for r in results.records if r.error == "client overload"]
    assert len(results.records) == results.scheduled == 50
    assert overloaded and all(r.latency == 2.0 and r.started is None and not r.ok for r in overloaded)
    assert results.ok + len(overloaded) == 50
    summary = results.summary()
    assert summary["failed"] == len(overloaded) and summary["errors"] == {"client overload": len(overloaded)}


def test_an_unreachable_frontend_fails_every_request_with_the_timeout_as_latency(tmp_path):
    scenario = _single_zone_scenario(tmp_path, rate=5, duration=1.0)
    results = run_clients("http://127.0.0.1:9", scenario, timeout=1.5)
    assert results.sent == 5 and results.ok == 0
    assert all(r.latency == 1.5 and r.error for r in results.records)


def test_stop_event_ends_the_run_early(recorder, tmp_path):
    scenario = _single_zone_scenario(tmp_path, rate=10, duration=30.0)
    stop = threading.Event()
    threading.Timer(1.0, stop.set).start()
    started = time.monotonic()
    results = run_clients(recorder.url, scenario, stop_event=stop)
    assert time.monotonic() - started < 5
    assert results.stopped and 5 <= len(results.records) <= 15
    assert results.summary()["not_sent_stopped"] == results.scheduled - len(results.records)


def test_command_line(recorder, tmp_path, capsys):
    from testbed.clients import main

    scenario = _single_zone_scenario(tmp_path, rate=5, duration=1.0)
    out = tmp_path / "out.jsonl"
    code = main(["--frontend", recorder.url, "--scenario", str(scenario.path), "--mode", "proxy",
                 "--out", str(out), "--summary", str(tmp_path / "summary.json")])
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert code == 0 and summary["ok"] == 5 and summary["mode"] == "proxy"
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 5 and all(r["ok"] and r["node"] == "xavier" for r in rows)
    assert set(rows[0]) >= {"request_id", "phase", "zone", "model", "scheduled", "started", "node", "status",
                            "ok", "latency", "network", "server", "error"}
    assert "clients: done" in captured.err
    # a bad scenario: one line, exit 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: x\n")
    assert main(["--frontend", recorder.url, "--scenario", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("testbed.clients: ") and "seed: must be an integer" in err and "\n" not in err


def test_a_reset_on_a_kept_alive_connection_is_sent_again_once(tmp_path):
    """The server drops every connection at its second prediction (as a server closing an idle
    keep-alive connection does when the request crosses the close): each such request is sent once
    more on a new connection and succeeds; its time counts."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        predictions = 0

        def log_message(self, *args):
            pass

        def _answer(self, payload: dict) -> None:
            body = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            host, port = self.server.server_address[:2]
            self._answer({"model": HP2, "node": "xavier", "endpoint": f"{host}:{port}"})

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.predictions += 1
            if self.predictions == 2:       # reset (RST), no answer
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True
                self.connection.close()
                return
            self._answer({"predictions": [2.5]})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        scenario = _single_zone_scenario(tmp_path, rate=10, duration=1.0)
        results = run_clients(f"http://127.0.0.1:{server.server_address[1]}", scenario, mode="lookup",
                              max_in_flight=4, clients_per_zone=1)
    finally:
        server.shutdown()
        server.server_close()
    summary = results.summary()
    assert results.ok == results.scheduled == 10, summary["errors"]
    assert summary["reconnects"] >= 1 and results.reconnects == summary["reconnects"]
