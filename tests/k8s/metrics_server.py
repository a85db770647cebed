"""Run metrics-server beside a test control plane and register it as the metrics.k8s.io APIService.

Why this exists: the adapter reads node CPU from metrics.k8s.io, which only an extension API server
behind kube-apiserver's aggregator serves; this runs the real one (built by k8s_tools.py) so the
adapter's CPU path is tested through the real aggregated API.

How it is reached on loopback: the aggregator turns an APIService's Service into a URL
(k8s.io/apiserver pkg/util/proxy ResolveCluster). A ClusterIP Service cannot work here (the
availability controller wants ready endpoints, and endpoints refuse loopback addresses), but an
ExternalName Service resolves to https://<externalName>:<APIService port> with no endpoint check.
So: Service kube-system/metrics-server of type ExternalName `localhost`, APIService
v1beta1.metrics.k8s.io on metrics-server's port with caBundle = the test CA, and metrics-server's
serving certificate signed by that CA for metrics-server.kube-system.svc (the name the aggregator
verifies). kube-apiserver authenticates to it with the front-proxy client certificate
(controlplane.make_pki). metrics-server scrapes https://<node InternalIP>:<the port in the node's
status>/metrics/resource every `resolution` seconds: the kubelet stand-in (kubelet_metrics.py)
serves that for the nodes where it runs model servers; other nodes refuse and get no metrics.
"""
from __future__ import annotations

import base64
import signal
import subprocess
import time

from controlplane import (ControlPlane, ControlPlaneError, _die_with_parent, _openssl, _signal_group, _tail, free_port,
                          wait_ready)

NAMESPACE = "kube-system"
SERVICE = "metrics-server"
API_SERVICE = "v1beta1.metrics.k8s.io"


