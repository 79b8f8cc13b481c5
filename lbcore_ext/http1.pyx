# cython: language_level=3
"""Downstream HTTP/1.1 framing: one protocol object per client connection.
Parses with llhttp in its strict mode, driven from C (lbcore_ext/llhttp.pyx):
the callbacks below are C functions that see the request's bytes in place,
so a header field is one C call into the request core (Request.field_raw),
not a Python call and two bytes objects as through httptools' API. Fills a
Request (lbcore_ext/request.pyx), where every rule about the request lives;
writes responses back in order, in HTTP/1.1 framing (Content-Length,
chunked, or close-delimited for HTTP/1.0)."""

include "consts.pxi"

import asyncio

from cpython.bytes cimport (PyBytes_AS_STRING, PyBytes_FromFormat, PyBytes_FromStringAndSize,
                            PyBytes_GET_SIZE)
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from libc.string cimport memchr

from lbcore_ext.bufs cimport ba_bytes, new_ba, put, put_at, put_ba, put_int
from lbcore_ext.llhttp cimport (HPE_OK, HPE_PAUSED_UPGRADE, HTTP_REQUEST, Parser, llhttp_api,
                                llhttp_api_t, llhttp_t, method_bytes)
from lbcore_ext.clock cimport clock_now, monotonic
from lbcore_ext.counters cimport add, count_reason, count_response, inc
from lbcore_ext.headers cimport chunk_header, error_response, reason_phrase
from lbcore_ext.request cimport D_ANSWER, Client, Request
from lbcore_ext.runtime cimport LazyTimer, ListenerRuntime, owned_timer
from lbcore_ext.transport cimport ProtocolFactory, SocketTransport, TlsTransport
from lbcore_ext.upstream cimport Downstream, Exchange

from lbcore_ext.counters import (CONN_ACTIVE, CONN_TOTAL, TIMEOUT_IDLE, TIMEOUT_REQUEST,
                                 TLS_VERSIONS, W_LIVE_CLIENT_CONNS)
from lbcore_ext.http2 import H2Connection
from lbcore_ext.phases import HOOK_ON_ACCEPT

cdef object get_running_loop = asyncio.get_running_loop
cdef llhttp_api_t* LL = llhttp_api()

cdef int K_ON_ACCEPT = HOOK_ON_ACCEPT
cdef Py_ssize_t O_CONN_TOTAL = CONN_TOTAL
cdef Py_ssize_t O_CONN_ACTIVE = CONN_ACTIVE
cdef Py_ssize_t O_TIMEOUT_IDLE = TIMEOUT_IDLE
cdef Py_ssize_t O_TIMEOUT_REQUEST = TIMEOUT_REQUEST
cdef Py_ssize_t O_LIVE_CC = W_LIVE_CLIENT_CONNS
cdef dict TLS_VERSION_CELL = {"TLSv1": TLS_VERSIONS, "TLSv1.1": TLS_VERSIONS + 1,
                              "TLSv1.2": TLS_VERSIONS + 2, "TLSv1.3": TLS_VERSIONS + 3}
cdef Py_ssize_t C_TLS_VERSIONS = TLS_VERSIONS

# One timer per connection, checked lazily: when it fires it looks at the phase
# the connection is in and either acts or re-arms for the remaining time.
#   header: request_timeout from the request's first byte (408)
#   body:   request_timeout since the last read (408 and close)
#   exchange: the Exchange's connect / response deadline (504 or retry)
#   idle:   idle_timeout since the last response (close)
#   tunnel: idle_timeout since the last byte either way (close)
DEF NEVER = 1e300

# How the response body is framed toward the client.
DEF R_PLAIN = 0       # as the backend framed it (Content-Length or no body)
DEF R_CHUNK = 1       # re-encoded chunked
DEF R_CLOSE = 2       # delimited by closing the connection (HTTP/1.0 client)

# Seconds an idle keep-alive connection must be quiet before a drain closes it.
DEF DRAIN_IDLE_GRACE = 1.0


cdef bytes local_response(int status, bytes lines, bytes body, bint head, bint close=True):
    """A complete answer of lbcore's own; no body to HEAD (the
    Content-Length still says what GET would get)."""
    cdef bytearray out = bytearray(b"HTTP/1.1 ")
    put_int(out, status)
    put(out, b" ")
    put(out, reason_phrase(status))
    put(out, b"\r\n")
    put(out, lines)
    put(out, b"Content-Length: ")
    put_int(out, len(body))
    put(out, b"\r\nConnection: close\r\n\r\n" if close else b"\r\n\r\n")
    if not head:
        put(out, body)
    return ba_bytes(out)


