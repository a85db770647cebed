"""`python -m solver` as a user runs it: a real subprocess, its stdout, stderr and exit status."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from solver.backends.ampl import ampl_available
from solver.check import check_assignment
from solver.problem import Problem, Solution

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "golden" / "ampl" / "problem.json"


def run(*args: str, env: dict | None = None, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "solver", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})}, input=stdin)


def problem_file(tmp_path: Path, data: dict | str, name: str = "problem.json") -> str:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


@pytest.fixture
def golden() -> dict:
    return json.loads(GOLDEN.read_text())


@pytest.mark.parametrize("solver", ["ipopt", "highs", "glpk", "greedy"])
def test_solve_prints_only_the_solution_json(solver, tmp_path, golden):
    done = run("solve", problem_file(tmp_path, golden), "--solver", solver)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)                      # nothing but the JSON (no solver banner)
    assert list(data) == ["status", "objective", "bound", "solver", "seconds", "assignment", "placement", "message"]
    assert data["solver"] == solver and data["status"] in ("optimal", "feasible")
    problem = Problem.from_dict(golden)
    verdict = check_assignment(problem, Solution.from_dict(data).assignment)
    assert verdict.ok and data["objective"] == verdict.objective
    assert "Traceback" not in done.stderr


def test_default_solver_is_ipopt_and_stdin_works(golden):
    done = run("solve", "-", stdin=json.dumps(golden))
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["solver"] == "ipopt" and data["bound"] is not None and data["bound"] <= data["objective"] + 1e-6


def test_glpk_on_the_rendered_files_reaches_the_highs_optimum(tmp_path, golden):
    for formulation in ("thesis", "placement"):
        path = problem_file(tmp_path, {**golden, "formulation": formulation})
        highs = json.loads(run("solve", path, "--solver", "highs").stdout)
        glpk = json.loads(run("solve", path, "--solver", "glpk").stdout)
        assert glpk["status"] == highs["status"] == "optimal"
        assert glpk["objective"] == pytest.approx(highs["objective"], abs=1e-9)


def test_glpk_on_the_latency_files_is_within_the_tangent_error_of_the_highs_optimum(tmp_path):
    """glpsol solves the rendered piecewise-linear model: a lower bound and an assignment within the
    tangents' stated error of the exact optimum (which `highs` refines to)."""
    import sys as _sys

    _sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
    from test_solver_render import golden_problem

    from solver.queueing import tangent_points
    from solver.render import TANGENT_TOL

    problem = golden_problem("latency")
    path = tmp_path / "latency.json"
    path.write_text(json.dumps(problem.to_dict()))
    highs = json.loads(run("solve", str(path), "--solver", "highs").stdout)
    done = run("solve", str(path), "--solver", "glpk", "--keep-files", str(tmp_path / "kept"))
    assert done.returncode == 0, done.stderr
    glpk = json.loads(done.stdout)
    assert highs["status"] == "optimal" and glpk["status"] == "feasible"
    verdict = check_assignment(problem, Solution.from_dict(glpk).assignment)
    assert verdict.ok and glpk["objective"] == verdict.objective
    _, error = tangent_points(problem.max_utilisation, TANGENT_TOL)
    instances = sum(len(row) for row in glpk["placement"].values())
    assert glpk["bound"] <= highs["objective"] + 1e-9 <= glpk["objective"] + 2e-9
    assert glpk["objective"] - glpk["bound"] <= instances * problem.window * error + 1e-9
    assert {p.name for p in (tmp_path / "kept").iterdir()} >= {"latency.mod", "latency.dat", "latency.run"}


def test_keep_files_keeps_them_and_temporary_files_are_deleted(tmp_path, golden):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    kept = tmp_path / "kept"
    done = run("solve", problem_file(tmp_path, golden), "--solver", "glpk", "--keep-files", str(kept),
               env={"TMPDIR": str(scratch)})
    assert done.returncode == 0, done.stderr
    assert {p.name for p in kept.iterdir()} >= {"placement.mod", "placement.dat", "placement.run"}
    done = run("solve", problem_file(tmp_path, golden), "--solver", "glpk", env={"TMPDIR": str(scratch)})
    assert done.returncode == 0 and list(scratch.iterdir()) == []


