"""HTTP/2 abuse against a real `lbcore run` (one worker, one HTTPS listener
with http2): rapid reset, PING/SETTINGS floods left unread, PRIORITY /
WINDOW_UPDATE / empty DATA floods, CONTINUATION floods, an HPACK bomb, a 0.CL
desync attempt and a 1,000-stream burst.

The contract: over a per-connection budget the server sends
GOAWAY(ENHANCE_YOUR_CALM) and closes, counting
lbcore_http2_goaways_total{listener, reason}; streams over
MAX_CONCURRENT_STREAMS are refused with RST_STREAM(REFUSED_STREAM) and the
connection lives on; a malformed request is reset with PROTOCOL_ERROR and
never reaches a backend. Throughout, another client is served promptly, the
worker's memory stays bounded and the worker is never restarted.

Every attack is bounded in frames and in time (ATTACK_TIME) and prints one
summary line; run with -s to see them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import ssl
import subprocess
import sys
import threading
import time

import hpack
import httpx
import pytest
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from tests.e2e.conftest import Echo
from tests.e2e.test_metrics import scrape
from tests.support.h2raw import (
    CANCEL,
    ENHANCE_YOUR_CALM,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    H2Raw,
    encode,
    headers_frame,
    request_headers,
    with_sid,
)
from tests.support.inproc import start_backend
from tests.support.lbproc import free_port, wait_port
from tests.support.live import wait_live_zero

pytestmark = pytest.mark.timeout(60)

LISTENER = "h2"
ATTACK_TIME = 10.0          # seconds an attack may take before it counts as not stopped
PROBE_TIMEOUT = 5.0         # a normal request on another connection must be answered in this
MB = 1 << 20
# A worker idles at ~55 MB (CPython, uvloop, OpenSSL). What one attacking
# connection may make it hold is bounded by the budgets: 100 streams, a 4 KiB
# HPACK table, the header-list limit (64 KiB), an output buffer capped by
# output_flood: well under a megabyte, and the budgeted server stays within
# +1 MB. 30 MB leaves room for allocator noise and still catches what an
# unbudgeted server does: state kept per cancelled stream (rapid reset took
# the python-hyper stack to +160-220 MB), bombs decoded in full (8 MB each),
# floods buffered (2-6 MB per attack, so for those the GOAWAY is the test).
RSS_GROWTH_LIMIT = 30 * MB


# ---- the server under test ------------------------------------------------------------

class Lb:
    """`lbcore run` with one worker; output goes to files so that a chatty
    worker can never block on a full pipe."""

    def __init__(self, tmp_path, certs, backend: int) -> None:
        self.admin, self.port = free_port(), free_port()
        cfg = tmp_path / "lb.yaml"
        cfg.write_text(f"""\
load_balancer:
  workers: 1
  admin: {{address: 127.0.0.1, port: {self.admin}}}
  access_log: {{path: "off"}}
certificates:
  site: {{type: server, certificate: "{certs['crt']}", private_key: "{certs['key']}"}}
listeners:
  - name: {LISTENER}
    protocol: HTTPS
    address: 127.0.0.1
    port: {self.port}
    server_certificate: site
    http2: true
    default_pool: p
pools:
  p:
    health_check: {{enabled: false}}
    members: [{{name: a, address: 127.0.0.1, port: {backend}}}]
