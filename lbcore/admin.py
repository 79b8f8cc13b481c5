"""The admin endpoint (loopback by default): /metrics, /healthz, /readyz,
/status. Plain asyncio: a handful of requests a minute, never the data path."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, generate_latest

log = logging.getLogger("lbcore.admin")


class Admin:
    """`collector` feeds /metrics; `status()` gives the body of /status."""

    def __init__(self, admin_cfg, collector, status: Callable[[], dict]) -> None:
        self.address, self.port = admin_cfg.address, admin_cfg.port
        self.registry = CollectorRegistry()
        self.registry.register(collector)
        self.status_of = status
        self.ready = False
        self.started = time.time()
        self.server: asyncio.AbstractServer | None = None

    def bind(self) -> socket.socket:
        """The listening socket, made before anything else starts: an admin
        endpoint that can't bind is a start-up failure (exit 1), never a
        proxy silently running without /metrics, /healthz and /readyz."""
        family = socket.AF_INET6 if ":" in self.address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.address, self.port))
            sock.listen(128)
        except OSError as exc:
            sock.close()
            raise OSError(f"admin endpoint {self.address}:{self.port} cannot listen: "
                          f"{exc.strerror or exc}") from exc
        return sock

    async def start(self, sock: socket.socket | None = None) -> None:
        self.server = await asyncio.start_server(self._handle, sock=sock or self.bind())
        log.info("admin endpoint on %s:%d", self.address, self.port)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()

    def status(self) -> dict:
        return {"pid": os.getpid(), "ready": self.ready, "started_at": self.started,
                **self.status_of()}

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass
            parts = line.split()
            path = parts[1].decode("latin-1").split("?")[0] if len(parts) > 1 else "/"
            code, ctype, body = 404, "text/plain", b"not found\n"
            if path == "/metrics":
                code, ctype, body = 200, "text/plain; version=0.0.4", generate_latest(
                    self.registry)
            elif path == "/healthz":
                code, body = 200, b"ok\n"
            elif path == "/readyz":
                code, body = (200, b"ready\n") if self.ready else (503, b"not ready\n")
            elif path == "/status":
                code, ctype = 200, "application/json"
                body = json.dumps(self.status(), indent=2).encode() + b"\n"
            writer.write(b"HTTP/1.1 %d X\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
                         b"Connection: close\r\n\r\n%s" % (code, ctype.encode(), len(body), body))
            await writer.drain()
        except (asyncio.TimeoutError, OSError):
            pass
        finally:
            writer.close()
