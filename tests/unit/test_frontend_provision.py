"""On-demand provisioning when its claim cannot be dropped: logged, told to the client, retried.

A failed attempt must not leave its claim in the shared database until the TTL runs out: the
release is retried at the next request (and after each refresh) once the database answers again.
Everything is real: a local cluster whose model files are missing (so the deploy fails), the
front-end's SQLite store, and a second connection that holds SQLite's write lock.
"""
from __future__ import annotations

import logging
import sqlite3
import time

import pytest

from frontend.config import settings_from_mapping
from frontend.provision import Provisioner
from frontend.state import StateCache, make_cluster_factory
from frontend.store import StatsStore

from tests.waiting import wait_for

MODEL = "half_plus_two"


@pytest.fixture
def parts(local_cluster_factory, tmp_path):
    empty = tmp_path / "no-models"
    empty.mkdir()
    cluster = local_cluster_factory(models_dir=empty)
    settings = settings_from_mapping({
        "cluster": "local", "database": str(tmp_path / "fe.db"), "provision_timeout": 3600,
        "cluster_settings": {"config_path": str(cluster.config_path), "state_path": str(cluster.state_path),
                             "models_dir": str(empty), "catalog_path": str(cluster.catalog_path)}})
    store = StatsStore(settings.database_path, busy_timeout=0.05)
    cache = StateCache(settings=settings, store=store, cluster_factory=make_cluster_factory(settings))
    assert cache.refresh()
    provisioner = Provisioner(cache=cache, store=store, retry_after=2, claim_ttl=settings.provision_timeout)
    yield cache, store, provisioner
    cache.close()
    store.close()


class _Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


def test_a_claim_that_cannot_be_released_is_retried_not_held_until_its_ttl(parts):
    cache, store, provisioner = parts
    seen = _Records()
    logging.getLogger("frontend.provision").addHandler(seen)
    spec = cache.catalog[MODEL]
    writer = sqlite3.connect(store.path, isolation_level=None, timeout=0.05)
    with cache.cluster_lock:                       # hold the deploy until the database is locked
        first = provisioner.request(spec)
        assert first.retry_after == 2 and MODEL in store.claims()
        writer.execute("BEGIN EXCLUSIVE")
    wait_for(lambda: MODEL in provisioner.unreleased and not provisioner._inflight, what="the failed attempt")
    assert "not found" in provisioner.last_error[MODEL]          # the deploy failed: no model files
    assert "locked" in provisioner.unreleased[MODEL]
    assert any(r.msg.startswith("cannot release the provisioning claim") and r.levelname == "ERROR"
               for r in seen.records)
    # while the database still refuses, the client is told why, and no new attempt starts
    refused = provisioner.request(spec)
    assert "cannot be released" in refused.reason and "not found" in refused.reason
    writer.execute("ROLLBACK")
    # once the database answers, the next request drops the stale claim and tries again at once
    again = provisioner.request(spec)
    assert "cannot be released" not in again.reason
    wait_for(lambda: not provisioner._inflight, what="the second attempt")
    assert provisioner.unreleased == {} and MODEL not in store.claims()
    writer.close()
    logging.getLogger("frontend.provision").removeHandler(seen)


def test_the_refresh_listener_retries_failed_releases(parts):
    cache, store, provisioner = parts
    store.claim(MODEL, "node-a", now=time.time(), ttl=3600)
    provisioner.unreleased[MODEL] = "OperationalError: database is locked"
    cache.add_listener(provisioner.retry_releases)
    assert cache.refresh()
    assert provisioner.unreleased == {} and MODEL not in store.claims()


@pytest.fixture
def live(local_cluster_factory, tmp_path):
    """A cache, store and provisioner over a local cluster that can start the model for real."""
    cluster = local_cluster_factory()
    settings = settings_from_mapping({
        "cluster": "local", "database": str(tmp_path / "fe.db"), "refresh_interval": 0.5,
        "cluster_settings": {"config_path": str(cluster.config_path), "state_path": str(cluster.state_path),
                             "models_dir": str(cluster.models_dir), "catalog_path": str(cluster.catalog_path)}})
    store = StatsStore(settings.database_path)
    cache = StateCache(settings=settings, store=store, cluster_factory=make_cluster_factory(settings))
    assert cache.refresh()
    yield cluster, cache, store
    cache.close()
    store.close()


class _RefreshBeforeClaim(StatsStore):
    """The interleaving that started a model twice: the refresh thread publishes a state with the
    model and drops the landed claim after the request read the state and before it claims."""

    def __init__(self, path, *, cache_box):
        super().__init__(path)
        self.cache_box = cache_box

    def claim(self, model, node, *, now, ttl):
        cache = self.cache_box[0]
        if not cache.state.deployments_of(model):
            cache.deploy(model, node)
            assert cache.refresh()
            self.release(model)
        return super().claim(model, node, now=now, ttl=ttl)


def test_a_model_that_landed_while_claiming_is_not_started_again(live, tmp_path):
    cluster, cache, _ = live
    box = [cache]
    store = _RefreshBeforeClaim(tmp_path / "race.db", cache_box=box)
    provisioner = Provisioner(cache=cache, store=store, retry_after=2, claim_ttl=60)
    stale = cache.state                      # the state the request reads: no instance yet
    answer = provisioner.request(cache.catalog[MODEL])
    assert not stale.deployments_of(MODEL) and cache.state.deployments_of(MODEL)
    assert answer.reason.startswith(f"model {MODEL} is starting on node") and answer.retry_after == 2
    assert not provisioner._inflight                          # no second deployment was started
    assert [d.model for d in cluster.deployments()] == [MODEL]
    store.close()


def test_a_landed_claim_is_kept_until_every_worker_has_refreshed(live):
    cluster, cache, store = live
    node = cluster.nodes()[0].name
    cluster.deploy(MODEL, node, wait=False)
    store.claim(MODEL, node, now=time.time(), ttl=3600)
    assert cache.refresh() and cache.state.deployments_of(MODEL)
    cache._release_claims()
    assert MODEL in store.claims()          # landed, but other workers may still hold the old state
    store.release(MODEL)
    store.claim(MODEL, node, now=time.time() - 2 * 0.5 - 0.01, ttl=3600)
    cache._release_claims()
    assert MODEL not in store.claims()      # two refresh intervals later: every worker has seen it


def test_a_plan_another_worker_stored_is_taken_whole(live):
    # PUT /plan stores Plan.to_json() in the shared file; every other worker reads it back from there
    _, cache, store = live
    body = {"created": 5.0, "mode": 1, "solver": "highs", "weights": {MODEL: {"z": {"node-a": 1.0}}},
            "rtt": {"z": {"node-a": 0.003}}, "service": {MODEL: {"node-a": 0.07}}, "idle": {MODEL: {"node-a": 0.05}},
            "from_a_newer_replica": {"x": 1}}
    store.put_plan(body, received=6.0)
    cache._reload_plan()
    assert cache.plan.to_json() == {k: v for k, v in body.items() if k != "from_a_newer_replica"}
    assert cache.plan.idle == {MODEL: {"node-a": 0.05}} and cache.rtt["z"]["node-a"] == 0.003
