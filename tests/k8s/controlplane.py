"""Start and stop a throwaway Kubernetes control plane on loopback, for tests, benches and people.

Why this exists: the Kubernetes adapter, the front-end and the back-end must be proven against a
real API server, with no Docker engine and nothing downloaded. This module runs the binaries that
tests/k8s/k8s_tools.py compiled (etcd, kube-apiserver, kube-controller-manager, kube-scheduler and
kwok for simulated kubelets), each in its own process group, bound to 127.0.0.1 on free-picked
ports, with a fresh CA, serving and admin client certificates (openssl) and a service-account
key, all in one run directory. Several control planes can run side by side. Every process is
killed at stop(), at interpreter exit, and (for the pytest fixture) when the parent dies.

Use it from Python (`ControlPlane.start(...)` / `.stop()`, or the `control_plane` fixture in
tests/k8s/conftest.py) or from the command line:

    python tests/k8s/controlplane.py up [--dir DIR] [--nodes N]    # prints the kubeconfig path
    python tests/k8s/controlplane.py down --dir DIR
    python tests/k8s/controlplane.py run [--nodes N] -- CMD ...    # KUBECONFIG set for CMD
"""
from __future__ import annotations

import argparse
import atexit
import ctypes
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import k8s_tools as build  # noqa: E402  (tests/k8s/k8s_tools.py: where the binaries are)

KWOK_STAGES = HERE / "kwok-stages.yaml"
KWOK_ANNOTATION = "kwok.x-k8s.io/node"
NOT_READY_LABEL = "node-not-ready.stage.kwok.x-k8s.io"
SERVICE_CIDR = "127.96.0.0/16"      # service ClusterIPs: loopback, never assigned to an interface
POD_CIDR = "127.64.0.0/14"          # pod IPs handed out by kwok: loopback, room for 262k pods
DEFAULT_NODE_PREFIX = "127.0.1"     # node InternalIPs 127.0.1.x, as the local cluster uses
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")


class ControlPlaneError(RuntimeError):
    """The control plane could not be built, started or reached; the message says why."""


# -- small helpers -------------------------------------------------------------------------------

def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:
    """In the child before exec: get SIGKILL when the parent dies (Linux prctl PR_SET_PDEATHSIG)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _openssl(*args: str, cwd: Path) -> None:
    openssl = shutil.which("openssl")
    if not openssl:
        raise ControlPlaneError("openssl is missing (Debian package `openssl`): cannot make the test CA")
    proc = subprocess.run([openssl, *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ControlPlaneError(f"openssl {args[0]} failed: {proc.stderr.strip()}")


def make_pki(directory: Path, *, service_ip: str) -> None:
    """Write a throwaway CA, apiserver serving cert, admin client cert, front-proxy CA and client cert,
    and service-account key pair."""
    directory.mkdir(parents=True, exist_ok=True)
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "3",
             "-subj", "/CN=edge-inference-test-ca", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature", cwd=directory)
    sans = ",".join(["IP:127.0.0.1", f"IP:{service_ip}", "DNS:localhost", "DNS:kubernetes", "DNS:kubernetes.default",
                     "DNS:kubernetes.default.svc", "DNS:kubernetes.default.svc.cluster.local"])
    _openssl("req", "-x509", *ec, "-keyout", "apiserver.key", "-out", "apiserver.crt", "-days", "3",
             "-CA", "ca.crt", "-CAkey", "ca.key", "-subj", "/CN=kube-apiserver",
             "-addext", f"subjectAltName={sans}", "-addext", "extendedKeyUsage=serverAuth",
             "-addext", "basicConstraints=critical,CA:FALSE", cwd=directory)
    _openssl("req", "-x509", *ec, "-keyout", "admin.key", "-out", "admin.crt", "-days", "3",
             "-CA", "ca.crt", "-CAkey", "ca.key", "-subj", "/O=system:masters/CN=edge-test-admin",
             "-addext", "extendedKeyUsage=clientAuth", "-addext", "basicConstraints=critical,CA:FALSE",
             cwd=directory)
    # The aggregator's front proxy: kube-apiserver presents front-proxy-client.crt when it proxies to
    # an extension API server (metrics-server), which trusts it through front-proxy-ca.crt.
    _openssl("req", "-x509", *ec, "-keyout", "front-proxy-ca.key", "-out", "front-proxy-ca.crt", "-days", "3",
             "-subj", "/CN=edge-inference-test-front-proxy-ca", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature", cwd=directory)
    _openssl("req", "-x509", *ec, "-keyout", "front-proxy-client.key", "-out", "front-proxy-client.crt",
             "-days", "3", "-CA", "front-proxy-ca.crt", "-CAkey", "front-proxy-ca.key", "-subj", "/CN=front-proxy-client",
             "-addext", "extendedKeyUsage=clientAuth", "-addext", "basicConstraints=critical,CA:FALSE", cwd=directory)
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "sa.key", cwd=directory)
    _openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=directory)
    for key in directory.glob("*.key"):
        key.chmod(0o600)


def write_kubeconfig(path: Path, *, server: str, ca: Path, cert: Path, key: Path, user: str = "admin") -> None:
    """Write a kubeconfig (certificate paths, not embedded data) for `server`."""
    text = f"""apiVersion: v1
