"""`python -m testbed.clients`: the client emulator. Replays a scenario's trace against a front-end.

    python -m testbed.clients --frontend http://127.0.0.1:5000 --scenario testbed/scenarios/default.yaml \\
        [--mode lookup|proxy] [--out results.jsonl] [--timeout 10] [--max-in-flight 200]

**Open loop.** Every arrival of the trace (`testbed.trace`) starts at its offset from the start of
the run, whatever happened to the earlier ones. At most `max_in_flight` (default 200) requests are
in flight; an arrival that finds no free slot is not sent and counts as failed with reason
"client overload". Plain threads (a pool of at most `max_in_flight`), no monkey-patching.

**Distance, emulated in user space** (no netem on this kernel). The scenario's `zones[].rtt`
(zone -> node -> seconds) is the ground truth; the system under test never sees it. A request
from zone Z to node N is held rtt(Z, N)/2 before it is sent and its answer rtt(Z, N)/2 after it
arrives, so the client observes the round trip plus whatever loopback and the server add. Loopback
itself costs well under a millisecond, so the emulated distance dominates.

**Modes.**

- `lookup` (the thesis's client): `GET <frontend>/services/<model>` with `X-Client-Zone`, then
  `POST http://<endpoint>/v1/models/<model>:predict` straight to the node the answer names
  (its `node` field), with the (zone, node) delay around that call. The hop to the front-end is
  held `frontend_rtt` seconds (`--frontend-rtt`, default 0: the front-end is treated as next to
  the clients, e.g. at the access point; not part of the scenario format).
- `proxy`: `POST <frontend>/services/<model>/v1/models/<model>:predict` with `X-Client-Zone`.
  The serving node is only known from the answer, so the whole rtt is held after it arrives, for
  the node named by the answer's `X-Served-By` header. When the answer names no node (older
  front-ends), the node is recorded as unknown (null) and the zone's mean RTT over all nodes is
  held instead.

**Measurement reports** (the only way the system learns distances). Each zone is modelled as
`clients_per_zone` (default 8) clients taking the zone's arrivals round robin (in trace order);
each client remembers its own last successful observation. Every request to the front-end (the
lookup in `lookup` mode, the proxied call in `proxy` mode) carries that client's previous
observation:

- `X-Client-RTT: <seconds>` and `X-Client-RTT-Node: <node>`: the network round trip it observed
  for the node it used = the end-to-end time of the call to that node (holds included) minus the
  server's own processing time from the answer's `Server-Timing` header (`app;dur=<ms>`; the
  standard syntax is parsed: several metrics, `dur` in milliseconds; `app` is used when present,
  else the largest `dur`). Without `Server-Timing` the whole end-to-end time of the call is
  reported (and counted in the summary as `server_timing_missing`). Not sent while the node is
  unknown (proxy mode without `X-Served-By`);
- `X-Client-Pace: <seconds>` and `X-Client-Pace-Model: <model>`: the node's pace from that answer's
  `Server-Timing` (`pace;dur=<ms>`: its busy time per answer back to back lately) and the model the call was
  for, beside the RTT report (whose node it is); not sent when the answer had no `pace`;
- `X-Client-Pace-Idle: <seconds>`: likewise the answer's `pace-idle;dur=<ms>` (its time for a request
  that found it idle), with the same `X-Client-Pace-Model`, sent whenever either figure is;
- `X-Client-Latency: <seconds>`: the end-to-end time of that previous request (lookup included),
  kept for the front-end's older hint.

A client whose previous request is still in flight reports its last completed one. Failed
requests are not observations. A `503` with `Retry-After` (the model is being provisioned on
demand) is waited out and asked again, as a thesis client would, while the request's timeout
allows; the wait counts in its latency (`retries` in the summary). `X-Request-Id` is the arrival's
request id. A request that meets a reset on a kept-alive connection (the server closed it as the
request went out) is sent once more on a new connection, as mobile HTTP clients do, its time
counted (`reconnects` in the summary); nothing else is retried.

**Output.** One JSON line per arrival, written as it completes (`--out`): `request_id, index,
phase, zone, client, model, scheduled` (offset, s), `started` (actual offset, s; null if never
sent), `time` (unix start), `node, endpoint, status, ok, latency` (end-to-end seconds including the
emulated delay; a failed request's latency is the timeout), `elapsed` (what it really took),
`lookup` (seconds of the lookup hop, lookup mode), `network, server` (seconds), `error`. The
summary (stdout, JSON) has sent/ok/failed per phase and zone, mean/p50/p95/p99 latency and the
share of arrivals served ok within the scenario's SLO. Progress goes to stderr every 5 s.

From Python (the experiment runner):

    results = run_clients(frontend_url, scenario, mode="lookup", out_path="run.jsonl",
                          stop_event=event, progress=print)
    results.summary()
"""
from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import urllib3

