"""`python -m backend.loadgen`: send inference requests from several client zones through the proxy.

Why: the back-end provisions from what clients asked for, per zone; this produces that demand
with a chosen model popularity so the provisioning can be watched adapting (`make run`, then this,
then `.run/backend.log`). Requests go to `POST /services/<model>/v1/models/<model>:predict` with
`X-Client-Zone` and `X-Client-Latency` (the seconds this zone's previous request took, plus an
optional per-zone delay emulating its distance). The load is bounded: `rate * duration` requests
at most, at most `--concurrency` in flight (a slow system lowers the rate, it never piles up).

    python -m backend.loadgen --frontend http://127.0.0.1:5000 --zones zone-1,zone-2 \\
        --popularity half_plus_two=0.7,digits_logreg=0.3 --rate 5 --duration 60
"""
from __future__ import annotations

import argparse
import json
import random
import signal
import statistics
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import requests

__all__ = ["main", "LoadSpec", "run_load", "parse_weights", "example_body"]

# Inputs the shipped models accept; any other model gets the half_plus_* example.
_EXAMPLES = {
    "digits_logreg": {"instances": [[0.0] * 64]},
    "digits_forest": {"instances": [[0.0] * 64]},
    "digits_cnn": {"instances": [[0.0] * 64]},
}
_DEFAULT_EXAMPLE = {"instances": [1.0, 2.0, 5.0]}
MAX_REQUESTS = 1_000_000


def example_body(model: str) -> dict:
    """Return a request body `model` accepts (the shipped models' input shapes)."""
    return _EXAMPLES.get(model, _DEFAULT_EXAMPLE)


