"""The back-end's client of the front-end's statistics API (thesis 5.2.3-5.2.5, 5.7).

Why over HTTP: the front-end alone owns its statistics files; the back-end reads them the way a
client would (`GET /stats/summary`, `/stats/models`, `/stats/memory` with the bearer token) and
hands the solver's dispatch weights back with `PUT /plan`. The request window is read as the
front-end's aggregates (`/stats/summary`: one entry per (model, zone, node, kind), cheap for the
front-end whatever the request rate); only a front-end without that route (404) is read row by row
(`/stats/requests`, paged), which costs it O(requests) per collection. Everything here is I/O; the answers are
validated and turned into the plain dataclasses below, which the pure steps (build, plan) consume.

Exception tree::

    FrontendError           the front-end could not be reached or gave an unusable answer
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import requests

__all__ = [
    "FrontendError", "RequestStat", "InstanceStat", "ModelStat", "NodeMemory", "Observed",
    "GroupStat", "DurationStat", "RttStat", "Summary", "BUCKET_SECONDS", "MAX_RTT", "FrontendClient", "collect", "parse_requests", "parse_models", "parse_memory",
    "parse_summary",
]

PAGE = 100_000          # rows asked for per /stats/requests call (the front-end's maximum)
MAX_PAGES = 50          # a window bigger than 5 million rows is cut (and said so in the report)
BUCKET_SECONDS = 10.0   # the front-end's aggregate bucket (rows are bucketed the same way)
MAX_RTT = 60.0          # seconds: the front-end refuses larger X-Client-RTT reports


class FrontendError(Exception):
    """The front-end could not be reached, refused us, or answered something unusable."""

    def __init__(self, message: str, *, status: int | None = None):
        super().__init__(message)
        self.status = status         # the HTTP status when the front-end answered one


@dataclass(frozen=True)
class RequestStat:
    """One recorded client request. Times are unix seconds, latency and duration seconds."""

    time: float
    model: str
    zone: str | None
    latency: float | None        # what the client reported (X-Client-Latency), seconds
    node: str | None             # node chosen for it, when one was
    status: int | None
    duration: float | None       # the proxy's measured time for the model server's answer, seconds
    kind: str | None = None      # "proxy" or "lookup" (GET /services) when the front-end says so
    cached: bool = False         # answered from the front-end's prediction cache
    rtt: float | None = None     # the client's network round-trip report (X-Client-RTT), seconds
    rtt_node: str | None = None  # the node it measured (X-Client-RTT-Node); set exactly when rtt is


@dataclass(frozen=True)
class InstanceStat:
    """Requests one deployed instance served since it was provisioned."""

    node: str
    provisioned: float | None
    count: int
    last_requested: float | None


@dataclass(frozen=True)
class ModelStat:
    model: str
    count: int
    last_requested: float | None
    instances: tuple[InstanceStat, ...] = ()


@dataclass(frozen=True)
class NodeMemory:
    """A node as /stats/memory reports it. Memory in KB, cpu in cores."""

    node: str
    ready: bool
    node_class: str | None
    total: int
    used: int
    available: int
    cpu_capacity: float
    cpu_usage: float
    tier: str = "edge"                  # "edge" or "cloud" (a cloud site: far, large, maybe priced)
    cost_per_request: float = 0.0       # objective seconds per request served there (`latency` weighs it)
    cost_per_instance_hour: float = 0.0  # objective seconds per instance-hour there


@dataclass(frozen=True)
class GroupStat:
    """Aggregates of the requests of one (model, zone, node, kind) over the window (/stats/summary)."""

    model: str
    zone: str | None
    node: str | None
    kind: str | None
    count: int
    ok: int
    latency_count: int
    latency_sum: float               # seconds: latency_mean * latency_count
    last_request: float | None = None


@dataclass(frozen=True)
class DurationStat:
    """The front-end's histogram of one (model, node, kind)'s durations over the window: 2xx answers
    not served from its prediction cache, as (bin, count, sum of seconds), bins increasing with the
    duration."""

    model: str
    node: str | None
    kind: str | None
    bins: tuple[tuple[int, int, float], ...]


@dataclass(frozen=True)
class RttStat:
    """The round trips clients of one zone reported for one node over the window (X-Client-RTT /
    X-Client-RTT-Node): per bucket (start in unix seconds, reports, sum of their seconds), oldest first."""

    zone: str | None
    node: str
    buckets: tuple[tuple[float, int, float], ...]

    @property
    def count(self) -> int:
        return sum(c for _, c, _ in self.buckets)


@dataclass(frozen=True)
class Summary:
    """The window of requests as aggregates (what build_problem needs, without the rows)."""

    groups: list[GroupStat]
    durations: list[DurationStat]
    since: float
    relative_error: float            # of a quantile read from the duration histogram
    rtt: list[RttStat] = field(default_factory=list)   # empty from a front-end without the reports
    until: float | None = None       # the front-end's clock when it answered
    store: str | None = None         # id of the statistics database that answered (replicas: merge once)

    @property
    def requests(self) -> int:
        return sum(g.count for g in self.groups)


@dataclass(frozen=True)
class Observed:
    """Everything the back-end read from the front-end for one run: the window as aggregates
    (`summary`) or, from a front-end without /stats/summary, as rows (`requests`)."""

    requests: list[RequestStat]
    models: list[ModelStat]
    nodes: list[NodeMemory]
    since: float                 # start of the window, unix seconds
    collected: float             # when the reads finished, unix seconds
    truncated: bool = False      # the window held more rows than were read
    warnings: list[str] = field(default_factory=list)
    summary: Summary | None = None

    @property
    def requests_read(self) -> int:
        return self.summary.requests if self.summary is not None else len(self.requests)


# ---- parsing (pure) ----------------------------------------------------------------------------

def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def parse_requests(doc: Any) -> tuple[list[RequestStat], int, int | None]:
    """Return (rows, rows skipped as malformed, last row id) from a /stats/requests answer."""
    if not isinstance(doc, dict) or not isinstance(doc.get("requests"), list):
        raise FrontendError("/stats/requests: expected an object with a 'requests' list")
    rows: list[RequestStat] = []
    skipped = 0
    last_id: int | None = None
    for item in doc["requests"]:
        if not isinstance(item, dict):
            skipped += 1
            continue
        if isinstance(item.get("id"), int):
            last_id = item["id"]
        t = _num(item.get("time"))
        model = item.get("model")
        if t is None or not isinstance(model, str) or not model:
            skipped += 1
            continue
        zone = item.get("zone")
        node = item.get("node")
        status = item.get("status")
        latency = _num(item.get("latency"))
        duration = _num(item.get("duration"))
        rtt, rtt_node = _num(item.get("rtt")), _text(item.get("rtt_node"))
        if rtt is None or rtt_node is None or not 0 <= rtt <= MAX_RTT:
            rtt, rtt_node = None, None
        rows.append(RequestStat(
            time=t, model=model, zone=zone if isinstance(zone, str) and zone else None,
            latency=latency if latency is not None and latency >= 0 else None,
            node=node if isinstance(node, str) and node else None,
            status=status if isinstance(status, int) and not isinstance(status, bool) else None,
            duration=duration if duration is not None and duration >= 0 else None,
            kind=item.get("kind") if isinstance(item.get("kind"), str) else None,
            cached=bool(item.get("cached", False)), rtt=rtt, rtt_node=rtt_node))
    return rows, skipped, last_id


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def parse_summary(doc: Any) -> Summary:
    """Return the groups of a /stats/summary answer; a malformed group or bin is an error."""
    if not isinstance(doc, dict) or not isinstance(doc.get("groups"), list):
        raise FrontendError("/stats/summary: expected an object with a 'groups' list")
    groups = []
    for item in doc["groups"]:
        if not isinstance(item, dict) or not isinstance(item.get("model"), str) or not item["model"]:
            raise FrontendError("/stats/summary: every group needs a 'model' name")
        count, ok, lat_n = _count(item.get("count")), _count(item.get("ok")), _count(item.get("latency_count"))
        if count is None or ok is None or lat_n is None:
            raise FrontendError(f"/stats/summary: group of {item['model']}: count, ok and latency_count "
                                "must be integers >= 0")
        lat_mean = _num(item.get("latency_mean"))
        if lat_n and (lat_mean is None or lat_mean < 0):
            raise FrontendError(f"/stats/summary: group of {item['model']}: latency_mean must be a number >= 0")
        zone, node, kind = item.get("zone"), item.get("node"), item.get("kind")
        groups.append(GroupStat(
            model=item["model"], zone=_text(zone), node=_text(node), kind=_text(kind), count=count, ok=ok,
            latency_count=lat_n, latency_sum=(lat_mean or 0.0) * lat_n, last_request=_num(item.get("last_request"))))
    durations = []
    for item in doc.get("durations") or []:
        if not isinstance(item, dict) or not isinstance(item.get("model"), str) or not item["model"]:
            raise FrontendError("/stats/summary: every duration histogram needs a 'model' name")
        bins = []
        for entry in item.get("bins") or []:
            b, c = (_count(entry.get("bin")), _count(entry.get("count"))) if isinstance(entry, dict) else (None, None)
            total = _num(entry.get("sum")) if isinstance(entry, dict) else None
            if b is None or c is None or total is None or total < 0:
                raise FrontendError(f"/stats/summary: durations of {item['model']}: malformed bin")
            bins.append((b, c, total))
        durations.append(DurationStat(model=item["model"], node=_text(item.get("node")), kind=_text(item.get("kind")),
                                      bins=tuple(sorted(bins))))
    rtt = []
    for item in doc.get("rtt") or []:      # absent from a front-end that predates the reports
        if not isinstance(item, dict) or _text(item.get("node")) is None or not isinstance(item.get("buckets"), list):
            raise FrontendError("/stats/summary: every rtt entry needs a 'node' and a 'buckets' list")
        zone = item.get("zone")
        if zone is not None and _text(zone) is None:
            raise FrontendError(f"/stats/summary: rtt of node {item['node']}: zone must be a name or null")
        buckets = []
        for entry in item["buckets"]:
            start, c, total = (entry if isinstance(entry, list) and len(entry) == 3 else (None, None, None))
            start, c, total = _num(start), _count(c), _num(total)
            if start is None or c is None or total is None or total < 0 or total > MAX_RTT * c:
                raise FrontendError(f"/stats/summary: rtt of node {item['node']}: malformed bucket")
            if c:
                buckets.append((start, c, total))
        if buckets:
            rtt.append(RttStat(zone=zone, node=item["node"], buckets=tuple(sorted(buckets))))
    histogram = doc.get("histogram") if isinstance(doc.get("histogram"), dict) else {}
    return Summary(groups=groups, durations=durations, since=_num(doc.get("since")) or 0.0,
                   relative_error=_num(histogram.get("relative_error")) or 0.0, rtt=rtt,
                   until=_num(doc.get("until")), store=_text(doc.get("store")))


def parse_models(doc: Any) -> list[ModelStat]:
    """Return the per-model statistics of a /stats/models answer."""
    if not isinstance(doc, dict) or not isinstance(doc.get("models"), list):
        raise FrontendError("/stats/models: expected an object with a 'models' list")
    out = []
    for item in doc["models"]:
        if not isinstance(item, dict) or not isinstance(item.get("model"), str):
            raise FrontendError("/stats/models: every entry needs a 'model' name")
        instances = []
        for inst in item.get("instances") or []:
            if not isinstance(inst, dict) or not isinstance(inst.get("node"), str):
                raise FrontendError(f"/stats/models: model {item['model']}: malformed instance")
            count = inst.get("count")
            instances.append(InstanceStat(
                node=inst["node"], provisioned=_num(inst.get("provisioned")),
                count=count if isinstance(count, int) and not isinstance(count, bool) else 0,
                last_requested=_num(inst.get("last_requested"))))
        count = item.get("count")
        out.append(ModelStat(model=item["model"],
                             count=count if isinstance(count, int) and not isinstance(count, bool) else 0,
                             last_requested=_num(item.get("last_requested")),
                             instances=tuple(instances)))
    return out


def parse_memory(doc: Any) -> list[NodeMemory]:
    """Return the nodes of a /stats/memory answer."""
    if not isinstance(doc, dict) or not isinstance(doc.get("nodes"), list):
        raise FrontendError("/stats/memory: expected an object with a 'nodes' list")
    out = []
    for item in doc["nodes"]:
        if not isinstance(item, dict) or not isinstance(item.get("node"), str):
            raise FrontendError("/stats/memory: every entry needs a 'node' name")
        total = _num(item.get("total"))
        used = _num(item.get("used"))
        available = _num(item.get("available"))
        if total is None or total < 0:
            raise FrontendError(f"/stats/memory: node {item['node']}: 'total' must be a number of KB")
        used = used if used is not None and used >= 0 else 0.0
        if available is None or available < 0:
            available = max(0.0, total - used)
        cls = item.get("class")
        out.append(NodeMemory(node=item["node"], ready=bool(item.get("ready", True)),
                              node_class=cls if isinstance(cls, str) and cls else None,
                              total=int(total), used=int(used), available=int(available),
                              cpu_capacity=_num(item.get("cpu_capacity")) or 0.0,
                              cpu_usage=_num(item.get("cpu_usage")) or 0.0,
                              tier="cloud" if item.get("tier") == "cloud" else "edge",
                              cost_per_request=max(0.0, _num(item.get("cost_per_request")) or 0.0),
                              cost_per_instance_hour=max(0.0, _num(item.get("cost_per_instance_hour")) or 0.0)))
    return out


# ---- HTTP (I/O) --------------------------------------------------------------------------------

def _error_text(response: requests.Response) -> str:
    try:
        doc = response.json()
        if isinstance(doc, dict) and isinstance(doc.get("error"), str):
            return doc["error"]
    except ValueError:
        pass
    text = (response.text or "").strip()
    return text.splitlines()[0][:200] if text else str(response.reason)


class FrontendClient:
    """Talk to one front-end over HTTP with the bearer token; raise FrontendError on any failure."""

    def __init__(self, base_url: str, *, token: str | None = None, timeout: float = 10.0):
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        self.session.trust_env = False          # never route loopback calls through a proxy
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def close(self) -> None:
        """Close the pooled connections."""
        self.session.close()

    def _call(self, method: str, path: str, **kwargs) -> Any:
        url = self.base_url + path
        try:
            response = self.session.request(method, url, timeout=self.timeout, allow_redirects=False, **kwargs)
        except requests.RequestException as exc:
            reason = type(exc).__name__
            if isinstance(exc, requests.ConnectionError):
                reason = "connection failed"
            elif isinstance(exc, requests.Timeout):
                reason = f"no answer within {self.timeout:g} s"
            raise FrontendError(f"front-end {self.base_url} unreachable ({method} {path}: {reason})") from None
        if response.status_code in (401, 403):
            raise FrontendError(f"front-end {self.base_url} refused {method} {path} "
                                f"({response.status_code}: {_error_text(response)}); check --token")
        if response.status_code >= 400:
            raise FrontendError(f"front-end {self.base_url}: {method} {path} -> "
                                f"{response.status_code}: {_error_text(response)}", status=response.status_code)
        try:
            return response.json()
        except ValueError:
            raise FrontendError(f"front-end {self.base_url}: {method} {path} did not answer JSON") from None

    def requests_since(self, since: float) -> tuple[list[RequestStat], bool, int]:
        """Return (requests with time >= since, whether the read was cut short, malformed rows)."""
        rows: list[RequestStat] = []
        skipped = 0
        params: dict[str, Any] = {"since": f"{since:.6f}", "limit": PAGE}
        for _ in range(MAX_PAGES):
            page, bad, last_id = parse_requests(self._call("GET", "/stats/requests", params=params))
            rows.extend(page)
            skipped += bad
            if len(page) + bad < PAGE or last_id is None:
                return rows, False, skipped
            params = {"since": f"{since:.6f}", "after": last_id, "limit": PAGE}
        return rows, True, skipped

    def summary(self, window: float) -> Summary:
        """Return /stats/summary for the last `window` seconds (FrontendError with status 404 from a
        front-end that predates the route)."""
        return parse_summary(self._call("GET", "/stats/summary", params={"window": f"{window:g}"}))

    def models(self) -> list[ModelStat]:
        """Return /stats/models."""
        return parse_models(self._call("GET", "/stats/models"))

    def memory(self) -> list[NodeMemory]:
        """Return /stats/memory."""
        return parse_memory(self._call("GET", "/stats/memory"))

    def put_plan(self, plan: dict) -> None:
        """Store the dispatch plan with PUT /plan."""
        self._call("PUT", "/plan", json=plan)


def collect(client: FrontendClient, *, window: float, now: float | None = None) -> Observed:
    """Read the recent window of requests (aggregated, or as rows from an older front-end), the
    model statistics and node memory."""
    now = time.time() if now is None else now
    since = max(0.0, now - window)
    warnings = []
    try:
        summary = client.summary(window)
    except FrontendError as exc:
        if exc.status != 404:
            raise
        summary = None
    if summary is not None:
        return Observed(requests=[], models=client.models(), nodes=client.memory(), since=summary.since,
                        collected=time.time(), summary=summary)
    warnings.append("the front-end has no /stats/summary: the window was read row by row")
    rows, truncated, skipped = client.requests_since(since)
    models = client.models()
    nodes = client.memory()
    if skipped:
        warnings.append(f"{skipped} malformed request rows ignored")
    if truncated:
        warnings.append(f"the window held more than {PAGE * MAX_PAGES} requests; the rest were ignored")
    return Observed(requests=rows, models=models, nodes=nodes, since=since, collected=time.time(),
                    truncated=truncated, warnings=warnings)