""")
        self.out, self.err = tmp_path / "lb.out", tmp_path / "lb.err"
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "lbcore", "run", "-c", str(cfg)],
                                         stdout=out, stderr=err)
        self.worker = None
        try:
            wait_port(self.port, self.proc)
            wait_port(self.admin, self.proc)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                with contextlib.suppress(httpx.HTTPError):
                    workers = [w for w in self.status()["workers"] if w["state"] == "ready"]
                    if len(workers) == 1:
                        self.worker = workers[0]["pid"]
                        break
                time.sleep(0.05)
            assert self.worker, f"no ready worker; stderr: {self.stderr_tail()}"
        except RuntimeError as exc:         # lbcore exited: its stderr is in a file
            self.stop()
            raise RuntimeError(f"{exc}{self.stderr_tail()}") from None
        except BaseException:
            self.stop()
            raise

    def status(self) -> dict:
        return httpx.get(f"http://127.0.0.1:{self.admin}/status", timeout=5).json()

    def worker_pids(self) -> list[int]:
        return [w["pid"] for w in self.status()["workers"]]

    def metrics(self) -> dict:
        return scrape(self.admin)

    def goaways(self, reason: str, m: dict | None = None) -> float:
        m = self.metrics() if m is None else m
        return m.get(("lbcore_http2_goaways_total",
                      (("listener", LISTENER), ("reason", reason))), 0)

    def goaway_reasons(self, m: dict) -> dict[str, float]:
        return {dict(labels)["reason"]: v for (name, labels), v in m.items()
                if name == "lbcore_http2_goaways_total" and v}

    def stderr_tail(self, n: int = 2000) -> str:
        return self.err.read_text(errors="replace")[-n:]

    def log_errors(self) -> int:
        text = self.err.read_text(errors="replace")
        return text.count(" ERROR ") + text.count("Traceback")

    def stop(self) -> None:
        """SIGINT (exit now): a worker busy with a backlog must not make the
        test wait for a drain. Then SIGKILL, the worker too, by pid."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.worker:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.worker, signal.SIGKILL)


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()      # the name may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")   # utime + stime


# ---- backends ---------------------------------------------------------------------------

class CountingEcho(Echo):
    """The conftest echo backend, keeping the target of every request it answered."""
    seen: list[str] = []

    def answer(self, req):
        self.seen.append(req.target.decode())
        return super().answer(req)


class Recorder:
    """A raw HTTP/1.1 backend that records every byte and answers each request
    head at once, before reading any body, with a 2-byte 200, keep-alive. It
    then takes Content-Length bytes as the body, whatever they are: a proxy
    that announces a body it never sends desyncs it, as it would a real one."""

    OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

    def __init__(self) -> None:
        self.raw = bytearray()
        self.requests: list[tuple[bytes, bytes, list]] = []     # (method, target, headers)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buf, body_left = b"", 0
        try:
            while data := await reader.read(65536):
                self.raw += data
                buf += data
                while True:
                    if body_left:
                        taken = min(body_left, len(buf))
                        buf, body_left = buf[taken:], body_left - taken
                        if body_left:
                            break
                    end = buf.find(b"\r\n\r\n")
                    if end < 0:
                        break
                    head, buf = buf[:end], buf[end + 4:]
                    line, *fields = head.split(b"\r\n")
                    method, _, rest = line.partition(b" ")
                    target = rest.partition(b" ")[0]
                    headers = [(n.strip().lower(), v.strip())
                               for n, _, v in (f.partition(b":") for f in fields)]
                    self.requests.append((method, target, headers))
                    writer.write(self.OK)
                    cl = [v for n, v in headers if n == b"content-length"]
                    body_left = int(cl[0]) if cl and cl[0].isdigit() else 0
        except ConnectionError:
            pass
        finally:
            writer.close()


@pytest.fixture
def echo(loop_thread):
    cls = type("E", (CountingEcho,), {"name": "a", "seen": []})
    server, port = loop_thread.call(start_backend(cls))
    yield cls, port
    loop_thread.loop.call_soon_threadsafe(server.close)


@pytest.fixture
def recorder(loop_thread):
    rec = Recorder()

    async def start():
        return await asyncio.start_server(rec.handle, "127.0.0.1", 0)

    server = loop_thread.call(start())
    rec.port = server.sockets[0].getsockname()[1]
    yield rec
    loop_thread.loop.call_soon_threadsafe(server.close)


@pytest.fixture
def start_lb(tmp_path, certs):
    started: list[Lb] = []

    def start(backend: int) -> Lb:
        lb = Lb(tmp_path, certs, backend)
        started.append(lb)
        return lb

    yield start
    for lb in started:
        lb.stop()


@pytest.fixture
def tls(ca) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    ctx.set_alpn_protocols(["h2"])
    return ctx


# ---- running an attack ------------------------------------------------------------------

def probe(lb: Lb, ctx: ssl.SSLContext) -> tuple[int | str, float]:
    """A normal HTTP/2 request on a connection of its own: (status or error, seconds)."""
    t0 = time.monotonic()
    try:
        with httpx.Client(http2=True, verify=ctx, timeout=PROBE_TIMEOUT) as client:
            r = client.get(f"https://localhost:{lb.port}/probe")
            status = r.status_code if r.http_version == "HTTP/2" else r.http_version
    except httpx.HTTPError as e:
        status = repr(e)
    return status, time.monotonic() - t0


def under_attack(name: str, lb: Lb, ctx: ssl.SSLContext, attack, **summary) -> dict:
    """Run `attack(started)` in a thread; once it sets `started` (its first
    burst is out), probe the server from another connection, and sample the
    worker's RSS until the attack returns; probe again. Prints the summary
    line; returns the attack's result with the measurements."""
    pid = lb.worker
    rss0, cpu0 = rss(pid), cpu_seconds(pid)
    started = threading.Event()
    result: dict = {}

    def run():
        try:
            result.update(attack(started))
        except BaseException as e:          # re-raised in the test's thread
            result["error"] = e
        finally:
            started.set()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    started.wait(ATTACK_TIME)
    during = probe(lb, ctx)
    peak = rss0
    deadline = time.monotonic() + ATTACK_TIME + 10
    while t.is_alive() and time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            peak = max(peak, rss(pid))
        t.join(0.05)
    assert not t.is_alive(), "the attack did not stop by itself"
    if "error" in result:
        raise result["error"]
    after = probe(lb, ctx)
    rss1, cpu1 = peak, cpu0                 # if the worker is gone
    with contextlib.suppress(OSError):
        rss1, cpu1 = rss(pid), cpu_seconds(pid)
        peak = max(peak, rss1)
    m = lb.metrics()
    result.update(rss0=rss0, rss1=rss1, peak=peak, cpu=cpu1 - cpu0, probe_during=during,
                  probe_after=after, reasons=lb.goaway_reasons(m), metrics=m)
    goaway = result.get("goaway")
    g = (f"GOAWAY(0x{goaway.error_code:x}, last={goaway.last_stream_id})" if goaway is not None
         else "closed" if result.get("closed") else "no GOAWAY nor close")
    g += f" at {result['t_stop']:.2f}s"
    extra = " ".join(f"{k}={result.get(k, v)}" for k, v in summary.items())
    print(f"\n[{name}] {g}; {result['sent']} {result['unit']} sent; "
          f"worker cpu {result['cpu']:.2f}s; rss {rss0 / MB:.1f} -> {rss1 / MB:.1f} MB "
          f"(peak {peak / MB:.1f}); probe during {during[0]} in {during[1]:.2f}s, after "
          f"{after[0]} in {after[1]:.2f}s; goaway reasons {result['reasons']}; "
          f"worker log errors {lb.log_errors()}; {extra}")
    return result


def assert_worker_unharmed(lb: Lb, r: dict) -> None:
    assert r["probe_during"][0] == 200, f"probe during the attack: {r['probe_during']}"
    assert r["probe_after"][0] == 200, f"probe after the attack: {r['probe_after']}"
    assert r["peak"] - r["rss0"] < RSS_GROWTH_LIMIT, (
        f"worker RSS grew {(r['peak'] - r['rss0']) / MB:.1f} MB")
    assert lb.worker_pids() == [lb.worker], "the worker was replaced"
    assert r["metrics"][("lbcore_worker_restarts_total", ())] == 0
    # Once the attacker is gone nothing of its connection is left behind.
    wait_live_zero(lb.admin)


