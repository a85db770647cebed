"""Merging the statistics of several front-end replicas (pure): summed once, never twice."""
from __future__ import annotations

import pytest

from backend.collect import (DurationStat, FrontendError, GroupStat, InstanceStat, ModelStat, NodeMemory, Observed,
                             RttStat, Summary)
from backend.replicas import merge_observed

NODES = [NodeMemory(node="n1", ready=True, node_class="small", total=1000, used=100, available=900,
                    cpu_capacity=2.0, cpu_usage=0.5)]


def observed(store, *, count, zone="z1", last=100.0, provisioned=50.0, since=10.0, bins=((3, 1, 0.01),),
             rtt=((0.0, 1, 0.02),), dispersion=None, pace=None, pace_idle=None, joint=None):
    summary = Summary(pace=pace or {}, pace_idle=pace_idle or {},
        arrival_total=(joint[0], 0) if joint else None, joint_dispersion=joint[1] if joint else None,
        dispersion={"m": dispersion} if dispersion is not None else {}, arrival_count={"m": count},
        groups=[GroupStat(model="m", zone=zone, node="n1", kind="proxy", count=count, ok=count, latency_count=1,
                          latency_sum=0.1, last_request=last)],
        durations=[DurationStat(model="m", node="n1", kind="proxy", bins=bins)],
        since=since, relative_error=0.045, rtt=[RttStat(zone=zone, node="n1", buckets=rtt)], until=last, store=store)
    models = [ModelStat(model="m", count=count, last_requested=last,
                        instances=(InstanceStat(node="n1", provisioned=provisioned, count=count, last_requested=last),))]
    return Observed(requests=[], models=models, nodes=NODES, since=since, collected=last, summary=summary)


def test_replicas_are_summed_and_latest_times_kept():
    merged = merge_observed([("http://a", observed("A", count=3, last=100.0)),
                             ("http://b", observed("B", count=5, last=120.0, since=5.0)),
                             ("http://c", observed("C", count=2, zone="z2"))])
    assert merged.requests_read == 10
    groups = {(g.zone, g.node): g for g in merged.summary.groups}
    assert groups[("z1", "n1")].count == 8 and groups[("z1", "n1")].latency_sum == pytest.approx(0.2)
    assert groups[("z1", "n1")].last_request == 120.0 and groups[("z2", "n1")].count == 2
    (durations,) = merged.summary.durations
    assert durations.bins == ((3, 3, pytest.approx(0.03)),)
    assert {r.zone: r.buckets for r in merged.summary.rtt} == {"z1": ((0.0, 2, pytest.approx(0.04)),),
                                                               "z2": ((0.0, 1, 0.02),)}
    (model,) = merged.models
    assert model.count == 10 and model.last_requested == 120.0
    assert model.instances == (InstanceStat(node="n1", provisioned=50.0, count=10, last_requested=120.0),)
    assert merged.nodes == NODES and merged.since == 5.0 and merged.summary.since == 5.0


def test_two_replicas_on_one_database_count_once():
    merged = merge_observed([("http://a", observed("A", count=3)), ("http://b", observed("A", count=3)),
                             ("http://c", observed("C", count=4))])
    assert merged.requests_read == 7
    assert any("share one statistics database" in w for w in merged.warnings)


def test_dispersion_is_the_count_weighted_mean_of_the_stores():
    merged = merge_observed([("http://a", observed("A", count=10, dispersion=2.0)),
                             ("http://b", observed("B", count=30, dispersion=5.0)),
                             ("http://b2", observed("B", count=30, dispersion=5.0)),    # the same store: once
                             ("http://c", observed("C", count=1))])                    # too few seconds: no index
    # two independent streams: variances add (2 x 10 + 5 x 30), and means (10 + 30)
    assert merged.summary.dispersion == {"m": pytest.approx((2.0 * 10 + 5.0 * 30) / 40)}
    assert merged.summary.arrival_count == {"m": 41}
    assert merge_observed([("http://c", observed("C", count=1))]).summary.dispersion == {}

    # all models together merge the same way; a store without the figure is left out of the mean
    joint = merge_observed([("http://a", observed("A", count=10, joint=(10, 2.0))),
                            ("http://b", observed("B", count=30, joint=(30, 6.0))),
                            ("http://c", observed("C", count=5))])
    assert joint.summary.joint_dispersion == pytest.approx((2.0 * 10 + 6.0 * 30) / 40)
    assert merge_observed([("http://c", observed("C", count=5))]).summary.joint_dispersion is None


def test_pace_is_the_count_weighted_mean_of_the_stores():
    merged = merge_observed([("http://a", observed("A", count=1, pace={("m", "n1"): (1, 0.02), ("m", "n2"): (2, 0.1)})),
                             ("http://b", observed("B", count=1, pace={("m", "n1"): (3, 0.06)})),
                             ("http://b2", observed("B", count=1, pace={("m", "n1"): (3, 0.06)})),    # once
                             ("http://c", observed("C", count=1))])                                  # none
    assert merged.summary.pace == {("m", "n1"): (4, pytest.approx((0.02 + 3 * 0.06) / 4)), ("m", "n2"): (2, 0.1)}
    assert merge_observed([("http://c", observed("C", count=1))]).summary.pace == {}
    # the service time after idleness merges the same way, apart from the back-to-back pace
    idle = merge_observed([("http://a", observed("A", count=1, pace_idle={("m", "n1"): (1, 0.04)})),
                           ("http://b", observed("B", count=1, pace_idle={("m", "n1"): (3, 0.08)}))])
    assert idle.summary.pace_idle == {("m", "n1"): (4, pytest.approx((0.04 + 3 * 0.08) / 4))}
    assert idle.summary.pace == {}


def test_no_replica_or_one_without_the_summary_is_an_error():
    with pytest.raises(FrontendError, match="no front-end replica"):
        merge_observed([])
    rows_only = Observed(requests=[], models=[], nodes=NODES, since=0.0, collected=0.0, summary=None)
    with pytest.raises(FrontendError, match="has no /stats/summary"):
        merge_observed([("http://a", observed("A", count=1)), ("http://old", rows_only)])


@pytest.mark.parametrize("argv, message", [
    (["--mode", "1", "--frontend-service", "frontend"], "--frontend-service needs --cluster kubernetes"),
    (["--mode", "1", "--cluster", "kubernetes", "--frontend-service", "Front_End"], "not a Service name"),
])
def test_frontend_service_is_checked_on_the_command_line(argv, message, capsys):
    from backend.__main__ import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_frontend_service_replaces_the_frontend_url():
    from backend.__main__ import build_parser, config_from_args

    cfg = config_from_args(build_parser().parse_args(
        ["--mode", "2", "--cluster", "kubernetes", "--frontend-service", "frontend"]))
    assert cfg.frontend_service == "frontend" and cfg.frontend == "service/frontend"
