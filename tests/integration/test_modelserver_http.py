"""The model server as a real process on loopback, against known answers (TF Serving's REST API)."""
from __future__ import annotations

import functools
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import requests

from modelserver.build_models import build_all, digits_split, train_digits_forest, train_digits_logreg

REPO = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT = 60.0


@dataclass
class Server:
    proc: subprocess.Popen
    port: int
    lines: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> int:
        """SIGTERM, then SIGKILL if it lingers; return the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        return self.proc.returncode


def start_server(model_dir: Path, name: str, *extra: str, port: int = 0) -> Server:
    """Start `python -m modelserver` on a free loopback port; return once it logs `ready`."""
    cmd = [sys.executable, "-m", "modelserver", "--host", "127.0.0.1", "--rest_api_port", str(port),
           "--model_name", name, "--model_base_path", str(model_dir / name), *extra]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    server = Server(proc, 0)
    ready = threading.Event()

    def drain() -> None:
        for line in proc.stderr:
            server.lines.append(line)
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("event") == "ready":
                server.port = entry["port"]
                ready.set()
        ready.set()

    threading.Thread(target=drain, daemon=True).start()
    if not ready.wait(STARTUP_TIMEOUT) or server.port == 0:
        server.stop()
        raise AssertionError(f"model server {name} did not become ready:\n{''.join(server.lines)}")
    return server


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> Path:
    out = tmp_path_factory.getbasetemp() / "modelserver-models"
    build_all(out=out, log=lambda _m: None)
    return out


@pytest.fixture(scope="module")
def hp2(models):
    server = start_server(models, "half_plus_two")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def logreg(models):
    server = start_server(models, "digits_logreg")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def forest(models):
    server = start_server(models, "digits_forest")
    yield server
    server.stop()


def post(server: Server, path: str, body) -> requests.Response:
    data = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return requests.post(server.url + path, data=data, timeout=10)


def assert_error(response: requests.Response, status: int, fragment: str = "") -> str:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    payload = response.json()
    assert list(payload) == ["error"] and isinstance(payload["error"], str) and payload["error"]
    assert fragment.lower() in payload["error"].lower(), payload["error"]
    return payload["error"]


# ---- status, versions, labels -----------------------------------------------------------------

def _status(*versions: str) -> dict:
    return {"model_version_status": [
        {"version": v, "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}} for v in versions]}


def test_status_of_a_single_version_model(hp2):
    response = requests.get(f"{hp2.url}/v1/models/half_plus_two", timeout=10)
    assert response.status_code == 200
    assert response.json() == _status("1")


@pytest.mark.parametrize("suffix, versions", [
    ("", ("2", "1")), ("/versions/1", ("1",)), ("/versions/2", ("2",)),
    ("/labels/stable", ("1",)), ("/labels/canary", ("2",)),
])
def test_status_by_version_and_label(logreg, suffix, versions):
    response = requests.get(f"{logreg.url}/v1/models/digits_logreg{suffix}", timeout=10)
    assert response.status_code == 200
    assert response.json() == _status(*versions)


@pytest.mark.parametrize("path, fragment", [
    ("/v1/models/digits_logreg/versions/3", "version 3"),
    ("/v1/models/digits_logreg/labels/beta", "label: beta"),
    ("/v1/models/nope", "nope"),
    ("/v1/models/nope/metadata", "nope"),
    ("/v1/models/digits_logreg/versions/7/metadata", "Specific(digits_logreg, 7)"),
    ("/v2/models/digits_logreg", "Malformed request"),
    ("/v1/models/digits_logreg:explain", "Malformed request"),
])
def test_unknown_model_version_label_or_path_is_404(logreg, path, fragment):
    assert_error(requests.get(logreg.url + path, timeout=10), 404, fragment)


def test_every_answer_says_the_servers_own_time_in_server_timing(hp2):
    import re
    for response, inference in ((post(hp2, "/v1/models/half_plus_two:predict", {"instances": [1.0]}), True),
                                (requests.get(f"{hp2.url}/v1/models/nope", timeout=10), False)):
        match = re.fullmatch(r"wait;dur=([0-9.]+), app;dur=([0-9.]+)(?:, pace;dur=([0-9.]+))?"
                             r"(?:, pace-idle;dur=([0-9.]+))?", response.headers["Server-Timing"])
        assert match, response.headers["Server-Timing"]
        wait, app = float(match.group(1)), float(match.group(2))
        assert 0 <= wait <= app and 0 < app < 10_000        # milliseconds, the standard's unit
        if match.group(3) is not None:                      # the pace: inference calls only, once one
            assert inference and 0 < float(match.group(3)) < 10_000     # came back to back
        # the idle-start time: inference calls only, and on all of them (a stretch's first answer found
        # the server idle)
        assert (match.group(4) is not None) == inference, response.headers["Server-Timing"]
        if inference:
            assert 0 < float(match.group(4)) < 10_000


def test_an_answer_that_found_the_server_idle_says_its_own_time_as_pace_idle(models):
    """Server-Timing `pace-idle` (modelserver/pace.py): a fresh server's first call found it idle, so
    its own time (`app`, from ready to answer) is the figure, without a `pace`; a second call alone
    is smoothed in with the same weight."""
    from modelserver.pace import WEIGHT

    server = start_server(models, "half_plus_two")
    try:
        url = f"{server.url}/v1/models/half_plus_two:predict"
        assert "pace" not in requests.get(f"{server.url}/v1/models/half_plus_two", timeout=10).headers[
            "Server-Timing"]                                # a probe is not the node's work
        first = _timed_predict(url, [1.0, 2.0])
        assert "pace" not in first and first["pace-idle"] == first["app"], first
        second = _timed_predict(url, [3.0])
        assert "pace" not in second, second
        expected = first["pace-idle"] + WEIGHT * (second["app"] - first["pace-idle"])
        assert second["pace-idle"] == pytest.approx(expected, abs=2e-6), (first, second)   # 3 decimals of ms
    finally:
        server.stop()


def test_unknown_model_on_predict_is_404(hp2):
    error = assert_error(post(hp2, "/v1/models/half:predict", {"instances": [1.0, 5.0]}), 404)
    assert error == "Servable not found for request: Latest(half)"
    assert_error(post(hp2, "/v1/models/half_plus_two/versions/9:predict", {"instances": [1.0]}), 404,
                 "Specific(half_plus_two, 9)")
    assert_error(post(hp2, "/v1/models/half_plus_two/labels/stable:predict", {"instances": [1.0]}), 404,
                 "label")


# ---- predict: TF Serving's toy models -----------------------------------------------------------

def test_half_plus_two_row_format_is_tf_servings_example(hp2):
    response = post(hp2, "/v1/models/half_plus_two:predict", {"instances": [1, 2, 5]})
    assert response.status_code == 200
    assert response.json() == {"predictions": [2.5, 3.0, 4.5]}


@pytest.mark.parametrize("body, expected", [
    ({"inputs": [1, 2, 5]}, {"outputs": [2.5, 3.0, 4.5]}),
    ({"inputs": {"x": [1.0, 2.0, 5.0]}}, {"outputs": [2.5, 3.0, 4.5]}),
    ({"inputs": 3}, {"outputs": 3.5}),
    ({"inputs": [[1], [2]]}, {"outputs": [[2.5], [3.0]]}),
])
def test_half_plus_two_columnar_format(hp2, body, expected):
    response = post(hp2, "/v1/models/half_plus_two:predict", body)
    assert response.status_code == 200
    assert response.json() == expected


def test_half_plus_two_named_instances_and_version_path(hp2):
    response = post(hp2, "/v1/models/half_plus_two/versions/1:predict", {"instances": [{"x": 1}, {"x": 6}]})
    assert response.status_code == 200
    assert response.json() == {"predictions": [2.5, 5.0]}


def test_signature_name_selects_the_signature(hp2):
    body = {"signature_name": "regress_x_to_y2", "instances": [1, 2, 5]}
    response = post(hp2, "/v1/models/half_plus_two:predict", body)
    assert response.status_code == 200
    assert response.json() == {"predictions": [3.5, 4.0, 5.5]}
    assert_error(post(hp2, "/v1/models/half_plus_two:predict", {"signature_name": "nope", "instances": [1]}),
                 400, '"nope" not found')


def test_half_plus_three(models):
    server = start_server(models, "half_plus_three")
    try:
        assert post(server, "/v1/models/half_plus_three:predict",
                    {"instances": [1.0, 2.0, 5.0]}).json() == {"predictions": [3.5, 4.0, 5.5]}
        # TF Serving's documented regress call on this model:
        body = {"signature_name": "tensorflow/serving/regress", "examples": [{"x": 1.0}, {"x": 2.0}]}
        assert post(server, "/v1/models/half_plus_three:regress", body).json() == {"results": [3.5, 4.0]}
    finally:
        server.stop()


# ---- bad requests ------------------------------------------------------------------------------

@pytest.mark.parametrize("body, fragment", [
    ({"instances": [1], "inputs": [1]}, "not both"),
    ({"signature_name": "serving_default"}, "Missing 'instances' or 'inputs'"),
    ({}, "Missing"),
    ("{not json", "JSON Parse error"),
    ("", "JSON Parse error"),
    ("[1, 2]", "JSON object"),
    ({"instances": []}, "non-empty"),
    ({"instances": "abc"}, "non-empty list"),
    ({"instances": ["a", "b"]}, "expects float"),
    ({"instances": [True, False]}, "expects float"),
    ({"instances": [1, None]}, "expects float"),
    ({"instances": [[1, 2], [3]]}, "same length"),
    ({"instances": [{"y": 1}]}, "expected ['x']"),
    ({"inputs": {"x": [1], "z": [2]}}, "expected ['x']"),
    ({"signature_name": 5, "instances": [1]}, "must be a string"),
])
def test_malformed_predict_requests_are_400(hp2, body, fragment):
    assert_error(post(hp2, "/v1/models/half_plus_two:predict", body), 400, fragment)


@pytest.mark.parametrize("body, fragment", [
    ({"instances": [[0.0] * 63]}, "shape [1, 63]"),
    ({"instances": [0.0] * 64}, "shape [64]"),
    ({"inputs": [[[0.0] * 64]]}, "expects [-1, 64]"),
    ({"inputs": {"x": [[0.0] * 65, [0.0] * 65]}}, "shape [2, 65]"),
])
def test_wrong_shapes_are_400(logreg, body, fragment):
    assert_error(post(logreg, "/v1/models/digits_logreg:predict", body), 400, fragment)


@pytest.mark.parametrize("method, path, allow", [
    ("GET", "/v1/models/half_plus_two:predict", "POST"),
    ("PUT", "/v1/models/half_plus_two:regress", "POST"),
    ("POST", "/v1/models/half_plus_two", "GET, HEAD"),
    ("DELETE", "/v1/models/half_plus_two/metadata", "GET, HEAD"),
])
def test_wrong_method_is_405(hp2, method, path, allow):
    response = requests.request(method, hp2.url + path, data="{}", timeout=10)
    assert_error(response, 405, "not allowed")
    assert response.headers["Allow"] == allow


def test_request_id_is_echoed(hp2):
    response = requests.get(f"{hp2.url}/v1/models/half_plus_two", headers={"X-Request-Id": "abc-123"}, timeout=10)
    assert response.headers["X-Request-Id"] == "abc-123"


# ---- metadata ----------------------------------------------------------------------------------

def test_metadata_of_the_digits_model(logreg):
    response = requests.get(f"{logreg.url}/v1/models/digits_logreg/metadata", timeout=10)
    assert response.status_code == 200
    meta = response.json()
    assert meta["model_spec"] == {"name": "digits_logreg", "signature_name": "", "version": "2"}
    signatures = meta["metadata"]["signature_def"]["signature_def"]
    default = signatures["serving_default"]
    assert default["method_name"] == "tensorflow/serving/predict"
    assert default["inputs"] == {"x": {"dtype": "DT_FLOAT", "name": "x", "tensor_shape": {
        "dim": [{"size": "-1", "name": ""}, {"size": "64", "name": ""}], "unknown_rank": False}}}
    assert default["outputs"]["label"]["dtype"] == "DT_INT64"
    assert [d["size"] for d in default["outputs"]["probabilities"]["tensor_shape"]["dim"]] == ["-1", "10"]
    assert signatures["tensorflow/serving/classify"]["method_name"] == "tensorflow/serving/classify"


@pytest.mark.parametrize("suffix, version", [("/versions/1", "1"), ("/labels/stable", "1"), ("/labels/canary", "2")])
def test_metadata_by_version_and_label(logreg, suffix, version):
    response = requests.get(f"{logreg.url}/v1/models/digits_logreg{suffix}/metadata", timeout=10)
    assert response.json()["model_spec"]["version"] == version


def test_metadata_of_an_unknown_rank_model(hp2):
    meta = requests.get(f"{hp2.url}/v1/models/half_plus_two/metadata", timeout=10).json()
    x = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]["inputs"]["x"]
    assert x["tensor_shape"] == {"dim": [], "unknown_rank": True}


# ---- digits: the same answers as scikit-learn ----------------------------------------------------

SAMPLES = [0, 1, 2, 3, 17, 42, 100, 250]


@pytest.fixture(scope="module")
def test_digits():
    _, _, x_test, _ = digits_split()
    return x_test[SAMPLES]


@pytest.mark.parametrize("suffix, version", [("", 2), ("/versions/1", 1), ("/labels/stable", 1),
                                             ("/labels/canary", 2)])
def test_logreg_matches_scikit_learn(logreg, test_digits, suffix, version):
    model = train_digits_logreg(version)
    response = post(logreg, f"/v1/models/digits_logreg{suffix}:predict", {"instances": test_digits.tolist()})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert [p["label"] for p in predictions] == model.predict(test_digits).tolist()
    np.testing.assert_allclose([p["probabilities"] for p in predictions], model.predict_proba(test_digits),
                               atol=1e-4)


def test_logreg_versions_really_differ(logreg, test_digits):
    body = {"instances": test_digits[:2].tolist()}
    one = post(logreg, "/v1/models/digits_logreg/versions/1:predict", body).json()["predictions"]
    two = post(logreg, "/v1/models/digits_logreg/versions/2:predict", body).json()["predictions"]
    assert not np.allclose(one[0]["probabilities"], two[0]["probabilities"], atol=1e-3)


def test_forest_matches_scikit_learn_in_both_formats(forest, test_digits):
    model = train_digits_forest()
    rows = post(forest, "/v1/models/digits_forest:predict", {"instances": test_digits.tolist()}).json()
    columns = post(forest, "/v1/models/digits_forest:predict", {"inputs": {"x": test_digits.tolist()}}).json()
    assert [p["label"] for p in rows["predictions"]] == model.predict(test_digits).tolist()
    assert columns["outputs"]["label"] == model.predict(test_digits).tolist()
    np.testing.assert_allclose(columns["outputs"]["probabilities"], model.predict_proba(test_digits), atol=1e-5)
    np.testing.assert_allclose([p["probabilities"] for p in rows["predictions"]],
                               columns["outputs"]["probabilities"])


def test_classify_gives_labelled_scores(forest, test_digits):
    model = train_digits_forest()
    body = {"signature_name": "tensorflow/serving/classify", "examples": [{"x": row} for row in test_digits[:3].tolist()]}
    response = post(forest, "/v1/models/digits_forest:classify", body)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [[label for label, _ in r] for r in results] == [[str(d) for d in range(10)]] * 3
    np.testing.assert_allclose([[s for _, s in r] for r in results], model.predict_proba(test_digits[:3]), atol=1e-5)


def test_classify_or_regress_on_a_predict_signature_is_400(forest, test_digits):
    body = {"examples": [{"x": test_digits[0].tolist()}]}
    assert_error(post(forest, "/v1/models/digits_forest:classify", body), 400,
                 "Expected classification signature method_name to be tensorflow/serving/classify")
    assert_error(post(forest, "/v1/models/digits_forest:regress", body), 400, "regression signature")


# ---- process life cycle ------------------------------------------------------------------------

def test_sigterm_exits_cleanly_and_logs_are_json_lines(models):
    server = start_server(models, "half_plus_two", "--access_log")
    assert post(server, "/v1/models/half_plus_two:predict", {"instances": [1]}).status_code == 200
    assert server.stop() == 0
    entries = [json.loads(line) for line in server.lines if line.strip()]
    assert any(e.get("event") == "loaded" for e in entries)
    assert any(e.get("path") == "/v1/models/half_plus_two:predict" and e.get("status") == 200 for e in entries)
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{server.url}/v1/models/half_plus_two", timeout=5)


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "modelserver", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60)


def test_missing_base_path_fails_with_one_json_line(tmp_path):
    result = _run_cli("--rest_api_port", "0", "--model_name", "m", "--model_base_path", str(tmp_path / "none"))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "does not exist" in json.loads(lines[0])["message"]


def test_taken_port_fails_at_once(models):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _run_cli("--host", "127.0.0.1", "--rest_api_port", str(port), "--model_name", "half_plus_two",
                          "--model_base_path", str(models / "half_plus_two"))
    assert result.returncode == 1
    assert "cannot bind" in json.loads(result.stderr.strip().splitlines()[-1])["message"]


def test_corrupt_model_stops_the_server(tmp_path):
    (tmp_path / "bad" / "1").mkdir(parents=True)
    (tmp_path / "bad" / "1" / "model.onnx").write_bytes(b"not a model")
    result = _run_cli("--rest_api_port", "0", "--model_name", "bad", "--model_base_path", str(tmp_path / "bad"))
    assert result.returncode != 0
    assert "cannot load" in result.stderr


def test_latest_policy_serves_only_the_highest_version(models):
    server = start_server(models, "digits_logreg", "--model_version_policy", "latest")
    try:
        assert requests.get(f"{server.url}/v1/models/digits_logreg", timeout=10).json() == _status("2")
        assert requests.get(f"{server.url}/v1/models/digits_logreg/labels/canary", timeout=10).json() == _status("2")
        assert_error(requests.get(f"{server.url}/v1/models/digits_logreg/labels/stable", timeout=10), 404)
    finally:
        server.stop()


def test_concurrent_clients_get_consistent_answers(hp2):
    errors: list[str] = []

    def client(offset: int) -> None:
        with requests.Session() as session:
            for i in range(20):
                x = float(offset * 100 + i)
                got = session.post(f"{hp2.url}/v1/models/half_plus_two:predict",
                                   data=json.dumps({"instances": [x]}), timeout=10).json()
                if got != {"predictions": [x / 2 + 2]}:
                    errors.append(f"{x}: {got}")

    threads = [threading.Thread(target=client, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []




# --- issue 11, point 7 -----------------------------------------------------------------------------

@pytest.mark.parametrize("flag, value", [
    ("--max_body_bytes", "-1"), ("--max_body_bytes", "0"), ("--max_body_bytes", "99999999999999"),
    ("--max_body_bytes", "nan"), ("--rest_api_port", "-1"), ("--rest_api_port", "70000"),
    ("--rest_api_num_threads", "0"), ("--rest_api_num_threads", "-4"), ("--rest_api_num_threads", "100000"),
    ("--max_concurrent_inferences", "-1"), ("--max_concurrent_inferences", "2000"),
    ("--graceful_timeout", "nan"), ("--graceful_timeout", "inf"), ("--graceful_timeout", "-5"),
    ("--graceful_timeout", "1e300"), ("--model_version_policy", "newest"),
])
def test_bad_flag_values_exit_2_in_one_line(tmp_path, flag, value):
    result = _run_cli("--rest_api_port", "0", "--model_name", "m", "--model_base_path", str(tmp_path), flag, value)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and flag in lines[0], result.stderr


def _worker_rss_mb(server: Server) -> float:
    import psutil

    workers = psutil.Process(server.proc.pid).children()
    assert len(workers) == 1
    return workers[0].memory_info().rss / 2 ** 20


def test_memory_returns_to_the_baseline_after_large_bodies(models):
    """One ~30 MB body used to leave the worker 70 MB larger for good (and digits_cnn 2 GB larger: ONNX
    Runtime's arena); three of them 150 MB. Now every large request gives its memory back."""
    server = start_server(models, "half_plus_two")
    try:
        url = f"{server.url}/v1/models/half_plus_two:predict"
        assert requests.post(url, json={"instances": [1.0, 2.0]}, timeout=10).status_code == 200
        baseline = _worker_rss_mb(server)
        count = 30 * 2 ** 20 // 13
        valid = b'{"instances":[' + b"1.234567891," * (count - 1) + b"1.0]}"
        invalid = valid[:-3] + b"x]}"
        for body, status in ((valid, 200), (invalid, 400), (valid, 200)):
            response = requests.post(url, data=body, timeout=300)
            assert response.status_code == status
            if status == 200:
                assert len(response.json()["predictions"]) == count
        settled = _worker_rss_mb(server)
        assert settled < baseline + 30, f"worker RSS {baseline:.0f} MB -> {settled:.0f} MB after three 30 MB bodies"
        assert settled < 1.5 * baseline + 50
    finally:
        server.stop()


def test_a_large_batch_runs_in_chunks_with_the_same_answers(models):
    """More rows than CHUNK_ROWS are run in slices: the same predictions as one run would give."""
    from modelserver.repository import CHUNK_ROWS

    server = start_server(models, "digits_logreg")
    try:
        rows = np.random.default_rng(0).uniform(0, 16, size=(2 * CHUNK_ROWS + 5, 64)).round(2)
        url = f"{server.url}/v1/models/digits_logreg:predict"
        whole = requests.post(url, json={"instances": rows.tolist()}, timeout=120).json()["predictions"]
        parts = [requests.post(url, json={"instances": rows[k:k + 100].tolist()}, timeout=60).json()["predictions"]
                 for k in (0, CHUNK_ROWS - 50, 2 * CHUNK_ROWS - 95)]
        assert len(whole) == len(rows)
        assert parts[0] == whole[:100] and parts[1] == whole[CHUNK_ROWS - 50:CHUNK_ROWS + 50]
        assert parts[2] == whole[2 * CHUNK_ROWS - 95:]
    finally:
        server.stop()


def test_the_wait_for_a_request_thread_is_the_servers_time_not_the_networks(models):
    """One request thread, four large batches at once: the later ones wait for the thread. What a
    client subtracts (Server-Timing app) must include that wait, or it would report the queue as
    network distance (the testbed's clients do exactly that subtraction)."""
    server = start_server(models, "digits_cnn", "--rest_api_num_threads", "1")
    try:
        url = f"{server.url}/v1/models/digits_cnn:predict"
        rows = np.random.default_rng(1).uniform(0, 16, size=(40, 64)).round(2).tolist()
        assert requests.post(url, json={"instances": rows[:1]}, timeout=30).status_code == 200   # warm

        def call() -> tuple[float, float, float]:
            t0 = time.perf_counter()
            answer = requests.post(url, json={"instances": rows}, timeout=120)
            elapsed = time.perf_counter() - t0
            assert answer.status_code == 200
            timing = dict(part.strip().split(";dur=") for part in answer.headers["Server-Timing"].split(","))
            return elapsed, float(timing["wait"]) / 1000, float(timing["app"]) / 1000

        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda _: call(), range(4)))
        one = min(app - wait for _, wait, app in results)        # one batch's own time
        assert max(wait for _, wait, _ in results) > 1.5 * one, results   # somebody queued behind two
        for elapsed, wait, app in results:
            assert elapsed - app < max(0.25, 0.5 * one), results  # what is left is loopback, not queue
    finally:
        server.stop()