cdef class HttpFactory(ProtocolFactory):
    """The Acceptor's factory of a listener's HttpProtocol, made from C."""

    def __init__(self, ListenerRuntime lrt):
        self.lrt = lrt

    cdef object make(self):
        cdef HttpProtocol p = HttpProtocol.__new__(HttpProtocol)
        p.init(self.lrt)
        return p


cdef class HttpProtocol(Downstream):
    def __init__(self, ListenerRuntime lrt):
        self.init(lrt)

    cdef int init(self, ListenerRuntime lrt) except -1:
        self.lrt = lrt
        add(lrt.counters, O_LIVE_CC, 1)
        return 0

    def __dealloc__(self):
        if self.lrt is not None:
            add(self.lrt.counters, O_LIVE_CC, -1)

    # ---- connection life ----------------------------------------------------------

    def connection_made(self, transport):
        self.made(transport)

    cdef int made(self, object transport) except -1:
        """Called after the TLS handshake on HTTPS listeners (access control
        already ran in the Acceptor, before any TLS byte)."""
        cdef ListenerRuntime lrt = self.lrt
        cdef Client client = Client.__new__(Client)
        cdef SocketTransport st
        self.transport = transport
        client.lrt = lrt
        client.transport = transport
        if isinstance(transport, SocketTransport):
            # lbcore's transports keep accept()'s binary address: its text is
            # made here once, in C (no tuple, no str, no encode).
            st = <SocketTransport>transport
            self.st = st
            self.loop = st.loop
            client.peer_ip = st.peer_ip()
            client.peer_port = st.peer_port()
        else:
            self.loop = get_running_loop()
            peer = transport.get_extra_info("peername")
            ip = peer[0] if peer else "0.0.0.0"
            if ip.startswith("::ffff:") and "." in ip:
                ip = ip[7:]
            client.peer_ip = ip.encode()
            client.peer_port = PyBytes_FromFormat("%d", <int>(peer[1] if peer else 0))
        self.client = client
        # TLS listeners hand over TLS transports only: no need to ask the transport.
        self.is_tls = lrt.ssl_ctx is not None
        # lbcore's TLS transport answers from C; another (tests) as an SSLObject.
        cdef TlsTransport tt = None
        cdef int v
        sslobj = None
        if self.is_tls:
            if isinstance(transport, TlsTransport):
                tt = <TlsTransport>transport
            else:
                sslobj = transport.get_extra_info("ssl_object")
        lrt.conns.add(self)
        if lrt.counters is not None:
            inc(lrt.counters, lrt.cbase + O_CONN_TOTAL)
            add(lrt.counters, lrt.cbase + O_CONN_ACTIVE, 1)
            if tt is not None:
                v = tt.tls_version()
                if v >= 0:
                    inc(lrt.counters, lrt.cbase + C_TLS_VERSIONS + v)
            elif sslobj is not None:
                cell = TLS_VERSION_CELL.get(sslobj.version())
                if cell is not None:
                    inc(lrt.counters, lrt.cbase + <Py_ssize_t>cell)
        if lrt.sni_guard is not None:
            client.sni_name = tt.sni() if tt is not None else getattr(
                sslobj, "lbcore_sni", None)
        if lrt.hooks & K_ON_ACCEPT and not lrt.phases.on_accept(client.peer_ip.decode(),
                                                                int(client.peer_port)):
            self.closed = True
            transport.abort()
            return 0
        if self.is_tls:
            if tt.alpn_h2() if tt is not None else (
                    sslobj is not None and sslobj.selected_alpn_protocol() == "h2"):
                # ALPN chose HTTP/2: hand the connection to the HTTP/2 framing.
                self.closed = True
                self.handed_off = True      # H2Connection counts this connection's end
                h2conn = H2Connection(client)
                lrt.conns.discard(self)
                lrt.conns.add(h2conn)
                self.st = None
                transport.set_protocol(h2conn)
                h2conn.connection_made(transport)
                return 0
        # (Made only now: the timer, which holds this protocol, would tie a
        # connection handed to HTTP/2 into a cycle only the cyclic GC frees.)
        self.timer = owned_timer(self.loop, self)
        self.parser = RequestParser.__new__(RequestParser)
        self.parser.start(HTTP_REQUEST, <void*>self)
        # (A connection whose handshake ends after a drain began still gets
        # its first request answered, with Connection: close.)
        self.idle = True
        self.last_activity = monotonic()        # loop.time()'s clock, without a Python call
        self.req_start = self.last_activity
        self._schedule(self.last_activity + self.lrt.request_timeout)
        return 0

    def data_received(self, bytes data):
        self.buffer_received(PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))

    cdef int buffer_received(self, const char* at, Py_ssize_t n) except -1:
        """A read from the client, in place (lbcore's transports: the worker's
        read buffer) or from data_received: parsed where it lies; what must
        outlive it (a cut field, the target, body pieces) is copied."""
        self.last_activity = monotonic()
        if self.tunnel is not None:
            self.tunnel.tunnel_write(PyBytes_FromStringAndSize(at, n))
            return 0
        if self.stop_parsing or self.closed:
            return 0
        cdef RequestParser parser = self.parser
        cdef int err = parser.execute(at, n)
        if parser.cb_error is not None:
            exc, parser.cb_error = parser.cb_error, None
            if not isinstance(exc, ValueError):
                self.loop.call_exception_handler({
                    "message": "lbcore HTTP/1.1: error in a parser callback",
                    "exception": exc, "protocol": self})
        if err == HPE_OK:
            if (self.in_request_line and self.req is not None and self.req.target is not None
                    and parser.p.http_major == 0 and memchr(at, 10, n) != NULL):
                # llhttp takes "GET /\r\n" as HTTP/0.9 and waits for headers;
                # HTTP/0.9 has no place at a proxy's edge.
                self._send_error(400, None)
            return 0
        cdef Py_ssize_t pos
        if err == HPE_PAUSED_UPGRADE:
            # An upgrade request's head is parsed; the rest belongs to the tunnel
            # if the member answers 101. Either way no more HTTP on this connection.
            self.stop_parsing = True
            pos = LL.get_error_pos(&parser.p) - at
            LL.resume_after_upgrade(&parser.p)
            if 0 <= pos < n:
                rest = PyBytes_FromStringAndSize(at + pos, n - pos)
                self.tunnel_pending = rest if self.tunnel_pending is None else (
                    self.tunnel_pending + rest)
            return 0
        if self.error_code == 0 and (self.stop_parsing or self.closed):
            return 0                    # stopped by a callback: the connection is done
        self._send_error(self.error_code or 400, None)
        return 0

    def eof_received(self):
        # Half-close from the client: finish what is in flight, then close.
        # Mid-body, the request can never complete: end its exchange now and
        # free its member connection (not at request_timeout).
        self.stop_parsing = True
        if self.parsing is not None:
            self._abort_exchanges(None)
            self.parsing.abort()
            self.parsing = None
        if self.active is None:
            self.closed = True
            self._t_close()
        # Over TLS a half-close can't be kept: the transport closes itself.
        return not self.is_tls

    def connection_lost(self, exc):
        self.lost(exc)

    cdef int lost(self, object exc) except -1:
        if self.lrt.counters is not None and self.client is not None and not self.handed_off:
            add(self.lrt.counters, self.lrt.cbase + O_CONN_ACTIVE, -1)
        if not self.handed_off:
            self.lrt.conns.discard(self)
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
        self._abort_exchanges(None)
        if self.parsing is not None:
            self.parsing.abort()
        self.parsing = None
        # The timer holds this protocol: drop it so reference counting frees
        # the connection instead of the cyclic GC.
        self.parser = None
        self.timer = None
        self.tunnel = None
        self.st = None
        return 0

    # The transport, from C when it is lbcore's own (no Python method call).
    cdef int _t_write(self, object data) except -1:
        if self.st is not None:
            self.st.write(data)
        else:
            self.transport.write(data)
        return 0

    cdef int _t_write_at(self, const char* p, Py_ssize_t n) except -1:
        if self.st is not None:
            self.st.write_at(p, n)
        else:
            self.transport.write(PyBytes_FromStringAndSize(p, n))
        return 0

    cdef int _t_close(self) except -1:
        if self.st is not None:
            self.st.close()
        else:
            self.transport.close()
        return 0

    cdef int _t_abort(self) except -1:
        if self.st is not None:
            self.st.abort()
        else:
            self.transport.abort()
        return 0

    cdef int _t_pause(self) except -1:
        if self.st is not None:
            self.st.pause_reading()
        else:
            self.transport.pause_reading()
        return 0

    cdef int _t_resume(self) except -1:
        if self.st is not None:
            self.st.resume_reading()
        else:
            self.transport.resume_reading()
        return 0

    def pause_writing(self):
        # The client reads slower than the backend sends: stop reading the backend.
        if self.active is not None:
            self.active.pause_upstream()

    def resume_writing(self):
        if self.active is not None:
            self.active.resume_upstream()

    # ---- llhttp callbacks ---------------------------------------------------------

    def drain(self):
        """Graceful stop, called until the connection is gone: a busy one
        answers with Connection: close and closes after; an idle one closes
        once it has been quiet for DRAIN_IDLE_GRACE. Closing the instant the
        response went out would race a client already sending its next request
        on the connection (it would see a reset and no answer)."""
        if self.closed or self.handed_off:
            return
        if (self.idle and self.active is None and self.parsing is None and self.tunnel is None
                and self.loop.time() - self.last_activity >= DRAIN_IDLE_GRACE):
            self.stop_parsing = True
            self._close()

    # ---- what the llhttp callbacks call: 0, or -1 to stop parsing (-2: an exception) --

    cdef int _message_begin(self) except -2:
        if self.stop_parsing or self.closed:
            return -1                   # (a request after one that ended the connection)
        self.idle = False
        self.in_request_line = True
        self.req = Request.new(self.client)
        self.req_start = self.last_activity
        self._schedule(self.req_start + self.lrt.request_timeout)
        return 0

    cdef int _url(self, const char* at, size_t n) except -2:
        cdef Request req = self.req
        if req.method is None:
            req.method = method_bytes(self.parser.p.method)
        cdef int code = req.add_target(PyBytes_FromStringAndSize(at, n))
        if code:
            self.error_code = code
            return -1
        return 0

    cdef int _field(self, const char* name, Py_ssize_t nn, const char* value,
                    Py_ssize_t vn) except -2:
        """A field's name and value are complete: one C call into the core."""
        self.in_request_line = False
        cdef int code = self.req.field_raw(name, nn, value, vn)
        if code:
            self.error_code = code
            return -1
        return 0

    cdef int _headers_complete(self) except -2:
        """Returns 1 for an upgrade request (no body: what follows its head
        is the tunnel's), else 0 or -1."""
        cdef ListenerRuntime lrt = self.lrt
        cdef Request req = self.req
        cdef Exchange ex
        cdef llhttp_t* p = &self.parser.p
        cdef bint keep = LL.should_keep_alive(p)
        self.in_request_line = False
        # A persistent request without an explicit keep-alive token can only
        # be HTTP/1.1.
        if p.http_major == 1 and p.http_minor == 1:
            req.version = "1.1"
        elif p.http_major == 1 and p.http_minor == 0:
            req.version = "1.0"
        else:
            # HTTP/0.9-style request lines ("GET /a" then fields), however
            # the bytes arrived: never forwarded as HTTP/1.1.
            self.error_code = 400
            return -1
        req.http10 = p.http_minor == 0
        if req.method is None:
            req.method = method_bytes(p.method)
        if req.upgrade is not None and not p.upgrade:
            req.upgrade = None
        cdef int code = req.head_complete()
        if code:
            self.error_code = code
            return -1
        req.keep_alive = (keep and lrt.idle_timeout > 0
                          and not self.stop_parsing and not lrt.draining)
        if req.decide() == D_ANSWER:
            self._answer_directly(req)
            return 1 if p.upgrade else 0
        ex = Exchange.new(self, req)
        self.parsing = ex
        self.req_start = 0.0
        if self.active is None:
            self.active = ex
            ex.start()
            return 1 if p.upgrade else 0
        if self.waiting is None:
            self.waiting = []
        self.waiting.append(ex)
        if not self.reading_paused:
            # Pipelined: hold further requests until the ones before are answered.
            self.reading_paused = True
            self._t_pause()
        return 1 if p.upgrade else 0

    cdef int _body(self, const char* at, size_t n) except -2:
        cdef int code = self.req.body_bytes(n)
        if code:
            self.error_code = code
            return -1
        if self.parsing is not None:
            self.parsing.feed_body(PyBytes_FromStringAndSize(at, n))
        return 0

    cdef int _message_complete(self) except -2:
        cdef Exchange ex = self.parsing
        self.parsing = None
        self.req = None
        self.idle = True
        if ex is not None:
            if not ex.client_keep_alive:
                self.stop_parsing = True
            ex.body_done()
        return 0

    # ---- answers of our own -------------------------------------------------------

    cdef int _answer_directly(self, Request req) except -1:
        """decide() answered (a forwarding policy's redirect or fixed
        response, a hook's page). Without a body, and with keep-alive, the
        connection carries on (a redirect or a health page costs no new
        connection); a body is not read, so the connection closes after.
        Behind pipelined requests still in flight, the answer waits its turn."""
        cdef bint keep = req.keep_alive and not req.has_body and self.active is None
        if self.active is not None:
            self.stop_parsing = True
            self.pending_answer = req
            if not self.reading_paused:
                self.reading_paused = True
                self._t_pause()
            return 0
        if not keep:
            self.stop_parsing = True
        self._out(local_response(req.answer_status, req.answer_lines, req.answer_body,
                                 req.is_head(), not keep))
        req.answered(req.answer_status, False)
        if keep:
            self._after_exchange()
        else:
            self._close()
        return 0

    # ---- what the Exchange calls --------------------------------------------------

    cdef int _out(self, object data) except -1:
        if self.closed:
            return 0
        if not self.corked:
            self._t_write(data)
        elif type(data) is bytes:
            self._out_at(PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
        else:
            self._out(bytes(data))
        return 0

    cdef int _out_at(self, const char* p, Py_ssize_t n) except -1:
        """_out() of the bytes at p: corked, onto what waits (no object)."""
        if self.closed:
            return 0
        if not self.corked:
            self._t_write_at(p, n)
            return 0
        if self.wba is None:
            self.wba = new_ba(n if n > HEAD_RESERVE else HEAD_RESERVE)
        put_at(self.wba, p, n)
        return 0

    cdef int ds_cork(self) except -1:
        self.corked = True
        return 0

    cdef int ds_uncork(self) except -1:
        """What was written while corked (a response's head and what of its
        body one read of the member held) leaves in one send, from the one
        buffer it was gathered in."""
        cdef bytearray out = self.wba
        self.corked = False
        if out is not None:
            self.wba = None
            if not self.closed:
                self._t_write_at(PyByteArray_AS_STRING(out), PyByteArray_GET_SIZE(out))
        return 0

    cdef int ds_write(self, object data) except -1:
        self._out(data)
        return 0

    cdef int ds_interim(self, Exchange ex, int status, bytes reason, object rhead) except -1:
        # 100 Continue / 103 Early Hints mean nothing to an HTTP/1.0 client.
        if not ex.client_http10:
            self._out(b"HTTP/1.1 %d %s\r\n%s\r\n" % (status, reason or b"", bytes(rhead or b"")))
        return 0

    cdef int ds_head(self, Exchange ex, int status, bytes reason, object rhead,
                     long long content_length, bint no_body) except -1:
        cdef bytearray out = new_ba(
            HEAD_RESERVE + (len(rhead) if rhead is not None else 0)
            + (content_length if 0 < content_length <= BODY_ROOM and self.corked
               and self.wba is None and not no_body else 0))
        put(out, b"HTTP/1.1 ")
        put_int(out, status)
        put(out, b" ")
        if reason is not None:
            put(out, reason)
        put(out, b"\r\n")
        if rhead is not None:
            put_ba(out, rhead)
        if content_length >= 0:
            put(out, b"Content-Length: ")
            put_int(out, content_length)
            put(out, b"\r\n")
            self.resp_mode = R_PLAIN
        elif no_body:
            self.resp_mode = R_PLAIN
        elif ex.client_http10:
            self.resp_mode = R_CLOSE
            ex.client_keep_alive = False
        else:
            put(out, b"Transfer-Encoding: chunked\r\n")
            self.resp_mode = R_CHUNK
        if self.lrt.draining:
            ex.client_keep_alive = False
        if not ex.client_keep_alive:
            put(out, b"Connection: close\r\n")
        elif ex.client_http10:
            put(out, b"Connection: keep-alive\r\n")
        put(out, b"\r\n")
        if self.closed:
            return 0
        if not self.corked:
            self._t_write_at(PyByteArray_AS_STRING(out), PyByteArray_GET_SIZE(out))
        elif self.wba is None:
            self.wba = out              # (the body is put after the head, in its room)
        else:
            put_ba(self.wba, out)
        return 0

    cdef int ds_body(self, Exchange ex, object data) except -1:
        if self.resp_mode == R_CHUNK:
            self._out(chunk_header(len(data)) + data + b"\r\n")
        else:
            self._out(data)
        return 0

    cdef int ds_body_at(self, Exchange ex, const char* at, Py_ssize_t n) except -1:
        if self.resp_mode == R_CHUNK:
            self._out(chunk_header(n))
            self._out_at(at, n)
            self._out_at("\r\n", 2)
        else:
            self._out_at(at, n)
        return 0

    cdef int ds_end(self, Exchange ex) except -1:
        if self.resp_mode == R_CHUNK:
            self._out(b"0\r\n\r\n")
        return 0

    cdef int ds_exchange_done(self, Exchange ex, bint keep_alive) except -1:
        if self.active is ex:
            self.active = self.waiting.pop(0) if self.waiting else None
        if self.parsing is ex and not keep_alive:
            self.parsing = None
        if not keep_alive:
            self.stop_parsing = True
            self._close()
            return 0
        self._after_exchange()
        return 0

    cdef int _after_exchange(self) except -1:
        cdef Exchange nxt
        cdef Request req
        if self.closed:
            return 0
        if self.active is not None:
            self.active.start()
            return 0
        if self.pending_answer is not None:
            req, self.pending_answer = self.pending_answer, None
            self._out(local_response(req.answer_status, req.answer_lines, req.answer_body,
                                     req.is_head()))
            req.answered(req.answer_status, False)
            self._close()
            return 0
        if self.stop_parsing or self.lrt.draining:
            self._close()
            return 0
        if self.reading_paused:
            self.reading_paused = False
            self._t_resume()
        if self.parsing is None:
            self.last_activity = monotonic()
            self._schedule(self.last_activity + self.lrt.idle_timeout)
        return 0

    cdef int ds_tunnel(self, Exchange ex) except -1:
        self.tunnel = ex
        if self.tunnel_pending is not None:
            ex.tunnel_write(self.tunnel_pending)
            self.tunnel_pending = None
        if self.reading_paused:
            self.reading_paused = False
            self._t_resume()
        self._schedule(self.loop.time() + (self.lrt.idle_timeout or self.lrt.request_timeout))
        return 0

    cdef int ds_deadline(self, double at) except -1:
        self._schedule(at)
        return 0

    cdef int ds_close(self) except -1:
        self._close()
        return 0

    cdef int ds_error(self, Exchange ex, int code, bytes router_code) except -1:
        # The Exchange logs its own errors; their time counts in the histogram.
        cdef double seconds = clock_now() - ex.t_start if ex is not None else -1.0
        cdef Py_ssize_t pbase = ex.pbase if ex is not None else self.lrt.pbase_local
        if ex is not None and ex.gen_reason >= 0:
            count_reason(self.lrt.counters, self.lrt.cbase, pbase, code, ex.gen_reason, seconds)
        else:
            count_response(self.lrt.counters, self.lrt.cbase, pbase, code, True, seconds)
        self._emit_error(code, router_code, ex is not None and ex.is_head_method)
        return 0

    cdef int ds_local(self, Exchange ex, int status, bytes lines, bytes body) except -1:
        """A fail_to_proxy page (counted and logged by the Exchange)."""
        self.stop_parsing = True
        self._abort_exchanges(ex)
        self.parsing = None
        self._out(local_response(status, lines, body, ex.is_head_method))
        self._close()
        return 0

    cdef int ds_abort(self, Exchange ex) except -1:
        """Mid-response failure: the client must see a broken response, never a
        complete-looking one."""
        self.stop_parsing = True
        if not self.closed:
            self.closed = True
            self._t_abort()
        return 0

    cdef int ds_pause_reading(self) except -1:
        if not self.reading_paused and not self.closed:
            self.reading_paused = True
            self._t_pause()
        return 0

    cdef int ds_resume_reading(self) except -1:
        if self.reading_paused and not self.closed and not self.waiting:
            self.reading_paused = False
            self._t_resume()
        return 0

    # ---- errors and time-outs -----------------------------------------------------

    cdef int _send_error(self, int code, bytes router_code) except -1:
        """A refusal found by the framing or the request core (parse error,
        limit, time-out): counted and logged by the core, then the
        connection ends."""
        cdef Request req = self.req
        if req is None:
            req = Request.new(self.client)
        cdef llhttp_t* p
        if req.version is None and self.parser is not None:
            p = &self.parser.p
            if p.http_major == 1 and (p.http_minor == 1 or p.http_minor == 0):
                req.version = "1.1" if p.http_minor == 1 else "1.0"
        req.refused(code)
        self._emit_error(code, router_code, req.is_head())
        return 0

    cdef int _emit_error(self, int code, bytes router_code, bint head) except -1:
        """A generated error ends the connection: after it the stream can't be
        trusted. Counted by the caller (or the request core)."""
        self.stop_parsing = True
        self._abort_exchanges(None)
        if self.parsing is not None:
            self.parsing.abort()
        self.parsing = None
        self._out(error_response(code, router_code, True, head))
        self._close()
        return 0

    cdef int _abort_exchanges(self, Exchange spare) except -1:
        """Every exchange in flight but `spare` is aborted, and all are forgotten."""
        cdef Exchange ex = self.active
        cdef list waiting = self.waiting
        self.active = None
        self.waiting = None
        if ex is not None and ex is not spare:
            ex.abort()
        if waiting:
            for ex in waiting:
                if ex is not spare:
                    ex.abort()
        return 0

    cdef int _close(self) except -1:
        if self.wba is not None:
            self.ds_uncork()
        if not self.closed:
            self.closed = True
            if self.timer is not None:
                self.timer.cancel()
            self._t_close()
        return 0

    cdef int _schedule(self, double at) except -1:
        if not self.closed:
            self.timer.schedule(at)
        return 0

    cdef int on_timer(self) except -1:
        self._on_timer()
        return 0

    def _on_timer(self):
        if self.closed:
            return
        cdef ListenerRuntime lrt = self.lrt
        cdef double now = self.loop.time()
        cdef double due = NEVER, d
        cdef Exchange ex
        if self.tunnel is not None:
            limit = lrt.idle_timeout or lrt.request_timeout
            d = max(self.last_activity, self.tunnel.last_read) + limit
            if now >= d:
                self.tunnel.abort()
                self._close()
                return
            self._schedule(d)
            return
        if self.req_start > 0.0:                    # header phase
            d = self.req_start + lrt.request_timeout
            if now >= d:
                inc(lrt.counters, lrt.cbase + O_TIMEOUT_REQUEST)
                self._send_error(408, None)
                return
            due = d
        elif self.parsing is not None:              # body phase
            d = self.last_activity + lrt.request_timeout
            if now >= d:
                # Spec 2: a gap in the body closes the connection (408 is for the
                # header; a response may already be on its way).
                inc(lrt.counters, lrt.cbase + O_TIMEOUT_REQUEST)
                self._close()
                return
            due = d
        if self.active is not None:                 # an exchange in flight
            ex = self.active
            d = ex.deadline()
            if d > 0.0:
                if now >= d:
                    ex.expire()
                    if self.closed:
                        return
                    d = ex.deadline() if self.active is ex else 0.0
                    if d <= 0.0:
                        d = now + lrt.request_timeout
                due = min(due, d)
            else:
                due = min(due, now + lrt.request_timeout)
        elif self.req_start == 0.0 and self.parsing is None:   # idle keep-alive
            d = self.last_activity + lrt.idle_timeout
            if now >= d:
                inc(lrt.counters, lrt.cbase + O_TIMEOUT_IDLE)
                self._close()
                return
            due = min(due, d)
        if due < NEVER:
            self._schedule(due)


cdef class RequestParser(Parser):
    """llhttp's hooks for a client connection: each hands its part of the
    request to the HttpProtocol that owns this parser."""
    cdef int on_message_begin(self) except -2:
        return (<HttpProtocol>self.owner)._message_begin()

    cdef int on_url(self, const char* at, size_t n) except -2:
        return (<HttpProtocol>self.owner)._url(at, n)

    cdef int on_field(self, const char* name, Py_ssize_t nn, const char* value,
                      Py_ssize_t vn) except -2:
        return (<HttpProtocol>self.owner)._field(name, nn, value, vn)

    cdef int on_headers_complete(self) except -2:
        return (<HttpProtocol>self.owner)._headers_complete()

    cdef int on_body(self, const char* at, size_t n) except -2:
        return (<HttpProtocol>self.owner)._body(at, n)

    cdef int on_message_complete(self) except -2:
        return (<HttpProtocol>self.owner)._message_complete()
