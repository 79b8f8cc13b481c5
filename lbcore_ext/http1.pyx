# cython: language_level=3
"""Downstream HTTP/1.1: one protocol object per client connection. Parses with
llhttp (httptools, strict mode), rewrites the request head for the backend in
one buffer, hands it to an Exchange, and writes responses back in order."""

import asyncio

import httptools

from cpython.bytes cimport PyBytes_FromFormat
from lbcore_ext.bufs cimport put, put_ba, put_header, put_int
from lbcore_ext.counters cimport Counters, add, count_response, inc
from lbcore_ext.headers cimport chunk_header, error_response, header_line, reason_phrase
from lbcore_ext.runtime cimport LazyTimer, ListenerRuntime
from lbcore_ext.upstream cimport Downstream, Exchange

from lbcore_ext.counters import (CONN_ACTIVE, CONN_TOTAL, REQUESTS, TIMEOUT_IDLE,
                                 TIMEOUT_REQUEST, TLS_VERSIONS)
from lbcore_ext.http2 import H2Protocol
from lbcore_ext.phases import HOOK_ON_ACCEPT, HOOK_REQUEST_FILTER, RequestView

from lbcore_ext.runtime import (H_CONNECTION, H_COOKIE, H_LOGGED, H_REQUEST_ID, H_UPGRADE, H_CONTENT_LENGTH, H_DROP, H_HOST,
                                H_TRANSFER_ENCODING, H_XFF, TLS_ALPN, TLS_CERT_ID, TLS_CIPHER,
                                TLS_PROTOCOL, XFF_APPEND, XFF_OFF, XFF_PRESERVE)

cdef object get_running_loop = asyncio.get_running_loop
cdef object HttpRequestParser = httptools.HttpRequestParser
cdef object HttpParserError = httptools.HttpParserError
cdef object HttpParserUpgrade = httptools.HttpParserUpgrade

cdef int A_DROP = H_DROP
cdef int A_XFF = H_XFF
cdef int A_HOST = H_HOST
cdef int A_CONNECTION = H_CONNECTION
cdef int A_CL = H_CONTENT_LENGTH
cdef int A_TE = H_TRANSFER_ENCODING
cdef int A_COOKIE = H_COOKIE
cdef int A_UPGRADE = H_UPGRADE
cdef int A_REQUEST_ID = H_REQUEST_ID
cdef int A_LOGGED = H_LOGGED
cdef object wall_time = __import__("time").time
cdef int K_ON_ACCEPT = HOOK_ON_ACCEPT
cdef Py_ssize_t O_CONN_TOTAL = CONN_TOTAL
cdef Py_ssize_t O_CONN_ACTIVE = CONN_ACTIVE
cdef Py_ssize_t O_REQUESTS = REQUESTS
cdef Py_ssize_t O_TIMEOUT_IDLE = TIMEOUT_IDLE
cdef Py_ssize_t O_TIMEOUT_REQUEST = TIMEOUT_REQUEST
cdef dict TLS_VERSION_CELL = {"TLSv1": TLS_VERSIONS, "TLSv1.1": TLS_VERSIONS + 1,
                              "TLSv1.2": TLS_VERSIONS + 2, "TLSv1.3": TLS_VERSIONS + 3}
cdef int K_REQUEST_FILTER = HOOK_REQUEST_FILTER
cdef int M_APPEND = XFF_APPEND
cdef int M_PRESERVE = XFF_PRESERVE
cdef int M_OFF = XFF_OFF

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

# RFC 9110 9.2.2: these may be retried after they were sent.
cdef frozenset IDEMPOTENT = frozenset((b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE",
                                       b"TRACE"))
# RFC 3986 host (reg-name / IP-literal) plus ":" port: anything else in Host is a 400.
cdef bytes HOST_CHARS = (b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                         b"-._~%!$&'()*+,;=:[]")
cdef unsigned char HOST_OK[256]
for _c in range(256):
    HOST_OK[_c] = 1 if bytes((_c,)) in HOST_CHARS else 0