kind: Config
clusters:
- name: edge-test
  cluster:
    server: {server}
    certificate-authority: {ca}
users:
- name: {user}
  user:
    client-certificate: {cert}
    client-key: {key}
contexts:
- name: edge-test
  context:
    cluster: edge-test
    user: {user}
current-context: edge-test
"""
    path.write_text(text)
    path.chmod(0o600)


def _service_ip(cidr: str) -> str:
    base, _ = cidr.split("/")
    parts = base.split(".")
    parts[-1] = str(int(parts[-1]) + 1)
    return ".".join(parts)


# -- the control plane ---------------------------------------------------------------------------

@dataclass
class Component:
    name: str
    argv: list[str]
    log: Path
    health: str | None                 # URL answering 200 when healthy, or None
    process: subprocess.Popen | None = None


@dataclass
class ControlPlane:
    """A running control plane: its run directory, admin kubeconfig, ports and processes."""

    run_dir: Path
    bin_dir: Path
    ports: dict[str, int] = field(default_factory=dict)
    components: dict[str, Component] = field(default_factory=dict)
    owns_run_dir: bool = False
    detached: bool = False              # True for the CLI: processes outlive this Python process
    extra_args: dict[str, list[str]] = field(default_factory=dict)
    kwok_stages: str | None = None      # kwok Stage documents replacing kwok-stages.yaml

    @property
    def kubeconfig(self) -> Path:
        """Path of the admin kubeconfig (O=system:masters)."""
        return self.run_dir / "admin.kubeconfig"

    @property
    def server(self) -> str:
        """URL of the API server."""
        return f"https://127.0.0.1:{self.ports['apiserver']}"

    # ---- start ----

    @classmethod
    def start(cls, *, run_dir: str | Path | None = None, bin_dir: str | Path | None = None,
              detached: bool = False, timeout: float = 120.0, kwok_options: dict | None = None,
              extra_args: dict[str, list[str]] | None = None, kwok_stages: str | None = None,
              log: "callable | None" = None) -> "ControlPlane":
        """Start etcd, the API server, the controller-manager, the scheduler and kwok; wait until ready.

        `kwok_options` overrides kwok's KwokConfiguration options (e.g. nodeLeaseDurationSeconds);
        `extra_args` adds command-line flags per component name (e.g. {"kube-apiserver": [...]});
        `kwok_stages` replaces the Stage documents of kwok-stages.yaml (e.g. to add start delays)."""
        bin_path = Path(bin_dir) if bin_dir else build.bin_dir()
        missing = [name for name in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
                   if not (bin_path / name).is_file()]
        if missing:
            raise ControlPlaneError(f"control-plane binaries missing in {bin_path}: {', '.join(missing)}; "
                                    "build them with `make k8s-tools` (python tests/k8s/k8s_tools.py)")
        owns = run_dir is None
        directory = Path(tempfile.mkdtemp(prefix="edge-k8s-")) if owns else Path(run_dir)
        directory.mkdir(parents=True, exist_ok=True)
        plane = cls(run_dir=directory.resolve(), bin_dir=bin_path, owns_run_dir=owns, detached=detached)
        plane.extra_args = {name: list(flags) for name, flags in (extra_args or {}).items()}
        plane.kwok_stages = kwok_stages
        unknown = set(plane.extra_args) - set(COMPONENTS)
        if unknown:
            raise ControlPlaneError(f"extra_args for unknown components: {', '.join(sorted(unknown))}")
        _LIVE.add(plane)
        say = log or (lambda message: None)
        try:
            plane._start(timeout=timeout, kwok_options=kwok_options or {}, say=say)
        except BaseException:
            plane.stop(keep_logs=True)
            raise
        return plane

    def _start(self, *, timeout: float, kwok_options: dict, say) -> None:
        deadline = time.monotonic() + timeout
        pki = self.run_dir / "pki"
        make_pki(pki, service_ip=_service_ip(SERVICE_CIDR))
        say("certificates written")
        for attempt in range(3):            # a free-picked port can be taken by someone else meanwhile
            self.ports = {name: free_port() for name in ("etcd", "etcd_peer", "apiserver", "controller_manager",
                                                         "scheduler", "kwok")}
            self._write_configs(pki, kwok_options)
            self._define_components(pki)
            try:
                self._launch("etcd", deadline)
                say(f"etcd ready on 127.0.0.1:{self.ports['etcd']}")
                self._launch("kube-apiserver", deadline)
                say(f"kube-apiserver ready on {self.server}")
                break
            except _PortTaken:
                self._stop_processes()
                continue
        else:
            raise ControlPlaneError("could not find free ports for etcd and the API server after 3 attempts")
        for name in ("kube-controller-manager", "kube-scheduler", "kwok"):
            self._spawn(name)
        for name in ("kube-controller-manager", "kube-scheduler", "kwok"):
            self._wait_healthy(name, deadline)
            say(f"{name} ready")
        self._write_state()

    def _write_configs(self, pki: Path, kwok_options: dict) -> None:
        write_kubeconfig(self.kubeconfig, server=self.server, ca=pki / "ca.crt", cert=pki / "admin.crt",
                         key=pki / "admin.key")
        options = {"cidr": POD_CIDR, "nodeIP": "127.0.0.1", "nodeLeaseDurationSeconds": 40,
                   "nodeLeaseParallelism": 16, "nodePlayStageParallelism": 16, "podPlayStageParallelism": 16,
                   "serverAddress": f"127.0.0.1:{self.ports['kwok']}", **kwok_options}
        config = ["apiVersion: config.kwok.x-k8s.io/v1alpha1", "kind: KwokConfiguration", "options:"]
        config += [f"  {key}: {json.dumps(value)}" for key, value in options.items()]
        stages = self.kwok_stages or KWOK_STAGES.read_text()
        (self.run_dir / "kwok.yaml").write_text("\n".join(config) + "\n---\n" + stages)

    def _define_components(self, pki: Path) -> None:
        run, bins, ports = self.run_dir, self.bin_dir, self.ports
        kubeconfig = str(self.kubeconfig)
        etcd_url = f"http://127.0.0.1:{ports['etcd']}"
        peer_url = f"http://127.0.0.1:{ports['etcd_peer']}"
        self.components = {
            "etcd": Component("etcd", [
                str(bins / "etcd"), "--name=edge-test", f"--data-dir={run / 'etcd-data'}",
                f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=edge-test={peer_url}", "--initial-cluster-state=new",
                "--unsafe-no-fsync", "--quota-backend-bytes=4294967296", "--log-level=warn",
            ], run / "etcd.log", f"{etcd_url}/health"),
            "kube-apiserver": Component("kube-apiserver", [
                str(bins / "kube-apiserver"), f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={ports['apiserver']}",
                f"--cert-dir={run / 'apiserver-certs'}",
                f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                f"--service-account-key-file={pki / 'sa.pub'}", f"--service-account-signing-key-file={pki / 'sa.key'}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                "--authorization-mode=Node,RBAC", f"--service-cluster-ip-range={SERVICE_CIDR}",
                f"--requestheader-client-ca-file={pki / 'front-proxy-ca.crt'}",
                "--requestheader-allowed-names=front-proxy-client", "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group", "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--proxy-client-cert-file={pki / 'front-proxy-client.crt'}",
                f"--proxy-client-key-file={pki / 'front-proxy-client.key'}",
                "--endpoint-reconciler-type=none",      # the default endpoints reject loopback addresses
                "--max-requests-inflight=1000", "--max-mutating-requests-inflight=500",
                "--profiling=false", "--v=1",
            ], run / "kube-apiserver.log", None),
            "kube-controller-manager": Component("kube-controller-manager", [
                str(bins / "kube-controller-manager"), f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}", f"--authorization-kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1", f"--secure-port={ports['controller_manager']}",
                f"--cert-dir={run / 'controller-manager-certs'}", "--leader-elect=false",
                f"--service-account-private-key-file={pki / 'sa.key'}", f"--root-ca-file={pki / 'ca.crt'}",
                f"--cluster-signing-cert-file={pki / 'ca.crt'}", f"--cluster-signing-key-file={pki / 'ca.key'}",
                "--use-service-account-credentials=false", f"--service-cluster-ip-range={SERVICE_CIDR}",
                # Pod IPs are loopback, which EndpointSlice validation refuses; nothing here reads
                # endpoints (clients get nodeIP:nodePort), so these controllers would only retry forever.
                "--controllers=*,-endpoints-controller,-endpointslice-controller,-endpointslice-mirroring-controller",
                "--kube-api-qps=200", "--kube-api-burst=400",
                "--concurrent-deployment-syncs=20", "--concurrent-replicaset-syncs=20",
                "--profiling=false", "--v=1",
            ], run / "kube-controller-manager.log", f"https://127.0.0.1:{ports['controller_manager']}/healthz"),
            "kube-scheduler": Component("kube-scheduler", [
                str(bins / "kube-scheduler"), f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}", f"--authorization-kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1", f"--secure-port={ports['scheduler']}",
                f"--cert-dir={run / 'scheduler-certs'}", "--leader-elect=false",
                "--kube-api-qps=200", "--kube-api-burst=400", "--profiling=false", "--v=1",
            ], run / "kube-scheduler.log", f"https://127.0.0.1:{ports['scheduler']}/healthz"),
            "kwok": Component("kwok", [
                str(bins / "kwok"), f"--kubeconfig={kubeconfig}", f"--config={run / 'kwok.yaml'}",
                "--manage-all-nodes=false", f"--manage-nodes-with-annotation-selector={KWOK_ANNOTATION}=fake",
            ], run / "kwok.log", f"http://127.0.0.1:{ports['kwok']}/healthz"),
        }

    def _spawn(self, name: str) -> None:
        component = self.components[name]
        component.argv = [*component.argv, *self.extra_args.get(name, [])]
        handle = open(component.log, "ab")
        env = {key: value for key, value in os.environ.items() if not key.startswith(("KUBECONFIG", "ETCD"))}
        env["HOME"] = str(self.run_dir)      # kwok and kubectl look for ~/.kube and ~/.kwok
        component.process = subprocess.Popen(
            component.argv, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.run_dir,
            env=env, start_new_session=True, preexec_fn=None if self.detached else _die_with_parent)
        handle.close()

    def _launch(self, name: str, deadline: float) -> None:
        self._spawn(name)
        self._wait_healthy(name, deadline)

    def _wait_healthy(self, name: str, deadline: float) -> None:
        component = self.components[name]
        wait_ready(name, component.health or f"{self.server}/readyz", component.process, component.log, deadline,
                   self._ssl_context(admin=name == "kube-apiserver"))

    def _ssl_context(self, *, admin: bool) -> ssl.SSLContext:
        pki = self.run_dir / "pki"
        if admin:
            context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
            context.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
            return context
        context = ssl.create_default_context()       # self-signed serving certs of the controllers
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context

    def client_kubeconfig(self, user: str, *, group: str = "system:masters") -> Path:
        """Write a kubeconfig for a new client certificate (CN=user, O=group); return its path."""
        pki = self.run_dir / "pki"
        key, cert = f"{user}.key", f"{user}.crt"
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                 "-keyout", key, "-out", cert, "-days", "3", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-subj", f"/O={group}/CN={user}", "-addext", "extendedKeyUsage=clientAuth",
                 "-addext", "basicConstraints=critical,CA:FALSE", cwd=pki)
        (pki / key).chmod(0o600)
        path = self.run_dir / f"{user}.kubeconfig"
        write_kubeconfig(path, server=self.server, ca=pki / "ca.crt", cert=pki / cert, key=pki / key, user=user)
        return path

    def _write_state(self) -> None:
        state = {"kubeconfig": str(self.kubeconfig), "server": self.server, "ports": self.ports,
                 "bin_dir": str(self.bin_dir),
                 "pids": {name: c.process.pid for name, c in self.components.items() if c.process}}
        (self.run_dir / "state.json").write_text(json.dumps(state, indent=2))

    # ---- stop ----

    def alive(self) -> dict[str, bool]:
        """Return, per component, whether its process is still running."""
        return {name: bool(c.process and c.process.poll() is None) for name, c in self.components.items()}

    def _stop_processes(self, grace: float = 5.0) -> None:
        running = [c for c in reversed(list(self.components.values())) if c.process and c.process.poll() is None]
        for component in running:
            _signal_group(component.process.pid, signal.SIGTERM)
        end = time.monotonic() + grace
        for component in running:
            try:
                component.process.wait(timeout=max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for component in self.components.values():
            if component.process is not None:
                _signal_group(component.process.pid, signal.SIGKILL)   # the group: children too
                try:
                    component.process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass

    def stop(self, *, keep_logs: bool = False) -> None:
        """Kill every process of the control plane; delete the run directory we created unless keep_logs."""
        self._stop_processes()
        _LIVE.discard(self)
        if self.owns_run_dir and not keep_logs:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def logs(self, *, lines: int = 30) -> str:
        """Return the last lines of every component's log (for failure reports)."""
        return "\n".join(f"--- {c.log.name}\n{_tail(c.log, lines)}" for c in self.components.values())

    def __hash__(self) -> int:
        return id(self)

    def __eq__(self, other: object) -> bool:
        return self is other


