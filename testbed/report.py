"""The experiment's results: results.json (the shape other tools read), results.md and PNG plots.

results.json:
    {"scenario": {...the scenario, its ground truth and seed...},
     "trace": {"requests": N, "counts": {...per phase/zone/model...}},
     "strategies": {NAME: {"latency": {"mean", "p50", "p95", "p99"},      # seconds, every arrival
                           "phases": [{"phase", "latency": {...}, "sent", "ok", "failed", "slo_met",
                                       "predicted_mean", "objective_mean", "predictions": {DISPATCH: s},
                                       "achieved_mean_ok",
                                       "achieved_call_mean_ok", "achieved_call_mean_after_lag",
                                       "nodes": {NODE: {"rate", "slo_met", "server_p50"}}}, ...],
                           "zones": {ZONE: {"latency": {...}, "sent", "ok", "failed", "slo_met"}},
                           "sent", "ok", "failed", "slo_met", "parts": {"network", "server", "lookup"},
                           "instances": [{"t", "instances", "memory_used", ...}, ...],
                           "backend_runs": [{"t", "seconds", "status", "predicted_mean", "objective_mean", ...}, ...],
                           "predicted_mean", "achieved_mean_ok", "achieved_call_mean_ok", "errors": {...}, "limits": ...}}}

A failed request counts: as failed, and in the latency figures at the client's timeout. Nothing is
discarded as warm-up.
"""
from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Sequence

from common.plotting import pyplot

from .scenario import Scenario
from .trace import Arrival, summarize

__all__ = ["write_results", "latency_stats"]

BIN = 10.0      # seconds per point of the p95-over-time plot
# A back-end run counts as a prediction of a phase only from this far into it: an earlier run planned
# for the previous phase's traffic (its window, and its rate window of 10 s: testbed.strategies).
PREDICTION_LAG = 10.0


def latency_stats(values: Sequence[float]) -> dict:
    """mean, p50, p95, p99 (nearest rank) of `values` in seconds; None when empty."""
    if not values:
        return {"mean": None, "p50": None, "p95": None, "p99": None, "n": 0}
    data = sorted(values)

    def pct(q: float) -> float:
        return round(data[min(len(data) - 1, max(0, math.ceil(q * len(data)) - 1))], 6)

    return {"mean": round(sum(data) / len(data), 6), "p50": pct(0.50), "p95": pct(0.95), "p99": pct(0.99),
            "n": len(data)}


def _group(records: list, slo: float | None) -> dict:
    out = {"latency": latency_stats([r.latency for r in records]),
           "sent": sum(1 for r in records if r.started is not None),
           "ok": sum(1 for r in records if r.ok), "failed": sum(1 for r in records if not r.ok)}
    out["slo_met"] = (round(sum(1 for r in records if r.ok and r.latency <= slo) / len(records), 6)
                      if slo is not None and records else None)
    return out


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 6) if values else None


def _nodes(records: list, seconds: float, slo: float | None) -> dict:
    """Where a phase's requests went: per node, requests/s sent there, the share of them answered
    within the SLO, and the node's median server time (Server-Timing: queue wait + compute). Shows
    which node a strategy overloaded, and how far its real pace was from the profiled one."""
    by_node: dict[str, list] = defaultdict(list)
    for r in records:
        if r.node is not None:
            by_node[r.node].append(r)
    out = {}
    for node, rs in sorted(by_node.items()):
        met = (round(sum(1 for r in rs if r.ok and r.latency <= slo) / len(rs), 6) if slo is not None else None)
        out[node] = {"rate": round(len(rs) / seconds, 3) if seconds > 0 else None, "slo_met": met,
                     "server_p50": latency_stats([r.server for r in rs if r.ok and r.server is not None])["p50"]}
    return out


