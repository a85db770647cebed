"""frontend/openapi.yaml and the app's routes must agree, both ways."""
import re
from pathlib import Path

import pytest
import yaml

from frontend import create_app

OPENAPI = Path(__file__).resolve().parents[2] / "frontend" / "openapi.yaml"
IGNORED = {"/static/<path:filename>"}


@pytest.fixture
def app(tmp_path):
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text("nodes:\n  - {name: n-a, address: 127.254.254.2, memory: 1000, cpu: 1.0, class: small}\n")
    app = create_app({"cluster_settings": {"config_path": str(cluster), "state_path": str(tmp_path / "c.db")},
                      "database": str(tmp_path / "fe.db")})
    yield app
    app.extensions["frontend"].close()


def _openapi_path(rule: str) -> str:
    return re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule)


def test_every_route_is_documented_and_every_documented_route_exists(app):
    served = {}
    for rule in app.url_map.iter_rules():
        if rule.rule in IGNORED:
            continue
        methods = {m.lower() for m in rule.methods} - {"head", "options"}
        served.setdefault(_openapi_path(rule.rule), set()).update(methods)
    doc = yaml.safe_load(OPENAPI.read_text())
    documented = {path: {m for m in item if m in {"get", "put", "post", "delete", "patch"}}
                  for path, item in doc["paths"].items()}
    assert served == documented


def test_documented_path_parameters_exist(app):
    doc = yaml.safe_load(OPENAPI.read_text())
    for path, item in doc["paths"].items():
        names = set(re.findall(r"{([a-z_]+)}", path))
        declared = set()
        for param in item.get("parameters", []) + [p for op in item.values() if isinstance(op, dict)
                                                   for p in op.get("parameters", [])]:
            if "$ref" in param:
                param = doc["components"]["parameters"][param["$ref"].rsplit("/", 1)[1]]
            if param["in"] == "path":
                declared.add(param["name"])
        assert names == declared, path
