"""`python -m cluster profile`: measure each model on this host and write the figures into the catalog.

Why: the catalog's `memory` and `exec_time` feed the solver; with real node limits (cluster.limits)
they must be what a model server really takes on a node of each class, not guesses. For every
catalog model with a built model file, one real model server is started in a cgroup of its own and
measured:

- memory: KB charged to its group after loading and a warm-up (what a node's memory limit
  counts; written as `memory`, rounded up to 1000 KB) and the resident size of its processes
  (master and worker, shared pages counted in each; noted as `rss`);
- execution time: the median wall time of a predict with the model's example body (backend.loadgen
  `example_body`) over a kept-alive loopback connection, at 1 core and at each node class's
  `cpu_quota` from the cluster description (the quota of the group is changed between rounds; the
  server is not restarted). The class figures are written as `exec_time.<class>`, the 1-core one as
  `measured.exec_time_1core`; the squared coefficient of variation of those back-to-back samples as
  `exec_time_scv.<class>`;
- execution time after idleness: where a class's back-to-back median is at least IDLE_MIN, the
  median of IDLE_SAMPLES predicts each sent after IDLE_GAP seconds with nothing running, written as
  `exec_time_idle.<class>`. CPU bandwidth control lets a group that was idle start with unused
  quota, so a request that finds its node idle is served faster than back to back (digits_cnn at
  0.25 core: ~51 vs ~70 ms); the queueing model needs both paces. Below IDLE_MIN the two are the
  same within noise, and skipping them keeps the profile fast.

Each model also gets a one-line `measured: {date, host, host_cores, cgroup, cpu_quota, ...}` note.
The catalog is edited line by line (comments and layout kept): a model's `memory:`, `exec_time:`,
`exec_time_idle:`, `exec_time_scv:` and `measured:` lines are replaced or added (the new ones right
after `exec_time:`); the result is validated before it replaces the file.
"""
from __future__ import annotations

import contextlib
import datetime
import http.client
import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import psutil
import yaml

from .catalog import ENTRY_FIELDS, CatalogError, ModelSpec, load_catalog
from .limits import CgroupLimits, NodeLimits
from .local_config import load_local_cluster
from .local_proc import last_log_line, probe_ready, python_command
from .port import ClusterError

__all__ = ["Measurement", "class_quotas", "profiled_server", "back_to_back", "after_idle", "profile_model",
           "update_catalog_text", "run_profile"]

REPO_ROOT = Path(__file__).resolve().parent.parent
WARMUP = 5
MIN_SAMPLES, MAX_SAMPLES, BUDGET = 7, 30, 1.5       # requests per quota; seconds per quota at most
MEMORY_HEADROOM = 0.10                              # added to the charged memory (see new_fields)
# Predicts after idleness per quota, seconds idle before each (a few 10 ms CFS periods), and the
# back-to-back median (s) from which on they are taken (~2 s per quota measured).
IDLE_SAMPLES, IDLE_GAP, IDLE_MIN = 7, 0.25, 0.005


@dataclass
class Measurement:
    model: str
    charged: int                    # KB charged to the server's cgroup
    rss: int                        # KB resident in its processes
    exec_time_1core: float          # s, median predict at 1 core
    exec_time: dict[str, float] = field(default_factory=dict)   # s per node class, back to back
    exec_time_idle: dict[str, float] = field(default_factory=dict)  # s per node class after IDLE_GAP idle
    exec_time_scv: dict[str, float] = field(default_factory=dict)   # of the back-to-back samples
    cpu_time: float = 0.0           # s of CPU one request takes (its server's processes, all threads)

    @property
    def host_busy(self) -> bool:
        """The 1-core wall time is well above the CPU time: other processes held the cores."""
        return self.exec_time_1core > 1.5 * self.cpu_time + 0.002


def class_quotas(config_path: Path) -> tuple[dict[str, float], list[str]]:
    """Return {node class: cpu_quota} from the cluster description, and notes on what was skipped."""
    notes: list[str] = []
    quotas: dict[str, set[float]] = {}
    for spec in load_local_cluster(config_path).nodes:
        if spec.cpu_quota is None:
            notes.append(f"node {spec.name} (class {spec.node_class}) has no cpu_quota")
            continue
        quotas.setdefault(spec.node_class, set()).add(spec.cpu_quota)
    result = {}
    for cls, values in quotas.items():
        if len(values) > 1:
            notes.append(f"class {cls}: nodes have different quotas {sorted(values)}, using {min(values)}")
        result[cls] = min(values)
    return result, notes


