# cython: language_level=3
"""Downstream HTTP/2 (ALPN h2, spec 9): frames via the h2 library; each stream
becomes an HTTP/1.1 request on the same forwarding core (Exchange) as HTTP/1.1
clients. Response bodies respect the client's flow-control windows: when a
stream's window is shut, its member's connection stops being read."""

import asyncio

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from hyperframe.frame import GoAwayFrame

from lbcore_ext.counters cimport add, count_response, inc
from lbcore_ext.headers cimport reason_phrase
from lbcore_ext.runtime cimport LazyTimer, ListenerRuntime
from lbcore_ext.upstream cimport Downstream, Exchange

from lbcore_ext.counters import CONN_ACTIVE, GENERATED, GENERATED_CODES, REQUESTS
from lbcore_ext.phases import HOOK_REQUEST_FILTER, RequestView
from lbcore_ext.runtime import (H_CONTENT_LENGTH, H_COOKIE, H_HOST, H_LOGGED, H_REQUEST_ID,
                                H_XFF, XFF_APPEND,
                                XFF_OFF, XFF_PRESERVE)

# SETTINGS_MAX_CONCURRENT_STREAMS (spec 9, issue: 100 concurrent streams).
DEF MAX_STREAMS = 100

cdef object RequestReceived = h2.events.RequestReceived
cdef object DataReceived = h2.events.DataReceived
cdef object StreamEnded = h2.events.StreamEnded
cdef object StreamReset = h2.events.StreamReset
cdef object WindowUpdated = h2.events.WindowUpdated
cdef object ConnectionTerminated = h2.events.ConnectionTerminated
cdef object ProtocolError = h2.exceptions.ProtocolError
cdef object StreamClosedError = h2.exceptions.StreamClosedError
cdef int A_HOST = H_HOST
cdef int A_XFF = H_XFF
cdef int A_COOKIE = H_COOKIE
cdef int A_CL = H_CONTENT_LENGTH
cdef int A_REQUEST_ID = H_REQUEST_ID
cdef int A_LOGGED = H_LOGGED
cdef object wall_time = __import__("time").time
cdef int M_APPEND = XFF_APPEND
cdef int M_PRESERVE = XFF_PRESERVE
cdef int M_OFF = XFF_OFF
cdef int K_REQUEST_FILTER = HOOK_REQUEST_FILTER
cdef Py_ssize_t O_CONN_ACTIVE = CONN_ACTIVE
cdef Py_ssize_t O_REQUESTS = REQUESTS
# A malformed HTTP/2 request is counted with the generated 400s.
cdef Py_ssize_t O_MALFORMED = GENERATED + [c for c, _ in GENERATED_CODES].index(400)
cdef frozenset IDEMPOTENT = frozenset((b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE",
                                       b"TRACE"))


# ---- request header checks (RFC 9113 8.2, 8.3) ---------------------------------
# Done here, in one pass over the headers we walk anyway, instead of by h2
# (its validate/normalize_inbound_headers passes were 17% of HTTP/2 CPU).
# A malformed request is reset with PROTOCOL_ERROR and never forwarded: a CR
# or LF in a value would otherwise split the HTTP/1.1 head sent upstream.
cdef unsigned char[256] NAME_CHAR       # allowed in a (lower-case) field name
for _c in bytearray(b"abcdefghijklmnopqrstuvwxyz0123456789!#$%&'*+-.^_`|~"):
    NAME_CHAR[_c] = 1
cdef frozenset PSEUDO = frozenset((b":method", b":scheme", b":authority", b":path"))
# Connection-specific fields have no place in HTTP/2 (8.2.2); TE only as "trailers".
cdef frozenset CONNECTION_SPECIFIC = frozenset((b"connection", b"keep-alive",
                                                b"proxy-connection", b"transfer-encoding",
                                                b"upgrade"))
cdef unsigned long long SPECIFIC_LENGTHS = (1ULL << 2)      # te
for _n in CONNECTION_SPECIFIC:
    SPECIFIC_LENGTHS |= 1ULL << len(_n)


