"""Load one model's versions from its base path, TF Serving style, into ONNX Runtime sessions.

The folder layout is read by `layout.scan_layout` (no ONNX Runtime, so the server's master
process can validate it cheaply before forking the worker that loads the sessions).
Signatures come from the model's `tfs_signatures` metadata (written by `build_models`); a plain
ONNX file gets one `serving_default` signature over all its inputs and outputs.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BadRequest, NotFound
from .layout import MODEL_FILE, LoadError, scan_layout

__all__ = ["TensorInfo", "Signature", "Servable", "ModelRepository", "LoadError", "load_repository",
           "DEFAULT_SIGNATURE"]

DEFAULT_SIGNATURE = "serving_default"
SIGNATURES_KEY = "tfs_signatures"

# ONNX Runtime type string -> (numpy dtype, TF dtype name)
_TYPES: dict[str, tuple[Any, str]] = {
    "tensor(float)": (np.float32, "DT_FLOAT"),
    "tensor(double)": (np.float64, "DT_DOUBLE"),
    "tensor(float16)": (np.float16, "DT_HALF"),
    "tensor(int8)": (np.int8, "DT_INT8"),
    "tensor(int16)": (np.int16, "DT_INT16"),
    "tensor(int32)": (np.int32, "DT_INT32"),
    "tensor(int64)": (np.int64, "DT_INT64"),
    "tensor(uint8)": (np.uint8, "DT_UINT8"),
    "tensor(uint16)": (np.uint16, "DT_UINT16"),
    "tensor(uint32)": (np.uint32, "DT_UINT32"),
    "tensor(uint64)": (np.uint64, "DT_UINT64"),
    "tensor(bool)": (np.bool_, "DT_BOOL"),
    "tensor(string)": (np.object_, "DT_STRING"),
}


@dataclass(frozen=True)
class TensorInfo:
    """One named tensor of the graph. `shape` is None for unknown rank; a dim is None when dynamic."""

    name: str
    dtype: Any
    tf_dtype: str
    shape: tuple[int | None, ...] | None

    def to_tfs(self) -> dict:
        """Return TF Serving's TensorInfo JSON for this tensor."""
        if self.shape is None:
            shape: dict = {"dim": [], "unknown_rank": True}
        else:
            shape = {"dim": [{"size": str(-1 if d is None else d), "name": ""} for d in self.shape],
                     "unknown_rank": False}
        return {"dtype": self.tf_dtype, "tensor_shape": shape, "name": self.name}


@dataclass(frozen=True)
class Signature:
    """A TF-style signature: aliases of graph inputs and outputs, and its method."""

    name: str
    method_name: str
    inputs: dict[str, TensorInfo]    # alias -> graph input
    outputs: dict[str, TensorInfo]   # alias -> graph output
    class_labels: tuple[str, ...] = ()

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs.values()]

    def to_tfs(self) -> dict:
        """Return TF Serving's SignatureDef JSON."""
        return {
            "inputs": {alias: t.to_tfs() for alias, t in self.inputs.items()},
            "outputs": {alias: t.to_tfs() for alias, t in self.outputs.items()},
            "method_name": self.method_name,
        }


