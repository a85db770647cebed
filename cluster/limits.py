"""Real CPU and memory limits for the local cluster's nodes, with Linux cgroups (v2 or v1).

Why: without them every local "node" shares all of the host's cores and memory, so a Nano-class
node is exactly as fast as the Xavier-class one and a node never runs out of memory. With them each
node is one cgroup with a CPU quota (the node's `cpu_quota`, cores of this host) and a memory limit
(the node's declared `memory`); every model server deployed on the node runs inside it, so the
node's capacity is shared by its servers like a real machine's.

Layout (one tree per cluster, so test clusters running at once never share a group)::

    <cgroup mount>/edge-inference/<cluster id>/<node>/            limits: cpu quota, memory limit
    <cgroup mount>/edge-inference/<cluster id>/<node>/<model>.<pid>   one model server (no limits)
    <cpu mount>/edge-inference/<cluster id>/<node>/inference/        v1: the node's CPU quota, on the
                                                                     servers' inference threads only

**The CPU quota limits inference, not the whole server (cgroup v1).** Under a quota of a tenth of a
core, an inference call spends a 10 ms period's quota in its first millisecond, and every other
thread of the server (the one accepting a connection, the one writing an answer) then waits for the
next period: at 70% load that added 14.2 ms at the median and 62 ms at p95 to each request, beside
the inference, against 0.6 and 5.4 ms without a quota (bench/node_overhead.py, bench/RESULTS.md). A slow device does
not stall its network stack like that. So on v1, where a thread can be in a cpu group apart from
its process, the node's quota is set on `<node>/inference`, the server is started with
`--inference_cgroup` naming it, and its inference threads (only) join it, with a weight far above
the servers' leaves (when the host is short of CPU, the node's inference goes first: its quota is
the node's speed); the node group itself keeps the node's weight and no quota. The memory limit
stays on the whole node. On v2 the threads of two processes cannot share a cpu group while each
process keeps a memory leaf of its own (the OOM count per server), so there the quota stays on the
node group and applies to the whole server. `EDGE_LIMIT_SCOPE=process` does the same on v1.

The per-server leaf carries no limit of its own; it exists so the kernel's OOM-kill counter tells
*which* server of the node was killed (v1 `memory.oom_control` counts on the victim's group only,
v2 `memory.events` counts on the victim's group and its ancestors). A server joins its leaf before
it runs any Python: the command is wrapped in `/bin/sh -c 'mkdir leaf; echo $$ > leaf/cgroup.procs;
exec "$@"'`, so the pid (and its start time, the cluster's process identity) is the server's own,
and the gunicorn workers it forks later inherit the group.

CPU weight: group scheduling makes a whole subtree compete with the host's other processes as *one*
entity of its weight, so with the default weight every model server of every node together would
get the CPU share of a single process (the front-end's workers, the clients and the back-end each
get as much). `edge-inference` is therefore given the weight of as many processes as the host has
cores (v1 `cpu.shares` 1024 x cores, v2 `cpu.weight` 100 x cores): under contention the nodes get
roughly what their processes got before they were grouped, and never more than their quotas.
Inside it each node's weight is in proportion to its cores (v1 1024 x cpu, v2 100 x cpu; 1024 / 100,
the default, without a CPU ceiling): when the host is short of CPU, a 1-core node gets four times a
quarter-core node's share, as machines of those sizes would have. With equal weights (the default)
the testbed's 1-core cloud site got no more than each quarter-core Nano once the host was busy.

Nothing here raises to the caller for an unusable cgroup tree: `CgroupLimits.open` returns an object
whose `enabled` is False and whose `status` says why ("none (not root)"), and the cluster runs
unconstrained.
"""
from __future__ import annotations

import errno
import hashlib
import logging
import os
import shlex
import signal
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CgroupLimits", "NodeLimits", "detect_layout", "Layout", "cluster_id", "cfs_quota", "cpu_weight",
           "oom_reason", "ENV_SWITCH", "SCOPE_SWITCH", "TOP", "limit_scope"]

log = logging.getLogger("cluster.limits")

