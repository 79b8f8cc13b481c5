"""Property tests of the request path: what a backend receives through lbcore
equals what the client sent (minus hop-by-hop, plus lbcore's own headers), for
arbitrary well-formed requests; and malformed variants never reach a backend."""

from __future__ import annotations

import socket
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.reference.http1 import serialize
from tests.support.inproc import (
    LoopThread,
    ReferenceBackend,
    exchange,
    start_backend,
    start_proxy,
)


class Recorder(ReferenceBackend):
    """Records every request it reads."""

    seen: list

    def answer(self, req):
        self.seen.append(req)
        return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@pytest.fixture(scope="module")
def proxy():
    """lbcore's data plane and a recording backend on a loop in a thread."""
    seen: list = []
    lt = LoopThread()

    async def start():
        _, bport = await start_backend(type("Rec", (Recorder,), {"seen": seen}))
        _, port, _ = await start_proxy([(bport, 1)])
        return port

    yield lt.call(start()), seen
    lt.stop()


token = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_",
                min_size=1, max_size=12).map(str.encode)
value = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7e),
                max_size=40).map(lambda s: s.encode())
RESERVED = {b"host", b"content-length", b"transfer-encoding", b"connection", b"keep-alive",
            b"te", b"x-forwarded-for", b"x-real-ip", b"upgrade", b"expect", b"cookie"}
header = st.tuples(token, value).filter(lambda h: h[0].lower() not in RESERVED)
FIXTURE_OK = [HealthCheck.function_scoped_fixture]
target = st.lists(token, max_size=4).map(lambda parts: b"/" + b"/".join(parts))


@settings(max_examples=120, deadline=None, suppress_health_check=FIXTURE_OK)
@given(method=st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS"]),
       target=target, headers=st.lists(header, max_size=8),
       body=st.binary(max_size=3000), chunked=st.booleans(),
       sizes=st.lists(st.integers(1, 700), max_size=6))
def test_forwarded_request_equals_sent(proxy, method, target, headers, body, chunked, sizes):
    port, seen = proxy
    seen.clear()
    if method in (b"GET", b"DELETE", b"OPTIONS") and not chunked:
        body = b""
    raw = serialize(method, target, [(b"Host", b"example.test")] + headers, body, chunked, sizes)
    out = exchange(port, raw)
    assert out.startswith(b"HTTP/1.1 200"), out[:200]
    assert len(seen) == 1
    got = seen[0]
    assert (got.method, got.target, got.version) == (method, target, b"HTTP/1.1")
    assert got.body == body
    forwarded = [(n, v) for n, v in got.headers
                 if n.lower() not in (b"x-forwarded-for", b"x-real-ip", b"x-forwarded-proto",
                                      b"x-forwarded-host", b"content-length",
                                      b"transfer-encoding")]
    assert forwarded == [(b"Host", b"example.test")] + headers
    assert got.header(b"x-forwarded-for") == [b"127.0.0.1"]


@settings(max_examples=60, deadline=None, suppress_health_check=FIXTURE_OK)
@given(headers=st.lists(header, min_size=1, max_size=6),
       cuts=st.lists(st.integers(1, 400), min_size=1, max_size=8))
def test_request_cut_anywhere_forwards_the_same(proxy, headers, cuts):
    """The parser keeps a field's part when a read ends inside its name or
    value (it points into the read until then): the request sent in pieces,
    each its own read, reaches the member as sent."""
    port, seen = proxy
    seen.clear()
    raw = serialize(b"POST", b"/cut", [(b"Host", b"example.test")] + headers, b"0123456789",
                    False, [])
    bounds = sorted({c % len(raw) for c in cuts} - {0})
    pieces = [raw[a:b] for a, b in zip([0] + bounds, bounds + [len(raw)], strict=True)]
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for piece in pieces:
            s.sendall(piece)
            time.sleep(0.003)
        out = s.recv(65536)
    assert out.startswith(b"HTTP/1.1 200"), out[:200]
    got = seen[0]
    assert got.body == b"0123456789"
    forwarded = [(n, v) for n, v in got.headers
                 if n.lower() not in (b"x-forwarded-for", b"x-real-ip", b"x-forwarded-proto",
                                      b"x-forwarded-host", b"content-length")]
    assert forwarded == [(b"Host", b"example.test")] + headers


GOOD = b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"
MUTATIONS = [
    lambda r: r.replace(b"Host: h", b"Host: h\rX: y"),             # bare CR
    lambda r: r.replace(b"Host: h", b"Host: h\nX: y"),              # bare LF
    lambda r: r.replace(b"Host: h", b"Host: h\x00"),                # NUL
    lambda r: r.replace(b"Host: h\r\n", b"Host: h\r\n folded\r\n"),  # obs-fold
    lambda r: r.replace(b"Content-Length:", b"Content-Length :"),   # space before colon
    lambda r: r.replace(b"Content-Length: 5", b"Content-Length: 5\r\nContent-Length: 6"),
    lambda r: r.replace(b"Content-Length: 5", b"Content-Length: 5\r\nTransfer-Encoding: chunked"),
    lambda r: r.replace(b"Content-Length: 5", b"Content-Length: +5"),
    lambda r: r.replace(b"Content-Length: 5", b"Transfer-Encoding: gzip, chunked"),
    lambda r: r.replace(b"POST /p", b"PO ST /p"),
    lambda r: r.replace(b"/p HTTP", b"/p q HTTP"),
    lambda r: r.replace(b"HTTP/1.1", b"HTTP/1.1x"),
]


@settings(max_examples=60, deadline=None, suppress_health_check=FIXTURE_OK)
@given(st.sampled_from(range(len(MUTATIONS))))
def test_malformed_never_reaches_backend(proxy, which):
    port, seen = proxy
    seen.clear()
    out = exchange(port, MUTATIONS[which](GOOD))
    assert out == b"" or out[9:10] in (b"4", b"5"), out[:100]
    assert seen == [], MUTATIONS[which](GOOD)
