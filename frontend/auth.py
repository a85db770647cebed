"""Bearer-token check for the back-end's routes: 401 without a token, 403 with a wrong one."""
from __future__ import annotations

import hmac

from flask import request

from .errors import ApiError
from .runtime import current_runtime

__all__ = ["require_token"]


def require_token() -> None:
    """Raise ApiError unless the request carries the configured bearer token."""
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if not header or scheme.lower() != "bearer" or not given.strip():
        raise ApiError(401, "bearer token required", headers={"WWW-Authenticate": 'Bearer realm="frontend"'})
    expected = current_runtime().token
    if not expected or not hmac.compare_digest(given.strip().encode(), expected.encode()):
        raise ApiError(403, "wrong token" if expected else "no token is configured on this front-end")
