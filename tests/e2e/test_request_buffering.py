"""Request buffering (a pool's request_buffering, issue 13): a body up to
max_bytes is read from the client before a member is chosen, so 50 slow
uploads hold no member connection; a larger body streams on; a body too slow
for the buffering time-out gets 408; over HTTP/2 too."""

from __future__ import annotations

import socket
import ssl
import time

import httpx
import pytest

from tests.support.lbproc import LbProcess, free_port, wait_port
from tests.support.live import live_objects, wait_live_zero

SLOW = 50


@pytest.fixture
def site(tmp_path, certs, backends):
    (b,) = backends(1)
    port, admin = free_port(), free_port()
    (tmp_path / "lb.yaml").write_text(f"""\
load_balancer: {{workers: 1, admin: {{port: {admin}}}, access_log: {{path: "off"}}}}
certificates:
  site: {{type: server, certificate: {certs['crt']}, private_key: {certs['key']}}}
listeners:
  - {{name: web, protocol: HTTPS, address: 127.0.0.1, port: {port}, http2: true,
     server_certificate: site, default_pool: buffered, request_timeout: 30,
     forwarding_policies: [{{name: s, priority: 1, rules: [{{type: path, values: [/stream]}}],
                            action: {{type: forward, pool: streamed}}}}]}}
pools:
  buffered:
    health_check: {{enabled: false}}
    request_buffering: {{enabled: true, max_bytes: 65536, timeout: 2}}
    members: [{{address: 127.0.0.1, port: {b}}}]
  streamed:
    health_check: {{enabled: false}}
    members: [{{address: 127.0.0.1, port: {b}}}]
""")
    lb = LbProcess(["run", "-c", str(tmp_path / "lb.yaml")])
    try:
        wait_port(port, lb.proc)
        wait_port(admin, lb.proc)
        yield {"port": port, "admin": admin, "ca": str(certs["ca"])}
    finally:
        lb.stop()


def _tls(site) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=site["ca"])
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx.wrap_socket(socket.create_connection(("127.0.0.1", site["port"]), timeout=10),
                           server_hostname="localhost")


def _start_upload(site, path: str, length: int) -> ssl.SSLSocket:
    s = _tls(site)
    s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n"
              "Connection: close\r\n\r\n".encode() + b"a" * 10)
    return s


def _finish(s: ssl.SSLSocket, rest: int) -> bytes:
    s.sendall(b"a" * rest)
    data = b""
    with s:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return data
            data += chunk


def member_connections(site) -> int:
    return sum(w["member_connections"] - w["member_connections_idle"]
               for w in live_objects(site["admin"]))


def test_slow_uploads_hold_no_member_connection(site):
    uploads = [_start_upload(site, "/up", 1000) for _ in range(SLOW)]
    time.sleep(0.5)
    assert member_connections(site) == 0, live_objects(site["admin"])
    for s in uploads:
        s.sendall(b"a" * 100)           # slow: a little more, still not all
    time.sleep(0.3)
    assert member_connections(site) == 0
    answers = [_finish(s, 890) for s in uploads]
    for a in answers:
        assert a.startswith(b"HTTP/1.1 200") and b'"body_len": 1000' in a, a[:300]
    # Without buffering, the same slow upload holds a member connection.
    s = _start_upload(site, "/stream", 1000)
    time.sleep(0.5)
    assert member_connections(site) == 1
    assert b'"body_len": 1000' in _finish(s, 990)
    wait_live_zero(site["admin"])


def test_body_over_max_bytes_streams_on_and_slow_body_gets_408(site):
    big = 300_000                        # past max_bytes (64 KiB): streamed from there
    r = httpx.post(f"https://127.0.0.1:{site['port']}/up", content=b"b" * big,
                   verify=ssl.create_default_context(cafile=site["ca"]))
    assert r.status_code == 200 and r.json()["body_len"] == big
    s = _start_upload(site, "/up", 1000)
    t0 = time.monotonic()
    data = s.recv(4096)
    s.close()
    assert data.startswith(b"HTTP/1.1 408"), data
    assert 1.5 < time.monotonic() - t0 < 5


def test_buffered_upload_over_http2(site):
    ctx = ssl.create_default_context(cafile=site["ca"])
    with httpx.Client(http2=True, verify=ctx) as c:
        for size in (10, 60_000, 200_000):   # under, near and over max_bytes
            r = c.post(f"https://127.0.0.1:{site['port']}/up", content=b"c" * size)
            assert r.http_version == "HTTP/2"
            assert r.status_code == 200 and r.json()["body_len"] == size, size
    wait_live_zero(site["admin"])