class _PortTaken(ControlPlaneError):
    """A component could not bind its port (another process took it first): start again elsewhere."""


def wait_ready(name: str, url: str, process: subprocess.Popen | None, log: Path, deadline: float,
               context: ssl.SSLContext | None = None) -> None:
    """Poll `url` until it answers 200; raise ControlPlaneError (with the log's tail) when the
    process exits first or `deadline` (time.monotonic()) passes."""
    last = ""
    while time.monotonic() < deadline:
        code = process.poll() if process else None
        if code is not None:
            tail = _tail(log)
            if "address already in use" in tail:
                raise _PortTaken(f"{name}: address already in use")
            raise ControlPlaneError(f"{name} exited with code {code} at start-up; last log lines:\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=2, context=context if url.startswith("https") else None) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError, ssl.SSLError) as exc:
            last = str(exc)
        time.sleep(0.2)
    raise ControlPlaneError(f"{name} not ready in time ({url}: {last}); last log lines:\n{_tail(log)}")


def _tail(path: Path, lines: int = 30) -> str:
    try:
        data = path.read_bytes()[-20000:].decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


_LIVE: set[ControlPlane] = set()


@atexit.register
def _stop_all() -> None:
    """Stop every non-detached control plane still running when the interpreter exits."""
    for plane in list(_LIVE):
        if not plane.detached:
            plane.stop(keep_logs=True)


# -- simulated nodes -----------------------------------------------------------------------------

def node_manifest(name: str, *, address: str, cpu: float = 4.0, memory_kib: int = 8 * 1024 * 1024,
                  pods: int = 110, labels: dict[str, str] | None = None) -> dict:
    """Return a KWOK-managed Node object with a loopback InternalIP and the given capacity."""
    capacity = {"cpu": f"{int(round(cpu * 1000))}m", "memory": f"{memory_kib}Ki", "pods": str(pods)}
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "annotations": {KWOK_ANNOTATION: "fake"},
                     "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                                "kubernetes.io/arch": "amd64", "type": "kwok", **(labels or {})}},
        "spec": {},
        "status": {"allocatable": capacity, "capacity": dict(capacity),
                   "addresses": [{"type": "InternalIP", "address": address}, {"type": "Hostname", "address": name}]},
    }


