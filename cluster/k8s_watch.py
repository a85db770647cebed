"""The watch-backed cache of the Kubernetes adapter: one thread per resource, list then watch.

Why its own module: the list/watch/re-list loop (paging, bookmarks, 410 Gone, resync, backoff with
jitter) is the adapter's most delicate part and does not depend on which objects are watched or
what the port makes of them. It makes no API call itself: every call goes through its owner's
`_call` (the one door checked against API_PERMISSIONS), and client errors come back as the port's
`ClusterError` with the client's exception as `__cause__`, so this module never imports the
`kubernetes` client (only the adapter does).
"""
from __future__ import annotations

import json
import logging
import random
import threading
import time
from typing import Any, Callable, Iterator, Mapping, Protocol

import urllib3

from .port import ClusterError

__all__ = ["Gone", "Reflector", "WatchOwner", "name_of", "watch_lines"]

log = logging.getLogger("cluster.kubernetes")


class WatchOwner(Protocol):
    """What a Reflector needs from the adapter that owns it."""

    settings: Any                       # CacheSettings: resync, backoff, timeouts, page size
    _stopping: threading.Event
    _cond: threading.Condition

    def _call(self, verb: str, group: str, resource: str, fn: Callable[..., Any], *args: Any,
              stream: bool = False, read_timeout: float | None = None, **kwargs: Any) -> Any: ...

    def _translate(self, exc: BaseException, what: str) -> ClusterError: ...

    def _changed(self) -> None: ...

    def _notify(self) -> None: ...


def _status(exc: BaseException) -> int | None:
    """The HTTP status of the API error behind a ClusterError (None when there was none)."""
    return getattr(exc.__cause__, "status", None)


class Gone(Exception):
    """The watch's resourceVersion is too old (410): re-list."""


def name_of(obj: Mapping[str, Any]) -> str:
    """Return an API object's metadata.name ("" when absent)."""
    return (obj.get("metadata") or {}).get("name", "")


def _resource_version(obj: Mapping[str, Any]) -> str | None:
    return (obj.get("metadata") or {}).get("resourceVersion") or None


def watch_lines(response: Any) -> Iterator[bytes]:
    """Yield the newline-separated JSON events of a watch response as they arrive."""
    buffer = bytearray()
    for chunk in response.stream(amt=None, decode_content=True):
        buffer.extend(chunk)
        start = 0
        while (end := buffer.find(b"\n", start)) != -1:
            line = bytes(buffer[start:end]).strip()
            start = end + 1
            if line:
                yield line
        del buffer[:start]
    if buffer.strip():
        yield bytes(buffer).strip()


class Reflector(threading.Thread):
    """List, then watch one resource into a dict keyed by name; re-list on 410 and errors."""

    def __init__(self, owner: WatchOwner, kind: str, group: str, resource: str,
                 list_fn: Callable[..., Any], label_selector: str | None,
                 field_selector: str | None = None) -> None:
        super().__init__(name=f"k8s-watch-{kind}", daemon=True)
        self.owner = owner
        self.kind = kind
        self.group = group
        self.resource = resource
        self.list_fn = list_fn
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.store: dict[str, dict[str, Any]] = {}
        self.synced = threading.Event()
        self.failures = 0                    # consecutive failed attempts
        self.last_error: ClusterError | None = None
        self._response: Any = None
        self._rv: str | None = None

    def stop(self) -> None:
        response = self._response
        if response is not None:
            try:
                response.shutdown()          # unblocks a read in progress in the watch thread
            except Exception:
                pass

    def run(self) -> None:
        owner = self.owner
        settings = owner.settings
        backoff = settings.backoff_initial_seconds
        listed_at = 0.0
        need_list = True
        while not owner._stopping.is_set():
            try:
                if need_list or time.monotonic() - listed_at >= settings.resync_seconds:
                    self._list()
                    listed_at = time.monotonic()
                    need_list = False
                started = time.monotonic()
                self._watch(max(1, int(settings.resync_seconds - (started - listed_at))))
                backoff = settings.backoff_initial_seconds
                self.failures = 0
                if time.monotonic() - started < 1.0:     # a server closing at once must not spin us
                    owner._stopping.wait(settings.backoff_initial_seconds)
            except Gone:
                need_list = True
            except Exception as exc:      # noqa: BLE001 - the cache must outlive any single failure
                if owner._stopping.is_set():
                    break
                need_list = True
                if _status(exc) == 410:
                    continue
                if not isinstance(exc, ClusterError):
                    log.exception("watch %s: unexpected error", self.kind)
                    exc = ClusterError(f"watching {self.kind}: {exc}")
                self.failures += 1
                self.last_error = exc
                owner._notify()
                log.warning("watch %s failed (attempt %d), retrying in %.1fs: %s",
                            self.kind, self.failures, backoff, exc)
                owner._stopping.wait(backoff * (0.8 + 0.4 * random.random()))
                backoff = min(backoff * 2, settings.backoff_max_seconds)

    def _selectors(self) -> dict[str, str]:
        out = {}
        if self.label_selector:
            out["label_selector"] = self.label_selector
        if self.field_selector:
            out["field_selector"] = self.field_selector
        return out

    def _list(self) -> None:
        items: dict[str, dict[str, Any]] = {}
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"limit": self.owner.settings.page_size}
            if token:
                kwargs["_continue"] = token
            kwargs.update(self._selectors())
            try:
                page = self.owner._call("list", self.group, self.resource, self.list_fn, **kwargs)
            except ClusterError as exc:
                if token and _status(exc) == 410:
                    items, token = {}, None          # continue token expired: start over
                    continue
                raise
            for item in page.get("items") or []:
                items[name_of(item)] = item
            meta = page.get("metadata") or {}
            token = meta.get("continue") or None
            if not token:
                self._rv = meta.get("resourceVersion") or None
                break
        with self.owner._cond:
            self.store = items
            self.owner._changed()
        self.synced.set()
        self.last_error = None
        self.owner._notify()

    def _watch(self, seconds: int) -> None:
        kwargs: dict[str, Any] = {"watch": True, "allow_watch_bookmarks": True, "timeout_seconds": seconds}
        if self._rv:
            kwargs["resource_version"] = self._rv
        kwargs.update(self._selectors())
        read_timeout = seconds + self.owner.settings.request_timeout_seconds
        response = self.owner._call("watch", self.group, self.resource, self.list_fn, stream=True,
                                    read_timeout=read_timeout, **kwargs)
        self._response = response
        try:
            if self.owner._stopping.is_set():      # close() ran before the stream was registered
                return
            for line in watch_lines(response):
                if self.owner._stopping.is_set():
                    return
                self._event(json.loads(line))
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
            if self.owner._stopping.is_set():
                return
            raise self.owner._translate(exc, f"watching {self.kind}") from exc
        finally:
            self._response = None
            try:
                response.release_conn()
            except Exception:
                pass

    def _event(self, event: Mapping[str, Any]) -> None:
        kind = event.get("type")
        obj = event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise Gone()
            raise ClusterError(f"watching {self.kind}: {obj.get('code')}: {obj.get('message', 'watch error')}")
        rv = _resource_version(obj)
        if kind == "BOOKMARK":
            self._rv = rv or self._rv
            return
        with self.owner._cond:
            if kind in ("ADDED", "MODIFIED"):
                self.store[name_of(obj)] = obj
            elif kind == "DELETED":
                self.store.pop(name_of(obj), None)
            else:
                return
            self._rv = rv or self._rv
            self.owner._changed()
