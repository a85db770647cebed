"""Plots are optional: without matplotlib the results are kept and the reason is said once."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_without_matplotlib_the_plots_are_skipped_with_a_note():
    # a fresh interpreter where importing matplotlib fails, as on a `make run`-only install
    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "from common.plotting import pyplot\n"
            "assert pyplot('the test plots') is None\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "matplotlib is not installed, so the test plots are not drawn" in done.stderr
    assert "requirements-dev.txt" in done.stderr


def test_with_matplotlib_it_draws_to_files(tmp_path):
    from common.plotting import pyplot

    plt = pyplot("the test plots")
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    fig.savefig(tmp_path / "p.png")
    plt.close(fig)
    assert (tmp_path / "p.png").stat().st_size > 0
