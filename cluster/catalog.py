"""The model catalog (config/models.yaml): what each model needs and how fast it runs.

Loaded once and validated as a whole (common/validation.py), so an operator sees every mistake in
one go; each error names the file, the model and the field.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ConfigDict

from common.validation import Checked, Number, NumberMap, OptionalText, Strict, Text, check_number, validated

from .port import ClusterError
from .yamlcheck import read_yaml

__all__ = ["ModelSpec", "Catalog", "CatalogError", "load_catalog", "DEFAULT_CATALOG", "MEASURED_CATALOG",
           "host_catalog", "ENTRY_FIELDS"]

DEFAULT_CATALOG = Path(__file__).resolve().parent.parent / "config" / "models.yaml"
# This host's figures: `make setup` profiles the models into it (cluster/profile.py, --out).
MEASURED_CATALOG = DEFAULT_CATALOG.parent.parent / "build" / "models.yaml"


def host_catalog() -> Path:
    """The catalog a whole system on this host runs with: this host's measured one when `make setup`
    wrote it, else the shipped one (the reference machine's figures)."""
    return MEASURED_CATALOG if MEASURED_CATALOG.is_file() else DEFAULT_CATALOG
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
    exec_time: dict[str, float] = field(default_factory=dict)  # seconds per node class, back to back
    # A request that finds its node idle is served faster than back to back (CPU bandwidth control
    # lets an idle group start with unused quota): seconds per node class, where it was measured.
    exec_time_idle: dict[str, float] = field(default_factory=dict)
    exec_time_scv: dict[str, float] = field(default_factory=dict)   # variance / mean^2 of exec_time

    def exec_time_on(self, node_class: str) -> float:
        """Execution time on a node class, falling back to the slowest known class."""
        if node_class in self.exec_time:
            return self.exec_time[node_class]
        return max(self.exec_time.values()) if self.exec_time else 0.0

    def idle_time_on(self, node_class: str) -> float:
        """Execution time of a request that finds a node of the class idle; where that was not
        measured (a fast model: the two paces are the same within noise), the back-to-back one."""
        return self.exec_time_idle.get(node_class, self.exec_time_on(node_class))

    def scv_on(self, node_class: str) -> float | None:
        """Squared coefficient of variation of the execution time on a node class, None if not measured."""
        return self.exec_time_scv.get(node_class)


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


def _port(value: object) -> int:
    port = check_number(value, kind=int, positive=True)
    if not 1 <= port <= 65535:
        raise ValueError(f"must be 1..65535, got {port}")
    return port


def _folder(value: object) -> str:
    if not isinstance(value, str) or not value or "/" in value or value.startswith("."):
        raise ValueError(f"must be a plain folder name, got {value!r}")
    return value


def _name(value: object) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise ValueError(f"must match {_NAME.pattern}, got {value!r}")
    return value


class _Measured(Strict):
    """The note `python -m cluster profile` writes (checked, then ignored): strings, cores per
    class, and any other key a finite non-negative number."""

    model_config = ConfigDict(**{**Strict.model_config, "extra": "allow"})
    __pydantic_extra__: dict[str, Number(float, minimum=0)]

    date: OptionalText = None
    host: OptionalText = None
    cgroup: OptionalText = None
    cpu_quota: NumberMap("node classes to cores", positive=True) | None = None


class _ModelEntry(Strict):
    """One entry of `models:` as written in the file."""

    name: Checked(str, _name)
    image: Text
    port: Checked(int, _port)
    model_file: Checked(str, _folder) | None = None
    memory: Number(int, positive=True, unit="KB")
    cpu: Number(float, positive=True)
    exec_time: NumberMap("node classes to seconds", minimum=0)
    exec_time_idle: NumberMap("node classes to seconds", empty=True, positive=True) | None = None
    exec_time_scv: NumberMap("node classes to squared coefficients of variation", empty=True, minimum=0) | None = None
    measured: _Measured | None = None


# An entry's fields in the order the catalog writes them (cluster.profile adds a missing one in place).
ENTRY_FIELDS = tuple(_ModelEntry.model_fields)


class _CatalogFile(Strict):
    models: list[Any]


def _model(errors: list[str], source: str, index: int, entry: object) -> ModelSpec | None:
    where = f"{source}: models[{index}]"
    if not isinstance(entry, dict):
        errors.append(f"{where}: must be a mapping")
        return None
    name = entry.get("name")
    if isinstance(name, str) and _NAME.match(name):
        where = f"{source}: model '{name}'"
    model = validated(_ModelEntry, entry, errors, where)
    if model is None:
        return None
    return ModelSpec(name=model.name, image=model.image, port=model.port, model_file=model.model_file or model.name,
                     memory=model.memory, cpu=model.cpu, exec_time=dict(model.exec_time),
                     exec_time_idle=dict(model.exec_time_idle or {}), exec_time_scv=dict(model.exec_time_scv or {}))


def load_catalog(path: str | Path = DEFAULT_CATALOG) -> Catalog:
    """Load and validate the catalog; raise CatalogError listing every problem."""
    path = Path(path)
    data = read_yaml(path, CatalogError)
    if not isinstance(data, dict) or not isinstance(data.get("models"), list) or not data["models"]:
        raise CatalogError(f"{path}: must be a mapping with a non-empty 'models' list")
    errors: list[str] = []
    validated(_CatalogFile, data, errors, str(path))
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
