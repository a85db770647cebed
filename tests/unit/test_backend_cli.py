"""The command line: defaults, validation, one-line errors, the lock, an unreachable front-end."""
from __future__ import annotations

import socket
from pathlib import Path

import pytest

from backend.__main__ import build_parser, config_from_args, main
from backend.lock import RunLock


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_defaults_follow_the_issue():
    args = build_parser().parse_args(["--mode", "1", "--frontend", "http://127.0.0.1:5000"])
    cfg = config_from_args(args)
    assert cfg.solver == "ipopt" and cfg.build.formulation == "placement"
    assert cfg.execution.max_deletions == 3 and not cfg.execution.dry_run and not cfg.execution.wait_ready
    assert cfg.build.mode == 1 and cfg.thresholds.idle_seconds == 900 and cfg.thresholds.min_requests == 10
    repo = Path(__file__).resolve().parents[2]
    assert cfg.cluster_kind == "local" and cfg.lock_path == str(repo / ".run" / "backend.lock")
    assert cfg.catalog == str(repo / "config" / "models.yaml") and cfg.alto == str(repo / "config" / "alto-costmap.json")


def test_user_paths_are_relative_to_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = build_parser().parse_args(["--mode", "1", "--frontend", "u", "--lock", "l.lock", "--alto", "a.json",
                                      "--cluster-state", "s.db", "--keep-files", "keep"])
    cfg = config_from_args(args)
    assert cfg.lock_path == str(tmp_path / "l.lock") and cfg.alto == str(tmp_path / "a.json")
    assert cfg.cluster_settings["state_path"] == str(tmp_path / "s.db") and cfg.keep_files == str(tmp_path / "keep")


def test_every_flag_of_the_issue_is_accepted(tmp_path):
    argv = ["--mode", "2", "--frontend", "http://x", "--token", "T", "--solver", "highs",
            "--formulation", "thesis", "--idle-seconds", "30", "--min-requests", "2", "--window", "60",
            "--max-deletions", "1", "--dry-run", "--keep-files", str(tmp_path), "--wait-ready",
            "--every", "5", "--report", str(tmp_path / "r.json")]
    args = build_parser().parse_args(argv)
    cfg = config_from_args(args)
    assert (cfg.mode, cfg.token, cfg.solver, cfg.build.formulation) == (2, "T", "highs", "thesis")
    assert cfg.thresholds.idle_seconds == 30 and cfg.thresholds.min_requests == 2 and cfg.build.window == 60
    assert cfg.execution.max_deletions == 1 and cfg.execution.dry_run and cfg.execution.wait_ready
    assert args.every == 5 and cfg.keep_files == str(tmp_path)


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "(default: ipopt)" in out and "(default: placement)" in out and "--max-deletions" in out


