"""The front-end over real HTTP on loopback, on a local cluster running real model servers."""
from __future__ import annotations

import json
import threading
import time

import requests

from conftest_frontend import AUTH, TOKEN, make_frontend, predict_body, raw_request, wait_for  # noqa: F401

TWO_NODES = [{"name": "node-a"}, {"name": "node-b"}]
HP2 = "half_plus_two"


def dep_of(cluster, model, node):
    return next(d for d in cluster.deployments() if d.model == model and d.node == node)


# ---- lookups --------------------------------------------------------------------------------------

def test_lookup_one_and_all(make_frontend):
    fe = make_frontend(TWO_NODES, deploy=((HP2, "node-a"), ("digits_logreg", "node-b")))
    hp2 = dep_of(fe.cluster, HP2, "node-a")
    expected = {"model": HP2, "node": "node-a", "endpoint": hp2.endpoint,
                "url": f"http://{hp2.endpoint}/v1/models/{HP2}", "tier": "edge"}
    listing = requests.get(f"{fe.url}/services", timeout=10)
    assert listing.status_code == 200
    assert sorted(s["model"] for s in listing.json()["services"]) == ["digits_logreg", HP2]
    assert expected in listing.json()["services"]
    assert requests.get(f"{fe.url}/services/{HP2}", timeout=10).json() == expected
    assert requests.get(f"{fe.url}/services", params={"model": HP2}, timeout=10).json() == expected
    assert requests.get(f"{fe.url}/services", json={"model": HP2}, timeout=10).json() == expected
    # the URL handed out really is the model on that node
    assert requests.get(expected["url"], timeout=10).status_code == 200


def test_unknown_model_is_404_at_once(make_frontend):
    fe = make_frontend(TWO_NODES, deploy=((HP2, "node-a"),))
    for answer in (requests.get(f"{fe.url}/services/no_such_model", timeout=10),
                   requests.get(f"{fe.url}/services", json={"model": "no_such_model"}, timeout=10),
                   requests.post(f"{fe.url}/services/no_such_model/v1/models/no_such_model:predict",
                                 data=predict_body([1.0]), timeout=10)):
        assert answer.status_code == 404 and "unknown model" in answer.json()["error"]
    assert not [d for d in fe.cluster.deployments() if d.model == "no_such_model"]


# ---- proxy ------------------------------------------------------------------------------------------

def test_proxy_returns_the_model_servers_answer_unchanged(make_frontend):
    fe = make_frontend(TWO_NODES, deploy=((HP2, "node-a"), ("digits_logreg", "node-b")))
    answer = requests.post(f"{fe.url}/services/{HP2}/v1/models/{HP2}:predict",
                           data=predict_body([1.0, 2.0, 5.0]), headers={"Content-Type": "application/json"},
                           timeout=10)
    assert answer.status_code == 200 and answer.json() == {"predictions": [2.5, 3.0, 4.5]}
    assert answer.headers["X-Request-Id"]
    assert "Keep-Alive" not in answer.headers
    # Which node answered, and the front-end's whole time (app) beside the model server's (upstream).
    assert answer.headers["X-Served-By"] == "node-a"
    timing = dict(part.strip().split(";dur=") for part in answer.headers["Server-Timing"].split(","))
    assert set(timing) == {"app", "upstream"} and float(timing["app"]) >= float(timing["upstream"]) > 0

    from modelserver.build_models import digits_split
    _, _, x_test, _ = digits_split()
    logreg = dep_of(fe.cluster, "digits_logreg", "node-b")
    for path in ("v1/models/digits_logreg:predict", "v1/models/digits_logreg/labels/stable:predict",
                 "v1/models/digits_logreg/versions/1:predict"):
        body = json.dumps({"instances": x_test[:5].tolist()}).encode()
        direct = requests.post(f"http://{logreg.endpoint}/{path}", data=body, timeout=10)
        proxied = requests.post(f"{fe.url}/services/digits_logreg/{path}", data=body, timeout=10)
        assert proxied.status_code == direct.status_code == 200
        assert proxied.content == direct.content
        assert proxied.headers["Content-Type"] == direct.headers["Content-Type"]
        assert len(proxied.json()["predictions"]) == 5
    # status and metadata are GETs; errors of the model server come back unchanged too
    for path in ("v1/models/digits_logreg", "v1/models/digits_logreg/metadata",
                 "v1/models/digits_logreg/versions/7"):
        direct = requests.get(f"http://{logreg.endpoint}/{path}", timeout=10)
        proxied = requests.get(f"{fe.url}/services/digits_logreg/{path}", timeout=10)
        assert (proxied.status_code, proxied.content) == (direct.status_code, direct.content)
    bad = b'{"instances": [[0.0, 1.0]]}'
    direct = requests.post(f"http://{logreg.endpoint}/v1/models/digits_logreg:predict", data=bad, timeout=10)
    proxied = requests.post(f"{fe.url}/services/digits_logreg/v1/models/digits_logreg:predict", data=bad,
                            timeout=10)
    assert direct.status_code == 400 and (proxied.status_code, proxied.content) == (400, direct.content)


