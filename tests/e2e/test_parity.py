"""HTTP/1.1 and HTTP/2 parity: one table of requests, each sent over both
protocols to the same HTTPS listener of one `lbcore run` (DESIGN.md: "HTTP/1.1
and HTTP/2 are framing only; every rule about a request lives in the request
core once, and a parity test proves both protocols behave alike").

Both sides are raw, so malformed requests reach lbcore as written: HTTP/1.1 as
bytes on a TLS socket (ALPN http/1.1), HTTP/2 as frames (hyperframe) with header
blocks from hpack's Encoder (ALPN h2; tests/support/rawh2.py). The backend
records the exact bytes it receives (tests/support/recorder.py).

For every row and protocol the test checks, against the row's expectation:
- the answer: a status, or for a request refused as malformed the protocol's
  form of the refusal (HTTP/1.1: a 400 response; HTTP/2: RST_STREAM with
  PROTOCOL_ERROR); the body where it matters (none at all for HEAD);
- what the backend received: nothing for refused requests; else
  `METHOD target HTTP/1.1`, the client's fields in the client's order (names
  lower-cased; HTTP/2's :authority becomes `host`, cookie fields one line),
  then lbcore's own (the framing header, X-Forwarded-For, X-Real-IP,
  X-Forwarded-Proto, X-Forwarded-Host, X-Request-ID), and the body;
- the delta of lbcore_responses_total (by class) and of
  lbcore_generated_errors_total{code,reason} on the admin /metrics;
- one access-log line with the status, method, target, host, listener, pool,
  and protocol "HTTP/1.1" or "HTTP/2";
and, for a row sent over both, that the two outcomes are the same (backend
bytes compared in order, minus x-request-id values; log lines; counters).

Where the client's fields go: HTTP/2 pseudo-fields come first in a header
block, so the `host` made from :authority is expected first, where an
HTTP/1.1 client's Host line is in these rows. The limits are small so the
refusals are cheap: max_request_line 1024, max_header_size 2048 (above the
1501-byte target of the 414 rows, so that on HTTP/2, where :path is a field
too, only the request-line limit applies), max_headers 20, max_body 1000.

A failing row lists every difference, each prefixed "h1:", "h2:" or "parity:".
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.support import parity_phases as P
from tests.support.lbproc import free_port, wait_port
from tests.support.live import wait_live_zero
from tests.support.rawh2 import ERROR_NAMES, PROTOCOL_ERROR, H2Request, goodbye, h2_request
from tests.support.recorder import RESPONSE_BODY, Recorder, start_recording_backend

REPO = Path(__file__).resolve().parents[2]
HOST = "example.test"
CLIENT_TIMEOUT = 3.0          # per exchange; a correct answer takes milliseconds
LOG_WAIT = 0.6                # the access log is written every 20 ms
LIMITS = {"max_request_line": 1024, "max_header_size": 2048, "max_headers": 20,
          "max_body": 1000}
LISTENERS = {"main": "web", "dead": "deadpool"}      # listener -> its pool
# lbcore's own fields toward the backend with the access log on (and no options).
LBCORE_FIELDS = {"x-forwarded-for": "127.0.0.1", "x-real-ip": "127.0.0.1",
                 "x-forwarded-proto": "https", "x-forwarded-host": HOST, "x-request-id": None}
MASKED = {"x-request-id", "x-forwarded-for-port"}    # values that differ legitimately
LOG_FIELDS = ("status", "method", "target", "host", "listener", "pool", "user_agent",
              "referer")
PROTOCOL_NAME = {"h1": "HTTP/1.1", "h2": "HTTP/2"}


# ---- the table ---------------------------------------------------------------------

@dataclass(frozen=True)
class Want:
    """An outcome. status None: refused as malformed (h1 400, h2 RST_STREAM
    PROTOCOL_ERROR, counted as a generated 400 "malformed", logged as 400)."""

    status: int | None
    forwarded: bool = False
    body: bytes | None = None               # the response body, when it matters
    header: tuple[str, str] | None = None   # a field the response must carry
    generated: str | None = ""              # reason counted in generated_errors; "" none;
    #                                         None: not pinned (both protocols must agree)
    routed: bool | None = None              # counted under the pool (default: forwarded);
    #                                         else under pool "" (lbcore's own answers)

    @property
    def log_status(self) -> int:
        return 400 if self.status is None else self.status


OK = Want(200, forwarded=True, body=RESPONSE_BODY)
MALFORMED = Want(None, generated="malformed")


@dataclass(frozen=True)
class Case:
    id: str
    want: Want
    h1: bytes | None                 # None: HTTP/2 only (see `why`)
    h2: H2Request | None             # None: HTTP/1.1 only
    method: str | None = None        # what the log and the backend must show, where pinned
    target: str | None = None
    client_fields: tuple[tuple[str, str], ...] = ()   # the backend's first fields
    body: bytes = b""                # the request body the backend must receive
    framing: str = "none"            # "content-length" | "chunked" | "none"
    want_h2: Want | None = None      # when the two protocols' outcomes differ by contract
    listener: str = "main"
    log_extra: tuple[tuple[str, str], ...] = ()
    why: str = ""


def _b(s: str) -> bytes:
    return s.encode("latin-1")


def pseudo(method="GET", path="/", authority=HOST, scheme="https"):
    out = [(":method", method), (":scheme", scheme), (":authority", authority), (":path", path)]
    return [(_b(n), _b(v)) for n, v in out if v is not None]


def same(id, method, target, want=OK, fields=(), body=None, chunks=None, client_fields=None,
         **kw) -> Case:
    """A request both protocols express alike: h1 `Host` / h2 :authority, then
    `fields` (h1 as given, h2 lower-cased), then the body by content-length,
    or `chunks` (h1 chunked, h2 DATA frames without content-length)."""
    h1 = f"{method} {target} HTTP/1.1\r\nHost: {HOST}\r\n" + "".join(
        f"{n}: {v}\r\n" for n, v in fields)
    h2 = pseudo(method, target) + [(_b(n.lower()), _b(v)) for n, v in fields]
    data, framing, sent = (), "none", b""
    if body is not None:
        h1 += f"Content-Length: {len(body)}\r\n\r\n"
        h2.append((b"content-length", b"%d" % len(body)))
        data, framing, sent = (body,), "content-length", body
        raw = _b(h1) + body
    elif chunks is not None:
        raw = _b(h1 + "Transfer-Encoding: chunked\r\n\r\n") + b"".join(
            b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
        data, framing, sent = tuple(chunks), "chunked", b"".join(chunks)
    else:
        raw = _b(h1 + "\r\n")
    if client_fields is None:
        client_fields = ((n.lower(), v) for n, v in fields)
    return Case(id, want, raw, H2Request(h2, data), method=method, target=target,
                client_fields=(("host", HOST), *client_fields), body=sent, framing=framing, **kw)


def h2_only(id, headers, why, want=MALFORMED, data=(), end_stream=True) -> Case:
    return Case(id, want, None, H2Request([(_b(n), _b(v)) for n, v in headers], data,
                                          end_stream), why=why)


def both(id, h1: str, h2_headers, want=MALFORMED, end_stream=True, **kw) -> Case:
    return Case(id, want, _b(h1), H2Request([(_b(n), _b(v)) for n, v in h2_headers], (),
                                            end_stream), **kw)


def p(**kw):
    """Pseudo-fields as (str, str) pairs, for h2_only / both."""
    return [(n.decode(), v.decode()) for n, v in pseudo(**kw)]


LONG_TARGET = "/" + "t" * 1500                     # > max_request_line, < max_header_size
BIG_VALUE = "b" * 2100                             # > max_header_size
MANY = [(f"X-Fill-{i}", "v") for i in range(30)]   # > max_headers

CASES = [
    # ---- valid: forwarded alike ------------------------------------------------------
    same("get_root", "GET", "/"),
    same("get_query", "GET", "/a?b=c"),
    same("head_root", "HEAD", "/", want=Want(200, forwarded=True, body=b"")),
    same("post_content_length", "POST", "/submit", body=b"hello, parity"),
    same("post_streamed", "POST", "/stream", chunks=(b"hello, ", b"chunks")),
    same("two_cookies", "GET", "/c", fields=[("Cookie", "a=1"), ("Cookie", "b=2")],
         client_fields=[("cookie", "a=1; b=2")]),
    same("options_asterisk", "OPTIONS", "*"),
    same("user_agent_referer", "GET", "/ua",
         fields=[("User-Agent", "parity/1.0"), ("Referer", "https://example.test/from"),
                 ("Accept", "*/*")],
         log_extra=(("user_agent", "parity/1.0"), ("referer", "https://example.test/from"))),
    same("te_trailers", "GET", "/te", fields=[("TE", "trailers")], client_fields=[]),
    # ---- hooks -------------------------------------------------------------------------
    same("hook_request_filter_451", "GET", "/hook/x",
         want=Want(P.FILTER_STATUS, body=P.FILTER_BODY, header=P.FILTER_HEADER)),
    same("hook_fail_to_proxy", "GET", "/down", listener="dead",
         want=Want(P.FAIL_STATUS, body=P.FAIL_BODY, header=P.FAIL_HEADER, generated=None,
                   routed=True)),
    # ---- invalid: refused alike ----------------------------------------------------------
    both("host_with_quote", 'GET / HTTP/1.1\r\nHost: exa"mple.test\r\n\r\n',
         p(authority='exa"mple.test')),
    both("host_with_space", "GET / HTTP/1.1\r\nHost: exa mple.test\r\n\r\n",
         p(authority="exa mple.test")),
    both("host_twice", f"GET / HTTP/1.1\r\nHost: {HOST}\r\nHost: {HOST}\r\n\r\n",
         p() + [("host", HOST), ("host", HOST)]),
    h2_only("host_differs_from_authority", p() + [("host", "other.example.test")],
            "HTTP/1.1 has no :authority"),
    h2_only("empty_path", p(path=""), "an empty HTTP/1.1 target is no request line at all"),
    both("path_without_slash", "GET a/b HTTP/1.1\r\nHost: example.test\r\n\r\n",
         p(path="a/b")),
    h2_only("space_in_path", p(path="/a b"), "a space ends the HTTP/1.1 target"),
    h2_only("space_in_method", p(method="GE T"), "a space ends the HTTP/1.1 method"),
    h2_only("no_scheme", p(scheme=None), "HTTP/1.1 has no :scheme"),
    h2_only("scheme_http_on_https", p(scheme="http"), "HTTP/1.1 has no :scheme"),
    both("vt_in_value", "GET / HTTP/1.1\r\nHost: example.test\r\nX-Note: a\x0bb\r\n\r\n",
         p() + [("x-note", "a\x0bb")]),
    both("connect_405", f"CONNECT {HOST}:443 HTTP/1.1\r\nHost: {HOST}:443\r\n\r\n",
         [(":method", "CONNECT"), (":authority", f"{HOST}:443")], end_stream=False,
         want=Want(405, generated="method_not_allowed")),
    both("content_length_over_max_body",
         "POST /upload HTTP/1.1\r\nHost: example.test\r\nContent-Length: 5000\r\n\r\n",
         p(method="POST", path="/upload") + [("content-length", "5000")], end_stream=False,
         want=Want(413, generated="body_too_large")),
    both("target_over_max_request_line", f"GET {LONG_TARGET} HTTP/1.1\r\nHost: {HOST}\r\n\r\n",
         p(path=LONG_TARGET), want=Want(414, generated="uri_too_long")),
    both("head_target_over_max_request_line",
         f"HEAD {LONG_TARGET} HTTP/1.1\r\nHost: {HOST}\r\n\r\n", p(method="HEAD", path=LONG_TARGET),
         want=Want(414, body=b"", generated="uri_too_long")),
    both("header_over_max_header_size",
         f"GET / HTTP/1.1\r\nHost: {HOST}\r\nX-Big: {BIG_VALUE}\r\n\r\n",
         p() + [("x-big", BIG_VALUE)], want=Want(431, generated="header_too_large")),
    both("too_many_headers",
         f"GET / HTTP/1.1\r\nHost: {HOST}\r\n" + "".join(f"{n}: {v}\r\n" for n, v in MANY)
         + "\r\n", p() + [(n.lower(), v) for n, v in MANY],
         want=Want(431, generated="header_too_large")),
    h2_only("end_stream_with_content_length", p(method="POST", path="/cl")
            + [("content-length", "5")],
            "an HTTP/1.1 body is whatever follows its Content-Length: it can't disagree"),
    h2_only("te_gzip", p() + [("te", "gzip")],
            "HTTP/1.1 TE is an ordinary hop-by-hop field; in HTTP/2 only 'trailers' is allowed"),
    h2_only("connection_keep_alive", p() + [("connection", "keep-alive")],
            "Connection is HTTP/1.1's own; in HTTP/2 it is a connection-specific field"),
    both("transfer_encoding_gzip",
         "POST /te HTTP/1.1\r\nHost: example.test\r\nTransfer-Encoding: gzip\r\n\r\n",
         p(method="POST", path="/te") + [("transfer-encoding", "gzip")],
         want=Want(501, generated="transfer_coding"), want_h2=MALFORMED,
         why="h1: an unknown coding is 501; h2: transfer-encoding is connection-specific"),
]


# ---- the running lbcore ----------------------------------------------------------------

class LbCommand:
    """`lbcore run` with its output in files, so each exchange can be matched
    with what lbcore wrote on stderr meanwhile (tracebacks)."""

    def __init__(self, args: list[str], tmp: Path, env: dict) -> None:
        self.stderr_path = tmp / "lbcore.stderr"
        with open(tmp / "lbcore.stdout", "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "lbcore", *args], stdout=out,
                                         stderr=err, cwd=REPO, env={**os.environ, **env})
        self.stderr_offset = 0

    def new_stderr(self) -> str:
        data = self.stderr_path.read_bytes()[self.stderr_offset:]
        self.stderr_offset += len(data)
        return data.decode("utf-8", "replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@dataclass
class Lb:
    ports: dict[str, int]
    admin: int
    log: Path
    recorder: Recorder
    ctx_h1: ssl.SSLContext
    ctx_h2: ssl.SSLContext
    proc: LbCommand
    log_offset: int = 0

    def metrics(self) -> dict[tuple, float]:
        try:
            r = httpx.get(f"http://127.0.0.1:{self.admin}/metrics", timeout=5)
        except httpx.HTTPError as exc:
            raise MetricsUnavailable(f"admin /metrics failed: {exc!r}") from exc
        if r.status_code != 200:
            raise MetricsUnavailable(f"admin /metrics answered {r.status_code}")
        return parse_metrics(r.text)

    def new_log_lines(self, wait: float = LOG_WAIT) -> list[str]:
        """Lines appended since the last call, waiting up to `wait` for one."""
        deadline = time.monotonic() + wait
        lines: list[str] = []
        while True:
            data = self.log.read_bytes()[self.log_offset:] if self.log.exists() else b""
            end = data.rfind(b"\n") + 1
            if end:
                lines += data[:end].decode("utf-8", "replace").splitlines()
                self.log_offset += end
                deadline = min(deadline, time.monotonic() + 0.05)   # stragglers only
            if time.monotonic() >= deadline:
                return lines
            time.sleep(0.02)


class MetricsUnavailable(Exception):
    pass


METRIC_LINE = re.compile(r"^(lbcore_responses_total|lbcore_generated_errors_total|"
                         r"lbcore_worker_restarts_total)(?:\{([^}]*)\})?\s+(\S+)$")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> dict[tuple, float]:
    """The families compared here, keyed ("responses", listener, pool, class),
    ("generated_errors", listener, code, reason) and ("worker_restarts",)."""
    out = {}
    for line in text.splitlines():
        m = METRIC_LINE.match(line)
        if m is None:
            continue
        labels = dict(LABEL.findall(m[2] or ""))
        if m[1] == "lbcore_responses_total":
            key = ("responses", labels["listener"], labels["pool"], labels["code"])
        elif m[1] == "lbcore_generated_errors_total":
            key = ("generated_errors", labels["listener"], labels["code"], labels["reason"])
        else:
            key = ("worker_restarts",)
        out[key] = float(m[3])
    return out


def ready(lb: Lb, timeout: float = 15.0) -> None:
    """The master says ready and the main listener completes a TLS handshake."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{lb.admin}/readyz", timeout=5).status_code == 200:
                with socket.create_connection(("127.0.0.1", lb.ports["main"]), timeout=2) as s, \
                        lb.ctx_h1.wrap_socket(s, server_hostname=HOST):
                    return
        except (httpx.HTTPError, OSError):
            pass
        time.sleep(0.05)
    raise AssertionError("lbcore never became ready")


@pytest.fixture(scope="module")
def lb(tmp_path_factory, loop_thread, ca):
    tmp = tmp_path_factory.mktemp("parity")
    cert = ca.issue_cert(HOST, "*.example.test", "localhost", "127.0.0.1")
    (tmp / "server.crt").write_bytes(b"".join(p.bytes() for p in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(tmp / "server.key"))
    ca.cert_pem.write_to_path(str(tmp / "ca.pem"))
    recorder = Recorder()
    server, backend = loop_thread.call(start_recording_backend(recorder))
    ports = {name: free_port() for name in LISTENERS}
    admin, log = free_port(), tmp / "access.log"
    limits = ", ".join(f"{k}: {v}" for k, v in LIMITS.items())
    listeners = "".join(f"""\
  - name: {name}
    protocol: HTTPS
    address: 127.0.0.1
    port: {ports[name]}
    server_certificate: site
    http2: true
    default_pool: {pool}
    limits: {{{limits}}}
""" for name, pool in LISTENERS.items())
    (tmp / "lb.yaml").write_text(f"""\
load_balancer: {{workers: 1, admin: {{port: {admin}}}, access_log: {{path: "{log}"}}}}
certificates:
  site: {{type: server, certificate: "{tmp}/server.crt", private_key: "{tmp}/server.key"}}
listeners:
{listeners}pools:
  web:
    health_check: {{enabled: false}}
    members: [{{address: 127.0.0.1, port: {backend}}}]
  deadpool:
    health_check: {{enabled: false}}
    members: [{{address: 127.0.0.1, port: {free_port()}}}]
""")
    contexts = []
    for alpn in ("http/1.1", "h2"):
        ctx = ssl.create_default_context(cafile=str(tmp / "ca.pem"))
        ctx.set_alpn_protocols([alpn])
        contexts.append(ctx)
    proc = LbCommand(["run", "-c", str(tmp / "lb.yaml"),
                      "--phases", "tests.support.parity_phases:ParityPhases"], tmp,
                     env={"PYTHONPATH": os.pathsep.join(
                         filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))})
    running = Lb(ports, admin, log, recorder, *contexts, proc)
    try:
        try:
            for port in ports.values():
                wait_port(port, proc.proc)
            ready(running)
        except (AssertionError, RuntimeError, TimeoutError) as exc:
            raise AssertionError(f"lbcore did not start: {exc}\n"
                                 f"{proc.new_stderr()[-4000:]}") from None
        proc.new_stderr()
        yield running
        # Every case's connections closed: nothing of them is left behind.
        wait_live_zero(admin)
    finally:
        proc.stop()
        loop_thread.loop.call_soon_threadsafe(server.close)


# ---- one exchange per protocol -------------------------------------------------------

@dataclass
class Answer:
    status: int | None = None
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    reset: int | None = None          # h2: RST_STREAM code
    note: str = ""                    # what else happened (close, GOAWAY, time-out)

    def describe(self) -> str:
        if self.reset is not None:
            return f"RST_STREAM({ERROR_NAMES.get(self.reset, self.reset)})"
        return (f"status {self.status}" if self.status is not None else "no response") + (
            f" ({self.note})" if self.note else "")


def h1_exchange(sock: ssl.SSLSocket, raw: bytes, head: bool) -> Answer:
    sock.sendall(raw)
    buf, ans = b"", Answer()
    deadline = time.monotonic() + CLIENT_TIMEOUT

    def more(until: float) -> bool:
        nonlocal buf
        remaining = until - time.monotonic()
        if remaining <= 0:
            return False
        sock.settimeout(remaining)
        try:
            data = sock.recv(65536)
        except TimeoutError:
            return False
        except (ssl.SSLError, OSError) as exc:
            ans.note = f"connection error: {exc}"
            return False
        if not data:
            ans.note = ans.note or "closed"
            return False
        buf += data
        return True

    while True:                                           # skip 1xx
        while b"\r\n\r\n" not in buf:
            if not more(deadline):
                ans.note = ans.note or "timed out"
                if buf:
                    ans.note += f"; partial head {buf[:80]!r}"
                return ans
        head_bytes, buf = buf.split(b"\r\n\r\n", 1)
        lines = head_bytes.split(b"\r\n")
        try:
            ans.status = int(lines[0].split(b" ", 2)[1])
        except (IndexError, ValueError):
            ans.note = f"not an HTTP/1.1 response: {lines[0][:80]!r}"
            return ans
        ans.headers = [(n.strip().lower(), v.strip()) for n, _, v in
                       (line.partition(b":") for line in lines[1:])]
        if ans.status >= 200:
            break
    fields = dict(ans.headers)
    if head or ans.status in (204, 304):
        # No body may follow: anything arriving in a short while is a stray body.
        while more(min(deadline, time.monotonic() + 0.3)):
            pass
    elif b"content-length" in fields:
        n = int(fields[b"content-length"])
        while len(buf) < n and more(deadline):
            pass
    elif fields.get(b"transfer-encoding", b"").lower() == b"chunked":
        while not buf.endswith(b"0\r\n\r\n") and more(deadline):
            pass
        buf = _dechunk(buf)
    else:
        while more(deadline):
            pass
    ans.body = buf
    return ans


def _dechunk(buf: bytes) -> bytes:
    """A chunked response body, decoded as far as it is well-formed."""
    out, pos = b"", 0
    while True:
        eol = buf.find(b"\r\n", pos)
        try:
            size = int(buf[pos:eol].split(b";")[0], 16)
        except ValueError:
            return out + b"<bad chunk: " + buf[pos:pos + 40] + b">"
        if size == 0 or eol < 0:
            return out
        out += buf[eol + 2:eol + 2 + size]
        pos = eol + 4 + size


def h2_exchange(sock: ssl.SSLSocket, req: H2Request) -> Answer:
    res = h2_request(sock, req, CLIENT_TIMEOUT)
    goodbye(sock)
    note = []
    if res.goaway is not None:
        note.append(f"GOAWAY({ERROR_NAMES.get(res.goaway, res.goaway)})")
    if res.closed:
        note.append("closed")
    if res.timed_out:
        note.append("timed out")
    if res.status is not None and not res.ended and res.reset is None:
        note.append("stream not ended")
    return Answer(res.status, [(n, v) for n, v in res.headers if not n.startswith(b":")],
                  res.body, res.reset, ", ".join(note))


@dataclass
class Outcome:
    proto: str
    answer: Answer
    received: list                    # recorder.Received
    backend_bytes: int
    counters: dict[tuple, float] | None     # None: /metrics could not be read
    metrics_error: str | None
    log: list[dict]
    log_errors: list[str]
    restarted: str | None
    traceback: str | None             # the last line of a traceback lbcore wrote meanwhile


def run_one(lb: Lb, case: Case, proto: str) -> Outcome:
    port = lb.ports[case.listener]
    mark = lb.recorder.snapshot()
    try:
        before, metrics_error = lb.metrics(), None
    except MetricsUnavailable as exc:
        before, metrics_error = {}, str(exc)
    lb.new_log_lines(wait=0)                          # anything left over is not this case's
    ctx = lb.ctx_h1 if proto == "h1" else lb.ctx_h2
    with socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT) as raw, \
            ctx.wrap_socket(raw, server_hostname=HOST) as sock:
        alpn = sock.selected_alpn_protocol()
        assert alpn == {"h1": "http/1.1", "h2": "h2"}[proto], f"ALPN chose {alpn!r}"
        if proto == "h1":
            method = case.h1.split(b" ", 1)[0]
            answer = h1_exchange(sock, case.h1, head=method == b"HEAD")
        else:
            answer = h2_exchange(sock, case.h2)
    lines = lb.new_log_lines()
    received, nbytes = lb.recorder.since(mark)
    delta, restarted = None, None
    if metrics_error is None:
        try:
            after = lb.metrics()
        except MetricsUnavailable as exc:
            metrics_error = str(exc)
        else:
            delta = {k: v - before.get(k, 0.0) for k, v in after.items()
                     if v != before.get(k, 0.0)}
            if delta.pop(("worker_restarts",), 0):
                restarted = "the lbcore worker was restarted during this exchange (it died?)"
                ready(lb)
    log, errors = [], []
    for line in lines:
        try:
            log.append(json.loads(line))
        except ValueError:
            errors.append(f"not JSON: {line[:200]!r}")
    err = lb.proc.new_stderr()
    tb = None
    if "Traceback" in err:
        tail = [x for x in err[err.rindex("Traceback"):].splitlines() if x and x[0] != " "]
        tb = tail[-1] if tail else "Traceback"
    return Outcome(proto, answer, received, nbytes, delta, metrics_error, log, errors,
                   restarted, tb)


