"""The proxy's upstream client against a scripted malicious model server on real loopback sockets.

A threaded TCP server plays one armed misbehaviour on every request it reads (and, for one case,
on every connection it accepts); disarmed, it is an honest keep-alive server that echoes the
request body, so each call can check it got its own answer. For each misbehaviour:

(a) through an UpstreamPool directly: the expected exception type (or an answer, for the few
    misbehaviours that leave the answer itself valid);
(b) through the real front-end (in-process, cluster "module:factory" naming this file's
    MaliciousCluster): JSON 502 or 504 with an "error" key (or the valid answer);
(c) afterwards 100 well-behaved calls through the same pool each get their own answer;
(d) no socket or file descriptor leak, and for the huge bodies memory stays within ~2x the limit.

Plus the same client under gevent's monkey-patching (in a subprocess): the deadline holds and a
greenlet stuck on a dripping server does not stop others.
"""
from __future__ import annotations

import contextlib
import gc
import json
import os
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import psutil
import pytest
import requests

from cluster.port import Cluster, ClusterError, Deployment, Node
from frontend import create_app
from tests.frontend_server import ServerThread
from frontend.upstream import UpstreamPool, UpstreamProtocolError, UpstreamTimeout

MODEL = "half_plus_two"
PATH = f"/v1/models/{MODEL}:predict"
DEADLINE = 1.0                    # seconds: call_timeout of every pool here
LIMIT = 1 << 20                   # max_response of the direct pools
FE_LIMIT = 4 << 20                # MAX_RESPONSE while the front-end runs
HONEST_CALLS = 100
REPO = Path(__file__).resolve().parents[2]

FORGED = b'{"id": "forged"}'


def answer(body: bytes, *, eol: bytes = b"\r\n") -> bytes:
    """An honest keep-alive answer carrying `body`."""
    head = [b"HTTP/1.1 200 OK", b"Content-Type: application/json", b"Content-Length: %d" % len(body)]
    return eol.join(head) + eol + eol + body


FORGED_ANSWER = answer(FORGED)


# ---- the malicious server ---------------------------------------------------------------------------

