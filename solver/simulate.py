"""`python -m solver simulate`: thesis section 6.1 again, with every solver side by side.

Two sweeps on Table 6.1's world (solver/instances.py): requests 20..50 step 10 on 10 nodes
(Figure 6.1, Table 6.2) and nodes 5..20 step 5 with 25 requests (Figure 6.2, Table 6.3), each in
Mode 1 (available RAM) and Mode 2 (total RAM), each point over several seeds. Writes
results.csv (one row per solve), results.md (the thesis's numbers beside ours) and PNG plots.

The thesis's "solver" value is the objective Ipopt reported, i.e. the relaxation's value: it is
shown as `ipopt relaxed`, beside the value of the rounded assignment and the exact optimum.
"""
from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path

from solver.api import backend_names, get_backend
from solver.instances import MODEL_CPU, MODEL_MEMORY_KB, NODE_CPU, draw_world, thesis_problem

REQUESTS_SWEEP = (20, 30, 40, 50)
NODES_SWEEP = (5, 10, 15, 20)
DEFAULT_REQUESTS = 25
DEFAULT_NODES = 10
DEFAULT_SOLVERS = ("ipopt", "highs", "glpk", "ampl", "search", "nearest", "least-loaded", "greedy")

# The thesis's own numbers (section 6.1.1 text and Tables 6.2/6.3); None where it gives none.
THESIS_FIG_6_1 = {  # requests -> (Solver Mode 1, Solver Mode 2, iterative search)
    20: (7.6445, 7.1987, 13.6383), 30: (None, None, None), 40: (None, None, None), 50: (18.5799, 19.7490, 35.0095)}
THESIS_FIG_6_1_AVG = (14.1118, 13.9244, 23.8578)
THESIS_FIG_6_2 = {  # nodes -> (Solver Mode 1, Solver Mode 2, iterative search)
    5: (15.0272, 13.1386, 17.8215), 10: (None, None, None), 15: (None, None, None), 20: (8.6376, 7.3429, 16.1020)}
THESIS_FIG_6_2_AVG = (10.6706, 9.5920, 16.8416)
THESIS_TABLE_6_2 = {20: (19.229, 23.227), 30: (20.581, 23.532), 40: (24.380, 25.901), 50: (24.391, 19.239)}
THESIS_TABLE_6_3 = {5: (17.742, 19.239), 10: (20.417, 21.231), 15: (22.323, 22.449), 20: (26.012, 26.546)}
THESIS_GAIN = 0.41