def test_refused_paths_never_reach_a_model_server(make_frontend):
    fe = make_frontend(TWO_NODES, deploy=((HP2, "node-a"),))
    body = predict_body([1.0])
    ok = raw_request(fe.url, "POST", f"/services/{HP2}/v1/models/{HP2}:predict", body=body)
    assert ok[0] == 200
    refused = [
        f"/services/{HP2}/v1/models/../../stats/requests",
        f"/services/{HP2}/v1/models/{HP2}/../{HP2}:predict",
        f"/services/{HP2}/v1/models/%2e%2e/{HP2}:predict",
        f"/services/{HP2}/v1/models/%252e%252e/{HP2}:predict",
        f"/services/{HP2}/http://127.0.0.1:1/v1/models/{HP2}:predict",
        f"/services/{HP2}//127.0.0.1:1/v1/models/{HP2}:predict",
        f"/services/{HP2}/v1/models/{HP2}%3Apredict",
        f"/services/{HP2}/v1/models/{HP2}:shutdown",
        f"/services/{HP2}/admin",
        f"/services/{HP2}/v1/models/half_plus_three:predict",
        f"/services/{HP2}/v1/models/{HP2}/versions/x:predict",
    ]
    for path in refused:
        status, headers, content = raw_request(fe.url, "POST", path, body=body)
        assert status in (400, 404), (path, status, content)
        assert headers["content-type"] == "application/json" and "error" in json.loads(content), path
    # an absolute URL as the request target is not proxied either
    status, _, content = raw_request(fe.url, "POST", f"http://127.0.0.1:1/v1/models/{HP2}:predict", body=body)
    assert status in (400, 404)
    # TF Serving verbs need POST, status/metadata need GET
    status, headers, _ = raw_request(fe.url, "GET", f"/services/{HP2}/v1/models/{HP2}:predict")
    assert status == 405 and headers["allow"] == "POST"
    status, _, _ = raw_request(fe.url, "POST", f"/services/{HP2}/v1/models/{HP2}/metadata", body=body)
    assert status == 405


def test_bodies_malformed_and_oversize(make_frontend):
    fe = make_frontend(TWO_NODES, deploy=((HP2, "node-a"),), max_body=2048)
    big = predict_body([1.0] * 1000)
    assert len(big) > 2048
    answer = requests.post(f"{fe.url}/services/{HP2}/v1/models/{HP2}:predict", data=big, timeout=10)
    assert answer.status_code == 413 and "larger than 2048" in answer.json()["error"]

    def chunks():
        for _ in range(10):
            yield b" " * 1000
    answer = requests.post(f"{fe.url}/services/{HP2}/v1/models/{HP2}:predict", data=chunks(), timeout=10)
    assert answer.status_code == 413
    answer = requests.get(f"{fe.url}/services", data=b'{"model": "' + b"x" * 3000 + b'"}', timeout=10)
    assert answer.status_code == 413
    for body, fragment in ((b"{not json", "not valid JSON"), (b"[1, 2]", "JSON object"),
                           (b'{"model": 5}', "string"), (b'{"model": "half_plus_two", "latency": -3}', "latency")):
        answer = requests.get(f"{fe.url}/services", data=body, timeout=10)
        assert answer.status_code == 400 and fragment in answer.json()["error"], body
    for headers in ({"X-Client-Latency": "soon"}, {"X-Client-Zone": "bad zone!"}):
        for url in (f"{fe.url}/services/{HP2}", f"{fe.url}/services/{HP2}/v1/models/{HP2}:predict"):
            method = requests.get if url.endswith(HP2) else requests.post
            answer = method(url, headers=headers, data=predict_body([1.0]), timeout=10)
            assert answer.status_code == 400, (url, headers)
    # a body the model server cannot parse is its business: its 400 comes back
    answer = requests.post(f"{fe.url}/services/{HP2}/v1/models/{HP2}:predict", data=b"{oops", timeout=10)
    assert answer.status_code == 400 and "error" in answer.json()


# ---- token ---------------------------------------------------------------------------------------

def test_back_end_routes_need_the_token(make_frontend):
    fe = make_frontend(TWO_NODES)
    plan = {"created": time.time(), "mode": 1, "solver": "highs", "weights": {HP2: {"z1": {"node-a": 1}}}}
    routes = [("GET", "/stats/requests", None), ("GET", "/stats/models", None), ("GET", "/stats/memory", None),
              ("PUT", "/plan", plan), ("GET", "/plan", None)]
    for method, path, body in routes:
        missing = requests.request(method, fe.url + path, json=body, timeout=10)
        assert missing.status_code == 401 and missing.headers["WWW-Authenticate"].startswith("Bearer")
        wrong = requests.request(method, fe.url + path, json=body, timeout=10,
                                 headers={"Authorization": "Bearer not-the-token"})
        assert wrong.status_code == 403 and "error" in wrong.json()
        basic = requests.request(method, fe.url + path, json=body, timeout=10,
                                 headers={"Authorization": f"Basic {TOKEN}"})
        assert basic.status_code == 401
        right = requests.request(method, fe.url + path, json=body, headers=AUTH, timeout=10)
        assert right.status_code == 200, (path, right.text)
    assert requests.get(f"{fe.url}/healthz", timeout=10).status_code == 200
    assert requests.get(f"{fe.url}/metrics", timeout=10).status_code == 200


# ---- statistics ------------------------------------------------------------------------------------