class MetricsServer:
    """A metrics-server process for `plane`, and the APIService routing metrics.k8s.io to it."""

    def __init__(self, plane: ControlPlane, *, resolution: int = 10) -> None:
        from kubernetes import client, config

        self.plane, self.resolution = plane, resolution
        self.port = free_port()
        self.unused_port = free_port()      # where nothing listens: kubelets without a port, broken APIServices
        self.log = plane.run_dir / "metrics-server.log"
        self.process: subprocess.Popen | None = None
        self._api = config.new_client_from_config(config_file=str(plane.kubeconfig))
        self._core = client.CoreV1Api(self._api)
        self._registration = client.ApiregistrationV1Api(self._api)

    # ---- the process ----

    def start(self, *, timeout: float = 60.0) -> "MetricsServer":
        """Start metrics-server, register the APIService, wait until the aggregator reports it Available."""
        binary = self.plane.bin_dir / "metrics-server"
        if not binary.is_file():
            raise ControlPlaneError(f"metrics-server missing in {self.plane.bin_dir}; build it with `make k8s-tools`")
        pki = self.plane.run_dir / "pki"
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                 "-keyout", "metrics-server.key", "-out", "metrics-server.crt", "-days", "3",
                 "-CA", "ca.crt", "-CAkey", "ca.key", "-subj", f"/CN={SERVICE}.{NAMESPACE}.svc",
                 "-addext", f"subjectAltName=DNS:{SERVICE}.{NAMESPACE}.svc,DNS:localhost,IP:127.0.0.1",
                 "-addext", "extendedKeyUsage=serverAuth", "-addext", "basicConstraints=critical,CA:FALSE", cwd=pki)
        (pki / "metrics-server.key").chmod(0o600)
        kubeconfig = str(self.plane.kubeconfig)
        argv = [str(binary), "--bind-address=127.0.0.1", f"--secure-port={self.port}",
                f"--tls-cert-file={pki / 'metrics-server.crt'}", f"--tls-private-key-file={pki / 'metrics-server.key'}",
                f"--kubeconfig={kubeconfig}", f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                f"--metric-resolution={self.resolution}s", "--kubelet-request-timeout=3s",
                "--kubelet-preferred-address-types=InternalIP", "--kubelet-use-node-status-port",
                f"--kubelet-port={self.unused_port}",    # nodes without a stand-in kubelet: refused at once
                "--kubelet-insecure-tls",                # the stand-in kubelets' certificates are self-signed
                "--v=1"]
        with open(self.log, "ab") as handle:
            self.process = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            cwd=self.plane.run_dir, start_new_session=True, preexec_fn=_die_with_parent)
        try:
            wait_ready("metrics-server", f"https://127.0.0.1:{self.port}/livez", self.process, self.log,
                       time.monotonic() + timeout, self.plane._ssl_context(admin=False))
            self.register()
            self.wait_available(timeout=timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Remove the APIService and kill metrics-server."""
        try:
            self.unregister()
        except Exception:
            pass
        if self.process is not None and self.process.poll() is None:
            _signal_group(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                _signal_group(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
        self._api.close()

    # ---- the APIService ----

    def register(self, *, port: int | None = None) -> None:
        """Create the ExternalName Service and the APIService pointing at this metrics-server
        (or at `port` on localhost, to make the APIService unavailable)."""
        from kubernetes.client.rest import ApiException

        service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": SERVICE, "namespace": NAMESPACE},
                   "spec": {"type": "ExternalName", "externalName": "localhost"}}
        ca = (self.plane.run_dir / "pki" / "ca.crt").read_bytes()
        api_service = {
            "apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService", "metadata": {"name": API_SERVICE},
            "spec": {"group": "metrics.k8s.io", "version": "v1beta1", "groupPriorityMinimum": 100,
                     "versionPriority": 100, "caBundle": base64.b64encode(ca).decode(),
                     "service": {"name": SERVICE, "namespace": NAMESPACE, "port": port or self.port}}}
        try:
            self._core.create_namespaced_service(NAMESPACE, service)
        except ApiException as exc:
            if exc.status != 409:
                raise
        self._registration.create_api_service(api_service)

    def unregister(self) -> None:
        """Delete the APIService (metrics.k8s.io is no longer served) and its Service."""
        from kubernetes.client.rest import ApiException

        for delete in (lambda: self._registration.delete_api_service(API_SERVICE),
                       lambda: self._core.delete_namespaced_service(SERVICE, NAMESPACE)):
            try:
                delete()
            except ApiException as exc:
                if exc.status != 404:
                    raise

    def available(self) -> bool:
        """Return True when the aggregator reports the APIService Available."""
        status = self._registration.read_api_service_status(API_SERVICE).status
        return any(c.type == "Available" and c.status == "True" for c in (status.conditions or []) if status)

    def wait_available(self, *, timeout: float = 60.0) -> None:
        """Wait until the APIService is Available; raise ControlPlaneError naming its condition if not."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.available():
                return
            time.sleep(0.3)
        status = self._registration.read_api_service_status(API_SERVICE).status
        raise ControlPlaneError(f"APIService {API_SERVICE} not Available after {timeout:g}s: {status.conditions}; "
                                f"metrics-server log:\n{_tail(self.log)}")

    def node_metrics(self) -> dict[str, str]:
        """Return node name -> CPU usage as metrics.k8s.io reports it through kube-apiserver."""
        from kubernetes import client

        data = client.CustomObjectsApi(self._api).list_cluster_custom_object("metrics.k8s.io", "v1beta1", "nodes")
        return {item["metadata"]["name"]: item["usage"]["cpu"] for item in data.get("items") or []}


    def pod_metrics(self, namespace: str) -> dict[str, float]:
        """Return pod name -> CPU cores (its containers summed) as metrics.k8s.io reports for `namespace`."""
        from kubernetes import client

        from cluster.k8s_state import parse_cpu

        data = client.CustomObjectsApi(self._api).list_namespaced_custom_object("metrics.k8s.io", "v1beta1",
                                                                                 namespace, "pods")
        return {item["metadata"]["name"]: sum(parse_cpu(c["usage"]["cpu"]) for c in item.get("containers") or [])
                for item in data.get("items") or []}
