"""Render the Kubernetes objects for one model instance: a Deployment and a NodePort Service.

Pure: a catalog `ModelSpec`, a node name and `RenderSettings` in, YAML text and plain dicts out.
No API calls and no `kubernetes` import, so the back-end's `--dry-run` and the unit tests use the
exact text the adapter sends. The YAML comes from `templates/k8s/*.yaml.j2`, rendered with
`StrictUndefined` (a missing field is an error, never an empty string) and with every value
passed through the `yaml` filter, which emits a quoted YAML scalar or flow collection: a hostile
string cannot add keys or documents. A template expression that forgets the filter is refused at
render time rather than trusted.

Resource rule (documented in docs/kubernetes.md):

- memory: request = the catalog's KB per instance, as `<KB>Ki`; limit = the same (or none).
- cpu: the catalog gives cores one request keeps busy; the pod requests room for
  `cpu_request_concurrency` concurrent requests (default 1) and is limited to
  `cpu_limit_concurrency` (default 4, None for no limit), in whole millicores, at least
  `min_cpu_millicores`.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import yaml

from .catalog import ModelSpec

__all__ = [
    "RenderSettings", "RenderedInstance", "RenderError",
    "MANAGED_BY_LABEL", "MANAGED_BY", "MODEL_LABEL", "NODE_LABEL", "MODEL_ANNOTATION",
    "NODE_ANNOTATION", "HOSTNAME_LABEL", "TEMPLATES_DIR", "FETCH_IMAGE",
    "object_name", "label_value", "yaml_scalar", "resources_for", "instance_context",
    "render_template", "render_instance", "selector_for",
]

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates" / "k8s"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "edge-inference"
MODEL_LABEL = "model"
NODE_LABEL = "node"
# Label values are limited to 63 characters of a small alphabet; the true names live here.
MODEL_ANNOTATION = "edge-inference/model"
NODE_ANNOTATION = "edge-inference/node"
HOSTNAME_LABEL = "kubernetes.io/hostname"
MAX_NAME = 63
_HASH_LEN = 8
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                        r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_TOLERATION_KEYS = {"key", "operator", "value", "effect", "tolerationSeconds"}
FETCH_IMAGE = "edge-inference/modelserver:0.1.0"   # the project's model-server image carries modelserver.fetch


class RenderError(ValueError):
    """A template could not be rendered into the expected objects."""


@dataclass(frozen=True)
class RenderSettings:
    """How model instances are rendered. One concern: the shape of the objects we create."""

    # Read by pydantic when a mapping is validated into these settings (k8s_settings.render_settings_from).
    __pydantic_config__ = {"extra": "forbid", "allow_inf_nan": False, "strict": False}

    namespace: str = "edge-inference"             # namespace the Deployments and Services live in
    managed_by: str = MANAGED_BY                  # value of app.kubernetes.io/managed-by
    cpu_request_concurrency: float = 1.0          # concurrent requests the cpu request covers
    cpu_limit_concurrency: float | None = 4.0     # concurrent requests the cpu limit allows; None: no limit
    min_cpu_millicores: int = 10                  # floor for the cpu request and limit, millicores
    memory_limit: bool = True                     # limit memory to the request (KB from the catalog)
    probe_initial_delay_seconds: int = 1          # readiness probe: seconds before the first probe
    probe_period_seconds: int = 2                 # readiness probe: seconds between probes
    models_host_path: str | None = None           # host folder mounted read-only at /models; None: models are in the image
    image_pull_secret: str | None = None          # name of a Secret for a private registry; None: public image
    tolerations: tuple[dict[str, Any], ...] = field(default_factory=tuple)  # extra pod tolerations, API-shaped
    image: str | None = None                      # image for every model, replacing the catalog's; None: the catalog's
    node_selector: dict[str, str] = field(default_factory=dict)  # node labels required besides the hostname pin
    # URL of one model's files, "{model}" standing for its name (http/https/file; a .tar.gz of the
    # model folder <version>/...): an init container fetches and unpacks it into /models/<model>.
    model_url: str | None = None
    fetch_image: str = FETCH_IMAGE                # image of that init container (runs python -m modelserver.fetch)

    def __post_init__(self) -> None:
        if self.cpu_request_concurrency <= 0:
            raise ValueError("cpu_request_concurrency must be positive")
        if self.cpu_limit_concurrency is not None and self.cpu_limit_concurrency < self.cpu_request_concurrency:
            raise ValueError("cpu_limit_concurrency must be at least cpu_request_concurrency")
        if self.min_cpu_millicores < 1:
            raise ValueError("min_cpu_millicores must be at least 1")
        if self.models_host_path is not None and self.model_url is not None:
            raise ValueError("models_host_path and model_url exclude each other: the models come from one place")
        if self.model_url is not None and not re.match(r"^(https?|file)://", self.model_url):
            raise ValueError(f"model_url must be an http://, https:// or file:// URL, got {self.model_url!r}")
        if HOSTNAME_LABEL in self.node_selector:
            raise ValueError(f"node_selector: {HOSTNAME_LABEL} is the adapter's pin to the chosen node")
        for key, value in self.node_selector.items():
            if not _LABEL_KEY.match(key) or not _LABEL_VALUE.match(value) or len(value) > MAX_NAME:
                raise ValueError(f"node_selector: {key}={value!r} is not a valid label selector")
        for index, toleration in enumerate(self.tolerations):
            unknown = set(toleration) - _TOLERATION_KEYS
            if unknown:
                raise ValueError(f"tolerations[{index}]: unknown field(s) {', '.join(sorted(unknown))} "
                                 f"(known: {', '.join(sorted(_TOLERATION_KEYS))})")


@dataclass(frozen=True)
class RenderedInstance:
    """The objects for one (model, node): the YAML text and the parsed dicts sent to the API."""

    name: str
    model: str
    node: str
    deployment: dict[str, Any]
    service: dict[str, Any]
    text: str                    # both documents, as rendered (what --dry-run prints)


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:_HASH_LEN]


def object_name(model: str, node: str) -> str:
    """Return the object name for (model, node): `<model>-<node>` as a DNS-1035 label.

    Lowercase; anything outside [a-z0-9-] becomes '-'; a leading digit gets an 'm' prefix
    (Service names must start with a letter); over 63 characters it is cut and ends with a
    short hash of the true names, so distinct long pairs stay distinct and the name is stable."""
    raw = f"{model}-{node}".lower()
    name = re.sub(r"[^a-z0-9-]", "-", raw)
    name = re.sub(r"-{2,}", "-", name).strip("-") or "x"
    if not name[0].isalpha():
        name = "m" + name
    if len(name) > MAX_NAME:
        suffix = _short_hash(f"{model}\0{node}")
        name = name[: MAX_NAME - _HASH_LEN - 1].rstrip("-") + "-" + suffix
    return name


def label_value(text: str) -> str:
    """Return `text` as a valid label value (63 chars of [A-Za-z0-9-_.], alphanumeric ends)."""
    if len(text) <= MAX_NAME and _LABEL_VALUE.match(text):
        return text
    value = re.sub(r"[^A-Za-z0-9_.-]", "-", text)
    value = re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", value)
    if len(value) > MAX_NAME or value != text:
        # Changed or cut: make it unique to the original with a hash of the true value.
        keep = MAX_NAME - _HASH_LEN - 1
        value = re.sub(r"[^A-Za-z0-9]+$", "", value[:keep])
        value = (value + "-" if value else "") + _short_hash(text)
    return value


def selector_for(model: str, node: str, settings: RenderSettings | None = None) -> dict[str, str]:
    """Return the labels that identify the pods of (model, node)."""
    settings = settings or RenderSettings()
    return {
        MANAGED_BY_LABEL: settings.managed_by,
        MODEL_LABEL: label_value(model),
        NODE_LABEL: label_value(node),
    }


def _millicores(cores: float) -> int:
    return math.ceil(round(cores * 1000, 6))


def resources_for(spec: ModelSpec, settings: RenderSettings | None = None) -> dict[str, dict[str, str]]:
    """Return the container's resource requests and limits for `spec` (the rule in the module doc)."""
    settings = settings or RenderSettings()
    cpu_request = max(settings.min_cpu_millicores, _millicores(spec.cpu * settings.cpu_request_concurrency))
    requests = {"cpu": f"{cpu_request}m", "memory": f"{spec.memory}Ki"}
    limits: dict[str, str] = {}
    if settings.cpu_limit_concurrency is not None:
        cpu_limit = max(cpu_request, _millicores(spec.cpu * settings.cpu_limit_concurrency))
        limits["cpu"] = f"{cpu_limit}m"
    if settings.memory_limit:
        limits["memory"] = f"{spec.memory}Ki"
    return {"requests": requests, "limits": limits}


