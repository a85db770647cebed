"""The worker's view of the cluster, refreshed by a background thread.

Why: the thesis's front-end queried Kubernetes on every client request, so its answer time grew
with the number of models (Tables 6.6/6.7: 213 ms for 1 model, 435 ms for 3). Here a thread reads
nodes and deployments every `refresh_interval` seconds and swaps in an immutable ClusterState; a
request only reads that reference. A failed read keeps the last good state (and is logged and
counted). The same thread reloads the catalog when its file changes, picks up a plan another
worker stored, releases finished provisioning claims and prunes old request rows.

Each gunicorn worker has its own cache (and its own cluster adapter); the thread is (re)started
lazily in the process that serves, so a fork after create_app() is harmless.
"""
from __future__ import annotations

import importlib
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

from cluster import open_cluster
from cluster.catalog import Catalog, CatalogError, load_catalog
from cluster.port import Cluster, ClusterError, ClusterUnavailable

from . import metrics
from .config import ConfigError, Settings
from .dispatch import Plan, PlanError, merge_rtt, parse_plan, rtt_from_alto
from .snapshot import EMPTY_STATE, Candidate, ClusterState
from .store import StatsStore

__all__ = ["StateCache", "make_cluster_factory"]

log = logging.getLogger("frontend.state")
PRUNE_EVERY = 60.0   # seconds between two retention passes
STARTING_INTERVAL = 0.25   # seconds between reads while an instance is starting
CLAIM_SETTLE_REFRESHES = 2   # refresh intervals a landed claim is kept, so every worker sees the instance


def make_cluster_factory(settings: Settings) -> Callable[[], Cluster]:
    """Return a function that opens the configured cluster adapter."""
    kind = settings.cluster
    kwargs = dict(settings.cluster_settings)
    if ":" in kind:
        module_name, _, attr = kind.partition(":")

        def factory() -> Cluster:
            try:
                target = getattr(importlib.import_module(module_name), attr)
            except (ImportError, AttributeError) as exc:
                raise ConfigError(f"cluster: cannot import {kind!r}: {exc}") from exc
            return target(**kwargs)
        return factory
    if kind not in ("local", "kubernetes"):
        raise ConfigError(f"cluster: must be 'local', 'kubernetes' or 'module:factory', got {kind!r}")
    if kind == "local" and settings.catalog and "catalog_path" not in kwargs:
        kwargs["catalog_path"] = str(settings.catalog_path)
    return lambda: open_cluster(kind, **kwargs)