cdef bint malformed_field(bytes name, bytes value):
    cdef const unsigned char* p = name
    cdef Py_ssize_t name_len = len(name), n, i, start = 1 if name_len and p[0] == 58 else 0
    if name_len == start:
        return True
    for i in range(start, name_len):
        if not NAME_CHAR[p[i]]:
            return True
    p = value
    n = len(value)
    if n and (p[0] == 32 or p[0] == 9 or p[n - 1] == 32 or p[n - 1] == 9):
        return True
    for i in range(n):
        if p[i] == 0 or p[i] == 10 or p[i] == 13:
            return True
    if start == 0 and name_len < 64 and (SPECIFIC_LENGTHS >> name_len) & 1:
        if name in CONNECTION_SPECIFIC or (name == b"te" and value != b"trailers"):
            return True
    return False


cdef class H2Stream(Downstream):
    cdef H2Protocol owner
    cdef int sid
    cdef Exchange ex
    cdef list pending
    cdef bint end_pending
    cdef bint done

    def __init__(self, H2Protocol owner, int sid):
        self.owner = owner
        self.sid = sid
        self.loop = owner.loop
        self.transport = owner.transport
        self.pending = []

    cdef int drain(self) except -1:
        """Send what the stream's flow-control window allows; stop reading the
        member while data waits for WINDOW_UPDATE."""
        conn = self.owner.conn
        cdef Py_ssize_t window, n
        if self.done or self.owner.closed:
            return 0
        try:
            while self.pending:
                window = min(conn.local_flow_control_window(self.sid),
                             conn.max_outbound_frame_size)
                if window <= 0:
                    break
                chunk = self.pending[0]
                n = len(chunk)
                if n <= window:
                    self.pending.pop(0)
                    conn.send_data(self.sid, chunk)
                else:
                    conn.send_data(self.sid, chunk[:window])
                    self.pending[0] = chunk[window:]
            if self.pending:
                if self.ex is not None:
                    self.ex.pause_upstream()
            else:
                if self.ex is not None:
                    self.ex.resume_upstream()
                if self.end_pending:
                    self.end_pending = False
                    conn.end_stream(self.sid)
                    self.owner.forget(self)
        except StreamClosedError:
            self.pending = []
        self.owner.flush()
        return 0

    cdef int ds_write(self, object data) except -1:
        return 0    # raw HTTP/1 bytes (a hook's custom page) have no meaning here

    cdef int ds_interim(self, Exchange ex, int status, bytes reason, object rhead) except -1:
        return 0

    cdef int ds_head(self, Exchange ex, int status, bytes reason, object rhead,
                     long long content_length, bint no_body) except -1:
        headers = [(b":status", b"%d" % status)]
        if rhead is not None:
            for line in bytes(rhead).split(b"\r\n"):
                if line:
                    name, _, value = line.partition(b":")
                    headers.append((name.strip().lower(), value.strip()))
        if content_length >= 0:
            headers.append((b"content-length", b"%d" % content_length))
        try:
            self.owner.conn.send_headers(self.sid, headers, end_stream=no_body)
        except StreamClosedError:
            pass
        self.owner.flush()
        return 0

    cdef int ds_body(self, Exchange ex, object data) except -1:
        self.pending.append(data)
        self.drain()
        return 0

    cdef int ds_end(self, Exchange ex) except -1:
        self.end_pending = True
        self.drain()
        return 0

    cdef int ds_exchange_done(self, Exchange ex, bint keep_alive) except -1:
        if not self.pending and not self.end_pending:
            self.owner.forget(self)
        return 0

    cdef int ds_error(self, Exchange ex, int code, bytes router_code) except -1:
        count_response(self.owner.lrt.counters, self.owner.lrt.cbase, code, True,
                       self.owner.loop.time() - ex.t_start if ex is not None else -1.0)
        body = b"%d %s\n" % (code, reason_phrase(code))
        headers = [(b":status", b"%d" % code), (b"content-type", b"text/plain"),
                   (b"content-length", b"%d" % len(body))]
        if router_code is not None:
            headers.append((b"x-router-code", router_code))
        try:
            self.owner.conn.send_headers(self.sid, headers)
            self.owner.conn.send_data(self.sid, body, end_stream=True)
        except (StreamClosedError, ProtocolError):
            pass
        self.owner.flush()
        self.owner.forget(self)
        return 0

    cdef int ds_abort(self, Exchange ex) except -1:
        try:
            self.owner.conn.reset_stream(self.sid, h2.errors.ErrorCodes.INTERNAL_ERROR)
        except (StreamClosedError, ProtocolError):
            pass
        self.owner.flush()
        self.owner.forget(self)
        return 0

    cdef int ds_pause_reading(self) except -1:
        self.owner.pause_reading()
        return 0

    cdef int ds_resume_reading(self) except -1:
        self.owner.resume_reading()
        return 0

    cdef int ds_tunnel(self, Exchange ex) except -1:
        raise RuntimeError("no upgrades over HTTP/2")

    cdef int ds_close(self) except -1:
        self.ds_abort(self.ex)
        return 0

    cdef int ds_deadline(self, double at) except -1:
        self.owner.schedule(at)
        return 0


