"""Shared pieces of the config-file validators (catalog, local cluster): read a YAML file and
check numeric fields, collecting every error so an operator sees them all at once."""
from __future__ import annotations

import math
from pathlib import Path

import yaml

__all__ = ["read_yaml", "number_field"]


def read_yaml(path: Path, error: type[Exception]) -> object:
    """Parse a YAML file; raise `error` with a one-line message naming the file."""
    try:
        return yaml.safe_load(path.read_text())
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML: {exc}".splitlines()[0]) from exc


def number_field(errors: list[str], where: str, entry: dict, key: str, kind: type, *,
                 positive: bool = True, unit: str = ""):
    """Return entry[key] as `kind`, or None after appending an error naming `where` and `key`."""
    value = entry.get(key)
    sign = "positive" if positive else "non-negative"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        errors.append(f"{where}: field '{key}' must be a {sign} number, got {value!r}")
        return None
    if not math.isfinite(value):
        errors.append(f"{where}: field '{key}' must be a finite number, got {value!r}")
        return None
    if kind is int and not float(value).is_integer():
        errors.append(f"{where}: field '{key}' must be an integer{f' ({unit})' if unit else ''}, got {value!r}")
        return None
    if value < 0 or (positive and value == 0):
        errors.append(f"{where}: field '{key}' must be {sign}, got {value!r}")
        return None
    return kind(value)
