"""The access log (spec 11): one line per request, JSON lines (default) or the
field order of ELB's access log. The data plane only appends a tuple per
finished request to its listener's list; this writer swaps the lists out and
formats them in batches, off the request path."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import select
import stat
import sys

from lbcore_ext.logfmt import json_line

# Entries are written every 20 ms: small batches, so formatting never holds
# the loop long enough to show in p99 latency (a 250 ms batch at 70k req/s
# stalled it for ~100 ms).
FLUSH_INTERVAL = 0.02
# Bytes per write() to a regular file (appends are atomic per call there).
FILE_WRITE_LIMIT = 1 << 20


def _s(v) -> str | None:
    return v.decode("latin-1") if isinstance(v, bytes) else v


_esc = json.encoder.encode_basestring_ascii       # the C escaper json.dumps uses
_second_cache: dict[int, str] = {}


def _iso(ts: float) -> str:
    """ISO 8601 with milliseconds; the per-second part is cached, as a batch
    holds thousands of entries from the same few seconds."""
    sec = int(ts)
    base = _second_cache.get(sec)
    if base is None:
        if len(_second_cache) > 64:
            _second_cache.clear()
        base = _second_cache[sec] = dt.datetime.fromtimestamp(
            sec, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{int((ts - sec) * 1000):03d}+00:00"


def _j(v) -> str:
    if v is None:
        return "null"
    return _esc(v.decode("latin-1") if isinstance(v, bytes) else v)


def to_json(entry) -> str:
    """One JSON object per line: the readable reference for the C formatter
    the writer uses (lbcore_ext.logfmt.json_line; tests hold them equal)."""
    meta, status, seconds, tries = entry
    (ts, ip, port, method, target, version, rid, ua, referer, xff, host, listener, pool,
     tls, policy) = meta
    ups = ",".join(f'{{"address":"{h}:{p}","result":{_j(r)}}}' for h, p, r in tries or ())
    line = (f'{{"time":"{_iso(ts)}","request_id":{_j(rid)},'
            f'"client":"{_s(ip)}:{_s(port)}","method":{_j(method)},"target":{_j(target)},'
            f'"protocol":{_j(f"HTTP/{version}" if version else None)},"host":{_j(host)},'
            f'"status":{status},"duration_s":{seconds:.6f},"upstream":[{ups}],'
            f'"user_agent":{_j(ua)},"referer":{_j(referer)},"x_forwarded_for":{_j(xff)},'
            f'"listener":{_j(listener)},"pool":{_j(pool)},"policy":{_j(policy)}')
    if tls and tls[0]:
        line += f',"tls":{{"version":{_j(tls[0])},"cipher":{_j(tls[1])},"sni":{_j(tls[2])}}}'
    return line + "}"


def to_elb(entry) -> str:
    """ELB's field order: time, client, status, request line, bytes, request
    time, upstream status and address (all tries), user agent, referer, XFF,
    listener, pool, TLS protocol, cipher, SNI, request id, forwarding policy."""
    meta, status, seconds, tries = entry
    (ts, ip, port, method, target, version, rid, ua, referer, xff, host, listener, pool,
     tls, policy) = meta
    when = dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("[%d/%b/%Y:%H:%M:%S +0000]")
    request = f"{_s(method) or '-'} {_s(target) or '-'} HTTP/{version or '-'}"

    def q(v):
        return '"' + (_s(v) or "-").replace('"', '\\"') + '"'

    ups = ",".join(_s(r) for _, _, r in tries or ()) or "-"
    addrs = ",".join(f"{h}:{p}" for h, p, _ in tries or ()) or "-"
    tls = tls or (None, None, None)
    return " ".join([when, f"{_s(ip)}:{_s(port)}", str(status), q(request), "-",
                     f"{seconds:.3f}", ups, addrs, q(ua), q(referer), q(xff), listener, pool,
                     tls[0] or "-", tls[1] or "-", _s(tls[2]) or "-", _s(rid) or "-",
                     policy or "-"])


def atomic_chunks(data: bytes, limit: int) -> list[bytes]:
    """`data` cut at line ends into pieces of at most `limit` bytes (a longer
    line stands alone), so that each piece is one write() that other
    workers' writes can't split."""
    out, start, n = [], 0, len(data)
    while start < n:
        if n - start <= limit:
            out.append(data[start:])
            break
        cut = data.rfind(b"\n", start, start + limit)
        if cut < 0:                                   # one line longer than limit
            cut = data.find(b"\n", start + limit)
            cut = n - 1 if cut < 0 else cut
        out.append(data[start:cut + 1])
        start = cut + 1
    return out


class AccessLogWriter:
    """Every worker writes to the same file or to the same stdout. A write()
    to a pipe is atomic only up to PIPE_BUF (4096) bytes, and one to a file
    opened O_APPEND for the whole call: batches are cut at line ends to fit,
    so lines of different workers never interleave."""

    def __init__(self, listeners, path: str, fmt: str) -> None:
        self.listeners = listeners
        self.path = path
        self.format = _elb_bytes if fmt == "elb" else json_line
        self.fd = -1
        self.limit = FILE_WRITE_LIMIT
        self.task: asyncio.Task | None = None

    def open(self) -> None:
        if self.path == "-":
            sys.stdout.flush()
            self.fd = sys.stdout.fileno()
        else:
            self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        mode = os.fstat(self.fd).st_mode
        self.limit = (FILE_WRITE_LIMIT if stat.S_ISREG(mode) or stat.S_ISCHR(mode)
                      else select.PIPE_BUF)

    def reopen(self) -> None:
        """SIGUSR1 / log rotation: close and open the file again."""
        if self.fd >= 0 and self.path != "-":
            os.close(self.fd)
        self.open()

    def flush(self) -> None:
        lines: list[bytes] = []
        for lrt in self.listeners:
            entries = lrt.access_log
            if entries:
                lrt.access_log = []
                lines += [self.format(e) for e in entries]
        if lines and self.fd >= 0:
            lines.append(b"")
            for chunk in atomic_chunks(b"\n".join(lines), self.limit):
                view = memoryview(chunk)
                while view:
                    try:
                        view = view[os.write(self.fd, view):]
                    except InterruptedError:
                        continue
                    except BlockingIOError:
                        select.select([], [self.fd], [], 1.0)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            self.flush()

    def start(self) -> None:
        self.open()
        self.task = asyncio.get_running_loop().create_task(self.run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        self.flush()


def _elb_bytes(entry) -> bytes:
    return to_elb(entry).encode("utf-8", "backslashreplace")
