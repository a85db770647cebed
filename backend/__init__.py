"""The back-end provisioner (thesis 4.3, 5.3; DESIGN section 6).

Run by cron (`python -m backend --mode 1|2 --frontend URL ...`): collect the front-end's request
statistics over HTTP, build a `solver.Problem`, solve it, select provision/delete actions for the
mode (pure, `backend.plan`), apply them through the Cluster port (`backend.apply`, the only module
that changes anything), push the dispatch plan back to the front-end and print a JSON report.
"""
from __future__ import annotations

__all__: list[str] = []
