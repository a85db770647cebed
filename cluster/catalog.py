"""The model catalog (config/models.yaml): what each model needs and how fast it runs.

Loaded once and validated as a whole, so an operator sees every mistake in one go; each error
names the file, the model and the field.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from .yamlcheck import number_field, read_yaml

from .port import ClusterError

__all__ = ["ModelSpec", "Catalog", "CatalogError", "load_catalog", "DEFAULT_CATALOG"]

DEFAULT_CATALOG = Path(__file__).resolve().parent.parent / "config" / "models.yaml"
# Model names appear in URLs, Kubernetes object names and labels: keep them to a safe alphabet.
_NAME = re.compile(r"^[a-z0-9]([a-z0-9_-]{0,40}[a-z0-9])?$")


class CatalogError(ClusterError, ValueError):
    """The catalog file is missing, malformed or inconsistent."""


@dataclass(frozen=True)
class ModelSpec:
    """One servable model. Memory in KB per instance, cpu in cores per request."""

    name: str
    image: str                      # container image Kubernetes runs
    port: int                       # REST port of the model server (container and local)
    model_file: str                 # folder under the models dir the local server loads
    memory: int                     # KB per instance
    cpu: float                      # cores one request keeps busy
    exec_time: dict[str, float] = field(default_factory=dict)  # seconds per node class

    def exec_time_on(self, node_class: str) -> float:
        """Execution time on a node class, falling back to the slowest known class."""
        if node_class in self.exec_time:
            return self.exec_time[node_class]
        return max(self.exec_time.values()) if self.exec_time else 0.0


@dataclass(frozen=True)
class Catalog:
    models: dict[str, ModelSpec]
    path: Path

    def __contains__(self, name: object) -> bool:
        return name in self.models

    def __getitem__(self, name: str) -> ModelSpec:
        return self.models[name]

    def __iter__(self):
        return iter(self.models.values())

    def __len__(self) -> int:
        return len(self.models)

    def names(self) -> list[str]:
        return list(self.models)


def _model(errors: list[str], source: str, index: int, entry: object) -> ModelSpec | None:
    where = f"{source}: models[{index}]"
    if not isinstance(entry, dict):
        errors.append(f"{where}: must be a mapping")
        return None
    name = entry.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        errors.append(f"{where}: field 'name' must match {_NAME.pattern}, got {name!r}")
        return None
    where = f"{source}: model '{name}'"
    before = len(errors)
    image = entry.get("image")
    if not isinstance(image, str) or not image.strip():
        errors.append(f"{where}: field 'image' must be a non-empty string")
    port = number_field(errors, where, entry, "port", int)
    if port is not None and not 1 <= port <= 65535:
        errors.append(f"{where}: field 'port' must be 1..65535, got {port}")
    model_file = entry.get("model_file", name)
    if not isinstance(model_file, str) or not model_file or "/" in model_file or model_file.startswith("."):
        errors.append(f"{where}: field 'model_file' must be a plain folder name, got {model_file!r}")
    memory = number_field(errors, where, entry, "memory", int, unit="KB")
    cpu = number_field(errors, where, entry, "cpu", float)
    exec_time = entry.get("exec_time", {})
    if not isinstance(exec_time, dict) or not exec_time:
        errors.append(f"{where}: field 'exec_time' must map node classes to seconds")
        exec_time = {}
    times = {}
    for cls, seconds in exec_time.items():
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds <= 2 ** 53 \
                or not math.isfinite(seconds):
            errors.append(f"{where}: field 'exec_time.{cls}' must be a non-negative number (finite, at most 2**53), got {seconds!r}")
        else:
            times[str(cls)] = float(seconds)
    _measured(errors, where, entry.get("measured"))
    unknown = set(entry) - {"name", "image", "port", "model_file", "memory", "cpu", "exec_time", "measured"}
    if unknown:
        errors.append(f"{where}: unknown field(s) {', '.join(sorted(map(str, unknown)))}")
    if len(errors) > before:
        return None
    return ModelSpec(name=name, image=image, port=port, model_file=model_file,
                     memory=memory, cpu=cpu, exec_time=times)


def _measured(errors: list[str], where: str, note: object) -> None:
    """Check the optional `measured` note `python -m cluster profile` writes (checked, then ignored):
    {date, host: strings; cpu_quota: {class: cores}; other keys: finite non-negative numbers}."""
    if note is None:
        return
    if not isinstance(note, dict):
        errors.append(f"{where}: field 'measured' must be a mapping, got {note!r}")
        return
    for key, value in note.items():
        if key in ("date", "host", "cgroup"):
            if not isinstance(value, str):
                errors.append(f"{where}: field 'measured.{key}' must be a string, got {value!r}")
        elif key == "cpu_quota":
            if not isinstance(value, dict) or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
                    for v in value.values()):
                errors.append(f"{where}: field 'measured.cpu_quota' must map node classes to cores, "
                              f"got {value!r}")
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or value < 0:
            errors.append(f"{where}: field 'measured.{key}' must be a finite non-negative number, got {value!r}")


def load_catalog(path: str | Path = DEFAULT_CATALOG) -> Catalog:
    """Load and validate the catalog; raise CatalogError listing every problem."""
    path = Path(path)
    data = read_yaml(path, CatalogError)
    if not isinstance(data, dict) or not isinstance(data.get("models"), list) or not data["models"]:
        raise CatalogError(f"{path}: must be a mapping with a non-empty 'models' list")
    errors: list[str] = []
    models: dict[str, ModelSpec] = {}
    ports: dict[int, str] = {}
    for index, entry in enumerate(data["models"]):
        spec = _model(errors, str(path), index, entry)
        if spec is None:
            continue
        if spec.name in models:
            errors.append(f"{path}: model '{spec.name}': duplicate name")
            continue
        if spec.port in ports:
            errors.append(f"{path}: model '{spec.name}': field 'port' {spec.port} already used by '{ports[spec.port]}'")
        ports[spec.port] = spec.name
        models[spec.name] = spec
    if errors:
        raise CatalogError("; ".join(errors))
    return Catalog(models=models, path=path)
