"""Operate the embedded local cluster: `python -m cluster status|deploy|remove|node-down|node-up|reset`.

For operators and tests. Every failure is one line on stderr, never a traceback: exit 2 for bad
input (unknown model or node, bad config or arguments: a config or catalog file that is binary,
not YAML or invalid, a --state file that is not an SQLite database, a non-finite, negative or huge
--timeout), exit 1 when the cluster fails (no room, node down, a server that does not start, the
state file unavailable: a folder, locked or not writable).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict

from .catalog import CatalogError
from .local_config import LocalConfigError
from .port import ClusterError, Deployment, Node, UnknownModel, UnknownNode

__all__ = ["main"]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class _UsageError(Exception):
    pass


MAX_TIMEOUT = 86_400.0


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {text!r} (expected seconds)") from None
    if not 0 < value <= MAX_TIMEOUT:      # NaN, inf, negatives and zero too
        raise argparse.ArgumentTypeError(f"must be more than 0 and at most {MAX_TIMEOUT:g} seconds, got {text!r}")
    return value


def _check_paths(args: argparse.Namespace) -> None:
    """Refuse, as bad input, a --state file that is not an SQLite database and a --models-dir that is a
    file (a --state that cannot be opened, a folder say, stays a cluster failure: exit 1)."""
    state = args.state
    if os.path.isfile(state):
        try:
            with open(state, "rb") as handle:
                head = handle.read(16)
        except OSError:
            head = b""                        # unreadable: the store reports it (exit 1)
        if head and head != b"SQLite format 3\x00":
            raise _UsageError(f"--state {state}: not an SQLite database")
    if os.path.exists(args.models_dir) and not os.path.isdir(args.models_dir):
        raise _UsageError(f"--models-dir {args.models_dir}: not a folder")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage dump
        raise _UsageError(f"{self.prog}: {message}")


def _common(parser: argparse.ArgumentParser, *, top: bool) -> None:
    # The options are accepted before and after the command; SUPPRESS keeps a later default from
    # overwriting an earlier value.
    default = (lambda value: value) if top else (lambda value: argparse.SUPPRESS)
    parser.add_argument("--config", default=default("config/cluster.local.yaml"),
                        help="local cluster description (default: config/cluster.local.yaml)")
    parser.add_argument("--state", default=default(".run/cluster.db"),
                        help="SQLite state file shared by every process (default: .run/cluster.db)")
    parser.add_argument("--catalog", default=default("config/models.yaml"),
                        help="model catalog (default: config/models.yaml)")
    parser.add_argument("--models-dir", dest="models_dir", default=default("build/models"),
                        help="built models (default: build/models)")
    parser.add_argument("--json", action="store_true", default=default(False),
                        help="print machine-readable JSON")


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser."""
    parser = _Parser(prog="python -m cluster", description="Operate the embedded local cluster.")
    _common(parser, top=True)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser,
                                     metavar="{status,deploy,remove,node-down,node-up,reset,profile}")
    status = commands.add_parser("status", help="nodes (memory, cpu) and deployments")
    _common(status, top=False)
    deploy = commands.add_parser("deploy", help="start MODEL on NODE and wait until it answers")
    deploy.add_argument("model")
    deploy.add_argument("node")
    deploy.add_argument("--no-wait", action="store_true", help="return at once, before it answers")
    deploy.add_argument("--timeout", type=_timeout, default=60.0, help="seconds to wait (default 60, at most 86400)")
    _common(deploy, top=False)
    remove = commands.add_parser("remove", help="stop MODEL on NODE")
    remove.add_argument("model")
    remove.add_argument("node")
    _common(remove, top=False)
    down = commands.add_parser("node-down", help="stop a node's servers, keeping its deployments")
    down.add_argument("node")
    _common(down, top=False)
    up = commands.add_parser("node-up", help="restart a node's recorded deployments")
    up.add_argument("node")
    up.add_argument("--timeout", type=_timeout, default=60.0, help="seconds to wait (default 60, at most 86400)")
    _common(up, top=False)
    reset = commands.add_parser("reset", help="stop every server and clear the state")
    _common(reset, top=False)
    profile = commands.add_parser("profile", help="measure each built model (memory; exec time at 1 core "
                                  "and per node class quota) and write the figures into the catalog")
    profile.add_argument("--model", action="append", dest="models", metavar="MODEL",
                         help="profile only MODEL (repeatable; default: every built catalog model)")
    profile.add_argument("--dry-run", action="store_true", help="print the figures, leave the catalog as it is")
    profile.add_argument("--out", metavar="FILE", help="write the measured catalog to FILE (a copy of --catalog "
                         "with the new figures) and leave --catalog as it is")
    _common(profile, top=False)
    return parser


