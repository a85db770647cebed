"""matplotlib for the plots of the experiments, when it is installed.

Why optional: it is a test/experiment dependency (requirements-dev.txt), not one of the running
system's; a run's results files are written first, and without matplotlib only the PNGs are skipped.
"""
from __future__ import annotations

import sys
from typing import Any

__all__ = ["pyplot"]


def pyplot(what: str) -> Any | None:
    """Return matplotlib.pyplot (file output only), or None after saying on stderr why `what` is skipped."""
    try:
        import matplotlib
    except ImportError:
        print(f"note: matplotlib is not installed, so {what} are not drawn "
              "(`pip install -r requirements-dev.txt` or `make experiment` installs it)", file=sys.stderr)
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt
