"""The access log (spec 11): one line per request, JSON lines (default), ELB's
`elb_01` line, or nginx's "combined". The data plane only appends a tuple per
finished request to its listener's list; this writer swaps the lists out and
formats them in batches, off the request path, with the C formatters of
lbcore_ext.logfmt. The functions here are their readable reference (the
tests hold them equal); docs/access-log.md says what every field means.

An entry is (meta, status, seconds, tries, received, sent, body_sent):
- meta: (time, client ip, client port, method, target, version, request id,
  user agent, referer, x-forwarded-for, host, listener, pool, tls, policy),
  tls (version, cipher, sni, resumed) or None;
- seconds: from the request's first byte to its log entry;
- tries: None or [(host, port, result, connect, header, response, member)],
  the times in seconds from the try's start, -1 where it never got there;
- received: the request's bytes (head as HTTP/1.1 text, body, tunnel);
- sent, body_sent: the response's bytes, and its body's."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import select
import stat
import sys
from dataclasses import dataclass

from lbcore_ext.logfmt import combined_line, elb_line, json_line

# Entries are written every 20 ms: small batches, so formatting never holds
# the loop long enough to show in p99 latency (a 250 ms batch at 70k req/s
# stalled it for ~100 ms).
FLUSH_INTERVAL = 0.02
# Bytes per write() to a regular file (appends are atomic per call there).
FILE_WRITE_LIMIT = 1 << 20
FORMATS = ("json", "elb", "combined")


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


def _fixed(v: float, digits: int) -> str:
    """v >= 0 with `digits` decimals: v * 10**digits rounded half to even
    (the C formatter's way; %f would differ on rare halves)."""
    n = round(v * 10 ** digits)
    return f"{n // 10 ** digits}.{n % 10 ** digits:0{digits}d}"


def _secs(v: float) -> str:
    return "null" if v < 0 else _fixed(v, 6)


def to_json(entry) -> str:
    """One JSON object per line."""
    meta, status, seconds, tries, received, sent, body_sent = entry
    (ts, ip, port, method, target, version, rid, ua, referer, xff, host, listener, pool,
     tls, policy) = meta
    ups = ",".join(
        f'{{"member":{_j(m)},"address":"{h}:{p}","result":{_j(r)},"connect_s":{_secs(c)},'
        f'"header_s":{_secs(hd)},"response_s":{_secs(rs)}}}'
        for h, p, r, c, hd, rs, m in tries or ())
    line = (f'{{"time":"{_iso(ts)}","request_id":{_j(rid)},'
            f'"client":"{_s(ip)}:{_s(port)}","method":{_j(method)},"target":{_j(target)},'
            f'"protocol":{_j(f"HTTP/{version}" if version else None)},"host":{_j(host)},'
            f'"status":{status},"duration_s":{_fixed(seconds, 6)},"bytes_received":{received},'
            f'"bytes_sent":{sent},"body_bytes_sent":{body_sent},"upstream":[{ups}],'
            f'"user_agent":{_j(ua)},"referer":{_j(referer)},"x_forwarded_for":{_j(xff)},'
            f'"listener":{_j(listener)},"pool":{_j(pool)},"policy":{_j(policy)}')
    if tls and tls[0]:
        line += (f',"tls":{{"version":{_j(tls[0])},"cipher":{_j(tls[1])},"sni":{_j(tls[2])},'
                 f'"resumed":{"true" if tls[3] else "false"}}}')
    return line + "}"


def _raw(v) -> bytes:
    if v is None:
        return b""
    return v if isinstance(v, bytes) else str(v).encode("utf-8")


def _nginx_esc(v) -> str:
    """nginx's escaping of logged values (escape=default): `"`, `\\`, control
    bytes and bytes above 126 as \\xHH; None and empty as `-`."""
    b = _raw(v)
    if not b:
        return "-"
    return "".join(chr(c) if 32 <= c <= 126 and c not in (34, 92) else f"\\x{c:02X}"
                   for c in b)


def _protocol(version) -> str:
    """$server_protocol: HTTP/1.1, HTTP/1.0, HTTP/2.0."""
    if not version:
        return "-"
    return "HTTP/2.0" if version == "2" else f"HTTP/{version}"


@dataclass(frozen=True)
class ElbContext:
    """A listener's constant fields of the elb_01 line."""

    lb_name: str = "-"
    scheme: str = "http"
    eip: str = "-"
    port: int = 0
    certificate: str = "-"

    def as_tuple(self) -> tuple:
        return (self.lb_name, self.scheme, self.eip, self.port, self.certificate)


def _ms(v: float) -> str:
    return "-" if v < 0 else _fixed(v, 3)


def _upstream_status(result) -> str:
    """nginx's $upstream_status of a try: its status, or 502 (504 on a
    time-out) when no response came."""
    r = _s(result) or ""
    if r.isascii() and r.isdigit():
        return r
    return "504" if r.endswith("timeout") else "502"


def to_elb(entry, ctx: tuple) -> str:
    """ELB's fixed `elb_01` line, its 33 fields in order (docs/access-log.md):
    msec, topic id, [time], log version, client, status, "request", request
    length, bytes sent, body bytes sent, request time, "upstream status",
    "connect", "header", "response" times, "upstream address", "user agent",
    "referer", "x-forwarded-for", load balancer, listener, listener id, pool,
    "members", tenant, eip:port, "upstream private address", certificate,
    TLS protocol, cipher, SNI, RTT, and the request id as the self-defined
    header. Multi-valued fields list every try, ", "-separated."""
    meta, status, seconds, tries, received, sent, body_sent = entry
    (ts, ip, port, method, target, version, rid, ua, referer, xff, host, listener, pool,
     tls, policy) = meta
    lb_name, scheme, eip, lport, certificate = ctx
    tries = tries or ()
    tls = tls or (None, None, None, None)

    def q(v):
        return f'"{v}"'

    def multi(values):
        return ", ".join(values) if tries else "-"

    request = (f"{_nginx_esc(method)} {scheme}://{_nginx_esc(host)}{_nginx_esc(target)} "
               f"{_protocol(version)}")
    addrs = multi(f"{h}:{p}" for h, p, *_ in tries)
    return " ".join([
        _fixed(ts, 3), "-", f"[{_iso_seconds(ts)}]", "elb_01", f"{_s(ip)}:{_s(port)}",
        str(status), q(request), str(received), str(sent), str(body_sent), _fixed(seconds, 3),
        q(multi(_upstream_status(t[2]) for t in tries)), q(multi(_ms(t[3]) for t in tries)),
        q(multi(_ms(t[4]) for t in tries)), q(multi(_ms(t[5]) for t in tries)), q(addrs),
        q(_nginx_esc(ua)), q(_nginx_esc(referer)), q(_nginx_esc(xff)), _nginx_esc(lb_name),
        _nginx_esc(listener), "-", _nginx_esc(pool), q(multi(_nginx_esc(t[6]) for t in tries)),
        "-", f"{eip}:{lport}", q(addrs), _nginx_esc(certificate if tls[0] else None),
        _nginx_esc(tls[0]), _nginx_esc(tls[1]), _nginx_esc(tls[2]), "-", q(_nginx_esc(rid))])


def _iso_seconds(ts: float) -> str:
    return dt.datetime.fromtimestamp(int(ts), dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S+00:00")


def to_combined(entry) -> str:
    """nginx's "combined": $remote_addr - $remote_user [$time_local] "$request"
    $status $body_bytes_sent "$http_referer" "$http_user_agent"."""
    meta, status, seconds, tries, received, sent, body_sent = entry
    (ts, ip, port, method, target, version, rid, ua, referer, xff, host, listener, pool,
     tls, policy) = meta
    when = dt.datetime.fromtimestamp(int(ts), dt.timezone.utc).strftime(
        "%d/%b/%Y:%H:%M:%S +0000")
    request = (f"{_nginx_esc(method)} {_nginx_esc(target)} {_protocol(version)}"
               if method is not None or target is not None else "-")
    return (f'{_s(ip)} - - [{when}] "{request}" {status} {body_sent} '
            f'"{_nginx_esc(referer)}" "{_nginx_esc(ua)}"')


def elb_context(cfg, listener) -> tuple:
    """The constant fields of a listener's elb_01 lines."""
    lb = cfg.load_balancer
    return ElbContext(lb.name, "https" if listener.protocol == "HTTPS" else "http",
                      lb.eip or "-", listener.port,
                      listener.server_certificate or "-").as_tuple()


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

    def __init__(self, listeners, path: str, fmt: str, contexts: list[tuple] | None = None
                 ) -> None:
        self.listeners = listeners
        self.path = path
        self.fmt = fmt
        # per listener: what its elb_01 lines share (elb_context)
        self.contexts = contexts or [ElbContext().as_tuple() for _ in listeners]
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
        for lrt, ctx in zip(self.listeners, self.contexts, strict=True):
            entries = lrt.access_log
            if entries:
                lrt.access_log = []
                if self.fmt == "elb":
                    lines += [elb_line(e, ctx) for e in entries]
                elif self.fmt == "combined":
                    lines += [combined_line(e) for e in entries]
                else:
                    lines += [json_line(e) for e in entries]
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

