"""The front-end: a Flask REST service that tells clients where to run an inference (or runs it
through its proxy) and records what they asked for (thesis 4.2, 5.2; DESIGN section 4).

`create_app(config=None)` builds the app: with None it reads FRONTEND_CONFIG / FRONTEND_* (see
frontend.config), with a mapping it uses exactly that over the defaults (tests). Production runs it
under gunicorn (`gunicorn -c frontend/gunicorn.conf.py 'frontend:create_app()'`), development with
`python -m frontend`. One blueprint per concern: services, proxy, stats, health.
"""
from __future__ import annotations

import atexit
from typing import Any, Mapping

from flask import Flask

from . import errors, health, logs, observe, proxy, services, stats
from .config import ConfigError, Settings, load_settings, settings_from_mapping
from .runtime import Runtime

__all__ = ["create_app", "ConfigError", "Settings"]


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the front-end app from `config` (a plain mapping) or, when None, the environment."""
    settings = load_settings() if config is None else settings_from_mapping(config)
    app = Flask(__name__)
    app.config["FRONTEND"] = settings
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body
    app.config["BODY_TIMEOUT"] = settings.body_timeout
    app.json.sort_keys = False
    app.json.compact = True
    # Routing must not rewrite what the proxy sees: no merged slashes, no redirects to a slash.
    app.url_map.merge_slashes = False
    app.url_map.strict_slashes = False
    logs.init_app(app, level=settings.log_level)
    errors.init_app(app)
    runtime = Runtime(settings)
    app.extensions["frontend"] = runtime
    observe.init_app(app)
    services.init_app(app)
    proxy.init_app(app)
    stats.init_app(app)
    health.init_app(app)
    runtime.cache.open()             # a misconfigured cluster adapter fails here, at start-up
    runtime.cache.refresh()          # start with a picture of the cluster when it can be read
    runtime.cache.ensure_running()
    atexit.register(runtime.close)
    return app
