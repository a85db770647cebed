"""The proxy's hand-written upstream client before the h11 rewrite, unchanged (`git show
49a8b26~1:frontend/upstream.py`); kept only for bench.upstream's side-by-side CPU comparison.

A small keep-alive HTTP/1.1 client for the proxy's calls to model servers.

Why not requests or urllib3: on the benchmark machine a proxied call spent about 1 ms of CPU in
requests and 0.3 ms in urllib3 against 0.05 ms here (bench/RESULTS.md), mostly in per-call
bookkeeping, header parsing through the email package, and sending headers and body in two
system calls. The proxy needs little: one request to a host:port the cluster reported, a path
rebuilt from a validated TF Serving path, headers already filtered, a body in memory; and back a
status, headers and a body. That is what this module does, with:

- one pool of idle connections per endpoint (LIFO, at most `maxsize` kept), shared by threads;
- a connect timeout and a read timeout (per socket operation);
- the request written in one `sendall`;
- responses framed by Content-Length, chunked transfer coding, or connection close; bounded
  status line, header count and sizes, and body size;
- a connection that was reused and failed before any byte of the answer arrived (the server
  closed it while idle) is retried once on a new connection: model calls are idempotent.

Exception tree::

    UpstreamError
    ├── UpstreamRefused        the connection could not be made (refused, unreachable)
    ├── UpstreamConnectTimeout the connection was not made within the connect timeout
    ├── UpstreamReadTimeout    the server did not answer within the read timeout
    └── UpstreamProtocolError  the answer is not valid HTTP/1.x or the connection broke mid-answer
"""
from __future__ import annotations

import re
import socket
import threading
from dataclasses import dataclass

__all__ = ["UpstreamPool", "UpstreamResponse", "UpstreamError", "UpstreamRefused", "UpstreamConnectTimeout",
           "UpstreamReadTimeout", "UpstreamProtocolError", "MAX_RESPONSE"]

MAX_RESPONSE = 256 * 1024 * 1024     # bytes of body accepted from a model server
_MAX_LINE = 65536
_MAX_HEADERS = 100
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_STATUS = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?: [^\r\n]*)?\r?\n")


class UpstreamError(Exception):
    """A call to a model server failed."""


class UpstreamRefused(UpstreamError):
    pass


class UpstreamConnectTimeout(UpstreamError):
    pass


class UpstreamReadTimeout(UpstreamError):
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
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.reader = sock.makefile("rb", buffering=65536)

    def close(self) -> None:
        try:
            self.reader.close()
        finally:
            self.sock.close()