def node_addresses(count: int, *, prefix: str = DEFAULT_NODE_PREFIX, first: int = 1) -> list[str]:
    """Return `count` loopback addresses prefix.first, prefix.first+1, ... (spilling into the next /24s)."""
    a, b, c = (int(part) for part in prefix.split("."))
    if a != 127:
        raise ValueError(f"node addresses must be loopback (127.x.y): {prefix}")
    out = []
    for index in range(first, first + count):
        block, host = divmod(index - 1, 254)
        out.append(f"127.{b}.{c + block}.{host + 1}")
    if c + (first + count - 2) // 254 > 255:
        raise ValueError("too many nodes for the loopback prefix")
    return out


def _cli_nodes(plane: ControlPlane, count: int) -> None:
    kubectl = plane.bin_dir / "kubectl"
    items = [node_manifest(f"kwok-node-{i}", address=address)
             for i, address in enumerate(node_addresses(count), start=1)]
    payload = json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
    proc = subprocess.run([str(kubectl), f"--kubeconfig={plane.kubeconfig}", "create", "-f", "-"],
                          input=payload, text=True, capture_output=True)
    if proc.returncode != 0:
        raise ControlPlaneError(f"kubectl create nodes failed: {proc.stderr.strip()}")


def stop_detached(run_dir: Path) -> list[str]:
    """Stop a control plane started with `up`: kill each recorded process group whose binary matches."""
    state_file = run_dir / "state.json"
    if not state_file.is_file():
        raise ControlPlaneError(f"no control plane recorded in {run_dir} (state.json missing)")
    state = json.loads(state_file.read_text())
    bins = Path(state["bin_dir"])
    stopped = []
    for name, pid in state["pids"].items():
        try:
            exe = os.readlink(f"/proc/{pid}/exe")
        except OSError:
            continue
        if Path(exe).name.removesuffix(" (deleted)") != name or not exe.startswith(str(bins)):
            continue                        # the pid was reused by something else: leave it alone
        _signal_group(pid, signal.SIGTERM)
        stopped.append(name)
    end = time.monotonic() + 10
    for name, pid in state["pids"].items():
        while time.monotonic() < end and Path(f"/proc/{pid}").exists():
            time.sleep(0.1)
        if Path(f"/proc/{pid}").exists() and name in stopped:
            _signal_group(pid, signal.SIGKILL)
    state_file.unlink()
    return stopped


