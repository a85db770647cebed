"""Build the shipped models into `build/models/<name>/<version>/model.onnx`; nothing is downloaded.

`python -m modelserver.build_models --out build/models [--force]`

- `half_plus_two`, `half_plus_three`: TF Serving's toy models (y = x/2 + 2 and x/2 + 3, plus the
  second output y2 = x/2 + 3 and x/2 + 4 of TF Serving's test data) written with `onnx.helper`.
- `digits_logreg` (versions 1 and 2, labels `stable` -> 1 and `canary` -> 2) and `digits_forest`:
  the logistic regression and random forest of the thesis (seed 001) trained on scikit-learn's
  bundled digits data and exported with skl2onnx (label and class probabilities, no ZipMap).
- `digits_cnn`: a small convolutional classifier written with `onnx.helper`, the one shipped model
  that costs real compute (~12 ms of one core per digit on the build machine, like an image model
  on an edge board; the others take well under a millisecond). Same input and outputs as
  `digits_logreg`. Its convolution filters are seeded random, NOT trained; only its final linear
  classifier is trained (see "digits_cnn" below).

Every model carries its TF-Serving-style signatures in the ONNX metadata (`tfs_signatures`), so the
server needs nothing but the model files. The build is deterministic and skipped when the output
already matches this script and the library versions (see `.manifest.json`).
"""
from __future__ import annotations

import argparse
import functools
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
    "build_digits_cnn", "CNN_ACCURACY_KEY", "TRAIN_SAMPLES", "main",
]

SIGNATURES_KEY = "tfs_signatures"
# A one-line note a builder may leave in the ONNX metadata; build_all prints it after the size.
BUILD_NOTE_KEY = "build_note"
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


# ---- digits_cnn: a convolutional classifier that costs real compute ------------------------------
#
# Why: the other models answer in well under a millisecond, so node speed and queueing never show
# on the testbed, while the thesis's models took 0.1-0.8 s on Jetson boards. This one does the
# work of a small image CNN (~0.7 G multiply-adds per digit).
#
# Architecture (a VGG-style stack; every shape is for one digit):
#   x [N, 64] (pixels 0..16, as digits_logreg) -> * 1/16 -> Reshape [N, 1, 8, 8]
#   -> Resize (bilinear) to 64 x 64
#   -> Conv3x3 32 -> Relu -> Conv3x3 64 -> Relu -> Conv3x3 64 -> Relu -> MaxPool 2   (32 x 32)
#   -> Conv3x3 128 -> Relu -> Conv3x3 128 -> Relu -> MaxPool 2                     (16 x 16)
#   -> Conv3x3 256 -> Relu -> Conv3x3 256 -> Relu -> MaxPool 2                     (8 x 8)
#   -> AveragePool 4 -> Flatten: 256 channels x 2 x 2 = 1024 features
#   -> Gemm to 10 logits -> Softmax = `probabilities`, ArgMax = `label` (int64)
# The upsampling adds no information; it is there so the convolutions work on a frame the size
# of a small camera image, which is where the cost comes from (a 8x8 CNN would be as cheap as
# the logistic regression). A global pool to 1x1 loses where strokes are and costs ~3 points of
# accuracy, hence the 2x2 grid.
#
# Weights, plainly: the seven convolutions are fixed random filters (He-scaled normal, seed
# CNN_SEED, zero bias) -- random features, NOT trained. Only the Gemm is trained: the 1024
# features of the first TRAIN_SAMPLES digits are computed with ONNX Runtime (the same graph cut
# at `features`), standardised, and fitted with scikit-learn's LogisticRegression; its
# coefficients (with the standardisation folded in) become the Gemm. Training the convolutions
# too (SGD in numpy) would not change the cost, which is the point of this model, and would make
# the build much slower. Held-out accuracy (the remaining digits) is written into the model's
# metadata (CNN_ACCURACY_KEY) and printed by the build.
#
# Build cost: computing the features takes as much CPU as serving 1797 digits (~22 s of one core
# here), so it runs in one ONNX Runtime thread per core (at most CNN_BUILD_WORKERS): ~11 s on two
# idle cores. Each chunk is computed by one thread and a digit's features do not depend on its
# chunk, so the bytes depend neither on the number of workers nor on CNN_CHUNK. The cost per
# digit and this build time trade off directly: 12 ms per digit keeps the build well under 20 s.

