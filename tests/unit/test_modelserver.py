"""Model server pieces without a server process: wire format, layout, build script, the WSGI app."""
from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest

from modelserver import codec
from modelserver.app import ModelServerApp
from modelserver.build_models import MODELS, build_all
from modelserver.errors import BadRequest
from modelserver.layout import LoadError, scan_layout
from common.logs import JsonFormatter
from modelserver.repository import Signature, TensorInfo, load_repository

F32 = np.float32
X_ANY = TensorInfo("x", F32, "DT_FLOAT", None)
X_64 = TensorInfo("x", F32, "DT_FLOAT", (None, 64))
IDS = TensorInfo("ids", np.int64, "DT_INT64", (None,))
LABEL = TensorInfo("label", np.int64, "DT_INT64", (None,))
PROBS = TensorInfo("probabilities", F32, "DT_FLOAT", (None, 3))


def sig(inputs: dict, outputs: dict, method: str = "predict", labels: tuple = ()) -> Signature:
    return Signature("s", f"tensorflow/serving/{method}", inputs, outputs, labels)


def lookup(signature: Signature):
    return lambda name: signature


# ---- codec --------------------------------------------------------------------------------------

def test_row_format_single_input_stacks_instances():
    request = codec.parse_predict({"instances": [1, 2, 5]}, signature_of=lookup(sig({"x": X_ANY}, {"y": X_ANY})))
    assert request.row and request.batch == 3
    np.testing.assert_array_equal(request.feeds["x"], np.array([1, 2, 5], dtype=F32))
    assert request.feeds["x"].dtype == F32


def test_row_format_multiple_inputs_needs_objects():
    signature = sig({"a": X_ANY, "ids": IDS}, {"y": X_ANY})
    request = codec.parse_predict({"instances": [{"a": 1.5, "ids": 3}, {"a": 2.5, "ids": 4}]},
                                  signature_of=lookup(signature))
    assert request.feeds["ids"].tolist() == [3, 4] and request.feeds["ids"].dtype == np.int64
    with pytest.raises(BadRequest, match="must be an object of named inputs"):
        codec.parse_predict({"instances": [1, 2]}, signature_of=lookup(signature))
    with pytest.raises(BadRequest, match="mixes"):
        codec.parse_predict({"instances": [{"a": 1, "ids": 1}, 2]}, signature_of=lookup(signature))


def test_columnar_format_takes_the_whole_tensor_or_named_tensors():
    signature = sig({"x": X_64}, {"y": X_ANY})
    whole = codec.parse_predict({"inputs": [[0] * 64]}, signature_of=lookup(signature))
    named = codec.parse_predict({"inputs": {"x": [[0] * 64]}}, signature_of=lookup(signature))
    assert not whole.row and whole.feeds["x"].shape == named.feeds["x"].shape == (1, 64)


@pytest.mark.parametrize("body, message", [
    ({"instances": [1], "inputs": [1]}, "not both"),
    ({}, "Missing"),
    ([], "JSON object"),
    ({"instances": [1.5]}, "integer values"),
    ({"instances": [[1]]}, "shape"),
])
def test_bad_predict_bodies(body, message):
    with pytest.raises(BadRequest, match=message):
        codec.parse_predict(body, signature_of=lookup(sig({"ids": IDS}, {"y": X_ANY})))


def test_integers_are_accepted_where_whole_floats_are_sent():
    request = codec.parse_predict({"instances": [1.0, 2.0]}, signature_of=lookup(sig({"ids": IDS}, {"y": X_ANY})))
    assert request.feeds["ids"].tolist() == [1, 2]


def test_row_response_with_several_outputs_is_a_list_of_objects():
    signature = sig({"x": X_64}, {"label": LABEL, "probabilities": PROBS})
    request = codec.parse_predict({"instances": [[0] * 64, [1] * 64]}, signature_of=lookup(signature))
    outputs = [np.array([2, 0]), np.array([[0, 0, 1], [1, 0, 0]], dtype=F32)]
    assert codec.predict_response(request, outputs) == {"predictions": [
        {"label": 2, "probabilities": [0.0, 0.0, 1.0]}, {"label": 0, "probabilities": [1.0, 0.0, 0.0]}]}
    request.row = False
    assert codec.predict_response(request, outputs) == {"outputs": {
        "label": [2, 0], "probabilities": [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]}}