def main(argv: Iterable[str] | None = None) -> int:
    """Command-line entry: up, down, run."""
    parser = argparse.ArgumentParser(prog="tests/k8s/controlplane.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start a control plane that keeps running; print its kubeconfig")
    up.add_argument("--dir", help="run directory (default: a new temp directory)")
    up.add_argument("--nodes", type=int, default=0, help="create N kwok nodes 127.0.1.1..N")
    down = sub.add_parser("down", help="stop the control plane recorded in --dir")
    down.add_argument("--dir", required=True)
    run = sub.add_parser("run", help="start a control plane, run a command with KUBECONFIG set, stop it")
    run.add_argument("--nodes", type=int, default=0)
    run.add_argument("cmd", nargs=argparse.REMAINDER)
    args = parser.parse_args(list(argv) if argv is not None else None)
    say = lambda message: print(f"[controlplane] {message}", file=sys.stderr, flush=True)  # noqa: E731
    try:
        if args.command == "down":
            stopped = stop_detached(Path(args.dir))
            say(f"stopped: {', '.join(stopped) or 'nothing was running'}")
            return 0
        if args.command == "up":
            run_dir = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="edge-k8s-"))
            plane = ControlPlane.start(run_dir=run_dir, detached=True, log=say)
            if args.nodes:
                _cli_nodes(plane, args.nodes)
            print(plane.kubeconfig)
            say(f"stop it with: python tests/k8s/controlplane.py down --dir {plane.run_dir}")
            return 0
        command = [part for part in args.cmd if part != "--"]
        if not command:
            parser.error("run needs a command after --")
        plane = ControlPlane.start(log=say)
        try:
            if args.nodes:
                _cli_nodes(plane, args.nodes)
            env = dict(os.environ, KUBECONFIG=str(plane.kubeconfig), PATH=f"{plane.bin_dir}{os.pathsep}{os.environ['PATH']}")
            return subprocess.call(command, env=env)
        finally:
            plane.stop()
    except ControlPlaneError as exc:
        print(f"controlplane: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