def assert_calmed(lb: Lb, r: dict, reasons: tuple[str, ...], close_ok: bool = False) -> None:
    """GOAWAY(ENHANCE_YOUR_CALM) (or, if `close_ok`, just a close) within
    ATTACK_TIME, counted under one of `reasons`."""
    goaway = r["goaway"]
    if goaway is None and close_ok:
        assert r["closed"], f"neither GOAWAY nor close in {ATTACK_TIME}s"
    else:
        assert goaway is not None, f"no GOAWAY in {ATTACK_TIME}s (closed={r['closed']})"
        assert goaway.error_code == ENHANCE_YOUR_CALM, f"GOAWAY error {goaway.error_code}"
    assert r["t_stop"] <= ATTACK_TIME
    assert sum(lb.goaways(reason, r["metrics"]) for reason in reasons) >= 1, (
        f"goaways by reason: {r['reasons']}, wanted one of {reasons}")


def finish(conn: H2Raw, t0: float, sent: int, read_for: float = 2.0, **more) -> dict:
    """After the last write: read (bounded) until GOAWAY or close, and report."""
    conn.io(time.monotonic() + read_for, until=lambda: conn.goaway is not None or conn.eof)
    stop_at = conn.goaway_at if conn.goaway is not None else time.monotonic()
    conn.close()
    return {"goaway": conn.goaway, "closed": conn.closed, "sent": sent,
            "t_stop": stop_at - t0, "conn": conn, **more}


# ---- the attacks ------------------------------------------------------------------------

def test_rapid_reset(start_lb, echo, tls):
    """HEADERS + RST_STREAM(CANCEL) on stream after stream (CVE-2023-44487)."""
    backend, port = echo
    lb = start_lb(port)
    limit, batch = 100_000, 1000

    def attack(started):
        conn = H2Raw(lb.port, tls)
        conn.settings_exchange(time.monotonic() + 5)
        get = headers_frame(1, request_headers("/reset"))
        cancel = RstStreamFrame(1, error_code=CANCEL).serialize()
        t0 = time.monotonic()
        deadline, sent, sid = t0 + ATTACK_TIME, 0, 1
        while sent < limit and not conn.stopped() and time.monotonic() < deadline:
            conn.send(b"".join(with_sid(get, s) + with_sid(cancel, s)
                               for s in range(sid, sid + 2 * batch, 2)))
            sid, sent = sid + 2 * batch, sent + batch
            conn.io(deadline)                   # reads meanwhile: a GOAWAY stops us
            started.set()
        return finish(conn, t0, sent, unit="streams (HEADERS + RST_STREAM)")

    r = under_attack("rapid reset", lb, tls, attack)
    seen = backend.seen.count("/reset")
    print(f"[rapid reset] the backend saw {seen} requests")
    assert_calmed(lb, r, ("rapid_reset",))
    # Stopped well before the 100,000 streams: the server took under 10,000.
    assert (r["goaway"].last_stream_id + 1) // 2 < 10_000, r["goaway"].last_stream_id
    assert seen * 10 <= r["sent"], f"{seen} of {r['sent']} cancelled requests were forwarded"
    assert_worker_unharmed(lb, r)


@pytest.mark.parametrize("kind", ["ping", "settings"])
def test_control_frame_flood_without_reading(start_lb, echo, tls, kind):
    """PING or empty SETTINGS as fast as possible, never reading the ACKs."""
    _, port = echo
    lb = start_lb(port)
    limit, batch = 200_000, 5000
    one = (PingFrame(0, opaque_data=b"floodme!").serialize() if kind == "ping"
           else SettingsFrame(0).serialize())

    def attack(started):
        conn = H2Raw(lb.port, tls)
        conn.settings_exchange(time.monotonic() + 5)
        t0 = time.monotonic()
        deadline, sent = t0 + ATTACK_TIME, 0
        while sent < limit and not conn.closed and time.monotonic() < deadline:
            conn.send(one * batch)
            sent += batch
            conn.io(deadline, read=False)       # a failed send is how a close shows
            started.set()
        closed_at = time.monotonic() if conn.closed else None
        r = finish(conn, t0, sent, read_for=3.0, unit=f"{kind.upper()} frames")
        if closed_at is not None:               # a GOAWAY read later was sent before this
            r["t_stop"] = min(r["t_stop"], closed_at - t0)
        r["acks_read"] = conn.received["PingFrame" if kind == "ping" else "SettingsFrame"]
        return r

    r = under_attack(f"{kind} flood", lb, tls, attack, acks_read=0)
    assert_calmed(lb, r, (f"{kind}_flood", "output_flood"), close_ok=True)
    assert_worker_unharmed(lb, r)