class MaliciousServer:
    """Serve honestly until `case` names a misbehaviour; then play it on every request read."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.port = self.sock.getsockname()[1]
        self.endpoint = f"127.0.0.1:{self.port}"
        self.case: Case | None = None
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept, name="malicious-accept", daemon=True)
        self._acceptor.start()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self._lock:
                self._conns.add(conn)
                self._threads = [t for t in self._threads if t.is_alive()]
                thread = threading.Thread(target=self._handle, args=(conn,), daemon=True)
                self._threads.append(thread)
            thread.start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(0.1)
            case = self.case
            if case is not None and case.on_accept is not None:
                case.on_accept(self, conn)
            pending = b""
            while not self.stopping.is_set():
                body, pending = self._read_request(conn, pending)
                if body is None:
                    return
                case = self.case
                if case is None:
                    conn.sendall(answer(body))
                elif not case.play(self, conn, body):
                    return
        except OSError:
            pass
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.close()

    def _read_request(self, conn: socket.socket, data: bytes) -> tuple[bytes | None, bytes]:
        while b"\r\n\r\n" not in data:
            chunk = self.recv(conn)
            if not chunk:
                return None, b""
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(rest) < length:
            chunk = self.recv(conn)
            if not chunk:
                return None, b""
            rest += chunk
        return rest[:length], rest[length:]

    def recv(self, conn: socket.socket) -> bytes:
        """Wait for bytes; b"" when the peer closed or the server stops."""
        while not self.stopping.is_set():
            try:
                return conn.recv(65536)
            except socket.timeout:
                continue
        return b""

    # -- helpers for the plays ------------------------------------------------------------------------
    def wait_close(self, conn: socket.socket) -> bool:
        """Answer nothing more; return when the client gives up (closes)."""
        while self.recv(conn):
            pass
        return False

    def stream(self, conn: socket.socket, head: bytes, piece: bytes, *, cap: int = 1 << 30) -> bool:
        """Send `head`, then `piece` over and over until the client closes (or `cap` bytes)."""
        conn.settimeout(5.0)
        conn.sendall(head)
        sent = 0
        while sent < cap and not self.stopping.is_set():
            conn.sendall(piece)
            sent += len(piece)
        return False

    def drip(self, conn: socket.socket, data: bytes, *, every: float = 0.2) -> bool:
        """Send one byte every `every` seconds (until the client closes)."""
        for i in range(len(data)):
            conn.sendall(data[i:i + 1])
            if self.stopping.wait(every):
                break
        return self.wait_close(conn)

    def close(self) -> None:
        self.stopping.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)         # wakes the blocked accept()
        except OSError:
            pass
        self.sock.close()
        with self._lock:
            conns, threads = list(self._conns), list(self._threads)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in threads:
            thread.join(5)
        self._acceptor.join(5)


# ---- the misbehaviours ------------------------------------------------------------------------------

Play = Callable[[MaliciousServer, socket.socket, bytes], bool]


@dataclass(frozen=True)
class Case:
    name: str
    play: Play
    direct: type[Exception] | str      # exception type, "own" (its own answer) or "any" (some 200 answer)
    status: int                        # what a front-end client gets
    on_accept: Callable[[MaliciousServer, socket.socket], None] | None = None
    settle: float = 0.0                # seconds to wait before the honest calls (late bytes arrive)
    huge: bool = False                 # measure memory


def send(data: bytes, *, close: bool = True) -> Play:
    def play(srv: MaliciousServer, conn: socket.socket, body: bytes) -> bool:
        conn.sendall(data)
        return not close
    return play


def send_wait(data: bytes) -> Play:
    """Send `data`, then nothing more until the client gives up."""
    def play(srv, conn, body):
        conn.sendall(data)
        return srv.wait_close(conn)
    return play


def surplus_now(srv, conn, body):
    conn.sendall(answer(body) + FORGED_ANSWER)
    return True


def surplus_later(srv, conn, body):
    conn.sendall(answer(body))
    time.sleep(0.05)
    conn.sendall(FORGED_ANSWER)
    return True


def close_at_once(srv, conn, body):
    return False


def hang(srv, conn, body):
    return srv.wait_close(conn)


def drip_status(srv, conn, body):
    return srv.drip(conn, answer(body))


def drip_body(srv, conn, body):
    whole = answer(body)
    head = whole[:-len(body)]
    conn.sendall(head)
    return srv.drip(conn, body)


def slow_interim(srv, conn, body):
    while not srv.stopping.wait(0.2):
        conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
    return False


def interim_then_answer(srv, conn, body):
    conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n" * 3 + b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n"
                 + answer(body))
    return True


def bare_lf(srv, conn, body):
    conn.sendall(answer(body, eol=b"\n"))
    return True


def reset_mid_body(srv, conn, body):
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
    time.sleep(0.02)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    return False


def forged_on_accept(srv, conn):
    conn.sendall(FORGED_ANSWER)


def stream(head: bytes, piece: bytes) -> Play:
    return lambda srv, conn, body: srv.stream(conn, head, piece)


OK_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
CHUNKED = OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n"
P, T = UpstreamProtocolError, UpstreamTimeout

CASES = [
    Case("surplus_after_content_length", surplus_now, "own", 200),
    Case("surplus_after_content_length_50ms_later", surplus_later, "own", 200, settle=0.2),
    Case("short_body_then_close", send(OK_HEAD + b"Content-Length: 10\r\n\r\n{\"id\""), P, 502),
    Case("content_length_two_values", send(OK_HEAD + b"Content-Length: 2, 3\r\n\r\n{}x", close=False), P, 502),
    Case("content_length_twice_differing",
         send(OK_HEAD + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}x", close=False), P, 502),
    Case("content_length_superscript_two", send(OK_HEAD + "Content-Length: ²\r\n\r\n{}".encode(), close=False),
         P, 502),
    Case("content_length_negative", send(OK_HEAD + b"Content-Length: -1\r\n\r\n{}", close=False), P, 502),
    Case("chunk_size_negative", send_wait(CHUNKED + b"-1\r\n{}"), P, 502),
    Case("chunk_size_hex_prefix", send_wait(CHUNKED + b"0x3\r\nabc\r\n0\r\n\r\n"), P, 502),
    Case("chunk_size_plus", send_wait(CHUNKED + b"+3\r\nabc\r\n0\r\n\r\n"), P, 502),
    Case("chunk_size_underscore", send_wait(CHUNKED + b"0_2\r\nab\r\n0\r\n\r\n"), P, 502),
    Case("chunk_size_huge", stream(CHUNKED + b"FFFFFFFFFFFFFFFF\r\n", b"x" * 65536), P, 502, huge=True),
    Case("chunk_size_too_many_digits", send_wait(CHUNKED + b"1" + b"0" * 30 + b"\r\nab"), P, 502),
    Case("chunk_bad_terminator", send_wait(CHUNKED + b"3\r\nabcXY0\r\n\r\n"), P, 502),
    Case("chunk_last_missing_then_close", send(CHUNKED + b"3\r\nabc\r\n"), P, 502),
    Case("endless_headers", stream(b"HTTP/1.1 200 OK\r\n", b"X-Endless: yes\r\n" * 1000), P, 502),
    Case("one_huge_header", stream(b"HTTP/1.1 200 OK\r\nX-Huge: ", b"a" * 65536), P, 502),
    Case("too_many_headers", send_wait(OK_HEAD + b"X-A: b\r\n" * 200 + b"Content-Length: 2\r\n\r\n{}"), P, 502),
    Case("status_line_without_end", stream(b"HTTP/1.1 200 ", b"x" * 65536), P, 502),
    Case("endless_100_continue", stream(b"", b"HTTP/1.1 100 Continue\r\n\r\n"), P, 502),
    Case("slow_100_continue_past_the_deadline", slow_interim, T, 504),
    Case("unsolicited_101_switching_protocols",
         send_wait(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n"), P, 502),
    Case("drip_status_line_past_the_deadline", drip_status, T, 504),
    Case("drip_body_past_the_deadline", drip_body, T, 504),
    Case("huge_body_with_content_length", stream(OK_HEAD + b"Content-Length: 10737418240\r\n\r\n", b"x" * 65536),
         P, 502, huge=True),
    Case("huge_body_close_delimited", stream(OK_HEAD + b"Connection: close\r\n\r\n", b"x" * 65536), P, 502,
         huge=True),
    Case("huge_body_chunked", stream(CHUNKED, b"10000\r\n" + b"x" * 65536 + b"\r\n"), P, 502, huge=True),
    Case("status_999", send_wait(b"HTTP/1.1 999 Nine\r\nContent-Length: 2\r\n\r\n{}"), P, 502),
    Case("status_000", send_wait(b"HTTP/1.1 000 Zero\r\nContent-Length: 2\r\n\r\n{}"), P, 502),
    Case("status_2OO_with_letters", send_wait(b"HTTP/1.1 2OO OK\r\nContent-Length: 2\r\n\r\n{}"), P, 502),
    Case("http2_connection_preface", send(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), P, 502),
    Case("http2_settings_frame", send(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00" * 4), P, 502),
    Case("http_version_2", send_wait(b"HTTP/2.0 200 OK\r\nContent-Length: 2\r\n\r\n{}"), P, 502),
    Case("garbage_status_line", send_wait(b"garbage\r\n\r\n"), P, 502),
    Case("cr_in_header_value", send_wait(OK_HEAD + b"X-A: a\rb\r\nContent-Length: 2\r\n\r\n{}"), P, 502),
    Case("nul_in_header_value", send_wait(OK_HEAD + b"X-A: a\x00b\r\nContent-Length: 2\r\n\r\n{}"), P, 502),
    Case("header_name_not_a_token", send_wait(OK_HEAD + b"Bad Name: x\r\nContent-Length: 2\r\n\r\n{}"), P, 502),
    Case("header_without_colon", send_wait(OK_HEAD + b"no colon here\r\nContent-Length: 2\r\n\r\n{}"), P, 502),
    Case("bare_lf_line_endings", bare_lf, "own", 200),
    Case("interim_answers_then_the_answer", interim_then_answer, "own", 200),
    Case("close_mid_headers", send(b"HTTP/1.1 200 OK\r\nContent-Le"), P, 502),
    Case("close_without_answering", close_at_once, P, 502),
    Case("reset_mid_body", reset_mid_body, P, 502),
    Case("no_answer_at_all", hang, T, 504),
    Case("answer_before_the_request_is_read", close_at_once, "any", 200, on_accept=forged_on_accept, settle=0.2),
    Case("transfer_encoding_chunked_and_content_length",
         send_wait(OK_HEAD + b"Transfer-Encoding: chunked\r\nContent-Length: 7\r\n\r\n2\r\n{}\r\n0\r\n\r\n"),
         P, 502),
    Case("transfer_encoding_gzip_only", send_wait(OK_HEAD + b"Transfer-Encoding: gzip\r\n\r\n{}"), P, 502),
    Case("transfer_encoding_gzip_chunked",
         send_wait(OK_HEAD + b"Transfer-Encoding: gzip, chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"), P, 502),
    Case("no_content_204_followed_by_bytes", send(b"HTTP/1.1 204 No Content\r\n\r\n" + FORGED_ANSWER,
                                                   close=False), "any", 204),
]
IDS = [case.name for case in CASES]


def test_enough_distinct_misbehaviours():
    assert len(set(IDS)) == len(IDS) >= 25


# ---- helpers ----------------------------------------------------------------------------------------

def call_body(tag: str) -> bytes:
    return json.dumps({"instances": [1.0], "id": f"{tag}-{uuid.uuid4().hex}"}).encode()


def direct_pool(server: MaliciousServer, **kw) -> UpstreamPool:
    return UpstreamPool("127.0.0.1", server.port, connect_timeout=1.0, call_timeout=kw.pop("call_timeout", DEADLINE),
                        max_response=kw.pop("max_response", LIMIT), **kw)


def pool_call(pool: UpstreamPool, body: bytes):
    return pool.request("POST", PATH, headers={"Content-Type": "application/json"}, body=body)


def fd_count(*, sockets_only: bool = False) -> int:
    if not sockets_only:
        return len(os.listdir("/proc/self/fd"))
    return sum(target.startswith("socket:") for target in fd_targets())


def fd_targets() -> list[str]:
    """What this process's descriptors point at (for failure messages)."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            out.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass
    return sorted(out)


