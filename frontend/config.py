"""Front-end settings: one dataclass, filled from defaults, a YAML/JSON file and FRONTEND_* variables.

Why a single place: gunicorn workers, `python -m frontend`, the tests and the benchmark all build
the app from the same `Settings`, so a key means the same thing everywhere. Every field below is
documented with its unit and default; docs/frontend.md repeats the table.

Precedence (lowest first): defaults < file named by FRONTEND_CONFIG < FRONTEND_<KEY> variables.
`create_app(mapping)` skips the file and the environment entirely: the mapping overlays the defaults,
so tests are hermetic. Unknown keys in a file or mapping are errors (typos must not pass silently);
unknown FRONTEND_* variables are ignored, because Kubernetes injects FRONTEND_PORT & co. for a
Service named "frontend".
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import yaml

__all__ = ["Settings", "ConfigError", "load_settings", "settings_from_mapping", "REPO_ROOT", "POLICIES"]

REPO_ROOT = Path(__file__).resolve().parent.parent
POLICIES = ("lowest-cpu", "plan", "nearest", "round-robin", "random")
# Environment variables that belong to the process around the app (gunicorn), not to Settings.
_RESERVED_ENV = {"FRONTEND_CONFIG", "FRONTEND_BIND", "FRONTEND_WORKERS", "FRONTEND_THREADS",
                 "FRONTEND_TIMEOUT", "FRONTEND_ACCESS_LOG", "FRONTEND_WORKER_CLASS", "FRONTEND_CONNECTIONS",
                 "FRONTEND_KEEPALIVE"}


class ConfigError(ValueError):
    """The configuration is malformed; the message names every bad key."""


@dataclass(frozen=True)
class Settings:
    """Everything the front-end can be told. Paths may be relative to the repository root."""

    # Cluster adapter: "local", "kubernetes", or "package.module:factory" (a callable returning a
    # cluster.Cluster; used by the benchmark's synthetic cluster). Default "local".
    cluster: str = "local"
    # Keyword arguments for the adapter (e.g. config_path, state_path, models_dir for "local").
    cluster_settings: dict[str, Any] = field(default_factory=dict)
    # Model catalog file. Default: cluster_settings["catalog_path"] if given, else config/models.yaml.
    catalog: str | None = None
    # SQLite file for statistics, counters, the plan and provisioning claims. Default .run/frontend.db.
    database: str = ".run/frontend.db"
    # Bearer token for /stats/* and /plan. Unset means those routes refuse every caller.
    token: str | None = None
    # File holding the token (first line), e.g. a mounted Kubernetes Secret; used when token is unset.
    token_file: str | None = None
    # Dispatch policy: lowest-cpu (thesis), plan, nearest, round-robin, random. Default lowest-cpu.
    policy: str = "lowest-cpu"
    # Round-trip time in seconds from a client zone to a node, {zone: {node: seconds}}, for nearest.
    rtt: dict[str, dict[str, float]] = field(default_factory=dict)
    # ALTO cost map (RFC 7285 JSON): source PIDs are client zones, destination PIDs are node names.
    alto_cost_map: str | None = None
    # Seconds between two reads of the cluster state by the background thread. Default 1.0.
    refresh_interval: float = 1.0
    # Seconds request rows are kept in the database; 0 keeps them forever. Default 7 days.
    stats_retention: float = 7 * 24 * 3600.0
    # Seconds a worker buffers statistics before writing them in one transaction (0 = write each
    # request at once). Reads of /stats and /metrics flush the answering worker first. Default 0.05.
    stats_flush_interval: float = 0.05
    # Largest request body accepted, in bytes (larger gets 413). Default 10 MiB.
    max_body: int = 10 * 1024 * 1024
    # Seconds a client has to send a whole request body once its headers are in (408 past it): a
    # client dripping bytes cannot hold the connection longer. Needs the gevent worker. Default 10.
    body_timeout: float = 10.0
    # Proxy: seconds to connect to a model server (default 1.0), and the whole-call deadline: connect,
    # send and the model server's complete answer, however it trickles in (default 30.0).
    connect_timeout: float = 1.0
    call_timeout: float = 30.0
    # Proxy: pooled connections kept per model-server endpoint in each worker. Default 16.
    pool_maxsize: int = 16
    # Proxy: other endpoints tried after a connection failure (the request never reached a server).
    proxy_retries: int = 1
    # Seconds an endpoint that refused a connection stays out of this worker's choices. Default 10.
    bad_endpoint_seconds: float = 10.0
    # Retry-After (seconds) sent with 503 while a model is being provisioned on demand. Default 2.
    retry_after: int = 2
    # Seconds an on-demand provisioning claim blocks another attempt for the same model. Default 120.
    provision_timeout: float = 120.0
    # Prediction cache: max entries per worker (0 = off, the default), max total bytes, entry TTL
    # in seconds (0 = until the model's deployments change).
    prediction_cache_entries: int = 0
    prediction_cache_bytes: int = 64 * 1024 * 1024
    prediction_cache_ttl: float = 0.0
    # Log level of the JSON-lines log on stderr. Default INFO.
    log_level: str = "INFO"

    def path(self, value: str) -> Path:
        """Resolve a configured path against the repository root."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else REPO_ROOT / p

    @property
    def catalog_path(self) -> Path:
        if self.catalog:
            return self.path(self.catalog)
        from_cluster = self.cluster_settings.get("catalog_path")
        return self.path(str(from_cluster)) if from_cluster else REPO_ROOT / "config" / "models.yaml"

    @property
    def database_path(self) -> Path:
        return self.path(self.database)

    def resolved_token(self) -> str | None:
        """Return the configured token, reading token_file when token itself is unset."""
        if self.token:
            return self.token
        if self.token_file:
            try:
                line = self.path(self.token_file).read_text().strip().splitlines()
            except OSError as exc:
                raise ConfigError(f"token_file {self.token_file}: cannot read: {exc.strerror}") from exc
            return line[0].strip() if line and line[0].strip() else None
        return None