def test_statistics_are_recorded(make_frontend):
    fe = make_frontend(TWO_NODES, deploy=((HP2, "node-a"),))
    start = time.time()
    requests.get(f"{fe.url}/services/{HP2}", headers={"X-Client-Zone": "zone-1", "X-Client-Latency": "0.042"},
                 timeout=10)
    requests.get(f"{fe.url}/services", json={"model": HP2, "zone": "zone-2", "latency": 0.5}, timeout=10)
    requests.post(f"{fe.url}/services/{HP2}/v1/models/{HP2}:predict", headers={"X-Client-Zone": "zone-3"},
                  data=json.dumps({"instances": [1.0], "latency": 0.07}), timeout=10)
    requests.get(f"{fe.url}/services/no_such_model", timeout=10)
    requests.get(f"{fe.url}/services", timeout=10)       # names no model: not a row
    rows = requests.get(f"{fe.url}/stats/requests", params={"since": start}, headers=AUTH, timeout=10).json()["requests"]
    assert [(r["model"], r["zone"], r["latency"], r["node"], r["status"], r["kind"]) for r in rows] == [
        (HP2, "zone-1", 0.042, "node-a", 200, "lookup"),
        (HP2, "zone-2", 0.5, "node-a", 200, "lookup"),
        (HP2, "zone-3", 0.07, "node-a", 200, "proxy"),
        ("no_such_model", None, None, None, 404, "lookup"),
    ]
    assert all(start <= r["time"] <= time.time() and 0 < r["duration"] < 30 for r in rows)
    assert requests.get(f"{fe.url}/stats/requests", params={"since": time.time() + 60}, headers=AUTH,
                        timeout=10).json() == {"requests": []}
    assert len(requests.get(f"{fe.url}/stats/requests", params={"limit": 2}, headers=AUTH,
                            timeout=10).json()["requests"]) == 2
    for bad in ({"since": "yesterday"}, {"limit": 0}, {"limit": "many"}, {"since": "nan"}):
        assert requests.get(f"{fe.url}/stats/requests", params=bad, headers=AUTH, timeout=10).status_code == 400

    models = {m["model"]: m for m in requests.get(f"{fe.url}/stats/models", headers=AUTH, timeout=10).json()["models"]}
    assert set(models) == {"half_plus_two", "half_plus_three", "digits_logreg", "digits_forest", "digits_cnn"}
    hp2 = models[HP2]
    created = dep_of(fe.cluster, HP2, "node-a").created
    assert hp2["count"] == 3 and hp2["last_requested"] >= start
    assert [(i["node"], i["provisioned"], i["count"]) for i in hp2["instances"]] == [("node-a", created, 3)]
    assert models["digits_forest"] == {**models["digits_forest"], "count": 0, "last_requested": None, "instances": []}

    # a re-provisioned instance counts from zero
    fe.cluster.remove(HP2, "node-a")
    fe.cluster.deploy(HP2, "node-a")
    new_created = dep_of(fe.cluster, HP2, "node-a").created

    def provisioned():
        models = requests.get(f"{fe.url}/stats/models", headers=AUTH, timeout=10).json()["models"]
        return [i["provisioned"] for i in models[0]["instances"]]
    wait_for(lambda: provisioned() == [new_created], what="new instance in /stats/models")
    wait_for(lambda: requests.get(f"{fe.url}/services/{HP2}", timeout=10).status_code == 200, what="served again")

    def hp2_stats():
        return next(m for m in requests.get(f"{fe.url}/stats/models", headers=AUTH, timeout=10).json()["models"]
                    if m["model"] == HP2)
    before = hp2_stats()
    assert 1 <= before["instances"][0]["count"] <= before["count"] - 3
    for _ in range(2):
        requests.get(f"{fe.url}/services/{HP2}", timeout=10)
    after = hp2_stats()
    assert after["count"] == before["count"] + 2
    assert after["instances"][0]["count"] == before["instances"][0]["count"] + 2

    nodes = {n["node"]: n for n in requests.get(f"{fe.url}/stats/memory", headers=AUTH, timeout=10).json()["nodes"]}
    assert set(nodes) == {"node-a", "node-b"}
    assert nodes["node-a"]["total"] == 250000 and nodes["node-a"]["used"] == 60000
    assert nodes["node-a"]["available"] == 190000 and nodes["node-b"]["used"] == 0
    assert nodes["node-a"]["ready"] and nodes["node-a"]["class"] == "small" and nodes["node-a"]["cpu_capacity"] == 2.0


def test_metrics_count_model_requests(make_frontend):
    fe = make_frontend(TWO_NODES, deploy=((HP2, "node-a"),))
    for _ in range(3):
        requests.get(f"{fe.url}/services/{HP2}", timeout=10)
    text = requests.get(f"{fe.url}/metrics", timeout=10)
    assert text.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert f'frontend_model_requests_total{{kind="lookup",model="{HP2}",status="200"}} 3' in text.text
    assert 'frontend_http_requests_total{method="GET",route="/services/<model>",status="200"} 3' in text.text
    assert 'frontend_http_request_duration_seconds_count{route="/services/<model>"} 3' in text.text
    assert 'frontend_cluster_nodes{ready="true"} 2' in text.text


# ---- dispatch policies -----------------------------------------------------------------------------

def _load(endpoint: str, stop: threading.Event) -> None:
    from modelserver.build_models import digits_split
    _, _, x_test, _ = digits_split()
    body = json.dumps({"instances": x_test[:64].tolist()}).encode()
    with requests.Session() as session:
        while not stop.is_set():
            try:
                session.post(f"http://{endpoint}/v1/models/digits_forest:predict", data=body, timeout=10)
            except requests.RequestException:
                time.sleep(0.05)


def _chosen(fe, model):
    return requests.get(f"{fe.url}/services/{model}", timeout=10).json()["node"]


def test_lowest_cpu_picks_the_less_loaded_node(make_frontend):
    model = "digits_forest"
    fe = make_frontend(TWO_NODES, deploy=((model, "node-a"), (model, "node-b")), refresh_interval=0.3)
    for busy, idle in (("node-a", "node-b"), ("node-b", "node-a")):
        stop = threading.Event()
        endpoint = dep_of(fe.cluster, model, busy).endpoint
        loaders = [threading.Thread(target=_load, args=(endpoint, stop), daemon=True) for _ in range(3)]
        for thread in loaders:
            thread.start()
        try:
            def memory():
                nodes = requests.get(f"{fe.url}/stats/memory", headers=AUTH, timeout=10).json()["nodes"]
                return {n["node"]: n["cpu_usage"] for n in nodes}
            wait_for(lambda: memory()[busy] > memory()[idle] + 0.2, what=f"{busy} to be busier than {idle}")
            # while the load lasts, every answer is the idle node
            wait_for(lambda: all(_chosen(fe, model) == idle for _ in range(5)), what=f"{idle} chosen")
        finally:
            stop.set()
            for thread in loaders:
                thread.join(15)


