"""Property-based fuzz of the front-end's HTTP API from frontend/openapi.yaml (schemathesis + Hypothesis).

Every operation of the schema gets generated requests, valid and invalid, with the bearer token and
without it, against the real front-end under gunicorn with a real model server behind it. Whatever
is sent: no 5xx, every status is one the schema documents for that route, the content type and
body match the schema, and invalid input is refused with a 4xx.
"""
from __future__ import annotations

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance, negative_data_rejection,
                                               response_schema_conformance, status_code_conformance)

from conftest_frontend import TOKEN, cluster_settings
from tests.frontend_server import REPO_ROOT, GunicornServer

OPENAPI = REPO_ROOT / "frontend" / "openapi.yaml"
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
# Cases per (operation, mode, token): up to 12 operations x 2 modes x 60, with and without the token: >= 1,000 requests in all (Hypothesis stops early on small input spaces).
PER_COMBINATION = 60


@pytest.fixture
def frontend(local_cluster_factory, tmp_path):
    cluster = local_cluster_factory([{"name": "node-a"}])
    cluster.deploy("half_plus_two", "node-a")
    config = {"cluster": "local", "cluster_settings": cluster_settings(cluster), "token": TOKEN,
              "database": str(tmp_path / "frontend.db"), "refresh_interval": 0.5, "body_timeout": 2.0}
    server = GunicornServer(config, workers=2, log_path=tmp_path / "gunicorn.log")
    server.start()
    yield server
    server.cleanup()


def _operations():
    schema = schemathesis.openapi.from_path(OPENAPI)
    return [result.ok() for result in schema.get_all_operations()]


def test_schema_has_the_routes_the_fuzz_covers():
    labels = {op.label for op in _operations()}
    assert "GET /services" in labels and "POST /services/{model}/{tfs_path}" in labels and len(labels) >= 10


@pytest.mark.parametrize("token", [True, False], ids=["with-token", "without-token"])
def test_fuzz_every_operation(frontend, token):
    session = requests.Session()
    headers = {"Authorization": f"Bearer {TOKEN}"} if token else {}
    sent = 0
    for op in _operations():
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            checks = CHECKS + ([negative_data_rejection] if mode is GenerationMode.NEGATIVE else [])

            @given(case=op.as_strategy(generation_mode=mode))
            @settings(max_examples=PER_COMBINATION, deadline=None, database=None, derandomize=True,
                      phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
            def run(case):
                nonlocal sent
                if token and "Authorization" not in (case.headers or {}):
                    case.headers = {**(case.headers or {}), **headers}
                case.call_and_validate(base_url=frontend.url, session=session, checks=checks, timeout=10)
                sent += 1

            try:
                run()
            except Unsatisfiable:
                # Nothing in this operation can be made invalid (no parameters, no body).
                assert mode is GenerationMode.NEGATIVE, op.label
    assert sent >= 500
    log = frontend.log_path.read_text(errors="replace")
    assert "Traceback" not in log
