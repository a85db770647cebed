"""What the proxy may forward: TF Serving REST paths only, parsed into parts and rebuilt.

Why strict parsing instead of prefix checks: the proxy must never become an open relay, so the
upstream URL is rebuilt from validated parts (model name, version or label, verb) and never from
the client's text. Anything else -- `..`, absolute URLs, percent-escapes left after the WSGI
server's decoding, empty segments, other verbs -- is refused before a connection is opened.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["TfsPath", "TfsPathError", "parse_tfs_path"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_VERSION = re.compile(r"[0-9]{1,18}")
_LABEL = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,62}")
_VERBS = ("predict", "classify", "regress")


class TfsPathError(ValueError):
    """The path is not one the proxy forwards; the message says why."""


@dataclass(frozen=True)
class TfsPath:
    """A validated TF Serving path: v1/models/<model>[/versions/<n>|/labels/<l>][:verb|/metadata]."""

    model: str
    version: int | None = None
    label: str | None = None
    verb: str | None = None          # predict | classify | regress
    metadata: bool = False

    @property
    def method(self) -> str:
        """Return the HTTP method TF Serving expects on this path."""
        return "POST" if self.verb else "GET"

    def url_path(self) -> str:
        """Rebuild the canonical path (leading slash) from the validated parts."""
        path = f"/v1/models/{self.model}"
        if self.version is not None:
            path += f"/versions/{self.version}"
        elif self.label is not None:
            path += f"/labels/{self.label}"
        if self.verb:
            path += f":{self.verb}"
        elif self.metadata:
            path += "/metadata"
        return path

    def cache_key(self) -> str:
        """Return the part of a prediction-cache key that names the model version."""
        if self.version is not None:
            return f"{self.model}@{self.version}:{self.verb}"
        if self.label is not None:
            return f"{self.model}#{self.label}:{self.verb}"
        return f"{self.model}:{self.verb}"


def parse_tfs_path(path: str, *, model: str) -> TfsPath:
    """Parse `path` (as routed, without leading slash) and require its model to equal `model`."""
    if len(path) > 512:
        raise TfsPathError("path too long")
    if "%" in path or "\\" in path or "\x00" in path or any(c.isspace() for c in path):
        raise TfsPathError("encoded or control characters are not allowed in the path")
    if "://" in path or path.startswith("/"):
        raise TfsPathError("absolute URLs are not allowed")
    segments = path.split("/")
    if any(seg in ("", ".", "..") for seg in segments):
        raise TfsPathError("empty, '.' or '..' path segments are not allowed")
    if len(segments) < 3 or segments[0] != "v1" or segments[1] != "models":
        raise TfsPathError("not a TF Serving path (expected v1/models/<name>...)")
    rest = segments[2:]
    verb = None
    last = rest[-1]
    if ":" in last:
        last, _, verb = last.partition(":")
        if verb not in _VERBS:
            raise TfsPathError(f"unknown verb {verb!r} (expected predict, classify or regress)")
        rest = rest[:-1] + [last]
    if any(":" in seg for seg in rest):
        raise TfsPathError("':' is only allowed before the verb")
    metadata = False
    if len(rest) >= 2 and rest[-1] == "metadata":
        if verb:
            raise TfsPathError("metadata takes no verb")
        metadata = True
        rest = rest[:-1]
    name = rest[0]
    if not _NAME.fullmatch(name):
        raise TfsPathError("bad model name in path")
    if name != model:
        raise TfsPathError(f"path names model {name!r} but the URL is for {model!r}")
    version = label = None
    if len(rest) == 3:
        kind, value = rest[1], rest[2]
        if kind == "versions" and _VERSION.fullmatch(value):
            version = int(value)
        elif kind == "labels" and _LABEL.fullmatch(value):
            label = value
        else:
            raise TfsPathError("expected versions/<number> or labels/<label> after the model name")
    elif len(rest) != 1:
        raise TfsPathError("not a TF Serving path")
    return TfsPath(model=name, version=version, label=label, verb=verb, metadata=metadata)