def sockets_to(port: int) -> tuple[int, int]:
    """(client-side, server-side) TCP sockets of this process to/at `port`, not counting the listener."""
    client = server = 0
    for conn in psutil.Process().net_connections(kind="tcp"):
        if conn.raddr and conn.raddr.port == port:
            client += 1
        elif conn.laddr and conn.laddr.port == port and conn.raddr:
            server += 1
    return client, server


def settle(check: Callable[[], bool], timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return check()


class RssPeak:
    """Sample this process's RSS every 2 ms; `growth` is the peak above the start."""

    def __enter__(self) -> "RssPeak":
        self.proc = psutil.Process()
        self.start = self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)

    @property
    def growth(self) -> int:
        return self.peak - self.start


# ---- (a) (c) (d) through the pool directly -------------------------------------------------------------

@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_pool_directly(case: Case):
    fds_before = fd_count()
    server = MaliciousServer()
    pool = direct_pool(server)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)
            warm = call_body("warm")
            assert pool_call(pool, warm).body == warm          # a pooled, reused connection from here on
            server.case = case
            body = call_body(case.name)
            tracing = case.huge
            if tracing:
                tracemalloc.start()
            started = time.monotonic()
            try:
                with RssPeak() if case.huge else contextlib.nullcontext() as rss:
                    if isinstance(case.direct, str):
                        got = pool_call(pool, body)
                        assert got.status == case.status
                        if case.direct == "own":
                            assert got.body == body
                    else:
                        with pytest.raises(case.direct) as failure:
                            pool_call(pool, body)
                        assert type(failure.value) is case.direct     # never a subclass surprise or raw h11 error
                        assert failure.value.__cause__ is None or isinstance(failure.value.__cause__, OSError)
                peak = tracemalloc.get_traced_memory()[1] if tracing else 0
            finally:
                if tracing:
                    tracemalloc.stop()
            elapsed = time.monotonic() - started
            server.case = None
            assert elapsed < DEADLINE + 0.5, f"the call took {elapsed:.2f} s"
            if case.direct is UpstreamTimeout:             # the deadline covers the whole call, no less
                assert elapsed >= DEADLINE - 0.05, f"gave up after {elapsed:.2f} s"
            if case.huge:
                assert peak < 2 * LIMIT, f"traced peak {peak} bytes for a {LIMIT}-byte limit"
                assert rss.growth < 2 * LIMIT + (8 << 20), f"RSS grew {rss.growth} bytes"
            time.sleep(case.settle)
            for i in range(HONEST_CALLS):
                mine = call_body(f"honest-{i}")
                got = pool_call(pool, mine)
                assert (got.status, got.body) == (200, mine), f"call {i} got someone else's answer"
            # one idle connection is all that is left open towards the server, on both sides
            assert settle(lambda: sockets_to(server.port) == (len(pool._idle), len(pool._idle)) == (1, 1)), \
                sockets_to(server.port)
        pool.close()
    finally:
        server.close()
    gc.collect()
    assert settle(lambda: fd_count() <= fds_before), (fd_count(), fds_before)
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)], [str(w.message) for w in caught]


