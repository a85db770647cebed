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

import time
from dataclasses import dataclass, field
from typing import Any

import requests
from pydantic import BaseModel, ConfigDict, Field, model_validator

from common.validation import (Checked, Flag, Number, Text, ValidationError, check_number, invalid, one_of,
                               problems)

__all__ = [
    "FrontendError", "RequestStat", "InstanceStat", "ModelStat", "NodeMemory", "Observed",
    "GroupStat", "DurationStat", "RttStat", "Summary", "BUCKET_SECONDS", "MAX_RTT", "MAX_PACE", "FrontendClient",
    "collect", "parse_requests", "parse_models", "parse_memory",
    "parse_summary", "index_of_dispersion",
]

PAGE = 100_000          # rows asked for per /stats/requests call (the front-end's maximum)
MAX_PAGES = 50          # a window bigger than 5 million rows is cut (and said so in the report)
BUCKET_SECONDS = 10.0   # the front-end's aggregate bucket (rows are bucketed the same way)
MAX_RTT = 60.0          # seconds: the front-end refuses larger X-Client-RTT reports
MAX_PACE = 60.0         # seconds per answer: the front-end keeps no larger pace report
TIERS = ("edge", "cloud")


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
    # model -> index of dispersion of its requests per second over the window's whole seconds
    # (variance / mean: 1 for Poisson arrivals, more for bursts); empty from a front-end without it
    dispersion: dict[str, float] = field(default_factory=dict)
    arrival_count: dict[str, int] = field(default_factory=dict)   # model -> requests in those seconds
    arrival_sumsq: dict[str, int] = field(default_factory=dict)   # model -> their per-second squares summed
    arrival_seconds: int = 0                                      # how many whole seconds those are
    # all models' requests together in those seconds: (count, per-second squares summed); None from a
    # front-end without it. Its index exceeds the models' count-weighted mean when their bursts coincide.
    arrival_total: tuple[int, int] | None = None
    joint_dispersion: float | None = None      # the index of those together (replicas: merged)
    # (model, node) -> (pace reports, their mean seconds per answer): the node's measured pace for the
    # model, to plan with instead of the profile; empty from a front-end without it
    pace: dict[tuple[str, str], tuple[int, float]] = field(default_factory=dict)
    # the same for the service time of answers whose request found the node idle (what the queueing
    # model charges a request that does not wait, instead of the profile's `exec_time_idle`)
    pace_idle: dict[tuple[str, str], tuple[int, float]] = field(default_factory=dict)

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
    recent: Summary | None = None    # the last few seconds of the window (a rate window), when asked

    @property
    def requests_read(self) -> int:
        return self.summary.requests if self.summary is not None else len(self.requests)


# ---- parsing (pure) ----------------------------------------------------------------------------
# The front-end's answers, validated by common.validation's rules (finite numbers, no booleans for
# numbers, every fault named). Unlike an input file, a field this back-end does not know is
# ignored: a newer front-end may add one during a rolling upgrade.

class _Answer(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False, hide_input_in_errors=True,
                              populate_by_name=True)


Time = Number(optional=True, minimum=None)        # unix seconds (a test clock may start at 0)
Amount = Number(optional=True)                    # seconds, KB or cores, >= 0, or null
Count = Number(int, what="an integer >= 0")


def _name(value: Any) -> str | None:
    if value is None or value == "":
        return None                               # "" and null both mean "not known"
    if not isinstance(value, str):
        raise ValueError(f"must be a string or null, got {value!r}")
    return value


Name = Checked(str | None, _name)


class _Row(_Answer):
    id: Number(int, optional=True) = None
    time: Number(minimum=None)
    model: Text
    zone: Name = None
    latency: Amount = None
    node: Name = None
    status: Number(int, optional=True) = None
    duration: Amount = None
    kind: Name = None
    cached: Flag = False
    rtt: Amount = None
    rtt_node: Name = None


class _Group(_Answer):
    model: Text
    zone: Name = None
    node: Name = None
    kind: Name = None
    count: Count
    ok: Count
    latency_count: Count
    latency_mean: Amount = None
    last_request: Time = None

    @model_validator(mode="after")
    def _mean_with_count(self) -> "_Group":
        if self.latency_count and self.latency_mean is None:
            raise invalid("latency_mean is required when latency_count > 0")
        return self


class _Bin(_Answer):
    bin: Count
    count: Count
    sum: Number()


class _Durations(_Answer):
    model: Text
    node: Name = None
    kind: Name = None
    bins: list[_Bin] | None = None


