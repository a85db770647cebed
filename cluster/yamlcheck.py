"""Shared pieces of the config-file validators (catalog, local cluster): read a YAML file and
check numeric fields, collecting every error so an operator sees them all at once."""
from __future__ import annotations

import math
from pathlib import Path

import yaml

__all__ = ["read_yaml", "number_field"]


MAX_NUMBER = 2 ** 53          # larger numbers in a config file are typos (and overflow floats)


def read_yaml(path: Path, error: type[Exception]) -> object:
    """Parse a YAML file; raise `error` with a one-line message naming the file (a folder, a
    binary file, one nested too deeply or with an absurd integer literal included)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise error(f"{path}: not UTF-8 text (a binary file?)") from None
    if "\x00" in text:
        raise error(f"{path}: not a text file (it holds NUL bytes)")
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML: {exc}".splitlines()[0]) from None
    except RecursionError:
        raise error(f"{path}: not valid YAML: nested too deeply") from None
    except ValueError as exc:     # e.g. an integer literal past Python's 4,300-digit limit
        raise error(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None


def number_field(errors: list[str], where: str, entry: dict, key: str, kind: type, *,
                 positive: bool = True, unit: str = ""):
    """Return entry[key] as `kind`, or None after appending an error naming `where` and `key`."""
    value = entry.get(key)
    sign = "positive" if positive else "non-negative"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        errors.append(f"{where}: field '{key}' must be a {sign} number, got {value!r}")
        return None
    if isinstance(value, int) and abs(value) > MAX_NUMBER:       # before isfinite(): it overflows a float
        errors.append(f"{where}: field '{key}' is too large (more than 2**53)")
        return None
    if not math.isfinite(value):
        errors.append(f"{where}: field '{key}' must be a finite number, got {value!r}")
        return None
    if abs(value) > MAX_NUMBER:
        errors.append(f"{where}: field '{key}' is too large (more than 2**53), got {value!r}")
        return None
    if kind is int and not float(value).is_integer():
        errors.append(f"{where}: field '{key}' must be an integer{f' ({unit})' if unit else ''}, got {value!r}")
        return None
    if value < 0 or (positive and value == 0):
        errors.append(f"{where}: field '{key}' must be {sign}, got {value!r}")
        return None
    return kind(value)