class UpstreamPool:
    """Keep-alive connections to one model server (host:port), safe to share between threads."""

    def __init__(self, host: str, port: int, *, connect_timeout: float, read_timeout: float, maxsize: int = 16):
        self.host = host
        self.port = port
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.maxsize = maxsize
        self._idle: list[_Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        self._host_header = f"{host}:{port}".encode("ascii")

    # -- connections --------------------------------------------------------------------------
    def _connect(self) -> _Connection:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
        except socket.timeout as exc:
            raise UpstreamConnectTimeout(f"connect to {self.host}:{self.port} timed out") from exc
        except OSError as exc:
            raise UpstreamRefused(f"cannot connect to {self.host}:{self.port}: {exc.strerror or exc}") from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(self.read_timeout)
        return _Connection(sock)

    def _get(self) -> tuple[_Connection, bool]:
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        return self._connect(), False

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

    # -- one call -----------------------------------------------------------------------------
    def request(self, method: str, path: str, *, headers: dict[str, str], body: bytes = b"") -> UpstreamResponse:
        """Send one request and return the whole answer; raise an UpstreamError subclass on failure."""
        message = self._message(method, path, headers, body)
        conn, reused = self._get()
        try:
            return self._exchange(conn, message, method, reused=reused)
        except _Stale:
            conn = self._connect()
            try:
                return self._exchange(conn, message, method, reused=False)
            except _Stale as exc:           # cannot happen with reused=False; keep the type honest
                raise UpstreamProtocolError(str(exc)) from None

    def _message(self, method: str, path: str, headers: dict[str, str], body: bytes) -> bytes:
        if not path.startswith("/") or any(c in path for c in " \r\n\t\x00"):
            raise UpstreamProtocolError("refusing to send a malformed request path")
        lines = [f"{method} {path} HTTP/1.1".encode("ascii"), b"Host: " + self._host_header]
        for name, value in headers.items():
            if not _TOKEN.fullmatch(name) or any(c in value for c in "\r\n\x00"):
                continue                       # never let a header smuggle another line in
            if name.lower() in ("host", "content-length", "transfer-encoding", "connection"):
                continue
            lines.append(f"{name}: {value}".encode("latin-1", "replace"))
        if body or method in ("POST", "PUT", "PATCH"):
            lines.append(b"Content-Length: %d" % len(body))
        return b"\r\n".join(lines) + b"\r\n\r\n" + body

    def _exchange(self, conn: _Connection, message: bytes, method: str, *, reused: bool) -> UpstreamResponse:
        started = False
        try:
            try:
                conn.sock.sendall(message)
                status_line = conn.reader.readline(_MAX_LINE + 1)
            except socket.timeout:
                raise
            except OSError as exc:
                if reused:
                    raise _Stale(str(exc)) from None
                raise UpstreamProtocolError(f"connection broke: {exc.strerror or exc}") from None
            if not status_line:
                if reused:
                    raise _Stale("closed before answering")
                raise UpstreamProtocolError("the server closed the connection without answering")
            started = True
            response, keep = self._read_response(conn, status_line, method)
        except socket.timeout:
            conn.close()
            raise UpstreamReadTimeout(f"no answer from {self.host}:{self.port} within {self.read_timeout:g} s") from None
        except (_Stale, UpstreamError):
            conn.close()
            raise
        except OSError as exc:
            conn.close()
            raise UpstreamProtocolError(f"connection broke {'mid-answer' if started else ''}: "
                                        f"{exc.strerror or exc}".replace("  ", " ")) from None
        if keep:
            self._put(conn)
        else:
            conn.close()
        return response

    def _read_response(self, conn: _Connection, status_line: bytes, method: str) -> tuple[UpstreamResponse, bool]:
        reader = conn.reader
        while True:
            match = _STATUS.fullmatch(status_line)
            if not match:
                raise UpstreamProtocolError(f"bad status line {status_line[:80]!r}")
            minor, status = int(match.group(1)), int(match.group(2))
            headers = self._read_headers(reader)
            if 100 <= status < 200 and status != 101:
                status_line = reader.readline(_MAX_LINE + 1)       # interim answer: read the next one
                if not status_line:
                    raise UpstreamProtocolError("connection closed after an interim answer")
                continue
            break
        lowered = {}
        for name, value in headers:
            lowered.setdefault(name.lower(), []).append(value)
        connection = ",".join(lowered.get("connection", [])).lower()
        keep = (minor == 1 and "close" not in connection) or (minor == 0 and "keep-alive" in connection)
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            return UpstreamResponse(status, headers, b""), keep
        encoding = ",".join(lowered.get("transfer-encoding", [])).lower()
        if "chunked" in encoding:
            body = self._read_chunked(reader)
        elif "content-length" in lowered:
            values = {v.strip() for v in ",".join(lowered["content-length"]).split(",")}
            if len(values) != 1 or not next(iter(values)).isdigit():
                raise UpstreamProtocolError("bad Content-Length")
            length = int(next(iter(values)))
            if length > MAX_RESPONSE:
                raise UpstreamProtocolError(f"answer larger than {MAX_RESPONSE} bytes")
            body = reader.read(length)
            if len(body) != length:
                raise UpstreamProtocolError("connection closed mid-answer")
        else:
            body = reader.read(MAX_RESPONSE + 1)          # framed by the connection closing
            if len(body) > MAX_RESPONSE:
                raise UpstreamProtocolError(f"answer larger than {MAX_RESPONSE} bytes")
            keep = False
        return UpstreamResponse(status, headers, body), keep

    @staticmethod
    def _read_headers(reader) -> list[tuple[str, str]]:
        headers: list[tuple[str, str]] = []
        while True:
            line = reader.readline(_MAX_LINE + 1)
            if len(line) > _MAX_LINE:
                raise UpstreamProtocolError("header line too long")
            if line in (b"\r\n", b"\n"):
                return headers
            if not line:
                raise UpstreamProtocolError("connection closed in the headers")
            if len(headers) >= _MAX_HEADERS:
                raise UpstreamProtocolError("too many headers")
            name, sep, value = line.decode("latin-1").partition(":")
            if not sep or not _TOKEN.fullmatch(name):
                raise UpstreamProtocolError(f"bad header line {line[:80]!r}")
            headers.append((name, value.strip()))

    @staticmethod
    def _read_chunked(reader) -> bytes:
        parts: list[bytes] = []
        total = 0
        while True:
            line = reader.readline(_MAX_LINE + 1)
            if not line:
                raise UpstreamProtocolError("connection closed mid-answer")
            size_text = line.split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise UpstreamProtocolError(f"bad chunk size {size_text[:20]!r}") from None
            if size == 0:
                while True:                                  # trailers, then the blank line
                    trailer = reader.readline(_MAX_LINE + 1)
                    if trailer in (b"\r\n", b"\n", b""):
                        return b"".join(parts)
            total += size
            if total > MAX_RESPONSE:
                raise UpstreamProtocolError(f"answer larger than {MAX_RESPONSE} bytes")
            chunk = reader.read(size)
            if len(chunk) != size or reader.readline(_MAX_LINE + 1) not in (b"\r\n", b"\n"):
                raise UpstreamProtocolError("bad chunk framing")
            parts.append(chunk)