ENV_SWITCH = "EDGE_LOCAL_LIMITS"        # "0" (or "false", "no", "off") turns limits off
SCOPE_SWITCH = "EDGE_LIMIT_SCOPE"       # "inference" (default) or "process": what a node's CPU quota limits
INFERENCE = "inference"                 # v1: the node's group holding its servers' inference threads
INFERENCE_SHARES = 64 * 1024            # v1: its weight beside the node's server leaves (1024 each)
TOP = "edge-inference"                  # the one directory this module creates under a mount
PERIOD_US = 10_000                      # CFS period: 10 ms, so a throttled request waits <= ~10 ms
_MIN_QUOTA_US = 1_000                   # the kernel's smallest CFS quota
_MAX_PERIOD_US = 1_000_000              # and largest period


def cpu_weight(cores: float | None, version: int) -> int:
    """The node group's CPU weight for cgroup `version`: in proportion to its `cores` (None: the
    default weight), within the kernel's range."""
    if version == 2:
        return 100 if cores is None else max(1, min(10_000, round(100 * cores)))
    return 1024 if cores is None else max(2, min(262_144, round(1024 * cores)))


@dataclass(frozen=True)
class NodeLimits:
    """What one node may use: `cpu` cores of this host (None: no CPU ceiling), `memory` KB."""

    cpu: float | None
    memory: int | None


@dataclass(frozen=True)
class Layout:
    """Where the cpu and memory controllers are: v2 (one mount) or v1 (one mount each)."""

    version: int                    # 1 or 2
    cpu: Path                       # mount point holding the cpu controller
    memory: Path                    # mount point holding the memory controller

    @property
    def mounts(self) -> list[Path]:
        return [self.cpu] if self.cpu == self.memory else [self.cpu, self.memory]


def cluster_id(state_path: Path) -> str:
    """A stable, path-safe id for the cluster whose state file is `state_path`."""
    digest = hashlib.sha1(str(Path(state_path).resolve()).encode()).hexdigest()[:12]
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in Path(state_path).stem)[:32]
    return f"{stem or 'cluster'}-{digest}"


def cfs_quota(cores: float) -> tuple[int, int]:
    """Return (quota_us, period_us) for `cores`: a 10 ms period unless the quota would be < 1 ms."""
    quota = round(cores * PERIOD_US)
    if quota >= _MIN_QUOTA_US:
        return quota, PERIOD_US
    period = min(_MAX_PERIOD_US, round(_MIN_QUOTA_US / cores))
    return max(_MIN_QUOTA_US, round(cores * period)), period


def limit_scope(value: str | None) -> str:
    """Read EDGE_LIMIT_SCOPE: "inference" (the default) or "process"; raise ValueError otherwise."""
    scope = (value or "inference").strip().lower()
    if scope not in ("inference", "process"):
        raise ValueError(f"{SCOPE_SWITCH} must be 'inference' or 'process', got {value!r}")
    return scope


def oom_reason(memory_kb: int | None) -> str:
    """The reason a deployment killed by its node's memory limit is reported with."""
    limit = f"{memory_kb} KB" if memory_kb is not None else "limit"
    return f"killed: node memory limit {limit} exceeded (OOM)"


def _mountinfo(path: str = "/proc/self/mountinfo") -> list[tuple[str, str, set[str]]]:
    """Return (mount point, fs type, super options) of every cgroup mount."""
    found = []
    try:
        with open(path) as fh:
            lines = fh.read().splitlines()
    except OSError:
        return found
    for line in lines:
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        point = fields[4].encode().decode("unicode_escape")      # \040 for spaces
        found.append((point, tail[0], set(tail[2].split(","))))
    return found