from .scenario import Scenario, ScenarioError, load_scenario
from .trace import Arrival, generate_trace

__all__ = ["run_clients", "ClientResults", "RequestRecord", "parse_server_timing", "server_seconds",
           "example_body", "MODES", "DEFAULT_TIMEOUT", "DEFAULT_MAX_IN_FLIGHT", "DEFAULT_CLIENTS_PER_ZONE",
           "SERVED_BY_HEADER", "main"]

MODES = ("lookup", "proxy")
DEFAULT_TIMEOUT = 10.0
DEFAULT_MAX_IN_FLIGHT = 200
DEFAULT_CLIENTS_PER_ZONE = 8
SERVED_BY_HEADER = "X-Served-By"
PROGRESS_EVERY = 5.0
OVERLOAD = "client overload"

# Inputs the shipped models accept (the table of backend/loadgen.py, copied so the testbed does
# not import the back-end); any other model gets the half_plus_* example.
_EXAMPLES = {
    "digits_logreg": {"instances": [[0.0] * 64]},
    "digits_forest": {"instances": [[0.0] * 64]},
    "digits_cnn": {"instances": [[0.0] * 64]},
}
_DEFAULT_EXAMPLE = {"instances": [1.0, 2.0, 5.0]}


def example_body(model: str) -> dict:
    """A request body `model` accepts (the shipped models' input shapes)."""
    return _EXAMPLES.get(model, _DEFAULT_EXAMPLE)


# -- Server-Timing (W3C Server Timing: `name;dur=12.3;desc="x", other;dur=4`) --------------------
def _split_outside_quotes(text: str, sep: str) -> list[str]:
    parts, current, quoted, escaped = [], [], False, False
    for ch in text:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\" and quoted:
            current.append(ch)
            escaped = True
        elif ch == '"':
            current.append(ch)
            quoted = not quoted
        elif ch == sep and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def parse_server_timing(values: str | Iterable[str] | None) -> dict[str, float | None]:
    """Metric name -> duration in SECONDS (None when the metric has no valid `dur`).

    Accepts one header value or several (repeated headers); malformed entries are skipped, the
    first occurrence of a metric wins (as the specification says).
    """
    if values is None:
        return {}
    if isinstance(values, str):
        values = [values]
    metrics: dict[str, float | None] = {}
    for value in values:
        for entry in _split_outside_quotes(value, ","):
            params = _split_outside_quotes(entry, ";")
            name = params[0].strip()
            if not name or any(c in name for c in ' "=') or name in metrics:
                continue
            duration = None
            for param in params[1:]:
                key, sep, raw = param.partition("=")
                if key.strip().lower() != "dur" or not sep:
                    continue
                raw = raw.strip()
                if len(raw) >= 2 and raw[0] == raw[-1] == '"':
                    raw = raw[1:-1]
                try:
                    ms = float(raw)
                except ValueError:
                    continue
                if math.isfinite(ms) and ms >= 0:
                    duration = ms / 1000.0
                break
            metrics[name] = duration
    return metrics


def server_seconds(values: str | Iterable[str] | Mapping[str, float | None] | None) -> float | None:
    """The server's own processing time: `app` when given, else the largest `dur`, else None.
    `values`: the header value(s), or what parse_server_timing made of them."""
    metrics = values if isinstance(values, Mapping) else parse_server_timing(values)
    if metrics.get("app") is not None:
        return metrics["app"]
    durations = [d for d in metrics.values() if d is not None]
    return max(durations) if durations else None