def test_row_response_needs_a_batch_dimension():
    signature = sig({"x": X_ANY}, {"y": X_ANY})
    request = codec.parse_predict({"instances": [1, 2]}, signature_of=lookup(signature))
    with pytest.raises(BadRequest, match="columnar"):
        codec.predict_response(request, [np.array(3.0, dtype=F32)])


def test_examples_with_context_and_classify_labels():
    signature = sig({"inputs": X_ANY}, {"scores": PROBS}, method="classify", labels=("a", "b", "c"))
    found, feeds, count = codec.parse_examples({"examples": [{}, {}], "context": {"x": [1, 2]}},
                                               method="classify", signature_of=lookup(signature))
    assert count == 2 and feeds["x"].tolist() == [[1, 2], [1, 2]]
    scores = [np.array([[0.5, 0.25, 0.25], [0, 1, 0]], dtype=F32)]
    assert codec.classify_response(found, scores, 2) == {"results": [
        [["a", 0.5], ["b", 0.25], ["c", 0.25]], [["a", 0.0], ["b", 1.0], ["c", 0.0]]]}
    with pytest.raises(BadRequest, match="both context and examples"):
        codec.parse_examples({"examples": [{"x": 1}], "context": {"x": 2}}, method="classify",
                             signature_of=lookup(signature))
    with pytest.raises(BadRequest, match="Expected regression signature"):
        codec.parse_examples({"examples": [{"x": 1}]}, method="regress", signature_of=lookup(signature))


def test_regress_response_is_one_value_per_example():
    signature = sig({"inputs": X_ANY}, {"outputs": X_ANY}, method="regress")
    assert codec.regress_response(signature, [np.array([[1.5], [2.5]], dtype=F32)], 2) == {"results": [1.5, 2.5]}
    with pytest.raises(BadRequest):
        codec.regress_response(signature, [np.array([1.0, 2.0, 3.0], dtype=F32)], 2)


# ---- layout -------------------------------------------------------------------------------------

def _model_dir(root: Path, versions: list[int], labels: dict | None = None) -> Path:
    for v in versions:
        (root / str(v)).mkdir(parents=True)
        (root / str(v) / "model.onnx").write_bytes(b"")
    (root / "notes").mkdir(parents=True, exist_ok=True)       # ignored: not a version
    (root / "7").mkdir()                                       # ignored: no model file
    if labels is not None:
        (root / "labels.json").write_text(json.dumps(labels))
    return root


def test_layout_finds_numeric_versions_and_labels(tmp_path):
    layout = scan_layout(name="m", base_path=_model_dir(tmp_path / "m", [1, 10, 2], {"stable": 2}))
    assert layout.versions == (1, 2, 10) and layout.labels == {"stable": 2}
    latest = scan_layout(name="m", base_path=tmp_path / "m", version_policy="latest")
    assert latest.versions == (10,) and latest.labels == {}


@pytest.mark.parametrize("versions, labels, message", [
    ([], None, "No versions of servable m"),
    ([1], {"stable": 3}, "not served"),
    ([1], {"stable": "one"}, "non-negative integer"),
    ([1], ["stable"], "expected an object"),
])
def test_layout_errors(tmp_path, versions, labels, message):
    base = _model_dir(tmp_path / "m", versions, labels)
    with pytest.raises(LoadError, match=message):
        scan_layout(name="m", base_path=base)


def test_layout_reads_zero_padded_versions_as_tf_serving_does(tmp_path, models):
    base = tmp_path / "m"
    (base / "00000123").mkdir(parents=True)
    (base / "00000123" / "model.onnx").write_bytes((models / "half_plus_two" / "1" / "model.onnx").read_bytes())
    layout = scan_layout(name="m", base_path=base)
    assert layout.versions == (123,) and layout.path_of(123) == base / "00000123"
    repository = load_repository(name="m", base_path=base)
    assert repository.latest == 123
    (base / "123").mkdir()
    (base / "123" / "model.onnx").write_bytes(b"")
    with pytest.raises(LoadError, match="both version 123"):
        scan_layout(name="m", base_path=base)


def test_layout_of_a_missing_folder(tmp_path):
    with pytest.raises(LoadError, match="does not exist"):
        scan_layout(name="m", base_path=tmp_path / "nope")


