"""`python -m testbed run SCENARIO.yaml --out DIR`: the achieved-latency experiment.

Each strategy (testbed.strategies) runs in turn on a clean system started by the same code
`make run` uses (scripts/run_system.py): a local cluster with node limits on a private loopback
block, the front-end under gunicorn, the back-end every `every` seconds. The clients
(testbed.clients) replay the same seeded trace against each; the system is told only the
scenario's ALTO map and learns the rest from the clients' reports. What is kept per strategy:
every request's record (requests.jsonl), instances and memory over time, every back-end run
(solve time, the solver's predicted mean latency), and the system's logs.

The results (results.json, results.md, PNG plots) are written by testbed.report.
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml

from .calibrate import CALIBRATION_ROUNDS, TOLERANCE, auto_scale, best_rounds, corrected, merge_rounds, profile_at
from .clients import ClientResults, run_clients
from .scenario import Scenario
from .strategies import STRATEGIES, Strategy, backend_flags
from .trace import Arrival, generate_trace, write_trace

__all__ = ["run_experiment", "frontend_setting", "StrategyRun", "spread_placement"]

REPO_ROOT = Path(__file__).resolve().parent.parent
INITIAL_STATES = ("spread", "empty")   # see run_strategy
SAMPLE_EVERY = 2.0          # seconds between two samples of the cluster (instances, memory)


@dataclass
class StrategyRun:
    name: str
    clients: ClientResults
    samples: list[dict] = field(default_factory=list)        # {t, instances, memory_used, per_model}
    backend_runs: list[dict] = field(default_factory=list)   # {t, seconds, status, objective, predicted_mean,...}
    started_at: float = 0.0
    setup_seconds: float = 0.0
    limits: str = ""
    errors: list[str] = field(default_factory=list)


def spread_placement(models: list[str], nodes: list[dict], memory: dict[str, int]) -> list[tuple[str, str]]:
    """Replicas the way Kubernetes' default scheduler spreads them: least allocated node first.

    Round after round, each model gets one more replica on the node with the smallest share of its
    memory allocated that has room and no replica of it yet, until no replica fits anywhere
    (as many as fit: the operator's best static deployment for an unknown load).
    """
    used = {n["name"]: 0 for n in nodes}
    total = {n["name"]: int(n["memory"]) for n in nodes}
    placed: list[tuple[str, str]] = []
    has: set[tuple[str, str]] = set()
    progress = True
    while progress:
        progress = False
        for model in models:
            fits = [n for n in total if (model, n) not in has and used[n] + memory[model] <= total[n]]
            if not fits:
                continue
            node = min(fits, key=lambda n: (used[n] / total[n], n))
            used[node] += memory[model]
            has.add((model, node))
            placed.append((model, node))
            progress = True
    return placed


# Front-end settings the testbed sets itself: a strategy's policy, and where its system's parts are.
_OWN_SETTINGS = ("policy", "cluster", "cluster_settings", "catalog", "database", "token", "token_file",
                 "alto_cost_map")


def frontend_setting(item: str) -> tuple[str, str]:
    """`KEY=VALUE` -> (key, value) for `run_experiment(frontend_settings=...)`, or ValueError saying
    why: the key must be a front-end setting the testbed does not set itself, and the value valid
    for it (read as the front-end reads FRONTEND_<KEY>)."""
    from frontend.config import ConfigError, Settings, load_settings

    key, sep, value = item.partition("=")
    key = key.strip().replace("-", "_").lower()
    if not sep or not key:
        raise ValueError(f"--frontend-setting: expected KEY=VALUE, got {item!r}")
    if key not in Settings.model_fields:
        raise ValueError(f"--frontend-setting: {key} is not a front-end setting")
    if key in _OWN_SETTINGS:
        raise ValueError(f"--frontend-setting: {key} is set by the testbed (each strategy's own)")
    try:
        load_settings({f"FRONTEND_{key.upper()}": value})
    except ConfigError as exc:
        raise ValueError(f"--frontend-setting: {' '.join(str(exc).split())}") from None
    return key, value


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _nodes_for(scenario: Scenario, strategy: Strategy) -> list:
    """The scenario's nodes a strategy runs on: cloud-tier nodes only for a strategy with a cloud tier."""
    return [n for n in scenario.nodes if n.tier == "edge" or strategy.cloud]


def _cluster_file(scenario: Scenario, path: Path, nodes: list, scale: float | dict[str, float] = 1.0) -> Path:
    """`nodes` (the scenario's, or the shipped cluster's) on a loopback block of their own, each
    node's cpu_quota times `scale` (one for all, or per node class; testbed.calibrate)."""
    shipped = yaml.safe_load(scenario.cluster_path.read_text())
    by_name = {n["name"]: n for n in shipped.get("nodes", [])}
    prefix = f"127.{random.randint(64, 99)}.{random.randint(2, 254)}"
    out = []
    for index, node in enumerate(nodes):
        entry = dict(by_name.get(node.name, {}))
        entry.update({"name": node.name, "class": node.node_class, "cpu": node.cpu, "memory": node.memory,
                      "address": f"{prefix}.{index + 1}"})
        if node.tier != "edge":
            entry["tier"] = node.tier
        if node.cpu_quota is not None:
            entry["cpu_quota"] = node.cpu_quota
        elif "cpu_quota" not in entry:
            entry["cpu_quota"] = node.cpu
        factor = scale.get(node.node_class, 1.0) if isinstance(scale, dict) else scale
        if factor != 1.0 and entry["cpu_quota"] is not None:
            entry["cpu_quota"] = round(entry["cpu_quota"] * factor, 4)
        out.append(entry)
    doc = {k: v for k, v in shipped.items() if k != "nodes"}
    doc["nodes"] = out
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _read_report(path: Path) -> dict | None:
    """The back-end's latest run report (it rewrites the file atomically after every run)."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and "solver" in doc else None


# The back-end's latency prediction that matches a front-end dispatch policy (solver.predict):
# expected-delay's own choice replayed at the window's rates and burstiness (`simulated`; `pooled`,
# its closed form, is kept beside it in `predictions`); plan and random draw each request by weight.
# Other policies (and the fixed-time formulations) are predicted by the objective itself: rtt +
# execution time per request.
PREDICTION_FOR_POLICY = {"expected-delay": "simulated", "plan": "split", "random": "split"}


def _backend_runs(reports: list[dict], started_at: float, *, policy: str | None = None) -> list[dict]:
    """One entry per back-end run report: when, solver status and time, predicted mean latency
    (`predicted_mean`: the prediction for the front-end's `policy` when the report has one, else the
    objective per request; `objective_mean`: the objective per request; `predictions`: every
    prediction the report made, by dispatch; `dispersion`, `paces`: what the predictions rested on)."""
    runs = []
    for report in reports:
        solver = report.get("solver") or {}
        inputs = report.get("inputs") or {}
        requests = inputs.get("requests") or 0
        objective = solver.get("objective")
        objective_mean = (objective / requests) if objective is not None and requests else None
        prediction = report.get("prediction")
        predicted = objective_mean
        if prediction and PREDICTION_FOR_POLICY.get(policy or "") in prediction:
            predicted = prediction[PREDICTION_FOR_POLICY[policy]]
        runs.append({
            "t": round((report.get("started") or started_at) - started_at, 3),
            "status": solver.get("status"), "solver": solver.get("name"), "seconds": solver.get("seconds"),
            "objective": objective, "requests": requests,
            "predicted_mean": predicted, "objective_mean": objective_mean, "predictions": dict(prediction or {}),
            "dispersion": inputs.get("dispersion"), "paces": inputs.get("paces"),
            "idle_paces": inputs.get("idle_paces"), "joint_dispersion": inputs.get("joint_dispersion"),
            "provisioned": (report.get("summary") or {}).get("provisioned", 0),
            "deleted": (report.get("summary") or {}).get("deleted", 0),
            "errors": report.get("errors") or [],
        })
    return runs


class _System:
    """scripts/run_system.py for one strategy, and the cluster it runs (read for samples)."""

    def __init__(self, scenario: Scenario, strategy: Strategy, workdir: Path, *, every: float,
                 cpu_scale: float | dict[str, float] = 1.0, frontend_settings: dict[str, str] | None = None):
        self.workdir = workdir
        self.state = workdir / "state"
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.nodes = _nodes_for(scenario, strategy)
        self.cluster_config = _cluster_file(scenario, workdir / "cluster.yaml", self.nodes, cpu_scale)
        names = {n.name for n in self.nodes}
        alto = scenario.alto_cost_map()
        alto["cost-map"] = {zone: {n: c for n, c in costs.items() if n in names}
                            for zone, costs in alto["cost-map"].items()}
        self.alto = workdir / "alto.json"
        self.alto.write_text(json.dumps(alto, indent=1))
        command = [sys.executable, str(REPO_ROOT / "scripts" / "run_system.py"), "--port", str(self.port),
                   "--state-dir", str(self.state), "--cluster-config", str(self.cluster_config),
                   "--initial-model", "", "--alto", str(self.alto), "--catalog", str(scenario.catalog_path),
                   "--frontend-setting", f"policy={strategy.policy}"]
        for key, value in (frontend_settings or {}).items():
            command += ["--frontend-setting", f"{key}={value}"]
        flags = backend_flags(strategy)
        if flags:
            mode = flags[flags.index("--mode") + 1]
            rest = [f for i, f in enumerate(flags) if f != "--mode" and (i == 0 or flags[i - 1] != "--mode")]
            command += ["--mode", mode, "--every", str(every), "--backend-args", " ".join(rest)]
        else:
            command += ["--no-backend"]
        self.command = command
        self.proc: subprocess.Popen | None = None
        self.cluster = None

    def start(self, *, timeout: float = 120.0) -> None:
        import requests

        self.log = open(self.workdir / "run_system.log", "wb")
        self.proc = subprocess.Popen(self.command, cwd=REPO_ROOT, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the system exited during start-up; see {self.workdir / 'run_system.log'}")
            if "The system is running" in (self.workdir / "run_system.log").read_text(errors="replace"):
                try:
                    if requests.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                        break
                except requests.RequestException:
                    pass
            time.sleep(0.2)
        else:
            raise RuntimeError(f"the system did not start within {timeout:g} s; see {self.workdir / 'run_system.log'}")
        from cluster.local import LocalCluster
        self.cluster = LocalCluster(self.cluster_config, state_path=self.state / "cluster.db",
                                    models_dir=REPO_ROOT / "build" / "models")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        if getattr(self, "log", None) is not None:
            self.log.close()

    def sample(self, t: float) -> dict:
        deployments = self.cluster.deployments()
        nodes = self.cluster.nodes()
        ready = [d for d in deployments if d.ready]
        per_model: dict[str, int] = {}
        for d in ready:
            per_model[d.model] = per_model.get(d.model, 0) + 1
        return {"t": round(t, 3), "instances": len(ready), "starting": len(deployments) - len(ready),
                "memory_used": sum(n.memory_used for n in nodes), "per_model": per_model}


def _requested_models(trace: list[Arrival], scenario: Scenario) -> list[str]:
    asked = {a.model for a in trace}
    return [m for m in scenario.models if m in asked]


def _catalog_memory(scenario: Scenario) -> dict[str, int]:
    doc = yaml.safe_load(scenario.catalog_path.read_text())
    return {m["name"]: int(m["memory"]) for m in doc["models"]}


def run_strategy(scenario: Scenario, strategy: Strategy, trace: list[Arrival], workdir: Path, *,
                 mode: str, every: float, progress: Callable[[str], None], initial: str = "spread",
                 cpu_scale: float | dict[str, float] = 1.0,
                 frontend_settings: dict[str, str] | None = None) -> StrategyRun:
    """Start a clean system configured as `strategy`, replay `trace`, stop it; return what happened.

    `initial`: "spread" deploys the requested models the way Kubernetes' scheduler spreads them
    before the trace, for every strategy (the same starting point: the comparison measures re-planning
    and dispatch, not who pays the first model start); "empty" does so only for `kubernetes`, whose
    deployment it is, and the others start from nothing (on-demand provisioning, cold starts).
    `cpu_scale`: every node's quota times this, or its class's (testbed.calibrate).
    `frontend_settings`: front-end settings (KEY: text) given beside the strategy's policy."""
    workdir.mkdir(parents=True, exist_ok=True)
    system = _System(scenario, strategy, workdir, every=every, cpu_scale=cpu_scale,
                     frontend_settings=frontend_settings)
    begun = time.monotonic()
    system.start()
    try:
        limits = getattr(system.cluster, "limits_status", "unknown")
        if strategy.spread or initial == "spread":
            nodes = [{"name": n.name, "memory": n.memory} for n in system.nodes if n.tier == "edge"]
            placed = spread_placement(_requested_models(trace, scenario), nodes, _catalog_memory(scenario))
            progress(f"{strategy.name}: deploying {len(placed)} replicas (least allocated first)")
            for model, node in placed:
                system.cluster.deploy(model, node, wait=True, timeout=60)
            time.sleep(2.0)        # every front-end worker has refreshed its view
        setup = time.monotonic() - begun
        samples: list[dict] = []
        reports: dict[float, dict] = {}
        stop = threading.Event()
        started = time.time()
        report_path = system.state / "backend-report.json"

        def sampler() -> None:
            while not stop.wait(SAMPLE_EVERY):
                report = _read_report(report_path)
                if report is not None and report.get("started") is not None:
                    reports.setdefault(report["started"], report)   # every run, once (runs are >= 2 s apart)
                try:
                    samples.append(system.sample(time.time() - started))
                except Exception:           # a sample missed is a gap in a plot, not a failure
                    continue

        thread = threading.Thread(target=sampler, daemon=True)
        samples.append(system.sample(0.0))
        thread.start()
        results = run_clients(system.url, scenario, mode=mode, trace=trace, out_path=workdir / "requests.jsonl",
                              progress=lambda line: progress(f"{strategy.name}: {line}"))
        stop.set()
        thread.join(timeout=10)
        samples.append(system.sample(time.time() - started))
        last = _read_report(report_path)
        if last is not None and last.get("started") is not None:
            reports.setdefault(last["started"], last)
        runs = [reports[k] for k in sorted(reports) if k >= started - 1]
        return StrategyRun(name=strategy.name, clients=results, samples=samples,
                           backend_runs=_backend_runs(runs, results.started_at, policy=strategy.policy),
                           started_at=results.started_at, setup_seconds=setup, limits=limits)
    finally:
        system.stop()
        for name in ("frontend.log", "backend.log"):
            if (system.state / name).exists():
                shutil.copy(system.state / name, workdir / name)


def run_experiment(scenario: Scenario, out_dir: Path, *, strategies: list[str] | None = None,
                   mode: str = "lookup", every: float = 10.0, initial: str = "spread",
                   progress: Callable[[str], None] = print, cpu_scale: float | None = 1.0,
                   frontend_settings: dict[str, str] | None = None) -> dict:
    """Run every strategy on the same trace; write results.json/.md and plots into `out_dir`.

    `cpu_scale`: every node's quota times this, None to derive it from this host's speed
    (testbed.calibrate); below 1 the catalog is measured again at the scaled quotas into
    `out_dir`/models.yaml, and the systems run with it. `frontend_settings`: front-end settings
    (KEY: text, checked by `frontend_setting`) every strategy's front-end gets beside its policy:
    an ablation (e.g. `dispatch_quantile`) on the same trace."""
    from .report import write_results

    out_dir.mkdir(parents=True, exist_ok=True)
    names = strategies or list(scenario.strategies)
    unknown = [n for n in names if n not in STRATEGIES]
    if initial not in INITIAL_STATES:
        raise ValueError(f"initial: expected one of {', '.join(INITIAL_STATES)}, got {initial!r}")
    if unknown:
        raise ValueError(f"strategies: unknown {', '.join(unknown)} (known: {', '.join(STRATEGIES)})")
    scenario, calibration = _calibrate(scenario, out_dir, cpu_scale, progress)
    trace = generate_trace(scenario)
    write_trace(trace, out_dir / "trace.jsonl")
    progress(f"trace: {len(trace)} requests over {scenario.duration:g} s, seed {scenario.seed}; "
             f"strategies: {', '.join(names)} (mode {mode}, initial deployment {initial})")
    runs: list[StrategyRun] = []
    for name in names:
        began = time.monotonic()
        progress(f"== {name}: {STRATEGIES[name].description}")
        run = run_strategy(scenario, STRATEGIES[name], trace, out_dir / name, mode=mode, every=every,
                           progress=progress, initial=initial, cpu_scale=calibration["scale"],
                           frontend_settings=frontend_settings)
        runs.append(run)
        summary = run.clients.summary()
        progress(f"== {name}: ok {summary['ok']}/{summary['arrivals']}, mean {summary['latency']['mean']} s, "
                 f"p95 {summary['latency']['p95']} s ({time.monotonic() - began:.0f} s)")
    return write_results(scenario, trace, runs, out_dir, mode=mode, every=every, initial=initial,
                         calibration=calibration, frontend_settings=frontend_settings)


def _calibrate(scenario: Scenario, out_dir: Path, cpu_scale: float | None,
               progress: Callable[[str], None]) -> tuple[Scenario, dict]:
    """The scenario to run (with the catalog measured at the scaled quotas when a scale is < 1) and
    what the calibration was: {scale: {node class: scale}, why, catalog, ratio: {node class: measured /
    reference service time at the quotas run}}. `auto` (None) corrects each class by its measured
    service time (testbed.calibrate.corrected) until it is within TOLERANCE, measuring at most
    CALIBRATION_ROUNDS times, then runs each class at the round measured closest to the reference
    (`rounds`: every round's scales and ratios; each round's catalog is kept as models.roundN.yaml)."""
    if cpu_scale is None:
        scale, why = auto_scale(scenario.catalog_path)
    elif not 0 < cpu_scale <= 1:
        raise ValueError(f"cpu_scale: expected a number in (0, 1], got {cpu_scale!r}")
    else:
        scale, why = cpu_scale, f"given: every node's quota x {cpu_scale:g}"
    scales = {n.node_class: scale for n in scenario.nodes}
    if scale >= 1:
        progress(f"calibration: {why}")
        return scenario, {"scale": scales, "why": why, "catalog": str(scenario.catalog_path)}
    catalog = out_dir / "models.yaml"
    ratios: dict[str, float] = {}
    rounds: list[tuple[dict[str, float], dict[str, float], Path]] = []     # (scales, ratios, catalog)
    for attempt in range(1, CALIBRATION_ROUNDS + 1):
        progress(f"calibration: {why}; measuring the models at the scaled quotas")
        config = _cluster_file(scenario, out_dir / "cluster.calibrated.yaml", list(scenario.nodes), scales)
        try:
            table = profile_at(config, scenario.catalog_path, catalog, REPO_ROOT / "build" / "models")
        except RuntimeError as exc:
            if cpu_scale is not None:          # asked for: a scale the catalog cannot follow is an error
                raise
            why = f"{why}, but {exc}: nodes at their quotas"
            progress(f"calibration: {why}")
            return scenario, {"scale": {c: 1.0 for c in scales}, "why": why, "catalog": str(scenario.catalog_path)}
        (out_dir / "profile.log").write_text(table)
        new, ratios = corrected(scales, catalog)
        kept = out_dir / f"models.round{attempt}.yaml"
        shutil.copyfile(catalog, kept)
        rounds.append((dict(scales), dict(ratios), kept))
        if cpu_scale is not None or attempt == CALIBRATION_ROUNDS or all(
                abs(r - 1) <= TOLERANCE for r in ratios.values()):
            break
        scales = {c: new[c] if abs(ratios.get(c, 1.0) - 1) > TOLERANCE else s for c, s in scales.items()}
        why += ("; service time at those quotas / the reference's: "
                + ", ".join(f"{c} {r:.3f}" for c, r in ratios.items()) + ", so quota x "
                + ", ".join(f"{c} {s:.3f}" for c, s in scales.items()))
    best = best_rounds([r for _, r, _ in rounds])
    if any(i != len(rounds) - 1 for i in best.values()):
        scales = {c: rounds[best[c]][0][c] if c in best else s for c, s in scales.items()}
        ratios = {c: rounds[best[c]][1][c] for c in best}
        merge_rounds(catalog, {c: rounds[i][2] for c, i in best.items()})
        why += ("; run at the round measured closest to the reference: "
                + ", ".join(f"{c} round {best[c] + 1} (quota x {scales[c]:.3f})" for c in best))
    if ratios:
        why += ("; at the quotas run: " + ", ".join(f"{c} {r:.3f}" for c, r in ratios.items())
                + " of the reference's service time")
    return (dataclasses.replace(scenario, catalog_path=catalog),
            {"scale": scales, "why": why, "catalog": str(catalog), "ratio": ratios,
             "rounds": [{"scale": sc, "ratio": r} for sc, r, _ in rounds]})