def _free_port(address: str) -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        return sock.getsockname()[1]


def _example(model: str) -> bytes:
    try:
        from backend.loadgen import example_body
        body = example_body(model)
    except ImportError:       # the back-end is not importable here: the half_plus_* example
        body = {"instances": [1.0, 2.0, 5.0]}
    return json.dumps(body).encode()


def _body_from_metadata(conn: http.client.HTTPConnection, model: str) -> bytes | None:
    """A zero-filled one-instance body built from the model's serving signature, or None."""
    conn.request("GET", f"/v1/models/{model}/metadata")
    response = conn.getresponse()
    payload = response.read()
    if response.status != 200:
        return None
    try:
        signature = json.loads(payload)["metadata"]["signature_def"]["signature_def"]["serving_default"]
        inputs = {}
        for name, info in signature["inputs"].items():
            dims = [max(1, int(d["size"])) for d in info["tensor_shape"]["dim"]][1:]
            value: object = 0.0
            for size in reversed(dims):
                value = [value] * size
            inputs[name] = value
    except (KeyError, TypeError, ValueError):
        return None
    instance = next(iter(inputs.values())) if len(inputs) == 1 else inputs
    return json.dumps({"instances": [instance]}).encode()


def _predict(conn: http.client.HTTPConnection, model: str, body: bytes) -> float:
    started = time.perf_counter()
    conn.request("POST", f"/v1/models/{model}:predict", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    payload = response.read()
    elapsed = time.perf_counter() - started
    if response.status != 200:
        raise ClusterError(f"{model}: predict with its example body answered {response.status}: "
                           f"{payload[:200].decode('utf-8', 'replace')}")
    return elapsed


def back_to_back(conn: http.client.HTTPConnection, model: str, body: bytes, *, least: int = MIN_SAMPLES,
                 most: int = MAX_SAMPLES, budget: float = BUDGET) -> list[float]:
    """Predict times one right after another (at least `least`, then until `budget` seconds or `most`):
    the pace of a saturated node, which its capacity and the waiting in its queue follow."""
    samples: list[float] = []
    started = time.monotonic()
    while len(samples) < most and (len(samples) < least or time.monotonic() - started < budget):
        samples.append(_predict(conn, model, body))
    return samples


def after_idle(conn: http.client.HTTPConnection, model: str, body: bytes, *, count: int = IDLE_SAMPLES,
               gap: float = IDLE_GAP) -> list[float]:
    """Predict times each after `gap` seconds with nothing running on the server: the pace of a request
    that finds its node idle (faster on a CPU-limited node: an idle group starts with unused quota)."""
    samples: list[float] = []
    for _ in range(count):
        time.sleep(gap)
        samples.append(_predict(conn, model, body))
    return samples


def scv(samples: list[float]) -> float:
    """Squared coefficient of variation: population variance / mean^2 (0 for a constant time)."""
    mean = statistics.fmean(samples)
    return statistics.pvariance(samples, mean) / mean ** 2 if mean > 0 else 0.0


def _charged(limits: CgroupLimits, group: str) -> int:
    """KB charged to the profiling group (memory.current / memory.usage_in_bytes)."""
    directory = limits.node_dirs(group)[-1]
    name = "memory.current" if limits.layout.version == 2 else "memory.usage_in_bytes"
    return int((directory / name).read_text()) // 1024


def _cpu_ns(pid: int) -> int:
    """Nanoseconds on CPU of `pid`'s process tree, every thread (/proc/<pid>/task/*/schedstat)."""
    try:
        top = psutil.Process(pid)
        pids = [top.pid] + [c.pid for c in top.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for proc in pids:
        try:
            for tid in os.listdir(f"/proc/{proc}/task"):
                with open(f"/proc/{proc}/task/{tid}/schedstat") as fh:
                    total += int(fh.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total


def _rss(pid: int) -> int:
    try:
        top = psutil.Process(pid)
        procs = [top] + top.children(recursive=True)
    except psutil.Error:
        return 0
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            pass
    return total // 1024


@contextlib.contextmanager
def profiled_server(model: str, model_path: Path, *, limits: CgroupLimits, group: str, log_path: Path,
                    timeout: float = 60.0, flags: Sequence[str] = ()) -> Iterator[tuple[subprocess.Popen, int]]:
    """Run one model server in cgroup `group` (at 1 core until the caller changes it), with `flags`
    added to its command line; yield (process, port) once it is ready; stop it and release the group
    after."""
    address = "127.0.0.1"
    port = _free_port(address)
    limits.apply(group, NodeLimits(cpu=1.0, memory=None))
    command = [*python_command(host=address, port=port, model=model, base_path=model_path), *flags]
    inference = limits.inference_dir(group)
    if inference is not None:            # as the cluster runs it: the quota on inference alone
        command = [*command, "--inference_cgroup", str(inference)]
    command = limits.wrap(command, group, model)
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)}
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                cwd=REPO_ROOT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while not probe_ready(address, port, model, timeout=1.0):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise ClusterError(f"{model}: the model server did not start: "
                                   f"{last_log_line(log_path) or 'no output'} (log: {log_path})")
            time.sleep(0.1)
        yield proc, port
    finally:
        _stop(proc)
        limits.release(group, model, proc.pid)


def profile_model(spec: ModelSpec, *, limits: CgroupLimits, models_dir: Path, quotas: dict[str, float],
                  log_dir: Path, timeout: float = 60.0) -> Measurement:
    """Start one server for `spec` in its own group, measure it at 1 core and at each quota."""
    group = f"profile-{spec.name.replace('_', '-')}"
    with profiled_server(spec.name, models_dir / spec.model_file, limits=limits, group=group,
                         log_path=log_dir / f"{spec.name}.log", timeout=timeout) as (proc, port):
        body = _example(spec.name)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            try:
                _predict(conn, spec.name, body)
            except ClusterError:
                # The load generator's example does not fit this model: one built from its signature.
                body = _body_from_metadata(conn, spec.name) or body
            for _ in range(WARMUP):
                _predict(conn, spec.name, body)
            charged, rss = _charged(limits, group), _rss(proc.pid)
            times: dict[float, float] = {}
            scvs: dict[float, float] = {}
            idle: dict[float, float] = {}
            cpu_times: list[float] = []
            for quota in sorted({1.0, *quotas.values()}, reverse=True):
                limits.apply(group, NodeLimits(cpu=quota, memory=None))
                _predict(conn, spec.name, body)             # settle into the new quota
                cpu_before = _cpu_ns(proc.pid)
                samples = back_to_back(conn, spec.name, body)
                cpu_times.append((_cpu_ns(proc.pid) - cpu_before) / 1e9 / len(samples))
                times[quota], scvs[quota] = statistics.median(samples), scv(samples)
                if quota in quotas.values() and times[quota] >= IDLE_MIN:
                    idle[quota] = statistics.median(after_idle(conn, spec.name, body))
        finally:
            conn.close()
    return Measurement(model=spec.name, charged=charged, rss=rss, exec_time_1core=times[1.0],
                       exec_time={cls: times[q] for cls, q in quotas.items()},
                       exec_time_idle={cls: idle[q] for cls, q in quotas.items() if q in idle},
                       exec_time_scv={cls: scvs[q] for cls, q in quotas.items()},
                       cpu_time=statistics.median(cpu_times))


def _stop(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except OSError:
            return
        try:
            proc.wait(timeout=wait)
            # Workers of the group may outlive the master by a moment.
            end = time.monotonic() + wait
            while time.monotonic() < end:
                try:
                    os.killpg(proc.pid, 0)
                except OSError:
                    return
                time.sleep(0.05)
        except subprocess.TimeoutExpired:
            continue


# ---- the catalog, edited line by line ---------------------------------------------------------

def _seconds(value: float) -> float:
    """Four significant digits: 0.012345 -> 0.01235."""
    return float(f"{value:.4g}")


def _flow(value: object) -> str:
    """One-line YAML flow text for a small mapping/scalar."""
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10_000).strip()
    return text[:-4].strip() if text.endswith("\n...") else text


def _merged(old: dict[str, float], new: dict[str, float], measured: dict[str, float]) -> dict[str, float]:
    """`old` with the `new` figures: a class `measured` this time keeps no old figure (none where it got
    none, e.g. no idle time below IDLE_MIN); the other classes keep theirs; the file's order is kept."""
    kept = {c: v for c, v in old.items() if c in new or c not in measured}
    return kept | {c: _seconds(v) for c, v in new.items()}


def new_fields(measurement: Measurement, old: ModelSpec, *, date: str, host: str,
               cgroup: str, quotas: dict[str, float]) -> dict[str, object]:
    """The catalog fields a measurement sets: memory, exec_time, exec_time_idle and exec_time_scv
    (each merged with `old`'s) and the measured note; exec_time_idle is None (no line) when empty.

    `memory` is the charged figure plus MEMORY_HEADROOM, rounded up to 1000 KB: a server's charge
    grows a little under sustained load (buffers, allocator), and a node's limit is a hard one."""
    measured = measurement.exec_time
    return {
        "memory": int(math.ceil(measurement.charged * (1 + MEMORY_HEADROOM) / 1000.0) * 1000),
        "exec_time": _merged(old.exec_time, measured, measured),
        "exec_time_idle": _merged(old.exec_time_idle, measurement.exec_time_idle, measured) or None,
        "exec_time_scv": _merged(old.exec_time_scv, measurement.exec_time_scv, measured),
        "measured": {"date": date, "host": host, "host_cores": os.cpu_count() or 1, "cgroup": cgroup,
                     "cpu_quota": dict(quotas), "exec_time_1core": _seconds(measurement.exec_time_1core),
                     "cpu_time": _seconds(measurement.cpu_time),
                     "rss": measurement.rss, "charged": measurement.charged},
    }


def update_catalog_text(text: str, updates: dict[str, dict[str, object]]) -> str:
    """Replace or add `key: value` lines in each named model's block of a block-style catalog; a value
    None removes the key's line. A new key goes right after the nearest key before it (in the catalog's
    field order, ENTRY_FIELDS) that the block has, so exec_time_idle follows exec_time; else at the end.

    Raises ValueError when a model's block is not found in that shape (a flow-style catalog)."""
    lines = text.splitlines(keepends=True)
    for model, fields in updates.items():
        start = indent = None
        for i, line in enumerate(lines):
            stripped = line.lstrip(" ")
            if stripped.startswith("- name:") and yaml.safe_load(stripped[len("- name:"):] or "null") == model:
                start, indent = i, len(line) - len(stripped) + 2
                break
        if start is None:
            raise ValueError(f"model {model!r}: no '- name: {model}' block found")
        end = start + 1
        while end < len(lines):
            line = lines[end]
            body = line.strip()
            if body and not body.startswith("#") and len(line) - len(line.lstrip(" ")) < indent:
                break
            if line.lstrip(" ").startswith("- ") and len(line) - len(line.lstrip(" ")) <= indent - 2:
                break
            end += 1
        while end > start + 1 and (not lines[end - 1].strip() or lines[end - 1].lstrip().startswith("#")):
            end -= 1                 # blank lines and comments before the next block stay before it

        def span(key: str) -> tuple[int, int] | None:
            """Where `key`'s line and its block-style continuation (deeper-indented lines) are."""
            at = next((i for i in range(start + 1, end) if lines[i].startswith(" " * indent + key + ":")), None)
            if at is None:
                return None
            stop = at + 1
            while stop < end and (not lines[stop].strip()
                                  or len(lines[stop]) - len(lines[stop].lstrip(" ")) > indent):
                stop += 1
            return at, stop

        for key, value in fields.items():
            new = [] if value is None else [f"{' ' * indent}{key}: {_flow(value)}\n"]
            found = span(key)
            if found is None:
                earlier = ENTRY_FIELDS[:ENTRY_FIELDS.index(key)] if key in ENTRY_FIELDS else ()
                before = next(filter(None, map(span, reversed(earlier))), None)
                at = end if before is None else before[1]
                while at > start + 1 and not lines[at - 1].strip():
                    at -= 1                 # before the blank lines that end a value
                found = (at, at)
            lines[found[0]:found[1]] = new
            end += len(new) - (found[1] - found[0])
    return "".join(lines)


def write_catalog(path: Path, text: str) -> None:
    """Validate `text` as a catalog, then atomically replace (or create) `path` with it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp",
                                     delete=False) as fh:
        fh.write(text)
        tmp = Path(fh.name)
    try:
        load_catalog(tmp)
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o644)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


# ---- the command ------------------------------------------------------------------------------

def _resolve(path: str | Path) -> Path:
    path = Path(path)
    return path if path.is_absolute() else REPO_ROOT / path


def run_profile(*, catalog_path: str | Path, config_path: str | Path, models_dir: str | Path,
                models: list[str] | None, dry_run: bool, as_json: bool, out=sys.stdout,
                out_path: str | Path | None = None) -> int:
    """Profile, print a table (or JSON) and, unless `dry_run`, write the catalog; return 0.

    With `out_path` the measured catalog is written there (a copy of `catalog_path` with the new
    figures) and `catalog_path` is left as it is: `make setup` keeps this host's figures in
    build/models.yaml so the shipped config/models.yaml stays what the repository holds.
    Relative paths are resolved against the repository root, as the cluster does."""
    catalog_path, config_path, models_dir = _resolve(catalog_path), _resolve(config_path), _resolve(models_dir)
    target = _resolve(out_path) if out_path else catalog_path
    catalog = load_catalog(catalog_path)
    quotas, notes = class_quotas(config_path)
    if not quotas:
        raise ClusterError(f"{config_path}: no node has a cpu_quota: nothing to profile the classes with")
    unknown = [m for m in models or [] if m not in catalog]
    if unknown:
        raise CatalogError(f"unknown model(s) {', '.join(unknown)} (known: {', '.join(catalog.names())})")
    chosen = [spec for spec in catalog if not models or spec.name in models]
    built = [s for s in chosen if any((models_dir / s.model_file).glob("*/model.onnx"))]
    notes += [f"{s.name}: no built model under {models_dir / s.model_file}, skipped"
              for s in chosen if s not in built]
    if not built:
        raise ClusterError(f"no built model to profile under {models_dir} (build them with `make setup`)")
    limits = CgroupLimits.open(f"profile-{os.getpid()}")
    if not limits.enabled:
        raise ClusterError(f"profiling needs cgroup limits to emulate the node classes: {limits.reason}")
    date = datetime.date.today().isoformat()
    host = socket.gethostname()
    cgroup = f"v{limits.layout.version}"
    results: list[Measurement] = []
    failed: list[str] = []
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="profile-logs-") as logs:
            for spec in built:
                try:
                    results.append(profile_model(spec, limits=limits, models_dir=models_dir,
                                                 quotas=quotas, log_dir=Path(logs)))
                except (ClusterError, OSError, http.client.HTTPException) as exc:
                    failed.append(spec.name)
                    notes.append(f"{spec.name}: not profiled: {' '.join(str(exc).split())}")
    finally:
        limits.cleanup()
    updates = {m.model: new_fields(m, catalog[m.model], date=date, host=host, cgroup=cgroup,
                                   quotas=quotas) for m in results}
    busy = [m.model for m in results if m.host_busy]
    if busy:
        notes.append(f"host busy (load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores): the 1-core time of "
                     f"{', '.join(busy)} is well above its CPU time, so its figures are inflated; "
                     f"profile again on an idle host")
    if as_json:
        print(json.dumps({"catalog": str(target), "written": not dry_run, "notes": notes,
                          "models": updates}, indent=2), file=out)
    else:
        classes = list(quotas)
        print(f"profiled on {host} ({os.cpu_count()} cores, cgroup {cgroup}) in "
              f"{time.monotonic() - started:.1f} s; class quotas: "
              + ", ".join(f"{c} {q:g} core" for c, q in quotas.items()), file=out)
        print(f"{'MODEL':<18} {'MEMORY KB':>10} {'RSS KB':>9} {'CPU S':>10} {'1 CORE S':>10} "
              + " ".join(f"{c.upper() + ' S':>10} {c.upper() + ' IDLE S':>12} {c.upper() + ' SCV':>10}"
                         for c in classes), file=out)
        for m in results:
            idle = {c: _seconds(s) for c, s in m.exec_time_idle.items()}
            print(f"{m.model:<18} {updates[m.model]['memory']:>10} {m.rss:>9} {_seconds(m.cpu_time):>10} "
                  f"{_seconds(m.exec_time_1core):>10} "
                  + " ".join(f"{_seconds(m.exec_time[c]):>10} {idle.get(c, '-'):>12} "
                             f"{_seconds(m.exec_time_scv[c]):>10}" for c in classes), file=out)
        for note in notes:
            print(f"note: {note}", file=out)
    text = update_catalog_text(catalog_path.read_text(), updates)
    status = 1 if failed else 0
    if dry_run:
        if not as_json:
            for model, fields in updates.items():
                print(f"would set {model}: " + "; ".join(f"{k}: {_flow(v)}" for k, v in fields.items()),
                      file=out)
            print(f"dry run: {target} not written", file=out)
        return status
    if updates or target != catalog_path:
        write_catalog(target, text)
    if not as_json:
        print(f"wrote {len(updates)} model(s) into {target}", file=out)
    return status
