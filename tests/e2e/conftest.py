"""Fixtures for end-to-end tests: certificates made here, echo backends on
loopback, and the real lbcore process."""

from __future__ import annotations

import json

import pytest
import trustme

from tests.support.inproc import LoopThread, ReferenceBackend, start_backend


class Echo(ReferenceBackend):
    """Answers every request with JSON: its name, method, path, the headers
    exactly as received (order and case) and the body length."""

    name = "a"

    def answer(self, req):
        out = json.dumps({
            "name": self.name, "method": req.method.decode(), "path": req.target.decode(),
            "headers": [(n.decode(), v.decode()) for n, v in req.headers],
            "body_len": len(req.body)}).encode()
        return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(out), out))


@pytest.fixture(scope="session")
def loop_thread():
    lt = LoopThread()
    yield lt
    lt.stop()


@pytest.fixture
def backends(loop_thread):
    """backends(n) -> list of ports of echo backends named a, b, c..."""
    servers = []

    def make(n: int = 1) -> list[int]:
        ports = []
        for i in range(n):
            cls = type("E", (Echo,), {"name": "abcdefgh"[i]})
            server, port = loop_thread.call(start_backend(cls))
            servers.append(server)
            ports.append(port)
        return ports

    yield make
    for s in servers:
        loop_thread.loop.call_soon_threadsafe(s.close)


@pytest.fixture(scope="session")
def ca():
    return trustme.CA()


@pytest.fixture
def certs(ca, tmp_path):
    """Files for an ECDSA server certificate (localhost, 127.0.0.1, *.example.test)."""
    cert = ca.issue_cert("localhost", "127.0.0.1", "example.test", "*.example.test")
    paths = {"ca": tmp_path / "ca.pem", "crt": tmp_path / "server.crt",
             "key": tmp_path / "server.key"}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    paths["crt"].write_bytes(b"".join(p.bytes() for p in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(paths["key"]))
    return paths