# ---- build script and the app in-process --------------------------------------------------------

@pytest.fixture(scope="session")
def models(tmp_path_factory) -> Path:
    out = tmp_path_factory.getbasetemp() / "modelserver-models"
    build_all(out=out, log=lambda _m: None)
    return out


def test_build_is_complete_and_idempotent(models):
    for model in MODELS:
        for version in model.versions:
            assert (models / model.name / str(version) / "model.onnx").stat().st_size > 0
    assert json.loads((models / "digits_logreg" / "labels.json").read_text()) == {"canary": 2, "stable": 1}
    messages: list[str] = []
    assert build_all(out=models, log=messages.append) is False
    assert messages == [f"models in {models} are up to date"]


def test_build_rebuilds_a_missing_file(tmp_path):
    out = tmp_path / "models"
    build_all(out=out, log=lambda _m: None)
    first = (out / "half_plus_two" / "1" / "model.onnx").read_bytes()
    (out / "half_plus_two" / "1" / "model.onnx").unlink()
    assert build_all(out=out, log=lambda _m: None) is True
    assert (out / "half_plus_two" / "1" / "model.onnx").read_bytes() == first   # deterministic


def call(app: ModelServerApp, method: str, path: str, body: bytes = b"", headers: dict | None = None):
    environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "wsgi.input": io.BytesIO(body),
               "CONTENT_LENGTH": str(len(body)) if body else ""}
    environ.update(headers or {})
    seen = {}

    def start_response(status, response_headers):
        seen["status"] = int(status.split()[0])
        seen["headers"] = dict(response_headers)

    payload = b"".join(app(environ, start_response))
    return seen["status"], seen["headers"], json.loads(payload)


@pytest.fixture(scope="module")
def app(models):
    repository = load_repository(name="half_plus_two", base_path=models / "half_plus_two")
    return ModelServerApp(repository, max_body=1000)


def test_app_predicts_in_process(app):
    status, headers, payload = call(app, "POST", "/v1/models/half_plus_two:predict", b'{"instances": [1, 2, 5]}')
    assert (status, payload) == (200, {"predictions": [2.5, 3.0, 4.5]})
    assert headers["Content-Length"] == str(len(json.dumps(payload, separators=(",", ":"))))


def test_app_refuses_a_body_over_the_limit(app):
    body = json.dumps({"instances": [1.0] * 500}).encode()
    status, _, payload = call(app, "POST", "/v1/models/half_plus_two:predict", body)
    assert status == 413 and "exceeds the limit" in payload["error"]
    status, _, payload = call(app, "POST", "/v1/models/half_plus_two:predict", body,
                              {"CONTENT_LENGTH": ""})   # chunked: no length given
    assert status == 413


def test_app_rejects_a_bad_content_length(app):
    status, _, payload = call(app, "POST", "/v1/models/half_plus_two:predict", b"{}", {"CONTENT_LENGTH": "x"})
    assert status == 400 and "Content-Length" in payload["error"]


def test_app_turns_an_unexpected_failure_into_a_500_json_error(models):
    repository = load_repository(name="half_plus_two", base_path=models / "half_plus_two")
    repository.servables[1].session = None          # a broken servable: run() will fail oddly
    status, _, payload = call(ModelServerApp(repository), "POST", "/v1/models/half_plus_two:predict",
                              b'{"instances": [1]}')
    assert status == 500 and payload == {"error": "internal error: AttributeError"}


def test_app_maps_an_onnx_runtime_invalid_argument_to_400(app):
    status, _, payload = call(app, "POST", "/v1/models/half_plus_two:predict", b'{"inputs": {"x": []}}')
    assert status == 200 and payload == {"outputs": []}   # any rank, even empty, is valid here
    repository = app.repository
    signature = repository.servables[1].signatures["serving_default"]
    with pytest.raises(BadRequest, match="inference failed"):
        repository.servables[1].run(signature, {"x": np.zeros(2, dtype=np.float64)})


def test_json_formatter_writes_one_object_per_line():
    record = logging.LogRecord("modelserver", logging.INFO, __file__, 1, "hello %s", ("you",), None)
    record.fields = {"event": "ready", "port": 8501}
    line = JsonFormatter("modelserver").format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "hello you" and entry["event"] == "ready" and entry["level"] == "info"
