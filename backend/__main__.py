"""`python -m backend`: the provisioner, run by cron (or a CronJob) once per period, or in a loop.

Every threshold comes from the command line (thesis 5.3); `--help` shows the defaults. Output: the
run's JSON report on stdout (or --report FILE); errors as one line on stderr; with --dry-run the
plan and the rendered YAML go to stdout and the report to --report FILE or stderr.
Exit codes: 0 done (or another run held the lock), 1 finished with errors (failed solve or action),
2 bad usage or configuration (a bad option value, an input file that is unreadable, binary or not
valid JSON/YAML), 3 front-end or cluster unreachable (nothing changed), 130 interrupted. An output
that cannot be written (--report) is reported on one line and does not change the exit code.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["main", "build_parser", "config_from_args"]

log = logging.getLogger("backend")

DEFAULT_ALTO = "config/alto-costmap.json"
DEFAULT_LOCK = ".run/backend.lock"


def _number(kind, *, zero_ok: bool, most: float):
    """An argparse type: a finite number of `kind`, > 0 (or >= 0 with zero_ok), at most `most`."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {'whole ' if kind is int else ''}number, got {text!r}") from None
        if value != value or value == float("inf") or value < 0 or (value == 0 and not zero_ok):
            raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}" if zero_ok
                                             else f"must be a positive finite number, got {text!r}")
        if value > most:
            raise argparse.ArgumentTypeError(f"must be at most {most:g}, got {text!r}")
        return value
    return parse