class StateCache:
    """Hold the latest ClusterState, catalog, plan and rtt table for one worker process."""

    def __init__(self, *, settings: Settings, store: StatsStore, cluster_factory: Callable[[], Cluster]):
        self.settings = settings
        self.store = store
        self._factory = cluster_factory
        self.cluster: Cluster | None = None
        self.cluster_lock = threading.Lock()     # adapters are not promised to be thread-safe
        self.state: ClusterState = EMPTY_STATE
        self.version = 0                           # bumped at every successful refresh
        self.last_error: str | None = None
        self.last_attempt = 0.0
        self.catalog: Catalog = load_catalog(settings.catalog_path)
        self._catalog_mtime = self._mtime(settings.catalog_path)
        self.plan: Plan | None = None
        self._plan_received: float | None = None
        self._cluster_plan_version: str | None = None   # resourceVersion of the cluster's plan last taken
        self.configured_rtt = self._load_rtt()      # settings rtt, then the ALTO cost map
        self.rtt = self.configured_rtt                # ... overlaid with the plan's measured rtt
        self.rtt_version = 0                          # bumped whenever self.rtt is replaced
        # endpoint -> (monotonic time it may be used again, created time of the instance that failed):
        # a replacement on the same address and port (a restarted model server) is a new instance.
        self._bad: dict[str, tuple[float, float | None]] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._start_lock = threading.Lock()
        self._last_prune = 0.0
        self._listeners: list[Callable[[ClusterState, ClusterState], None]] = []

    # -- configuration sources ------------------------------------------------------------------
    @staticmethod
    def _mtime(path: Path) -> float | None:
        try:
            return path.stat().st_mtime
        except OSError:
            return None

    def _load_rtt(self) -> dict[str, dict[str, float]]:
        rtt = {z: dict(row) for z, row in self.settings.rtt.items()}
        if self.settings.alto_cost_map:
            path = self.settings.path(self.settings.alto_cost_map)
            try:
                alto = rtt_from_alto(json.loads(path.read_text()))
            except (OSError, ValueError) as exc:
                raise ConfigError(f"alto_cost_map {path}: {exc}") from exc
            for zone, row in alto.items():
                rtt.setdefault(zone, {}).update({n: c for n, c in row.items() if n not in rtt.get(zone, {})})
        return rtt

    def _reload_catalog(self) -> None:
        path = self.settings.catalog_path
        mtime = self._mtime(path)
        if mtime == self._catalog_mtime:
            return
        try:
            self.catalog = load_catalog(path)
            log.info("catalog reloaded", extra={"event": "catalog_reloaded", "models": len(self.catalog)})
        except CatalogError as exc:
            log.warning("catalog reload failed; keeping the previous one",
                        extra={"event": "catalog_reload_failed", "error": str(exc)})
        self._catalog_mtime = mtime

    def _reload_plan(self) -> None:
        received = self.store.plan_received()
        if received is None or received == self._plan_received:
            return
        stored = self.store.get_plan()
        if stored is not None:
            body, received = stored
            # stored as Plan.to_json() wrote it; a field a newer replica added is not ours to read
            known = {k: v for k, v in body.items() if k in Plan.__dataclass_fields__}
            self.set_plan(Plan(**known), received=received)

    def _plan_from_cluster(self) -> None:
        """Take a new plan from the cluster when its adapter holds one (Kubernetes: the ConfigMap
        the back-end writes, watched by every replica), as PUT /plan would; a bad one is logged."""
        reader = getattr(self.cluster, "plan_document", None)
        if not callable(reader):
            return
        document = reader()
        if document is None or document[0] == self._cluster_plan_version:
            return
        self._cluster_plan_version = document[0]
        try:
            plan = parse_plan(json.loads(document[1]), known_models=self.catalog.names())
        except (ValueError, PlanError) as exc:
            log.warning("the cluster's plan is not valid; keeping the previous one",
                        extra={"event": "cluster_plan_invalid", "error": str(exc)})
            return
        received = time.time()
        self.store.put_plan(plan.to_json(), received=received)
        self.set_plan(plan, received=received)
        log.info("plan taken from the cluster", extra={"event": "cluster_plan", "version": document[0]})

    def set_plan(self, plan: Plan, *, received: float) -> None:
        """Use `plan` for the plan policy from now on, and its measured rtt (where it has an entry)
        for the nearest policy and on-demand placement."""
        self.plan = plan
        self._plan_received = received
        self.rtt = merge_rtt(self.configured_rtt, plan.rtt)
        self.rtt_version += 1

    # -- the refresh loop -------------------------------------------------------------------------
    def add_listener(self, listener: Callable[[ClusterState, ClusterState], None]) -> None:
        """Call `listener(old, new)` after each successful refresh."""
        self._listeners.append(listener)

    def open(self) -> None:
        """Open the cluster adapter now: a misconfigured adapter fails start-up, an unreachable one
        (ClusterUnavailable) is retried by the refresh thread."""
        with self.cluster_lock:
            if self.cluster is not None:
                return
            try:
                self.cluster = self._factory()
            except ClusterUnavailable as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("cluster unreachable at start-up; will retry",
                            extra={"event": "cluster_unavailable", "error": self.last_error})
            except (ClusterError, TypeError, ValueError) as exc:
                raise ConfigError(f"cluster {self.settings.cluster!r}: {exc}") from exc

    def deploy(self, model: str, node: str) -> None:
        """Ask the cluster to start `model` on `node` without waiting for it to be ready."""
        with self.cluster_lock:
            if self.cluster is None:
                self.cluster = self._factory()
            self.cluster.deploy(model, node, wait=False)

    def refresh(self) -> bool:
        """Read the cluster now; on failure keep the last good state. Return success."""
        self.last_attempt = time.time()
        try:
            with self.cluster_lock:
                if self.cluster is None:
                    self.cluster = self._factory()
                nodes = self.cluster.nodes()
                deployments = self.cluster.deployments()
        except Exception as exc:          # any adapter failure: serve the last good state
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("cluster refresh failed; keeping the last good state",
                        extra={"event": "refresh_failed", "error": self.last_error})
            try:
                self.store.increment(metrics.REFRESH_FAILURES, {})
            except Exception:
                pass
            return False
        old, new = self.state, ClusterState.build(nodes, deployments, fetched=time.time())
        self.state = new
        self.version += 1
        self.last_error = None
        self._forget_bad(new)
        for listener in self._listeners:
            try:
                listener(old, new)
            except Exception:
                log.exception("state listener failed", extra={"event": "listener_failed"})
        return True

    def _housekeeping(self) -> None:
        for step in (self._reload_catalog, self._plan_from_cluster, self._reload_plan, self._release_claims,
                     self._prune):
            try:
                step()
            except Exception as exc:
                log.warning("housekeeping step failed", extra={"event": "housekeeping_failed",
                                                                "step": step.__name__, "error": str(exc)})

    def _release_claims(self) -> None:
        """Drop claims that expired, and those whose deployment landed long enough ago that every
        worker (each refreshing on its own) has seen it; an earlier release lets a worker still
        holding the older state claim and start the model a second time."""
        state = self.state
        now = time.time()
        settled = now - CLAIM_SETTLE_REFRESHES * self.settings.refresh_interval
        for model, (node, claimed) in self.store.claims().items():
            landed = any(d.model == model and d.node == node for d in state.deployments)
            if (landed and claimed < settled) or claimed < now - self.settings.provision_timeout:
                self.store.release(model)

    def _prune(self) -> None:
        retention = self.settings.stats_retention
        now = time.time()
        if retention <= 0 or now - self._last_prune < min(PRUNE_EVERY, max(1.0, retention / 10)):
            return
        self._last_prune = now
        removed = self.store.prune(older_than=now - retention)
        if removed:
            log.info("pruned old request rows", extra={"event": "pruned", "rows": removed})

    def _starting(self) -> bool:
        """Tell whether an instance on a ready node is still starting (worth watching closely)."""
        state = self.state
        return any(not d.ready and state.nodes_by_name.get(d.node) is not None and state.nodes_by_name[d.node].ready
                   for d in state.deployments)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.refresh()
            self._housekeeping()
            # A new instance is served as soon as it is ready: look more often while one starts.
            interval = self.settings.refresh_interval
            if self._starting():
                interval = min(interval, STARTING_INTERVAL)
            self._wake.wait(interval)
            self._wake.clear()

    def ensure_running(self) -> None:
        """Start the refresh thread in this process if it is not running (cheap when it is)."""
        if self._thread is not None and self._pid == os.getpid() and self._thread.is_alive():
            return
        with self._start_lock:
            if self._thread is not None and self._pid == os.getpid() and self._thread.is_alive():
                return
            if self._pid != os.getpid():       # forked after create_app: start afresh here
                self._pid = os.getpid()
                self.cluster = None
                self.cluster_lock = threading.Lock()
                self._stop = threading.Event()
                self._wake = threading.Event()
            self._thread = threading.Thread(target=self._run, name="frontend-state", daemon=True)
            self._thread.start()

    def poke(self) -> None:
        """Ask the refresh thread to read the cluster now instead of at the next interval."""
        self._wake.set()

    def close(self) -> None:
        """Stop the refresh thread and release the adapter."""
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            thread.join(timeout=5)
        if self.cluster is not None:
            try:
                self.cluster.close()
            except Exception:
                pass

    # -- what requests read -------------------------------------------------------------------------
    def candidates(self, model: str) -> tuple[Candidate, ...]:
        """Return the serving candidates of `model`, minus endpoints this worker found dead."""
        found = self.state.serving.get(model, ())
        if self._bad and found:
            now = time.monotonic()
            return tuple(c for c in found if not self._skipped(c, now))
        return found

    def _skipped(self, candidate: Candidate, now: float) -> bool:
        until, created = self._bad.get(candidate.endpoint, (0.0, None))
        return until > now and (created is None or created == candidate.deployment.created)

    @property
    def has_bad(self) -> bool:
        """Tell whether this worker currently skips any endpoint."""
        return bool(self._bad)

    def bad_for(self, model: str) -> float:
        """Return seconds until the first of `model`'s skipped endpoints may be used again."""
        now = time.monotonic()
        waits = [self._bad[c.endpoint][0] - now if self._skipped(c, now) else 0.0
                 for c in self.state.serving.get(model, ())]
        return max(0.0, min(waits)) if waits else 0.0

    def mark_bad(self, endpoint: str, *, created: float | None = None) -> None:
        """Keep `endpoint` out of this worker's answers for bad_endpoint_seconds; with `created`,
        only the instance created then (a replacement at the same endpoint is served at once)."""
        self._bad[endpoint] = (time.monotonic() + self.settings.bad_endpoint_seconds, created)
        log.warning("endpoint refused a connection; skipping it",
                    extra={"event": "endpoint_bad", "endpoint": endpoint})
        self.poke()

    def _forget_bad(self, state: ClusterState) -> None:
        if not self._bad:
            return
        now = time.monotonic()
        live = {(d.endpoint, d.created) for d in state.deployments}
        endpoints = {endpoint for endpoint, _ in live}
        for endpoint, (until, created) in list(self._bad.items()):
            gone = endpoint not in endpoints if created is None else (endpoint, created) not in live
            if until <= now or gone:
                self._bad.pop(endpoint, None)

    def age(self) -> float | None:
        """Return seconds since the last successful read, None if never."""
        return time.time() - self.state.fetched if self.state.fetched else None

    def describe(self) -> dict[str, Any]:
        """Return a small health summary of the cache."""
        state = self.state
        return {
            "fetched": state.fetched or None,
            "age": round(self.age(), 3) if self.age() is not None else None,
            "nodes": len(state.nodes),
            "nodes_ready": sum(1 for n in state.nodes if n.ready),
            "deployments": len(state.deployments),
            "models_serving": len(state.serving),
            "last_error": self.last_error,
            "bad_endpoints": sorted(self._bad),
        }
