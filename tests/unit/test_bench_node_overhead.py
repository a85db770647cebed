"""bench.node_overhead's argument checks (the measurement itself needs root and cgroups:
run by hand, figures in bench/RESULTS.md)."""
from __future__ import annotations

import pytest

from bench import node_overhead


@pytest.mark.parametrize("argv", [["--quota", "0"], ["--util", "1"], ["--util", "0"], ["--requests", "5"]])
def test_bad_arguments_exit_2_in_one_line(argv, capsys):
    assert node_overhead.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--quota must be in" in err[0]