def _timed_predict(url: str, rows: list) -> dict[str, float]:
    """POST one predict; return its Server-Timing metrics in seconds."""
    answer = requests.post(url, json={"instances": rows}, timeout=120)
    assert answer.status_code == 200
    return {k: float(v) / 1000 for k, v in (part.strip().split(";dur=")
                                            for part in answer.headers["Server-Timing"].split(","))}


def test_max_concurrent_inferences_serves_calls_one_at_a_time_in_arrival_order(models):
    """--max_concurrent_inferences 1 with 4 request threads: calls no longer share the CPU (each
    computes in about one call's time) and the wait for a turn is reported as `wait`."""
    server = start_server(models, "digits_cnn", "--max_concurrent_inferences", "1")
    try:
        url = f"{server.url}/v1/models/digits_cnn:predict"
        rows = np.random.default_rng(3).uniform(0, 16, size=(40, 64)).round(2).tolist()
        call = functools.partial(_timed_predict, url, rows)

        call()
        one = min(t["app"] - t["wait"] for t in (call() for _ in range(3)))
        with ThreadPoolExecutor(4) as pool:
            together = list(pool.map(lambda _: call(), range(8)))
        computes = sorted(t["app"] - t["wait"] for t in together)
        assert computes[len(computes) // 2] < 1.6 * one, (one, together)     # not shared 4 ways
        assert max(t["wait"] for t in together) > 1.5 * one, together          # the others waited
        assert requests.get(f"{server.url}/v1/models/digits_cnn", timeout=10).status_code == 200
    finally:
        server.stop()


def test_pace_is_the_busy_time_per_answer_not_the_time_a_request_waited(models):
    """Server-Timing `pace` (modelserver/pace.py): none while calls come alone (each began a busy
    stretch); with calls queued on the one request thread, the time between answers (one call's
    work), while `app` grows with the queue; alone again, the figure is kept."""
    server = start_server(models, "digits_cnn", "--rest_api_num_threads", "1")
    try:
        url = f"{server.url}/v1/models/digits_cnn:predict"
        rows = np.random.default_rng(2).uniform(0, 16, size=(40, 64)).round(2).tolist()
        call = functools.partial(_timed_predict, url, rows)

        call()                                                      # warm
        alone = [call() for _ in range(3)]
        assert all("pace" not in timing for timing in alone), alone
        one = min(t["app"] - t["wait"] for t in alone)
        with ThreadPoolExecutor(6) as pool:
            queued = list(pool.map(lambda _: call(), range(12)))
        assert max(t["app"] for t in queued) > 2.5 * one, queued     # the queue is real...
        assert all("pace-idle" in t for t in alone + queued), (alone, queued)     # kept apart, beside it
        last = max(queued, key=lambda t: t["app"])
        assert 0.5 * one < last["pace"] < 2.0 * max(t["app"] - t["wait"] for t in queued), (one, queued)
        after = call()
        assert "pace" in after and 0.5 * one < after["pace"] < 2.0 * max(t["app"] - t["wait"] for t in queued)
    finally:
        server.stop()


@pytest.mark.parametrize("where", ["plain", "missing"])
def test_an_inference_cgroup_that_is_not_a_cgroup_fails_with_one_json_line(tmp_path, models, where):
    """A folder that is not a cgroup would silently take the thread ids (and leave the inference
    unlimited on a node meant to be slow): refused before the server binds."""
    group = tmp_path if where == "plain" else tmp_path / "none"
    result = _run_cli("--rest_api_port", "0", "--model_name", "half_plus_two",
                      "--model_base_path", str(models / "half_plus_two"), "--inference_cgroup", str(group))
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "is not a cgroup" in json.loads(lines[0])["message"], result.stderr
    assert not (tmp_path / "tasks").exists()
