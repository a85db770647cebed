"""Front-end settings: one validated model, filled from defaults, a YAML/JSON file and FRONTEND_* variables.

Why a single place: gunicorn workers, `python -m frontend`, the tests and the benchmark all build
the app from the same `Settings`, so a key means the same thing everywhere. Every field below is
declared once, with its type, its rule and its default (common/validation.py refuses unknown keys,
wrong types, NaN and infinities and names each bad key); docs/frontend.md repeats the table.

Precedence (lowest first): defaults < file named by FRONTEND_CONFIG < FRONTEND_<KEY> variables.
`create_app(mapping)` skips the file and the environment entirely: the mapping overlays the defaults,
so tests are hermetic. Unknown keys in a file or mapping are errors (typos must not pass silently);
unknown FRONTEND_* variables are ignored, because Kubernetes injects FRONTEND_PORT & co. for a
Service named "frontend".
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import yaml
from pydantic import Field

from common.validation import (Checked, Flag, Number, OptionalText, Strict, Text, ValidationError, check_number, one_of,
                               problems)

__all__ = ["Settings", "ConfigError", "load_settings", "settings_from_mapping", "REPO_ROOT", "POLICIES"]

REPO_ROOT = Path(__file__).resolve().parent.parent
POLICIES = ("lowest-cpu", "plan", "nearest", "round-robin", "random", "expected-delay")
# Environment variables that belong to the process around the app (gunicorn), not to Settings.
_RESERVED_ENV = {"FRONTEND_CONFIG", "FRONTEND_BIND", "FRONTEND_WORKERS", "FRONTEND_THREADS",
                 "FRONTEND_TIMEOUT", "FRONTEND_ACCESS_LOG", "FRONTEND_WORKER_CLASS", "FRONTEND_CONNECTIONS",
                 "FRONTEND_KEEPALIVE"}


class ConfigError(ValueError):
    """The configuration is malformed; the message names every bad key."""


def _mapping(value: Any) -> dict:
    if not isinstance(value, dict):
        raise ValueError(f"must be a mapping, got {value!r}")
    return value


def _rtt(value: Any) -> dict:
    if not isinstance(value, dict) or not all(isinstance(row, dict) for row in value.values()):
        raise ValueError("must map client zones to {node: seconds >= 0}")
    return value


Seconds = Number(float, minimum=0)           # a duration that may be 0
Positive = Number(float, positive=True)      # a duration that must not be 0
Count = Number(int, minimum=0)


class Settings(Strict):
    """Everything the front-end can be told. Paths may be relative to the repository root."""

    # Cluster adapter: "local", "kubernetes", or "package.module:factory" (a callable returning a
    # cluster.Cluster; used by the benchmark's synthetic cluster). Default "local".
    cluster: Text = "local"
    # Keyword arguments for the adapter (e.g. config_path, state_path, models_dir for "local").
    cluster_settings: Checked(dict[str, Any], _mapping) = Field(default_factory=dict)
    # Model catalog file. Default: cluster_settings["catalog_path"] if given, else config/models.yaml.
    catalog: OptionalText = None
    # SQLite file for statistics, counters, the plan and provisioning claims. Default .run/frontend.db.
    database: Text = ".run/frontend.db"
    # Bearer token for /stats/* and /plan. Unset means those routes refuse every caller.
    token: OptionalText = None
    # File holding the token (first line), e.g. a mounted Kubernetes Secret; used when token is unset.
    token_file: OptionalText = None
    # Dispatch policy: lowest-cpu (thesis), plan, nearest, round-robin, random, expected-delay.
    # Default lowest-cpu.
    policy: Checked(str, one_of(POLICIES)) = "lowest-cpu"
    # expected-delay: the share of a second of planned work a node is counted to finish per second
    # (0 < x <= 1). Below 1 because a service time is profiled alone on an idle host, and a busy node
    # shares its cores with its other requests and its neighbours; 0.85, the load-aware solver's
    # default utilisation ceiling, makes the dispatcher see a node full where the plan does.
    backlog_drain: Number(float, positive=True, maximum=1.0) = 0.85
    # expected-delay: the quantile of a request's answer time that picks its node (0.5 <= x <= 0.999;
    # 0.5: the mean). Above the mean, a queue of variable services counts for more than its mean
    # (the profile's exec_time_scv); an SLO is a tail. Default 0.9.
    dispatch_quantile: Number(float, minimum=0.5, maximum=0.999) = 0.9
    # expected-delay: true counts every worker's dispatches in one backlog, a file beside the
    # database (`<database>-backlog`; workers and front-ends on one host share it); false keeps
    # one per worker, which sees only its own share of a node's work. Default true.
    backlog_shared: Flag = True
    # expected-delay: true counts a node's work at the pace it reported lately (Server-Timing
    # `pace` of proxied answers, X-Client-Pace of lookups; frontend/pace.py) where it has one;
    # false always at the plan's profiled service time. Default true.
    measured_pace: Flag = True
    # Round-trip time in seconds from a client zone to a node, {zone: {node: seconds}}, for nearest.
    rtt: Checked(dict[str, dict[str, Seconds]], _rtt) = Field(default_factory=dict)
    # ALTO cost map (RFC 7285 JSON): source PIDs are client zones, destination PIDs are node names.
    alto_cost_map: OptionalText = None
    # Seconds between two reads of the cluster state by the background thread. Default 1.0.
    refresh_interval: Positive = 1.0
    # Seconds request rows are kept in the database; 0 keeps them forever. Default 7 days.
    stats_retention: Seconds = 7 * 24 * 3600.0
    # Seconds a worker buffers statistics before writing them in one transaction (0 = write each
    # request at once). Reads of /stats and /metrics flush the answering worker first. Default 0.05.
    stats_flush_interval: Seconds = 0.05
    # Largest request body accepted, in bytes (larger gets 413). Default 10 MiB.
    max_body: Count = 10 * 1024 * 1024
    # Seconds a client has to send a whole request body once its headers are in (408 past it): a
    # client dripping bytes cannot hold the connection longer. Needs the gevent worker. Default 10.
    body_timeout: Positive = 10.0
    # Proxy: seconds to connect to a model server (default 1.0), and the whole-call deadline: connect,
    # send and the model server's complete answer, however it trickles in (default 30.0).
    connect_timeout: Positive = 1.0
    call_timeout: Positive = 30.0
    # Proxy: pooled connections kept per model-server endpoint in each worker. Default 16.
    pool_maxsize: Number(int, minimum=1) = 16
    # Proxy: other endpoints tried after a connection failure (the request never reached a server).
    proxy_retries: Count = 1
    # Seconds an endpoint that refused a connection stays out of this worker's choices. Default 10.
    bad_endpoint_seconds: Seconds = 10.0
    # Retry-After (seconds) sent with 503 while a model is being provisioned on demand. Default 2.
    retry_after: Count = 2
    # Seconds an on-demand provisioning claim blocks another attempt for the same model. Default 120.
    provision_timeout: Seconds = 120.0
    # Prediction cache: max entries per worker (0 = off, the default), max total bytes, entry TTL
    # in seconds (0 = until the model's deployments change).
    prediction_cache_entries: Count = 0
    prediction_cache_bytes: Count = 64 * 1024 * 1024
    prediction_cache_ttl: Seconds = 0.0
    # Log level of the JSON-lines log on stderr. Default INFO.
    log_level: Checked(str, one_of(("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"), fold=str.upper)) = "INFO"

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


def _key_problem(field: str, text: str) -> str:
    return f"{field}: {text}"


def _unknown_settings(parent: str, names: list[str]) -> list[str]:
    return [f"{f'{parent}.' if parent else ''}{name}: unknown setting" for name in sorted(names)]


def settings_from_mapping(mapping: Mapping[str, Any], *, base: Settings | None = None) -> Settings:
    """Overlay `mapping` on `base` (defaults when None); raise ConfigError listing every bad key."""
    base = base or Settings()
    values = base.model_dump() | {str(key).replace("-", "_"): value for key, value in mapping.items()}
    try:
        return Settings.model_validate(values)
    except ValidationError as exc:
        raise ConfigError("; ".join(problems(exc, named=_key_problem, unknown_keys=_unknown_settings))) from None


def _kind(key: str) -> str:
    """How a FRONTEND_<KEY> variable's text is read: from the type its setting declares."""
    annotation = Settings.model_fields[key].annotation
    if annotation in (int, float):
        return "number"
    if annotation is bool:
        return "flag"
    if getattr(annotation, "__origin__", annotation) is dict:
        return "json"
    return "text"


def _env_value(key: str, raw: str) -> Any:
    """Turn one FRONTEND_* variable's text into the type its setting wants."""
    kind = _kind(key)
    if kind == "json":
        try:
            return json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"FRONTEND_{key.upper()}: not valid JSON: {exc.msg}") from exc
    if kind == "number":
        try:
            return check_number(float(raw), minimum=None)
        except ValueError:
            raise ConfigError(f"FRONTEND_{key.upper()}: must be a finite number, got {raw!r}") from None
    if kind == "flag":
        flag = _FLAGS.get(raw.strip().lower())
        if flag is None:
            raise ConfigError(f"FRONTEND_{key.upper()}: must be true or false, got {raw!r}")
        return flag
    return raw


_FLAGS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


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
        if key in Settings.model_fields:
            overrides[key] = _env_value(key, raw)
    return settings_from_mapping(overrides, base=settings) if overrides else settings