def _strategy_doc(run, scenario: Scenario) -> dict:
    records = run.clients.records
    slo = scenario.slo
    doc = _group(records, slo)
    by_phase: dict[int, list] = defaultdict(list)
    by_zone: dict[str, list] = defaultdict(list)
    for r in records:
        by_phase[r.phase].append(r)
        by_zone[r.zone].append(r)
    doc["phases"] = [{"phase": p.index, **_group(by_phase.get(p.index, []), slo)} for p in scenario.phases]
    doc["zones"] = {z: _group(by_zone.get(z, []), slo) for z in scenario.zone_names}
    ok = [r for r in records if r.ok]
    doc["parts"] = {"network": _mean([r.network for r in ok if r.network is not None]),
                    "server": _mean([r.server for r in ok if r.server is not None]),
                    "lookup": _mean([r.lookup for r in ok if r.lookup is not None])}
    errors: dict[str, int] = defaultdict(int)
    for r in records:
        if r.error:
            errors[r.error.split(":")[0][:80]] += 1
    doc["errors"] = dict(errors)
    doc["instances"] = run.samples
    doc["backend_runs"] = run.backend_runs
    doc["predicted_mean"] = _weighted([(b.get("predicted_mean"), b["requests"]) for b in run.backend_runs
                                       if b.get("requests")])
    doc["achieved_mean_ok"] = latency_stats([r.latency for r in ok])["mean"]
    doc["achieved_call_mean_ok"] = _call_mean(ok)
    for phase_doc, phase in zip(doc["phases"], scenario.phases):
        within = [b for b in run.backend_runs
                  if b.get("requests") and phase.start + PREDICTION_LAG <= b["t"] < phase.end]
        for key in ("predicted_mean", "objective_mean"):
            phase_doc[key] = _weighted([(b.get(key), b["requests"]) for b in within])
        kinds = sorted({k for b in within for k in b.get("predictions") or {}})
        phase_doc["predictions"] = {k: _weighted([((b.get("predictions") or {}).get(k), b["requests"])
                                                  for b in within]) for k in kinds}
        phase_doc["achieved_mean_ok"] = latency_stats([r.latency for r in by_phase.get(phase.index, [])
                                                       if r.ok])["mean"]
        phase_doc["achieved_call_mean_ok"] = _call_mean([r for r in by_phase.get(phase.index, []) if r.ok])
        # the requests the phase's predictions were made for: from PREDICTION_LAG into it (the first
        # seconds were planned by runs of the phase before, or, in phase 0, are the system's start)
        phase_doc["achieved_call_mean_after_lag"] = _call_mean(
            [r for r in by_phase.get(phase.index, []) if r.ok and r.scheduled >= phase.start + PREDICTION_LAG])
        phase_doc["nodes"] = _nodes(by_phase.get(phase.index, []), phase.duration, slo)
    solve = [b["seconds"] for b in run.backend_runs if b.get("seconds") is not None]
    doc["solve_seconds"] = latency_stats(solve)
    doc["setup_seconds"] = round(run.setup_seconds, 3)
    doc["limits"] = run.limits
    doc["server_timing_missing"] = run.clients.server_timing_missing
    return doc


def _scenario_doc(scenario: Scenario) -> dict:
    return {"path": str(scenario.path) if scenario.path else None, "seed": scenario.seed,
            "nodes": [n.to_dict() for n in scenario.nodes],
            "zones": [{"name": z.name, "rtt": dict(z.rtt)} for z in scenario.zones],
            "alto": {z: dict(row) for z, row in (scenario.alto or {}).items()} or None,
            "phases": [{"duration": p.duration, "rate": p.rate, "burstiness": p.burstiness,
                        "zones": dict(p.zones), "popularity": dict(p.popularity), "zipf": p.zipf}
                       for p in scenario.phases],
            "slo": scenario.slo, "models": list(scenario.models)}


def _ratio(value, base) -> str:
    if value is None or not base:
        return "-"
    return f"{value / base:.2f}"


def _ms(value) -> str:
    return "-" if value is None else f"{value * 1000:.1f}"



def _weighted(pairs: list[tuple[float | None, int]]) -> float | None:
    """The mean of the values (None: left out) weighted by their counts; None when none is left."""
    kept = [(v, n) for v, n in pairs if v is not None]
    return round(sum(v * n for v, n in kept) / sum(n for _, n in kept), 6) if kept else None


def _call_mean(records) -> float | None:
    """Mean time of the inference call alone (end to end minus the lookup): what the solver predicts."""
    calls = [r.latency - (r.lookup or 0.0) for r in records]
    return latency_stats(calls)["mean"] if calls else None