# ---- what is compared ------------------------------------------------------------------

def normalized(rec) -> tuple:
    fields = [(n.decode("latin-1").lower(),
               "<masked>" if n.decode("latin-1").lower() in MASKED else v.decode("latin-1"))
              for n, v in rec.headers]
    return rec.request_line.decode("latin-1"), fields, rec.framing, rec.body, rec.complete


def expected_counters(want: Want, listener: str) -> dict[tuple, float]:
    routed = want.forwarded if want.routed is None else want.routed
    pool = LISTENERS[listener] if routed else ""
    out = {("responses", listener, pool, f"{want.log_status // 100}xx"): 1.0}
    if want.generated:
        out[("generated_errors", listener, str(want.log_status), want.generated)] = 1.0
    return out


def pinned_counters(delta: dict, want: Want) -> dict:
    if want.generated is None:
        return {k: v for k, v in delta.items() if k[0] != "generated_errors"}
    return delta


def check_one(case: Case, want: Want, out: Outcome) -> list[str]:
    """Differences between one protocol's outcome and the row's expectation."""
    bad: list[str] = []
    a = out.answer
    if out.restarted:
        bad.append(out.restarted)
    if out.traceback:
        bad.append(f"lbcore wrote a traceback on stderr: {clip(out.traceback, 300)}")
    # The answer.
    if want.status is None:
        if out.proto == "h1" and a.status != 400:
            bad.append(f"malformed: expected a 400 response, got {a.describe()}")
        if out.proto == "h2" and (a.reset != PROTOCOL_ERROR or a.status is not None):
            bad.append(f"malformed: expected RST_STREAM(PROTOCOL_ERROR), got {a.describe()}"
                       + (f" body {clip(a.body)!r}" if a.body else ""))
    else:
        if a.status != want.status or a.reset is not None:
            bad.append(f"expected status {want.status}, got {a.describe()}"
                       + (f" body {clip(a.body)!r}" if a.body else ""))
        elif out.proto == "h2" and ("timed out" in a.note or "not ended" in a.note):
            bad.append(f"status {a.status}, but {a.note}")
        if want.body is not None and a.status == want.status and a.body != want.body:
            bad.append(f"response body: expected {want.body!r}, got {clip(a.body)!r}")
        if want.header is not None and a.status == want.status:
            name, value = (_b(x) for x in want.header)
            got = [v for n, v in a.headers if n.lower() == name]
            if got != [value]:
                bad.append(f"response field {want.header[0]}: expected [{value!r}], got {got}")
    # The backend.
    if want.forwarded:
        if len(out.received) != 1:
            bad.append(f"backend: expected 1 request, got {len(out.received)}: "
                       f"{[clip(r.head, 200) for r in out.received]}")
        else:
            bad += check_forwarded(case, out.received[0])
    elif out.backend_bytes:
        heads = [clip(r.head, 200) for r in out.received]
        bad.append(f"backend: expected nothing, received {out.backend_bytes} bytes: {heads}")
    # The counters.
    exp = expected_counters(want, case.listener)
    if out.counters is None:
        bad.append(f"counters: not checked: {out.metrics_error}")
    elif pinned_counters(out.counters, want) != exp:
        got = pinned_counters(out.counters, want)
        bad.append(f"counters: expected delta {fmt_counters(exp)}, got {fmt_counters(got)}")
    # The access log.
    bad += [f"access log: {e}" for e in out.log_errors]
    if len(out.log) != 1:
        bad.append(f"access log: expected 1 line, got {len(out.log)}: {clip(out.log)}")
    else:
        line = out.log[0]
        exp_log = {"status": want.log_status, "protocol": PROTOCOL_NAME[out.proto],
                   "listener": case.listener, "pool": LISTENERS[case.listener]}
        if case.method is not None:
            exp_log.update(method=case.method, target=case.target, host=HOST)
        exp_log.update(dict(case.log_extra))
        if want.status is None or want.status >= 400:
            # A refusal logs what its framing had parsed when it refused: an
            # HTTP/1.1 request line refused (414, a bad target) has no version
            # and no Host yet. The parity check compares what both know.
            exp_log = {k: v for k, v in exp_log.items()
                       if k not in ("method", "target", "host", "protocol")
                       or line.get(k) is not None}
        diff = {k: (v, line.get(k)) for k, v in exp_log.items() if line.get(k) != v}
        if diff:
            bad.append("access log: " + ", ".join(f"{k} expected {clip(e)!r} got {clip(g)!r}"
                                                  for k, (e, g) in diff.items()))
    return bad