SILENT_FLOODS = {     # frames the server owes no answer, and the reason each counts under
    "priority": ("priority_flood", PriorityFrame(1, depends_on=0, stream_weight=15)),
    # 200,000 increments of 1 keep the connection window far below 2^31 - 1.
    "window_update": ("window_update_flood", WindowUpdateFrame(0, window_increment=1)),
    "empty_data": ("empty_frames", DataFrame(1, data=b"")),
}


@pytest.mark.parametrize("kind", list(SILENT_FLOODS))
def test_silent_frame_flood(start_lb, echo, tls, kind):
    """Frames that cost the server work but ask for no answer, read meanwhile:
    PRIORITY on stream after (idle) stream, WINDOW_UPDATE(+1) on the
    connection, empty DATA without END_STREAM on an open POST."""
    _, port = echo
    lb = start_lb(port)
    limit, batch = 200_000, 5000
    reason, frame = SILENT_FLOODS[kind]
    one = frame.serialize()

    def attack(started):
        conn = H2Raw(lb.port, tls)
        conn.settings_exchange(time.monotonic() + 5)
        t0 = time.monotonic()
        deadline, sent = t0 + ATTACK_TIME, 0
        if kind == "empty_data":
            conn.send(headers_frame(1, request_headers("/empty", "POST"), end_stream=False))
        while sent < limit and not conn.stopped() and time.monotonic() < deadline:
            if kind == "priority":      # a new stream id each
                conn.send(b"".join(with_sid(one, 2 * i + 1) for i in range(sent, sent + batch)))
            else:
                conn.send(one * batch)
            sent += batch
            conn.io(deadline)
            started.set()
        return finish(conn, t0, sent, unit=f"{kind.upper()} frames")

    r = under_attack(f"{kind} flood", lb, tls, attack)
    assert_calmed(lb, r, (reason,))
    assert_worker_unharmed(lb, r)


@pytest.mark.parametrize("variant", ["fields", "empty"])
def test_continuation_flood(start_lb, echo, tls, variant):
    """A header block that never ends: HEADERS without END_HEADERS, then
    CONTINUATION frames each with a new field, or each empty."""
    backend, port = echo
    lb = start_lb(port)
    limit, batch = 200_000, 2000

    def continuation(i: int) -> bytes:
        data = encode([(f"x-c{i}", "1")]) if variant == "fields" else b""
        return ContinuationFrame(1, data=data).serialize()

    def attack(started):
        conn = H2Raw(lb.port, tls)
        conn.settings_exchange(time.monotonic() + 5)
        t0 = time.monotonic()
        deadline, sent = t0 + ATTACK_TIME, 0
        conn.send(headers_frame(1, request_headers("/cont"), end_headers=False))
        empty = continuation(0) if variant == "empty" else None
        while sent < limit and not conn.stopped() and time.monotonic() < deadline:
            conn.send(empty * batch if empty else
                      b"".join(continuation(i) for i in range(sent, sent + batch)))
            sent += batch
            conn.io(deadline)
            started.set()
        return finish(conn, t0, sent, unit="CONTINUATION frames")

    r = under_attack(f"continuation flood ({variant})", lb, tls, attack)
    assert_calmed(lb, r, ("continuation_flood", "header_flood", "empty_frames"))
    assert "/cont" not in backend.seen, "a request from an unfinished header block was forwarded"
    assert_worker_unharmed(lb, r)