def _utilisation(text: str) -> float:
    """An argparse type: a number strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be strictly between 0 and 1, got {text!r}")
    return value


DAY = 86_400.0
YEAR = 365 * DAY


def _positive(kind, most: float):
    return _number(kind, zero_ok=False, most=most)


def _non_negative(kind, most: float):
    return _number(kind, zero_ok=True, most=most)


def _setting(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")

    def no_constant(name: str):
        raise argparse.ArgumentTypeError(f"{key.strip()}: {name} is not a usable value")

    try:
        value = json.loads(raw, parse_constant=no_constant)
    except (ValueError, RecursionError):        # not JSON: the text itself
        value = raw
    return key.strip(), value


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # type: ignore[override]
        """One line on stderr (no usage dump), exit 2."""
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see --help)\n")


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Show defaults, but not the empty ones (None, False, [])."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False, []) or action.default is argparse.SUPPRESS:
            return action.help or ""
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser."""
    from .build import COMPUTE_BASES, FORMULATIONS, RTT_SOURCES

    p = _Parser(
        prog="python -m backend",
        description="Provision models on the edge cluster from the front-end's request statistics "
                    "(collect -> build -> solve -> plan -> apply -> report).",
        formatter_class=_Help)
    p.add_argument("--mode", type=int, choices=(1, 2), required=True,
                   help="1: provision what the solver places, delete by recency/frequency, solver sees "
                        "available memory; 2: follow the solver strictly, solver sees total memory")
    p.add_argument("--frontend", metavar="URL", help="front-end base URL, e.g. http://127.0.0.1:5000 "
                   "(required unless --frontend-service)")
    p.add_argument("--frontend-service", metavar="NAME",
                   help="--cluster kubernetes: the front-end runs as replicas behind this Service in the "
                        "cluster's namespace: read the statistics of every ready replica and merge them, and "
                        "write the plan to the ConfigMap edge-inference-plan that every replica watches "
                        "(instead of PUT /plan)")
    p.add_argument("--token", help="bearer token for /stats and /plan (default: $BACKEND_TOKEN)")
    p.add_argument("--token-file", metavar="FILE", help="read the token from the first line of FILE")
    p.add_argument("--solver", default="ipopt", help="solver backend: ipopt, highs, ampl, glpk, search, "
                                                     "nearest, least-loaded, greedy")
    p.add_argument("--formulation", default="placement", choices=FORMULATIONS,
                   help="problem formulation; 'latency': load-aware (M/M/1 waiting per instance from the "
                        "window's arrival rates and the catalog's service times; cloud sites' costs weighed)")
    p.add_argument("--max-utilisation", type=_utilisation, default=0.85, metavar="RHO",
                   help="--formulation latency: no instance is planned busier than this (0 < RHO < 1)")
    p.add_argument("--rate-window", type=_non_negative(float, 100 * YEAR), default=0.0, metavar="SECONDS",
                   help="--formulation latency: plan each group for the larger of its rate over --window and "
                        "over the last SECONDS (catches a rise in load within SECONDS; 0, the default: "
                        "the window's rate only)")
    p.add_argument("--pace", choices=("measured", "profile"), default="measured",
                   help="--formulation latency: service times from the pace the model servers reported "
                        "(Server-Timing pace, in the front-end's statistics; at least --min-exec-samples "
                        "answers, the last --rate-window seconds' when they hold that many), else the "
                        "catalog's profile ('measured', the default); 'profile': the profile only")
    p.add_argument("--time-limit", type=_positive(float, 7 * DAY), default=30.0, metavar="SECONDS",
                   help="seconds the solver may take")
    p.add_argument("--idle-seconds", type=_non_negative(float, 100 * YEAR), default=900.0, metavar="S",
                   help="Mode 1 deletes an instance only when idle longer than this")
    p.add_argument("--min-requests", type=_non_negative(int, 10**12), default=10, metavar="K",
                   help="... and it served fewer than K requests since it was provisioned")
    p.add_argument("--window", type=_positive(float, 100 * YEAR), default=600.0, metavar="SECONDS",
                   help="seconds of recorded requests the problem is built from")
    p.add_argument("--max-deletions", type=_non_negative(int, 10**6), default=3, metavar="N",
                   help="at most N deletions a run (the rest wait for the next run)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and the rendered YAML; change nothing")
    p.add_argument("--keep-files", metavar="DIR", help="keep the solver's files (and the problem/solution JSON) in DIR")
    p.add_argument("--wait-ready", action="store_true",
                   help="a provision completes when the model answers, not when it was started")
    p.add_argument("--ready-timeout", type=_positive(float, DAY), default=120.0, metavar="SECONDS",
                   help="how long --wait-ready waits for one model")
    p.add_argument("--concurrency", type=_positive(int, 1024), default=8, metavar="N",
                   help="actions applied at once (1: one after another)")
    p.add_argument("--every", type=_positive(float, YEAR), metavar="SECONDS",
                   help="run in the foreground every SECONDS until Ctrl-C (instead of once)")
    p.add_argument("--report", metavar="FILE", help="write the JSON report to FILE instead of stdout")
    net = p.add_argument_group("network costs and problem building")
    net.add_argument("--alto", default=DEFAULT_ALTO, metavar="FILE",
                     help="ALTO cost map (RFC 7285 JSON; zones -> node names, seconds); '' for none")
    net.add_argument("--default-rtt", type=_non_negative(float, 3600), default=0.05, metavar="SECONDS",
                     help="RTT used when neither clients nor the cost map know a (zone, node)")
    net.add_argument("--rtt-source", choices=RTT_SOURCES, default="reports",
                     help="RTT of a (zone, node): 'reports' = the network round trips clients reported "
                          "(X-Client-RTT / X-Client-RTT-Node, recency-weighted; the ALTO map for pairs "
                          "nobody reported); 'latency' = the thesis's mean X-Client-Latency (end-to-end, "
                          "so execution time is counted twice)")
    net.add_argument("--rtt-half-life", type=_positive(float, YEAR), default=60.0, metavar="SECONDS",
                     help="with --rtt-source reports: a report this much older than the newest of its "
                          "(zone, node) weighs half as much (exponential decay by 10 s bucket)")
    net.add_argument("--min-exec-samples", type=_positive(int, 10**9), default=5, metavar="N",
                     help="measured proxy times (--formulation latency: pace reports) needed before they "
                          "replace the catalog's execution time")
    net.add_argument("--compute", choices=COMPUTE_BASES, default="average",
                     help="cpu per request: 'average' cores over the window (Little's law) or the "
                          "thesis's literal 'per-request' cores")
    cl = p.add_argument_group("cluster")
    cl.add_argument("--cluster", choices=("local", "kubernetes"), default=os.environ.get("BACKEND_CLUSTER", "local"),
                    help="cluster adapter ($BACKEND_CLUSTER when set)")
    cl.add_argument("--cluster-config", metavar="FILE", help="local cluster description (default config/cluster.local.yaml)")
    cl.add_argument("--cluster-state", metavar="FILE", help="local cluster state file (default .run/cluster.db)")
    cl.add_argument("--models-dir", metavar="DIR", help="local model files (default build/models)")
    cl.add_argument("--catalog", default="config/models.yaml", metavar="FILE", help="model catalog")
    cl.add_argument("--cluster-setting", type=_setting, action="append", default=[], metavar="KEY=VALUE",
                    help="extra keyword for the cluster adapter (repeatable; VALUE parsed as JSON when it can be)")
    cl.add_argument("--lock", default=DEFAULT_LOCK, metavar="FILE", help="run lock file")
    cl.add_argument("--http-timeout", type=_positive(float, DAY), default=10.0, metavar="SECONDS",
                    help="timeout of each call to the front-end")
    return p


