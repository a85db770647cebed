"""The one JSON document a run leaves behind (stdout or --report FILE).

Fields: when and how it ran, a summary of its inputs, the solver's outcome (status, objective,
bound, seconds), the predicted mean latency of its plan (`latency` formulation), the plan, each action with its time, the total provisioning latency (the
quantity of thesis Tables 6.4 and 6.5: from the start of the provisioning step to its end, the
solver excluded), whether the dispatch plan reached the front-end, and every error.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["RunReport", "write_report", "EXIT_OK", "EXIT_ERRORS", "EXIT_USAGE", "EXIT_UNREACHABLE"]

EXIT_OK = 0             # the run did what it selected (or had nothing to do, or another run held the lock)
EXIT_ERRORS = 1         # the run finished with errors: a failed solve or failed actions
EXIT_USAGE = 2          # bad command line or configuration
EXIT_UNREACHABLE = 3    # the front-end or the cluster could not be read: nothing was changed


@dataclass
class RunReport:
    """Everything one run tells its operator; `to_dict()` is the JSON document."""

    mode: int
    started: float
    frontend: str
    dry_run: bool = False
    finished: float | None = None
    inputs: dict[str, Any] = field(default_factory=dict)
    solver: dict[str, Any] = field(default_factory=dict)
    prediction: dict[str, Any] = field(default_factory=dict)   # `latency`: backend.pipeline._prediction
    plan: dict[str, Any] = field(default_factory=dict)
    actions: list[dict[str, Any]] = field(default_factory=list)
    provisioning_seconds: float | None = None
    plan_pushed: bool = False
    timings: dict[str, float] = field(default_factory=dict)   # seconds per pipeline step
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    exit_code: int = EXIT_OK

    def to_dict(self) -> dict[str, Any]:
        counts = {"provisioned": 0, "deleted": 0, "failed": 0, "skipped": 0}
        for a in self.actions:
            if a.get("skipped"):
                counts["skipped"] += 1
            elif not a.get("ok"):
                counts["failed"] += 1
            elif a["kind"] == "provision":
                counts["provisioned"] += 1
            else:
                counts["deleted"] += 1
        latency = self.provisioning_seconds
        return {
            "started": self.started,
            "finished": self.finished,
            "mode": self.mode,
            "dry_run": self.dry_run,
            "frontend": self.frontend,
            "inputs": self.inputs,
            "solver": self.solver,
            "prediction": self.prediction or None,
            "plan": self.plan,
            "actions": self.actions,
            "summary": counts,
            "provisioning_latency_ms": None if latency is None else round(latency * 1000, 3),
            "plan_pushed": self.plan_pushed,
            "timings_ms": {k: round(v * 1000, 3) for k, v in self.timings.items()},
            "warnings": self.warnings,
            "errors": self.errors,
            "exit_code": self.exit_code,
        }

    def to_json(self, *, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False, allow_nan=False, default=str)


def write_report(text: str, path: str | Path) -> None:
    """Write `text` to `path` atomically (a reader never sees half a report)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text if text.endswith("\n") else text + "\n")
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