# --- the YAML-safe filter -------------------------------------------------------------------

class _YamlText(str):
    """Text produced by the `yaml` filter: the only kind of string a template may emit."""


def _quote(text: str) -> str:
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif 0x20 <= code < 0x7F:
            out.append(ch)
        elif code <= 0xFF:
            out.append(f"\\x{code:02x}")
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


def _flow(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise RenderError(f"cannot render non-finite number {value!r}")
        return json.dumps(value)
    if isinstance(value, str):
        return _quote(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_quote(str(k))}: {_flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_flow(v) for v in value) + "]"
    raise RenderError(f"cannot render a {type(value).__name__} as YAML")


def yaml_scalar(value: Any) -> str:
    """Return `value` as one YAML flow node (double-quoted strings, every non-printable escaped)."""
    if isinstance(value, jinja2.Undefined):
        value._fail_with_undefined_error()
    return _YamlText(_flow(value))


def _finalize(value: Any) -> Any:
    if isinstance(value, _YamlText):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise RenderError(f"template emitted {value!r} without the yaml filter")


_ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
    undefined=jinja2.StrictUndefined,
    autoescape=False,
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
    finalize=_finalize,
)
_ENV.filters["yaml"] = yaml_scalar


def render_template(name: str, context: dict[str, Any], *, source: str | None = None) -> str:
    """Render template `name` (or the template text `source`) with `context`; raise RenderError."""
    try:
        template = _ENV.from_string(source) if source is not None else _ENV.get_template(name)
        return template.render(**context)
    except jinja2.UndefinedError as exc:
        raise RenderError(f"{name}: missing field: {exc}") from exc
    except jinja2.TemplateError as exc:
        raise RenderError(f"{name}: {exc}") from exc