def check_forwarded(case: Case, rec) -> list[str]:
    bad = []
    line, fields, framing, body, complete = normalized(rec)
    if line != f"{case.method} {case.target} HTTP/1.1":
        bad.append(f"backend request line: expected {case.method} {case.target} HTTP/1.1, "
                   f"got {clip(line)!r}")
    n = len(case.client_fields)
    client, own = fields[:n], fields[n:]
    if client != [(k, v) for k, v in case.client_fields]:
        bad.append(f"backend: client fields expected {list(case.client_fields)}, got "
                   f"{clip(client)} (then {clip(own)})")
    want_own = dict(LBCORE_FIELDS)
    if case.framing == "content-length":
        want_own["content-length"] = str(len(case.body))
    elif case.framing == "chunked":
        want_own["transfer-encoding"] = "chunked"
    names = sorted(k for k, _ in own)
    if names != sorted(want_own):
        bad.append(f"backend: after the client's fields expected {sorted(want_own)} (any "
                   f"order), got {clip(own)}")
    else:
        values = dict(own)
        for k, v in want_own.items():
            if v is not None and values[k] != v:
                bad.append(f"backend: {k} expected {v!r}, got {values[k]!r}")
    if framing != case.framing:
        bad.append(f"backend: body framing expected {case.framing}, got {framing}")
    if body != case.body or not complete:
        bad.append(f"backend: body expected {case.body!r}, got {clip(body)!r}"
                   + ("" if complete else " (incomplete)"))
    return bad