def _calibration_lines(calibration: dict | None) -> list[str]:
    """The nodes' quota scale per class, where one is not 1."""
    scales = (calibration or {}).get("scale") or {}
    if all(s == 1.0 for s in scales.values()):
        return []
    return ["Nodes' cpu_quota scaled (" + ", ".join(f"{c} x {s:.3f}" for c, s in scales.items())
            + f") to run at the reference host's speed ({calibration['why']}); the systems planned with "
            f"{calibration['catalog']}, measured at those quotas.", ""]


def _settings_text(settings: dict | None) -> str:
    return (", front-end settings " + ", ".join(f"{k}={v}" for k, v in settings.items())) if settings else ""


def markdown(doc: dict) -> str:
    strategies = doc["strategies"]
    base = strategies.get("ours")
    lines = [f"# Testbed results: {doc['scenario'].get('path') or 'scenario'}", "",
             f"{doc['trace']['requests']} requests, seed {doc['scenario']['seed']}, client mode {doc['mode']}, "
             f"back-end every {doc['every']:g} s, initial deployment {doc.get('initial', 'spread')}, "
             f"SLO {doc['scenario']['slo']} s{_settings_text(doc.get('frontend_settings'))}. Latency in ms over every "
             "arrival (a failed request counts at the client's timeout); ratios are to `ours`.", "",
             *_calibration_lines(doc.get("calibration")),
             "| strategy | sent | ok | failed | mean | p50 | p95 | p99 | SLO met | mean / ours | p95 / ours |"
             " network | server | predicted mean | solve p50 |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, s in strategies.items():
        lat = s["latency"]
        slo = "-" if s["slo_met"] is None else f"{s['slo_met'] * 100:.1f}%"
        lines.append(f"| {name} | {s['sent']} | {s['ok']} | {s['failed']} | {_ms(lat['mean'])} | {_ms(lat['p50'])} | "
                     f"{_ms(lat['p95'])} | {_ms(lat['p99'])} | {slo} | "
                     f"{_ratio(lat['mean'], base['latency']['mean'] if base else None)} | "
                     f"{_ratio(lat['p95'], base['latency']['p95'] if base else None)} | "
                     f"{_ms(s['parts']['network'])} | {_ms(s['parts']['server'])} | {_ms(s['predicted_mean'])} | "
                     f"{_ms(s['solve_seconds']['p50'])} |")
    lines += ["", "Per phase (mean / p95 ms; predicted mean of the back-end runs made at least"
              f" {PREDICTION_LAG:g} s into that phase, for the front-end's dispatch (`obj`: the solver's own"
              " objective per request, `pooled`: the closed form for expected-delay, where they differ), vs"
              " achieved mean of the successful requests, and"
              " of their inference call alone, without the lookup, which is what the prediction covers, over the"
              f" whole phase and from {PREDICTION_LAG:g} s into it, the requests the predictions were made for):", "",
              "| strategy | " + " | ".join(f"phase {i}" for i in range(len(doc["scenario"]["phases"]))) + " |",
              "| --- |" + " ---: |" * len(doc["scenario"]["phases"])]
    for name, s in strategies.items():
        cells = []
        for p in s["phases"]:
            objective = p.get("objective_mean")
            also = f", obj {_ms(objective)}" if objective is not None and objective != p.get("predicted_mean") else ""
            pooled = (p.get("predictions") or {}).get("pooled")
            also += f", pooled {_ms(pooled)}" if pooled is not None and pooled != p.get("predicted_mean") else ""
            cells.append(f"{_ms(p['latency']['mean'])} / {_ms(p['latency']['p95'])} "
                         f"(pred {_ms(p.get('predicted_mean'))}{also}, ach {_ms(p.get('achieved_mean_ok'))}, "
                         f"call {_ms(p.get('achieved_call_mean_ok'))}, "
                         f"from {PREDICTION_LAG:g} s {_ms(p.get('achieved_call_mean_after_lag'))})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    zones = list(doc["scenario"]["zones"])
    lines += ["", "Per zone (mean / p95 ms):", "",
              "| strategy | " + " | ".join(z["name"] for z in zones) + " |", "| --- |" + " ---: |" * len(zones)]
    for name, s in strategies.items():
        lines.append(f"| {name} | " + " | ".join(
            f"{_ms(s['zones'][z['name']]['latency']['mean'])} / {_ms(s['zones'][z['name']]['latency']['p95'])}"
            for z in zones) + " |")
    nodes = sorted({n for s in strategies.values() for p in s["phases"] for n in p["nodes"]})
    lines += ["", "Per node and phase (requests/s sent there, share of them within the SLO, median server time"
              " in ms: queue wait + compute):", "",
              "| strategy | phase | " + " | ".join(nodes) + " |", "| --- | ---: |" + " ---: |" * len(nodes)]
    for name, s in strategies.items():
        for p in s["phases"]:
            cells = []
            for node in nodes:
                n = p["nodes"].get(node)
                met = "-" if n is None or n["slo_met"] is None else f"{n['slo_met'] * 100:.0f}%"
                cells.append("-" if n is None else f"{n['rate']:.1f}/s, {met}, {_ms(n['server_p50'])}")
            lines.append(f"| {name} | {p['phase']} | " + " | ".join(cells) + " |")
    lines += ["", "Errors: " + "; ".join(f"{name}: {s['errors'] or 'none'}" for name, s in strategies.items()), ""]
    return "\n".join(lines)


def plot(doc: dict, runs, out_dir: Path, scenario: Scenario) -> list[Path]:
    plt = pyplot("the experiment's plots")
    if plt is None:
        return []
    written = []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for run in runs:
        data = sorted(r.latency * 1000 for r in run.clients.records)
        if data:
            ax.plot(data, [(i + 1) / len(data) for i in range(len(data))], label=run.name)
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms, log scale; failures at the timeout)")
    ax.set_ylabel("share of requests")
    ax.set_title("Latency CDF per strategy")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    written.append(out_dir / "latency_cdf.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for run in runs:
        bins: dict[int, list[float]] = defaultdict(list)
        for r in run.clients.records:
            bins[int(r.scheduled // BIN)].append(r.latency)
        xs = sorted(bins)
        ax.plot([(x + 0.5) * BIN for x in xs], [latency_stats(bins[x])["p95"] * 1000 for x in xs],
                marker=".", label=run.name)
    for phase in scenario.phases[1:]:
        ax.axvline(phase.start, color="grey", linestyle="--", linewidth=1)
    ax.set_yscale("log")
    ax.set_xlabel("time (s); dashed: phase boundaries")
    ax.set_ylabel(f"p95 latency per {BIN:g} s (ms, log)")
    ax.set_title("p95 latency over time")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    written.append(out_dir / "p95_over_time.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for run in runs:
        ax.step([s["t"] for s in run.samples], [s["instances"] for s in run.samples], where="post", label=run.name)
    for phase in scenario.phases[1:]:
        ax.axvline(phase.start, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("time (s); dashed: phase boundaries")
    ax.set_ylabel("ready model instances")
    ax.set_title("Instances over time")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    written.append(out_dir / "instances_over_time.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)
    return written


def write_results(scenario: Scenario, trace: list[Arrival], runs, out_dir: Path, *, mode: str,
                  every: float, initial: str = "spread", calibration: dict | None = None,
                  frontend_settings: dict[str, str] | None = None) -> dict:
    """Write results.json, results.md and the plots; return the results document. `calibration`:
    the nodes' quota scale per node class, why, and the catalog the systems ran with (testbed.calibrate);
    `frontend_settings`: the front-end settings given beside each strategy's policy."""
    calibration = calibration or {"scale": {n.node_class: 1.0 for n in scenario.nodes}, "why": "not calibrated",
                                  "catalog": str(scenario.catalog_path)}
    doc = {"scenario": _scenario_doc(scenario), "mode": mode, "every": every, "initial": initial,
           "frontend_settings": dict(frontend_settings or {}), "calibration": calibration,
           "trace": {"requests": len(trace), "counts": summarize(trace)},
           "strategies": {run.name: _strategy_doc(run, scenario) for run in runs}}
    (out_dir / "results.json").write_text(json.dumps(doc, indent=1, allow_nan=False, default=str))
    (out_dir / "results.md").write_text(markdown(doc))
    doc["plots"] = [str(p) for p in plot(doc, runs, out_dir, scenario)]
    return doc
