"""digits_cnn through the real model server: TF Serving's predict and classify, label = argmax."""
from __future__ import annotations

import numpy as np
import pytest
import requests

from modelserver.build_models import build_all, digits_split
from test_modelserver_http import post, start_server


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    out = tmp_path_factory.getbasetemp() / "modelserver-models"
    build_all(out=out, log=lambda _m: None)
    return out


def test_digits_cnn_predicts_and_classifies_through_the_server(models):
    _, _, x_test, y_test = digits_split()
    digits = x_test[:20]
    server = start_server(models, "digits_cnn")
    try:
        rows = post(server, "/v1/models/digits_cnn:predict", {"instances": digits.tolist()})
        assert rows.status_code == 200, rows.text
        predictions = rows.json()["predictions"]
        assert len(predictions) == len(digits)
        labels = [p["label"] for p in predictions]
        assert labels == [int(np.argmax(p["probabilities"])) for p in predictions]
        assert np.mean(np.array(labels) == y_test[:20]) >= 0.85
        one = post(server, "/v1/models/digits_cnn:predict", {"instances": [digits[0].tolist()]}).json()
        assert one["predictions"][0] == predictions[0]
        classify = post(server, "/v1/models/digits_cnn:classify",
                        {"signature_name": "tensorflow/serving/classify",
                         "examples": [{"x": digits[0].tolist()}]})
        assert classify.status_code == 200, classify.text
        scores = classify.json()["results"][0]
        assert [c for c, _ in scores] == [str(i) for i in range(10)]
        np.testing.assert_allclose([s for _, s in scores], predictions[0]["probabilities"], atol=1e-6)
        metadata = requests.get(f"{server.url}/v1/models/digits_cnn/metadata", timeout=10)
        assert metadata.status_code == 200, metadata.text
    finally:
        assert server.stop() == 0