@pytest.mark.parametrize("text, field", [
    ("{not json", "not valid JSON (line 1"),
    (json.dumps({"formulation": "thesis"}), "nodes: missing"),
])
def test_malformed_files_exit_2_with_one_line(tmp_path, text, field):
    done = run("solve", problem_file(tmp_path, text))
    assert done.returncode == 2
    assert done.stdout == ""
    assert field in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("change, field", [
    (lambda d: d["requests"][0]["rtt"].update(ghost=0.2), "requests[0].rtt.ghost: unknown node 'ghost'"),
    (lambda d: d["requests"][1].update(model="bert"), "requests[1].model: unknown model 'bert'"),
    (lambda d: d["nodes"][2].update(memory=-1), "nodes[2].memory: must be a non-negative number, got -1"),
    (lambda d: d["exec_time"]["resnet"].update({"edge-1": -0.3}), "exec_time.resnet.edge-1: must be a non-negative number, got -0.3"),
    (lambda d: d["requests"][2].update(count=-4), "requests[2].count: must be a non-negative number, got -4"),
])
def test_bad_names_and_negative_numbers_exit_2(tmp_path, golden, change, field):
    data = copy.deepcopy(golden)
    change(data)
    done = run("solve", problem_file(tmp_path, data), "--solver", "highs")
    assert done.returncode == 2 and field in done.stderr and done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1


def test_missing_file_and_bad_arguments_exit_2(tmp_path, golden):
    done = run("solve", str(tmp_path / "nope.json"))
    assert done.returncode == 2 and "cannot read" in done.stderr
    done = run("solve", problem_file(tmp_path, golden), "--solver", "cplex")
    assert done.returncode == 2 and "invalid choice" in done.stderr
    done = run("solve", problem_file(tmp_path, golden), "--time-limit", "-3")
    assert done.returncode == 2 and "must be positive" in done.stderr


@pytest.mark.parametrize("solver", ["highs", "glpk", "ipopt"])
def test_infeasible_exits_1_and_names_the_capacity(tmp_path, golden, solver):
    data = copy.deepcopy(golden)
    for node in data["nodes"]:
        node["cpu"] = 0.5                                # a resnet request needs 1 core
    done = run("solve", problem_file(tmp_path, data), "--solver", solver)
    assert done.returncode == 1, done.stderr
    solution = json.loads(done.stdout)
    assert solution["status"] == "infeasible" and solution["objective"] is None
    assert "requests[0] (model resnet): no node has room" in solution["message"]
    assert "infeasible:" in done.stderr and "Traceback" not in done.stderr
    data = copy.deepcopy(golden)
    data["formulation"] = "thesis"
    for node in data["nodes"]:
        node["cpu"] = 1.5                                # 5.25 cores needed, 4.5 there
    solution = json.loads(run("solve", problem_file(tmp_path, data), "--solver", solver).stdout)
    assert solution["status"] == "infeasible" and solution["message"].startswith("compute: the requests need 5.25")


def test_search_reports_the_capacity_it_violates(tmp_path, golden):
    data = {**golden, "formulation": "thesis"}
    done = run("solve", problem_file(tmp_path, data), "--solver", "search")
    solution = json.loads(done.stdout)
    assert done.returncode == 1 and solution["status"] == "infeasible"
    assert solution["objective"] > 0 and len(solution["assignment"]) == 3
    assert "ignores capacity and violates memory[" in solution["message"]


@pytest.mark.skipif(ampl_available(), reason="AMPL is installed here: the ampl test runs instead")
def test_ampl_without_ampl_exits_3_with_an_install_hint(tmp_path, golden):
    done = run("solve", problem_file(tmp_path, golden), "--solver", "ampl")
    assert done.returncode == 3
    solution = json.loads(done.stdout)
    assert solution["status"] == "error" and "install AMPL" in solution["message"]
    assert "install AMPL" in done.stderr and "Traceback" not in done.stderr