_FIELDS = {f.name: f for f in fields(Settings)}
_INTS = {"max_body", "pool_maxsize", "proxy_retries", "retry_after", "prediction_cache_entries",
         "prediction_cache_bytes"}
_FLOATS = {"body_timeout", "refresh_interval", "stats_retention", "stats_flush_interval", "connect_timeout", "call_timeout",
           "bad_endpoint_seconds", "provision_timeout", "prediction_cache_ttl"}
_STRINGS = {"cluster", "database", "policy", "log_level"}
_OPTIONAL_STRINGS = {"catalog", "token", "token_file", "alto_cost_map"}
_MAPPINGS = {"cluster_settings", "rtt"}


def _check(errors: list[str], key: str, value: Any) -> Any:
    """Validate and coerce one value; append a message to `errors` when it is bad."""
    if key in _INTS:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
            errors.append(f"{key}: must be an integer, got {value!r}")
            return None
        if value < 0:
            errors.append(f"{key}: must be >= 0, got {value!r}")
            return None
        return int(value)
    if key in _FLOATS:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            errors.append(f"{key}: must be a number, got {value!r}")
            return None
        if value < 0:
            errors.append(f"{key}: must be >= 0, got {value!r}")
            return None
        return float(value)
    if key in _STRINGS:
        if not isinstance(value, str) or not value:
            errors.append(f"{key}: must be a non-empty string, got {value!r}")
            return None
        return value
    if key in _OPTIONAL_STRINGS:
        if value is not None and not isinstance(value, str):
            errors.append(f"{key}: must be a string, got {value!r}")
            return None
        return value or None
    if key in _MAPPINGS:
        if not isinstance(value, dict):
            errors.append(f"{key}: must be a mapping, got {value!r}")
            return None
        if key == "rtt":
            for zone, row in value.items():
                if not isinstance(row, dict) or not all(
                        isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in row.values()):
                    errors.append(f"rtt.{zone}: must map node names to seconds >= 0")
                    return None
        return dict(value)
    raise AssertionError(key)


def settings_from_mapping(mapping: Mapping[str, Any], *, base: Settings | None = None) -> Settings:
    """Overlay `mapping` on `base` (defaults when None); raise ConfigError listing every bad key."""
    base = base or Settings()
    errors: list[str] = []
    values: dict[str, Any] = {}
    for key, value in mapping.items():
        key = str(key).replace("-", "_")
        if key not in _FIELDS:
            errors.append(f"{key}: unknown setting")
            continue
        checked = _check(errors, key, value)
        if checked is not None or key in _OPTIONAL_STRINGS:
            values[key] = checked
    merged = {f: getattr(base, f) for f in _FIELDS} | values
    if merged["policy"] not in POLICIES:
        errors.append(f"policy: must be one of {', '.join(POLICIES)}, got {merged['policy']!r}")
    if merged["refresh_interval"] <= 0:
        errors.append("refresh_interval: must be > 0")
    if merged["connect_timeout"] <= 0 or merged["call_timeout"] <= 0:
        errors.append("connect_timeout/call_timeout: must be > 0")
    if merged["body_timeout"] <= 0:
        errors.append("body_timeout: must be > 0")
    if merged["pool_maxsize"] < 1:
        errors.append("pool_maxsize: must be >= 1")
    if merged["log_level"].upper() not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
        errors.append(f"log_level: must be DEBUG, INFO, WARNING, ERROR or CRITICAL, got {merged['log_level']!r}")
    if errors:
        raise ConfigError("; ".join(errors))
    return Settings(**merged)


def _env_value(key: str, raw: str) -> Any:
    """Turn one FRONTEND_* variable's text into the type its setting wants."""
    if key in _MAPPINGS:
        try:
            return json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"FRONTEND_{key.upper()}: not valid JSON: {exc.msg}") from exc
    if key in _INTS or key in _FLOATS:
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"FRONTEND_{key.upper()}: must be a number, got {raw!r}") from None
    return raw


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read the file named by FRONTEND_CONFIG (if any), then FRONTEND_* variables."""
    environ = os.environ if environ is None else environ
    settings = Settings()
    config_file = environ.get("FRONTEND_CONFIG")
    if config_file:
        path = Path(config_file)
        try:
            data = yaml.safe_load(path.read_text())
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML/JSON: {str(exc).splitlines()[0]}") from exc
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: must be a mapping of settings")
        try:
            settings = settings_from_mapping(data, base=settings)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    overrides: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith("FRONTEND_") or name in _RESERVED_ENV:
            continue
        key = name[len("FRONTEND_"):].lower()
        if key in _FIELDS:
            overrides[key] = _env_value(key, raw)
    return settings_from_mapping(overrides, base=settings) if overrides else settings
