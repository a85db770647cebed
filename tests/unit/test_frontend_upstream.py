"""The proxy's HTTP/1.1 client against a real scripted server on loopback."""
from __future__ import annotations

import contextlib
import socket
import threading
import time

import pytest

from frontend.upstream import (UpstreamPool, UpstreamProtocolError, UpstreamRefused, UpstreamTimeout)


class ScriptedServer:
    """Accept connections; for each request read it and answer with the next scripted reply.

    A reply is bytes, or "close" (close without answering), or "hang" (never answer), or a
    callable(conn, stop_event) that plays it (returning False closes the connection). After a
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
            with conn, contextlib.suppress(OSError):      # a client that drops the connection ends it
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
                    if callable(reply):
                        if reply(conn, self._stop) is False:
                            break
                        continue
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


# ---- the h11 rules: framing, deadline, bounds ------------------------------------------------------------

def answer(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


def test_surplus_bytes_after_the_answer_close_the_connection(server_factory):
    # the surplus is a whole forged answer: reused, the connection would hand it to the next caller
    server = server_factory([answer(b"one") + answer(b"forged"), answer(b"two"), answer(b"three")])
    pool = pool_for(server)
    assert pool.request("GET", "/a", headers={}).body == b"one"
    assert pool.request("GET", "/b", headers={}).body == b"two"
    assert pool.request("GET", "/c", headers={}).body == b"three"
    assert server.connections == 2                  # the first one was dropped, the second kept


def test_late_surplus_on_an_idle_connection_drops_it_at_checkout(server_factory):
    def late(conn, stop):
        conn.sendall(answer(b"one"))
        time.sleep(0.05)
        conn.sendall(answer(b"forged"))
    server = server_factory([late, answer(b"two")])
    pool = pool_for(server)
    assert pool.request("GET", "/a", headers={}).body == b"one"
    time.sleep(0.2)
    assert pool.request("GET", "/b", headers={}).body == b"two"
    assert server.connections == 2


def test_the_deadline_covers_the_whole_call(server_factory):
    def drip(conn, stop):
        for byte in answer(b"slow"):
            conn.sendall(bytes([byte]))
            if stop.wait(0.05):
                return False
        return False
    server = server_factory([drip])
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout, match="0.4 s call deadline"):
        pool_for(server, call_timeout=0.4).request("GET", "/", headers={})
    assert 0.35 < time.monotonic() - started < 0.9


def test_interim_answers_are_bounded_in_number(server_factory):
    ten = b"HTTP/1.1 100 Continue\r\n\r\n" * 10
    server = server_factory([ten + OK, ten + b"HTTP/1.1 102 Processing\r\n\r\n" + OK])
    pool = pool_for(server)
    assert pool.request("GET", "/", headers={}).status == 200
    with pytest.raises(UpstreamProtocolError, match="interim"):
        pool.request("GET", "/", headers={})


def test_body_and_header_block_are_bounded(server_factory):
    server = server_factory([answer(b"x" * 1000), answer(b"x" * 1001),
                             b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n",
                             b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3e8\r\n" + b"x" * 1000
                             + b"\r\n1\r\nx\r\n0\r\n\r\n",
                             b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 3000 + b"\r\nContent-Length: 0\r\n\r\n"],
                            keep=False)
    pool = pool_for(server, max_response=1000, max_header_bytes=2048)
    assert pool.request("GET", "/", headers={}).body == b"x" * 1000
    for _ in range(4):          # one byte over, declared too big (refused before reading), chunked, header
        with pytest.raises(UpstreamProtocolError):
            pool.request("GET", "/", headers={})


@pytest.mark.parametrize("reply", [
    b"HTTP/1.1 999 Nine\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 000 Zero\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 2OO OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n",
    "HTTP/1.1 200 OK\r\nContent-Length: \u00b2\r\n\r\nab".encode(),
    b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX-A: a\rb\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nabc",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x3\r\nabc\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n+3\r\nabc\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0_2\r\nab\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXY0\r\n\r\n",
], ids=["999", "000", "2OO", "http2", "101", "cl-superscript", "cl-negative", "cr", "nul", "te+cl", "te-gzip",
        "chunk-0x", "chunk-plus", "chunk-underscore", "chunk-negative", "chunk-terminator"])
def test_more_malformed_answers_are_protocol_errors(server_factory, reply):
    server = server_factory([reply], keep=False)
    with pytest.raises(UpstreamProtocolError) as failure:
        pool_for(server, call_timeout=1.0).request("GET", "/v1/models/m", headers={})
    assert type(failure.value) is UpstreamProtocolError and failure.value.__cause__ is None


def test_bare_lf_answers_and_http_1_0_close_are_read(server_factory):
    server = server_factory([b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok", OK], keep=True)
    pool = pool_for(server)
    assert pool.request("GET", "/", headers={}).body == b"ok"
    assert pool.request("GET", "/", headers={}).body == b"{}"
    assert server.connections == 1


def test_header_values_are_trimmed_not_dropped(server_factory):
    server = server_factory([OK])
    pool_for(server).request("GET", "/", headers={"X-Padded": "  v  ", "X-Tab": "a\tb", "X-Ctl": "a\x01b"})
    sent = server.requests[0]
    assert b"\r\nX-Padded: v\r\n" in sent and b"\r\nX-Tab: a\tb\r\n" in sent and b"X-Ctl" not in sent
