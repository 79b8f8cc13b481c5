"""The site bench/locustfile.py walks, in Python: what `python -m
bench.locust_target` puts behind lbcore when no nginx is wanted (the
default), so the kit needs nothing outside the venv.

    GET  /                  200 small HTML
    *    /api/...           200 small JSON (a POST body is read and dropped)
    GET  /static/<file>     200 the file (1 KiB to 1 MiB, random bytes)
    *    anything else      404

Every response names the backend in X-Backend, so the locustfile can tell
whether a user stayed on one. HTTP/1.1 keep-alive, Content-Length and
chunked request bodies, `Connection: close` honoured: what lbcore sends.
"""

from __future__ import annotations

import asyncio
import os

# Static files (path under /static/ -> size), as the locustfile requests them.
STATIC = {"1k.txt": 1 << 10, "app-16k.css": 16 << 10, "app-256k.js": 256 << 10,
          "photo-1m.jpg": 1 << 20}


class BadRequest(Exception):
    pass


async def _read_body(reader: asyncio.StreamReader, headers: dict[bytes, bytes]) -> None:
    if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass                    # trailers
                return
            await reader.readexactly(size + 2)
    length = headers.get(b"content-length")
    if length is not None:
        await reader.readexactly(int(length))


def _respond(name: bytes, method: bytes, path: bytes, files: dict[bytes, bytes]
             ) -> tuple[int, bytes, bytes]:
    path = path.split(b"?", 1)[0]
    if path == b"/":
        return 200, b"text/html", b"<h1>home (" + name + b")</h1>\n"
    if path.startswith(b"/api/"):
        return 200, b"application/json", b'{"ok": true, "backend": "' + name + b'"}\n'
    if path.startswith(b"/static/") and path[8:] in files and method in (b"GET", b"HEAD"):
        return 200, b"application/octet-stream", files[path[8:]]
    return 404, b"text/plain", b"not found\n"


def handler(name: str, files: dict[bytes, bytes]):
    bname = name.encode()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.split(b"\r\n")
                method, path, _ = lines[0].split(b" ", 2)
                headers = {}
                for line in lines[1:]:
                    if line:
                        key, _, value = line.partition(b":")
                        headers[key.strip().lower()] = value.strip()
                await _read_body(reader, headers)
                status, ctype, body = _respond(bname, method, path, files)
                close = headers.get(b"connection", b"").lower() == b"close"
                writer.write(b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
                             b"X-Backend: %s\r\n%s\r\n" % (
                                 status, b"OK" if status == 200 else b"Not Found", ctype,
                                 len(body), bname, b"Connection: close\r\n" if close else b""))
                if method != b"HEAD":
                    writer.write(body)
                await writer.drain()
                if close:
                    return
        except (ValueError, asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()

    return serve


async def start(names_ports: list[tuple[str, int]], host: str = "127.0.0.1"
                ) -> list[asyncio.base_events.Server]:
    """One origin server per (name, port); port 0 picks a free one (read it
    from server.sockets[0])."""
    files = {k.encode(): os.urandom(size) for k, size in STATIC.items()}
    return [await asyncio.start_server(handler(name, files), host, port)
            for name, port in names_ports]
