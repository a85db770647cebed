"""The per-process objects the views share: settings, store, state cache, provisioner, HTTP pool.

One Runtime lives in `app.extensions["frontend"]`; views reach it through `current_runtime()`.
`pick()` is the dispatch step every view uses: catalog check, candidates, policy, or refusal.
"""
from __future__ import annotations

import itertools
import logging
import math
import random
import re
import threading
import time
from statistics import NormalDist

from flask import current_app

from cluster.catalog import ModelSpec

from .backlog import Backlog, SharedBacklog, backlog_path
from .config import Settings
from .dispatch import choose, service_time, spread_of, with_profile
from .errors import ApiError
from .hints import MAX_PACE
from .pace import PaceTable
from .predcache import PredictionCache
from .provision import Provisioner
from .snapshot import Candidate
from .state import StateCache, make_cluster_factory
from .store import StatsStore
from .upstream import UpstreamPool

__all__ = ["Runtime", "current_runtime", "MODEL_NAME"]

log = logging.getLogger("frontend.runtime")

# What a model name in a URL may look like before it is even compared with the catalog.
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class Runtime:
    """Everything one worker process needs to answer requests."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.token = settings.resolved_token()
        self.store = StatsStore(settings.database_path, flush_interval=settings.stats_flush_interval)
        self.cache = StateCache(settings=settings, store=self.store,
                                cluster_factory=make_cluster_factory(settings))
        self.provisioner = Provisioner(cache=self.cache, store=self.store, retry_after=settings.retry_after,
                                       claim_ttl=settings.provision_timeout)
        self.predictions = PredictionCache(entries=settings.prediction_cache_entries,
                                           max_bytes=settings.prediction_cache_bytes,
                                           ttl=settings.prediction_cache_ttl)
        self._counters: dict[str, itertools.count] = {}
        self._counters_lock = threading.Lock()
        self._rng = random.Random()
        self._backlog = _backlog(settings)         # expected-delay: work sent to each node
        self.paces = PaceTable()                   # expected-delay: each node's measured pace
        self._z = NormalDist().inv_cdf(settings.dispatch_quantile)   # expected-delay's quantile
        self._pools: dict[str, UpstreamPool] = {}
        self._listing: tuple[tuple, list[dict]] | None = None
        self._pools_lock = threading.Lock()
        self.cache.add_listener(self._drop_pools)
        self.cache.add_listener(self.provisioner.retry_releases)
        self.cache.add_listener(self._drop_paces)

    # -- HTTP pools to model servers ---------------------------------------------------------------
    def pool(self, endpoint: str) -> UpstreamPool:
        """Return this worker's keep-alive connection pool to `endpoint` ("host:port")."""
        pool = self._pools.get(endpoint)
        if pool is None:
            host, _, port = endpoint.rpartition(":")
            with self._pools_lock:
                pool = self._pools.get(endpoint)
                if pool is None:
                    pool = UpstreamPool(host, int(port), connect_timeout=self.settings.connect_timeout,
                                        call_timeout=self.settings.call_timeout, maxsize=self.settings.pool_maxsize)
                    self._pools[endpoint] = pool
        return pool

    def _drop_pools(self, old, new) -> None:
        """Close pools to endpoints the cluster no longer reports."""
        live = {d.endpoint for d in new.deployments}
        with self._pools_lock:
            gone = [e for e in self._pools if e not in live]
            pools = [self._pools.pop(e) for e in gone]
        for pool in pools:
            pool.close()

    def _drop_paces(self, old, new) -> None:
        """Forget the paces of instances the cluster no longer reports."""
        self.paces.forget({(d.model, d.node) for d in new.deployments})

    # -- measured pace ----------------------------------------------------------------------------
    def note_pace(self, model: str | None, node: str | None, pace: float | None,
                  idle: float | None = None) -> None:
        """Take a node's figures for a model (a proxied answer's Server-Timing `pace` / `pace-idle`,
        or a client's X-Client-Pace / X-Client-Pace-Idle report) when an instance of that model runs
        there: a report about anything else is dropped, so clients cannot grow the tables. Each
        figure in (0, MAX_PACE] goes to the statistics (the back-end plans with them); the
        back-to-back `pace` also to dispatch under expected-delay with measured_pace, while `idle`
        (the time of a request that found the node idle) does not: dispatch counts a queue."""
        def kept(seconds: float | None) -> bool:
            return seconds is not None and 0 < seconds <= MAX_PACE
        if (not (kept(pace) or kept(idle)) or model is None or node is None or model not in self.cache.catalog
                or not any(c.node.name == node for c in self.cache.candidates(model))):
            return
        from .observe import note_pace_report        # here: observe imports this module
        if kept(pace):
            note_pace_report(model, node, pace)
            if self.settings.measured_pace and self.settings.policy == "expected-delay":
                self.paces.report(model, node, pace, time.monotonic())
        if kept(idle):
            note_pace_report(model, node, idle, True)

    # -- dispatch ---------------------------------------------------------------------------------
    def spec(self, model: str) -> ModelSpec:
        """Return the catalog entry of `model` or raise 404 at once (thesis 4.5)."""
        catalog = self.cache.catalog
        if model not in catalog:
            raise ApiError(404, f"unknown model {model!r}")
        return catalog[model]

    def _counter(self, model: str) -> int:
        counter = self._counters.get(model)
        if counter is None:
            with self._counters_lock:
                counter = self._counters.setdefault(model, itertools.count())
        return next(counter)

    def pick(self, model: str, *, zone: str | None = None, exclude: frozenset[str] = frozenset(),
             provision: bool = True, charge: bool = True) -> Candidate:
        """Choose the endpoint for `model`; raise ApiError 404/503 when there is none. `charge`:
        the caller will send the request there (expected-delay adds its work to the node)."""
        spec = self.spec(model)
        candidates = self.cache.candidates(model)
        if exclude:
            candidates = tuple(c for c in candidates if c.endpoint not in exclude)
        if candidates:
            policy = self.settings.policy
            plan = self.cache.plan
            backlog = paces = spread = None
            if policy == "expected-delay":
                plan = with_profile(plan, spec, candidates)
                now = time.monotonic()
                names = [c.node.name for c in candidates]
                backlog = self._backlog.seconds(names, now)
                paces = self.paces.paces(model, names, now) if self.settings.measured_pace else None
                spread = spread_of(spec, candidates, self._z)
            chosen = choose(policy, candidates, model=model, zone=zone, plan=plan, rtt=self.cache.rtt,
                            counter=self._counter(model) if policy == "round-robin" else 0,
                            u=self._rng.random() if policy in ("plan", "random", "expected-delay") else 0.0,
                            backlog=backlog, paces=paces, spread=spread)
            if backlog is not None and charge:
                seconds = service_time(plan, model, chosen.node.name, paces)
                if seconds is not None:
                    self._backlog.charge(chosen.node.name, seconds, now)
            return chosen
        if not provision:
            raise ApiError(503, f"no reachable instance of model {model}")
        if self.cache.state.serving.get(model):
            # Instances exist but each refused a connection lately: wait for them (or for the next
            # refresh to report them gone), do not start another one.
            wait = max(1, math.ceil(self.cache.bad_for(model)))
            raise ApiError(503, f"no reachable instance of model {model}: its instances refused connections",
                           headers={"Retry-After": str(wait)}, extra={"model": model, "provisioning": False})
        refusal = self.provisioner.request(spec, zone=zone)
        headers = {"Retry-After": str(refusal.retry_after)} if refusal.retry_after is not None else {}
        raise ApiError(503, refusal.reason, headers=headers,
                       extra={"model": model, "provisioning": refusal.retry_after is not None})

    def listing(self, *, zone: str | None) -> list[dict]:
        """Return one service object per catalog model with a ready instance (GET /services).

        Under the deterministic policies the list depends only on the cluster picture (and the zone
        for nearest), so it is built once per refresh instead of once per request (the thesis's
        list cost grew with every model: Table 6.6)."""
        policy = self.settings.policy
        key = None
        if policy in ("lowest-cpu", "nearest") and not self.cache.has_bad:
            key = (self.cache.version, id(self.cache.catalog), zone if policy == "nearest" else None,
                   self.cache.rtt_version if policy == "nearest" else None)
            cached = self._listing
            if cached is not None and cached[0] == key:
                return cached[1]
        catalog = self.cache.catalog
        services = []
        for name in self.cache.state.serving:
            if name in catalog and self.cache.candidates(name):
                services.append(self.pick(name, zone=zone, provision=False, charge=False).to_json())
        if key is not None:
            self._listing = (key, services)
        return services

    def close(self) -> None:
        """Stop background work and close connections."""
        self.cache.close()
        self.store.close()
        self._backlog.close()
        with self._pools_lock:
            pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.close()


def _backlog(settings: Settings) -> Backlog | SharedBacklog:
    """expected-delay's backlog: shared by the workers when it can be (see frontend/backlog.py)."""
    if settings.backlog_shared and settings.policy == "expected-delay":
        path = backlog_path(settings.database_path)
        try:
            return SharedBacklog(path, drain=settings.backlog_drain)
        except OSError as exc:
            log.warning("cannot share expected-delay's backlog in %s (%s): each worker counts its own", path, exc)
    return Backlog(drain=settings.backlog_drain)


def current_runtime() -> Runtime:
    """Return the Runtime of the app serving the current request."""
    return current_app.extensions["frontend"]