cdef bint valid_host(bytes value):
    cdef const unsigned char* p = value
    cdef Py_ssize_t i, n = len(value)
    if n == 0:
        return False
    for i in range(n):
        if not HOST_OK[p[i]]:
            return False
    return True


# Seconds an idle keep-alive connection must be quiet before a drain closes it.
DEF DRAIN_IDLE_GRACE = 1.0

cdef frozenset KEEP_TOKENS = frozenset((b"close", b"keep-alive", b"upgrade"))


cdef class HttpProtocol(Downstream):
    def __init__(self, ListenerRuntime lrt):
        self.lrt = lrt
        self.wbuf = []
        self.queue = []
        self.cl = -1

    # ---- connection life ----------------------------------------------------------

    def connection_made(self, transport):
        """Called after the TLS handshake on HTTPS listeners (access control
        already ran in the Acceptor, before any TLS byte)."""
        self.transport = transport
        self.loop = get_running_loop()
        self.timer = LazyTimer(self.loop, self._on_timer)
        peer = transport.get_extra_info("peername")
        ip = peer[0] if peer else "0.0.0.0"
        if ip.startswith("::ffff:") and "." in ip:
            ip = ip[7:]
        self.peer_ip = ip.encode()
        self.peer_port = PyBytes_FromFormat("%d", <int>(peer[1] if peer else 0))
        cdef ListenerRuntime lrt = self.lrt
        # TLS listeners hand over TLS transports only: no need to ask the transport.
        self.is_tls = lrt.ssl_ctx is not None
        sslobj = transport.get_extra_info("ssl_object") if self.is_tls else None
        lrt.conns.add(self)
        if lrt.counters is not None:
            inc(lrt.counters, lrt.cbase + O_CONN_TOTAL)
            add(lrt.counters, lrt.cbase + O_CONN_ACTIVE, 1)
            if sslobj is not None:
                cell = TLS_VERSION_CELL.get(sslobj.version())
                if cell is not None:
                    inc(lrt.counters, lrt.cbase + <Py_ssize_t>cell)
        if self.lrt.sni_guard is not None:
            self.sni_name = getattr(sslobj, "lbcore_sni", None)
        if self.lrt.hooks & K_ON_ACCEPT and not self.lrt.phases.on_accept(ip, peer[1]):
            self.closed = True
            transport.abort()
            return
        if self.is_tls:
            if sslobj is not None and sslobj.selected_alpn_protocol() == "h2":
                # ALPN chose HTTP/2: hand the connection to the HTTP/2 protocol.
                self.closed = True
                self.handed_off = True      # H2Protocol counts this connection's end
                h2proto = H2Protocol(self.lrt, self.peer_ip, self.peer_port)
                lrt.conns.discard(self)
                lrt.conns.add(h2proto)
                transport.set_protocol(h2proto)
                h2proto.connection_made(transport)
                return
        self.parser = HttpRequestParser(self)
        # (A connection whose handshake ends after a drain began still gets
        # its first request answered, with Connection: close.)
        self.idle = True
        self.last_activity = self.loop.time()
        self.req_start = self.last_activity
        self._schedule(self.last_activity + self.lrt.request_timeout)

    def data_received(self, bytes data):
        self.last_activity = self.loop.time()
        if self.tunnel is not None:
            self.tunnel.tunnel_write(data)
            return
        if self.stop_parsing or self.closed:
            return
        try:
            self.parser.feed_data(data)
            if (self.in_request_line and self.url is not None and data.find(b"\n") >= 0
                    and self.parser.get_http_version() in ("0.0", "0.9")):
                # llhttp takes "GET /\r\n" as HTTP/0.9 and waits for headers;
                # HTTP/0.9 has no place at a proxy's edge.
                self._send_error(400, None)
        except HttpParserUpgrade as exc:
            # An upgrade request's head is parsed; the rest belongs to the tunnel
            # if the member answers 101. Either way no more HTTP on this connection.
            self.stop_parsing = True
            rest = data[exc.args[0]:]
            if rest:
                self.tunnel_pending = rest if self.tunnel_pending is None else (
                    self.tunnel_pending + rest)
        except HttpParserError:
            self._send_error(self.error_code or 400, None)

    def eof_received(self):
        # Half-close from the client: finish what is in flight, then close.
        self.stop_parsing = True
        if not self.queue:
            self.closed = True
            self.transport.close()
        # Over TLS a half-close can't be kept: the transport closes itself.
        return not self.is_tls

    def connection_lost(self, exc):
        if self.lrt.counters is not None and self.peer_ip is not None and not self.handed_off:
            add(self.lrt.counters, self.lrt.cbase + O_CONN_ACTIVE, -1)
        if not self.handed_off:
            self.lrt.conns.discard(self)
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
        cdef Exchange ex
        for ex in self.queue:
            ex.abort()
        if self.parsing is not None:
            self.parsing.abort()
        self.queue = []
        self.parsing = None
        # The parser and the timer hold bound methods of this protocol: drop them
        # so reference counting frees the connection instead of the cyclic GC.
        self.parser = None
        self.timer = None
        self.tunnel = None

    def pause_writing(self):
        # The client reads slower than the backend sends: stop reading the backend.
        cdef Exchange ex
        if self.queue:
            ex = self.queue[0]
            ex.pause_upstream()

    def resume_writing(self):
        cdef Exchange ex
        if self.queue:
            ex = self.queue[0]
            ex.resume_upstream()

    # ---- llhttp callbacks ---------------------------------------------------------

    def drain(self):
        """Graceful stop, called until the connection is gone: a busy one
        answers with Connection: close and closes after; an idle one closes
        once it has been quiet for DRAIN_IDLE_GRACE. Closing the instant the
        response went out would race a client already sending its next request
        on the connection (it would see a reset and no answer)."""
        if self.closed or self.handed_off:
            return
        if (self.idle and not self.queue and self.parsing is None and self.tunnel is None
                and self.loop.time() - self.last_activity >= DRAIN_IDLE_GRACE):
            self.stop_parsing = True
            self._close()

    def on_message_begin(self):
        self.idle = False
        self.in_request_line = True
        self.url = None
        self.hbuf = bytearray()
        self.nheaders = 0
        self.block_size = 0
        self.host = None
        self.xff = None
        self.cookie = None
        self.upgrade_value = None
        self.request_id = None
        self.user_agent = None
        self.referer = None
        self.conn_tokens = None
        self.keepalive_token = False
        self.cl = -1
        self.chunked = False
        self.bad_te = False
        self.body_seen = 0
        self.req_start = self.last_activity
        self._schedule(self.req_start + self.lrt.request_timeout)

    def on_url(self, bytes url):
        self.url = url if self.url is None else self.url + url
        if len(self.url) > self.lrt.max_request_line:
            self.error_code = 414
            raise ValueError("request line too long")

    def on_header(self, bytes name, bytes value):
        cdef ListenerRuntime lrt = self.lrt
        self.in_request_line = False
        cdef Py_ssize_t size = len(name) + len(value) + 4
        self.nheaders += 1
        self.block_size += size
        if (size > lrt.max_header_size or self.nheaders > lrt.max_headers
                or self.block_size > lrt.max_header_block):
            self.error_code = 431
            raise ValueError("header too large")
        action = lrt.header_actions.get(name.lower())
        if action is None:
            put_header(self.hbuf, name, value)
            return
        cdef int a = action
        if a == A_HOST:
            if self.host is not None:
                self.error_code = 400
                raise ValueError("duplicate Host")
            if not valid_host(value):
                self.error_code = 400
                raise ValueError("invalid Host")
            self.host = value
            put_header(self.hbuf, name, value)
        elif a == A_XFF:
            if lrt.xff_mode == M_PRESERVE or lrt.xff_mode == M_OFF:
                put_header(self.hbuf, name, value)
            elif lrt.xff_mode == M_APPEND:
                self.xff = value if self.xff is None else self.xff + b", " + value
        elif a == A_CONNECTION:
            for tok in value.lower().split(b","):
                tok = tok.strip()
                if tok == b"keep-alive":
                    self.keepalive_token = True
                elif tok and tok not in KEEP_TOKENS:
                    if self.conn_tokens is None:
                        self.conn_tokens = []
                    self.conn_tokens.append(tok)
        elif a == A_COOKIE:
            self.cookie = value if self.cookie is None else self.cookie + b"; " + value
            put_header(self.hbuf, name, value)
        elif a == A_UPGRADE:
            self.upgrade_value = value
        elif a == A_REQUEST_ID or a == A_LOGGED:
            if a == A_REQUEST_ID:
                self.request_id = value
            elif name.lower() == b"user-agent":
                self.user_agent = value
            else:
                self.referer = value
            put_header(self.hbuf, name, value)
        elif a == A_CL:
            # llhttp already refuses duplicates and CL with TE.
            self.cl = int(value)
        elif a == A_TE:
            if value.strip().lower() == b"chunked":
                self.chunked = True
            else:
                self.bad_te = True
        # A_DROP: hop-by-hop or owned by lbcore: never forwarded.

    def on_headers_complete(self):
        cdef ListenerRuntime lrt = self.lrt
        cdef Exchange ex
        parser = self.parser
        self.in_request_line = False
        inc(lrt.counters, lrt.cbase + O_REQUESTS)
        if self.bad_te:
            self.error_code = 501
            raise ValueError("transfer coding other than chunked")
        # httptools' get_http_version() formats a str each call; the common
        # case needs none: a persistent request without an explicit
        # keep-alive token can only be HTTP/1.1.
        if parser.should_keep_alive() and not self.keepalive_token:
            self.version = "1.1"
        else:
            self.version = parser.get_http_version()
        http10 = self.version == "1.0"
        if self.host is None and not http10:
            self.error_code = 400
            raise ValueError("HTTP/1.1 request without Host")
        if self.cl > lrt.max_body:
            self.error_code = 413
            raise ValueError("body too large")
        if lrt.sni_guard is not None and lrt.sni_guard.misdirected(self.sni_name, self.host):
            self.error_code = 421
            raise ValueError("Host names another certificate than the handshake's SNI")
        method = parser.get_method()
        if method == b"CONNECT":
            self.error_code = 405
            raise ValueError("CONNECT at a reverse proxy")
        if self.upgrade_value is not None and (
                not parser.should_upgrade() or self.upgrade_value.lower().find(b"h2c") >= 0):
            # No h2c (spec 9): a cleartext HTTP/2 tunnel would carry requests past
            # every rule of this proxy ("h2c smuggling"). Forwarded without Upgrade.
            self.upgrade_value = None
        keep_alive = parser.should_keep_alive() and lrt.idle_timeout > 0
        if self.stop_parsing or lrt.draining:
            keep_alive = False
        has_body = self.chunked or self.cl > 0
        view = None
        if lrt.hooks:
            view = RequestView(method, self.url, self.version,
                               self.peer_ip.decode(), int(self.peer_port), lrt.name,
                               bytes(self.hbuf))
            if lrt.hooks & K_REQUEST_FILTER:
                answer = lrt.phases.request_filter(view)
                if answer is not None:
                    self._answer_directly(answer)
                    return
        if lrt.access_log is not None:
            self._access_meta(method)
        ex = Exchange.new(self, lrt, self._build_head(view), method == b"HEAD",
                      method in IDEMPOTENT, has_body, self.chunked, http10, keep_alive)
        ex.view = view
        ex.client_ip = self.peer_ip
        ex.cookie = self.cookie
        ex.upgrade = self.upgrade_value
        ex.meta = self.meta
        self.parsing = ex
        self.queue.append(ex)
        self.req_start = 0.0
        if len(self.queue) == 1:
            ex.start()
        elif not self.reading_paused:
            # Pipelined: hold further requests until the ones before are answered.
            self.reading_paused = True
            self.transport.pause_reading()

    def on_body(self, bytes body):
        self.body_seen += len(body)
        if self.body_seen > self.lrt.max_body:
            self.error_code = 413
            raise ValueError("body too large")
        if self.parsing is not None:
            self.parsing.feed_body(body)

    def on_message_complete(self):
        cdef Exchange ex = self.parsing
        self.parsing = None
        self.idle = True
        if ex is not None:
            if not ex.client_keep_alive:
                self.stop_parsing = True
            ex.body_done()

    # ---- the rewritten head -------------------------------------------------------

    cdef bytes _build_head(self, object view):
        cdef ListenerRuntime lrt = self.lrt
        cdef bytearray out = bytearray(self.parser.get_method())
        put(out, b" ")
        put(out, self.url)
        put(out, b" HTTP/1.1\r\n")
        if self.conn_tokens is None:
            put_ba(out, self.hbuf)
        else:
            # Rare: Connection names more hop-by-hop headers; filter them out.
            for line in bytes(self.hbuf).split(b"\r\n"):
                if line and line.split(b":", 1)[0].strip().lower() not in self.conn_tokens:
                    out += line
                    out += b"\r\n"
        if self.meta is not None and self.request_id is None:
            put_header(out, b"X-Request-ID", self.meta[6])
        if self.upgrade_value is not None:
            put(out, b"Connection: upgrade\r\n")
            put_header(out, b"Upgrade", self.upgrade_value)
        if self.chunked:
            put(out, b"Transfer-Encoding: chunked\r\n")
        elif self.cl >= 0:
            put(out, b"Content-Length: ")
            put_int(out, self.cl)
            put(out, b"\r\n")
        if lrt.tls_fields and self.tls_lines is None:
            self.tls_lines = lrt.tls_lines(self.transport)
        lrt.append_forwarded(out, self.peer_ip, self.peer_port, self.xff, self.host,
                             self.tls_lines, view)
        put(out, b"\r\n")
        return bytes(out)

    cdef int _access_meta(self, bytes method) except -1:
        """What the access log needs of this request, as one tuple (the
        control plane formats it later, in batches)."""
        cdef ListenerRuntime lrt = self.lrt
        if self.tls_info is None:
            sslobj = self.transport.get_extra_info("ssl_object")
            self.tls_info = ((sslobj.version(), sslobj.cipher()[0],
                              getattr(sslobj, "lbcore_sni", None)) if sslobj is not None
                             else (None, None, None))
        rid = self.request_id if self.request_id is not None else lrt.next_request_id()
        self.meta = (wall_time(), self.peer_ip, self.peer_port, method, self.url,
                     self.version, rid, self.user_agent, self.referer,
                     self.xff, self.host, lrt.name, lrt.pool.name, self.tls_info)
        return 0

    def _answer_directly(self, answer):
        """request_filter answered: (status, [(name, value)], body). The request
        body, if any, is not read, so the connection closes after."""
        status, headers, body = answer
        if isinstance(body, str):
            body = body.encode()
        out = bytearray(b"HTTP/1.1 %d %s\r\n" % (status, reason_phrase(status)))
        for name, value in headers or ():
            out += header_line(name, value)
        out += b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
        out += body
        self.stop_parsing = True
        self.transport.write(bytes(out))
        self._close()

    # ---- what the Exchange calls --------------------------------------------------

    cdef int _out(self, object data) except -1:
        if self.closed:
            return 0
        if self.corked:
            self.wbuf.append(data)
        else:
            self.transport.write(data)
        return 0

    cdef int ds_cork(self) except -1:
        self.corked = True
        return 0

    cdef int ds_uncork(self) except -1:
        self.corked = False
        if self.wbuf:
            data = self.wbuf[0] if len(self.wbuf) == 1 else b"".join(self.wbuf)
            self.wbuf = []
            if not self.closed:
                self.transport.write(data)
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
        cdef bytearray out = bytearray(b"HTTP/1.1 ")
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
        self._out(bytes(out))
        return 0

    cdef int ds_body(self, Exchange ex, object data) except -1:
        if self.resp_mode == R_CHUNK:
            self._out(chunk_header(len(data)) + data + b"\r\n")
        else:
            self._out(data)
        return 0

    cdef int ds_end(self, Exchange ex) except -1:
        if self.resp_mode == R_CHUNK:
            self._out(b"0\r\n\r\n")
        return 0

    cdef int ds_exchange_done(self, Exchange ex, bint keep_alive) except -1:
        if self.queue and self.queue[0] is ex:
            self.queue.pop(0)
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
        if self.closed:
            return 0
        if self.queue:
            nxt = self.queue[0]
            nxt.start()
            return 0
        if self.stop_parsing or self.lrt.draining:
            self._close()
            return 0
        if self.reading_paused:
            self.reading_paused = False
            self.transport.resume_reading()
        if self.parsing is None:
            self.last_activity = self.loop.time()
            self._schedule(self.last_activity + self.lrt.idle_timeout)
        return 0

    cdef int ds_tunnel(self, Exchange ex) except -1:
        self.tunnel = ex
        if self.tunnel_pending is not None:
            ex.tunnel_write(self.tunnel_pending)
            self.tunnel_pending = None
        if self.reading_paused:
            self.reading_paused = False
            self.transport.resume_reading()
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
        self._emit_error(code, router_code, self.loop.time() - ex.t_start if ex is not None
                         else -1.0)
        return 0

    cdef int ds_abort(self, Exchange ex) except -1:
        """Mid-response failure: the client must see a broken response, never a
        complete-looking one."""
        self.stop_parsing = True
        if not self.closed:
            self.closed = True
            self.transport.abort()
        return 0

    cdef int ds_pause_reading(self) except -1:
        if not self.reading_paused and not self.closed:
            self.reading_paused = True
            self.transport.pause_reading()
        return 0

    cdef int ds_resume_reading(self) except -1:
        if self.reading_paused and not self.closed and len(self.queue) <= 1:
            self.reading_paused = False
            self.transport.resume_reading()
        return 0

    # ---- errors and time-outs -----------------------------------------------------

    cdef int _send_error(self, int code, bytes router_code) except -1:
        """An error found by the downstream itself (parse, limit, time-out)."""
        cdef ListenerRuntime lrt = self.lrt
        if lrt.access_log is not None and self.peer_ip is not None:
            lrt.access_log.append(((wall_time(), self.peer_ip, self.peer_port, None, self.url,
                                    None, None, None, None, None, self.host, lrt.name,
                                    lrt.pool.name, self.tls_info), code, 0.0, None))
        self._emit_error(code, router_code, -1.0)
        return 0

    cdef int _emit_error(self, int code, bytes router_code, double seconds) except -1:
        """A generated error ends the connection: after it the stream can't be trusted."""
        cdef Exchange ex
        self.stop_parsing = True
        for ex in self.queue:
            ex.abort()
        if self.parsing is not None:
            self.parsing.abort()
        self.queue = []
        self.parsing = None
        self._out(error_response(code, router_code, True))
        count_response(self.lrt.counters, self.lrt.cbase, code, True, seconds)
        self._close()
        return 0

    cdef int _close(self) except -1:
        if self.wbuf:
            self.ds_uncork()
        if not self.closed:
            self.closed = True
            if self.timer is not None:
                self.timer.cancel()
            self.transport.close()
        return 0

    cdef int _schedule(self, double at) except -1:
        if not self.closed:
            self.timer.schedule(at)
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
        if self.queue:                              # an exchange in flight
            ex = self.queue[0]
            d = ex.deadline()
            if d > 0.0:
                if now >= d:
                    ex.expire()
                    if self.closed:
                        return
                    d = ex.deadline() if self.queue and self.queue[0] is ex else 0.0
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
