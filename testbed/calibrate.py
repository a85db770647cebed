"""Nodes as fast as on the reference host, whatever this host's speed: the testbed's `--cpu-scale`.

Why: a scenario's load levels and its SLO are written against the service times of the shipped
catalog (config/models.yaml, measured on the reference host: digits_cnn ~70 ms on a Nano-class
quarter core, so four Nanos serve ~57 of them a second). A node's `cpu_quota` is in cores of *this*
host, so on a host k times faster the same quarter core serves k times more: a phase written as 80%
of the edge's capacity runs at 80/k %, the overload phase is no overload, and the experiment no
longer measures what the scenario says. The runner therefore scales every node's quota by `scale` =
this host's CPU time per request of the catalog's heaviest model over the reference host's
(`measured.cpu_time`), and measures the catalog again at the scaled quotas (cluster.profile) for the
system to plan with. CPU time is only a first guess: a small quota does not give exactly its share
(with the whole server under it, 80 ms at 0.112 core where the reference took 70 at 0.25 for the
same CPU; with the quota on inference alone, 60-70 ms at 0.114 in four profiles), so each node
class's scale is then corrected by how far that model's measured service time there is from the
reference's (`corrected`) and the catalog measured again, until every class is within TOLERANCE or
CALIBRATION_ROUNDS profiles were made. A profile is noisy (the same quota measured 1.027 and then
1.153 of the reference in one calibration), so after the last round each class runs at the quota
of the round that measured it closest to the reference, with that round's figures (`best_rounds`,
`merge_rounds`): not blindly at the last correction, which nothing measured. Where one quota was
measured twice the closer figure is taken: that drops an outlier (a busy moment only ever slows a
profile), at the price of a reported ratio that leans towards 1 (every round's is in `rounds`). A
slower host is left as it is (scale <= 1: a node is never given more of the host than its quota
says, so the nodes still fit beside the front-end and the clients). Where no figure of this host
exists (no `make setup` profile), scale is 1.
"""
from __future__ import annotations

import io
from pathlib import Path

import yaml

__all__ = ["CALIBRATION_ROUNDS", "REFERENCE_CATALOG", "TOLERANCE", "auto_scale", "best_rounds", "corrected",
           "merge_rounds", "parse_scale", "profile_at"]

REFERENCE_CATALOG = Path(__file__).resolve().parent.parent / "config" / "models.yaml"
TOLERANCE = 0.05        # a class whose service time is this close to the reference's is not corrected
# Profiles at most: a correction can overshoot (the service time is not linear in a small quota) and
# one measurement can be an outlier (a 1.7x figure for a half core once sent the cloud to 0.78 core
# when a single correction was all there was), so the next measurement corrects it again.
CALIBRATION_ROUNDS = 3


def _entries(path: Path) -> dict[str, dict]:
    doc = yaml.safe_load(Path(path).read_text()) or {}
    return {e["name"]: e for e in doc.get("models") or [] if isinstance(e, dict) and "name" in e}


def _cpu_times(path: Path) -> dict[str, float]:
    """model -> its `measured.cpu_time` (seconds of CPU per request on one core) in the catalog."""
    out = {}
    for name, entry in _entries(path).items():
        measured = entry.get("measured")
        value = measured.get("cpu_time") if isinstance(measured, dict) else None
        if isinstance(value, (int, float)) and value > 0:
            out[name] = float(value)
    return out


def corrected(scales: dict[str, float], measured: Path,
              reference: Path = REFERENCE_CATALOG) -> tuple[dict[str, float], dict[str, float]]:
    """({class: scale}, {class: measured / reference service time}) after one correction: each
    class's quota is multiplied by how much slower than the reference the heaviest model (by the
    reference's CPU time) ran there back to back in `measured` (a catalog profiled at `scales`),
    never above 1. A class without both figures keeps its scale."""
    here, there = _entries(measured), _entries(reference)
    weight = _cpu_times(reference)
    new, ratios = dict(scales), {}
    for cls, scale in scales.items():
        timed = [m for m in weight if m in here
                 and (here[m].get("exec_time") or {}).get(cls) and (there[m].get("exec_time") or {}).get(cls)]
        if not timed:
            continue
        model = max(timed, key=weight.get)
        ratios[cls] = here[model]["exec_time"][cls] / there[model]["exec_time"][cls]
        new[cls] = min(1.0, scale * ratios[cls])
    return new, ratios


