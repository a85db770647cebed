"""`python -m solver`: solve a problem file, render its AMPL files, or rerun the thesis simulation.

    python -m solver solve PROBLEM.json [--solver NAME] [--time-limit S] [--keep-files DIR]
    python -m solver render PROBLEM.json --out DIR
    python -m solver check PROBLEM.json SOLUTION.json
    python -m solver simulate [--seeds K] [--out DIR]

`solve` prints only the Solution JSON on stdout (native solver output is sent to stderr) and
exits 0 (optimal/repaired/feasible), 1 (infeasible, time_limit, or no assignment), 2 (bad input), 3 (backend
not installed). Every command exits 2 for input it cannot use (an unreadable, binary or malformed
file, a bad option value) and 1 for an output it cannot write (`render --out`, `--keep-files`,
`simulate --out`). Errors are one line on stderr, never a traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from solver import status as st
from solver.api import backend_names, get_backend
from solver.native import redirected
from solver.problem import ProblemError, Solution, load_problem, parse_json

MAX_TIME_LIMIT = 7 * 24 * 3600.0     # a week: a larger --time-limit is a typo


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        """One line on stderr (no usage dump), exit 2."""
        self.exit(st.EXIT_BAD_INPUT, f"{self.prog}: error: {' '.join(message.split())} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser."""
    parser = _Parser(prog="python -m solver", description="Model placement and request dispatch solver.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    names = backend_names()

    solve = sub.add_parser("solve", help="solve a problem file and print the Solution JSON")
    solve.add_argument("problem", help="problem file (JSON, issue 2's format); - reads stdin")
    solve.add_argument("--solver", default="ipopt", choices=names, metavar="NAME",
                       help=f"backend: {', '.join(names)} (default: ipopt, as in the thesis)")
    solve.add_argument("--time-limit", type=_positive, default=None, metavar="S",
                       help="time limit in seconds (0 < S <= 604800), honoured by every backend: stopped by it, "
                            "the answer is the best feasible one found (`feasible`, message `time limit "
                            "reached`) or status `time_limit` (exit 1)")
    solve.add_argument("--keep-files", default=None, metavar="DIR",
                       help="ampl/glpk: keep the rendered model, data and run files in DIR")

    render = sub.add_parser("render", help="write the AMPL model, data and run files of a problem")
    render.add_argument("problem")
    render.add_argument("--out", required=True, metavar="DIR", help="folder to write (exit 1 if it cannot be written)")

    check = sub.add_parser("check", help="check a Solution's assignment against a problem")
    check.add_argument("problem")
    check.add_argument("solution", help="Solution JSON file; - reads stdin")

    simulate = sub.add_parser("simulate", help="reproduce the thesis's simulation (section 6.1)")
    from solver.simulate import add_arguments

    add_arguments(simulate)
    return parser


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    if not value <= MAX_TIME_LIMIT:          # inf and 1e400 too
        raise argparse.ArgumentTypeError(f"must be at most {MAX_TIME_LIMIT:g} seconds: {text!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "solve":
            return _solve(args)
        if args.command == "render":
            return _render(args)
        if args.command == "check":
            return _check(args)
        from solver.simulate import run

        _writable_folder(args.out, "--out")
        return run(args)
    except ProblemError as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return st.EXIT_BAD_INPUT
    except _OutputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return st.EXIT_NO_SOLUTION
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as exc:      # an output that cannot be written (simulate --out, ...)
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: cannot write {where}{exc.strerror or exc}", file=sys.stderr)
        return st.EXIT_NO_SOLUTION
    except Exception as exc:  # never a traceback
        print(f"error: internal error: {type(exc).__name__}: {_one_line(exc)}", file=sys.stderr)
        return st.EXIT_NO_SOLUTION


class _OutputError(Exception):
    """An output path that cannot be written (exit 1)."""


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _writable_folder(folder: str, option: str) -> None:
    """Create `folder` if needed; raise _OutputError (one line) when it cannot be written."""
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise _OutputError(f"{option} {folder}: cannot write ({exc.strerror or exc})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise _OutputError(f"{option} {folder}: cannot write (permission denied)")


def _solve(args: argparse.Namespace) -> int:
    problem = load_problem(args.problem)
    if args.keep_files:
        _writable_folder(args.keep_files, "--keep-files")
    backend = get_backend(args.solver)
    if not backend.available():
        solution = backend.solve(problem)          # an `error` solution carrying the install hint
        print(json.dumps(solution.to_dict(), indent=2))
        print(f"error: {solution.message}", file=sys.stderr)
        return st.EXIT_UNAVAILABLE
    with redirected(2, 1):
        solution = backend.solve(problem, time_limit=args.time_limit, keep_files=args.keep_files)
    print(json.dumps(solution.to_dict(), indent=2))
    if solution.ok:
        return st.EXIT_OK
    print(f"{solution.status}: {solution.message}", file=sys.stderr)
    return st.EXIT_NO_SOLUTION


def _render(args: argparse.Namespace) -> int:
    from solver.render import write_files

    problem = load_problem(args.problem)
    _writable_folder(args.out, "--out")
    try:
        paths = write_files(problem, args.out)
    except OSError as exc:
        raise _OutputError(f"--out {args.out}: cannot write ({exc.strerror or exc})") from None
    for path in paths.values():
        print(path)
    return st.EXIT_OK


def _check(args: argparse.Namespace) -> int:
    from solver.check import check_assignment

    problem = load_problem(args.problem)
    try:
        with (sys.stdin if args.solution == "-" else open(args.solution, encoding="utf-8")) as handle:
            text = handle.read()
    except OSError as exc:
        raise ProblemError(f"{args.solution}: cannot read ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise ProblemError(f"{args.solution}: not UTF-8 text") from None
    data = parse_json(text, args.solution)
    try:
        solution = Solution.from_dict(data)
    except ProblemError as exc:
        raise ProblemError([f"{args.solution}: {error}" for error in exc.errors]) from None
    result = check_assignment(problem, solution.assignment)
    print(json.dumps({"ok": result.ok, "objective": result.objective, "violations": result.violations}, indent=2))
    return st.EXIT_OK if result.ok else st.EXIT_NO_SOLUTION