# -- results -------------------------------------------------------------------------------------
@dataclass
class RequestRecord:
    request_id: str
    index: int
    phase: int
    zone: str
    client: int
    model: str
    scheduled: float                 # offset the trace asked for (s)
    started: float | None = None     # actual offset (s); None when never sent
    time: float | None = None        # unix time it started
    node: str | None = None
    endpoint: str | None = None
    status: int | None = None        # HTTP status of the last call made
    ok: bool = False
    latency: float = 0.0             # end-to-end seconds incl. emulated delay; timeout when failed
    elapsed: float | None = None     # what it really took (s)
    lookup: float | None = None      # lookup hop (s), lookup mode
    network: float | None = None     # call to the node minus the server's part (s)
    server: float | None = None      # from Server-Timing (s)
    pace: float | None = None        # the node's Server-Timing `pace` (s per answer), when it sent one
    pace_idle: float | None = None   # ... and `pace-idle` (s for an answer that found it idle)
    error: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))


def _stats(values: Sequence[float]) -> dict:
    if not values:
        return {"n": 0, "mean": None, "p50": None, "p95": None, "p99": None}
    data = sorted(values)

    def pct(q: float) -> float:   # nearest rank
        return round(data[min(len(data) - 1, max(0, math.ceil(q * len(data)) - 1))], 6)

    return {"n": len(data), "mean": round(sum(data) / len(data), 6), "p50": pct(0.5), "p95": pct(0.95),
            "p99": pct(0.99)}


@dataclass
class ClientResults:
    mode: str
    frontend: str
    scheduled: int                   # arrivals in the trace
    records: list[RequestRecord]     # one per arrival that was reached (trace order)
    seconds: float                   # wall time of the run
    started_at: float                # unix time of offset 0
    timeout: float
    slo: float | None
    stopped: bool = False            # stop_event ended the run early
    server_timing_missing: int = 0   # answers without Server-Timing (network = whole call)
    retries: int = 0                 # 503 + Retry-After answers waited out and asked again
    reconnects: int = 0              # requests sent again after a reset on a kept-alive connection

    @property
    def sent(self) -> int:
        return sum(1 for r in self.records if r.started is not None)

    @property
    def ok(self) -> int:
        return sum(1 for r in self.records if r.ok)

    @property
    def failed(self) -> int:
        return sum(1 for r in self.records if not r.ok)

    def _group(self, records: list[RequestRecord]) -> dict:
        out = {"arrivals": len(records), "sent": sum(1 for r in records if r.started is not None),
               "ok": sum(1 for r in records if r.ok), "failed": sum(1 for r in records if not r.ok),
               "latency": _stats([r.latency for r in records]),
               "nodes": dict(Counter(r.node or "unknown" for r in records if r.ok))}
        if self.slo is not None:
            out["slo_met"] = round(sum(1 for r in records if r.ok and r.latency <= self.slo) / len(records), 6) \
                if records else None
        return out

    def summary(self) -> dict:
        """Counts and latency statistics, overall, per phase and per (phase, zone)."""
        records = self.records
        by_phase: dict[int, list[RequestRecord]] = defaultdict(list)
        for r in records:
            by_phase[r.phase].append(r)
        phases = {}
        for phase in sorted(by_phase):
            rows = by_phase[phase]
            zones: dict[str, list[RequestRecord]] = defaultdict(list)
            for r in rows:
                zones[r.zone].append(r)
            phases[str(phase)] = {**self._group(rows), "zones": {z: self._group(zones[z]) for z in sorted(zones)}}
        ok = [r for r in records if r.ok]
        lateness = [r.started - r.scheduled for r in records if r.started is not None]
        return {
            "mode": self.mode, "frontend": self.frontend, "seconds": round(self.seconds, 3),
            "started_at": self.started_at, "scheduled": self.scheduled, "reached": len(records),
            "not_sent_stopped": self.scheduled - len(records), "stopped": self.stopped,
            **self._group(records), "timeout": self.timeout, "slo": self.slo,
            "latency_ok": _stats([r.latency for r in ok]),
            "network_ok": _stats([r.network for r in ok if r.network is not None]),
            "server_ok": _stats([r.server for r in ok if r.server is not None]),
            "start_lateness": _stats(lateness),
            "errors": dict(Counter(r.error for r in records if r.error)),
            "server_timing_missing": self.server_timing_missing, "retries": self.retries,
            "reconnects": self.reconnects,
            "phases": phases,
        }


