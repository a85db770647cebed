"""The WSGI application: TF Serving's REST routes over one `ModelRepository`.

A bare WSGI callable rather than a web framework: the routes are a handful of regular
expressions, and every import here lengthens the startup-to-ready time the project measures.

Routes (TF Serving's):
    GET  /v1/models/<name>[/versions/<v>|/labels/<l>]            model version status
    GET  /v1/models/<name>[/versions/<v>|/labels/<l>]/metadata   signature defs
    POST /v1/models/<name>[/versions/<v>|/labels/<l>]:predict    row or columnar format
    POST /v1/models/<name>[/versions/<v>|/labels/<l>]:classify   tf.Example-style examples
    POST /v1/models/<name>[/versions/<v>|/labels/<l>]:regress
"""
from __future__ import annotations

import collections
import json
import logging
import re
import threading
import time
from typing import Any, Callable, Iterable

from . import codec, memory
from .errors import ApiError, BadRequest, MethodNotAllowed, NotFound, PayloadTooLarge
from .inference import InferenceThreads
from .pace import PaceMeter
from .repository import ModelRepository, Servable

__all__ = ["ModelServerApp", "DEFAULT_MAX_BODY"]

DEFAULT_MAX_BODY = 32 * 1024 * 1024
_ROUTE = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)"
    r"(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
    r"(?:(?P<metadata>/metadata)|:(?P<verb>predict|classify|regress))?/?$"
)
# When the request being handled on this thread became ready to serve (time.perf_counter()), set by
# the server's worker (modelserver/server.py) around each request: the wait for a free request
# thread is the server's time, not the network's, and a client that subtracts Server-Timing from
# what it waited must not count it as distance. Unset (None): the request started at once.
arrival = threading.local()

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            413: "Payload Too Large", 500: "Internal Server Error", 501: "Not Implemented"}
log = logging.getLogger("modelserver")


def _dumps(payload: Any) -> bytes:
    # allow_nan: TF Serving's JSON carries NaN/Infinity tokens, and so do we.
    return json.dumps(payload, separators=(",", ":")).encode()


class _Response:
    """The WSGI body: one bytes object; `close()` (called by the server once it is sent) gives the
    memory of a large request back to the system (see modelserver.memory)."""

    def __init__(self, body: bytes, *, trim: bool) -> None:
        self.body: bytes | None = body
        self.trim = trim

    def __iter__(self):
        body, self.body = self.body, None
        if body is not None:
            yield body

    def close(self) -> None:
        self.body = None
        if self.trim:
            memory.trim()


class _Turns:
    """At most `n` holders at once; the others get their turn in the order they asked."""

    def __init__(self, n: int) -> None:
        self._lock = threading.Lock()
        self._free = n
        self._waiting: collections.deque[threading.Lock] = collections.deque()

    def acquire(self) -> None:
        with self._lock:
            if self._free and not self._waiting:
                self._free -= 1
                return
            turn = threading.Lock()
            turn.acquire()
            self._waiting.append(turn)
        turn.acquire()                 # released by the holder that hands its turn over

    def release(self) -> None:
        with self._lock:
            if self._waiting:
                self._waiting.popleft().release()
            else:
                self._free += 1


