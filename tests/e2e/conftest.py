"""Fixtures for end-to-end tests: certificates made here, echo backends on
loopback, and the real lbcore process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

import httpx
import pytest
import trustme

from tests.support.inproc import LoopThread, ReferenceBackend, start_backend
from tests.support.lbproc import LbProcess, wait_port


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


async def _slow_backend_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                                name: str) -> None:
    """GET /slow/<seconds> answers after that long; anything else at once.
    Keep-alive, so the proxy's upstream pool is exercised too."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ", 2)[1].decode()
            if path.startswith("/slow/"):
                await asyncio.sleep(float(path.rsplit("/", 1)[1]))
            body = json.dumps({"name": name, "path": path}).encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


@pytest.fixture
def slow_backends(loop_thread):
    """slow_backends(n, port=0) -> ports of backends named a, b, ...; `.stop(port)`."""
    servers: dict[int, asyncio.AbstractServer] = {}

    def make(n: int = 1, ports: list[int] | None = None) -> list[int]:
        out = []
        for i in range(n):
            name = "abcdefgh"[i]

            async def start(name=name, port=(ports[i] if ports else 0)):
                return await asyncio.start_server(
                    lambda r, w: _slow_backend_handler(r, w, name), "127.0.0.1", port)

            server = loop_thread.call(start())
            port = server.sockets[0].getsockname()[1]
            servers[port] = server
            out.append(port)
        return out

    def stop(port: int) -> None:
        server = servers.pop(port)

        async def close():
            server.close()
            await server.wait_closed()

        loop_thread.call(close())

    make.stop = stop
    yield make
    for port in list(servers):
        stop(port)


class Running:
    """`lbcore run` on a config file we can rewrite, with its admin port."""

    def __init__(self, tmp_path, text: str, admin: int, port: int) -> None:
        self.path = tmp_path / "lb.yaml"
        self.path.write_text(text)
        self.admin, self.port = admin, port
        self.lb = LbProcess(["run", "-c", str(self.path)])
        try:
            wait_port(port, self.lb.proc)
            self.wait(lambda s: s["ready"] and len(self.ready_workers(s)) == 2)
        except BaseException:
            self.lb.stop()          # a start that fails must not leave lbcore running
            raise

    @property
    def pid(self) -> int:
        return self.lb.proc.pid

    def status(self) -> dict:
        return httpx.get(f"http://127.0.0.1:{self.admin}/status", timeout=5).json()

    @staticmethod
    def ready_workers(status: dict) -> list[dict]:
        return [w for w in status["workers"] if w["state"] == "ready"]

    def wait(self, predicate, timeout: float = 15.0) -> dict:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                last = self.status()
                if predicate(last):
                    return last
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"condition not met in {timeout}s; last status: {last}")

    def reload(self, text: str | None = None) -> None:
        if text is not None:
            self.path.write_text(text)
        os.kill(self.pid, signal.SIGHUP)

    def get(self, path: str = "/", **kw) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.port}{path}", timeout=10, **kw)

    def stop(self) -> tuple[str, str]:
        return self.lb.stop()


@pytest.fixture
def running(tmp_path):
    started: list[Running] = []

    def start(text: str, admin: int, port: int) -> Running:
        r = Running(tmp_path, text, admin, port)
        started.append(r)
        return r

    yield start
    for r in started:
        r.stop()
