"""Build the shipped models into `build/models/<name>/<version>/model.onnx`; nothing is downloaded.

`python -m modelserver.build_models --out build/models [--force]`

- `half_plus_two`, `half_plus_three`: TF Serving's toy models (y = x/2 + 2 and x/2 + 3, plus the
  second output y2 = x/2 + 3 and x/2 + 4 of TF Serving's test data) written with `onnx.helper`.
- `digits_logreg` (versions 1 and 2, labels `stable` -> 1 and `canary` -> 2) and `digits_forest`:
  the logistic regression and random forest of the thesis (seed 001) trained on scikit-learn's
  bundled digits data and exported with skl2onnx (label and class probabilities, no ZipMap).

Every model carries its TF-Serving-style signatures in the ONNX metadata (`tfs_signatures`), so the
server needs nothing but the model files. The build is deterministic and skipped when the output
already matches this script and the library versions (see `.manifest.json`).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

__all__ = [
    "MODELS", "ModelBuild", "build_all", "digits_split", "train_digits_logreg", "train_digits_forest",
    "TRAIN_SAMPLES", "main",
]

SIGNATURES_KEY = "tfs_signatures"
MANIFEST = ".manifest.json"
LABELS_FILE = "labels.json"
# The digits data set has 1797 samples: train on the first 1500, keep the rest for checks.
TRAIN_SAMPLES = 1500
OPSET = 15
ML_OPSET = 3


@dataclass(frozen=True)
class ModelBuild:
    """One servable model: its versions (version -> builder of the ONNX bytes) and version labels."""

    name: str
    versions: dict[int, Callable[[], bytes]]
    labels: dict[str, int]


# ---- toy regression models (TF Serving's half_plus_two / half_plus_three) -------------------------

def _half_plus(b: float, c: float, *, name: str) -> bytes:
    """Return y = x/2 + b and y2 = x/2 + c over a float tensor of any shape, like TF's test models."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, None)   # unknown rank, as in TF
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    y2 = helper.make_tensor_value_info("y2", TensorProto.FLOAT, None)
    inits = [numpy_helper.from_array(np.array(v, dtype=np.float32), n)
             for n, v in (("a", 0.5), ("b", b), ("c", c))]
    nodes = [
        helper.make_node("Mul", ["x", "a"], ["ax"]),
        helper.make_node("Add", ["ax", "b"], ["y"]),
        helper.make_node("Add", ["ax", "c"], ["y2"]),
    ]
    graph = helper.make_graph(nodes, name, [x], [y, y2], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="modelserver.build_models")
    model.ir_version = 8
    signatures = {
        "serving_default": _signature("predict", {"x": "x"}, {"y": "y"}),
        "tensorflow/serving/predict": _signature("predict", {"x": "x"}, {"y": "y"}),
        "tensorflow/serving/regress": _signature("regress", {"inputs": "x"}, {"outputs": "y"}),
        "tensorflow/serving/classify": _signature("classify", {"inputs": "x"}, {"scores": "y"}),
        "regress_x_to_y": _signature("regress", {"inputs": "x"}, {"outputs": "y"}),
        "regress_x_to_y2": _signature("regress", {"inputs": "x"}, {"outputs": "y2"}),
        "classify_x_to_y": _signature("classify", {"inputs": "x"}, {"scores": "y"}),
    }
    helper.set_model_props(model, {SIGNATURES_KEY: json.dumps(signatures, sort_keys=True)})
    return model.SerializeToString()


def _signature(method: str, inputs: dict[str, str], outputs: dict[str, str], **extra: Any) -> dict:
    return {"method_name": f"tensorflow/serving/{method}", "inputs": inputs, "outputs": outputs, **extra}


# ---- digits classifiers (seed 001) ---------------------------------------------------------------

def digits_split():
    """Return (x_train, y_train, x_test, y_test) of scikit-learn's bundled digits data, as float32."""
    import numpy as np
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = digits.data.astype(np.float32)
    y = digits.target
    return x[:TRAIN_SAMPLES], y[:TRAIN_SAMPLES], x[TRAIN_SAMPLES:], y[TRAIN_SAMPLES:]


def train_digits_logreg(version: int):
    """Train the logistic regression of `version` (1: more strongly regularised, 2: the newer one)."""
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    x, y, _, _ = digits_split()
    c = {1: 0.001, 2: 0.01}[version]
    # One BLAS thread: on a small shared machine more threads make the fit 100x slower, not faster.
    with threadpool_limits(limits=1):
        return LogisticRegression(C=c, solver="newton-cg", max_iter=1000).fit(x, y)


def train_digits_forest():
    """Train the (deliberately small) random forest: 30 trees of depth at most 10."""
    from sklearn.ensemble import RandomForestClassifier
    from threadpoolctl import threadpool_limits

    x, y, _, _ = digits_split()
    model = RandomForestClassifier(n_estimators=30, max_depth=10, random_state=0, n_jobs=1)
    with threadpool_limits(limits=1):
        return model.fit(x, y)


