"""`python -m solver`: solve a problem file, render its AMPL files, or rerun the thesis simulation.

    python -m solver solve PROBLEM.json [--solver NAME] [--time-limit S] [--keep-files DIR]
    python -m solver render PROBLEM.json --out DIR
    python -m solver check PROBLEM.json SOLUTION.json
    python -m solver simulate [--seeds K] [--out DIR]

`solve` prints only the Solution JSON on stdout (native solver output is sent to stderr) and
exits 0 (optimal/feasible), 1 (infeasible, or no assignment), 2 (bad input), 3 (backend not
installed). Errors are one line on stderr, never a traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from contextlib import contextmanager
from typing import Iterator

from solver import status as st
from solver.api import backend_names, get_backend
from solver.problem import ProblemError, Solution, load_problem


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(st.EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser."""
    parser = _Parser(prog="python -m solver", description="Model placement and request dispatch solver.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    names = backend_names()

    solve = sub.add_parser("solve", help="solve a problem file and print the Solution JSON")
    solve.add_argument("problem", help="problem file (JSON, issue 2's format); - reads stdin")
    solve.add_argument("--solver", default="ipopt", choices=names, metavar="NAME",
                       help=f"backend: {', '.join(names)} (default: ipopt, as in the thesis)")
    solve.add_argument("--time-limit", type=_positive, default=None, metavar="S", help="time limit in seconds")
    solve.add_argument("--keep-files", default=None, metavar="DIR",
                       help="ampl/glpk: keep the rendered model, data and run files in DIR")

    render = sub.add_parser("render", help="write the AMPL model, data and run files of a problem")
    render.add_argument("problem")
    render.add_argument("--out", required=True, metavar="DIR")

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
    return value


@contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send everything written to file descriptor 1 (native solver banners too) to stderr."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


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

        return run(args)
    except ProblemError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return st.EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _solve(args: argparse.Namespace) -> int:
    problem = load_problem(args.problem)
    backend = get_backend(args.solver)
    if not backend.available():
        solution = backend.solve(problem)          # an `error` solution carrying the install hint
        print(json.dumps(solution.to_dict(), indent=2))
        print(f"error: {solution.message}", file=sys.stderr)
        return st.EXIT_UNAVAILABLE
    with stdout_to_stderr():
        solution = backend.solve(problem, time_limit=args.time_limit, keep_files=args.keep_files)
    print(json.dumps(solution.to_dict(), indent=2))
    if solution.ok:
        return st.EXIT_OK
    print(f"{solution.status}: {solution.message}", file=sys.stderr)
    return st.EXIT_NO_SOLUTION


def _render(args: argparse.Namespace) -> int:
    from solver.render import write_files

    problem = load_problem(args.problem)
    for path in write_files(problem, args.out).values():
        print(path)
    return st.EXIT_OK


def _check(args: argparse.Namespace) -> int:
    from solver.check import check_assignment

    problem = load_problem(args.problem)
    try:
        with (sys.stdin if args.solution == "-" else open(args.solution, encoding="utf-8")) as handle:
            solution = Solution.from_dict(json.load(handle))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ProblemError(f"{args.solution}: not a Solution JSON ({exc})") from None
    result = check_assignment(problem, solution.assignment)
    print(json.dumps({"ok": result.ok, "objective": result.objective, "violations": result.violations}, indent=2))
    return st.EXIT_OK if result.ok else st.EXIT_NO_SOLUTION
