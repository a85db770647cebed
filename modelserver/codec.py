"""TF Serving's REST wire format <-> tensors: pure functions, no I/O.

Predict: the row format (`"instances"`: one item per batch element; objects of named inputs when
the signature has several) and the columnar format (`"inputs"`: the whole tensor, or an object of
named tensors). Row answers are `{"predictions": ...}`, columnar ones `{"outputs": ...}`; a single
output drops its name, several give objects. Classify/regress take `"examples"` (objects of
features, plus optional shared `"context"`) and answer `{"results": ...}`.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .errors import BadRequest
from .repository import Signature, TensorInfo

__all__ = ["PredictRequest", "parse_predict", "predict_response", "parse_examples", "classify_response",
           "regress_response", "to_tensor"]

_NUMERIC_KINDS = {"b": "bool", "i": "integer", "u": "integer", "f": "float"}


class PredictRequest:
    """A decoded predict call: its format ("row" or "columnar"), signature and graph feeds."""

    __slots__ = ("row", "signature", "feeds", "batch")

    def __init__(self, *, row: bool, signature: Signature, feeds: dict[str, np.ndarray], batch: int | None):
        self.row = row
        self.signature = signature
        self.feeds = feeds
        self.batch = batch


def to_tensor(value: Any, info: TensorInfo, *, alias: str) -> np.ndarray:
    """Convert a JSON value to a tensor of `info`'s dtype and check it against `info`'s shape."""
    if info.dtype is np.object_:
        array = np.asarray(value, dtype=object)
        if not all(isinstance(v, str) for v in array.flat):
            raise BadRequest(f'input "{alias}" expects strings')
    else:
        try:
            array = np.asarray(value)
        except ValueError as exc:  # ragged nested lists
            raise BadRequest(f'input "{alias}": nested lists must all have the same length ({exc})') from None
        kind = array.dtype.kind
        want = np.dtype(info.dtype).kind
        if kind not in _NUMERIC_KINDS:
            raise BadRequest(f'input "{alias}" expects {np.dtype(info.dtype).name} values, got '
                             f'{"strings" if kind == "U" else "mixed or null values"}')
        if (kind == "b") != (want == "b"):
            raise BadRequest(f'input "{alias}" expects {np.dtype(info.dtype).name} values, got '
                             f'{_NUMERIC_KINDS[kind]} values')
        if kind == "f" and want in "iu":
            if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
                raise BadRequest(f'input "{alias}" expects integer values')
        array = array.astype(info.dtype, copy=False)
    _check_shape(array.shape, info, alias=alias)
    return array


def _check_shape(shape: tuple[int, ...], info: TensorInfo, *, alias: str) -> None:
    if info.shape is None:
        return
    expected = info.shape
    if len(shape) != len(expected) or any(e is not None and e != s for s, e in zip(shape, expected)):
        want = "[" + ", ".join("-1" if e is None else str(e) for e in expected) + "]"
        raise BadRequest(f'input "{alias}" has shape {list(shape)} but the signature expects {want}')


def _stack(values: list, info: TensorInfo, *, alias: str) -> np.ndarray:
    return to_tensor(values, info, alias=alias)


def parse_predict(body: Any, *, signature_of) -> PredictRequest:
    """Decode a predict body; `signature_of(name)` returns the signature or raises."""
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    has_rows, has_cols = "instances" in body, "inputs" in body
    if has_rows and has_cols:
        raise BadRequest("Request body may contain either 'instances' or 'inputs', not both")
    if not has_rows and not has_cols:
        raise BadRequest("Missing 'instances' or 'inputs' key in request body")
    name = body.get("signature_name")
    if name is not None and not isinstance(name, str):
        raise BadRequest("'signature_name' must be a string")
    # As TF Serving's Predict, any signature runs (predict, classify or regress): its tensors by alias.
    signature = signature_of(name)
    inputs = signature.inputs
    if has_rows:
        instances = body["instances"]
        if not isinstance(instances, list) or not instances:
            raise BadRequest("'instances' must be a non-empty list")
        named = all(isinstance(i, dict) for i in instances)
        if any(isinstance(i, dict) for i in instances) and not named:
            raise BadRequest("'instances' mixes named (object) and unnamed items")
        if len(inputs) > 1 and not named:
            raise BadRequest(f"the signature has {len(inputs)} inputs ({', '.join(sorted(inputs))}): "
                             "each instance must be an object of named inputs")
        if named:
            for index, item in enumerate(instances):
                keys = set(item)
                if keys != set(inputs):
                    raise BadRequest(f"instance {index} has inputs {sorted(keys)}, expected {sorted(inputs)}")
            feeds = {info.name: _stack([item[alias] for item in instances], info, alias=alias)
                     for alias, info in inputs.items()}
        else:
            alias, info = next(iter(inputs.items()))
            feeds = {info.name: _stack(instances, info, alias=alias)}
        return PredictRequest(row=True, signature=signature, feeds=feeds, batch=len(instances))
    value = body["inputs"]
    if isinstance(value, dict):  # a tensor is never a JSON object: this is the named form
        if set(value) != set(inputs):
            raise BadRequest(f"'inputs' has {sorted(value)}, expected {sorted(inputs)}")
        feeds = {info.name: to_tensor(value[alias], info, alias=alias) for alias, info in inputs.items()}
    elif len(inputs) > 1:
        raise BadRequest(f"the signature has {len(inputs)} inputs ({', '.join(sorted(inputs))}): "
                         "'inputs' must be an object of named tensors")
    else:
        alias, info = next(iter(inputs.items()))
        feeds = {info.name: to_tensor(value, info, alias=alias)}
    return PredictRequest(row=False, signature=signature, feeds=feeds, batch=None)


def predict_response(request: PredictRequest, outputs: list[np.ndarray]) -> dict:
    """Encode the graph outputs as TF Serving does for the request's format."""
    aliases = list(request.signature.outputs)
    if not request.row:
        if len(aliases) == 1:
            return {"outputs": outputs[0].tolist()}
        return {"outputs": {alias: out.tolist() for alias, out in zip(aliases, outputs)}}
    batch = request.batch
    for alias, out in zip(aliases, outputs):
        if out.ndim == 0 or out.shape[0] != batch:
            raise BadRequest(f'output "{alias}" has shape {list(out.shape)}, whose 0-th dimension is not '
                             f"the batch size {batch}: use the columnar ('inputs') format")
    if len(aliases) == 1:
        return {"predictions": outputs[0].tolist()}
    columns = [out.tolist() for out in outputs]
    return {"predictions": [dict(zip(aliases, row)) for row in zip(*columns)]}