def _classifier_onnx(estimator, *, name: str) -> bytes:
    from onnx import helper
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    onx = convert_sklearn(
        estimator, name=name, initial_types=[("x", FloatTensorType([None, 64]))],
        options={id(estimator): {"zipmap": False}},
        target_opset={"": OPSET, "ai.onnx.ml": ML_OPSET},
    )
    onx.producer_name = "modelserver.build_models"
    onx.producer_version = ""
    outputs = [o.name for o in onx.graph.output]
    if outputs != ["label", "probabilities"]:
        raise RuntimeError(f"unexpected skl2onnx outputs for {name}: {outputs}")
    classes = [str(int(c)) for c in estimator.classes_]
    signatures = {
        "serving_default": _signature("predict", {"x": "x"},
                                      {"label": "label", "probabilities": "probabilities"}),
        "tensorflow/serving/classify": _signature("classify", {"inputs": "x"},
                                                  {"scores": "probabilities"}, class_labels=classes),
    }
    helper.set_model_props(onx, {SIGNATURES_KEY: json.dumps(signatures, sort_keys=True)})
    return onx.SerializeToString()


MODELS: list[ModelBuild] = [
    ModelBuild("half_plus_two", {1: lambda: _half_plus(2.0, 3.0, name="half_plus_two")}, {}),
    ModelBuild("half_plus_three", {1: lambda: _half_plus(3.0, 4.0, name="half_plus_three")}, {}),
    ModelBuild(
        "digits_logreg",
        {v: (lambda v=v: _classifier_onnx(train_digits_logreg(v), name="digits_logreg")) for v in (1, 2)},
        {"stable": 1, "canary": 2},
    ),
    ModelBuild("digits_forest", {1: lambda: _classifier_onnx(train_digits_forest(), name="digits_forest")}, {}),
]


# ---- build with a manifest so a second run is a no-op ---------------------------------------------

def _fingerprint() -> str:
    from importlib.metadata import PackageNotFoundError, version

    digest = hashlib.sha256(Path(__file__).read_bytes())
    for package in ("onnx", "scikit-learn", "skl2onnx", "numpy"):
        try:
            digest.update(f"{package}=={version(package)}".encode())
        except PackageNotFoundError:
            digest.update(package.encode())
    return digest.hexdigest()


def _expected_files(out: Path) -> list[Path]:
    files = []
    for model in MODELS:
        files += [out / model.name / str(v) / "model.onnx" for v in model.versions]
        if model.labels:
            files.append(out / model.name / LABELS_FILE)
    return files


def _up_to_date(out: Path, fingerprint: str) -> bool:
    try:
        manifest = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return manifest.get("fingerprint") == fingerprint and all(p.is_file() for p in _expected_files(out))


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _check_loads(data: bytes, *, name: str) -> None:
    import onnxruntime

    try:
        onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise RuntimeError(f"{name}: ONNX Runtime cannot load the built model: {exc}") from exc


def build_all(*, out: Path, force: bool = False, log: Callable[[str], None] = print) -> bool:
    """Build every model into `out`; return False when it was already up to date (and not forced)."""
    out = Path(out)
    fingerprint = _fingerprint()
    if not force and _up_to_date(out, fingerprint):
        log(f"models in {out} are up to date")
        return False
    for model in MODELS:
        base = out / model.name
        # Versions this build does not produce would be served too: remove stale ones.
        if base.is_dir():
            for child in base.iterdir():
                if child.is_dir() and child.name.isdigit() and int(child.name) not in model.versions:
                    shutil.rmtree(child)
        for version, builder in model.versions.items():
            started = time.monotonic()
            data = builder()
            _check_loads(data, name=f"{model.name}/{version}")
            _write_atomic(base / str(version) / "model.onnx", data)
            log(f"built {model.name}/{version}/model.onnx ({len(data)} bytes, "
                f"{time.monotonic() - started:.2f} s)")
        labels_path = base / LABELS_FILE
        if model.labels:
            _write_atomic(labels_path, (json.dumps(model.labels, indent=2, sort_keys=True) + "\n").encode())
        else:
            labels_path.unlink(missing_ok=True)
    _write_atomic(out / MANIFEST, (json.dumps({"fingerprint": fingerprint,
                                               "models": [m.name for m in MODELS]}, indent=2) + "\n").encode())
    return True


def main(argv: list[str] | None = None) -> int:
    """Build the models; exit 1 with a one-line message on failure."""
    parser = argparse.ArgumentParser(prog="python -m modelserver.build_models",
                                     description="Build the shipped ONNX models (no download).")
    parser.add_argument("--out", default="build/models", help="output folder (default: build/models)")
    parser.add_argument("--force", action="store_true", help="rebuild even when up to date")
    args = parser.parse_args(argv)
    try:
        build_all(out=Path(args.out), force=args.force)
    except Exception as exc:  # a CLI prints one line, never a traceback
        print(f"build_models: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