REPO_ROOT = Path(__file__).resolve().parent.parent


def _path(value: str | None, default: str | None = None) -> str | None:
    """Resolve a path flag: the built-in default against the repository, a user's against the cwd."""
    if value is None or value == "":
        return value
    if default is not None and value == default:
        return str(REPO_ROOT / value)
    return str(Path(value).expanduser().absolute())


MAX_INPUT_BYTES = 64 * 1024 * 1024


def _input_file(path: str | None, option: str, kind: str) -> None:
    """Raise UsageError (one line) when an existing input file is a folder, binary, or does not parse."""
    from .pipeline import UsageError

    if not path:
        return
    file = Path(path).expanduser()
    if not file.exists():
        return
    try:
        if file.is_dir():
            raise UsageError(f"{option} {path}: is a folder, not a file")
        if file.stat().st_size > MAX_INPUT_BYTES:
            raise UsageError(f"{option} {path}: larger than {MAX_INPUT_BYTES // (1024 * 1024)} MiB")
        raw = file.read_bytes()
    except OSError as exc:
        raise UsageError(f"{option} {path}: cannot read: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{option} {path}: not UTF-8 text (a binary file?)") from None
    if "\x00" in text:
        raise UsageError(f"{option} {path}: not a text file (it holds NUL bytes)")
    try:
        if kind == "json":
            json.loads(text)
        else:
            import yaml

            yaml.safe_load(text)
    except RecursionError:
        raise UsageError(f"{option} {path}: nested too deeply") from None
    except Exception as exc:  # JSONDecodeError, YAMLError, ValueError (huge integer literals)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UsageError(f"{option} {path}: not valid {kind.upper()}: {first}") from None


def _state_file(path: str | None, option: str) -> None:
    """Raise UsageError when an existing, non-empty state file is not an SQLite database (one that
    cannot be opened, a folder say, is left to the cluster adapter, as `python -m cluster` does)."""
    from .pipeline import UsageError

    if not path or not Path(path).is_file():
        return
    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
    except OSError as exc:
        raise UsageError(f"{option} {path}: cannot read: {exc.strerror or exc}") from None
    if head and head != b"SQLite format 3\x00":
        raise UsageError(f"{option} {path}: not an SQLite database")