def test_round_robin_alternates(make_frontend):
    fe = make_frontend(TWO_NODES, deploy=((HP2, "node-a"), (HP2, "node-b")), policy="round-robin")
    picks = [_chosen(fe, HP2) for _ in range(6)]
    assert picks == ["node-a", "node-b"] * 3


def test_nearest_uses_the_client_zone(make_frontend):
    rtt = {"zone-b": {"node-a": 0.040, "node-b": 0.002}, "zone-a": {"node-a": 0.001, "node-b": 0.030}}
    fe = make_frontend(TWO_NODES, deploy=((HP2, "node-a"), (HP2, "node-b")), policy="nearest", rtt=rtt)
    get = lambda zone: requests.get(f"{fe.url}/services/{HP2}", headers={"X-Client-Zone": zone}, timeout=10)
    assert {get("zone-b").json()["node"] for _ in range(3)} == {"node-b"}
    assert {get("zone-a").json()["node"] for _ in range(3)} == {"node-a"}
    body = requests.get(f"{fe.url}/services", json={"model": HP2, "zone": "zone-b"}, timeout=10).json()
    assert body["node"] == "node-b"


def test_plan_policy_follows_the_stored_plan(make_frontend):
    fe = make_frontend(TWO_NODES, deploy=((HP2, "node-a"), (HP2, "node-b")), policy="plan")
    plan = {"created": time.time(), "mode": 1, "solver": "highs",
            "weights": {HP2: {"zone-1": {"node-b": 1.0, "node-a": 0.0}, "zone-2": {"node-a": 2.0}}}}
    assert requests.put(f"{fe.url}/plan", json=plan, headers=AUTH, timeout=10).json() == {"ok": True}
    stored = requests.get(f"{fe.url}/plan", headers=AUTH, timeout=10).json()
    assert stored["weights"] == plan["weights"] and stored["mode"] == 1 and stored["received"] >= plan["created"]
    zone = lambda z: requests.get(f"{fe.url}/services/{HP2}", headers={"X-Client-Zone": z}, timeout=10).json()["node"]
    assert {zone("zone-1") for _ in range(8)} == {"node-b"}
    assert {zone("zone-2") for _ in range(8)} == {"node-a"}
    bad = requests.put(f"{fe.url}/plan", json={**plan, "mode": 7, "weights": {"ghost": {}}}, headers=AUTH, timeout=10)
    assert bad.status_code == 400 and "mode" in bad.json()["error"] and "ghost" in bad.json()["error"]
    assert requests.get(f"{fe.url}/plan", headers=AUTH, timeout=10).json()["mode"] == 1     # unchanged


def test_expected_delay_spreads_a_burst_and_returns_to_the_nearest(make_frontend):
    fe = make_frontend(TWO_NODES, deploy=((HP2, "node-a"), (HP2, "node-b")), policy="expected-delay",
                       rtt={"zone-1": {"node-a": 0.001, "node-b": 0.010}})
    plan = {"created": time.time(), "mode": 1, "solver": "highs",
            "weights": {HP2: {"zone-1": {"node-a": 1.0}}}, "service": {HP2: {"node-a": 1.0, "node-b": 1.0}}}
    assert requests.put(f"{fe.url}/plan", json=plan, headers=AUTH, timeout=10).json() == {"ok": True}
    assert requests.get(f"{fe.url}/plan", headers=AUTH, timeout=10).json()["service"] == plan["service"]
    zone = lambda: requests.get(f"{fe.url}/services/{HP2}", headers={"X-Client-Zone": "zone-1"}, timeout=10).json()["node"]
    burst = [zone() for _ in range(6)]          # well within one 1 s service time
    assert burst[0] == "node-a" and burst.count("node-a") == 3 and burst.count("node-b") == 3, burst
    time.sleep(3.8)                              # both backlogs drained (3 s each at most, at 0.85 s/s)
    # GET /services (every model) charges nothing: the next lookup still finds node-a idle
    for _ in range(3):
        requests.get(f"{fe.url}/services", headers={"X-Client-Zone": "zone-1"}, timeout=10)
    assert zone() == "node-a"
    # a plan without service times: the weights decide, as under `plan`
    bare = {"created": time.time(), "mode": 1, "solver": "highs", "weights": {HP2: {"zone-1": {"node-b": 1.0}}}}
    assert requests.put(f"{fe.url}/plan", json=bare, headers=AUTH, timeout=10).json() == {"ok": True}
    wait_for(lambda: zone() == "node-b", what="the plan without service times followed")


