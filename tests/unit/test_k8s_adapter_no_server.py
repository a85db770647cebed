"""The Kubernetes adapter with no API server at all: nothing listening, or no kubeconfig.

Everything that needs an API server is tested against a real control plane in tests/k8s/
(test_kube_adapter.py, test_kube_adapter_more.py, test_kube_metrics.py); the one behaviour only
a stand-in can produce (410 Gone) is in test_k8s_adapter_fake_only.py.
"""
from __future__ import annotations

import socket

import pytest
import yaml

from cluster import ClusterUnavailable
from cluster.kubernetes import CacheSettings, KubernetesCluster


def test_unreachable_api_is_cluster_unavailable(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]           # closed again: nothing listens there
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}))
    cluster = KubernetesCluster(kubeconfig=kubeconfig, cache=CacheSettings(sync_timeout_seconds=20,
                                                                          backoff_initial_seconds=0.05))
    try:
        with pytest.raises(ClusterUnavailable, match=f"127.0.0.1:{port}") as info:
            cluster.nodes()
        assert info.value.__cause__ is not None
    finally:
        cluster.close()


def test_missing_kubeconfig_is_cluster_unavailable(tmp_path):
    with pytest.raises(ClusterUnavailable, match="configuration"):
        KubernetesCluster(kubeconfig=tmp_path / "nope")