def _bucket(value: Any) -> tuple[float, int, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        raise ValueError(f"must be [start, count, sum of seconds], got {value!r}")
    start, count, total = (check_number(value[0], minimum=None), check_number(value[1], kind=int),
                           check_number(value[2]))
    if total > MAX_RTT * count:
        raise ValueError(f"sum of seconds {total!r} is more than {MAX_RTT:g} s per report")
    return start, count, total


class _Rtt(_Answer):
    zone: Name = None
    node: Text
    buckets: list[Checked(tuple, _bucket)]


class _Arrival(_Answer):
    model: Text
    count: Count
    sumsq: Count


class _ArrivalTotal(_Answer):
    count: Count
    sumsq: Count


class _Arrivals(_Answer):
    since: Number(int, minimum=None)
    seconds: Count
    models: list[_Arrival]
    total: _ArrivalTotal | None = None       # absent from a front-end that predates it

    @model_validator(mode="after")
    def _possible(self) -> "_Arrivals":
        seen: set[str] = set()
        for i, a in enumerate(self.models):
            if a.model in seen:
                raise invalid(f"models[{i}]: model {a.model!r} is listed twice")
            seen.add(a.model)
            # c requests in n whole seconds: their squares sum to at least c and c^2 / n (spread
            # evenly), at most c^2 (all in one second)
            if not (a.count <= a.sumsq <= a.count ** 2 and a.count ** 2 <= a.sumsq * self.seconds):
                raise invalid(f"models[{i}]: sumsq {a.sumsq} is impossible for {a.count} requests "
                              f"in {self.seconds} seconds")
        t = self.total
        if t is not None and not (t.count <= t.sumsq <= t.count ** 2 and t.count ** 2 <= t.sumsq * self.seconds):
            raise invalid(f"total: sumsq {t.sumsq} is impossible for {t.count} requests in {self.seconds} seconds")
        return self


class _Pace(_Answer):
    model: Text
    node: Text
    count: Count
    sum: Number()

    @model_validator(mode="after")
    def _possible(self) -> "_Pace":
        if self.sum > MAX_PACE * self.count:
            raise invalid(f"sum {self.sum:g} is more than {MAX_PACE:g} s per report")
        if self.count and not self.sum:
            raise invalid(f"sum 0 is impossible for {self.count} reports (each is more than 0 s)")
        return self


class _Histogram(_Answer):
    relative_error: Number() = 0.0


class _SummaryAnswer(_Answer):
    groups: list[_Group]
    durations: list[_Durations] | None = None
    rtt: list[_Rtt] | None = None              # absent from a front-end that predates the reports
    arrivals: _Arrivals | None = None          # absent from a front-end that predates it
    pace: list[_Pace] | None = None            # absent from a front-end that predates it
    pace_idle: list[_Pace] | None = None       # absent from a front-end that predates it
    histogram: _Histogram | None = None
    since: Time = None
    until: Time = None
    store: Name = None


class _Instance(_Answer):
    node: Text
    provisioned: Time = None
    count: Count = 0
    last_requested: Time = None


class _ModelEntry(_Answer):
    model: Text
    count: Count = 0
    last_requested: Time = None
    instances: list[_Instance] | None = None


class _ModelsAnswer(_Answer):
    models: list[_ModelEntry]


class _NodeEntry(_Answer):
    node: Text
    ready: Flag = True
    node_class: Name = Field(None, alias="class")
    total: Number()
    used: Amount = None                       # KB
    available: Amount = None
    cpu_capacity: Amount = None
    cpu_usage: Amount = None
    tier: Checked(str, one_of(TIERS)) = "edge"
    cost_per_request: Number() = 0.0
    cost_per_instance_hour: Number() = 0.0


class _MemoryAnswer(_Answer):
    nodes: list[_NodeEntry]


def _answer(model: type[BaseModel], doc: Any, route: str, listed: str) -> Any:
    """Validate a whole answer; a fault is a FrontendError naming the route and every field."""
    if not isinstance(doc, dict) or not isinstance(doc.get(listed), list):
        raise FrontendError(f"{route}: expected an object with a '{listed}' list")
    try:
        return model.model_validate(doc)
    except ValidationError as exc:
        raise FrontendError(f"{route}: {'; '.join(problems(exc, named=_path_style))}") from None


def _path_style(field: str, text: str) -> str:
    return f"{field}: {'missing' if text == 'is required' else text}"


def parse_requests(doc: Any) -> tuple[list[RequestStat], int, int | None]:
    """Return (rows, rows skipped as malformed, last row id) from a /stats/requests answer.

    One bad row is skipped and counted (the report says how many), not the whole window."""
    if not isinstance(doc, dict) or not isinstance(doc.get("requests"), list):
        raise FrontendError("/stats/requests: expected an object with a 'requests' list")
    rows: list[RequestStat] = []
    skipped = 0
    last_id: int | None = None
    for item in doc["requests"]:
        if isinstance(item, dict) and isinstance(item.get("id"), int) and not isinstance(item["id"], bool):
            last_id = item["id"]            # paging goes on past a bad row
        try:
            row = _Row.model_validate(item)
        except ValidationError:
            skipped += 1
            continue
        rtt, rtt_node = row.rtt, row.rtt_node
        if rtt is None or rtt_node is None or rtt > MAX_RTT:   # a report needs both halves
            rtt, rtt_node = None, None
        rows.append(RequestStat(time=row.time, model=row.model, zone=row.zone, latency=row.latency,
                                node=row.node, status=row.status, duration=row.duration,
                                kind=row.kind, cached=row.cached, rtt=rtt, rtt_node=rtt_node))
    return rows, skipped, last_id


def index_of_dispersion(count: int, sumsq: int, seconds: int) -> float | None:
    """Variance / mean of the requests per second, from their total `count` and sum of squares over
    `seconds` whole seconds: (sumsq/n - (count/n)^2) / (count/n) = sumsq/count - count/n (population
    variance). None without a request or with fewer than 2 seconds; >= 0 despite float error."""
    if count <= 0 or seconds < 2:
        return None
    return max(0.0, sumsq / count - count / seconds)


def parse_summary(doc: Any) -> Summary:
    """Return the groups of a /stats/summary answer (and the models' arrival dispersion, the nodes'
    measured paces back to back and after idleness); a malformed group, bin, arrivals or pace entry
    is an error."""
    answer = _answer(_SummaryAnswer, doc, "/stats/summary", "groups")
    groups = [GroupStat(model=g.model, zone=g.zone, node=g.node, kind=g.kind,
                        count=g.count, ok=g.ok, latency_count=g.latency_count,
                        latency_sum=(g.latency_mean or 0.0) * g.latency_count, last_request=g.last_request)
              for g in answer.groups]
    durations = [DurationStat(model=d.model, node=d.node, kind=d.kind,
                              bins=tuple(sorted((b.bin, b.count, b.sum) for b in d.bins or ())))
                 for d in answer.durations or ()]
    rtt = [RttStat(zone=r.zone, node=r.node, buckets=tuple(sorted(b for b in r.buckets if b[1])))
           for r in answer.rtt or () if any(b[1] for b in r.buckets)]
    arrivals = answer.arrivals.models if answer.arrivals else []
    seconds = answer.arrivals.seconds if answer.arrivals else 0
    dispersion = {a.model: index_of_dispersion(a.count, a.sumsq, seconds) for a in arrivals}
    together = answer.arrivals.total if answer.arrivals else None
    total = (together.count, together.sumsq) if together is not None else None
    return Summary(groups=groups, durations=durations, since=answer.since or 0.0,
                   relative_error=answer.histogram.relative_error if answer.histogram else 0.0, rtt=rtt,
                   until=answer.until, store=answer.store,
                   dispersion={m: d for m, d in dispersion.items() if d is not None},
                   arrival_count={a.model: a.count for a in arrivals if a.count},
                   arrival_sumsq={a.model: a.sumsq for a in arrivals if a.count}, arrival_seconds=seconds,
                   arrival_total=total, joint_dispersion=index_of_dispersion(*total, seconds) if total else None,
                   pace=_pace_means(answer.pace), pace_idle=_pace_means(answer.pace_idle))


def _pace_means(entries: list[_Pace] | None) -> dict[tuple[str, str], tuple[int, float]]:
    """(model, node) -> (reports, mean seconds) of a summary's pace list (an entry listed twice: both count)."""
    totals: dict[tuple[str, str], list] = {}
    for p in entries or ():
        if p.count:
            acc = totals.setdefault((p.model, p.node), [0, 0.0])
            acc[0] += p.count
            acc[1] += p.sum
    return {key: (n, total / n) for key, (n, total) in totals.items()}


def parse_models(doc: Any) -> list[ModelStat]:
    """Return the per-model statistics of a /stats/models answer."""
    answer = _answer(_ModelsAnswer, doc, "/stats/models", "models")
    return [ModelStat(model=m.model, count=m.count, last_requested=m.last_requested,
                      instances=tuple(InstanceStat(node=i.node, provisioned=i.provisioned, count=i.count,
                                                   last_requested=i.last_requested) for i in m.instances or ()))
            for m in answer.models]


def parse_memory(doc: Any) -> list[NodeMemory]:
    """Return the nodes of a /stats/memory answer (memory in KB)."""
    answer = _answer(_MemoryAnswer, doc, "/stats/memory", "nodes")
    out = []
    for n in answer.nodes:
        used = n.used or 0.0
        available = n.available if n.available is not None else max(0.0, n.total - used)
        out.append(NodeMemory(node=n.node, ready=n.ready, node_class=n.node_class, total=int(n.total),
                              used=int(used), available=int(available), cpu_capacity=n.cpu_capacity or 0.0,
                              cpu_usage=n.cpu_usage or 0.0, tier=n.tier, cost_per_request=n.cost_per_request,
                              cost_per_instance_hour=n.cost_per_instance_hour))
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


def collect(client: FrontendClient, *, window: float, now: float | None = None, recent: float = 0.0) -> Observed:
    """Read the recent window of requests (aggregated, or as rows from an older front-end), the
    model statistics and node memory; with `recent` > 0 also the aggregates of the last `recent`
    seconds (a second summary; none from a front-end without one)."""
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
        latest = client.summary(recent) if recent > 0 else None
        return Observed(requests=[], models=client.models(), nodes=client.memory(), since=summary.since,
                        collected=time.time(), summary=summary, recent=latest)
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