def detect_layout(mountinfo: str = "/proc/self/mountinfo") -> tuple[Layout | None, str]:
    """Find the cpu and memory controllers; return (layout, "") or (None, why not)."""
    mounts = _mountinfo(mountinfo)
    v1 = {}
    for point, fstype, options in mounts:
        if fstype == "cgroup":
            for controller in ("cpu", "memory"):
                if controller in options:
                    v1.setdefault(controller, Path(point))
    if "cpu" in v1 and "memory" in v1:
        return Layout(1, v1["cpu"], v1["memory"]), ""
    for point, fstype, _ in mounts:
        if fstype != "cgroup2":
            continue
        try:
            controllers = set((Path(point) / "cgroup.controllers").read_text().split())
        except OSError:
            continue
        if {"cpu", "memory"} <= controllers:
            return Layout(2, Path(point), Path(point)), ""
    if not mounts:
        return None, "no cgroup file system mounted"
    missing = [c for c in ("cpu", "memory") if c not in v1]
    return None, f"no cgroup hierarchy with the {' and '.join(missing)} controller"


def _write(path: Path, value: str) -> None:
    with open(path, "w") as fh:
        fh.write(value)


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _subdirs(path: Path) -> list[Path]:
    try:
        return [p for p in path.iterdir() if p.is_dir()]
    except OSError:
        return []


def _rmdir(path: Path) -> None:
    try:
        path.rmdir()          # refused while it holds processes or groups
    except OSError:
        pass


def _age(path: Path, now: float) -> float:
    try:
        return now - path.stat().st_mtime
    except OSError:
        return 0.0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _error(exc: OSError) -> str:
    return exc.strerror or str(exc)


