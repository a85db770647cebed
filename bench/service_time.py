"""A model's service time on a CPU-limited node: back to back (what `python -m cluster profile`
writes into the catalog) beside requests that arrive at an idle server (issue 10's prediction).

    sudo .venv/bin/python -m bench.service_time [--model digits_cnn] [--quota 0.25] [--samples 20] [--gap 0.25]

One real model server in a cgroup of its own (as the profile starts it), warmed at 1 core, then at
`--quota` cores: `--samples` predicts one after another on a kept-alive connection, then
`--samples` predicts each after `--gap` seconds of idleness (the profile's own `back_to_back` and
`after_idle`, which write `exec_time` and `exec_time_idle`; here with more samples and any quota).
Prints both medians and their ratio.
Why it matters: CPU bandwidth control lets a group that has been idle start a request faster than
one that is saturated, so a queueing model with one service time per node cannot be right at both
ends of the load range. Needs root (cgroups) and the built models (`make setup`).
"""
from __future__ import annotations

import argparse
import http.client
import statistics
import sys
from pathlib import Path

from cluster.limits import CgroupLimits, NodeLimits, detect_layout
from cluster.profile import IDLE_GAP, REPO_ROOT, WARMUP, _example, _predict, after_idle, back_to_back, profiled_server
from cluster.port import ClusterError


def measure(model: str, quota: float, samples: int, gap: float, models_dir: Path) -> tuple[float, float]:
    """Return (back-to-back median, after-idle median) seconds of one predict at `quota` cores."""
    layout, why = detect_layout()
    if layout is None:
        raise ClusterError(f"no writable cgroup cpu controller here ({why})")
    limits = CgroupLimits(layout, "bench-service-time", reason=why)
    group = f"svc-{model.replace('_', '-')}"
    log_path = REPO_ROOT / "build" / "bench-service-time.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with profiled_server(model, models_dir / model, limits=limits, group=group, log_path=log_path) as (_, port):
        body, conn = _example(model), http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            for _ in range(WARMUP):
                _predict(conn, model, body)
            limits.apply(group, NodeLimits(cpu=quota, memory=None))
            _predict(conn, model, body)
            busy = back_to_back(conn, model, body, least=samples, most=samples)
            idle = after_idle(conn, model, body, count=samples, gap=gap)
        finally:
            conn.close()
    return statistics.median(busy), statistics.median(idle)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.service_time", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="digits_cnn")
    parser.add_argument("--quota", type=float, default=0.25, help="cores (default 0.25, a Nano)")
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--gap", type=float, default=IDLE_GAP, help="seconds idle before each idle-start predict")
    parser.add_argument("--models-dir", default=str(REPO_ROOT / "build" / "models"))
    args = parser.parse_args(argv)
    if not 0 < args.quota <= 64 or args.samples < 1 or args.gap < 0:
        print("bench.service_time: --quota must be in (0, 64], --samples >= 1, --gap >= 0", file=sys.stderr)
        return 2
    try:
        busy, idle = measure(args.model, args.quota, args.samples, args.gap, Path(args.models_dir))
    except ClusterError as exc:
        print(f"bench.service_time: {exc}", file=sys.stderr)
        return 1
    print(f"{args.model} at {args.quota:g} cores: back to back {busy * 1000:.1f} ms, after {args.gap:g} s idle "
          f"{idle * 1000:.1f} ms (median of {args.samples}); idle / back to back {idle / busy:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
