"""`python -m solver simulate` end to end (one seed, three solvers, to stay quick)."""
from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_simulate_writes_csv_markdown_and_plots(tmp_path):
    out = tmp_path / "sim"
    done = subprocess.run([sys.executable, "-m", "solver", "simulate", "--seeds", "1", "--solvers", "highs,greedy,search",
                           "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert "[ 16/16] nodes" in done.stderr                 # progress on the console
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 8 * 2 * 3                          # points x modes x solvers
    assert {r["solver"] for r in rows} == {"highs", "greedy", "search"}
    assert {(r["experiment"], r["requests"], r["nodes"]) for r in rows} >= {("requests", "50", "10"), ("nodes", "25", "5")}
    optimum = {(r["experiment"], r["mode"], r["requests"], r["nodes"]): float(r["objective"])
               for r in rows if r["solver"] == "highs"}
    for r in rows:
        if r["solver"] != "highs":
            assert float(r["objective"]) >= optimum[(r["experiment"], r["mode"], r["requests"], r["nodes"])] - 1e-9
    report = (out / "results.md").read_text()
    for needle in ("Figure 6.1", "Figure 6.2", "Table 6.2", "Table 6.3", "7.6445", "35.0095", "26.546", "**average**"):
        assert needle in report
    for name in ("figure_6_1_requests.png", "figure_6_2_nodes.png", "solver_times.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_simulate_rejects_unknown_solvers(tmp_path):
    done = subprocess.run([sys.executable, "-m", "solver", "simulate", "--solvers", "highs,cplex", "--out", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "unknown solver(s) cplex" in done.stderr
