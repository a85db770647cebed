"""The proxy's keep-alive HTTP/1.1 client for calls to model servers, parsing answers with h11.

Why this and not requests or urllib3: on the benchmark machine a proxied call spent about 1 ms of
CPU in requests and 0.3 ms in urllib3, mostly in per-call bookkeeping and header parsing through
the email package (bench/RESULTS.md). The proxy needs little: one request to a host:port the
cluster reported, a path rebuilt from a validated TF Serving path, headers already filtered, a
body in memory; and back a status, headers and a body. Answers are parsed by h11 (the sans-IO
HTTP/1.1 parser httpx uses), because a hand-written parser got framing wrong in ways a faulty or
hostile model server can exploit (surplus bytes after Content-Length desynchronised a pooled
connection, so one client read another's answer). The rules:

- one pool of idle connections per endpoint (LIFO, at most `maxsize` kept), shared by threads or
  greenlets (works unchanged under gevent's monkey-patching);
- the request is written with one `sendall`; the answer is read in large `recv_into` calls and fed
  to h11;
- a whole-call deadline (`call_timeout`: connect, send and the full answer, including a retry):
  before every socket operation the socket's timeout is set to the time left, so a server dripping
  one byte at a time or sending endless `100 Continue` cannot hold a call longer;
- a connection goes back to the pool only when the answer ended exactly at its framing (h11 has
  both sides DONE, keep-alive allowed, not one byte left over); anything else (surplus bytes, bad
  chunks, oversize, truncation, any protocol error) closes it. On checkout an idle connection that
  is readable (late surplus bytes or EOF) is dropped, as urllib3 does;
- bounded: body at most `max_response` bytes (MAX_RESPONSE by default), the header block at most
  `max_header_bytes` (h11's max_incomplete_event_size) and `_MAX_HEADERS` fields, at most
  `_MAX_INTERIM` 1xx answers; status codes outside 100-599, HTTP versions other than 1.0/1.1,
  both Transfer-Encoding and Content-Length, and everything h11 rejects (non-token header names,
  CR or NUL in values, bad Content-Length, bad chunk sizes or terminators, unsolicited 101) are
  protocol errors;
- a connection that was reused and failed before any byte of the answer arrived (the server closed
  it while idle) is retried once on a new connection: model calls are idempotent.

Exception tree (no h11 exception, ValueError or OSError escapes `request`)::

    UpstreamError
    ├── UpstreamRefused        the connection could not be made (refused, unreachable)
    ├── UpstreamConnectTimeout the connection was not made within the connect timeout
    ├── UpstreamTimeout        the whole call did not finish within the call deadline
    └── UpstreamProtocolError  the answer is not valid HTTP/1.x, too large, or the connection broke
"""
from __future__ import annotations

import re
import socket
import threading
import time
from dataclasses import dataclass

import h11

__all__ = ["UpstreamPool", "UpstreamResponse", "UpstreamError", "UpstreamRefused", "UpstreamConnectTimeout",
           "UpstreamTimeout", "UpstreamProtocolError", "MAX_RESPONSE"]

MAX_RESPONSE = 256 * 1024 * 1024     # bytes of body accepted from a model server
MAX_HEADER_BYTES = 64 * 1024         # bytes of status line + header block (h11's max_incomplete_event_size)
_MAX_HEADERS = 100
_MAX_INTERIM = 10                    # 1xx answers skipped before the final one
_RECV = 64 * 1024                    # bytes per read
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_VALUE = re.compile(r"(?:[^\x00-\x20\x7f]+(?:[ \t]+[^\x00-\x20\x7f]+)*)?")   # what h11 sends without complaint
# Set by the pool, or would change how the answer is framed or delivered (h11 sees a stand-in request).
_SKIPPED = frozenset({"host", "content-length", "transfer-encoding", "connection", "expect", "upgrade", "te"})
_HTTP_VERSIONS = (b"1.0", b"1.1")
_STANDINS: dict[str, h11.Request] = {}    # method -> what h11 is told was sent (see UpstreamPool._message)


class UpstreamError(Exception):
    """A call to a model server failed."""


class UpstreamRefused(UpstreamError):
    pass


class UpstreamConnectTimeout(UpstreamError):
    pass


class UpstreamTimeout(UpstreamError):
    pass


class UpstreamProtocolError(UpstreamError):
    pass


class _Stale(Exception):
    """A reused connection failed before the answer began: retry on a fresh one."""


@dataclass(frozen=True)
class UpstreamResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


