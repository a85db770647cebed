"""The proxy's HTTP/1.1 client against a real scripted server on loopback."""
from __future__ import annotations

import socket
import threading

import pytest

from frontend.upstream import (UpstreamPool, UpstreamProtocolError, UpstreamTimeout, UpstreamRefused)


class ScriptedServer:
    """Accept connections; for each request read it and answer with the next scripted reply.

    A reply is bytes, or "close" (close without answering), or "hang" (never answer). After a
    reply, `keep` decides whether the connection stays open for the next request.
    """

    def __init__(self, replies: list, *, keep: bool = True):
        self.replies = list(replies)
        self.keep = keep
        self.requests: list[bytes] = []
        self.connections = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _read_request(self, conn: socket.socket) -> bytes | None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return None
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(rest) < length:
            rest += conn.recv(65536)
        return head + b"\r\n\r\n" + rest

    def _serve(self) -> None:
        while not self._stop.is_set() and self.replies:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                while self.replies:
                    request = self._read_request(conn)
                    if request is None:
                        break
                    self.requests.append(request)
                    reply = self.replies.pop(0)
                    if reply == "close":
                        break
                    if reply == "hang":
                        self._stop.wait(5)
                        return
                    conn.sendall(reply)
                    if not self.keep:
                        break

    def close(self) -> None:
        self._stop.set()
        self.sock.close()


@pytest.fixture
def server_factory():
    made = []

    def make(replies, **kw):
        server = ScriptedServer(replies, **kw)
        made.append(server)
        return server
    yield make
    for server in made:
        server.close()


def pool_for(server, **kw) -> UpstreamPool:
    return UpstreamPool("127.0.0.1", server.port, connect_timeout=1.0, call_timeout=kw.pop("call_timeout", 5.0), **kw)


OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nX-Model: m\r\n\r\n{}"


def test_content_length_keep_alive_and_one_connection(server_factory):
    server = server_factory([OK, OK, OK])
    pool = pool_for(server)
    for _ in range(3):
        answer = pool.request("POST", "/v1/models/m:predict", headers={"Content-Type": "application/json"},
                              body=b'{"instances": [1]}')
        assert answer.status == 200 and answer.body == b"{}"
        assert ("X-Model", "m") in answer.headers
    assert server.connections == 1
    first = server.requests[0]
    assert first.startswith(b"POST /v1/models/m:predict HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"\r\nContent-Length: 18\r\n" in first and first.endswith(b'{"instances": [1]}')
    pool.close()


def test_chunked_and_close_framed_bodies(server_factory):
    chunked = (b"HTTP/1.1 400 Bad Request\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n")
    closed = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil close"
    server = server_factory([chunked, closed], keep=True)
    pool = pool_for(server)
    answer = pool.request("GET", "/v1/models/m", headers={})
    assert (answer.status, answer.body) == (400, b"hello world")
    server.keep = False
    answer = pool.request("GET", "/v1/models/m", headers={})
    assert (answer.status, answer.body) == (200, b"until close")
    pool.close()


def test_interim_answer_is_skipped(server_factory):
    server = server_factory([b"HTTP/1.1 100 Continue\r\n\r\n" + OK])
    assert pool_for(server).request("POST", "/x", headers={}, body=b"1").status == 200


def test_a_stale_kept_alive_connection_is_retried_once(server_factory):
    # the server answers once then closes the connection; the pool's next call must not fail
    server = server_factory([OK, OK], keep=False)
    pool = pool_for(server)
    assert pool.request("GET", "/v1/models/m", headers={}).status == 200
    assert pool.request("GET", "/v1/models/m", headers={}).status == 200
    assert server.connections == 2


def test_connection_closed_without_answer_on_a_fresh_connection_is_an_error(server_factory):
    server = server_factory(["close"])
    with pytest.raises(UpstreamProtocolError):
        pool_for(server).request("GET", "/v1/models/m", headers={})


def test_refused_and_timeouts(server_factory):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()                                   # nothing listens there now
    with pytest.raises(UpstreamRefused):
        UpstreamPool("127.0.0.1", port, connect_timeout=1.0, call_timeout=1.0).request("GET", "/", headers={})
    server = server_factory(["hang"])
    with pytest.raises(UpstreamTimeout):
        pool_for(server, call_timeout=0.3).request("GET", "/v1/models/m", headers={})


@pytest.mark.parametrize("reply", [
    b"HTTP/2 200 OK\r\n\r\n",
    b"garbage\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"HTTP/1.1 200 OK\r\n" + b"X-A: b\r\n" * 101 + b"\r\n",
])
def test_malformed_answers_are_protocol_errors(server_factory, reply):
    server = server_factory([reply], keep=False)
    with pytest.raises(UpstreamProtocolError):
        pool_for(server).request("GET", "/v1/models/m", headers={})


def test_headers_cannot_inject_lines_and_paths_are_checked(server_factory):
    server = server_factory([OK])
    pool = pool_for(server)
    pool.request("POST", "/p", headers={"X-Ok": "1", "X-Bad": "a\r\nX-Injected: yes", "Bad Name": "v",
                                        "Host": "evil", "Content-Length": "999"}, body=b"ab")
    sent = server.requests[0]
    assert b"X-Ok: 1" in sent and b"Injected" not in sent and b"Bad Name" not in sent
    assert b"evil" not in sent and b"Content-Length: 2\r\n" in sent and b"999" not in sent
    for path in ("v1/models/m", "/a b", "/a\r\nX: y"):
        with pytest.raises(UpstreamProtocolError):
            pool.request("GET", path, headers={})