def best_rounds(ratios: list[dict[str, float]]) -> dict[str, int]:
    """class -> the index of the round whose measured service time was closest to the reference's
    (`ratios`: each round's {class: measured / reference}); a tie goes to the later round."""
    best: dict[str, int] = {}
    for i, row in enumerate(ratios):
        for cls, r in row.items():
            if cls not in best or abs(r - 1) <= abs(ratios[best[cls]][cls] - 1):
                best[cls] = i
    return best


_PER_CLASS = ("exec_time", "exec_time_idle", "exec_time_scv")


def merge_rounds(out: Path, sources: dict[str, Path]) -> None:
    """Rewrite the catalog `out` with each class's figures (service times, idle times, scv, the
    quota measured at) from the catalog `sources[class]` measured for it; the rest stays `out`'s."""
    doc = yaml.safe_load(Path(out).read_text()) or {}
    rounds = {cls: _entries(path) for cls, path in sources.items()}
    for entry in doc.get("models") or []:
        for cls, theirs in rounds.items():
            source = theirs.get(entry.get("name"), {})
            for key in _PER_CLASS:
                value = (source.get(key) or {}).get(cls)
                if value is not None:
                    entry.setdefault(key, {})[cls] = value
                elif isinstance(entry.get(key), dict):
                    entry[key].pop(cls, None)
            quota = ((source.get("measured") or {}).get("cpu_quota") or {}).get(cls)
            if quota is not None and isinstance((entry.get("measured") or {}).get("cpu_quota"), dict):
                entry["measured"]["cpu_quota"][cls] = quota
    Path(out).write_text(yaml.safe_dump(doc, sort_keys=False, width=10_000))


def auto_scale(catalog: Path, reference: Path = REFERENCE_CATALOG) -> tuple[float, str]:
    """(scale, why) for a system running with `catalog` (this host's measured one) against
    `reference`: the CPU time ratio of the model that costs the reference host most (the one whose
    ratio is least blurred by the server's fixed costs), capped at 1."""
    if Path(catalog).resolve() == Path(reference).resolve():
        return 1.0, f"no figures of this host ({catalog} is the reference catalog): nodes at their quotas"
    here, there = _cpu_times(catalog), _cpu_times(reference)
    common = [m for m in there if m in here]
    if not common:
        return 1.0, f"{catalog} and {reference} share no model with a measured cpu_time: nodes at their quotas"
    model = max(common, key=there.get)
    ratio = here[model] / there[model]
    why = (f"{model}: {here[model] * 1000:.2f} ms of CPU per request here ({catalog}), "
           f"{there[model] * 1000:.2f} ms on the reference host ({reference})")
    if ratio >= 1:
        return 1.0, f"{why}: this host is not faster, nodes at their quotas"
    return ratio, f"{why}: every node's quota x {ratio:.3f}"


def parse_scale(text: str) -> float | None:
    """`--cpu-scale`: "auto" -> None, else a number in (0, 1]; ValueError with a one-line reason."""
    if text.strip().lower() == "auto":
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"--cpu-scale: expected 'auto' or a number in (0, 1], got {text!r}") from None
    if not 0 < value <= 1:
        raise ValueError(f"--cpu-scale: expected 'auto' or a number in (0, 1], got {text!r}")
    return value


def profile_at(cluster_config: Path, catalog: Path, out: Path, models_dir: Path) -> str:
    """Measure `catalog`'s models at the node classes' quotas in `cluster_config` into `out` (a copy
    of `catalog`); return the profile's table. RuntimeError when nothing could be measured."""
    from cluster.port import ClusterError
    from cluster.profile import run_profile

    text = io.StringIO()
    try:
        status = run_profile(catalog_path=catalog, config_path=cluster_config, models_dir=models_dir,
                             models=None, dry_run=False, as_json=False, out=text, out_path=out)
    except (ClusterError, OSError) as exc:
        raise RuntimeError(f"cannot measure the models at the scaled quotas: {' '.join(str(exc).split())}") from None
    if status != 0 or not out.is_file():
        raise RuntimeError(f"cannot measure the models at the scaled quotas:\n{text.getvalue()}")
    return text.getvalue()