cdef class H2Protocol:
    """One HTTP/2 client connection (taken over from HttpProtocol after ALPN)."""
    cdef object transport
    cdef object loop
    cdef ListenerRuntime lrt
    cdef object conn
    cdef dict streams
    cdef bytes peer_ip
    cdef bytes peer_port
    cdef bytes tls_lines
    cdef tuple tls_info
    cdef bint closed
    cdef bint paused
    cdef LazyTimer timer
    cdef double last_activity
    cdef bint going_away                # GOAWAY sent: finish streams, then close
    cdef bint flush_pending             # a write of h2's output is scheduled
    cdef long last_sid                  # the last stream the GOAWAY let through

    def __init__(self, ListenerRuntime lrt, bytes peer_ip, bytes peer_port):
        self.lrt = lrt
        self.peer_ip = peer_ip
        self.peer_port = peer_port
        self.streams = {}

    def connection_made(self, transport):
        self.transport = transport
        self.loop = asyncio.get_running_loop()
        self.timer = LazyTimer(self.loop, self._on_timer)
        # Inbound fields are checked in _request (malformed_field), outbound
        # ones are ours: names lower-cased, hop-by-hop dropped, values parsed
        # strictly from the member; h2's own per-header passes are off.
        config = h2.config.H2Configuration(client_side=False, header_encoding=None,
                                           validate_inbound_headers=False,
                                           normalize_inbound_headers=False,
                                           validate_outbound_headers=False,
                                           normalize_outbound_headers=False)
        self.conn = h2.connection.H2Connection(config=config)
        self.conn.local_settings = h2.settings.Settings(client=False, initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_STREAMS,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: self.lrt.max_header_block,
        })
        self.conn.initiate_connection()
        if self.lrt.tls_fields:
            self.tls_lines = self.lrt.tls_lines(transport)
        self.last_activity = self.loop.time()
        self.schedule(self.last_activity + (self.lrt.idle_timeout or self.lrt.request_timeout))
        self.flush()

    cdef int schedule(self, double at) except -1:
        if not self.closed:
            self.timer.schedule(at)
        return 0

    def _on_timer(self):
        if self.closed:
            return
        cdef double now = self.loop.time(), d, due = 1e300
        cdef H2Stream stream
        for stream in list(self.streams.values()):
            if stream.ex is None:
                continue
            d = stream.ex.deadline()
            if d <= 0.0:
                continue
            if now >= d:
                stream.ex.expire()
            else:
                due = min(due, d)
        if not self.streams:
            d = self.last_activity + (self.lrt.idle_timeout or self.lrt.request_timeout)
            if now >= d:
                self.goaway()
                self._close()
                return
            due = min(due, d)
        else:
            due = min(due, now + self.lrt.request_timeout)
        self.schedule(due)

    cdef int flush(self) except -1:
        """Write h2's output once per loop iteration: every stream's frames
        ready in this iteration go out in one TLS record batch and one send,
        not one per HEADERS or DATA frame."""
        if not self.closed and not self.flush_pending:
            self.flush_pending = True
            self.loop.call_soon(self._flush_soon)
        return 0

    def _flush_soon(self):
        self.flush_pending = False
        self.flush_now()

    cdef int flush_now(self) except -1:
        if not self.closed:
            data = self.conn.data_to_send()
            if data:
                self.transport.write(data)
        return 0

    cdef int forget(self, H2Stream stream) except -1:
        stream.done = True
        self.streams.pop(stream.sid, None)
        if self.going_away and not self.streams:
            self._close()
        return 0

    def drain(self):
        """Graceful stop (RFC 9113 6.8): GOAWAY naming the last stream we
        take, finish those, then close. Written as a raw frame because h2's
        close_connection() would refuse the frames of the streams still running."""
        if self.closed or self.going_away:
            return
        self.going_away = True
        self.last_sid = self.conn.highest_inbound_stream_id
        self.flush_now()
        self.transport.write(GoAwayFrame(0, last_stream_id=self.last_sid,
                                         error_code=0).serialize())
        if not self.streams:
            self._close()

    cdef int pause_reading(self) except -1:
        if not self.paused and not self.closed:
            self.paused = True
            self.transport.pause_reading()
        return 0

    cdef int resume_reading(self) except -1:
        if self.paused and not self.closed:
            self.paused = False
            self.transport.resume_reading()
        return 0

    def data_received(self, bytes data):
        cdef H2Stream stream
        self.last_activity = self.loop.time()
        try:
            events = self.conn.receive_data(data)
        except ProtocolError:
            self.flush()            # h2 queued the GOAWAY
            self._close()
            return
        for ev in events:
            t = type(ev)
            if t is RequestReceived:
                self._request(ev)
            elif t is DataReceived:
                stream = self.streams.get(ev.stream_id)
                if stream is not None and stream.ex is not None:
                    stream.ex.feed_body(ev.data)
                if ev.flow_controlled_length:
                    self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif t is StreamEnded:
                stream = self.streams.get(ev.stream_id)
                if stream is not None and stream.ex is not None:
                    stream.ex.body_done()
            elif t is StreamReset:
                stream = self.streams.pop(ev.stream_id, None)
                if stream is not None:
                    stream.done = True
                    if stream.ex is not None:
                        stream.ex.abort()
            elif t is WindowUpdated:
                if ev.stream_id == 0:
                    for stream in list(self.streams.values()):
                        stream.drain()
                else:
                    stream = self.streams.get(ev.stream_id)
                    if stream is not None:
                        stream.drain()
            elif t is ConnectionTerminated:
                self.flush()
                self._close()
                return
        self.flush()
        if self.going_away and not self.streams:
            self._close()

    def _request(self, ev):
        cdef ListenerRuntime lrt = self.lrt
        if self.going_away and ev.stream_id > self.last_sid:
            self.conn.reset_stream(ev.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        inc(lrt.counters, lrt.cbase + O_REQUESTS)
        cdef H2Stream stream = H2Stream(self, ev.stream_id)
        cdef Exchange ex
        cdef bytearray hbuf = bytearray()
        method = path = authority = host = xff = rid = ua = referer = None
        cookies = None
        cdef long long cl = -1
        cdef bint regular = False
        scheme = None
        for name, value in ev.headers:
            if malformed_field(name, value):
                self.malformed(ev.stream_id)
                return
            if name[0] == 58:      # ':'
                # Pseudo-fields: known ones only, once each, before the others.
                if regular or name not in PSEUDO:
                    self.malformed(ev.stream_id)
                    return
                if name == b":method":
                    if method is not None:
                        self.malformed(ev.stream_id)
                        return
                    method = value
                elif name == b":path":
                    if path is not None:
                        self.malformed(ev.stream_id)
                        return
                    path = value
                elif name == b":authority":
                    if authority is not None:
                        self.malformed(ev.stream_id)
                        return
                    authority = value
                elif scheme is not None:
                    self.malformed(ev.stream_id)
                    return
                else:
                    scheme = value
                continue
            regular = True
            action = lrt.header_actions.get(name)
            if action is None:
                hbuf += name + b": " + value + b"\r\n"
                continue
            a = <int>action
            if a == A_HOST:
                host = value
                hbuf += b"host: " + value + b"\r\n"
            elif a == A_XFF:
                if lrt.xff_mode == M_PRESERVE or lrt.xff_mode == M_OFF:
                    hbuf += name + b": " + value + b"\r\n"
                elif lrt.xff_mode == M_APPEND:
                    xff = value if xff is None else xff + b", " + value
            elif a == A_COOKIE:
                # HTTP/2 may split cookies (RFC 9113 8.2.3); HTTP/1.1 wants one line.
                cookies = value if cookies is None else cookies + b"; " + value
            elif a == A_CL:
                cl = int(value)
            elif a == A_REQUEST_ID or a == A_LOGGED:
                hbuf += name + b": " + value + b"\r\n"
                if a == A_REQUEST_ID:
                    rid = value
                elif name == b"user-agent":
                    ua = value
                else:
                    referer = value
        self.streams[ev.stream_id] = stream
        if method is None or path is None or method == b"CONNECT":
            stream.ds_error(None, 400, None)
            return
        if host is None and authority is not None:
            host = authority
            hbuf += b"host: " + authority + b"\r\n"
        if cookies is not None:
            hbuf += b"cookie: " + cookies + b"\r\n"
        ended = ev.stream_ended is not None
        chunked = not ended and cl < 0
        view = None
        if lrt.hooks:
            view = RequestView(method, path, "2", self.peer_ip.decode(), int(self.peer_port),
                               lrt.name, bytes(hbuf))
            if lrt.hooks & K_REQUEST_FILTER and lrt.phases.request_filter(view) is not None:
                stream.ds_error(None, 403, None)
                return
        cdef bytearray out = bytearray(method)
        out += b" " + path + b" HTTP/1.1\r\n"
        out += hbuf
        meta = None
        if lrt.access_log is not None:
            if rid is None:
                rid = lrt.next_request_id()
                out += b"x-request-id: " + rid + b"\r\n"
            if self.tls_info is None:
                sslobj = self.transport.get_extra_info("ssl_object")
                self.tls_info = (sslobj.version(), sslobj.cipher()[0],
                                 getattr(sslobj, "lbcore_sni", None))
            meta = (wall_time(), self.peer_ip, self.peer_port, method, path, "2", rid, ua,
                    referer, xff, host, lrt.name, lrt.pool.name, self.tls_info)
        if chunked:
            out += b"transfer-encoding: chunked\r\n"
        elif cl >= 0:
            out += b"content-length: %d\r\n" % cl
        lrt.append_forwarded(out, self.peer_ip, self.peer_port, xff, host, self.tls_lines, view)
        out += b"\r\n"
        ex = Exchange.new(stream, lrt, bytes(out), method == b"HEAD", method in IDEMPOTENT,
                      not ended, chunked, False, True)
        ex.client_ip = self.peer_ip
        ex.cookie = cookies
        ex.view = view
        ex.meta = meta
        stream.ex = ex
        if ended:
            ex.body_done()
        ex.start()

    cdef int malformed(self, int sid) except -1:
        """RFC 9113 8.1.1: a malformed request is a stream error."""
        inc(self.lrt.counters, self.lrt.cbase + O_MALFORMED)
        self.conn.reset_stream(sid, h2.errors.ErrorCodes.PROTOCOL_ERROR)
        return 0

    def pause_writing(self):
        cdef H2Stream stream
        for stream in self.streams.values():
            if stream.ex is not None:
                stream.ex.pause_upstream()

    def resume_writing(self):
        cdef H2Stream stream
        for stream in list(self.streams.values()):
            stream.drain()

    def eof_received(self):
        return False

    def connection_lost(self, exc):
        add(self.lrt.counters, self.lrt.cbase + O_CONN_ACTIVE, -1)
        self.lrt.conns.discard(self)
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None           # breaks the protocol <-> timer cycle
        cdef H2Stream stream
        for stream in list(self.streams.values()):
            stream.done = True
            if stream.ex is not None:
                stream.ex.abort()
        self.streams = {}

    def _close(self):
        if not self.closed:
            self.flush_now()
            self.closed = True
            self.transport.close()

    def goaway(self):
        """Graceful shutdown: no new streams, finish the ones in flight."""
        if not self.closed:
            self.conn.close_connection()
            self.flush_now()