def test_render_and_check_commands(tmp_path, golden):
    path = problem_file(tmp_path, golden)
    done = run("render", path, "--out", str(tmp_path / "files"))
    assert done.returncode == 0 and len(done.stdout.split()) == 3
    assert (tmp_path / "files" / "placement.mod").exists()
    solved = run("solve", path, "--solver", "highs")
    ok = run("check", path, "-", stdin=solved.stdout)
    assert ok.returncode == 0 and json.loads(ok.stdout)["ok"] is True
    bad = json.loads(solved.stdout)
    bad["assignment"][0]["count"] += 5
    verdict = run("check", path, "-", stdin=json.dumps(bad))
    assert verdict.returncode == 1 and "dispatched, count is" in " ".join(json.loads(verdict.stdout)["violations"])


# --- issue 11, point 7.2: every bad input is exit 2 with one line, never a traceback ----------------

def _bad_files(tmp_path: Path, golden: dict) -> dict[str, str]:
    def with_change(name: str, change) -> str:
        data = copy.deepcopy(golden)
        change(data)
        return problem_file(tmp_path, data, name)

    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00\x01" * 64)
    digits = tmp_path / "digits.json"
    digits.write_text(GOLDEN.read_text().replace('"count": 3', '"count": 1' + "0" * 5000, 1))
    return {
        "deep": str(deep), "binary": str(binary), "ls": "/bin/ls", "folder": str(tmp_path), "digits": str(digits),
        "huge-memory": with_change("m.json", lambda d: d["nodes"][0].update(memory=10 ** 400)),
        "huge-count": with_change("c.json", lambda d: d["requests"][0].update(count=10 ** 400)),
        "big-count": with_change("b.json", lambda d: d["requests"][0].update(count=10 ** 30)),
        "huge-cpu": with_change("u.json", lambda d: d["models"][0].update(cpu=1e308)),
        "golden": str(GOLDEN),
        "huge-solution": problem_file(tmp_path, {"status": "feasible", "assignment": [
            {"request": 0, "node": "edge-1", "count": 10 ** 400}]}, "s.json"),
    }


@pytest.mark.parametrize("args, fragment", [
    (["solve", "{deep}"], "nested too deeply"),
    (["solve", "{binary}"], "not UTF-8"),
    (["solve", "{ls}"], "not UTF-8"),
    (["solve", "{folder}"], "cannot read"),
    (["solve", "{digits}"], "not valid JSON"),
    (["solve", "{huge-memory}"], "nodes[0].memory: is too large (more than 2**53)"),
    (["solve", "{huge-count}"], "requests[0].count: is too large (more than 2**53)"),
    (["solve", "{big-count}"], "requests[0].count: is too large (more than 2**53)"),
    (["solve", "{huge-cpu}"], "models[0].cpu: is too large (more than 2**53)"),
    (["render", "{deep}", "--out", "{folder}"], "nested too deeply"),
    (["check", "{golden}", "{deep}"], "nested too deeply"),
    (["check", "{golden}", "{binary}"], "not UTF-8"),
    (["check", "{golden}", "{huge-solution}"], "assignment[0].count: is too large (more than 2**53)"),
    (["solve", "{golden}", "--time-limit", "nan"], "--time-limit"),
    (["solve", "{golden}", "--time-limit", "inf"], "--time-limit"),
    (["solve", "{golden}", "--time-limit", "-5"], "--time-limit"),
    (["solve", "{golden}", "--time-limit", "0"], "--time-limit"),
    (["solve", "{golden}", "--time-limit", "1e400"], "--time-limit"),
    (["simulate", "--seeds", "-1"], "--seeds"),
    (["simulate", "--seeds", "nan"], "--seeds"),
    (["simulate", "--seeds", "1000000000"], "--seeds"),
])
def test_every_bad_input_exits_2_with_one_line(tmp_path, golden, args, fragment):
    files = _bad_files(tmp_path, golden)
    done = run(*[a.format(**files) for a in args])
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], done.stderr


@pytest.mark.parametrize("args", [
    ["render", str(GOLDEN), "--out", "/proc/x"],
    ["render", str(GOLDEN), "--out", "/dev/null/x"],
    ["solve", str(GOLDEN), "--solver", "glpk", "--keep-files", "/proc/x"],
    ["simulate", "--seeds", "1", "--out", "/proc/x"],
])
def test_an_output_that_cannot_be_written_exits_1_with_one_line(args):
    done = run(*args)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot write" in lines[0], done.stderr