CNN_SEED = 1
CNN_SIZE = 64
# (output channels, 2x2 max-pool after the Relu)
CNN_LAYERS = ((32, False), (64, False), (64, True), (128, False), (128, True), (256, False), (256, True))
CNN_AVG_POOL = 4
CNN_C = 1.0
CNN_CHUNK = 10          # digits per run (the bytes do not depend on it); 50 doubled the peak RSS to ~600 MB
CNN_BUILD_WORKERS = 4
CNN_ACCURACY_KEY = "heldout_accuracy"


def _cnn_graph(classifier=None):
    """Return the digits_cnn ONNX model; without `classifier` (weights, bias) it ends at `features`."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(CNN_SEED)
    scale = CNN_SIZE / 8
    inits = [
        numpy_helper.from_array(np.array(1 / 16, dtype=np.float32), "pixel_scale"),
        numpy_helper.from_array(np.array([-1, 1, 8, 8], dtype=np.int64), "image_shape"),
        numpy_helper.from_array(np.array([1, 1, scale, scale], dtype=np.float32), "resize_scales"),
    ]
    nodes = [
        helper.make_node("Mul", ["x", "pixel_scale"], ["pixels"]),
        helper.make_node("Reshape", ["pixels", "image_shape"], ["image"]),
        helper.make_node("Resize", ["image", "", "resize_scales"], ["layer0"], mode="linear"),
    ]
    current, channels = "layer0", 1
    for i, (out_channels, pool) in enumerate(CNN_LAYERS, start=1):
        fan_in = channels * 9
        weights = (rng.standard_normal((out_channels, channels, 3, 3)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        inits += [numpy_helper.from_array(weights, f"conv{i}_w"),
                  numpy_helper.from_array(np.zeros(out_channels, dtype=np.float32), f"conv{i}_b")]
        nodes += [helper.make_node("Conv", [current, f"conv{i}_w", f"conv{i}_b"], [f"conv{i}"],
                                   kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"conv{i}"], [f"relu{i}"])]
        current = f"relu{i}"
        if pool:
            nodes.append(helper.make_node("MaxPool", [current], [f"pool{i}"], kernel_shape=[2, 2], strides=[2, 2]))
            current = f"pool{i}"
        channels = out_channels
    nodes += [
        helper.make_node("AveragePool", [current], ["grid"], kernel_shape=[CNN_AVG_POOL] * 2,
                         strides=[CNN_AVG_POOL] * 2),
        helper.make_node("Flatten", ["grid"], ["features"], axis=1),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 64])
    if classifier is None:
        outputs = [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, None])]
    else:
        weights, bias = classifier
        inits += [numpy_helper.from_array(weights.astype(np.float32), "classifier_w"),
                  numpy_helper.from_array(bias.astype(np.float32), "classifier_b")]
        nodes += [
            helper.make_node("Gemm", ["features", "classifier_w", "classifier_b"], ["logits"], transB=1),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
            helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=0),
        ]
        outputs = [helper.make_tensor_value_info("label", TensorProto.INT64, [None]),
                   helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, len(bias)])]
    graph = helper.make_graph(nodes, "digits_cnn", [x], outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="modelserver.build_models")
    model.ir_version = 8
    return model


def _cnn_features(x):
    """Return the digits_cnn features of `x` [N, 64], computed by ONNX Runtime, one thread per chunk."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    session = ort.InferenceSession(_cnn_graph().SerializeToString(), sess_options=options,
                                   providers=["CPUExecutionProvider"])
    chunks = [x[i:i + CNN_CHUNK] for i in range(0, len(x), CNN_CHUNK)]
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:       # not Linux
        cores = os.cpu_count() or 1
    # session.run releases the GIL and is safe to call from several threads.
    with ThreadPoolExecutor(max_workers=max(1, min(CNN_BUILD_WORKERS, cores))) as pool:
        return np.concatenate(list(pool.map(lambda chunk: session.run(["features"], {"x": chunk})[0], chunks)))


