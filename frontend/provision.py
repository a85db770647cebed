"""On-demand provisioning (thesis 4.5): a known model with no instance is started in the background.

The request that finds no instance never waits for a model server to start: it triggers at most one
deployment (a claim in the shared database dedupes attempts across workers, a set dedupes them
within one) and is answered 503 with Retry-After; the next call finds the instance once it is
ready. When no ready node has room the client gets 503 and the reason straight away.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from cluster.catalog import ModelSpec

from . import metrics
from .dispatch import choose_provision_node
from .state import StateCache
from .store import StatsStore

__all__ = ["Provisioner", "Refusal"]

log = logging.getLogger("frontend.provision")


@dataclass(frozen=True)
class Refusal:
    """Why a model cannot be served right now, and when to try again (None: not soon)."""

    reason: str
    retry_after: int | None


class Provisioner:
    """Start missing models on the best node, one attempt at a time."""

    def __init__(self, *, cache: StateCache, store: StatsStore, retry_after: int, claim_ttl: float):
        self.cache = cache
        self.store = store
        self.retry_after = retry_after
        self.claim_ttl = claim_ttl
        self._inflight: dict[str, str] = {}          # model -> node, in this worker
        self._lock = threading.Lock()
        self.last_error: dict[str, str] = {}
        # model -> why its claim could not be dropped after a failed attempt: retried at the next
        # request and after every cluster refresh, so the claim does not block until its TTL runs out
        self.unreleased: dict[str, str] = {}

    def request(self, spec: ModelSpec, *, zone: str | None = None) -> Refusal:
        """Make sure `spec` is being provisioned (near `zone` when known); return what to tell the client."""
        model = spec.name
        if model in self.unreleased and not self._release(model):
            return Refusal(f"model {model}: the last attempt failed ({self.last_error.get(model, 'unknown error')}) "
                           f"and its provisioning claim cannot be released ({self.unreleased[model]})",
                           self.retry_after)
        with self._lock:
            node = self._inflight.get(model)
        if node:
            return Refusal(f"model {model} is being provisioned on node {node}", self.retry_after)
        placement = choose_provision_node(self.cache.state, model, spec.memory, zone=zone, rtt=self.cache.rtt)
        if placement.pending:
            return Refusal(placement.reason, self.retry_after)
        if placement.node is None:
            reason = placement.reason
            if model in self.last_error:
                reason += f"; last attempt failed: {self.last_error[model]}"
            return Refusal(reason, None)
        target = placement.node.name
        if not self.store.claim(model, target, now=time.time(), ttl=self.claim_ttl):
            return Refusal(f"model {model} is being provisioned", self.retry_after)
        # The refresh thread may have published a state with the model (and then dropped the old
        # claim) between our read above and the claim: look again so one model is started once.
        state = self.cache.state
        landed = [d for d in state.deployments_of(model)
                  if (node := state.nodes_by_name.get(d.node)) is not None and node.ready and d.reason != "terminating"]
        if landed:
            return Refusal(f"model {model} is starting on node {landed[0].node}", self.retry_after)
        with self._lock:
            if model in self._inflight:
                return Refusal(f"model {model} is being provisioned on node {self._inflight[model]}",
                               self.retry_after)
            self._inflight[model] = target
        thread = threading.Thread(target=self._deploy, args=(model, target), daemon=True,
                                  name=f"frontend-provision-{model}")
        thread.start()
        return Refusal(placement.reason, self.retry_after)

    def _deploy(self, model: str, node: str) -> None:
        started = time.monotonic()
        outcome = "started"
        try:
            self.cache.deploy(model, node)
            self.last_error.pop(model, None)
            log.info("provisioning on demand", extra={"event": "provision_started", "model": model, "node": node,
                                                      "seconds": round(time.monotonic() - started, 3)})
        except Exception as exc:
            outcome = "failed"
            self.last_error[model] = f"{type(exc).__name__}: {exc}"
            log.warning("on-demand provisioning failed", extra={"event": "provision_failed", "model": model,
                                                                 "node": node, "error": str(exc)})
            self._release(model)
        finally:
            with self._lock:
                self._inflight.pop(model, None)
            try:
                self.store.increment(metrics.PROVISIONS, {"model": model, "outcome": outcome})
            except Exception as exc:    # a lost counter must not hide the attempt: say so
                log.warning("cannot count the provisioning attempt", extra={
                    "event": "metric_failed", "model": model, "error": f"{type(exc).__name__}: {exc}"})
            self.cache.poke()

    def _release(self, model: str) -> bool:
        """Drop the claim on `model`; on failure remember it (retried later) and say so. Return success."""
        try:
            self.store.release(model)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            first = model not in self.unreleased
            self.unreleased[model] = error
            # the first failure is an error; the retries (every refresh) only at debug, not a flood
            (log.error if first else log.debug)("cannot release the provisioning claim; will retry", extra={
                "event": "provision_release_failed", "model": model, "error": error})
            return False
        if self.unreleased.pop(model, None) is not None:
            log.info("provisioning claim released after a retry", extra={"event": "provision_released",
                                                                         "model": model})
        return True

    def retry_releases(self, *_: object) -> None:
        """Retry every claim whose release failed (called after each cluster refresh)."""
        for model in list(self.unreleased):
            self._release(model)