def test_expected_delay_counts_a_node_at_the_pace_it_reported(make_frontend):
    """frontend/pace.py: a node's measured pace (a client's X-Client-Pace in lookup mode, the model
    server's Server-Timing `pace` on a proxied answer) replaces the plan's service time."""
    fe = make_frontend(TWO_NODES, deploy=((HP2, "node-a"), (HP2, "node-b")), policy="expected-delay",
                       rtt={"zone-1": {"node-a": 0.001, "node-b": 0.010}})
    plan = {"created": time.time(), "mode": 1, "solver": "highs",
            "weights": {HP2: {"zone-1": {"node-a": 1.0}}}, "service": {HP2: {"node-a": 0.5, "node-b": 0.5}}}
    assert requests.put(f"{fe.url}/plan", json=plan, headers=AUTH, timeout=10).json() == {"ok": True}

    def lookup(**headers: str) -> requests.Response:
        return requests.get(f"{fe.url}/services/{HP2}", headers={"X-Client-Zone": "zone-1", **headers}, timeout=10)

    report = {"X-Client-RTT": "0.001", "X-Client-RTT-Node": "node-a", "X-Client-Pace-Model": HP2}
    assert lookup(**report, **{"X-Client-Pace": "2.0"}).json()["node"] == "node-b"   # node-a: 0.001 + 2 s
    # reports the front-end cannot use are 400s or dropped, and change nothing
    for bad in ({"X-Client-Pace": "0"}, {"X-Client-Pace": "-1"}, {"X-Client-Pace": "nan"},
                {"X-Client-Pace": "61"}, {"X-Client-Pace": "0.1", "X-Client-Pace-Model": "bad model"},
                {"X-Client-Pace": "0.1", "X-Client-RTT-Node": None, "X-Client-RTT": None}):
        answer = lookup(**{k: v for k, v in {**report, **bad}.items() if v is not None})
        assert answer.status_code == 400 and "X-Client-Pace" in answer.json()["error"], (bad, answer.text)
    # reports about an instance that does not run (a model not on that node, a node not in the
    # cluster) are accepted but dropped: clients cannot grow the table
    for ignored in ({"X-Client-Pace-Model": "digits_cnn"}, {"X-Client-RTT-Node": "node-z"}):
        assert lookup(**{**report, "X-Client-Pace": "0.001", **ignored}).status_code == 200
    paces = fe.server.app.extensions["frontend"].paces
    assert paces.paces(HP2, ["node-a", "node-z"], time.monotonic()) == {"node-a": 2.0}
    assert paces.paces("digits_cnn", ["node-a"], time.monotonic()) == {}
    # the statistics count the same one report, not the refused or dropped ones
    assert summary_pace(fe) == {(HP2, "node-a"): (1, 2.0)}
    time.sleep(1.5)           # node-b's 0.5 s drained; node-a still counted at its 2 s pace
    assert lookup().json()["node"] == "node-b"

    # A proxied call's answer carries the model server's own pace (about a millisecond for this toy
    # model): node-a is counted at it, so a burst of lookups no longer spreads to node-b. The pace is
    # measured back to back: first a queue at node-a's server, straight to it, gives it one.
    fe2 = make_frontend(TWO_NODES, deploy=((HP2, "node-a"), (HP2, "node-b")), policy="expected-delay",
                        rtt={"zone-1": {"node-a": 0.001, "node-b": 0.010}})
    assert requests.put(f"{fe2.url}/plan", json=plan, headers=AUTH, timeout=10).json() == {"ok": True}
    queue_at(dep_of(fe2.cluster, HP2, "node-a").endpoint)
    answer = requests.post(f"{fe2.url}/services/{HP2}/v1/models/{HP2}:predict", data=predict_body([4.0]),
                           headers={"X-Client-Zone": "zone-1"}, timeout=10)
    assert answer.status_code == 200 and answer.headers["X-Served-By"] == "node-a"
    time.sleep(0.7)           # the proxied call's 0.5 s charge drained
    burst = [requests.get(f"{fe2.url}/services/{HP2}", headers={"X-Client-Zone": "zone-1"},
                          timeout=10).json()["node"] for _ in range(6)]
    assert burst == ["node-a"] * 6, burst
    ((key, (count, total)),) = summary_pace(fe2).items()
    assert key == (HP2, "node-a") and count == 1 and 0 < total < 1

    # measured_pace: false keeps the plan's figure (the burst spreads as before)
    fe3 = make_frontend(TWO_NODES, deploy=((HP2, "node-a"), (HP2, "node-b")), policy="expected-delay",
                        rtt={"zone-1": {"node-a": 0.001, "node-b": 0.010}}, measured_pace=False)
    assert requests.put(f"{fe3.url}/plan", json=plan, headers=AUTH, timeout=10).json() == {"ok": True}
    queue_at(dep_of(fe3.cluster, HP2, "node-a").endpoint)
    assert requests.post(f"{fe3.url}/services/{HP2}/v1/models/{HP2}:predict", data=predict_body([4.0]),
                         headers={"X-Client-Zone": "zone-1"}, timeout=10).status_code == 200
    time.sleep(0.7)
    burst = [requests.get(f"{fe3.url}/services/{HP2}", headers={"X-Client-Zone": "zone-1"},
                          timeout=10).json()["node"] for _ in range(4)]
    assert burst.count("node-b") >= 1, burst
    assert [model for model, _ in summary_pace(fe3)] == [HP2]    # counted for the statistics all the same


def queue_at(endpoint: str) -> None:
    """Calls straight to a model server, several at once, until one answer carries a pace (the
    server measures it back to back only: calls that overlap)."""
    from concurrent.futures import ThreadPoolExecutor

    def call(_: int) -> bool:
        answer = requests.post(f"http://{endpoint}/v1/models/{HP2}:predict", data=predict_body([1.0]), timeout=10)
        return "pace;dur=" in answer.headers.get("Server-Timing", "")

    with ThreadPoolExecutor(8) as pool:
        for _ in range(20):
            if any(pool.map(call, range(32))):
                return
    raise AssertionError(f"no answer from {endpoint} came back to back")


def summary_pace(fe, part: str = "pace") -> dict[tuple[str, str], tuple[int, float]]:
    """/stats/summary's `pace` (or `pace_idle`) as {(model, node): (count, sum)}."""
    doc = requests.get(f"{fe.url}/stats/summary", headers=AUTH, timeout=10).json()
    return {(p["model"], p["node"]): (p["count"], p["sum"]) for p in doc[part]}


