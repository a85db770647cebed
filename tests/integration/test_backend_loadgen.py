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