def _here(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


class ModelServerApp:
    """Serve one model repository with TF Serving's REST API as a WSGI callable."""

    def __init__(self, repository: ModelRepository, *, max_body: int = DEFAULT_MAX_BODY,
                 max_concurrent: int | None = None, inference: InferenceThreads | None = None) -> None:
        self.repository = repository
        self.max_body = max_body
        self.pace = PaceMeter()          # inference calls (POST) only: probes are not the node's work
        # At most this many inference calls at once, the others in arrival order (None: no limit).
        # On a node with a quarter core, four calls at once share it and all finish late (processor
        # sharing); one at a time, the first finishes at full speed and the mean wait is shorter
        # for the same work. It is also the queue the dispatcher's backlog and the solver model.
        self._turns = _Turns(max_concurrent) if max_concurrent else None
        # Where the graph runs: on the request thread, or on threads of its own that a node's CPU
        # limit applies to alone (modelserver/inference.py).
        self._infer = inference.call if inference is not None else _here

    # -- WSGI ----------------------------------------------------------------------------------
    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        started = time.perf_counter()
        queued = getattr(arrival, "at", None)
        since = queued if queued is not None and queued <= started else started
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "")
        timed = method == "POST"
        if timed:
            self.pace.start(since)
            if self._turns is not None:
                self._turns.acquire()
                started = time.perf_counter()          # waiting for a turn is waiting, as for a thread
        headers: list[tuple[str, str]] = [("Content-Type", "application/json")]
        request_id = environ.get("HTTP_X_REQUEST_ID")
        if request_id:
            headers.append(("X-Request-Id", request_id[:200]))
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        large = length > memory.TRIM_ABOVE or (not length and environ.get("HTTP_TRANSFER_ENCODING"))
        try:
            try:
                status, payload = 200, self.dispatch(method, path, environ)
            except ApiError as exc:
                status, payload = exc.status, {"error": exc.message}
                if isinstance(exc, MethodNotAllowed):
                    headers.append(("Allow", exc.allow))
            except Exception as exc:  # never a traceback to the client
                log.exception("internal error", extra={"fields": {"path": path, "request_id": request_id}})
                status, payload = 500, {"error": f"internal error: {type(exc).__name__}"}
            body = _dumps(payload)
        finally:
            if timed and self._turns is not None:
                self._turns.release()
        error = payload.get("error") if status >= 400 else None
        del payload                  # the parsed request and its answer: only `body` is kept
        headers.append(("Content-Length", str(len(body))))
        # The server's own time in the standard header, so a client can tell the network's share of
        # what it waited from the server's (issue 9: RTT measured right): `app` from the moment the
        # request was ready to serve (waiting for a request thread included) to its answer, `wait`
        # the waiting part; for an inference call `pace`, the busy time per answer back to back
        # lately (modelserver/pace.py), which the front-end's dispatch counts a node's work in, and
        # `pace-idle`, the time of an answer whose request found the server idle, which the
        # back-end's queueing model charges such a request (each once there is one, independently).
        done = time.perf_counter()
        timing = f"wait;dur={(started - since) * 1000:.3f}, app;dur={(done - since) * 1000:.3f}"
        pace = self.pace.finish(done) if timed else None
        idle = self.pace.idle if timed else None
        if pace is not None:
            timing += f", pace;dur={pace * 1000:.3f}"
        if idle is not None:
            timing += f", pace-idle;dur={idle * 1000:.3f}"
        headers.append(("Server-Timing", timing))
        start_response(f"{status} {_REASONS.get(status, 'Error')}", headers)
        if status >= 400 and log.isEnabledFor(logging.DEBUG):
            log.debug("request failed", extra={"fields": {
                "method": method, "path": path, "status": status, "error": error,
                "request_id": request_id, "seconds": round(time.perf_counter() - started, 6)}})
        return _Response(body, trim=bool(large) or len(body) > memory.TRIM_ABOVE)

    # -- routing -------------------------------------------------------------------------------
    def dispatch(self, method: str, path: str, environ: dict) -> dict:
        """Route one request; return the JSON payload or raise an ApiError."""
        match = _ROUTE.match(path)
        if match is None:
            raise NotFound(f"Malformed request: {method} {path}")
        name, version, label = match["name"], match["version"], match["label"]
        verb = match["verb"]
        if verb is not None:
            if method != "POST":
                raise MethodNotAllowed(f"Method {method} not allowed for :{verb}, use POST", allow="POST")
            servable = self._servable(name, version=version, label=label, request=True)
            body = self._json_body(environ)
            return getattr(self, f"_{verb}")(servable, body)
        if method not in ("GET", "HEAD"):
            what = "model metadata" if match["metadata"] else "model status"
            raise MethodNotAllowed(f"Method {method} not allowed for {what}, use GET", allow="GET, HEAD")
        if match["metadata"]:
            servable = self._servable(name, version=version, label=label, request=True)
            return self._metadata(servable)
        return self._status(name, version=version, label=label)

    def _check_name(self, name: str, *, request: bool, version: str | None) -> None:
        if name != self.repository.name:
            if not request:
                raise NotFound(f"Could not find any versions of model {name}")
            spec = f"Specific({name}, {int(version)})" if version is not None else f"Latest({name})"
            raise NotFound(f"Servable not found for request: {spec}")

    def _servable(self, name: str, *, version: str | None, label: str | None, request: bool) -> Servable:
        self._check_name(name, request=request, version=version)
        return self.repository.resolve(version=version, label=label)[0]

    def _json_body(self, environ: dict) -> Any:
        length_header = environ.get("CONTENT_LENGTH") or ""
        stream = environ["wsgi.input"]
        if length_header:
            try:
                length = int(length_header)
            except ValueError:
                raise BadRequest("invalid Content-Length") from None
            if length > self.max_body:
                raise PayloadTooLarge(f"request body of {length} bytes exceeds the limit of {self.max_body}")
            raw = stream.read(length)
        else:  # chunked
            raw = stream.read(self.max_body + 1)
            if len(raw) > self.max_body:
                raise PayloadTooLarge(f"request body exceeds the limit of {self.max_body} bytes")
        if not raw:
            raise BadRequest("JSON Parse error: the request body is empty")
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadRequest(f"JSON Parse error: {exc}") from None
        except RecursionError:
            raise BadRequest("JSON Parse error: nested too deeply") from None

    # -- handlers ------------------------------------------------------------------------------
    def _status(self, name: str, *, version: str | None, label: str | None) -> dict:
        self._check_name(name, request=False, version=version)
        servables = self.repository.resolve(version=version, label=label, for_status=True)
        return {"model_version_status": [
            {"version": str(s.version), "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
            for s in servables]}

    def _metadata(self, servable: Servable) -> dict:
        return {
            "model_spec": {"name": self.repository.name, "signature_name": "", "version": str(servable.version)},
            "metadata": {"signature_def": {
                "@type": "type.googleapis.com/tensorflow.serving.SignatureDefMap",
                "signature_def": {name: sig.to_tfs() for name, sig in servable.signatures.items()},
            }},
        }

    def _predict(self, servable: Servable, body: Any) -> dict:
        request = codec.parse_predict(body, signature_of=servable.signature)
        outputs = self._infer(servable.run, request.signature, request.feeds)
        return codec.predict_response(request, outputs)

    def _classify(self, servable: Servable, body: Any) -> dict:
        signature, feeds, count = codec.parse_examples(body, method="classify", signature_of=servable.signature)
        return codec.classify_response(signature, self._infer(servable.run, signature, feeds), count)

    def _regress(self, servable: Servable, body: Any) -> dict:
        signature, feeds, count = codec.parse_examples(body, method="regress", signature_of=servable.signature)
        return codec.regress_response(signature, self._infer(servable.run, signature, feeds), count)