def test_paces_reach_the_statistics_whatever_the_policy(make_frontend):
    """Every pace report the front-end keeps is counted per (model, node) in /stats/summary's `pace`,
    for the back-end, also when dispatch does not use it (another policy, or measured_pace off)."""
    for settings in ({}, {"policy": "expected-delay", "measured_pace": False}):
        fe = make_frontend(TWO_NODES, deploy=((HP2, "node-a"), ("digits_logreg", "node-b")), **settings)
        rt = fe.server.app.extensions["frontend"]
        rt.note_pace(HP2, "node-a", 0.5)             # outside a request: no record to carry it, no crash
        queue_at(dep_of(fe.cluster, HP2, "node-a").endpoint)     # the server has a pace (back to back)
        answer = requests.post(f"{fe.url}/services/{HP2}/v1/models/{HP2}:predict", data=predict_body([1.0]),
                               timeout=10)
        assert answer.status_code == 200 and answer.headers["X-Served-By"] == "node-a"
        served = summary_pace(fe)
        assert list(served) == [(HP2, "node-a")] and served[(HP2, "node-a")][0] == 1, served
        upstream = served[(HP2, "node-a")][1]
        assert upstream > 0                          # the model server's own pace of that answer

        def lookup(model: str, node: str, pace_model: str, pace: str = "0.25") -> int:
            return requests.get(f"{fe.url}/services/{model}", timeout=10, headers={
                "X-Client-RTT": "0.001", "X-Client-RTT-Node": node, "X-Client-Pace": pace,
                "X-Client-Pace-Model": pace_model}).status_code

        assert lookup("digits_logreg", "node-a", HP2) == 200             # about another model: counted
        assert lookup(HP2, "node-b", HP2) == 200                         # HP2 does not run on node-b
        assert lookup(HP2, "node-a", "digits_logreg") == 200             # nor digits_logreg on node-a
        assert lookup(HP2, "node-z", HP2) == 200                         # not a node of the cluster
        assert lookup(HP2, "node-a", "no_such_model") == 200             # not in the catalog
        assert lookup(HP2, "node-a", HP2, pace="61") == 400              # refused: never counted
        # a proxied call carrying a client's echo holds two reports: the echo and the answer's own
        answer = requests.post(f"{fe.url}/services/{HP2}/v1/models/{HP2}:predict", data=predict_body([1.0]),
                               headers={"X-Client-RTT": "0.001", "X-Client-RTT-Node": "node-b",
                                        "X-Client-Pace": "0.125", "X-Client-Pace-Model": "digits_logreg"},
                               timeout=10)
        assert answer.status_code == 200
        after = summary_pace(fe)
        assert set(after) == {(HP2, "node-a"), ("digits_logreg", "node-b")}, (settings, after)
        assert after[(HP2, "node-a")][0] == 3 and after[(HP2, "node-a")][1] > upstream + 0.25
        assert after[("digits_logreg", "node-b")] == (1, 0.125)
        assert rt.paces.paces(HP2, ["node-a"], time.monotonic()) == {}   # dispatch did not take them


def test_a_clients_idle_pace_reaches_the_statistics_only(make_frontend):
    """X-Client-Pace-Idle (body `pace_idle`) about a real instance is counted in /stats/summary's
    `pace_idle`, not in `pace`, and never reaches dispatch's table, even under expected-delay with
    measured_pace."""
    fe = make_frontend(TWO_NODES, deploy=((HP2, "node-a"), ("digits_logreg", "node-b")), policy="expected-delay")
    rt = fe.server.app.extensions["frontend"]
    report = {"X-Client-RTT": "0.001", "X-Client-RTT-Node": "node-a", "X-Client-Pace-Model": HP2}

    def lookup(**headers: str | None) -> requests.Response:
        sent = {k: v for k, v in {**report, **headers}.items() if v is not None}
        return requests.get(f"{fe.url}/services/{HP2}", headers=sent, timeout=10)

    assert lookup(**{"X-Client-Pace-Idle": "0.0475"}).status_code == 200
    assert requests.get(f"{fe.url}/services", timeout=10, json={
        "model": HP2, "rtt": 0.001, "rtt_node": "node-a", "pace_idle": 0.0465, "pace_model": HP2}).status_code == 200
    assert lookup(**{"X-Client-Pace-Idle": "0.2", "X-Client-RTT-Node": "node-b"}).status_code == 200   # dropped
    for bad in ({"X-Client-Pace-Idle": "0"}, {"X-Client-Pace-Idle": "61"}, {"X-Client-Pace-Idle": "nan"},
                {"X-Client-Pace-Idle": "0.05", "X-Client-Pace-Model": None},
                {"X-Client-Pace-Idle": "0.05", "X-Client-RTT": None, "X-Client-RTT-Node": None}):
        answer = lookup(**bad)
        assert answer.status_code == 400 and "X-Client-Pace-Idle" in answer.json()["error"], (bad, answer.text)
    assert summary_pace(fe) == {}
    ((key, (count, total)),) = summary_pace(fe, "pace_idle").items()
    assert key == (HP2, "node-a") and count == 2 and abs(total - 0.094) < 1e-9
    assert rt.paces.paces(HP2, ["node-a"], time.monotonic()) == {}
    # beside a back-to-back pace: each goes to its own list, only the back-to-back one to dispatch
    assert lookup(**{"X-Client-Pace": "0.25", "X-Client-Pace-Idle": "0.05"}).status_code == 200
    assert summary_pace(fe) == {(HP2, "node-a"): (1, 0.25)}
    assert summary_pace(fe, "pace_idle")[(HP2, "node-a")][0] == 3
    assert rt.paces.paces(HP2, ["node-a"], time.monotonic()) == {"node-a": 0.25}


