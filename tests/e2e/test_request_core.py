"""The request core's remaining promises, end to end: HTTP/2 request
trailers (forwarded as chunked trailers, dropped when the body has a
Content-Length), a client that half-closes mid-body ends its exchange at
once, and the live-object counters of the worker return to zero after mixed
traffic (the leak check, as uvloop's debug counters do)."""

from __future__ import annotations

import socket
import ssl
import time

import httpx
import pytest
from hyperframe.frame import DataFrame, HeadersFrame

from tests.e2e.test_metrics import scrape
from tests.support.h2raw import H2Raw, encode, request_headers
from tests.support.lbproc import LbProcess, free_port, wait_port
from tests.support.live import live_objects
from tests.support.live import wait_live_zero as wait_all_zero
from tests.support.recorder import Recorder, start_recording_backend


@pytest.fixture
def site(tmp_path, ca, loop_thread):
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "server.crt"))
    for extra in cert.cert_chain_pems[1:]:
        with open(tmp_path / "server.crt", "ab") as f:
            f.write(extra.bytes())
    cert.private_key_pem.write_to_path(str(tmp_path / "server.key"))
    recorder = Recorder()
    server, backend = loop_thread.call(start_recording_backend(recorder))
    port, admin = free_port(), free_port()
    (tmp_path / "lb.yaml").write_text(f"""\
load_balancer: {{workers: 1, admin: {{port: {admin}}}, access_log: {{path: "off"}}}}
certificates:
  site: {{type: server, certificate: {tmp_path / 'server.crt'},
         private_key: {tmp_path / 'server.key'}}}
listeners:
  - {{name: web, protocol: HTTPS, address: 127.0.0.1, port: {port}, http2: true,
     server_certificate: site, default_pool: p, request_timeout: 3}}
pools:
  p:
    health_check: {{enabled: false}}
    members: [{{address: 127.0.0.1, port: {backend}}}]
""")
    lb = LbProcess(["run", "-c", str(tmp_path / "lb.yaml")])
    try:
        wait_port(port, lb.proc)
        wait_port(admin, lb.proc)
        yield {"port": port, "admin": admin, "recorder": recorder, "ca": ca}
    finally:
        lb.stop()
        loop_thread.loop.call_soon_threadsafe(server.close)


TIMEOUT_REQUEST = ("lbcore_timeouts_total", (("kind", "request"), ("listener", "web")))


def h2ctx(site) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    site["ca"].configure_trust(ctx)
    ctx.set_alpn_protocols(["h2"])
    return ctx


def live(admin: int) -> dict:
    (worker,) = live_objects(admin)
    return worker


def wait_live_zero(admin: int, timeout: float = 5.0) -> dict:
    (worker,) = wait_all_zero(admin, timeout)
    return worker


def post_with_trailers(site, extra=(), body=b"hello"):
    c = H2Raw(site["port"], h2ctx(site))
    try:
        c.send(HeadersFrame(1, data=encode(request_headers("/up", "POST", extra)),
                            flags=["END_HEADERS"]).serialize())
        c.send(DataFrame(1, data=body).serialize())
        c.send(HeadersFrame(1, data=encode([("x-checksum", "abc"),
                                             ("x-forwarded-for", "6.6.6.6")]),
                            flags=["END_HEADERS", "END_STREAM"]).serialize())
        c.io(time.monotonic() + 5, until=lambda: c.stream(1).done)
        return c.stream(1)
    finally:
        c.close()


def test_h2_trailers_forwarded_as_chunked_trailers(site):
    mark = site["recorder"].snapshot()
    st = post_with_trailers(site)
    assert st.status == 200 and st.ended
    (got,), _ = site["recorder"].since(mark)
    assert got.framing == "chunked" and got.body == b"hello"
    # The trailer section carries the client's field; fields lbcore owns
    # (or that frame or route the request) never pass.
    assert got.raw_body.endswith(b"0\r\nx-checksum: abc\r\n\r\n")
    assert b"6.6.6.6" not in got.raw_body