@dataclass
class _Observation:
    rtt: float                 # network part of the call to the node (s)
    node: str | None
    latency: float             # end-to-end of the request (s)
    pace: float | None = None  # the node's Server-Timing `pace` (s per answer)
    pace_idle: float | None = None  # ... and `pace-idle` (s for an answer that found it idle)
    model: str | None = None   # the model of the call


class _Shared:
    """State the request threads share (observations, counters), under one lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.observations: dict[tuple[str, int], _Observation] = {}
        self.in_flight = 0
        self.done = 0
        self.ok = 0
        self.failed = 0
        self.server_timing_missing = 0
        self.retries = 0
        self.reconnects = 0
        self.recent: list[float] = []


class _HTTPError(Exception):
    def __init__(self, status: int | None, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


# -- the emulator --------------------------------------------------------------------------------
def run_clients(frontend_url: str, scenario: Scenario, *, mode: str = "lookup",
                out_path: str | Path | None = None, stop_event: threading.Event | None = None,
                progress: Callable[[str], None] | None = None, trace: list[Arrival] | None = None,
                timeout: float = DEFAULT_TIMEOUT, max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
                clients_per_zone: int = DEFAULT_CLIENTS_PER_ZONE, frontend_rtt: float = 0.0,
                bodies: Mapping[str, dict] | None = None, extra_headers: Mapping[str, str] | None = None,
                on_record: Callable[[RequestRecord], None] | None = None) -> ClientResults:
    """Replay `scenario`'s trace (or `trace`) against `frontend_url` in real time; see the module doc.

    Blocks until every arrival was started (or `stop_event` is set) and every started request
    has finished. `out_path`: JSON lines, one per arrival, written as they complete. `progress`:
    called with a one-line status every 5 s. `on_record`: called with each finished record.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if not (timeout > 0 and max_in_flight >= 1 and clients_per_zone >= 1 and frontend_rtt >= 0):
        raise ValueError("timeout must be > 0, max_in_flight and clients_per_zone >= 1, frontend_rtt >= 0")
    arrivals = generate_trace(scenario) if trace is None else list(trace)
    stop_event = stop_event or threading.Event()
    base_url = frontend_url.rstrip("/")
    bodies = {m: json.dumps(bodies[m] if bodies and m in bodies else example_body(m)).encode()
              for m in {a.model for a in arrivals}}
    rtts = scenario.rtt_map()
    mean_rtt = {z: (sum(v.values()) / len(v) if v else 0.0) for z, v in rtts.items()}
    http = urllib3.PoolManager(num_pools=64, maxsize=max_in_flight, block=False, retries=False)
    shared = _Shared()
    out = open(out_path, "w") if out_path is not None else None
    records: list[RequestRecord | None] = [None] * len(arrivals)
    slots = threading.BoundedSemaphore(max_in_flight)
    zone_counter: Counter = Counter()
    deadline_timeout = urllib3.Timeout(connect=min(timeout, 5.0), read=timeout)

    def hold(seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)

    def finish(record: RequestRecord) -> None:
        with shared.lock:
            records[record.index] = record
            shared.done += 1
            if record.ok:
                shared.ok += 1
                shared.recent.append(record.latency)
            else:
                shared.failed += 1
            if out is not None:
                out.write(record.to_json() + "\n")
        if on_record is not None:
            on_record(record)

    def call(method: str, url: str, *, headers: dict, body: bytes | None, remaining: float,
             retry_reset: bool = True):
        if remaining <= 0:
            raise _HTTPError(None, "timeout")
        t = urllib3.Timeout(connect=min(remaining, deadline_timeout.connect_timeout), read=remaining)
        started = time.perf_counter()
        try:
            return http.request(method, url, body=body, headers=headers, timeout=t, retries=False,
                                redirect=False, preload_content=True)
        except urllib3.exceptions.TimeoutError:
            raise _HTTPError(None, "timeout") from None
        except urllib3.exceptions.ProtocolError as exc:
            # The server closed a kept-alive connection as the request went out on it (its idle
            # timeout): send it once more on a new connection, as mobile HTTP clients do (OkHttp's
            # retryOnConnectionFailure). The time spent counts; a second failure is a failure.
            if not retry_reset:
                raise _HTTPError(None, f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}") from None
            with shared.lock:
                shared.reconnects += 1
            return call(method, url, headers=headers, body=body,
                        remaining=remaining - (time.perf_counter() - started), retry_reset=False)
        except urllib3.exceptions.HTTPError as exc:
            raise _HTTPError(None, f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}") from None

    def hints(zone: str, client: int, request_id: str) -> dict:
        headers = {"X-Client-Zone": zone, "X-Request-Id": request_id, **(extra_headers or {})}
        with shared.lock:
            seen = shared.observations.get((zone, client))
        if seen is not None:
            headers["X-Client-Latency"] = f"{min(seen.latency, 3600.0):.6f}"
            if seen.node is not None:
                headers["X-Client-RTT"] = f"{min(seen.rtt, 3600.0):.6f}"
                headers["X-Client-RTT-Node"] = seen.node
                if seen.pace:
                    headers["X-Client-Pace"] = f"{min(seen.pace, 60.0):.6f}"
                if seen.pace_idle:
                    headers["X-Client-Pace-Idle"] = f"{min(seen.pace_idle, 60.0):.6f}"
                if seen.pace or seen.pace_idle:
                    headers["X-Client-Pace-Model"] = seen.model
        return headers

    def error_text(answer) -> str:
        try:
            message = json.loads(answer.data).get("error")
        except (ValueError, AttributeError):
            message = None
        return f"HTTP {answer.status}" + (f": {' '.join(str(message).split())[:200]}" if message else "")

    def node_rtt(zone: str, node: str | None) -> float:
        if node is not None and node in rtts[zone]:
            return rtts[zone][node]
        return mean_rtt[zone]

    def wait_and_retry(answer, deadline: float) -> bool:
        """A 503 with Retry-After (the model is being provisioned): wait as told and say to ask
        again, as a mobile client of the thesis would; False when it is another answer or the
        wait would pass the request's deadline (the 503 then stands)."""
        if answer.status != 503:
            return False
        try:
            wait = float(answer.headers.get("Retry-After", ""))
        except ValueError:
            return False
        if not 0 <= wait <= 60 or time.perf_counter() + wait >= deadline:
            return False
        with shared.lock:
            shared.retries += 1
        hold(wait)
        return True

    def send(arrival: Arrival, record: RequestRecord, began: float) -> None:
        zone, model = arrival.zone, arrival.model
        t0 = time.perf_counter()
        record.started = t0 - began
        record.time = time.time()
        deadline = t0 + timeout
        headers = hints(zone, record.client, arrival.request_id)
        body = bodies[model]
        try:
            if mode == "lookup":
                while True:
                    hold(frontend_rtt / 2)
                    answer = call("GET", f"{base_url}/services/{model}", headers=headers, body=None,
                                  remaining=deadline - time.perf_counter())
                    hold(frontend_rtt / 2)
                    if not wait_and_retry(answer, deadline):
                        break
                record.status = answer.status
                if answer.status != 200:
                    raise _HTTPError(answer.status, "lookup: " + error_text(answer))
                try:
                    found = json.loads(answer.data)
                    endpoint, node = str(found["endpoint"]), found.get("node")
                except (ValueError, KeyError, TypeError):
                    raise _HTTPError(answer.status, "lookup: answer without an endpoint") from None
                record.node, record.endpoint = node, endpoint
                t1 = time.perf_counter()
                record.lookup = t1 - t0
                rtt = node_rtt(zone, node)
                hold(rtt / 2)
                answer = call("POST", f"http://{endpoint}/v1/models/{model}:predict",
                              headers={"Content-Type": "application/json", "X-Request-Id": arrival.request_id},
                              body=body, remaining=deadline - time.perf_counter())
                hold(rtt / 2)
                t2 = time.perf_counter()
                call_seconds = t2 - t1
            else:
                headers["Content-Type"] = "application/json"
                t1 = t0
                while True:
                    answer = call("POST", f"{base_url}/services/{model}/v1/models/{model}:predict",
                                  headers=headers, body=body, remaining=deadline - time.perf_counter())
                    if not wait_and_retry(answer, deadline):
                        break
                    t1 = time.perf_counter()       # the node's distance applies to the call that is answered
                served_by = answer.headers.get(SERVED_BY_HEADER)
                node = served_by.strip() if served_by and served_by.strip() else None
                record.node = node
                hold(node_rtt(zone, node))
                t2 = time.perf_counter()
                call_seconds = t2 - t1
            record.status = answer.status
            timing = parse_server_timing(answer.headers.getlist("Server-Timing"))
            server, pace, pace_idle = server_seconds(timing), timing.get("pace"), timing.get("pace-idle")
            if server is None:
                with shared.lock:
                    shared.server_timing_missing += 1
            record.server = server
            record.pace, record.pace_idle = pace, pace_idle
            record.network = max(0.0, call_seconds - (server or 0.0))
            record.elapsed = t2 - t0
            if answer.status != 200:
                raise _HTTPError(answer.status, ("predict: " if mode == "lookup" else "") + error_text(answer))
            if record.elapsed > timeout:
                raise _HTTPError(answer.status, "timeout")
            record.ok = True
            record.latency = record.elapsed
            with shared.lock:
                shared.observations[(zone, record.client)] = _Observation(
                    rtt=record.network, node=record.node if record.node in rtts[zone] else None,
                    latency=record.elapsed, pace=pace, pace_idle=pace_idle, model=record.model)
        except _HTTPError as exc:
            record.ok = False
            record.error = exc.reason
            if exc.status is not None:
                record.status = exc.status
            record.elapsed = time.perf_counter() - t0
            record.latency = timeout
        except Exception as exc:  # a bug must not kill the run silently: record it
            record.ok = False
            record.error = f"client error: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
            record.elapsed = time.perf_counter() - t0
            record.latency = timeout

    def worker(arrival: Arrival, record: RequestRecord, began: float) -> None:
        try:
            send(arrival, record, began)
            finish(record)
        finally:
            with shared.lock:
                shared.in_flight -= 1
            slots.release()

    total = len(arrivals)
    reached = 0
    began = time.perf_counter()
    started_at = time.time()
    next_report = began + PROGRESS_EVERY
    end_offset = scenario.duration
    try:
        with ThreadPoolExecutor(max_workers=max_in_flight, thread_name_prefix="testbed-client") as pool:
            for arrival in arrivals:
                due = began + arrival.offset
                while not stop_event.is_set():
                    now = time.perf_counter()
                    if now >= next_report:
                        while next_report <= now:
                            next_report += PROGRESS_EVERY
                        if progress is not None:
                            progress(_progress_line(shared, now - began, end_offset, arrival.phase, reached, total))
                    if due <= now:
                        break
                    wait = min(due, next_report) - now
                    if wait > 0.002:
                        stop_event.wait(wait - 0.001)
                    else:
                        time.sleep(wait)
                if stop_event.is_set():
                    break
                client = zone_counter[arrival.zone] % clients_per_zone
                zone_counter[arrival.zone] += 1
                record = RequestRecord(request_id=arrival.request_id, index=arrival.index, phase=arrival.phase,
                                       zone=arrival.zone, client=client, model=arrival.model,
                                       scheduled=arrival.offset)
                reached += 1
                if not slots.acquire(blocking=False):
                    record.error = OVERLOAD
                    record.latency = timeout
                    finish(record)
                    continue
                with shared.lock:
                    shared.in_flight += 1
                pool.submit(worker, arrival, record, began)
            # let the in-flight requests finish, still reporting progress
            while True:
                with shared.lock:
                    busy = shared.in_flight
                if not busy:
                    break
                now = time.perf_counter()
                if now >= next_report:
                    while next_report <= now:
                        next_report += PROGRESS_EVERY
                    if progress is not None:
                        progress(_progress_line(shared, now - began, end_offset, None, reached, total))
                time.sleep(0.02)
    finally:
        http.clear()
        if out is not None:
            out.close()
    seconds = time.perf_counter() - began
    done = [r for r in records if r is not None]
    results = ClientResults(mode=mode, frontend=base_url, scheduled=total, records=done, seconds=seconds,
                            started_at=started_at, timeout=timeout, slo=scenario.slo,
                            stopped=stop_event.is_set() and len(done) < total,
                            server_timing_missing=shared.server_timing_missing, retries=shared.retries,
                            reconnects=shared.reconnects)
    if progress is not None:
        progress(f"clients: done in {seconds:.1f} s: {results.sent}/{total} sent, {results.ok} ok, "
                 f"{results.failed} failed")
    return results


