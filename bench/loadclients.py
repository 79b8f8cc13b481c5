"""Load clients the harness runs pinned to the load CPU (taskset), where wrk
and h2load do not fit:

  python -m bench.loadclients handshake PORT --seconds S [--procs N]
      a new TCP connection and a FULL TLS handshake per request (no session is
      ever offered back, so nothing resumes; wrk would resume), one GET / with
      Connection: close, the whole response read, then close. N blocking
      worker processes. Prints one JSON line: handshakes, seconds, p50/p99 ms,
      resumed (must be 0), errors, the negotiated protocol and cipher.

  python -m bench.loadclients handshake PORT --resume --tls13 ...
      the same, but TLS 1.3 only, and each worker process offers the session
      (ticket) it got on its previous connection, taken after the whole
      response is read (TLS 1.3 tickets come after the handshake): every
      connection but each process's first should resume; "resumed" counts
      those that did.

  python -m bench.loadclients idle PORT --conns N
      opens N HTTPS keep-alive connections (full handshake and one GET / each,
      at most --parallel at a time) and keeps them open and idle. Prints
      "READY {json}" when they are all open, then serves commands read from
      stdin, one a line: "probe" times new-connection requests made while the
      idle ones stay open and prints a JSON line; "quit" closes everything.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import resource
import socket
import ssl
import sys
import time

REQUEST = (b"GET / HTTP/1.1\r\nHost: localhost\r\nUser-Agent: lbcore-bench\r\n"
           b"Connection: close\r\n\r\n")
KEEPALIVE_REQUEST = b"GET / HTTP/1.1\r\nHost: localhost\r\nUser-Agent: lbcore-bench\r\n\r\n"


def client_context(tls13: bool = False) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if tls13:
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    return ctx


def content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return -1


def one_request(ctx: ssl.SSLContext, port: int, request: bytes = REQUEST,
                timeout: float = 10.0, session: ssl.SSLSession | None = None
                ) -> tuple[float, bool, tuple, ssl.SSLSession | None]:
    """One new connection, a handshake (resuming `session` if given and the
    server takes it), one request; returns (seconds, session reused,
    (protocol, cipher), the connection's session after the whole response)."""
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout) as raw:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with ctx.wrap_socket(raw, server_hostname="localhost", session=session) as s:
            s.sendall(request)
            buf = b""
            while b"\r\n\r\n" not in buf:
                chunk = s.recv(65536)
                if not chunk:
                    raise ConnectionError("closed before the response head")
                buf += chunk
            head, _, body = buf.partition(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise ConnectionError(head.split(b"\r\n", 1)[0].decode())
            want = content_length(head)
            while len(body) < want:
                chunk = s.recv(65536)
                if not chunk:
                    raise ConnectionError("closed in the body")
                body += chunk
            # Only now: a TLS 1.3 server sends its tickets after the handshake.
            return (time.perf_counter() - t0, s.session_reused, (s.version(), s.cipher()[0]),
                    s.session)


def _handshake_worker(args: tuple[int, float, bool, bool]) -> dict:
    port, deadline, resume, tls13 = args
    ctx = client_context(tls13)
    lat, reused, errors, last_error, params, session = [], 0, 0, "", None, None
    while time.time() < deadline:
        try:
            dt, again, params, got = one_request(ctx, port, session=session)
        except (OSError, ValueError) as exc:
            errors += 1
            last_error = repr(exc)
            time.sleep(0.01)
            continue
        lat.append(dt)
        reused += again
        if resume and got is not None and got.has_ticket:
            session = got      # else keep offering the previous one
    return {"lat": lat, "reused": reused, "errors": errors, "last_error": last_error,
            "params": params}


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def handshake(port: int, seconds: float, procs: int, resume: bool = False,
              tls13: bool = False) -> dict:
    start = time.time()
    deadline = start + seconds
    with multiprocessing.Pool(procs) as pool:
        parts = pool.map(_handshake_worker, [(port, deadline, resume, tls13)] * procs)
    elapsed = time.time() - start
    lat = sorted(x for p in parts for x in p["lat"])
    params = next((p["params"] for p in parts if p["params"]), None)
    return {"handshakes": len(lat), "seconds": round(elapsed, 3),
            "rate": round(len(lat) / elapsed, 1),
            "p50_ms": round(percentile(lat, 0.50) * 1e3, 2),
            "p99_ms": round(percentile(lat, 0.99) * 1e3, 2),
            "resumed": sum(p["reused"] for p in parts),
            "resumed_ratio": round(sum(p["reused"] for p in parts) / max(1, len(lat)), 4),
            "errors": sum(p["errors"] for p in parts),
            "last_error": next((p["last_error"] for p in parts if p["last_error"]), ""),
            "protocol": params[0] if params else None, "cipher": params[1] if params else None}


async def _open_idle(port: int, ctx: ssl.SSLContext, sem: asyncio.Semaphore,
                     timeout: float) -> asyncio.StreamWriter:
    async with sem:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="localhost",
                                    limit=16384), timeout)
        try:
            writer.write(KEEPALIVE_REQUEST)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
            if not head.startswith(b"HTTP/1.1 200"):
                raise ConnectionError(head.split(b"\r\n", 1)[0].decode())
            n = content_length(head)
            if n > 0:
                await asyncio.wait_for(reader.readexactly(n), timeout)
        except BaseException:
            writer.close()
            raise
        return writer


