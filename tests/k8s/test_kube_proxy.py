"""End to end on Kubernetes: client -> front-end proxy -> model server at nodeIP:nodePort.

The stand-in (tests/k8s/standin.py) plays kubelet + kube-proxy: for each Ready pod KWOK reports it
starts the real model server on the pod's node address and its Service's NodePort, so a prediction
travels through state read from the real API server.
"""
from __future__ import annotations

import time

import requests

from cluster.k8s_render import object_name
from k8s_support import FRONTEND_TOKEN, wait_for

MODEL = "half_plus_two"
AUTH = {"Authorization": f"Bearer {FRONTEND_TOKEN}"}
PREDICT = f"/services/{MODEL}/v1/models/{MODEL}:predict"


def test_prediction_through_the_proxy_to_the_pods_node(kube, standin_factory, frontend_factory):
    node_a, node_b = kube.add_node("a"), kube.add_node("b")
    standin = standin_factory()
    cluster = kube.cluster()
    dep = cluster.deploy(MODEL, node_b)
    endpoint = standin.wait_serving(MODEL, node_b, timeout=60)
    assert endpoint == dep.endpoint                   # the server sits where Kubernetes says it is
    assert endpoint.split(":")[0] == kube.nodes[node_b]
    frontend = frontend_factory()
    started = time.time() - 1

    def predict() -> requests.Response | None:
        answer = requests.post(frontend.url + PREDICT, json={"instances": [1.0, 2.0, 5.0]},
                               headers={"X-Client-Zone": "zone-1", "X-Client-Latency": "0.02"}, timeout=30)
        return answer if answer.status_code == 200 else None

    answer = wait_for(predict, timeout=30, what="a 200 prediction through the front-end")
    assert answer.json() == {"predictions": [2.5, 3.0, 4.5]}

    def served() -> list:
        # The worker that answered writes its statistics within stats_flush_interval; a read on
        # another worker flushes only its own buffer.
        rows = requests.get(f"{frontend.url}/stats/requests", params={"since": started}, headers=AUTH,
                            timeout=10).json()["requests"]
        return [r for r in rows if r["model"] == MODEL and r["status"] == 200]

    rows = wait_for(served, timeout=10, what="the prediction's statistics row")
    assert all(r["node"] == node_b for r in rows)
    assert rows[-1]["zone"] == "zone-1"


def test_unknown_model_404_and_on_demand_provisioning_through_kubernetes(kube, standin_factory, frontend_factory):
    node_a = kube.add_node("a", memory_kb=500_000)
    standin = standin_factory()
    frontend = frontend_factory()

    unknown = requests.post(frontend.url + "/services/no_such_model/v1/models/no_such_model:predict",
                            json={"instances": [1.0]}, timeout=10)
    assert unknown.status_code == 404 and "error" in unknown.json()
    assert kube.apps.list_namespaced_deployment(kube.namespace).items == []

    first = requests.post(frontend.url + PREDICT, json={"instances": [4.0]}, timeout=30)
    assert first.status_code == 503, first.text      # known model, nothing deployed: provision
    assert int(first.headers["Retry-After"]) >= 1
    name = object_name(MODEL, node_a)
    wait_for(lambda: kube.apps.read_namespaced_deployment(name, kube.namespace), timeout=30,
             what="the front-end's Deployment in the API")
    service = wait_for(lambda: kube.core.read_namespaced_service(name, kube.namespace), timeout=30,
                       what="the front-end's Service in the API")
    assert service.spec.type == "NodePort"
    standin.wait_serving(MODEL, node_a, timeout=60)

    def predict() -> requests.Response | None:
        answer = requests.post(frontend.url + PREDICT, json={"instances": [4.0]}, timeout=30)
        return answer if answer.status_code == 200 else None

    answer = wait_for(predict, timeout=60, what="the provisioned model answering")
    assert answer.json() == {"predictions": [4.0]}
    assert len(kube.apps.list_namespaced_deployment(kube.namespace).items) == 1   # provisioned once


def test_digits_model_predicts_through_kubernetes(kube, standin_factory, frontend_factory):
    from sklearn.datasets import load_digits

    node_a = kube.add_node("a", memory_kb=500_000)
    standin = standin_factory()
    cluster = kube.cluster()
    cluster.deploy("digits_logreg", node_a)
    endpoint = standin.wait_serving("digits_logreg", node_a, timeout=60)
    frontend = frontend_factory()
    rows = [list(map(float, row)) for row in load_digits().data[:5]]
    body = {"instances": rows}

    def predict() -> requests.Response | None:
        answer = requests.post(frontend.url + "/services/digits_logreg/v1/models/digits_logreg:predict",
                               json=body, timeout=30)
        return answer if answer.status_code == 200 else None

    proxied = wait_for(predict, timeout=30, what="digits prediction").json()
    direct = requests.post(f"http://{endpoint}/v1/models/digits_logreg:predict", json=body, timeout=30).json()
    assert len(proxied["predictions"]) == 5
    assert proxied == direct                          # the proxy adds nothing and loses nothing