@dataclass
class Servable:
    """One loaded version: its session and signatures."""

    version: int
    path: Path
    session: Any
    signatures: dict[str, Signature]
    load_seconds: float

    def signature(self, name: str | None) -> Signature:
        """Return the named signature (default: serving_default) or raise BadRequest."""
        key = name or DEFAULT_SIGNATURE
        try:
            return self.signatures[key]
        except KeyError:
            raise BadRequest(f'Serving signature name: "{key}" not found in signature def') from None

    def run(self, signature: Signature, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run the graph for `signature` on feeds keyed by graph input name.

        A batch larger than CHUNK_ROWS along a dynamic first (batch) dimension of every input and
        output is run CHUNK_ROWS rows at a time and the outputs joined: a 31 MB body of digits
        would otherwise need gigabytes of intermediate tensors at once (std::bad_alloc, a 500).
        """
        try:
            rows = _batch_rows(signature, feeds)
            if rows is None or rows <= CHUNK_ROWS:
                return self.session.run(signature.output_names, feeds)
            parts = []
            for start in range(0, rows, CHUNK_ROWS):
                part = self.session.run(signature.output_names,
                                        {k: v[start:start + CHUNK_ROWS] for k, v in feeds.items()})
                n = min(CHUNK_ROWS, rows - start)
                if any(np.ndim(out) == 0 or np.shape(out)[0] != n for out in part):
                    return self.session.run(signature.output_names, feeds)    # not row-wise after all
                parts.append(part)
            return [np.concatenate([part[k] for part in parts]) for k in range(len(parts[0]))]
        except Exception as exc:
            # ORT's InvalidArgument is the caller's fault (shape, type); anything else is ours: a 500.
            if type(exc).__name__ == "InvalidArgument":
                raise BadRequest(f"inference failed: {_short(exc)}") from exc
            raise


CHUNK_ROWS = 4096      # rows per run when a request's batch is larger


def _batch_rows(signature: Signature, feeds: dict[str, np.ndarray]) -> int | None:
    """Return the batch size when every input and output has a dynamic first dimension and every
    feed the same number of rows; None when the graph may not be row-wise."""
    infos = list(signature.inputs.values()) + list(signature.outputs.values())
    if not feeds or any(t.shape is None or not t.shape or t.shape[0] is not None for t in infos):
        return None
    sizes = {v.shape[0] if v.ndim else None for v in feeds.values()}
    if len(sizes) != 1 or None in sizes:
        return None
    return int(sizes.pop())


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__


@dataclass
class ModelRepository:
    """All served versions of one model, and its version labels."""

    name: str
    base_path: Path
    servables: dict[int, Servable]
    labels: dict[str, int] = field(default_factory=dict)

    @property
    def latest(self) -> int:
        return max(self.servables)

    def resolve(self, *, version: str | None, label: str | None, for_status: bool = False) -> list[Servable]:
        """Return the servables a request names (all versions for status without a version)."""
        if label is not None:
            if label not in self.labels:
                raise NotFound(f"Unrecognized servable version label: {label}")
            return [self.servables[self.labels[label]]]
        if version is not None:
            number = int(version)
            if number not in self.servables:
                if for_status:
                    raise NotFound(f"Could not find version {number} of model {self.name}")
                raise NotFound(f"Servable not found for request: Specific({self.name}, {number})")
            return [self.servables[number]]
        if for_status:
            return [self.servables[v] for v in sorted(self.servables, reverse=True)]
        return [self.servables[self.latest]]


def _session_options():
    import onnxruntime as ort

    options = ort.SessionOptions()
    # Many model servers share two cores: one thread each, no spinning, no thread pools to fork.
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3
    # No CPU memory arena: the arena keeps the largest tensors a session ever needed for its whole
    # life (one 31 MB digits_cnn request left the worker at 2.2 GB); without it they are freed
    # when the run ends (see modelserver.memory).
    options.enable_cpu_mem_arena = False
    return options


def _tensor_info(arg: Any) -> TensorInfo:
    dtype, tf_dtype = _TYPES.get(arg.type, (None, "DT_INVALID"))
    if dtype is None:
        raise LoadError(f"unsupported tensor type {arg.type} for {arg.name}")
    # ORT reports unknown rank as []: our models have no true scalar inputs, so [] means "any".
    shape = None if not arg.shape else tuple(d if isinstance(d, int) else None for d in arg.shape)
    return TensorInfo(arg.name, dtype, tf_dtype, shape)


def _signatures(session: Any, *, where: str) -> dict[str, Signature]:
    inputs = {a.name: _tensor_info(a) for a in session.get_inputs()}
    outputs = {a.name: _tensor_info(a) for a in session.get_outputs()}
    raw = session.get_modelmeta().custom_metadata_map.get(SIGNATURES_KEY)
    if raw is None:
        return {DEFAULT_SIGNATURE: Signature(DEFAULT_SIGNATURE, "tensorflow/serving/predict", inputs, outputs)}
    try:
        spec = json.loads(raw)
        signatures = {}
        for name, sig in spec.items():
            signatures[name] = Signature(
                name=name,
                method_name=str(sig.get("method_name", "tensorflow/serving/predict")),
                inputs={alias: inputs[graph] for alias, graph in sig["inputs"].items()},
                outputs={alias: outputs[graph] for alias, graph in sig["outputs"].items()},
                class_labels=tuple(str(c) for c in sig.get("class_labels", ())),
            )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise LoadError(f"{where}: bad {SIGNATURES_KEY} metadata: {exc!r}") from exc
    return signatures


def _load_version(path: Path, version: int) -> Servable:
    import onnxruntime as ort

    started = time.monotonic()
    model_file = path / MODEL_FILE
    try:
        session = ort.InferenceSession(str(model_file), sess_options=_session_options(),
                                       providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise LoadError(f"cannot load {model_file}: {_short(exc)}") from exc
    signatures = _signatures(session, where=str(model_file))
    return Servable(version, path, session, signatures, time.monotonic() - started)


def load_repository(*, name: str, base_path: Path, version_policy: str = "all") -> ModelRepository:
    """Load the versions of `name` under `base_path` (policy "all" or "latest") and its labels."""
    layout = scan_layout(name=name, base_path=base_path, version_policy=version_policy)
    servables = {v: _load_version(layout.path_of(v), v) for v in layout.versions}
    return ModelRepository(name, layout.base_path, servables, dict(layout.labels))