def test_hpack_bomb(start_lb, echo, tls):
    """One ~4 KiB field inserted into the HPACK dynamic table, then referenced
    by its index (one byte each). Stream 1 is over the header-list limit but
    not far over (1.5x): answered 431 or reset, the connection lives on. Then
    2,000 references per block, ~8 MB of header list from ~2 KB on the wire,
    on stream after stream: far over, a header_flood GOAWAY."""
    backend, port = echo
    lb = start_lb(port)
    refs, streams = 2000, 200

    def attack(started):
        conn = H2Raw(lb.port, tls)
        conn.settings_exchange(time.monotonic() + 5)
        # The largest entry the server's table holds (RFC 7541 4.1: 32 + name + value).
        table = conn.server_settings.get(SettingsFrame.HEADER_TABLE_SIZE, 4096)
        if table < 1024:
            pytest.skip(f"the server's HPACK table is {table} bytes: no bomb to build")
        value = b"b" * min(4096, table - 32 - len(b"x-bomb"))
        entry = 32 + len(b"x-bomb") + len(value)
        limit = conn.server_settings.get(SettingsFrame.MAX_HEADER_LIST_SIZE, 65536)
        over = -(-3 * limit // (2 * entry))                 # 1.5x the limit, rounded up
        # A fresh encoder writes a literal with incremental indexing, new name
        # (0x40 ...): the entry becomes dynamic index 62, the first after the
        # 61 static ones. Everything else in the blocks is never indexed.
        insert = hpack.Encoder().encode([(b"x-bomb", value)], huffman=False)
        assert insert[0] == 0x40
        ref = bytes([0x80 | 62])                            # indexed field, index 62
        head = encode(request_headers("/bomb"))

        def frame(sid: int, block: bytes) -> bytes:
            return HeadersFrame(sid, data=block, flags=["END_STREAM", "END_HEADERS"]).serialize()

        t0 = time.monotonic()
        deadline = t0 + ATTACK_TIME
        conn.send(frame(1, head + insert + ref * (over - 1)))     # the insert is one too
        started.set()
        conn.io(min(deadline, time.monotonic() + 3),
                until=lambda: conn.stream(1).done or conn.stopped())
        first = conn.stream(1)
        first_outcome = (first.status, first.reset, first.done, conn.goaway is not None)
        sent, sid = 1, 3
        while sent < streams and not conn.stopped() and time.monotonic() < deadline:
            conn.send(b"".join(frame(s, head + ref * refs) for s in range(sid, sid + 20, 2)))
            sid, sent = sid + 20, sent + 10
            conn.io(deadline)
        return finish(conn, t0, sent, unit="header blocks", first=first_outcome,
                      first_fields=over)

    r = under_attack("hpack bomb", lb, tls, attack, first=None, first_fields=None)
    status, reset, done, goaway_first = r["first"]
    assert done and (status == 431 or reset is not None) and not goaway_first, (
        f"stream 1 (1.5x the limit): status {status}, reset {reset}, "
        f"GOAWAY before it ended: {goaway_first}")
    assert_calmed(lb, r, ("header_flood",))
    assert "/bomb" not in backend.seen, "a bomb was forwarded"
    assert_worker_unharmed(lb, r)


def test_zero_cl_desync(start_lb, recorder, tls):
    """0.CL: a request that announces `content-length: 5` but ends its stream
    with no body. Forwarded as such, the backend would take the first 5 bytes
    of the next request on that connection as the body and read the rest as
    a request of its own."""
    lb = start_lb(recorder.port)

    def attack(started):
        conn = H2Raw(lb.port, tls)
        conn.settings_exchange(time.monotonic() + 5)
        t0 = time.monotonic()
        deadline = t0 + ATTACK_TIME
        conn.send(headers_frame(1, request_headers("/first", "POST",
                                                   [("content-length", "5")])))
        started.set()
        conn.io(min(deadline, time.monotonic() + 3),
                until=lambda: conn.stream(1).done or conn.stopped())
        conn.send(headers_frame(3, request_headers("/second",
                                                   extra=[("x-a", "GET /smuggled HTTP/1.1")])))
        conn.io(min(deadline, time.monotonic() + 3),
                until=lambda: conn.stream(3).done or conn.stopped())
        r = {"goaway": conn.goaway, "closed": conn.closed, "sent": 2, "unit": "streams",
             "t_stop": time.monotonic() - t0, "first": conn.stream(1), "second": conn.stream(3)}
        conn.close()
        return r

    r = under_attack("0.CL", lb, tls, attack)
    first, second = r["first"], r["second"]
    targets = [target for _, target, _ in recorder.requests]
    print(f"[0.CL] stream 1: status {first.status} reset {first.reset}; stream 3: status "
          f"{second.status}; backend saw {targets}")
    assert first.reset == PROTOCOL_ERROR and first.status is None, (
        f"stream 1: status {first.status}, reset {first.reset}")
    assert second.status == 200 and second.ended
    assert r["goaway"] is None and not r["closed"], "a stream error, not a connection error"
    assert b"/first" not in targets, "the malformed request reached the backend"
    assert not [t for t in targets if b"smuggled" in t], targets
    assert not [h for _, _, h in recorder.requests if (b"content-length", b"5") in h]
    assert b"content-length: 5\r\n" not in bytes(recorder.raw).lower()
    assert_worker_unharmed(lb, r)


def test_thousand_streams_in_one_burst(start_lb, echo, tls):
    """1,000 GETs in one write, after the SETTINGS exchange: the ones over
    MAX_CONCURRENT_STREAMS (100) are refused, the others answered, and the
    connection stays up."""
    backend, port = echo
    lb = start_lb(port)
    n = 1000
    sids = range(1, 2 * n, 2)

    def attack(started):
        conn = H2Raw(lb.port, tls)
        conn.settings_exchange(time.monotonic() + 5)
        t0 = time.monotonic()
        deadline = t0 + ATTACK_TIME
        get = headers_frame(1, request_headers("/burst"))
        conn.send(b"".join(with_sid(get, s) for s in sids))
        started.set()
        conn.io(deadline, until=lambda: all(conn.stream(s).done for s in sids)
                or conn.stopped())
        t_all = time.monotonic() - t0
        after = 2 * n + 1
        conn.send(with_sid(get, after))
        conn.io(min(deadline + 5, time.monotonic() + 5),
                until=lambda: conn.stream(after).done or conn.stopped())
        streams = {sid: conn.stream(sid) for sid in sids}
        r = {"goaway": conn.goaway, "closed": conn.closed, "sent": n, "unit": "streams",
             "t_stop": t_all,
             "ok": sum(s.status == 200 and s.ended for s in streams.values()),
             "refused": sum(s.reset == REFUSED_STREAM for s in streams.values()),
             "other": {sid: (s.status, s.reset, s.ended) for sid, s in streams.items()
                       if not ((s.status == 200 and s.ended) or s.reset == REFUSED_STREAM)},
             "after": conn.stream(after),
             "max_streams": conn.server_settings.get(SettingsFrame.MAX_CONCURRENT_STREAMS)}
        conn.close()
        return r

    r = under_attack("1000 streams", lb, tls, attack, ok=0, refused=0, max_streams=None)
    ok, other = r["ok"], r["other"]
    print(f"[1000 streams] backend saw {backend.seen.count('/burst')} requests")
    assert r["max_streams"] == 100
    assert r["goaway"] is None and not r["closed"], (
        f"GOAWAY {r['goaway']} closed={r['closed']}")
    assert not other, (f"{len(other)} streams neither 200 nor refused, e.g. "
                       f"{list(other.items())[:5]}")
    assert ok >= 100
    assert r["after"].status == 200 and r["after"].ended, "the connection serves on"
    assert_worker_unharmed(lb, r)