def parse_examples(body: Any, *, method: str, signature_of) -> tuple[Signature, dict[str, np.ndarray], int]:
    """Decode a classify/regress body into (signature, graph feeds, number of examples)."""
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    name = body.get("signature_name")
    if name is not None and not isinstance(name, str):
        raise BadRequest("'signature_name' must be a string")
    signature = signature_of(name)
    expected = f"tensorflow/serving/{method}"
    if signature.method_name != expected:
        kind = {"classify": "classification", "regress": "regression"}[method]
        raise BadRequest(f"Expected {kind} signature method_name to be {expected}. Was: {signature.method_name}")
    examples = body.get("examples")
    if not isinstance(examples, list) or not examples or not all(isinstance(e, dict) for e in examples):
        raise BadRequest("'examples' must be a non-empty list of objects")
    context = body.get("context", {})
    if not isinstance(context, dict):
        raise BadRequest("'context' must be an object")
    features = {info.name: info for info in signature.inputs.values()}
    feeds = {}
    for feature, info in features.items():
        if feature in context:
            if any(feature in e for e in examples):
                raise BadRequest(f'feature "{feature}" appears in both context and examples')
            values = [context[feature]] * len(examples)
        else:
            missing = [i for i, e in enumerate(examples) if feature not in e]
            if missing:
                raise BadRequest(f'example {missing[0]} lacks feature "{feature}"')
            values = [e[feature] for e in examples]
        feeds[feature] = to_tensor(values, info, alias=feature)
    return signature, feeds, len(examples)


def classify_response(signature: Signature, outputs: list[np.ndarray], count: int) -> dict:
    """Encode classification scores (and class labels) as `{"results": [[[label, score], ...], ...]}`."""
    by_alias = dict(zip(signature.outputs, outputs))
    scores = by_alias.get("scores")
    classes = by_alias.get("classes")
    if scores is None:
        raise BadRequest("the classification signature has no 'scores' output")
    scores = scores.reshape(count, -1) if scores.size else scores.reshape(count, 0)
    if classes is not None:
        labels = [[str(c) for c in row] for row in classes.reshape(count, -1).tolist()]
    else:
        width = scores.shape[1]
        names = list(signature.class_labels) if len(signature.class_labels) == width else [""] * width
        labels = [names] * count
    return {"results": [[[label, score] for label, score in zip(row_labels, row_scores)]
                        for row_labels, row_scores in zip(labels, scores.tolist())]}


def regress_response(signature: Signature, outputs: list[np.ndarray], count: int) -> dict:
    """Encode one regression value per example as `{"results": [...]}`."""
    if len(outputs) != 1 or outputs[0].size != count:
        raise BadRequest("the regression signature must give exactly one value per example")
    return {"results": outputs[0].reshape(count).tolist()}