def instance_context(spec: ModelSpec, node: str, settings: RenderSettings | None = None, *,
                     hostname: str | None = None) -> dict[str, Any]:
    """Return the template context for `spec` on `node` (hostname: the node's hostname label)."""
    settings = settings or RenderSettings()
    labels = selector_for(spec.name, node, settings)
    return {
        "name": object_name(spec.name, node),
        "namespace": settings.namespace,
        "labels": labels,
        "annotations": {MODEL_ANNOTATION: spec.name, NODE_ANNOTATION: node},
        "model": {
            "name": spec.name,
            "image": settings.image or spec.image,
            "port": spec.port,
            "base_path": f"/models/{spec.name}",
        },
        "hostname": hostname if hostname is not None else node,
        "resources": resources_for(spec, settings),
        "probe": {
            "path": f"/v1/models/{spec.name}",
            "initial_delay_seconds": settings.probe_initial_delay_seconds,
            "period_seconds": settings.probe_period_seconds,
        },
        "models_host_path": settings.models_host_path,
        "image_pull_secret": settings.image_pull_secret,
        "tolerations": list(settings.tolerations),
        "node_selector": dict(settings.node_selector),     # extras; the hostname pin is the template's
        "fetch": None if settings.model_url is None else {
            "image": settings.fetch_image,
            "url": settings.model_url.replace("{model}", spec.name),
            "dest": f"/models/{spec.name}",
        },
    }


def _parse(template: str, text: str, kind: str) -> dict[str, Any]:
    try:
        docs = [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as exc:
        raise RenderError(f"{template}: rendered text is not valid YAML: {exc}") from exc
    if len(docs) != 1 or not isinstance(docs[0], dict) or docs[0].get("kind") != kind:
        raise RenderError(f"{template}: expected one {kind} document")
    return docs[0]


def render_instance(spec: ModelSpec, node: str, settings: RenderSettings | None = None, *,
                    hostname: str | None = None) -> RenderedInstance:
    """Render the Deployment and Service for `spec` on `node` and parse them back to dicts."""
    context = instance_context(spec, node, settings, hostname=hostname)
    dep_text = render_template("deployment.yaml.j2", context)
    svc_text = render_template("service.yaml.j2", context)
    deployment = _parse("deployment.yaml.j2", dep_text, "Deployment")
    service = _parse("service.yaml.j2", svc_text, "Service")
    return RenderedInstance(name=context["name"], model=spec.name, node=node, deployment=deployment,
                            service=service, text=dep_text.rstrip("\n") + "\n---\n" + svc_text)
