"""Development server: `python -m frontend [--host 127.0.0.1] [--port 5000] [--config FILE]`.

Production runs the same app under gunicorn: `gunicorn -c frontend/gunicorn.conf.py 'frontend:create_app()'`.
"""
from __future__ import annotations

import argparse
import os
import sqlite3
import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Run the front-end on Werkzeug's threaded development server."""
    parser = argparse.ArgumentParser(prog="python -m frontend", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=5000, help="port to listen on (default 5000)")
    parser.add_argument("--config", help="settings file (YAML or JSON); same as FRONTEND_CONFIG")
    args = parser.parse_args(argv)
    if args.config:
        os.environ["FRONTEND_CONFIG"] = args.config
    from . import create_app
    from .config import ConfigError
    from cluster.catalog import CatalogError
    try:
        app = create_app()
    except (ConfigError, CatalogError) as exc:
        print(f"frontend: bad configuration: {exc}", file=sys.stderr)
        return 2
    except (sqlite3.Error, OSError) as exc:
        print(f"frontend: cannot open the statistics database: {exc}", file=sys.stderr)
        return 1
    try:
        app.run(host=args.host, port=args.port, threaded=True, use_reloader=False)
    except OSError as exc:
        print(f"frontend: cannot listen on {args.host}:{args.port}: {exc.strerror}", file=sys.stderr)
        return 1
    finally:
        app.extensions["frontend"].close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