# ---- (b) (c) (d) through the real front-end -------------------------------------------------------------

class MaliciousCluster(Cluster):
    """One ready node serving MODEL at `endpoint` (the malicious server); read-only."""

    def __init__(self, *, endpoint: str):
        self._node = Node(name="node-m", address=endpoint.rpartition(":")[0], ready=True, memory_total=10_000_000,
                          memory_used=0, cpu_capacity=4.0, cpu_usage=0.1, labels={"node-class": "small"})
        self._deployment = Deployment(model=MODEL, node="node-m", endpoint=endpoint, ready=True, created=time.time())

    def nodes(self) -> list[Node]:
        return [self._node]

    def deployments(self) -> list[Deployment]:
        return [self._deployment]

    def deploy(self, model: str, node: str, *, wait: bool = True, timeout: float = 60.0) -> Deployment:
        raise ClusterError("read-only test cluster")

    def remove(self, model: str, node: str) -> None:
        raise ClusterError("read-only test cluster")


@dataclass
class FrontendRig:
    server: MaliciousServer
    frontend: ServerThread
    session: requests.Session

    @property
    def url(self) -> str:
        return f"{self.frontend.url}/services/{MODEL}{PATH}"

    def post(self, body: bytes) -> requests.Response:
        return self.session.post(self.url, data=body, headers={"Content-Type": "application/json"}, timeout=10)

    def pool(self) -> UpstreamPool:
        return self.frontend.app.extensions["frontend"].pool(self.server.endpoint)


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    server = MaliciousServer()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("frontend.upstream.MAX_RESPONSE", FE_LIMIT)
        app = create_app({"cluster": f"{__name__}:MaliciousCluster", "cluster_settings": {"endpoint": server.endpoint},
                          "database": str(tmp_path_factory.mktemp("malicious") / "frontend.db"),
                          "refresh_interval": 0.2, "call_timeout": DEADLINE, "bad_endpoint_seconds": 0.0,
                          "log_level": "CRITICAL"})
        frontend = ServerThread(app).start()
        session = requests.Session()
        rig = FrontendRig(server, frontend, session)
        try:
            probe = call_body("probe")
            assert settle(lambda: rig.post(probe).status_code == 200, timeout=15), "front-end never served"
            yield rig
        finally:
            session.close()
            frontend.stop()
            server.close()


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_through_the_frontend(rig: FrontendRig, case: Case):
    warm = call_body("warm")
    assert rig.post(warm).content == warm
    gc.collect()
    fds_before = fd_count(sockets_only=True)      # the front-end's own SQLite files come and go with threads
    rig.server.case = case
    body = call_body(case.name)
    started = time.monotonic()
    with RssPeak() if case.huge else contextlib.nullcontext() as rss:
        got = rig.post(body)
    elapsed = time.monotonic() - started
    rig.server.case = None
    assert got.status_code == case.status, got.text[:300]
    if case.status in (502, 504):
        error = got.json()["error"]
        assert got.headers["Content-Type"].startswith("application/json") and error
        if case.status == 504:
            assert f"did not answer within the {DEADLINE:g} s call deadline" in error
    elif case.direct == "own":
        assert got.content == body
    assert elapsed < DEADLINE + 1.0, f"the call took {elapsed:.2f} s"
    if case.huge:
        assert rss.growth < 2 * FE_LIMIT + (8 << 20), f"RSS grew {rss.growth} bytes"
    time.sleep(case.settle)
    for i in range(HONEST_CALLS):
        mine = call_body(f"honest-{i}")
        answer_ = rig.post(mine)
        assert (answer_.status_code, answer_.content) == (200, mine), f"call {i} got someone else's answer"
    pool = rig.pool()
    assert settle(lambda: sockets_to(rig.server.port) == (len(pool._idle), len(pool._idle)) == (1, 1)), \
        sockets_to(rig.server.port)
    gc.collect()
    assert settle(lambda: fd_count(sockets_only=True) <= fds_before), (fd_count(sockets_only=True), fds_before,
                                                                      fd_targets())


