"""The arrival trace of a scenario: every request the clients will send, fixed in advance by the seed.

Per phase (in order; a phase starts when the previous one ends):

- inter-arrival times are Gamma distributed with mean 1/rate and coefficient of variation
  `burstiness` (shape k = 1/CV^2, scale = CV^2/rate): CV 1 is a Poisson process, CV > 1 bursts,
  CV 0 constant spacing 1/rate. The first arrival comes one inter-arrival time after the phase
  starts; arrivals at or past the phase's end are dropped, so a phase holds rate x duration
  arrivals in expectation. With CV 0 the arrivals are evenly spaced, the first half a gap after
  the phase starts: exactly round(rate x duration) of them;
- each arrival's zone is drawn from the phase's zone weights, its model from the phase's
  popularity (already resolved by the loader: Zipf over the catalog's models in catalog order,
  weight proportional to 1/rank^s, or the explicit weights).

Randomness: phase i draws from `numpy.random.Generator(PCG64([seed, i]))`, first all its
inter-arrival times, then the zones, then the models. The same scenario and seed give the same
trace, on any machine, and changing one phase leaves the other phases' arrivals unchanged.
Request ids are `tb-<seed>-<index>` (index over the whole trace, zero padded), valid
`X-Request-Id` values.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from .scenario import Phase, Scenario

__all__ = ["Arrival", "generate_trace", "phase_arrival_times", "counts", "summarize", "write_trace",
           "read_trace"]


@dataclass(frozen=True)
class Arrival:
    offset: float        # seconds from the start of the run
    phase: int           # phase index
    zone: str
    model: str
    request_id: str
    index: int           # position in the trace (0-based)


def _rng(seed: int, phase: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64([seed, phase]))


def phase_arrival_times(rng: np.random.Generator, rate: float, burstiness: float, duration: float) -> np.ndarray:
    """Arrival times in [0, duration) of a Gamma renewal process with mean gap 1/rate and CV burstiness."""
    if rate <= 0 or duration <= 0:
        return np.empty(0)
    if burstiness == 0:
        count = int(np.floor(rate * duration + 0.5))
        times = (np.arange(count, dtype=float) + 0.5) / rate
        return times[times < duration]
    shape = 1.0 / burstiness ** 2
    scale = burstiness ** 2 / rate
    chunks: list[np.ndarray] = []
    now = 0.0
    chunk = max(16, int(rate * duration * 1.1) + 16)
    while True:
        gaps = rng.gamma(shape, scale, size=chunk)
        times = now + np.cumsum(gaps)
        inside = times[times < duration]
        chunks.append(inside)
        if len(inside) < len(times):
            break
        now = float(times[-1])
        chunk = max(16, chunk // 2)
    return np.concatenate(chunks)


def generate_trace(scenario: Scenario) -> list[Arrival]:
    """Every arrival of the scenario, in time order (deterministic in the scenario and its seed)."""
    arrivals: list[Arrival] = []
    width = max(6, len(str(int(scenario.expected_requests * 2) + 100)))
    for phase in scenario.phases:
        for offset, zone, model in _phase(scenario.seed, phase):
            index = len(arrivals)
            arrivals.append(Arrival(offset=offset, phase=phase.index, zone=zone, model=model,
                                    request_id=f"tb-{scenario.seed}-{index:0{width}d}", index=index))
    return arrivals


def _phase(seed: int, phase: Phase) -> list[tuple[float, str, str]]:
    rng = _rng(seed, phase.index)
    times = phase_arrival_times(rng, phase.rate, phase.burstiness, phase.duration)
    n = len(times)
    zone_names = list(phase.zones)
    zone_p = np.array([phase.zones[z] for z in zone_names])
    models = list(phase.popularity)
    model_p = np.array([phase.popularity[m] for m in models])
    zones = rng.choice(len(zone_names), size=n, p=zone_p / zone_p.sum())
    picks = rng.choice(len(models), size=n, p=model_p / model_p.sum())
    return [(phase.start + float(t), zone_names[z], models[m]) for t, z, m in zip(times, zones, picks)]


def counts(trace: Iterable[Arrival]) -> Counter:
    """Counter of (phase, zone, model) -> number of arrivals."""
    return Counter((a.phase, a.zone, a.model) for a in trace)


def summarize(trace: Iterable[Arrival]) -> dict:
    """JSON-able counts: {"total": n, "phases": {phase: {"total", "zones": {zone: {model: n}}}}}."""
    out: dict = {"total": 0, "phases": {}}
    for (phase, zone, model), n in sorted(counts(trace).items()):
        entry = out["phases"].setdefault(str(phase), {"total": 0, "zones": {}})
        entry["zones"].setdefault(zone, {})[model] = n
        entry["total"] += n
        out["total"] += n
    return out


def write_trace(trace: Iterable[Arrival], path: str | Path) -> None:
    """One JSON object per arrival (offset, phase, zone, model, request_id, index)."""
    with open(path, "w") as fh:
        for arrival in trace:
            fh.write(json.dumps(asdict(arrival)) + "\n")


def read_trace(path: str | Path) -> list[Arrival]:
    with open(path) as fh:
        return [Arrival(**json.loads(line)) for line in fh if line.strip()]
