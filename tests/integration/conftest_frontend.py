"""Fixtures for the front-end's integration tests (imported by tests/integration/test_frontend*.py).

`make_frontend(nodes=None, deploy=(), **settings)` builds a local cluster on unique loopback
addresses (the shared `local_cluster_factory`), deploys real model servers, and serves the
front-end on a free loopback port in a thread. Everything is stopped at teardown.
"""
from __future__ import annotations

import http.client
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit

import pytest

from frontend import create_app
from tests.frontend_server import ServerThread
from tests.waiting import wait_for  # noqa: F401  (re-exported for the front-end tests)

TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class Frontend:
    cluster: Any
    url: str
    settings: dict
    server: Any = None

    @property
    def host_port(self) -> tuple[str, int]:
        parts = urlsplit(self.url)
        return parts.hostname, parts.port


def cluster_settings(cluster) -> dict:
    """Return the cluster_settings that open the same local cluster as `cluster`."""
    return {"config_path": str(cluster.config_path), "state_path": str(cluster.state_path),
            "models_dir": str(cluster.models_dir), "catalog_path": str(cluster.catalog_path)}


def raw_request(url: str, method: str, path: str, *, body: bytes | None = None,
                headers: dict | None = None) -> tuple[int, dict, bytes]:
    """Send a request with `path` exactly as given (no client-side normalisation of '..' or '%')."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for key, value in (headers or {}).items():
            conn.putheader(key, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


@pytest.fixture
def make_frontend(local_cluster_factory, tmp_path: Path) -> Iterator[Callable[..., Frontend]]:
    """Yield make(nodes=None, deploy=(), **settings) -> Frontend served in a thread."""
    servers: list[ServerThread] = []

    def make(nodes: list[dict] | None = None, deploy: tuple = (), **settings) -> Frontend:
        cluster = local_cluster_factory(nodes)
        for model, node in deploy:
            cluster.deploy(model, node)
        config = {"cluster": "local", "cluster_settings": cluster_settings(cluster),
                  "database": str(tmp_path / f"frontend-{len(servers)}.db"), "token": TOKEN,
                  "refresh_interval": 0.2, **settings}
        server = ServerThread(create_app(config)).start()
        servers.append(server)
        return Frontend(cluster=cluster, url=server.url, settings=config, server=server)

    yield make
    for server in servers:
        server.stop()


def predict_body(values: list) -> bytes:
    return json.dumps({"instances": values}).encode()