# ---- under gevent -------------------------------------------------------------------------------------

GEVENT_SCRIPT = r"""
from gevent import monkey
monkey.patch_all()
import json, sys, time
sys.path[:0] = [sys.argv[1], sys.argv[2]]
import gevent
import test_upstream_malicious as m
from frontend.upstream import UpstreamProtocolError, UpstreamTimeout

out = {"patched": monkey.is_module_patched("socket")}
bad, good = m.MaliciousServer(), m.MaliciousServer()
bad_pool, good_pool = m.direct_pool(bad), m.direct_pool(good)
cases = {case.name: case for case in m.CASES}

def honest(pool, n, tag):
    wrong = 0
    for i in range(n):
        body = m.call_body(f"{tag}-{i}")
        got = m.pool_call(pool, body)
        wrong += (got.status, got.body) != (200, body)
    return wrong

# a greenlet stuck on a dripping server: the deadline holds and other greenlets keep going
honest(bad_pool, 1, "warm")
bad.case = cases["drip_status_line_past_the_deadline"]
def dripped():
    started = time.monotonic()
    try:
        m.pool_call(bad_pool, m.call_body("drip"))
        return ["answered", time.monotonic() - started]
    except Exception as exc:
        return [type(exc).__name__, time.monotonic() - started]
stuck = gevent.spawn(dripped)
gevent.sleep(0.05)
started = time.monotonic()
workers = [gevent.spawn(honest, good_pool, 25, f"g{w}") for w in range(8)]
gevent.joinall(workers)
out["concurrent_wrong"] = sum(w.value for w in workers)
out["concurrent_seconds"] = time.monotonic() - started
out["concurrent_stuck_running"] = not stuck.ready()
stuck.join()
out["drip"] = stuck.value
bad.case = None

for name in ("surplus_after_content_length", "surplus_after_content_length_50ms_later", "endless_100_continue",
             "chunk_size_plus", "close_without_answering", "no_answer_at_all", "huge_body_chunked",
             "answer_before_the_request_is_read"):
    case = cases[name]
    bad.case = case
    try:
        m.pool_call(bad_pool, m.call_body(name))
        result = "answered"
    except Exception as exc:
        result = type(exc).__name__
    bad.case = None
    gevent.sleep(case.settle)
    out[name] = [result, honest(bad_pool, 50, name)]
bad_pool.close(); good_pool.close(); bad.close(); good.close()
print("RESULT " + json.dumps(out))
"""


def test_under_gevent_monkey_patching():
    done = subprocess.run([sys.executable, "-c", GEVENT_SCRIPT, str(Path(__file__).parent), str(REPO)],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT "):])
    assert out["patched"]
    assert out["concurrent_wrong"] == 0
    assert out["concurrent_stuck_running"] and out["concurrent_seconds"] < DEADLINE, out
    assert out["drip"][0] == "UpstreamTimeout" and DEADLINE - 0.05 <= out["drip"][1] < DEADLINE + 0.5, out
    expected = {"surplus_after_content_length": "answered", "surplus_after_content_length_50ms_later": "answered",
                "endless_100_continue": "UpstreamProtocolError", "chunk_size_plus": "UpstreamProtocolError",
                "close_without_answering": "UpstreamProtocolError", "no_answer_at_all": "UpstreamTimeout",
                "huge_body_chunked": "UpstreamProtocolError", "answer_before_the_request_is_read": "answered"}
    for name, result in expected.items():
        assert out[name] == [result, 0], (name, out[name])