def _node_dict(node: Node) -> dict:
    data = asdict(node)
    data["memory_available"] = node.memory_available
    return data


def _print_status(nodes: list[Node], deployments: list[Deployment], limits: str = "") -> None:
    if limits:
        print(f"limits: {limits}")
    print(f"{'NODE':<14} {'ADDRESS':<16} {'READY':<6} {'CLASS':<8} {'MEM USED/TOTAL KB':>20} "
          f"{'RSS KB':>9} {'CPU USE/CAP':>12}")
    for n in nodes:
        print(f"{n.name:<14} {n.address:<16} {'yes' if n.ready else 'no':<6} "
              f"{n.labels.get('node-class', ''):<8} {f'{n.memory_used}/{n.memory_total}':>20} "
              f"{n.memory_rss if n.memory_rss is not None else '-':>9} "
              f"{f'{n.cpu_usage:.2f}/{n.cpu_capacity:g}':>12}")
    print()
    if not deployments:
        print("no deployments")
        return
    print(f"{'MODEL':<18} {'NODE':<14} {'ENDPOINT':<22} {'READY':<6} CREATED")
    for d in deployments:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(d.created))
        print(f"{d.model:<18} {d.node:<14} {d.endpoint:<22} {'yes' if d.ready else 'no':<6} {created}"
              + (f"  {d.reason}" if d.reason else ""))


def _run(args: argparse.Namespace) -> int:
    from .local import LocalCluster

    if args.command == "profile":
        from .profile import run_profile
        return run_profile(catalog_path=args.catalog, config_path=args.config, models_dir=args.models_dir,
                           models=args.models, dry_run=args.dry_run, as_json=args.json,
                           out_path=args.out)
    cluster = LocalCluster(args.config, catalog_path=args.catalog, state_path=args.state,
                           models_dir=args.models_dir)
    out: object
    if args.command == "status":
        nodes, deployments = cluster.nodes(), cluster.deployments()
        if not args.json:
            _print_status(nodes, deployments, cluster.limits_status)
            return EXIT_OK
        out = {"nodes": [_node_dict(n) for n in nodes], "deployments": [asdict(d) for d in deployments],
               "limits": cluster.limits_status}
    elif args.command == "deploy":
        d = cluster.deploy(args.model, args.node, wait=not args.no_wait, timeout=args.timeout)
        out = asdict(d)
        text = f"{d.model} on {d.node} at {d.endpoint} ({'ready' if d.ready else 'starting'})"
    elif args.command == "remove":
        cluster.remove(args.model, args.node)
        out = {"model": args.model, "node": args.node, "removed": True}
        text = f"{args.model} removed from {args.node}"
    elif args.command == "node-down":
        cluster.node_down(args.node)
        out = {"node": args.node, "ready": False}
        text = f"node {args.node} is down"
    elif args.command == "node-up":
        started = cluster.node_up(args.node, timeout=args.timeout)
        out = {"node": args.node, "ready": True, "deployments": [asdict(d) for d in started]}
        text = f"node {args.node} is up ({len(started)} deployment(s) restarted)"
    else:
        cluster.reset()
        out = {"reset": True}
        text = "cluster reset"
    print(json.dumps(out, indent=2) if args.json else text)
    return EXIT_OK


def _fail(exc: BaseException, code: int) -> int:
    message = " ".join(str(exc).split()) or type(exc).__name__
    print(f"error: {message}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit status."""
    try:
        args = build_parser().parse_args(argv)
        _check_paths(args)
        return _run(args)
    except (_UsageError, UnknownModel, UnknownNode, LocalConfigError, CatalogError) as exc:
        return _fail(exc, EXIT_USAGE)
    except ClusterError as exc:
        return _fail(exc, EXIT_FAILURE)
    except BrokenPipeError:  # stdout closed early (`| head`): not an error worth a message
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt:
        return _fail(Exception("interrupted"), 130)
    except Exception as exc:  # never a traceback to an operator
        return _fail(Exception(f"unexpected {type(exc).__name__}: {exc}"), EXIT_FAILURE)


if __name__ == "__main__":
    sys.exit(main())