class CgroupLimits:
    """One cluster's cgroup tree: node groups with limits, one leaf per model server."""

    def __init__(self, layout: Layout | None, cluster: str, *, reason: str = "", scope: str = "inference"):
        self.layout = layout
        self.cluster = cluster
        self.reason = reason            # why limits are off (empty when enabled)
        # What a node's CPU quota limits: its servers' inference threads (v1 only) or whole servers.
        self.scope = scope if layout is not None and layout.version == 1 else "process"

    # ---- set-up -----------------------------------------------------------------------------

    @classmethod
    def open(cls, cluster: str, *, wanted: bool = True, why_off: str = "",
             mountinfo: str = "/proc/self/mountinfo") -> "CgroupLimits":
        """Detect the controllers and check that this process can create groups; never raises."""
        if not wanted:
            return cls(None, cluster, reason=why_off or "turned off")
        env = os.environ.get(ENV_SWITCH, "").strip().lower()
        if env in ("0", "false", "no", "off"):
            return cls(None, cluster, reason=f"turned off by {ENV_SWITCH}={os.environ[ENV_SWITCH]}")
        layout, why = detect_layout(mountinfo)
        if layout is None:
            return cls(None, cluster, reason=why)
        try:
            scope = limit_scope(os.environ.get(SCOPE_SWITCH))
        except ValueError as exc:
            log.warning("%s; limiting whole servers", exc)
            scope = "process"
        limits = cls(layout, cluster, scope=scope)
        problem = limits._prepare_top()
        if problem:
            return cls(None, cluster, reason=problem)
        limits.sweep()
        return limits

    @property
    def enabled(self) -> bool:
        return self.layout is not None

    @property
    def status(self) -> str:
        """One line for operators: "cgroup v1, enforced, CPU on inference", "cgroup v2, enforced" or
        "none (why)"."""
        if self.layout is None:
            return f"none ({self.reason})"
        return f"cgroup v{self.layout.version}, enforced" + (", CPU on inference" if self.scope == "inference" else "")

    def _tops(self) -> list[Path]:
        return [mount / TOP for mount in self.layout.mounts]

    def _prepare_top(self) -> str:
        """Create <mount>/edge-inference (kept between runs) and enable the controllers under it."""
        if os.geteuid() != 0 and not all(os.access(m, os.W_OK) for m in self.layout.mounts):
            return "not root and the cgroup tree is not writable"
        try:
            if self.layout.version == 2:
                self._enable(self.layout.cpu)
            for top in self._tops():
                top.mkdir(exist_ok=True)
                if self.layout.version == 2:
                    self._enable(top)
            ncpu = os.cpu_count() or 1
            if self.layout.version == 2:
                _write(self.layout.cpu / TOP / "cpu.weight", str(min(10_000, 100 * ncpu)))
            else:
                _write(self.layout.cpu / TOP / "cpu.shares", str(1024 * ncpu))
            if self.layout.version == 1:
                top = self.layout.memory / TOP
                if (_read(top / "memory.use_hierarchy") or "1").strip() != "1":
                    _write(top / "memory.use_hierarchy", "1")
        except OSError as exc:
            if exc.errno == errno.EROFS:
                return "the cgroup file system is read-only"
            where = exc.filename or self.layout.cpu
            return f"cannot write {where}: {_error(exc)}"
        return ""

    @staticmethod
    def _enable(group: Path) -> None:
        """v2: let `group`'s children use the cpu and memory controllers."""
        enabled = set((_read(group / "cgroup.subtree_control") or "").split())
        missing = [c for c in ("cpu", "memory") if c not in enabled]
        if missing:
            _write(group / "cgroup.subtree_control", " ".join(f"+{c}" for c in missing))

    def node_dirs(self, node: str) -> list[Path]:
        """The node's group in each hierarchy (one for v2, cpu and memory for v1)."""
        return [top / self.cluster / node for top in self._tops()]

    def inference_dir(self, node: str) -> Path | None:
        """The cpu group the node's servers' inference threads join (None: the quota is on whole
        servers)."""
        if self.layout is None or self.scope != "inference":
            return None
        return self.layout.cpu / TOP / self.cluster / node / INFERENCE

    def apply(self, node: str, limits: NodeLimits, *, create: bool = True) -> None:
        """Create the node's group (unless `create` is False and it does not exist) and set its
        limits; raise OSError when the kernel refuses."""
        if self.layout is None:
            return
        dirs = self.node_dirs(node)
        if not create and not all(d.is_dir() for d in dirs):
            return
        for d in dirs:
            if self.layout.version == 2:
                d.parent.mkdir(exist_ok=True)
                self._enable(d.parent)
                d.mkdir(exist_ok=True)
                self._enable(d)         # its leaves hold the processes
            else:
                d.mkdir(parents=True, exist_ok=True)
        if self.layout.version == 2:
            self._apply_v2(dirs[0], limits)
        else:
            self._apply_v1(self.layout.cpu / TOP / self.cluster / node,
                           self.layout.memory / TOP / self.cluster / node, limits, self.inference_dir(node))

    @staticmethod
    def _apply_v2(group: Path, limits: NodeLimits) -> None:
        if limits.cpu is None:
            _write(group / "cpu.max", f"max {PERIOD_US}")
        else:
            quota, period = cfs_quota(limits.cpu)
            _write(group / "cpu.max", f"{quota} {period}")
        _write(group / "cpu.weight", str(cpu_weight(limits.cpu, 2)))
        _write(group / "memory.max", "max" if limits.memory is None else str(limits.memory * 1024))
        if (group / "memory.swap.max").exists():
            _write(group / "memory.swap.max", "0")

    @staticmethod
    def _apply_v1(cpu: Path, memory: Path, limits: NodeLimits, inference: Path | None) -> None:
        groups = [cpu]
        if inference is not None:
            inference.mkdir(exist_ok=True)
            groups.append(inference)
            # Its quota is the node's speed: when the host is short of CPU, the node's inference
            # goes before its servers' HTTP threads (each leaf has the default 1024).
            _write(inference / "cpu.shares", str(INFERENCE_SHARES))
        for group in groups:
            _write(group / "cpu.cfs_quota_us", "-1")    # a period change must not meet an old quota
        if limits.cpu is not None:
            quota, period = cfs_quota(limits.cpu)
            _write(groups[-1] / "cpu.cfs_period_us", str(period))
            _write(groups[-1] / "cpu.cfs_quota_us", str(quota))
        _write(cpu / "cpu.shares", str(cpu_weight(limits.cpu, 1)))
        value = "-1" if limits.memory is None else str(limits.memory * 1024)
        memsw = memory / "memory.memsw.limit_in_bytes"
        # memsw (memory + swap) may never be below the memory limit: raise it first when growing.
        order = [memory / "memory.limit_in_bytes"] + ([memsw] if memsw.exists() else [])
        try:
            for path in order:
                _write(path, value)
        except OSError as exc:
            if exc.errno != errno.EINVAL or len(order) == 1:
                raise
            for path in reversed(order):
                _write(path, value)

    # ---- servers ----------------------------------------------------------------------------

    def wrap(self, command: list[str], node: str, model: str) -> list[str]:
        """Return `command` run inside a new leaf `<model>.<pid>` of the node's group.

        The shell joins the leaf, then execs the command (same pid), so the server and every
        process it forks are in the node's group from their first instruction."""
        if self.layout is None:
            return command
        steps = []
        for d in self.node_dirs(node):
            leaf = f"{shlex.quote(str(d / model))}.$$"
            steps.append(f"mkdir {leaf} && echo $$ > {leaf}/cgroup.procs")
        script = " && ".join(steps) + ' && exec "$@"'
        return ["/bin/sh", "-c", script, "sh", *command]

    def leaf_dirs(self, node: str, model: str, pid: int) -> list[Path]:
        return [d / f"{model}.{pid}" for d in self.node_dirs(node)]

    def oom_kills(self, node: str, model: str, pid: int) -> int:
        """How many processes of this server the kernel OOM-killed (0 when unknown)."""
        if self.layout is None:
            return 0
        leaf = self.layout.memory / TOP / self.cluster / node / f"{model}.{pid}"
        name = "memory.events" if self.layout.version == 2 else "memory.oom_control"
        text = _read(leaf / name)
        if text is None:
            return 0
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                try:
                    return int(value)
                except ValueError:
                    return 0
        if self.layout.version == 1:
            # Kernels before 4.13 have no oom_kill line: a hit on the limit is the best sign left.
            failcnt = _read(leaf / "memory.failcnt")
            return 1 if failcnt and failcnt.strip() not in ("", "0") else 0
        return 0

    def kill(self, node: str, model: str, pid: int) -> None:
        """SIGKILL every process left in the server's leaf (a server whose worker was OOM-killed)."""
        for leaf in self.leaf_dirs(node, model, pid):
            text = _read(leaf / "cgroup.procs") or ""
            for entry in text.split():
                try:
                    os.kill(int(entry), signal.SIGKILL)
                except (OSError, ValueError):
                    pass

    def release(self, node: str, model: str, pid: int) -> None:
        """Remove the server's leaf once it is empty; best effort."""
        for leaf in self.leaf_dirs(node, model, pid):
            try:
                leaf.rmdir()
            except OSError:
                pass

    def sweep(self, *, idle: float = 3600.0) -> None:
        """Remove what earlier runs left behind, in every cluster: empty leaves of dead servers (a
        worker outliving its killed master keeps a leaf busy past `release`), and node and cluster
        groups with no leaves left that were created more than `idle` seconds ago (a live node's
        group is recreated at its next deploy). Best effort."""
        if self.layout is None:
            return
        now = time.time()
        for top in self._tops():
            for cluster in _subdirs(top):
                for node in _subdirs(cluster):
                    for leaf in _subdirs(node):
                        _, _, pid = leaf.name.rpartition(".")
                        procs = _read(leaf / "cgroup.procs")
                        if pid.isdigit() and not _pid_alive(int(pid)) and procs is not None and not procs.strip():
                            _rmdir(leaf)
                    if _age(node, now) > idle:
                        if _age(node / INFERENCE, now) > idle:
                            _rmdir(node / INFERENCE)        # refused while threads are in it
                        _rmdir(node)
                if _age(cluster, now) > idle:
                    _rmdir(cluster)

    def cleanup(self) -> None:
        """Remove this cluster's empty groups (leaves, node groups, the cluster group)."""
        if self.layout is None:
            return
        for top in self._tops():
            root = top / self.cluster
            if not root.is_dir():
                continue
            for node in [p for p in root.iterdir() if p.is_dir()]:
                for leaf in [p for p in node.iterdir() if p.is_dir()]:
                    try:
                        leaf.rmdir()
                    except OSError:
                        pass
                try:
                    node.rmdir()
                except OSError:
                    pass
            try:
                root.rmdir()
            except OSError:
                pass