def test_h2_trailers_dropped_when_the_body_has_a_length(site):
    mark = site["recorder"].snapshot()
    st = post_with_trailers(site, extra=[("content-length", "5")])
    assert st.status == 200
    (got,), _ = site["recorder"].since(mark)
    assert got.framing == "content-length" and got.body == b"hello"
    assert b"x-checksum" not in got.head + got.raw_body


def test_half_close_mid_body_ends_the_exchange_at_once(site):
    raw = socket.create_connection(("127.0.0.1", site["port"]), 5)
    ctx = ssl.create_default_context()
    site["ca"].configure_trust(ctx)
    with ctx.wrap_socket(raw, server_hostname="localhost") as s:
        s.sendall(b"POST /slow-upload HTTP/1.1\r\nHost: localhost\r\n"
                  b"Content-Length: 100000\r\n\r\n" + b"x" * 10)
        deadline = time.monotonic() + 5
        while live(site["admin"])["exchanges"] == 0:
            assert time.monotonic() < deadline, "the exchange never started"
            time.sleep(0.02)
        # A TLS close_notify, then FIN: the body can never be completed.
        s.unwrap()
        t0 = time.monotonic()
        wait_live_zero(site["admin"], timeout=3)
        # request_timeout is 3 s: freed by the half-close, not by a timer.
        assert time.monotonic() - t0 < 1


def test_live_objects_return_to_zero_after_mixed_traffic(site):
    base = f"https://localhost:{site['port']}"
    ctx = ssl.create_default_context()
    site["ca"].configure_trust(ctx)
    with httpx.Client(verify=ctx, http2=True) as h2, httpx.Client(verify=ctx) as h1:
        for i in range(20):
            assert h2.get(f"{base}/a{i}").status_code == 200
            assert h1.post(f"{base}/b{i}", content=b"y" * 1000).status_code == 200
        assert h1.get(f"{base}/" + "x" * 9000).status_code == 414
    # Streams reset by the client, mid-request.
    c = H2Raw(site["port"], h2ctx(site))
    for sid in range(1, 40, 2):
        c.send(HeadersFrame(sid, data=encode(request_headers("/r", "POST")),
                            flags=["END_HEADERS"]).serialize())
    c.io(time.monotonic() + 1)
    c.close()
    # A malformed HTTP/2 request and an abandoned HTTP/1.1 head.
    c = H2Raw(site["port"], h2ctx(site))
    c.send(HeadersFrame(1, data=encode(request_headers("no-slash")),
                        flags=["END_HEADERS", "END_STREAM"]).serialize())
    c.io(time.monotonic() + 2, until=lambda: c.stream(1).done)
    assert c.stream(1).reset == 0x1
    c.close()
    with socket.create_connection(("127.0.0.1", site["port"]), 5) as raw:
        ctx = ssl.create_default_context()
        site["ca"].configure_trust(ctx)
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: loc")
    left = wait_live_zero(site["admin"])
    assert left["member_connections"] <= 64


@pytest.mark.parametrize("what", ["head", "body"])
def test_h2_request_timeout_resets_a_stalled_stream(site, what):
    """A header block never finished, or a body that stops: reset after
    request_timeout (3 s here), counted as HTTP/1.1 counts its 408."""
    before = scrape(site["admin"]).get(TIMEOUT_REQUEST, 0)
    c = H2Raw(site["port"], h2ctx(site))
    try:
        flags = [] if what == "head" else ["END_HEADERS"]
        c.send(HeadersFrame(1, data=encode(request_headers("/stall", "POST")),
                            flags=flags).serialize())
        t0 = time.monotonic()
        c.io(t0 + 8, until=lambda: c.stream(1).done or c.closed)
        assert c.stream(1).reset == 0x8, c.stream(1)            # CANCEL
        assert 2.5 < time.monotonic() - t0 < 5
    finally:
        c.close()
    assert scrape(site["admin"])[TIMEOUT_REQUEST] == before + 1
    wait_live_zero(site["admin"])