async def idle(port: int, conns: int, parallel: int, probes: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    ctx = client_context()
    sem = asyncio.Semaphore(parallel)
    t0 = time.monotonic()
    results = await asyncio.gather(*(_open_idle(port, ctx, sem, 30.0) for _ in range(conns)),
                                   return_exceptions=True)
    writers = [r for r in results if isinstance(r, asyncio.StreamWriter)]
    errors = [r for r in results if not isinstance(r, asyncio.StreamWriter)]
    print("READY " + json.dumps({"ok": len(writers), "failed": len(errors),
                                 "open_seconds": round(time.monotonic() - t0, 2),
                                 "first_error": repr(errors[0]) if errors else "",
                                 "nofile": hard}), flush=True)
    loop = asyncio.get_running_loop()
    while True:
        line = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
        if line == "probe":
            # Blocking on purpose: the idle connections need nothing from the loop.
            lat, failed = [], 0
            for _ in range(probes):
                try:
                    lat.append(one_request(client_context(), port)[0] * 1e3)
                except (OSError, ValueError):
                    failed += 1
            ordered = sorted(lat)
            print(json.dumps({"first_ms": round(lat[0], 2) if lat else None,
                              "median_ms": round(percentile(ordered, 0.5), 2),
                              "max_ms": round(ordered[-1], 2) if ordered else None,
                              "probes": len(lat), "failed": failed}), flush=True)
        else:
            break
    for w in writers:
        w.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.loadclients")
    sub = p.add_subparsers(dest="cmd", required=True)
    h = sub.add_parser("handshake")
    h.add_argument("port", type=int)
    h.add_argument("--seconds", type=float, default=5)
    h.add_argument("--procs", type=int, default=8)
    h.add_argument("--resume", action="store_true",
                   help="offer each process's previous session (ticket) on its next connection")
    h.add_argument("--tls13", action="store_true", help="TLS 1.3 only")
    i = sub.add_parser("idle")
    i.add_argument("port", type=int)
    i.add_argument("--conns", type=int, default=10000)
    i.add_argument("--parallel", type=int, default=100)
    i.add_argument("--probes", type=int, default=5)
    args = p.parse_args(argv)
    if args.cmd == "handshake":
        print(json.dumps(handshake(args.port, args.seconds, args.procs, args.resume,
                                   args.tls13)), flush=True)
    else:
        coro = idle(args.port, args.conns, args.parallel, args.probes)
        try:
            import uvloop
        except ImportError:
            asyncio.run(coro)
        else:
            uvloop.run(coro)
    return 0


if __name__ == "__main__":
    sys.exit(main())