def check_parity(case: Case, h1: Outcome, h2: Outcome) -> list[str]:
    bad = []
    if h1.received or h2.received:
        n1 = [normalized(r) for r in h1.received]
        n2 = [normalized(r) for r in h2.received]
        if n1 != n2:
            bad.append(f"backend received differs:\n      h1 {clip(n1)}\n      h2 {clip(n2)}")
    if case.want_h2 is None:
        l1 = [{k: x.get(k) for k in LOG_FIELDS} for x in h1.log]
        l2 = [{k: x.get(k) for k in LOG_FIELDS} for x in h2.log]
        if len(l1) == len(l2) == 1:
            # Fields one framing had not parsed yet when it refused are not
            # compared (HTTP/1.1 reads the request line before Host; HTTP/2
            # stops decoding at the malformed field). What both know agrees.
            l1 = [{k: v for k, v in l1[0].items() if v is not None and l2[0].get(k) is not None}]
            l2 = [{k: v for k, v in l2[0].items() if k in l1[0]}]
        if l1 != l2:
            bad.append(f"access log differs:\n      h1 {clip(l1)}\n      h2 {clip(l2)}")
        if None not in (h1.counters, h2.counters) and h1.counters != h2.counters:
            bad.append(f"counters differ: h1 {fmt_counters(h1.counters)}, "
                       f"h2 {fmt_counters(h2.counters)}")
    return bad


def clip(v, n: int = 80):
    """`v` with every long str or bytes in it cut to `n` characters, for messages."""
    if isinstance(v, (str, bytes)):
        return v if len(v) <= n else v[:n] + (b"..." if isinstance(v, bytes) else "...") + (
            f"({len(v)})" if isinstance(v, str) else b"(%d)" % len(v))
    if isinstance(v, dict):
        return {k: clip(x, n) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return type(v)(clip(x, n) for x in v)
    return v


def fmt_counters(d: dict) -> str:
    return "{" + ", ".join(f"{'/'.join(k)}: {v:+g}" for k, v in sorted(d.items())) + "}"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_parity(lb, case):
    outcomes = {}
    problems = []
    for proto, request in (("h1", case.h1), ("h2", case.h2)):
        if request is None:
            continue
        want = case.want_h2 if proto == "h2" and case.want_h2 is not None else case.want
        out = outcomes[proto] = run_one(lb, case, proto)
        problems += [f"{proto}: {m}" for m in check_one(case, want, out)]
    if len(outcomes) == 2:
        problems += [f"parity: {m}" for m in check_parity(case, outcomes["h1"], outcomes["h2"])]
    only = "" if len(outcomes) == 2 else f" ({next(iter(outcomes))} only: {case.why})"
    if problems:
        pytest.fail(f"{case.id}{only}:\n  " + "\n  ".join(problems), pytrace=False)


def test_table_is_mostly_both_protocols():
    """One-protocol rows are the exception, and each says why."""
    single = [c for c in CASES if c.h1 is None or c.h2 is None]
    assert all(c.why for c in single)
    assert len(single) <= len(CASES) // 3
