"""The load generator against the real front-end: bounded, zoned, with the client hints recorded."""
from __future__ import annotations

import json

import pytest
import requests

from backend.loadgen import main, parse_weights
from test_backend_support import AUTH, HP2, LOGREG, make_system  # noqa: F401


def test_loadgen_sends_the_requested_mix_with_zone_and_latency_hints(make_system, capsys):
    system = make_system()
    system.deploy([(HP2, "node-a"), (LOGREG, "node-b")])
    code = main(["--frontend", system.url, "--zones", "z-a,z-b", "--popularity", f"{HP2}=0.7,{LOGREG}=0.3",
                 "--rate", "40", "--duration", "1", "--concurrency", "4", "--seed", "7",
                 "--zone-delay", "z-b=0.05"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0
    assert summary["sent"] == 40 and summary["statuses"] == {"200": 40}
    assert set(summary["by_zone"]) == {"z-a", "z-b"} and set(summary["by_model"]) == {HP2, LOGREG}
    rows = requests.get(f"{system.url}/stats/requests", headers=AUTH, timeout=10).json()["requests"]
    assert len(rows) == 40 and {r["zone"] for r in rows} == {"z-a", "z-b"}
    reported = [r for r in rows if r["latency"] is not None]
    # a zone reports once one of its requests has come back (up to 4 are in flight before that)
    assert len(reported) >= 40 - 2 * 4 and {r["zone"] for r in reported} == {"z-a", "z-b"}
    assert min(r["latency"] for r in reported if r["zone"] == "z-b") >= 0.05


@pytest.mark.parametrize("argv, message", [
    (["--zones", "", "--popularity", "a=1"], "--zones"),
    (["--zones", "z", "--popularity", "a"], "NAME=NUMBER"),
    (["--zones", "z", "--popularity", "a=0"], "positive"),
    (["--zones", "z", "--popularity", "a=1", "--rate", "0"], "--rate"),
])
def test_loadgen_rejects_bad_arguments_in_one_line(argv, message, capsys):
    base = ["--frontend", "http://127.0.0.1:1", "--rate", "1", "--duration", "1"]
    assert main(base + argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_parse_weights():
    assert parse_weights("a=1, b=0.5", what="x") == {"a": 1.0, "b": 0.5}
    with pytest.raises(ValueError, match="x: 'a' needs a number"):
        parse_weights("a=z", what="x")


@pytest.mark.parametrize("option, value", [
    ("--timeout", "-5"), ("--timeout", "nan"), ("--timeout", "inf"), ("--timeout", "0"), ("--timeout", "1e9"),
    ("--rate", "nan"), ("--rate", "inf"), ("--rate", "-1"),
    ("--duration", "nan"), ("--duration", "-inf"), ("--duration", "1e300"),
    ("--concurrency", "0"), ("--concurrency", "-3"), ("--concurrency", "100000000"),
    ("--zone-delay", "z=nan"), ("--zone-delay", "z=inf"), ("--zone-delay", "z=-1"),
    ("--popularity", "a=nan"), ("--popularity", "a=inf"), ("--seed", "x"),
    ("--body", "a=/bin/ls"), ("--body", "a={binary}"), ("--body", "a={deep}"), ("--body", "a={folder}"),
])
def test_loadgen_bad_values_exit_2_in_one_line_as_a_process(option, value, tmp_path):
    """Run as an operator would (a subprocess): exit 2, one line on stderr, no traceback."""
    import subprocess
    import sys
    from pathlib import Path

    (tmp_path / "binary").write_bytes(b"\xff\xfe\x00\x01" * 64)
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    value = value.format(binary=tmp_path / "binary", deep=tmp_path / "deep.json", folder=tmp_path)
    argv = {"--frontend": "http://127.0.0.1:1", "--zones": "z", "--popularity": "a=1", "--rate": "1",
            "--duration": "1", option: value}
    args = [part for key, val in argv.items() for part in (key, val)]
    done = subprocess.run([sys.executable, "-m", "backend.loadgen", *args], capture_output=True, text=True,
                          timeout=60, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and option in lines[0], done.stderr