def config_from_args(args: argparse.Namespace):
    """Return the RunConfig for parsed arguments (raise UsageError on inconsistent ones)."""
    from .apply import ExecSettings
    from .build import BuildSettings
    from .pipeline import RunConfig, UsageError
    from .plan import Thresholds

    token = args.token or os.environ.get("BACKEND_TOKEN") or None
    if args.token_file:
        try:
            lines = Path(args.token_file).read_text(encoding="utf-8").strip().splitlines()
        except OSError as exc:
            raise UsageError(f"--token-file {args.token_file}: cannot read: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise UsageError(f"--token-file {args.token_file}: not UTF-8 text (a binary file?)") from None
        token = lines[0].strip() if lines else None
    catalog = _path(args.catalog, "config/models.yaml")
    # every input file that exists must be text that parses; a missing one is left to its loader
    _input_file(_path(args.alto, DEFAULT_ALTO), "--alto", "json")
    _input_file(catalog, "--catalog", "yaml")
    if args.cluster == "local":
        _input_file(_path(args.cluster_config), "--cluster-config", "yaml")
        _state_file(_path(args.cluster_state), "--cluster-state")
        if args.models_dir and Path(args.models_dir).exists() and not Path(args.models_dir).is_dir():
            raise UsageError(f"--models-dir {args.models_dir}: not a folder")
    settings: dict[str, Any] = {}
    if args.cluster == "local":
        if args.cluster_config:
            settings["config_path"] = _path(args.cluster_config)
        if args.cluster_state:
            settings["state_path"] = _path(args.cluster_state)
        if args.models_dir:
            settings["models_dir"] = _path(args.models_dir)
    elif args.cluster_config or args.cluster_state or args.models_dir:
        raise UsageError("--cluster-config, --cluster-state and --models-dir apply to --cluster local only")
    settings["catalog_path"] = catalog
    settings.update(dict(args.cluster_setting))
    if args.cluster == "kubernetes" and "render" in settings:
        from cluster.k8s_settings import render_settings_from

        try:      # before anything is read or changed: a bad setting is a usage error
            render_settings_from(settings["render"])
        except ValueError as exc:
            raise UsageError(f"--cluster-setting {exc}") from None
    if args.rate_window > args.window:
        raise UsageError(f"--rate-window {args.rate_window:g} is longer than --window {args.window:g}")
    if args.frontend_service is not None:
        if args.cluster != "kubernetes":
            raise UsageError("--frontend-service needs --cluster kubernetes")
        if not re.fullmatch(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?", args.frontend_service):
            raise UsageError(f"--frontend-service {args.frontend_service!r}: not a Service name (DNS-1035 label)")
    elif not args.frontend:
        raise UsageError("--frontend URL is required (or --frontend-service NAME with --cluster kubernetes)")
    return RunConfig(
        mode=args.mode, frontend=args.frontend or f"service/{args.frontend_service}",
        frontend_service=args.frontend_service, token=token, solver=args.solver, time_limit=args.time_limit,
        build=BuildSettings(mode=args.mode, formulation=args.formulation, window=args.window,
                            default_rtt=args.default_rtt, min_exec_samples=args.min_exec_samples,
                            compute=args.compute, rtt_source=args.rtt_source,
                            rtt_half_life=args.rtt_half_life, max_utilisation=args.max_utilisation,
                            rate_window=args.rate_window, pace=args.pace == "measured"),
        thresholds=Thresholds(idle_seconds=args.idle_seconds, min_requests=args.min_requests),
        execution=ExecSettings(max_deletions=args.max_deletions, concurrency=args.concurrency,
                               wait_ready=args.wait_ready, ready_timeout=args.ready_timeout,
                               dry_run=args.dry_run),
        keep_files=_path(args.keep_files), alto=_path(args.alto, DEFAULT_ALTO) or None,
        alto_required=args.alto != DEFAULT_ALTO, catalog=catalog, cluster_kind=args.cluster,
        cluster_settings=settings, lock_path=_path(args.lock, DEFAULT_LOCK), http_timeout=args.http_timeout)


def _emit(outcome, args, *, compact: bool) -> None:
    from .report import write_report

    if outcome.dry_run_text:
        sys.stdout.write(outcome.dry_run_text)
    if outcome.report is not None:
        text = outcome.report.to_json(indent=None if compact else 2)
        if args.report:
            try:
                write_report(outcome.report.to_json(), args.report)
            except OSError as exc:
                print(f"backend: cannot write --report {args.report}: {exc.strerror}", file=sys.stderr)
        elif args.dry_run:
            print(text, file=sys.stderr)
        else:
            print(text)
    sys.stdout.flush()
    if outcome.message:
        print(" ".join(outcome.message.split()), file=sys.stderr, flush=True)


def _summary_fields(outcome) -> dict:
    """The run's headline figures as log fields."""
    doc = outcome.report.to_dict()
    solver = doc.get("solver") or {}
    return {"mode": doc["mode"], "requests": doc["inputs"].get("requests", 0), "status": solver.get("status"),
            "exit_code": outcome.exit_code, **{k: doc["summary"][k] for k in ("provisioned", "deleted", "failed", "skipped")},
            "errors": len(doc.get("errors") or []), "warnings": len(doc.get("warnings") or [])}


def _summary(outcome) -> str:
    if outcome.report is None:
        return outcome.message or "backend: skipped"
    doc = outcome.report.to_dict()
    s = doc["summary"]
    solver = doc.get("solver") or {}
    return (f"mode {doc['mode']}: {doc['inputs'].get('requests', 0)} requests, "
            f"solve {solver.get('status', '-')} ({solver.get('name', '-')}, {solver.get('seconds', 0):.3f} s), "
            f"{s['provisioned']} provisioned, {s['deleted']} deleted, {s['failed']} failed, {s['skipped']} skipped, "
            f"provisioning {doc['provisioning_latency_ms'] or 0:.0f} ms")


def _loop(cfg, args) -> int:
    from .pipeline import run_once

    stop = threading.Event()
    previous = {}

    def on_signal(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, on_signal)
    try:
        while not stop.is_set():
            began = time.monotonic()
            try:
                outcome = run_once(cfg, stop=stop)
            except Exception as exc:  # keep looping: the next run may succeed
                log.error("internal error; the next run goes on", extra={
                    "event": "run_crashed", "error": f"{type(exc).__name__}: {exc}"})
                stop.wait(args.every)
                continue
            _emit(outcome, args, compact=True)
            if outcome.report is not None:
                log.info(_summary(outcome), extra={"event": "run_finished", **_summary_fields(outcome)})
            stop.wait(max(0.0, args.every - (time.monotonic() - began)))
        log.info("stopped", extra={"event": "stopped"})
        return 0
    except KeyboardInterrupt:
        log.warning("interrupted", extra={"event": "interrupted"})
        return 130
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: list[str] | None = None) -> int:
    """Run the back-end once (or every --every seconds); return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.frontend and not args.frontend_service:
        parser.error("one of --frontend URL or --frontend-service NAME (with --cluster kubernetes) is required")
    from common.logs import setup_logging

    from .pipeline import UsageError, run_once

    # Loop mode (make run, the CronJob's --every) logs each run; a one-shot run logs only trouble.
    setup_logging("backend", level="INFO" if args.every is not None else "WARNING",
                  loggers=("backend", "cluster", "solver"))

    try:
        cfg = config_from_args(args)
    except (UsageError, ValueError) as exc:
        print(f"backend: {exc}", file=sys.stderr)
        return 2
    if args.every is not None:
        return _loop(cfg, args)
    try:
        outcome = run_once(cfg)
    except KeyboardInterrupt:
        print("backend: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # last resort: one line, never a traceback
        print(f"backend: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    _emit(outcome, args, compact=False)
    return outcome.exit_code


if __name__ == "__main__":
    sys.exit(main())
