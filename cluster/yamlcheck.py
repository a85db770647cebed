"""Reading a YAML config file (catalog, local cluster) with one-line errors naming the file; the
fields are then checked by common/validation.py."""
from __future__ import annotations

from pathlib import Path

import yaml

__all__ = ["read_yaml"]


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