def _build_digits_cnn() -> bytes:
    import numpy as np
    from onnx import helper
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    x_train, y_train, x_test, y_test = digits_split()
    features = _cnn_features(np.concatenate([x_train, x_test]))
    f_train, f_test = features[:len(x_train)], features[len(x_train):]
    mean = f_train.mean(axis=0, dtype=np.float64)
    std = f_train.std(axis=0, dtype=np.float64) + 1e-6
    with threadpool_limits(limits=1):
        fit = LogisticRegression(C=CNN_C, max_iter=2000).fit((f_train - mean) / std, y_train)
    # Fold the standardisation into the Gemm: w.(f - m)/s + b = (w/s).f + (b - w.(m/s)).
    weights = (fit.coef_ / std).astype(np.float32)
    bias = (fit.intercept_ - fit.coef_ @ (mean / std)).astype(np.float32)
    accuracy = float(np.mean((f_test @ weights.T + bias).argmax(axis=1) == y_test))
    model = _cnn_graph((weights, bias))
    classes = [str(int(c)) for c in fit.classes_]
    signatures = {
        "serving_default": _signature("predict", {"x": "x"},
                                      {"label": "label", "probabilities": "probabilities"}),
        "tensorflow/serving/classify": _signature("classify", {"inputs": "x"},
                                                  {"scores": "probabilities"}, class_labels=classes),
    }
    helper.set_model_props(model, {
        SIGNATURES_KEY: json.dumps(signatures, sort_keys=True),
        CNN_ACCURACY_KEY: f"{accuracy:.4f}",
        BUILD_NOTE_KEY: (f"random conv filters, trained classifier: held-out accuracy {accuracy:.4f} "
                         f"on {len(y_test)} digits"),
    })
    return model.SerializeToString()


@functools.lru_cache(maxsize=1)
def build_digits_cnn() -> bytes:
    """Return the digits_cnn ONNX bytes (deterministic; cached per process, as a build takes seconds).

    `_build_digits_cnn()` builds it afresh.
    """
    return _build_digits_cnn()


MODELS: list[ModelBuild] = [
    ModelBuild("half_plus_two", {1: lambda: _half_plus(2.0, 3.0, name="half_plus_two")}, {}),
    ModelBuild("half_plus_three", {1: lambda: _half_plus(3.0, 4.0, name="half_plus_three")}, {}),
    ModelBuild(
        "digits_logreg",
        {v: (lambda v=v: _classifier_onnx(train_digits_logreg(v), name="digits_logreg")) for v in (1, 2)},
        {"stable": 1, "canary": 2},
    ),
    ModelBuild("digits_forest", {1: lambda: _classifier_onnx(train_digits_forest(), name="digits_forest")}, {}),
    ModelBuild("digits_cnn", {1: build_digits_cnn}, {}),
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


def _check_loads(data: bytes, *, name: str) -> str:
    """Load the model into ONNX Runtime (or raise); return its build note ("" if none)."""
    import onnxruntime

    try:
        session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise RuntimeError(f"{name}: ONNX Runtime cannot load the built model: {exc}") from exc
    return session.get_modelmeta().custom_metadata_map.get(BUILD_NOTE_KEY, "")


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
            note = _check_loads(data, name=f"{model.name}/{version}")
            _write_atomic(base / str(version) / "model.onnx", data)
            log(f"built {model.name}/{version}/model.onnx ({len(data)} bytes, "
                f"{time.monotonic() - started:.2f} s{'; ' + note if note else ''})")
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