def test_a_proxied_answers_idle_pace_is_counted_in_pace_idle(make_frontend):
    """The front-end reads a proxied answer's Server-Timing `pace-idle` itself (and a client's
    X-Client-Pace-Idle echo on the same call): both counted in `pace_idle`, neither in `pace`. The
    model server is the real one: its first answer found it idle, so it says `pace-idle` and no `pace`."""
    fe = make_frontend(TWO_NODES, deploy=((HP2, "node-a"), ("digits_logreg", "node-b")))
    answer = requests.post(f"{fe.url}/services/{HP2}/v1/models/{HP2}:predict", data=predict_body([1.0]), timeout=10,
                           headers={"X-Client-RTT": "0.001", "X-Client-RTT-Node": "node-b",
                                    "X-Client-Pace-Idle": "0.03", "X-Client-Pace-Model": "digits_logreg"})
    assert answer.status_code == 200 and answer.headers["X-Served-By"] == "node-a"
    assert answer.json() == {"predictions": [2.5]}
    idle = summary_pace(fe, "pace_idle")
    assert set(idle) == {(HP2, "node-a"), ("digits_logreg", "node-b")}, idle
    assert idle[("digits_logreg", "node-b")] == (1, 0.03)
    count, seconds = idle[(HP2, "node-a")]
    assert count == 1 and 0 < seconds < 10                 # the server's own time of that answer
    assert summary_pace(fe) == {}


# ---- failures and on-demand provisioning ---------------------------------------------------------------

def test_a_node_taken_down_is_skipped(make_frontend):
    # A long refresh interval: the proxy must notice the dead endpoint itself, not wait for a refresh.
    fe = make_frontend(TWO_NODES, deploy=((HP2, "node-a"), (HP2, "node-b")), refresh_interval=30.0)
    assert _chosen(fe, HP2) == "node-a"          # idle tie: first name
    fe.cluster.node_down("node-a")
    answer = requests.post(f"{fe.url}/services/{HP2}/v1/models/{HP2}:predict", data=predict_body([4.0]), timeout=10)
    assert answer.status_code == 200 and answer.json() == {"predictions": [4.0]}
    rows = requests.get(f"{fe.url}/stats/requests", headers=AUTH, timeout=10).json()["requests"]
    assert rows[-1]["node"] == "node-b" and rows[-1]["kind"] == "proxy"
    assert {_chosen(fe, HP2) for _ in range(5)} == {"node-b"}
    listing = requests.get(f"{fe.url}/services", timeout=10).json()["services"]
    assert [s["node"] for s in listing] == ["node-b"]
    fe.cluster.node_up("node-a")
    health = requests.get(f"{fe.url}/healthz", timeout=10).json()
    assert health["cluster"]["nodes_ready"] in (1, 2)


def test_last_node_down_gives_502_or_503_never_a_dead_endpoint(make_frontend):
    fe = make_frontend(TWO_NODES, deploy=((HP2, "node-a"),), refresh_interval=0.2)
    fe.cluster.node_down("node-a")
    wait_for(lambda: requests.get(f"{fe.url}/healthz", timeout=10).json()["cluster"]["nodes_ready"] == 1,
             what="node-a seen down")
    # the model is re-provisioned on the remaining node (thesis 4.5: redeploy elsewhere when needed)
    answer = requests.get(f"{fe.url}/services/{HP2}", timeout=10)
    assert answer.status_code in (200, 503)
    if answer.status_code == 200:
        assert answer.json()["node"] == "node-b"
    served = wait_for(lambda: (r := requests.get(f"{fe.url}/services/{HP2}", timeout=10)).status_code == 200 and r.json(),
                      what="served from node-b")
    assert served["node"] == "node-b"