@dataclass
class Row:
    """One solve of one instance."""

    experiment: str      # "requests" (Figure 6.1) or "nodes" (Figure 6.2)
    mode: int
    requests: int
    nodes: int
    seed: int
    solver: str
    status: str
    objective: float | None
    bound: float | None
    seconds: float


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the simulate options to a parser."""
    parser.add_argument("--seeds", type=_count, default=10, metavar="K", help="seeds per point (default 10)")
    parser.add_argument("--out", default="build/simulation", metavar="DIR", help="output folder")
    parser.add_argument("--solvers", default=",".join(DEFAULT_SOLVERS), metavar="A,B",
                        help="comma-separated backends (unavailable ones, e.g. ampl without AMPL, are skipped)")
    parser.add_argument("--exec-per", choices=("request", "model"), default="request",
                        help="draw execution time per request and node (chapter 3, default) or per model and node")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 1 <= value <= MAX_SEEDS:
        raise argparse.ArgumentTypeError(f"must be from 1 to {MAX_SEEDS}, got {text!r}")
    return value


MAX_SEEDS = 1000      # each seed is ~100 solves per solver: more is never a useful run


def points() -> list[tuple[str, int, int]]:
    """Return the (experiment, requests, nodes) points of both sweeps."""
    return ([("requests", n, DEFAULT_NODES) for n in REQUESTS_SWEEP]
            + [("nodes", DEFAULT_REQUESTS, s) for s in NODES_SWEEP])


def simulate(*, seeds: int, solvers: list[str], exec_per: str = "request", progress=None) -> list[Row]:
    """Solve every point, mode and seed with every solver; return one Row per solve."""
    backends = [get_backend(name) for name in solvers]
    rows: list[Row] = []
    plan = [(p, mode, seed) for p in points() for mode in (1, 2) for seed in range(seeds)]
    worlds = {seed: draw_world(seed) for seed in range(seeds)}
    started = time.monotonic()
    for k, ((experiment, n_requests, n_nodes), mode, seed) in enumerate(plan, 1):
        problem = thesis_problem(worlds[seed], n_requests=n_requests, n_nodes=n_nodes, mode=mode, exec_per=exec_per)
        found = {}
        for backend in backends:
            solution = backend.solve(problem)
            rows.append(Row(experiment, mode, n_requests, n_nodes, seed, backend.name, solution.status,
                            solution.objective, solution.bound, solution.seconds))
            found[backend.name] = solution
        if progress:
            best = found.get("highs") or next(iter(found.values()))
            search = found.get("search")
            progress(f"[{k:>3}/{len(plan)}] {experiment:<8} N={n_requests:<2} S={n_nodes:<2} mode {mode} seed {seed:<2}"
                     f" optimum {_fmt(best.objective)}" + (f" search {_fmt(search.objective)}" if search else "")
                     + f"  ({time.monotonic() - started:.1f} s)")
    return rows


# --- summaries (pure) ------------------------------------------------------------------------

def _fmt(value: float | None, digits: int = 4) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def select(rows: list[Row], **match: object) -> list[Row]:
    """Return the rows whose fields equal every given value."""
    return [r for r in rows if all(getattr(r, k) == v for k, v in match.items())]


def mean_objective(rows: list[Row], *, field: str = "objective", usable_only: bool = True, **match: object) -> float | None:
    """Return the mean objective (or bound) over the seeds of one point, solver and mode."""
    chosen = select(rows, **match)
    if usable_only and match.get("solver") != "search":
        chosen = [r for r in chosen if r.status in ("optimal", "repaired", "feasible")]
    values = [getattr(r, field) for r in chosen if getattr(r, field) is not None]
    return _mean(values)


def paired_gain(rows: list[Row], **match: object) -> float | None:
    """Return the mean over seeds of 1 - optimum / search (how far the optimum is below search)."""
    gains = []
    for opt in select(rows, solver="highs", **match):
        if opt.status != "optimal":
            continue
        same = select(rows, solver="search", experiment=opt.experiment, mode=opt.mode, requests=opt.requests,
                      nodes=opt.nodes, seed=opt.seed)
        if same and same[0].objective:
            gains.append(1 - opt.objective / same[0].objective)
    return _mean(gains)


def report(rows: list[Row], *, seeds: int, solvers: list[str], exec_per: str, seconds: float, command: str) -> str:
    """Return results.md: the thesis's figures and tables as tables, the thesis's numbers beside ours."""
    out: list[str] = []
    w = out.append
    w("# Simulation of thesis section 6.1, with every solver side by side\n")
    w(f"Produced by `{command}` on {date.today().isoformat()} in {seconds:.0f} s "
      f"({seeds} seed(s) per point, both modes; solvers: {', '.join(solvers)}).\n")
    w("Setup (Table 6.1): execution time U(0.1, 0.8) s "
      + ("per request and node (chapter 3's theta[i,j])" if exec_per == "request" else "per model and node")
      + ", RTT U(0.1, 0.5) s per request and node, 4 models, RAM U(10,000, 500,000) KB available (Mode 1) or "
      f"U(30,000, 800,000) KB total (Mode 2). Not given by the thesis, chosen here: model memory "
      f"{', '.join(f'{m:,}' for m in MODEL_MEMORY_KB)} KB (charged per request, chapter 3), cpu "
      f"{', '.join(map(str, MODEL_CPU))} cores per request, {NODE_CPU:g} cores per node. "
      "Values are means over the seeds; `ipopt relaxed` is the objective Ipopt reports for the continuous "
      "relaxation (what the thesis recorded as the solver's latency), `ipopt` the value of its rounded "
      "assignment, `optimum` the exact MILP (HiGHS). `search` is the thesis's iterative search, whose "
      "assignment ignores capacity.\n")
    for experiment, sweep, thesis, avg, title, key in (
            ("requests", REQUESTS_SWEEP, THESIS_FIG_6_1, THESIS_FIG_6_1_AVG,
             "Figure 6.1: total latency (s) vs number of requests, 10 nodes", "requests"),
            ("nodes", NODES_SWEEP, THESIS_FIG_6_2, THESIS_FIG_6_2_AVG,
             "Figure 6.2: total latency (s) vs number of nodes, 25 requests", "nodes")):
        w(f"## {title}\n")
        w(f"| {key} | thesis Mode 1 | ipopt relaxed M1 | ipopt M1 | optimum M1 | thesis Mode 2 | ipopt relaxed M2 "
          "| optimum M2 | thesis search | search | optimum below search |")
        w("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        sums: dict[str, list[float]] = {}
        for value in sweep:
            m = {"experiment": experiment, key: value}
            cells = {
                "r1": mean_objective(rows, solver="ipopt", mode=1, field="bound", **m),
                "i1": mean_objective(rows, solver="ipopt", mode=1, **m),
                "o1": mean_objective(rows, solver="highs", mode=1, **m),
                "r2": mean_objective(rows, solver="ipopt", mode=2, field="bound", **m),
                "o2": mean_objective(rows, solver="highs", mode=2, **m),
                "s": mean_objective(rows, solver="search", mode=1, **m),
                "g": paired_gain(rows, **m),
            }
            for name, cell in cells.items():
                if cell is not None:
                    sums.setdefault(name, []).append(cell)
            t1, t2, ts = thesis[value]
            w(f"| {value} | {_fmt(t1)} | {_fmt(cells['r1'])} | {_fmt(cells['i1'])} | {_fmt(cells['o1'])} | {_fmt(t2)} "
              f"| {_fmt(cells['r2'])} | {_fmt(cells['o2'])} | {_fmt(ts)} | {_fmt(cells['s'])} | {_pct(cells['g'])} |")
        a = {name: _mean(values) for name, values in sums.items()}
        w(f"| **average** | {_fmt(avg[0])} | {_fmt(a.get('r1'))} | {_fmt(a.get('i1'))} | {_fmt(a.get('o1'))} "
          f"| {_fmt(avg[1])} | {_fmt(a.get('r2'))} | {_fmt(a.get('o2'))} | {_fmt(avg[2])} | {_fmt(a.get('s'))} "
          f"| {_pct(a.get('g'))} |")
        thesis_gain = 1 - avg[0] / avg[2]
        w(f"\nThe thesis's Mode 1 average is {100 * thesis_gain:.1f}% below its search average; here the optimum "
          f"is {_pct(a.get('g'))} below search on average (paired per seed, Mode 1 and 2).\n")
        w("All solvers, Mode 1 (mean total latency; in brackets the mean excess over the optimum):\n")
        present = [s for s in solvers if select(rows, solver=s)]
        w(f"| {key} | " + " | ".join(present) + " |")
        w("|---:|" + "---:|" * len(present))
        for value in sweep:
            m = {"experiment": experiment, key: value, "mode": 1}
            opt = mean_objective(rows, solver="highs", **m)
            cells = []
            for s in present:
                v = mean_objective(rows, solver=s, **m)
                usable = len([r for r in select(rows, solver=s, **m) if r.status in ("optimal", "repaired", "feasible")])
                total = len(select(rows, solver=s, **m))
                note = f" ({_pct(v / opt - 1)})" if v is not None and opt and s != "highs" else ""
                short = f" [{usable}/{total} feasible]" if usable < total else ""
                cells.append(f"{_fmt(v)}{note}{short}")
            w(f"| {value} | " + " | ".join(cells) + " |")
        w("")
    for experiment, sweep, thesis, title, key in (
            ("requests", REQUESTS_SWEEP, THESIS_TABLE_6_2, "Table 6.2: solver time (ms) vs number of requests", "requests"),
            ("nodes", NODES_SWEEP, THESIS_TABLE_6_3, "Table 6.3: solver time (ms) vs number of nodes", "nodes")):
        w(f"## {title}\n")
        timed = [s for s in solvers if s != "search" and select(rows, solver=s)]
        w(f"| {key} | thesis Mode 1 | thesis Mode 2 | " + " | ".join(f"{s} M1 | {s} M2" for s in timed) + " |")
        w("|---:|---:|---:|" + "---:|---:|" * len(timed))
        for value in sweep:
            cells = []
            for s in timed:
                for mode in (1, 2):
                    times = [r.seconds * 1000 for r in select(rows, solver=s, mode=mode, experiment=experiment, **{key: value})]
                    cells.append(_fmt(_median(times), 2))
            t1, t2 = thesis[value]
            w(f"| {value} | {t1:.3f} | {t2:.3f} | " + " | ".join(cells) + " |")
        w("\nOurs are medians over the seeds of the wall time of one `solve` call (building the model, solving, "
          "rounding or parsing, and checking the assignment), on this machine.\n")
    return "\n".join(out)


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


# --- I/O -------------------------------------------------------------------------------------

def write_csv(rows: list[Row], path: Path) -> None:
    """Write one line per solve."""
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(asdict(rows[0])) if rows else list(Row.__annotations__))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in asdict(row).items()})


def plot(rows: list[Row], folder: Path) -> list[Path]:
    """Write the PNG plots (Figure 6.1, Figure 6.2, solver times); return their paths."""
    from common.plotting import pyplot

    plt = pyplot("the simulation's plots")
    if plt is None:
        return []

    written = []
    for experiment, sweep, thesis, key, name, title in (
            ("requests", REQUESTS_SWEEP, THESIS_FIG_6_1, "requests", "figure_6_1_requests.png",
             "Figure 6.1: latency vs number of requests (10 nodes)"),
            ("nodes", NODES_SWEEP, THESIS_FIG_6_2, "nodes", "figure_6_2_nodes.png",
             "Figure 6.2: latency vs number of nodes (25 requests)")):
        fig, ax = plt.subplots(figsize=(7.5, 4.8))
        for solver, mode, field, style, label in (
                ("highs", 1, "objective", "o-", "optimum, Mode 1"), ("highs", 2, "objective", "s-", "optimum, Mode 2"),
                ("ipopt", 1, "bound", "o:", "Ipopt relaxed, Mode 1"), ("search", 1, "objective", "^-", "iterative search"),
                ("greedy", 1, "objective", "x--", "greedy, Mode 1"), ("nearest", 1, "objective", "d--", "nearest, Mode 1")):
            ys = [mean_objective(rows, solver=solver, mode=mode, field=field, experiment=experiment, **{key: v})
                  for v in sweep]
            if any(y is not None for y in ys):
                ax.plot(sweep, [math.nan if y is None else y for y in ys], style, label=label)
        for column, marker, label in ((0, "*", "thesis Solver Mode 1"), (1, "P", "thesis Solver Mode 2"),
                                      (2, "X", "thesis iterative search")):
            xs = [v for v in sweep if thesis[v][column] is not None]
            ax.plot(xs, [thesis[v][column] for v in xs], marker, markersize=11, linestyle="none", label=label)
        ax.set_xlabel(f"number of {key}")
        ax.set_ylabel("total latency (s)")
        ax.set_title(title)
        ax.set_xticks(list(sweep))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = folder / name
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    for ax, (experiment, sweep, thesis, key) in zip(axes, (("requests", REQUESTS_SWEEP, THESIS_TABLE_6_2, "requests"),
                                                           ("nodes", NODES_SWEEP, THESIS_TABLE_6_3, "nodes"))):
        for solver in sorted({r.solver for r in rows} - {"search"}):
            ys = [_median([r.seconds * 1000 for r in select(rows, solver=solver, mode=1, experiment=experiment,
                                                             **{key: v})]) for v in sweep]
            ax.plot(sweep, ys, "o-", label=solver)
        ax.plot(sweep, [thesis[v][0] for v in sweep], "k*--", markersize=10, label="thesis Ipopt (Mode 1)")
        ax.set_yscale("log")
        ax.set_xlabel(f"number of {key}")
        ax.set_xticks(list(sweep))
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("solve time, median (ms)")
    axes[0].set_title("Table 6.2: time vs requests (Mode 1)")
    axes[1].set_title("Table 6.3: time vs nodes (Mode 1)")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    path = folder / "solver_times.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)
    return written


def run(args: argparse.Namespace) -> int:
    """Run the simulation from parsed arguments; write the results; return the exit status."""
    names = [s.strip() for s in args.solvers.split(",") if s.strip()]
    unknown = [s for s in names if s not in backend_names()]
    if unknown:
        print(f"error: --solvers: unknown solver(s) {', '.join(unknown)}; choose from {', '.join(backend_names())}",
              file=sys.stderr)
        return 2
    solvers = []
    for name in names:
        backend = get_backend(name)
        if backend.available():
            solvers.append(name)
        else:
            print(f"skipping {name}: {backend.unavailable_reason()}", file=sys.stderr)
    for needed in ("highs", "search"):
        if needed not in solvers:
            solvers.append(needed)                       # the tables are built around these two
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    rows = simulate(seeds=args.seeds, solvers=solvers, exec_per=args.exec_per,
                    progress=lambda line: print(line, file=sys.stderr, flush=True))
    elapsed = time.monotonic() - started
    write_csv(rows, folder / "results.csv")
    command = "python -m solver simulate" + (f" --seeds {args.seeds}" if args.seeds != 10 else "") \
        + (f" --solvers {args.solvers}" if args.solvers != ",".join(DEFAULT_SOLVERS) else "") \
        + (f" --exec-per {args.exec_per}" if args.exec_per != "request" else "")
    (folder / "results.md").write_text(report(rows, seeds=args.seeds, solvers=solvers, exec_per=args.exec_per,
                                              seconds=elapsed, command=command))
    written = [folder / "results.csv", folder / "results.md"]
    if not args.no_plots:
        written += plot(rows, folder)
    print(f"wrote {', '.join(str(p) for p in written)} ({len(rows)} solves in {elapsed:.1f} s)", file=sys.stderr)
    return 0
