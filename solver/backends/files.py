"""Where rendered AMPL files live during a solve: a temporary folder deleted afterwards (thesis
5.3.1: no earlier run can contaminate a later one), or the caller's `--keep-files DIR`."""
from __future__ import annotations

import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from solver.problem import Problem
from solver.render import write_files


@contextmanager
def rendered_files(problem: Problem, *, keep_files: str | None, time_limit: float | None = None,
                   prefix: str = "solver-") -> Iterator[dict[str, Path]]:
    """Yield {kind: path} of the problem's rendered files; delete them after unless kept."""
    if keep_files:
        yield write_files(problem, keep_files, time_limit=time_limit)
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as folder:
        yield write_files(problem, folder, time_limit=time_limit)