class _Connection:
    __slots__ = ("sock", "h11", "buffer", "view")

    def __init__(self, sock: socket.socket, max_header_bytes: int):
        self.sock = sock
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=max_header_bytes)
        self.buffer = bytearray(_RECV)
        self.view = memoryview(self.buffer)

    def idle_and_quiet(self) -> bool:
        """Tell whether this idle connection has nothing to read: no late bytes and no EOF.

        urllib3 asks select/poll with a zero timeout; a non-blocking peek gives the same answer in
        one system call, has no FD_SETSIZE limit, and needs no gevent hub round-trip when patched."""
        sock = self.sock
        try:
            sock.settimeout(0.0)
            sock.recv(1, socket.MSG_PEEK)      # data or b"" (EOF): either way not reusable
        except BlockingIOError:
            return True
        except OSError:
            return False
        return False

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class UpstreamPool:
    """Keep-alive connections to one model server (host:port), safe to share between threads."""

    def __init__(self, host: str, port: int, *, connect_timeout: float, call_timeout: float, maxsize: int = 16,
                 max_response: int | None = None, max_header_bytes: int = MAX_HEADER_BYTES,
                 max_interim: int = _MAX_INTERIM):
        self.host = host
        self.port = port
        self.connect_timeout = connect_timeout
        self.call_timeout = call_timeout
        self.maxsize = maxsize
        self.max_response = MAX_RESPONSE if max_response is None else max_response
        self.max_header_bytes = max_header_bytes
        self.max_interim = max_interim
        self._idle: list[_Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        self._host_header = f"{host}:{port}"

    # -- connections --------------------------------------------------------------------------
    def _connect(self, deadline: float) -> _Connection:
        left = deadline - time.monotonic()
        if left <= 0:
            raise self._timeout()
        try:
            sock = socket.create_connection((self.host, self.port), timeout=min(self.connect_timeout, left))
        except socket.timeout as exc:
            if left < self.connect_timeout:
                raise self._timeout() from None
            raise UpstreamConnectTimeout(f"connect to {self.host}:{self.port} timed out") from exc
        except OSError as exc:
            raise UpstreamRefused(f"cannot connect to {self.host}:{self.port}: {exc.strerror or exc}") from exc
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        return _Connection(sock, self.max_header_bytes)

    def _get(self) -> _Connection | None:
        """Return an idle connection with nothing pending on it, or None."""
        while True:
            with self._lock:
                if not self._idle:
                    return None
                conn = self._idle.pop()
            if conn.idle_and_quiet():
                return conn
            conn.close()

    def _put(self, conn: _Connection) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < self.maxsize:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        """Close every idle connection; connections in use are closed when returned."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def _timeout(self) -> UpstreamTimeout:
        return UpstreamTimeout(f"no complete answer from {self.host}:{self.port} within the "
                               f"{self.call_timeout:g} s call deadline")

    # -- one call -----------------------------------------------------------------------------
    def request(self, method: str, path: str, *, headers: dict[str, str], body: bytes = b"") -> UpstreamResponse:
        """Send one request and return the whole answer; raise an UpstreamError subclass on failure."""
        deadline = time.monotonic() + self.call_timeout
        request = self._message(method, path, headers, body)
        conn = self._get()
        if conn is not None:
            try:
                return self._exchange(conn, request, deadline, reused=True)
            except _Stale:
                pass
        conn = self._connect(deadline)
        try:
            return self._exchange(conn, request, deadline, reused=False)
        except _Stale as exc:               # cannot happen with reused=False; keep the type honest
            raise UpstreamProtocolError(str(exc)) from None

    def _message(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[h11.Request, bytes]:
        """Return (h11's stand-in for the request, the request's bytes).

        The bytes are built here (building an h11.Request validates every header again and cost a
        third of a call's CPU); h11 is shown a stand-in with the same method, because the method is
        the only property of a request (besides Connection, Expect and Upgrade, never sent) that
        changes how the answer is framed."""
        if not _TOKEN.fullmatch(method):
            raise UpstreamProtocolError("refusing to send a malformed request method")
        if not path.startswith("/") or any(c in path for c in " \r\n\t\x00"):
            raise UpstreamProtocolError("refusing to send a malformed request path")
        lines = [f"{method} {path} HTTP/1.1\r\nHost: {self._host_header}"]
        for name, value in headers.items():
            value = value.strip(" \t")
            if name.lower() in _SKIPPED or not _TOKEN.fullmatch(name) or not _VALUE.fullmatch(value):
                continue                       # never let a header smuggle another line in
            lines.append(f"{name}: {value}")
        if body or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body)}")
        lines.append("\r\n")
        head = "\r\n".join(lines).encode("latin-1", "replace")
        standin = _STANDINS.get(method)
        if standin is None:
            standin = _STANDINS.setdefault(method, h11.Request(method=method, target="/",
                                                               headers=[("Host", "upstream")]))
        return standin, head + body if body else head

    def _exchange(self, conn: _Connection, request: tuple[h11.Request, bytes], deadline: float, *,
                  reused: bool) -> UpstreamResponse:
        try:
            response = self._call(conn, request, deadline, reused)
        except BaseException:
            conn.close()
            raise
        parser = conn.h11
        if (parser.our_state is h11.DONE and parser.their_state is h11.DONE
                and not parser.trailing_data[0]):
            parser.start_next_cycle()
            self._put(conn)
        else:
            conn.close()
        return response

    def _call(self, conn: _Connection, request: tuple[h11.Request, bytes], deadline: float,
              reused: bool) -> UpstreamResponse:
        parser, sock = conn.h11, conn.sock
        standin, data = request
        try:
            parser.send(standin)                    # h11's bytes are not sent: `data` is the request
            parser.send(h11.EndOfMessage())
        except h11.ProtocolError as exc:
            raise UpstreamProtocolError(f"h11 refused the request: {exc}") from None
        where = f"{self.host}:{self.port}"
        try:
            sock.settimeout(self._left(deadline))
            sock.sendall(data)
        except socket.timeout:
            raise self._timeout() from None
        except OSError as exc:
            if reused:
                raise _Stale(str(exc)) from None
            raise UpstreamProtocolError(f"connection to {where} broke: {exc.strerror or exc}") from None

        received = 0
        interim = 0
        status = 0
        fields: list[tuple[str, str]] = []
        parts: list[bytes] = []
        size = 0
        limit = self.max_response
        try:
            while True:
                event = parser.next_event()
                kind = type(event)
                if event is h11.NEED_DATA:
                    try:
                        sock.settimeout(self._left(deadline))
                        count = sock.recv_into(conn.view)
                    except socket.timeout:
                        raise self._timeout() from None
                    except OSError as exc:
                        if reused and not received:
                            raise _Stale(str(exc)) from None
                        raise UpstreamProtocolError(f"connection to {where} broke "
                                                    f"{'mid-answer' if received else 'before answering'}: "
                                                    f"{exc.strerror or exc}") from None
                    if not count and not received:
                        if reused:
                            raise _Stale("closed before answering")
                        raise UpstreamProtocolError(f"{where} closed the connection without answering")
                    received += count
                    parser.receive_data(conn.view[:count] if count else b"")
                elif kind is h11.Data:
                    size += len(event.data)
                    if size > limit:
                        raise UpstreamProtocolError(f"answer from {where} larger than {limit} bytes")
                    parts.append(event.data)
                elif kind is h11.EndOfMessage:
                    break
                elif kind is h11.Response:
                    status = event.status_code
                    self._check_head(event, where)
                    raw = event.headers.raw_items()
                    if len(raw) > _MAX_HEADERS:
                        raise UpstreamProtocolError(f"answer from {where} has more than {_MAX_HEADERS} headers")
                    if sum(len(name) + len(value) + 4 for name, value in raw) > self.max_header_bytes:
                        # h11 bounds only a header block still incomplete; one read can bring a whole one
                        raise UpstreamProtocolError(f"answer from {where} has a header block over "
                                                    f"{self.max_header_bytes} bytes")
                    fields = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in raw]
                    length, chunked = None, False
                    for name, value in event.headers:          # lower-cased names, validated by h11
                        if name == b"content-length":
                            length = int(value)
                        elif name == b"transfer-encoding":
                            chunked = True
                    if chunked and length is not None:
                        raise UpstreamProtocolError(f"answer from {where} has both Transfer-Encoding and "
                                                    "Content-Length")
                    if (length is not None and length > limit and standin.method != b"HEAD"
                            and status not in (204, 304)):
                        raise UpstreamProtocolError(f"answer from {where} larger than {limit} bytes")
                elif kind is h11.InformationalResponse:
                    self._check_head(event, where)
                    interim += 1
                    if interim > self.max_interim:
                        raise UpstreamProtocolError(f"{where} sent more than {self.max_interim} interim answers")
                else:                                   # ConnectionClosed, PAUSED: not a whole answer
                    raise UpstreamProtocolError(f"{where} ended the answer early ({event!r})")
        except h11.ProtocolError as exc:
            raise UpstreamProtocolError(f"bad answer from {where}: {exc}") from None
        body_out = parts[0] if len(parts) == 1 else b"".join(parts)
        return UpstreamResponse(status, fields, bytes(body_out))

    def _left(self, deadline: float) -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise self._timeout()
        return left

    @staticmethod
    def _check_head(event, where: str) -> None:
        if not 100 <= event.status_code <= 599:
            raise UpstreamProtocolError(f"{where} answered with status {event.status_code}")
        if event.http_version not in _HTTP_VERSIONS:
            raise UpstreamProtocolError(f"{where} answered in HTTP/{event.http_version.decode('ascii', 'replace')}")
