"""The on-disk layout of one model, as TF Serving's: `<base>/<version>/model.onnx` per numeric
version, plus an optional `<base>/labels.json` mapping version labels to versions
(`{"stable": 1, "canary": 2}`).

Pure file-system checks with no heavy imports: the server validates the layout before it starts,
so a wrong path fails at once with one line.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Layout", "LoadError", "scan_layout", "LABELS_FILE", "MODEL_FILE"]

LABELS_FILE = "labels.json"
MODEL_FILE = "model.onnx"


class LoadError(RuntimeError):
    """The model base path cannot be served (missing, no versions, bad labels, bad model)."""


@dataclass(frozen=True)
class Layout:
    """The versions to serve under a base path and the version labels."""

    base_path: Path
    versions: tuple[int, ...]
    labels: dict[str, int] = field(default_factory=dict)
    folders: dict[int, str] = field(default_factory=dict)   # version -> folder name ("00000123" is 123)

    def path_of(self, version: int) -> Path:
        """Return the folder of `version`."""
        return self.base_path / self.folders.get(version, str(version))


def _read_labels(path: Path) -> dict[str, int]:
    try:
        raw = json.loads(path.read_text())
        if not isinstance(raw, dict):
            raise ValueError("expected an object of label -> version")
        labels = {}
        for label, version in raw.items():
            if isinstance(version, bool) or not isinstance(version, (int, str)) or not str(version).isdigit():
                raise ValueError(f"label {label!r}: version must be a non-negative integer, got {version!r}")
            labels[str(label)] = int(version)
        return labels
    except (OSError, ValueError) as exc:
        raise LoadError(f"{path}: {' '.join(str(exc).split())}") from exc
    except RecursionError:
        raise LoadError(f"{path}: not valid JSON (nested too deeply)") from None


def scan_layout(*, name: str, base_path: Path, version_policy: str = "all") -> Layout:
    """Find the versions of `name` under `base_path` (policy "all" or "latest") and its labels."""
    base = Path(base_path)
    if not base.is_dir():
        raise LoadError(f"model base path {base} does not exist or is not a directory")
    folders: dict[int, str] = {}
    for p in sorted(base.iterdir()):
        if p.is_dir() and p.name.isdigit() and (p / MODEL_FILE).is_file():
            version = int(p.name)
            if version in folders:
                raise LoadError(f"{base}: folders {folders[version]} and {p.name} are both version {version}")
            folders[version] = p.name
    found = sorted(folders)
    if not found:
        raise LoadError(f"No versions of servable {name} found under base path {base}")
    if version_policy == "latest":
        found = found[-1:]
    elif version_policy != "all":
        raise LoadError(f"unknown version policy {version_policy!r} (expected 'all' or 'latest')")
    labels: dict[str, int] = {}
    labels_path = base / LABELS_FILE
    if labels_path.is_file():
        labels = _read_labels(labels_path)
        missing = {label: v for label, v in labels.items() if v not in found}
        if missing and version_policy == "all":
            raise LoadError(f"{labels_path}: labels point to versions that are not served: {missing}")
        # With the "latest" policy, labels of versions not loaded are dropped, as TF Serving does.
        labels = {label: v for label, v in labels.items() if v in found}
    return Layout(base, tuple(found), labels, {v: folders[v] for v in found})