def test_on_demand_provisioning(make_frontend):
    fe = make_frontend(TWO_NODES, deploy=(("digits_forest", "node-b"),))     # node-a has the most room
    answers = []
    threads = [threading.Thread(target=lambda: answers.append(requests.get(f"{fe.url}/services/{HP2}", timeout=10)))
               for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert {a.status_code for a in answers} == {503}
    assert all(a.headers["Retry-After"] == "2" for a in answers)
    assert all(a.json()["provisioning"] is True for a in answers)
    # The request that won the claim names the node; the others may only say it is under way
    # (whichever thread finishes first is not necessarily the one that claimed).
    assert any("node-a" in a.json()["error"] for a in answers)
    served = wait_for(lambda: (r := requests.get(f"{fe.url}/services/{HP2}", timeout=10)).status_code == 200 and r.json(),
                      what="the new instance served")
    assert served["node"] == "node-a"
    assert sorted((d.model, d.node) for d in fe.cluster.deployments()) == [("digits_forest", "node-b"), (HP2, "node-a")]
    listing = requests.get(f"{fe.url}/services", timeout=10).json()["services"]
    assert sorted((s["model"], s["node"]) for s in listing) == [("digits_forest", "node-b"), (HP2, "node-a")]
    text = requests.get(f"{fe.url}/metrics", timeout=10).text
    assert f'frontend_provisions_total{{model="{HP2}",outcome="started"}} 1' in text


def test_no_room_is_503_with_the_reason(make_frontend):
    small = [{"name": "node-a", "memory": 100000}, {"name": "node-b", "memory": 100000}]
    fe = make_frontend(small)
    answer = requests.get(f"{fe.url}/services/digits_forest", timeout=10)
    assert answer.status_code == 503 and "Retry-After" not in answer.headers
    assert "no ready node has 120000 KB free" in answer.json()["error"]
    assert fe.cluster.deployments() == []


def test_prediction_cache(make_frontend):
    fe = make_frontend(TWO_NODES, deploy=((HP2, "node-a"),), prediction_cache_entries=16)
    url = f"{fe.url}/services/{HP2}/v1/models/{HP2}:predict"
    first = requests.post(url, data=predict_body([3.0]), timeout=10)
    second = requests.post(url, data=predict_body([3.0]), timeout=10)
    other = requests.post(url, data=predict_body([5.0]), timeout=10)
    assert first.json() == second.json() == {"predictions": [3.5]} and other.json() == {"predictions": [4.5]}
    rows = requests.get(f"{fe.url}/stats/requests", headers=AUTH, timeout=10).json()["requests"]
    assert [r["cached"] for r in rows] == [False, True, False]
    text = requests.get(f"{fe.url}/metrics", timeout=10).text
    assert f'frontend_prediction_cache_total{{model="{HP2}",result="hit"}} 1' in text
    assert f'frontend_prediction_cache_total{{model="{HP2}",result="miss"}} 2' in text


def _kill_model_server(endpoint: str) -> None:
    import psutil
    host, port = endpoint.rsplit(":", 1)
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if "modelserver" in cmdline and host in cmdline and port in cmdline:
            proc.kill()
            proc.wait(10)


def test_upstream_failures_are_json_502_and_504(make_frontend):
    # a forest over 1,000 digits takes milliseconds: far longer than a 0.5 ms call deadline
    from modelserver.build_models import digits_split
    _, _, x_test, _ = digits_split()
    rows = (x_test.tolist() * 4)[:1000]
    fe = make_frontend([{"name": "node-a"}], deploy=(("digits_forest", "node-a"),), call_timeout=0.0005,
                       refresh_interval=30.0)
    answer = requests.post(f"{fe.url}/services/digits_forest/v1/models/digits_forest:predict",
                           data=json.dumps({"instances": rows}), timeout=10)
    assert answer.status_code == 504 and "did not answer" in answer.json()["error"]

    fe2 = make_frontend([{"name": "node-a"}], deploy=((HP2, "node-a"),), refresh_interval=30.0)
    url = f"{fe2.url}/services/{HP2}/v1/models/{HP2}:predict"
    assert requests.post(url, data=predict_body([1.0]), timeout=10).status_code == 200
    _kill_model_server(dep_of(fe2.cluster, HP2, "node-a").endpoint)
    answer = requests.post(url, data=predict_body([1.0]), timeout=10)
    assert answer.status_code == 502 and answer.json()["error"].startswith(("cannot reach", f"model {HP2}"))
    # the dead instance is never handed out; the model comes back (re-provisioned) and is served
    for _ in range(3):
        lookup = requests.get(f"{fe2.url}/services/{HP2}", timeout=10)
        assert lookup.status_code in (200, 503)
        if lookup.status_code == 503:
            assert "Retry-After" in lookup.headers
    wait_for(lambda: requests.post(url, data=predict_body([2.0]), timeout=10).status_code == 200,
             what="the model served again")


def test_retention_and_catalog_reload(make_frontend, tmp_path):
    import shutil
    from cluster.catalog import DEFAULT_CATALOG
    catalog = tmp_path / "models.yaml"
    shutil.copy(DEFAULT_CATALOG, catalog)
    fe = make_frontend(TWO_NODES, deploy=((HP2, "node-a"),), stats_retention=1.0, catalog=str(catalog))
    assert requests.get(f"{fe.url}/services/{HP2}", timeout=10).status_code == 200
    rows = lambda: requests.get(f"{fe.url}/stats/requests", headers=AUTH, timeout=10).json()["requests"]
    assert len(rows()) == 1
    wait_for(lambda: rows() == [], timeout=30, what="old rows pruned")
    models = requests.get(f"{fe.url}/stats/models", headers=AUTH, timeout=10).json()["models"]
    assert next(m for m in models if m["model"] == HP2)["count"] == 1       # counts outlive the rows
    # the catalog is re-read when it changes: a model taken out of it is unknown from then on
    import yaml
    doc = yaml.safe_load(catalog.read_text())
    doc["models"] = [m for m in doc["models"] if m["name"] != "digits_forest"]
    catalog.write_text(yaml.safe_dump(doc))
    names = lambda: {m["model"] for m in requests.get(f"{fe.url}/stats/models", headers=AUTH, timeout=10).json()["models"]}
    wait_for(lambda: "digits_forest" not in names(), what="catalog reloaded")
    assert requests.get(f"{fe.url}/services/digits_forest", timeout=10).status_code == 404
    assert requests.get(f"{fe.url}/services/{HP2}", timeout=10).status_code == 200


def test_a_replacement_at_the_same_endpoint_is_served_at_once(make_frontend):
    """A worker that found an instance dead skips that instance, not its address: the model server
    restarted on the same node and port is a new instance and is used at once."""
    fe = make_frontend([{"name": "node-a"}], deploy=((HP2, "node-a"),), bad_endpoint_seconds=60)
    cache = fe.server.app.extensions["frontend"].cache
    old = dep_of(fe.cluster, HP2, "node-a")
    cache.refresh()
    cache.mark_bad(old.endpoint, created=old.created)
    assert cache.candidates(HP2) == ()
    fe.cluster.remove(HP2, "node-a")
    fe.cluster.deploy(HP2, "node-a")
    new = dep_of(fe.cluster, HP2, "node-a")
    assert new.endpoint == old.endpoint and new.created != old.created
    cache.refresh()
    assert [c.deployment.created for c in cache.candidates(HP2)] == [new.created]
    answer = requests.post(f"{fe.url}/services/{HP2}/v1/models/{HP2}:predict", data=predict_body([1.0]), timeout=10)
    assert answer.status_code == 200
