"""The embedded local cluster: nodes are loopback addresses, instances are real model servers.

Why it exists: the whole system (front-end, back-end, solver) must run and be tested on one
machine with real processes, and nothing above the `Cluster` port may know it is not Kubernetes.
Each node of `config/cluster.local.yaml` is one loopback address (127.0.1.1, ...); deploying a
model starts `python -m modelserver` bound to that address on the model's catalog port.

State lives in SQLite (`cluster.local_state`) so separate processes share one cluster; a
recorded process is identified by (pid, create_time), so entries left by a crash or a reboot are
recognised as gone and cleaned the next time anyone reads. Servers run in their own session and
outlive the process that deployed them (the cron back-end exits right after deploying).

Each node is also a cgroup (`cluster.limits`): its servers share the node's CPU quota and memory
limit, and a server the kernel kills for exceeding the node's memory is kept as a failed
deployment (not ready, with the reason) rather than forgotten.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from .catalog import Catalog, ModelSpec, load_catalog
from .limits import CgroupLimits, NodeLimits, cluster_id, oom_reason
from .local_config import LocalNodeSpec, load_local_cluster
from .local_proc import (ProcessId, ProcessMeter, is_alive, last_log_line, port_in_use, probe_ready,
                         python_command, spawn_server, stop_process)
from .local_state import InstanceRow, StateStore
from .port import (Cluster, ClusterError, Deployment, InsufficientMemory, Node, NodeNotReady,
                   UnknownModel, UnknownNode)

__all__ = ["LocalCluster", "REPO_ROOT"]

REPO_ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger("cluster.local")

# Seconds a removed instance stays out of dispatch, still serving, before it is stopped: one
# front-end refresh (refresh_interval, 1 s by default) plus the time a client takes from its lookup
# to its call. Kubernetes gives a terminating pod the same window (endpoints removal, then SIGTERM).
DRAIN_SECONDS = 1.5
TURNS_SWITCH = "EDGE_INFERENCE_TURNS"   # "0" (or "false", "no", "off"): servers run every call at once
_POLL = 0.1          # seconds between readiness checks while waiting for a server
_warned: set[str] = set()   # limits warnings already logged by this process (once per reason)


def _resolve(path: str | Path) -> Path:
    path = Path(path)
    return path if path.is_absolute() else REPO_ROOT / path


class LocalCluster(Cluster):
    """The `Cluster` port over loopback addresses and model-server processes on this machine."""

    def __init__(self, config_path: str | Path = "config/cluster.local.yaml", *,
                 catalog_path: str | Path = "config/models.yaml",
                 state_path: str | Path = ".run/cluster.db",
                 models_dir: str | Path = "build/models",
                 stop_grace: float = 5.0,
                 drain_seconds: float = DRAIN_SECONDS,
                 probe_timeout: float = 0.25):
        self.config_path = _resolve(config_path)
        self.catalog_path = _resolve(catalog_path)
        self.state_path = _resolve(state_path)
        self.models_dir = _resolve(models_dir)
        self.stop_grace = stop_grace            # seconds between SIGTERM and SIGKILL
        self.drain_seconds = drain_seconds      # seconds a removed instance is out of dispatch before SIGTERM
        self.probe_timeout = probe_timeout      # seconds a read-path readiness probe may take
        self.log_dir = self.state_path.with_name(self.state_path.stem + "-logs")
        self._stamp = self._stamps()
        config = load_local_cluster(self.config_path)
        self.specs: list[LocalNodeSpec] = config.nodes
        self._by_name = {spec.name: spec for spec in self.specs}
        self._open_limits(config.limits)
        self.catalog: Catalog = load_catalog(self.catalog_path)
        self.store = StateStore(self.state_path)
        self._meter = ProcessMeter()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"LocalCluster(config={str(self.config_path)!r}, state={str(self.state_path)!r})"

    # ---- configuration ----------------------------------------------------------------------

    def _stamps(self) -> tuple[tuple[int, int] | None, tuple[int, int] | None]:
        def mtime(path: Path) -> tuple[int, int] | None:
            try:
                stat = path.stat()
            except OSError:
                return None
            return stat.st_mtime_ns, stat.st_size
        return mtime(self.config_path), mtime(self.catalog_path)

    def _refresh(self) -> None:
        """Re-read the node list and catalog when their files change (DESIGN 7); keep the old on error."""
        stamp = self._stamps()
        if stamp == self._stamp:
            return
        with self._lock:
            if stamp == self._stamp:
                return
            self._stamp = stamp
            try:
                config = load_local_cluster(self.config_path)
                specs = config.nodes
                catalog = load_catalog(self.catalog_path)
            except ClusterError as exc:
                log.warning("configuration change ignored: %s", exc)
                return
            self.specs, self._by_name, self.catalog = specs, {s.name: s for s in specs}, catalog
            if config.limits != self._limits_wanted:
                self._open_limits(config.limits)
            for spec in specs:          # new limits reach running nodes now, idle ones at deploy
                try:
                    self.limits.apply(spec.name, self._node_limits(spec), create=False)
                except OSError as exc:
                    log.warning("node %s: new limits not applied: %s", spec.name, exc)
            log.info("configuration reloaded: %d nodes, %d models", len(specs), len(catalog))

    # ---- reads ------------------------------------------------------------------------------

    def nodes(self) -> list[Node]:
        """Return every declared node with declared and measured memory and measured CPU."""
        self._refresh()
        specs = self.specs          # one snapshot: a config reload may swap the list meanwhile
        rows, down = self._current()
        groups: dict[str, list[ProcessId]] = {spec.name: [] for spec in specs}
        used: dict[str, int] = {spec.name: 0 for spec in specs}
        for row in rows:
            if row.node in used:
                used[row.node] += row.memory
                if row.proc is not None:
                    groups[row.node].append(row.proc)
        usage = self._meter.measure(groups)
        return [Node(name=spec.name, address=spec.address, ready=spec.name not in down,
                     memory_total=spec.memory, memory_used=used[spec.name],
                     cpu_capacity=spec.cpu, cpu_usage=usage[spec.name].cpu,
                     labels=spec.labels(), memory_rss=usage[spec.name].rss)
                for spec in specs]

    def deployments(self) -> list[Deployment]:
        """Return every recorded instance; ready means alive and answering its readiness check."""
        self._refresh()
        rows, down = self._current()
        result = []
        for row in rows:
            ready = row.ready and row.proc is not None and row.node not in down
            if row.terminating:
                result.append(Deployment(model=row.model, node=row.node, endpoint=row.endpoint, ready=False,
                                         created=row.created, reason="terminating"))
                continue
            if not row.ready and row.proc is not None and row.node not in down:
                # Nobody may be waiting on it (deploy(wait=False)): promote it here once it answers.
                if probe_ready(row.address, row.port, row.model, timeout=self.probe_timeout):
                    with self.store.write() as conn:
                        self.store.mark_ready(conn, row.model, row.node, row.proc)
                    ready = True
            result.append(Deployment(model=row.model, node=row.node, endpoint=row.endpoint,
                                     ready=ready, created=row.created, reason=row.reason))
        return result

    def node(self, name: str) -> Node:
        """Return one node by name."""
        self._spec(name)
        return next(n for n in self.nodes() if n.name == name)

    def _current(self) -> tuple[list[InstanceRow], set[str]]:
        """Read the state, dropping instances whose process is gone (crash, kill, reboot)."""
        with self.store.read() as conn:
            rows = self.store.instances(conn)
            down = self.store.down_nodes(conn)
        failed = {(row.model, row.node): reason for row in rows if (reason := self._failure(row))}
        stale = [row for row in rows if row.proc is not None and not is_alive(row.proc)
                 and (row.model, row.node) not in failed]
        if failed:
            self._mark_failed([row for row in rows if (row.model, row.node) in failed], failed)
        if stale or failed:
            with self.store.write() as conn:
                for row in stale:
                    if row.node in down:
                        # A down node keeps its deployments; only forget the dead process.
                        conn.execute("UPDATE instances SET pid = NULL, create_time = NULL, ready = 0 "
                                     "WHERE model = ? AND node = ? AND pid = ? AND create_time = ?",
                                     (row.model, row.node, row.proc[0], row.proc[1]))
                    else:
                        self.store.delete(conn, row.model, row.node, proc=row.proc)
                rows = self.store.instances(conn)
                down = self.store.down_nodes(conn)
            for row in stale:
                self.limits.release(row.node, row.model, row.proc[0])
            rows = [r for r in rows if r.proc is None or is_alive(r.proc)]
        return rows, down

    # ---- changes ----------------------------------------------------------------------------

    def deploy(self, model: str, node: str, *, wait: bool = True, timeout: float = 60.0) -> Deployment:
        """Start `model` on `node` (idempotent); with `wait`, return once it answers."""
        self._refresh()
        spec = self._model(model)
        node_spec = self._spec(node)
        base_path = self.models_dir / spec.model_file
        if not base_path.is_dir():
            raise ClusterError(f"model files for {model!r} not found at {base_path} "
                               f"(build them with `make setup`)")
        spawned = False
        freed_by = time.monotonic() + self.drain_seconds + self.stop_grace + 2.0
        while True:
            with self.store.write() as conn:
                if node in self.store.down_nodes(conn):
                    raise NodeNotReady(f"node {node!r} is down")
                row = self.store.instance(conn, model, node)
                if row is not None and (row.proc is None or not is_alive(row.proc)):
                    self.store.delete(conn, model, node)
                    row = None
                if row is not None and row.terminating:
                    # Being removed (draining): start a new one once it is gone.
                    if time.monotonic() >= freed_by:
                        raise ClusterError(f"{model!r} on node {node!r} is still being removed")
                    busy = True
                elif row is None:
                    rows = [r for r in self.store.instances(conn, node=node)
                            if r.proc is None or is_alive(r.proc)]
                    used = sum(r.memory for r in rows)
                    available = node_spec.memory - used
                    if spec.memory > available:
                        raise InsufficientMemory(
                            f"cannot deploy {model!r} on node {node!r}: it needs {spec.memory} KB, "
                            f"{max(0, available)} KB available ({used} KB of {node_spec.memory} KB used)")
                    if port_in_use(node_spec.address, spec.port):
                        # A server being removed may still hold the port for its grace period.
                        if time.monotonic() < freed_by:
                            busy = True
                        else:
                            raise ClusterError(f"{node_spec.address}:{spec.port} is already in use by a "
                                               f"process this cluster does not manage")
                    else:
                        busy = False
                        log_path = self.log_dir / f"{node}.{model}.log"
                        proc = spawn_server(
                            command=self._limited(node_spec, model, python_command(
                                host=node_spec.address, port=spec.port, model=model, base_path=base_path)),
                            log_path=log_path, cwd=REPO_ROOT, env=self._server_env())
                        row = InstanceRow(model=model, node=node, address=node_spec.address,
                                          port=spec.port, memory=spec.memory, pid=proc[0],
                                          create_time=proc[1], ready=False, created=time.time(),
                                          log=str(log_path))
                        self.store.insert(conn, row)
                        spawned = True
                else:
                    busy = False
            if not busy:
                break
            time.sleep(_POLL)
        if row.ready or not wait:
            return self._deployment(row, ready=row.ready)
        return self._await_ready(row, timeout=timeout, owned=spawned)

    def remove(self, model: str, node: str) -> None:
        """Stop `model` on `node`; idempotent.

        Like a Kubernetes pod's termination: the instance is first reported not ready ("terminating"),
        so front-ends stop handing it out on their next refresh, and it keeps serving for
        `drain_seconds` the clients that were just given it; then SIGTERM (in-flight requests get the
        server's graceful timeout) and SIGKILL after `stop_grace`. Its memory stays counted until it
        is gone, so nothing new is started into memory it still holds."""
        self._refresh()
        with self.store.write() as conn:
            row = self.store.instance(conn, model, node)
            if row is None:
                # Nothing recorded: already gone is success, but a name we never knew is an error.
                self._spec(node)
                self._model(model)
                return
            draining = row.proc is not None and row.ready and self.drain_seconds > 0
            if draining:
                self.store.set_terminating(conn, model, node)
            else:
                self.store.delete(conn, model, node)
        if draining:
            time.sleep(self.drain_seconds)
        if row.proc is not None:
            stop_process(row.proc, grace=self.stop_grace)
            self.limits.release(node, model, row.proc[0])
        if draining:
            with self.store.write() as conn:
                self.store.delete(conn, model, node, proc=row.proc)
        log.info("removed %s from %s", model, node)

    def node_down(self, name: str) -> None:
        """Take a node down: stop its servers but keep its deployments recorded (not ready)."""
        self._refresh()
        self._spec(name)
        with self.store.write() as conn:
            self.store.set_down(conn, name, True)
            rows = self.store.instances(conn, node=name)
            for row in rows:
                if row.proc is not None:
                    self.store.set_process(conn, row.model, row.node, None)
        self._stop_all([row.proc for row in rows if row.proc is not None])
        log.info("node %s down (%d deployment(s) kept)", name, len(rows))

    def node_up(self, name: str, *, wait: bool = True, timeout: float = 60.0) -> list[Deployment]:
        """Bring a node back with the deployments it had when it went down; idempotent."""
        self._refresh()
        node_spec = self._spec(name)
        started: list[InstanceRow] = []
        with self.store.write() as conn:
            self.store.set_down(conn, name, False)
            for row in self.store.instances(conn, node=name):
                if row.proc is not None and is_alive(row.proc):
                    continue
                spec = self.catalog.models.get(row.model)
                base_path = self.models_dir / (spec.model_file if spec else row.model)
                proc = spawn_server(
                    command=self._limited(node_spec, row.model, python_command(
                        host=node_spec.address, port=row.port, model=row.model, base_path=base_path)),
                    log_path=Path(row.log), cwd=REPO_ROOT, env=self._server_env())
                self.store.set_process(conn, row.model, row.node, proc)
                started.append(replace(row, pid=proc[0], create_time=proc[1], ready=False))
        if not wait or not started:
            return [self._deployment(row, ready=False) for row in started]
        errors: list[str] = []
        result: list[Deployment] = []
        with ThreadPoolExecutor(max_workers=min(8, len(started))) as pool:
            futures = [pool.submit(self._await_ready, row, timeout=timeout, owned=True) for row in started]
            for future in futures:
                try:
                    result.append(future.result())
                except ClusterError as exc:
                    errors.append(str(exc))
        if errors:
            raise ClusterError("; ".join(errors))
        return result

    def reset(self) -> None:
        """Stop every model server of this state file and forget every deployment and down node."""
        with self.store.write() as conn:
            rows = self.store.instances(conn)
            self.store.clear(conn)
        self._stop_all([row.proc for row in rows if row.proc is not None])
        self.limits.cleanup()          # this cluster's now empty cgroups
        log.info("reset: %d deployment(s) stopped", len(rows))

    def close(self) -> None:
        """Release nothing: servers outlive this object by design."""

    # ---- node limits (cgroups) ---------------------------------------------------------------

    @property
    def limits_status(self) -> str:
        """One line: "cgroup v1, enforced, CPU on inference" or "none (why)" (nodes then share the host)."""
        return self.limits.status

    def _open_limits(self, wanted: bool) -> None:
        self._limits_wanted = wanted
        self.limits = CgroupLimits.open(cluster_id(self.state_path), wanted=wanted,
                                        why_off=f"turned off by 'limits: false' in {self.config_path}")
        if not self.limits.enabled and "turned off" not in self.limits.reason:
            if self.limits.reason not in _warned:
                _warned.add(self.limits.reason)
                log.warning("node limits not enforced, nodes share the host's CPU and memory: %s",
                            self.limits.reason)

    @staticmethod
    def _node_limits(spec: LocalNodeSpec) -> NodeLimits:
        return NodeLimits(cpu=spec.cpu_quota, memory=spec.memory)

    def _limited(self, node_spec: LocalNodeSpec, model: str, command: list[str]) -> list[str]:
        """Set the node's limits on its group and return `command` wrapped to run inside it. On a
        node with a CPU ceiling the server runs as many inference calls at once as the node has
        whole cores (at least one), the others first come first served: calls sharing a quarter
        core all finish late. `EDGE_INFERENCE_TURNS=0` lets them all run at once (as before). On
        cgroup v1 the quota applies to the server's inference threads only (`--inference_cgroup`,
        cluster/limits.py), so a throttled node does not also stall its HTTP threads."""
        if not self.limits.enabled:
            return command
        limits = self._node_limits(node_spec)
        try:
            self.limits.apply(node_spec.name, limits)
        except OSError as exc:
            raise ClusterError(f"cannot set the limits of node {node_spec.name!r} "
                               f"({exc.filename}): {exc.strerror or exc}") from exc
        turns = os.environ.get(TURNS_SWITCH, "").strip().lower() not in ("0", "false", "no", "off")
        if limits.cpu is not None and turns:
            command = [*command, "--max_concurrent_inferences", str(max(1, int(limits.cpu)))]
        inference = self.limits.inference_dir(node_spec.name)
        if limits.cpu is not None and inference is not None:
            command = [*command, "--inference_cgroup", str(inference)]
        return self.limits.wrap(command, node_spec.name, model)

    def _failure(self, row: InstanceRow) -> str | None:
        """The reason the row's server failed for its node's limits, or None (alive or other)."""
        if row.proc is None or not self.limits.enabled:
            return None
        if self.limits.oom_kills(row.node, row.model, row.proc[0]) <= 0:
            return None
        spec = self._by_name.get(row.node)
        return oom_reason(spec.memory if spec else None)

    def _mark_failed(self, rows: list[InstanceRow], reasons: dict[tuple[str, str], str]) -> None:
        """Kill what is left of each failed server (gunicorn would respawn an OOM-killed worker)
        and keep its deployment, not ready, with the reason."""
        for row in rows:
            self.limits.kill(row.node, row.model, row.proc[0])
        with self.store.write() as conn:
            for row in rows:
                if self.store.set_failed(conn, row.model, row.node, row.proc, reasons[(row.model, row.node)]):
                    log.warning("%s on %s failed: %s", row.model, row.node, reasons[(row.model, row.node)])
        deadline = time.monotonic() + 1.0       # SIGKILLed processes leave their group at once
        while any(is_alive(row.proc) for row in rows) and time.monotonic() < deadline:
            time.sleep(0.02)
        for row in rows:
            self.limits.release(row.node, row.model, row.proc[0])

    # ---- helpers ----------------------------------------------------------------------------

    def _spec(self, node: str) -> LocalNodeSpec:
        try:
            return self._by_name[node]
        except (KeyError, TypeError):
            raise UnknownNode(f"unknown node {node!r} (known: {', '.join(self._by_name)})") from None

    def _model(self, model: str) -> ModelSpec:
        if model not in self.catalog:
            raise UnknownModel(f"unknown model {model!r} (known: {', '.join(self.catalog.names())})")
        return self.catalog[model]

    def _server_env(self) -> dict[str, str]:
        # A server started from a gunicorn worker (the front-end) must not pick up its parent's
        # gunicorn or socket-activation settings.
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("GUNICORN_", "LISTEN_FD", "LISTEN_PID"))}
        env["PYTHONUNBUFFERED"] = "1"
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
        return env

    def _stop_all(self, procs: list[ProcessId]) -> None:
        if not procs:
            return
        with ThreadPoolExecutor(max_workers=min(16, len(procs))) as pool:
            list(pool.map(lambda proc: stop_process(proc, grace=self.stop_grace), procs))

    def _deployment(self, row: InstanceRow, *, ready: bool) -> Deployment:
        return Deployment(model=row.model, node=row.node, endpoint=row.endpoint, ready=ready,
                          created=row.created)

    def _await_ready(self, row: InstanceRow, *, timeout: float, owned: bool) -> Deployment:
        """Wait until the server answers; clean up and raise ClusterError if it dies or times out."""
        proc = row.proc
        assert proc is not None
        deadline = time.monotonic() + timeout
        where = f"{row.model!r} on node {row.node!r} ({row.endpoint})"
        while True:
            reason = self._failure(row)
            if reason:
                self._mark_failed([row], {(row.model, row.node): reason})
                raise ClusterError(f"model server for {where} {reason} (log: {row.log})")
            if not is_alive(proc):
                with self.store.write() as conn:
                    current = self.store.instance(conn, row.model, row.node)
                    if current is not None and current.node in self.store.down_nodes(conn):
                        raise NodeNotReady(f"node {row.node!r} went down while starting {row.model!r}")
                    self.store.delete(conn, row.model, row.node, proc=proc)
                line = last_log_line(Path(row.log))
                raise ClusterError(f"model server for {where} exited during start-up: "
                                   f"{line or 'no output'} (log: {row.log})")
            if probe_ready(row.address, row.port, row.model, timeout=1.0) and is_alive(proc):
                with self.store.write() as conn:
                    self.store.mark_ready(conn, row.model, row.node, proc)
                log.info("deployed %s on %s at %s", row.model, row.node, row.endpoint)
                return self._deployment(row, ready=True)
            if time.monotonic() >= deadline:
                if owned:
                    with self.store.write() as conn:
                        self.store.delete(conn, row.model, row.node, proc=proc)
                    stop_process(proc, grace=self.stop_grace)
                raise ClusterError(f"model server for {where} did not answer within {timeout:g} s "
                                   f"(log: {row.log})")
            time.sleep(_POLL)