def parse_weights(text: str, *, what: str) -> dict[str, float]:
    """Parse 'a=0.5,b=0.3' into {'a': 0.5, 'b': 0.3}; raise ValueError with a clear message."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{what}: expected NAME=NUMBER, got {part!r}")
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"{what}: {key.strip()!r} needs a number, got {value!r}") from None
        if not number >= 0 or number == float("inf"):
            raise ValueError(f"{what}: {key.strip()!r} must be a finite number >= 0")
        out[key.strip()] = number
    if not out:
        raise ValueError(f"{what}: nothing given")
    return out


@dataclass(frozen=True)
class LoadSpec:
    frontend: str
    zones: list[str]
    popularity: dict[str, float]             # model -> relative weight
    rate: float                              # requests per second (target)
    duration: float                          # seconds
    concurrency: int = 8
    zone_delay: dict[str, float] = field(default_factory=dict)   # seconds added to a zone's report
    timeout: float = 30.0
    seed: int | None = None
    bodies: dict[str, dict] = field(default_factory=dict)


@dataclass
class LoadResult:
    sent: int = 0
    statuses: Counter = field(default_factory=Counter)
    by_model: Counter = field(default_factory=Counter)
    by_zone: Counter = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        lat = sorted(self.latencies)
        pct = (lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))] * 1000, 3)) if lat else (lambda q: None)
        return {"sent": self.sent, "seconds": round(self.seconds, 3),
                "rate": round(self.sent / self.seconds, 3) if self.seconds else None,
                "statuses": {str(k): v for k, v in sorted(self.statuses.items(), key=lambda kv: str(kv[0]))},
                "by_model": dict(self.by_model), "by_zone": dict(self.by_zone),
                "latency_ms": {"mean": round(statistics.fmean(lat) * 1000, 3) if lat else None,
                               "p50": pct(0.5), "p95": pct(0.95)},
                "errors": dict(self.errors)}


def run_load(spec: LoadSpec, *, stop: threading.Event | None = None,
             progress=None) -> LoadResult:
    """Send the load described by `spec`; return what happened."""
    stop = stop or threading.Event()
    rng = random.Random(spec.seed)
    models = [m for m, w in spec.popularity.items() if w > 0]
    weights = [spec.popularity[m] for m in models]
    total = min(MAX_REQUESTS, int(round(spec.rate * spec.duration)))
    result = LoadResult()
    lock = threading.Lock()
    last_seen: dict[str, float] = {}
    slots = threading.Semaphore(spec.concurrency)
    session = requests.Session()
    session.trust_env = False
    adapter = requests.adapters.HTTPAdapter(pool_maxsize=spec.concurrency)
    session.mount("http://", adapter)
    base = spec.frontend.rstrip("/")

    def one(model: str, zone: str) -> None:
        try:
            send(model, zone)
        finally:
            slots.release()

    def send(model: str, zone: str) -> None:
        headers = {"X-Client-Zone": zone, "Content-Type": "application/json"}
        with lock:
            previous = last_seen.get(zone)
        if previous is not None:
            headers["X-Client-Latency"] = f"{previous + spec.zone_delay.get(zone, 0.0):.6f}"
        body = spec.bodies.get(model) or example_body(model)
        started = time.perf_counter()
        try:
            answer = session.post(f"{base}/services/{model}/v1/models/{model}:predict", json=body,
                                  headers=headers, timeout=spec.timeout)
            status: int | str = answer.status_code
            answer.content
        except requests.RequestException as exc:
            status = "error"
            with lock:
                result.errors[type(exc).__name__] += 1
        elapsed = time.perf_counter() - started
        with lock:
            result.statuses[status] += 1
            if status == 200:
                result.latencies.append(elapsed)
                last_seen[zone] = elapsed

    began = time.perf_counter()
    next_report = began + 5.0
    with ThreadPoolExecutor(max_workers=spec.concurrency, thread_name_prefix="loadgen") as pool:
        for i in range(total):
            due = began + i / spec.rate
            while not stop.is_set():
                delay = due - time.perf_counter()
                if delay <= 0:
                    break
                stop.wait(min(delay, 0.5))
            if stop.is_set():
                break
            while not slots.acquire(timeout=0.5):
                if stop.is_set():
                    break
            if stop.is_set():
                break
            model = rng.choices(models, weights)[0]
            zone = rng.choice(spec.zones)
            with lock:
                result.sent += 1
                result.by_model[model] += 1
                result.by_zone[zone] += 1
            pool.submit(one, model, zone)
            if progress is not None and time.perf_counter() >= next_report:
                next_report += 5.0
                with lock:
                    progress(f"loadgen: {result.sent}/{total} sent, statuses {dict(result.statuses)}")
    session.close()
    result.seconds = time.perf_counter() - began
    return result


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # type: ignore[override]
        """One line on stderr (no usage dump), exit 2."""
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see --help)\n")


def _number(kind, low: float, high: float, *, low_ok: bool = False):
    """An argparse type: a finite `kind` in (low, high] (or [low, high] with low_ok)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {'whole ' if kind is int else ''}number, got {text!r}") from None
        if not ((low <= value if low_ok else low < value) and value <= high):     # NaN fails both
            raise argparse.ArgumentTypeError(f"must be {'>=' if low_ok else '>'} {low:g} and <= {high:g}, got {text!r}")
        return value
    return parse


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m backend.loadgen",
                                description="Send inference requests from several client zones through the front-end's proxy.")
    p.add_argument("--frontend", required=True, metavar="URL", help="front-end base URL")
    p.add_argument("--zones", required=True, help="comma-separated client zones, e.g. zone-1,zone-2")
    p.add_argument("--popularity", required=True, help="model weights, e.g. half_plus_two=0.7,digits_logreg=0.3")
    p.add_argument("--rate", type=_number(float, 0, MAX_REQUESTS), required=True, help="requests per second")
    p.add_argument("--duration", type=_number(float, 0, 30 * 86_400), required=True, help="seconds")
    p.add_argument("--concurrency", type=_number(int, 1, 1024, low_ok=True), default=8,
                   help="requests in flight at most (default 8, at most 1024)")
    p.add_argument("--zone-delay", default="", help="seconds added to each zone's reported latency, e.g. zone-2=0.05")
    p.add_argument("--body", action="append", default=[], metavar="MODEL=FILE",
                   help="request body for MODEL from a JSON file (repeatable)")
    p.add_argument("--timeout", type=_number(float, 0, 86_400), default=30.0,
                   help="seconds per request (default 30, at most 86400)")
    p.add_argument("--seed", type=int, help="random seed for a repeatable sequence")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the load generator; print a JSON summary on stdout."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:          # bad arguments (one line already printed, 2) or --help (0)
        return exc.code if isinstance(exc.code, int) else 2
    try:
        zones = [z.strip() for z in args.zones.split(",") if z.strip()]
        if not zones:
            raise ValueError("--zones: nothing given")
        popularity = parse_weights(args.popularity, what="--popularity")
        if sum(popularity.values()) <= 0:
            raise ValueError("--popularity: at least one weight must be positive")
        delays = parse_weights(args.zone_delay, what="--zone-delay") if args.zone_delay.strip() else {}
        if not (args.rate > 0 and args.duration > 0 and args.concurrency >= 1 and args.timeout > 0):
            raise ValueError("--rate, --duration and --timeout must be > 0, --concurrency >= 1")
        if args.rate * args.duration > MAX_REQUESTS:
            raise ValueError(f"--rate x --duration is more than {MAX_REQUESTS} requests")
        bodies = {}
        for item in args.body:
            model, sep, path = item.partition("=")
            if not sep:
                raise ValueError(f"--body: expected MODEL=FILE, got {item!r}")
            try:
                bodies[model] = json.loads(Path(path).read_text(encoding="utf-8"))
            except OSError as exc:
                raise ValueError(f"--body {model}: {path}: cannot read: {exc.strerror or exc}") from None
            except UnicodeDecodeError:
                raise ValueError(f"--body {model}: {path}: not UTF-8 text (a binary file?)") from None
            except RecursionError:
                raise ValueError(f"--body {model}: {path}: not valid JSON (nested too deeply)") from None
            except ValueError as exc:
                raise ValueError(f"--body {model}: {path}: not valid JSON ({' '.join(str(exc).split())})") from None
    except ValueError as exc:
        print(f"loadgen: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    spec = LoadSpec(frontend=args.frontend, zones=zones, popularity=popularity, rate=args.rate,
                    duration=args.duration, concurrency=args.concurrency, zone_delay=delays,
                    timeout=args.timeout, seed=args.seed, bodies=bodies)
    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        result = run_load(spec, stop=stop, progress=lambda line: print(line, file=sys.stderr, flush=True))
    finally:
        signal.signal(signal.SIGINT, previous)
    print(json.dumps(result.to_dict(), indent=2))
    if result.sent and not result.statuses.get(200):
        print("loadgen: no request succeeded (is the front-end running, are the models known?)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