@pytest.mark.parametrize("argv", [
    ["--mode", "3", "--frontend", "u"],
    ["--mode", "1"],
    ["--mode", "1", "--frontend", "u", "--window", "-5"],
    ["--mode", "1", "--frontend", "u", "--max-deletions", "x"],
    ["--mode", "1", "--frontend", "u", "--every", "nan"],
])
def test_bad_arguments_exit_2_without_traceback(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "error:" in err


def test_token_file_and_env(tmp_path, monkeypatch):
    monkeypatch.setenv("BACKEND_TOKEN", "from-env")
    args = build_parser().parse_args(["--mode", "1", "--frontend", "u"])
    assert config_from_args(args).token == "from-env"
    (tmp_path / "tok").write_text("from-file\n")
    args = build_parser().parse_args(["--mode", "1", "--frontend", "u", "--token-file", str(tmp_path / "tok")])
    assert config_from_args(args).token == "from-file"


def test_missing_token_file_is_a_usage_error(tmp_path, capsys):
    code = main(["--mode", "1", "--frontend", "u", "--token-file", str(tmp_path / "nope")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "cannot read" in err


def test_unreachable_frontend_is_one_line_and_exit_3(tmp_path, capsys):
    url = f"http://127.0.0.1:{free_port()}"
    code = main(["--mode", "1", "--frontend", url, "--lock", str(tmp_path / "l"),
                 "--cluster-state", str(tmp_path / "c.db"), "--report", str(tmp_path / "r.json")])
    err = capsys.readouterr().err
    assert code == 3
    assert err.count("\n") == 1 and "unreachable" in err and "Traceback" not in err
    assert not (tmp_path / "c.db").exists()           # the cluster was never touched


def test_second_run_while_the_lock_is_held_says_so_and_exits_0(tmp_path, capsys):
    lock = RunLock(tmp_path / "backend.lock")
    assert lock.acquire()
    try:
        code = main(["--mode", "1", "--frontend", "http://127.0.0.1:1", "--lock", str(tmp_path / "backend.lock")])
    finally:
        lock.release()
    captured = capsys.readouterr()
    assert code == 0 and "another run holds" in captured.err and captured.out == ""


def test_bad_alto_file_is_a_usage_error(tmp_path, capsys):
    bad = tmp_path / "alto.json"
    bad.write_text('{"cost-map": {"z": {"a": -1}}}')
    code = main(["--mode", "1", "--frontend", "http://127.0.0.1:1", "--lock", str(tmp_path / "l"),
                 "--alto", str(bad)])
    err = capsys.readouterr().err
    assert code == 2 and "cost-map.z.a" in err and err.count("\n") == 1


def test_native_solver_output_never_reaches_the_report_stream():
    import subprocess
    import sys
    code = ("import os\nfrom solver.native import redirected\nprint('{}', flush=True)\n"
            "with redirected(2, 1):\n    os.write(1, b'native banner\\n')\n    print('python print')\n"
            "print('{\"report\": 1}')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["{}", '{"report": 1}']
    assert "native banner" in done.stderr and "python print" in done.stderr


# --- issue 11, point 7.2: every bad option value and input file: exit 2, one line, no traceback -----

_NUMBERS = {
    "--time-limit": ["nan", "inf", "-5", "0", "1e9"],
    "--idle-seconds": ["nan", "inf", "-1"],
    "--min-requests": ["-1", "1e3", "99999999999999999999999"],
    "--window": ["nan", "-inf", "0"],
    "--max-deletions": ["-1", "nan"],
    "--ready-timeout": ["nan", "1e300"],
    "--concurrency": ["0", "100000000"],
    "--every": ["nan", "inf", "-5"],
    "--default-rtt": ["nan", "-0.1", "1e300"],
    "--min-exec-samples": ["0", "x"],
    "--http-timeout": ["nan", "-5", "1e300"],
}


@pytest.mark.parametrize("option, value", [(o, v) for o, values in _NUMBERS.items() for v in values]
                         + [("--cluster-setting", "x=NaN"), ("--cluster-setting", "x=-Infinity")])
def test_bad_numbers_exit_2_in_one_line(option, value, tmp_path):
    done = _run_backend(tmp_path, f"{option}={value}")
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and option in lines[0], done.stderr


@pytest.mark.parametrize("option", ["--alto", "--catalog", "--cluster-config", "--token-file", "--cluster-state",
                                    "--models-dir"])
@pytest.mark.parametrize("kind", ["ls", "binary", "deep", "folder"])
def test_bad_input_files_exit_2_in_one_line(option, kind, tmp_path):
    files = {"ls": "/bin/ls", "binary": tmp_path / "binary", "deep": tmp_path / "deep.json", "folder": tmp_path}
    (tmp_path / "binary").write_bytes(b"\xff\xfe\x00\x01" * 64)
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    if option == "--token-file" and kind == "deep":
        pytest.skip("any text is a token")
    if option in ("--models-dir", "--cluster-state") and kind == "folder":
        pytest.skip("a folder is what --models-dir wants; a folder as state is the adapter's failure (exit 1)")
    done = _run_backend(tmp_path, option, str(files[kind]))
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and option in lines[0], done.stderr


def _run_backend(tmp_path: Path, *extra: str):
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    base = ["--mode", "1", "--frontend", "http://127.0.0.1:1", "--lock", str(tmp_path / "lock"),
            "--cluster-state", str(tmp_path / "c.db"), "--report", str(tmp_path / "r.json")]
    return subprocess.run([sys.executable, "-m", "backend", *base, *extra], cwd=repo, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("value", ["1", "0", "-0.5", "nan", "abc"])
def test_max_utilisation_must_be_strictly_between_0_and_1(value, capsys):
    from backend.__main__ import build_parser

    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["--mode", "1", "--frontend", "http://127.0.0.1:9", "--formulation", "latency",
                                   "--max-utilisation", value])
    assert info.value.code == 2
    assert "--max-utilisation" in capsys.readouterr().err


def test_latency_formulation_and_ceiling_reach_the_build_settings():
    from backend.__main__ import build_parser, config_from_args

    args = build_parser().parse_args(["--mode", "1", "--frontend", "http://127.0.0.1:9", "--formulation", "latency",
                                      "--max-utilisation", "0.7", "--token", "t" * 20])
    cfg = config_from_args(args)
    assert (cfg.build.formulation, cfg.build.max_utilisation) == ("latency", 0.7)
