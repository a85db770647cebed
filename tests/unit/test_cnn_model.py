"""digits_cnn: deterministic, as accurate as promised, the same interface as digits_logreg, and costly.

The cost check is a lower bound on the model's work (CPU time at one ONNX Runtime thread, with the
model server's own session options), not an upper bound on the speed of our code.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from modelserver.build_models import CNN_ACCURACY_KEY, _build_digits_cnn, build_all, digits_split
from modelserver.repository import _session_options, load_repository

ACCURACY_FLOOR = 0.93          # measured 0.963 on the 297 held-out digits
MIN_CPU_SECONDS = 0.010        # measured ~12.3 ms per digit on a 2-core AMD EPYC VM


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> Path:
    # Same folder as test_modelserver.py's fixture: one build per session however the tests run.
    out = tmp_path_factory.getbasetemp() / "modelserver-models"
    build_all(out=out, log=lambda _m: None)
    return out


@pytest.fixture(scope="module")
def session(models):
    return ort.InferenceSession(str(models / "digits_cnn" / "1" / "model.onnx"), sess_options=_session_options(),
                                providers=["CPUExecutionProvider"])


def test_build_is_deterministic(models):
    assert _build_digits_cnn() == (models / "digits_cnn" / "1" / "model.onnx").read_bytes()


def test_held_out_accuracy_and_label_is_argmax(session):
    _, _, x_test, y_test = digits_split()
    label, probabilities = session.run(["label", "probabilities"], {"x": x_test})
    assert label.dtype == np.int64 and label.shape == (len(x_test),)
    assert probabilities.dtype == np.float32 and probabilities.shape == (len(x_test), 10)
    np.testing.assert_array_equal(label, probabilities.argmax(axis=1))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    accuracy = float(np.mean(label == y_test))
    assert accuracy >= ACCURACY_FLOOR
    # The accuracy the build printed and stored is the served model's.
    stored = float(session.get_modelmeta().custom_metadata_map[CNN_ACCURACY_KEY])
    assert stored == pytest.approx(accuracy, abs=1e-4)


def test_interface_matches_digits_logreg(models):
    cnn = load_repository(name="digits_cnn", base_path=models / "digits_cnn").servables[1].signatures
    logreg = load_repository(name="digits_logreg", base_path=models / "digits_logreg").servables[2].signatures
    assert set(cnn) == set(logreg) == {"serving_default", "tensorflow/serving/classify"}
    for name in cnn:
        assert cnn[name].to_tfs() == logreg[name].to_tfs()
        assert cnn[name].class_labels == logreg[name].class_labels


def test_one_inference_costs_at_least_10_ms_of_cpu_at_one_thread(session):
    x = digits_split()[2]
    for i in range(3):                                  # warm-up
        session.run(None, {"x": x[i:i + 1]})
    calls = 20
    started = time.process_time()
    for i in range(calls):
        session.run(None, {"x": x[i:i + 1]})
    per_call = (time.process_time() - started) / calls
    assert per_call >= MIN_CPU_SECONDS, f"{per_call * 1000:.1f} ms of CPU per digit"


def test_build_output_reports_the_accuracy(models):
    note = load_repository(name="digits_cnn", base_path=models / "digits_cnn").servables[1].session \
        .get_modelmeta().custom_metadata_map["build_note"]
    assert "random conv filters, trained classifier: held-out accuracy 0.9" in note
    assert json.loads((models / ".manifest.json").read_text())["models"][-1] == "digits_cnn"
