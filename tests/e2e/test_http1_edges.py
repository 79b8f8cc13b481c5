"""The last HTTP/1.1 edge cases of the request core, end to end against a
backend that records the exact bytes it gets:
- Connection tokens naming fields lbcore frames, routes or owns are ignored
  (nginx ignores every token; HAProxy drops only hop-by-hop ones): a client
  can't strip Host or Content-Length, or a header lbcore sets;
- HTTP/0.9-style request lines are refused (400) however the bytes arrive;
- an Upgrade request with a body is refused (400): what is body and what is
  tunnel would be the member's guess;
- an HTTP/1.0 request without Host is forwarded (as HTTP/1.1, which needs
  one) with the listener address the client reached as its Host."""

from __future__ import annotations

import socket
import time

import pytest

from tests.support.inproc import exchange
from tests.support.lbproc import LbProcess, free_port, wait_port
from tests.support.recorder import Recorder, start_recording_backend


@pytest.fixture
def site(tmp_path, loop_thread):
    recorder = Recorder()
    server, backend = loop_thread.call(start_recording_backend(recorder))
    port, admin = free_port(), free_port()
    (tmp_path / "lb.yaml").write_text(f"""\
load_balancer: {{workers: 1, admin: {{port: {admin}}}, access_log: {{path: "off"}}}}
listeners:
  - {{name: web, protocol: HTTP, address: 127.0.0.1, port: {port}, default_pool: p}}
pools:
  p:
    health_check: {{enabled: false}}
    members: [{{address: 127.0.0.1, port: {backend}}}]
""")
    lb = LbProcess(["run", "-c", str(tmp_path / "lb.yaml")])
    try:
        wait_port(port, lb.proc)
        yield port, recorder
    finally:
        lb.stop()
        loop_thread.loop.call_soon_threadsafe(server.close)


def test_connection_tokens_cannot_strip_what_lbcore_needs(site):
    port, rec = site
    mark = rec.snapshot()
    out = exchange(port, b"POST /up HTTP/1.1\r\nHost: a.example\r\nContent-Length: 5\r\n"
                         b"Connection: host, content-length, x-real-ip, x-forwarded-for,"
                         b" x-secret\r\nX-Secret: hop\r\n\r\nhello")
    assert out.startswith(b"HTTP/1.1 200")
    (got,), _ = rec.since(mark)
    names = [n.lower() for n, _ in got.headers]
    assert (b"host", b"a.example") in [(n.lower(), v) for n, v in got.headers]
    assert b"content-length" in names and got.body == b"hello"
    assert b"x-secret" not in names                     # a real hop-by-hop token still works
    assert (b"x-real-ip", b"127.0.0.1") in [(n.lower(), v) for n, v in got.headers]


@pytest.mark.parametrize("split", [False, True])
def test_http09_style_request_line_is_refused(site, split):
    port, rec = site
    mark = rec.snapshot()
    parts = [b"GET /a\r\n", b"Host: a.example\r\n\r\n"] if split else [
        b"GET /a\r\nHost: a.example\r\n\r\n"]
    with socket.create_connection(("127.0.0.1", port), 5) as s:
        for p in parts:
            s.sendall(p)
            time.sleep(0.05)
        s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    assert out.startswith(b"HTTP/1.1 400"), out
    time.sleep(0.1)
    assert rec.since(mark)[0] == []


def test_upgrade_with_a_body_is_refused(site):
    port, rec = site
    mark = rec.snapshot()
    out = exchange(port, b"GET /ws HTTP/1.1\r\nHost: a.example\r\nConnection: upgrade\r\n"
                         b"Upgrade: websocket\r\nContent-Length: 5\r\n\r\nhello")
    assert out.startswith(b"HTTP/1.1 400"), out
    time.sleep(0.1)
    assert rec.since(mark)[0] == []


def test_http10_without_host_gets_the_listener_address_as_host(site):
    port, rec = site
    mark = rec.snapshot()
    out = exchange(port, b"GET /old HTTP/1.0\r\nUser-Agent: old/1\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200")
    (got,), _ = rec.since(mark)
    assert got.request_line == b"GET /old HTTP/1.1"
    fields = [(n.lower(), v) for n, v in got.headers]
    assert (b"host", b"127.0.0.1:%d" % port) in fields
    assert (b"x-forwarded-host", b"127.0.0.1:%d" % port) in fields
