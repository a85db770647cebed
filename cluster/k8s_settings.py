"""Settings of the Kubernetes adapter that are not about the objects' shape (that is RenderSettings).

Why its own module: the adapter, its watch loop, the back-end's command line and the front-end's
configuration all build or read these; keeping them apart from the module that imports the
`kubernetes` client lets them be validated and documented without loading it. Times in seconds.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    from .k8s_render import RenderSettings

__all__ = ["CacheSettings", "PLAN_CONFIGMAP", "PLAN_KEY", "render_settings_from"]

PLAN_CONFIGMAP = "edge-inference-plan"   # ConfigMap the back-end writes the plan to (k8s/20-configmaps.yaml)
PLAN_KEY = "plan.json"                   # its data key holding the plan as JSON


@dataclass(frozen=True)
class CacheSettings:
    """How the adapter talks to the API server and keeps its cache. Times in seconds."""

    namespace: str = "edge-inference"                 # namespace of our Deployments, Services, Pods
    node_class_label: str = "edge-inference/node-class"  # node label holding the node class
    resync_seconds: float = 300.0                     # re-list each resource at least this often
    metrics_seconds: float = 15.0                     # metrics.k8s.io poll period
    sync_timeout_seconds: float = 30.0                # how long a read waits for the first full list
    backoff_initial_seconds: float = 0.5              # first wait after a failed list/watch
    backoff_max_seconds: float = 30.0                 # longest wait between retries
    connect_timeout_seconds: float = 5.0              # TCP/TLS connect timeout per request
    request_timeout_seconds: float = 30.0             # read timeout of a non-watch request
    page_size: int = 500                              # objects per list page

    def __post_init__(self) -> None:
        for name in ("resync_seconds", "metrics_seconds", "backoff_initial_seconds", "backoff_max_seconds",
                     "connect_timeout_seconds", "request_timeout_seconds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        timeout = self.sync_timeout_seconds
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not math.isfinite(timeout) or timeout < 0:
            raise ValueError(f"sync_timeout_seconds must be a number >= 0, got {timeout!r}")
        if isinstance(self.page_size, bool) or not isinstance(self.page_size, int) or self.page_size < 1:
            raise ValueError(f"page_size must be an integer >= 1, got {self.page_size!r}")
        if not isinstance(self.namespace, str) or not self.namespace:
            raise ValueError(f"namespace must be a non-empty name, got {self.namespace!r}")


def render_settings_from(value: Any, *, namespace: str | None = None) -> "RenderSettings":
    """Return RenderSettings from a RenderSettings or a mapping (the back-end's `--cluster-setting
    render={...}` JSON, the front-end's `cluster_settings.render`); raise ValueError naming every
    bad field at once: unknown keys, wrong types, non-finite numbers, inconsistent choices."""
    from pydantic import TypeAdapter, ValidationError

    from .k8s_render import RenderSettings

    if isinstance(value, RenderSettings):
        settings = value
    elif isinstance(value, Mapping):
        try:
            settings = TypeAdapter(RenderSettings).validate_python(dict(value))
        except ValidationError as exc:
            problems = []
            for error in exc.errors():
                where = ".".join(str(part) for part in error["loc"])
                message = error["msg"].removeprefix("Value error, ")
                if error["type"] == "unexpected_keyword_argument":
                    known = ", ".join(f.name for f in dataclasses.fields(RenderSettings))
                    message = f"unknown setting (known: {known})"
                problems.append(f"render.{where}: {message}" if where else f"render: {message}")
            raise ValueError("; ".join(problems)) from None
    else:
        raise ValueError(f"render: expected an object of render settings, got {type(value).__name__}")
    if namespace is not None and settings.namespace != namespace:
        settings = dataclasses.replace(settings, namespace=namespace)
    return settings
