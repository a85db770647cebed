"""One back-end run: collect -> build -> solve -> plan -> apply -> report (DESIGN section 6).

The edges do I/O (the front-end's HTTP API, the Cluster port, the solver, files); the middle
(build, plan) is pure. Nothing changes before everything has been read: an unreachable front-end
or cluster ends the run with EXIT_UNREACHABLE and no changes.
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster import open_cluster
from cluster.catalog import CatalogError, load_catalog
from cluster.port import Cluster, ClusterError, ClusterUnavailable

from .alto import AltoError, CostMap, load_cost_map
from .apply import ExecSettings, cap_deletions, execute, render_dry_run
from .build import BuildSettings, build_problem
from .collect import FrontendClient, FrontendError, collect
from .replicas import collect_replicas
from .lock import LockError, RunLock
from .plan import (SOLVED_STATUSES, Thresholds, desired_pairs, dispatch_weights, instances_from, plan_actions,
                   service_times, idle_times)
from .report import EXIT_ERRORS, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE, RunReport

log = logging.getLogger("backend.pipeline")

__all__ = ["RunConfig", "run_once", "RunOutcome", "UsageError"]

REPO_ROOT = Path(__file__).resolve().parent.parent


class UsageError(Exception):
    """The configuration is unusable (bad file, unknown solver...): exit EXIT_USAGE."""


@dataclass(frozen=True)
class RunConfig:
    """Everything a run needs, straight from the command line."""

    mode: int
    frontend: str
    frontend_service: str | None = None           # kubernetes: replicas behind this Service (merged stats, plan ConfigMap)
    token: str | None = None
    solver: str = "ipopt"
    time_limit: float | None = 30.0               # seconds the solver may take
    build: BuildSettings = field(default_factory=BuildSettings)
    thresholds: Thresholds = field(default_factory=Thresholds)
    execution: ExecSettings = field(default_factory=ExecSettings)
    keep_files: str | None = None
    alto: str | None = None                       # ALTO cost map path ('' or None: none)
    alto_required: bool = False                   # the path was given explicitly
    catalog: str = "config/models.yaml"
    cluster_kind: str = "local"
    cluster_settings: dict[str, Any] = field(default_factory=dict)
    lock_path: str = ".run/backend.lock"
    http_timeout: float = 10.0


@dataclass
class RunOutcome:
    report: RunReport | None          # None when another run held the lock
    exit_code: int
    message: str | None = None        # the one line for stderr, if any
    dry_run_text: str | None = None


def _resolve(path: str) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else REPO_ROOT / p


def _finite(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


@dataclass
class _Solved:
    status: str
    objective: float | None
    bound: float | None
    solver: str
    seconds: float
    assignment: list
    message: str
    warnings: tuple[str, ...] = ()


def _solve(problem, cfg: RunConfig) -> _Solved:
    """Run the solver; any failure becomes status 'error' (a failed solve deletes nothing)."""
    if not problem.requests:
        return _Solved("optimal", 0.0, 0.0, "none (no requests in the window)", 0.0, [], "nothing to place")
    started = time.perf_counter()
    try:
        from solver import solve
        from solver.native import redirected
        keep = str(_resolve(cfg.keep_files)) if cfg.keep_files else None
        with redirected(2, 1):      # native solvers' banners: stdout carries the report
            solution = solve(problem, solver=cfg.solver, time_limit=cfg.time_limit, keep_files=keep)
    except Exception as exc:  # the solver must not take the run down: report and delete nothing
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return _Solved("error", None, None, cfg.solver, time.perf_counter() - started, [], text)
    warnings: tuple[str, ...] = ()
    if cfg.keep_files:
        out = _resolve(cfg.keep_files)
        try:
            out.mkdir(parents=True, exist_ok=True)
            (out / "backend-problem.json").write_text(json.dumps(problem.to_dict(), indent=2))
            (out / "backend-solution.json").write_text(json.dumps(solution.to_dict(), indent=2, default=str))
        except (OSError, TypeError, ValueError) as exc:   # the run goes on; the operator is told
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            warnings = (f"--keep-files {out}: cannot write the problem/solution JSON: {reason}",)
            log.warning(warnings[0], extra={"event": "keep_files_failed", "path": str(out)})
    return _Solved(solution.status, _finite(solution.objective), _finite(solution.bound), solution.solver,
                   float(solution.seconds), list(solution.assignment), solution.message or "", warnings)


def _prediction(built, solved: _Solved) -> dict[str, float | None]:
    """Mean latency per request (s) the plan should give (solver.predict): `simulated` under
    expected-delay dispatch (its own choice replayed at the window's rates and burstiness), `pooled`
    the closed form for it, `split` under plan/random dispatch; None where the load would be at or
    above capacity. (The solver's own M/M/1 figure is its objective over the report's requests.)"""
    from solver.predict import DISPATCHES, predicted_mean, simulated_mean

    q = built.queueing
    means = {d: predicted_mean(built.problem, solved.assignment, dispatch=d, idle=q.idle, dispersion=q.dispersion,
                               scv=q.scv) for d in DISPATCHES}
    means["simulated"] = simulated_mean(built.problem, solved.assignment, idle=q.idle, dispersion=q.dispersion,
                                        scv=q.scv)
    return {d: None if mean is None else round(mean, 6) for d, mean in means.items()}


def _plan_problems(plan_doc: dict) -> list[str]:
    """What is wrong with a plan body by the contract both sides share (common/plan_body.py)."""
    from common.plan_body import PlanBody, plan_problems
    from common.validation import ValidationError

    try:
        PlanBody.model_validate(plan_doc)
    except ValidationError as exc:
        return plan_problems(exc)
    return []


def _open_cluster(cfg: RunConfig) -> Cluster:
    settings = dict(cfg.cluster_settings)
    try:
        return open_cluster(cfg.cluster_kind, **settings)
    except ClusterUnavailable:
        raise
    except ClusterError as exc:
        raise UsageError(f"cluster configuration: {exc}") from None
    except TypeError as exc:
        raise UsageError(f"cluster settings: {exc}") from None


def _collect_replicas(cfg: RunConfig, cluster: Cluster):
    """Read and merge the statistics of every ready front-end replica behind cfg.frontend_service."""
    finder = getattr(cluster, "frontend_replicas", None)
    if not callable(finder):
        raise UsageError("--frontend-service needs the kubernetes cluster adapter")
    urls = finder(cfg.frontend_service)
    return collect_replicas(urls, token=cfg.token, timeout=cfg.http_timeout, window=cfg.build.window,
                            recent=_rate_window(cfg))


def _rate_window(cfg: RunConfig) -> float:
    """Seconds of the recent summary to read: only the load-aware formulation plans from rates."""
    return cfg.build.rate_window if cfg.build.formulation == "latency" else 0.0


def run_once(cfg: RunConfig, *, stop: threading.Event | None = None) -> RunOutcome:
    """Run the pipeline once under the lock; return the report and the exit code."""
    lock = RunLock(_resolve(cfg.lock_path))
    try:
        if not lock.acquire():
            holder = lock.holder()
            return RunOutcome(None, EXIT_OK, f"backend: another run holds {lock.path}"
                                             f"{' (' + holder + ')' if holder else ''}; nothing done")
    except LockError as exc:
        return RunOutcome(None, EXIT_USAGE, f"backend: {exc}")
    try:
        return _run_locked(cfg, stop=stop)
    finally:
        lock.release()


def _run_locked(cfg: RunConfig, *, stop: threading.Event | None) -> RunOutcome:
    report = RunReport(mode=cfg.mode, started=time.time(), frontend=cfg.frontend,
                       dry_run=cfg.execution.dry_run)

    def finish(code: int, message: str | None = None, dry_text: str | None = None) -> RunOutcome:
        report.finished = time.time()
        report.exit_code = code
        if message and code != EXIT_OK and not report.errors:
            report.errors.append(message)
        return RunOutcome(report, code, message, dry_text)

    # --- configuration (before touching anything) ---------------------------------------------
    try:
        from solver import backend_names
        names = backend_names()
    except Exception as exc:  # the solver package itself is broken: nothing can be planned
        return finish(EXIT_USAGE, f"backend: the solver package cannot be loaded: {exc}")
    if cfg.solver not in names:
        return finish(EXIT_USAGE, f"backend: unknown solver {cfg.solver!r}; choose from {', '.join(names)}")
    try:
        catalog = load_catalog(_resolve(cfg.catalog))
    except CatalogError as exc:
        return finish(EXIT_USAGE, f"backend: {exc}")
    cost_map = CostMap()
    if cfg.alto:
        alto_path = _resolve(cfg.alto)
        if alto_path.exists() or cfg.alto_required:
            try:
                cost_map = load_cost_map(alto_path)
            except AltoError as exc:
                return finish(EXIT_USAGE, f"backend: {exc}")
        else:
            report.warnings.append(f"no ALTO cost map at {alto_path}: unmeasured RTTs use the default")

    # --- collect ------------------------------------------------------------------------------
    t0 = time.perf_counter()
    client = FrontendClient(cfg.frontend, token=cfg.token, timeout=cfg.http_timeout)
    cluster = None
    try:
        try:
            if cfg.frontend_service:        # replicas: find them through the cluster first
                cluster = _open_cluster(cfg)
                observed = _collect_replicas(cfg, cluster)
            else:
                observed = collect(client, window=cfg.build.window, recent=_rate_window(cfg))
                cluster = _open_cluster(cfg)
        except FrontendError as exc:
            if cluster is not None:
                cluster.close()
            return finish(EXIT_UNREACHABLE, f"backend: {exc}; nothing changed")
        except UsageError as exc:
            if cluster is not None:
                cluster.close()
            return finish(EXIT_USAGE, f"backend: {exc}")
        except ClusterError as exc:
            if cluster is not None:
                cluster.close()
            return finish(EXIT_UNREACHABLE, f"backend: cluster unreachable: {exc}; nothing changed")
        report.warnings.extend(observed.warnings)
        try:
            return _run_with(cfg, report, finish, client=client, cluster=cluster, observed=observed,
                             catalog=catalog, cost_map=cost_map, t0=t0, stop=stop)
        finally:
            try:
                cluster.close()
            except Exception as exc:    # the run's outcome stands; an adapter that cannot close is logged
                log.warning("cannot close the cluster adapter", extra={"event": "cluster_close_failed",
                                                                        "error": f"{type(exc).__name__}: {exc}"})
    finally:
        client.close()


def _run_with(cfg: RunConfig, report: RunReport, finish, *, client: FrontendClient, cluster: Cluster,
              observed, catalog, cost_map: CostMap, t0: float, stop) -> RunOutcome:
    timings = report.timings
    try:
        deployments = cluster.deployments()
    except ClusterError as exc:
        return finish(EXIT_UNREACHABLE, f"backend: cluster unreachable: {exc}; nothing changed")
    except Exception as exc:
        return finish(EXIT_UNREACHABLE, f"backend: cluster unreachable: {type(exc).__name__}: {exc}; nothing changed")
    timings["collect"] = time.perf_counter() - t0

    # --- build --------------------------------------------------------------------------------
    t = time.perf_counter()
    try:
        built = build_problem(requests=observed.requests, nodes=observed.nodes, catalog=catalog,
                              deployments=deployments, cost_map=cost_map, settings=cfg.build,
                              summary=observed.summary, recent=observed.recent)
    except Exception as exc:   # a problem the solver package refuses (ProblemError) or bad data
        return finish(EXIT_ERRORS, f"backend: cannot build the problem: {exc}; nothing changed")
    timings["build"] = time.perf_counter() - t
    report.inputs = {**built.summary, "cost_map": cost_map.source or None,
                     "requests_read": observed.requests_read, "window_since": observed.since}

    # --- solve --------------------------------------------------------------------------------
    t = time.perf_counter()
    solved = _solve(built.problem, cfg)
    timings["solve"] = time.perf_counter() - t
    report.warnings.extend(solved.warnings)
    ok = solved.status in SOLVED_STATUSES
    report.solver = {"name": solved.solver, "requested": cfg.solver, "formulation": cfg.build.formulation,
                     "status": solved.status, "objective": solved.objective, "bound": solved.bound,
                     "seconds": round(solved.seconds, 6), "message": solved.message}
    if not ok:
        report.errors.append(f"solve {solved.status}: {solved.message or 'no message'}; nothing deleted")
    elif built.queueing is not None and solved.assignment:
        report.prediction = _prediction(built, solved)

    # --- plan (pure) --------------------------------------------------------------------------
    now = time.time()
    desired = desired_pairs(built.groups, solved.assignment) if ok else set()
    instances = instances_from(deployments, observed.models)
    plan = plan_actions(mode=cfg.mode, solved=ok, status=solved.status, desired=desired, instances=instances,
                        nodes=built.summary["nodes"], known_models=catalog.names(),
                        thresholds=cfg.thresholds, now=now)
    report.plan = plan.to_dict()

    # --- apply --------------------------------------------------------------------------------
    dry_text = None
    if cfg.execution.dry_run:
        run, held = cap_deletions(plan.actions, cfg.execution.max_deletions)
        dry_text = render_dry_run(run, held, catalog=catalog, namespace=cfg.cluster_settings.get("namespace"),
                                  render=cfg.cluster_settings.get("render"))
    available = {n.node: n.available for n in observed.nodes}
    model_memory = {spec.name: spec.memory for spec in catalog}
    result = execute(plan.actions, cluster=None if cfg.execution.dry_run else cluster,
                     settings=cfg.execution, available=available, model_memory=model_memory, stop=stop)
    report.actions = [r.to_dict() for r in result.results]
    report.provisioning_seconds = result.seconds
    timings["apply"] = result.seconds
    report.errors.extend(result.errors)

    # --- tell the front-end how to dispatch ---------------------------------------------------
    if ok and not cfg.execution.dry_run:
        weights = dispatch_weights(built.groups, solved.assignment)
        if weights:
            t = time.perf_counter()
            plan_doc = {"created": now, "mode": cfg.mode, "solver": solved.solver, "weights": weights}
            if built.measured_rtt:      # the measured rtt the problem used: nearest/placement prefer it
                plan_doc["rtt"] = built.measured_rtt
            if cfg.build.formulation == "latency":     # the service times it planned with: expected-delay
                service = service_times(weights, built.problem.exec_time, deployments)
                if service:
                    plan_doc["service"] = service
                    idle = idle_times(service, built.queueing.idle)
                    if idle:       # a request that finds the node idle: expected-delay's pace there
                        plan_doc["idle"] = idle
            unfit = _plan_problems(plan_doc)
            if unfit:       # the front-end would refuse it as well: say what is wrong, push nothing
                report.errors.append(f"plan not pushed: {'; '.join(unfit)}")
            elif cfg.frontend_service:      # every replica watches the ConfigMap
                try:
                    cluster.write_plan(plan_doc)
                    report.plan_pushed = True
                except ClusterError as exc:
                    report.errors.append(f"plan ConfigMap: {exc}")
            else:
                try:
                    try:
                        client.put_plan(plan_doc)
                    except FrontendError as exc:
                        # a front-end that predates the optional fields refuses them: send the weights alone
                        extra = [f for f in ("rtt", "service", "idle") if f in plan_doc]
                        if exc.status != 400 or not extra or "unknown field(s)" not in str(exc):
                            raise
                        for f in extra:
                            plan_doc.pop(f)
                        client.put_plan(plan_doc)
                        report.warnings.append(f"the front-end does not take the plan's {' and '.join(extra)}")
                    report.plan_pushed = True
                except FrontendError as exc:
                    report.errors.append(f"PUT /plan: {exc}")
            timings["push_plan"] = time.perf_counter() - t
    code = EXIT_ERRORS if report.errors else EXIT_OK
    message = None
    if code != EXIT_OK:
        message = f"backend: {len(report.errors)} error(s): {report.errors[0]}"
    return finish(code, message, dry_text)