def _progress_line(shared: _Shared, elapsed: float, end: float, phase: int | None, reached: int, total: int) -> str:
    with shared.lock:
        recent, shared.recent = shared.recent, []
        ok, failed, in_flight = shared.ok, shared.failed, shared.in_flight
    p95 = _stats(recent)["p95"]
    where = f"phase {phase}" if phase is not None else "draining"
    return (f"clients: t={elapsed:.0f}/{end:.0f} s {where}: {reached}/{total} started, {ok} ok, {failed} failed, "
            f"{in_flight} in flight, p95 last {PROGRESS_EVERY:.0f} s "
            + (f"{p95 * 1000:.1f} ms" if p95 is not None else "-"))


# -- command line --------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m testbed.clients",
                                description="Replay a testbed scenario's trace against a front-end, with "
                                            "emulated zone-to-node round trips.")
    p.add_argument("--frontend", required=True, metavar="URL", help="front-end base URL")
    p.add_argument("--scenario", required=True, metavar="FILE", help="scenario YAML")
    p.add_argument("--mode", choices=MODES, default="lookup", help="lookup (thesis client, default) or proxy")
    p.add_argument("--out", metavar="FILE", help="one JSON line per arrival")
    p.add_argument("--summary", metavar="FILE", help="also write the summary JSON here")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                   help=f"seconds per request; a failure's latency (default {DEFAULT_TIMEOUT:g})")
    p.add_argument("--max-in-flight", type=int, default=DEFAULT_MAX_IN_FLIGHT,
                   help=f"requests in flight at most (default {DEFAULT_MAX_IN_FLIGHT})")
    p.add_argument("--clients-per-zone", type=int, default=DEFAULT_CLIENTS_PER_ZONE,
                   help=f"clients per zone taking arrivals round robin (default {DEFAULT_CLIENTS_PER_ZONE})")
    p.add_argument("--frontend-rtt", type=float, default=0.0,
                   help="seconds held around the lookup hop to the front-end (default 0)")
    p.add_argument("--catalog", help="model catalog (default config/models.yaml)")
    p.add_argument("--cluster", help="cluster config used when the scenario has no nodes")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if not (args.timeout > 0 and args.max_in_flight >= 1 and args.clients_per_zone >= 1
                and args.frontend_rtt >= 0 and math.isfinite(args.timeout) and math.isfinite(args.frontend_rtt)):
            raise ScenarioError("--timeout must be > 0, --max-in-flight and --clients-per-zone >= 1, "
                                "--frontend-rtt >= 0")
        scenario = load_scenario(args.scenario, catalog_path=args.catalog, cluster_path=args.cluster)
    except ScenarioError as exc:
        print(f"testbed.clients: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        results = run_clients(args.frontend, scenario, mode=args.mode, out_path=args.out, stop_event=stop,
                              progress=lambda line: print(line, file=sys.stderr, flush=True),
                              timeout=args.timeout, max_in_flight=args.max_in_flight,
                              clients_per_zone=args.clients_per_zone, frontend_rtt=args.frontend_rtt)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    summary = json.dumps(results.summary(), indent=2)
    print(summary)
    if args.summary:
        Path(args.summary).write_text(summary + "\n")
    if results.records and not results.ok:
        print("testbed.clients: no request succeeded (is the front-end running, are the models deployed?)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
