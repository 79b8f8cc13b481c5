# cython: language_level=3
"""The forwarding core: an Exchange carries one request from a Downstream (an
HTTP/1.1 connection or, later, an HTTP/2 stream) to a member of the pool and
relays the response back, with retries and the connect and response
time-outs. UpstreamConnection is the keep-alive connection to a member."""

include "consts.pxi"

cimport cython

from functools import partial

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE

from lbcore_ext.bufs cimport new_ba, put_header, put_header_at, same_lower
from lbcore_ext.llhttp cimport (HPE_OK, HPE_PAUSED_UPGRADE, HTTP_RESPONSE, Parser, llhttp_api,
                                llhttp_api_t)
from lbcore_ext.clock cimport clock_now, monotonic
from lbcore_ext.balancer cimport (C_STICKY_APP_COOKIE, C_STICKY_LB_COOKIE, C_STICKY_SOURCE_IP,
                                  Member, Pool, cookie_value)
from lbcore_ext.counters cimport Counters, add, add_at, count_response, inc, observe
from lbcore_ext.request cimport Request, answer_parts, local_size
from lbcore_ext.transport cimport Receiver, SocketTransport

from lbcore_ext.transport import tcp_connect

from lbcore_ext.counters import (BYTES_IN, BYTES_OUT, M_ACTIVE, M_BYTES_IN, M_BYTES_OUT,
                                 M_CONN_ACTIVE, M_CONN_TOTAL, M_FAIL, M_HIST, M_REQUESTS,
                                 M_RESP_CLASS, M_RETRIES, R_UPSTREAM_HEADER_TOO_BIG,
                                 RETRY_BUDGET_EXHAUSTED, RETRY_REASON, TIMEOUT_CONNECT,
                                 TIMEOUT_REQUEST, TIMEOUT_RESPONSE, UPSTREAM_HIST, W_LIVE_EXCHANGES,
                                 W_LIVE_MEMBER_CONNS, W_LIVE_MEMBER_IDLE)
from lbcore_ext.phases import (HOOK_ERROR_WHILE_PROXY, HOOK_FAIL_TO_CONNECT, HOOK_FAIL_TO_PROXY,
                               HOOK_LOGGING, HOOK_RESPONSE_FILTER, HOOK_UPSTREAM_PEER)
from lbcore_ext.balancer import RETRY_502, RETRY_503
from lbcore_ext.headers cimport chunk_header, error_response, header_line


cdef extern from "<poll.h>" nogil:
    struct pollfd:
        int fd
        short events
        short revents
    int poll(pollfd* fds, unsigned long nfds, int timeout)
    short POLLIN


cdef extern from "<sys/socket.h>" nogil:
    ssize_t send(int fd, const void* buf, size_t n, int flags)
    int MSG_NOSIGNAL
    int MSG_DONTWAIT

from libc.errno cimport EAGAIN, EINTR, errno


cdef inline bint readable(int fd):
    """Bytes (or an end) wait on a member socket: one poll(), no wait."""
    cdef pollfd p
    if fd < 0:
        return False
    p.fd = fd
    p.events = POLLIN
    p.revents = 0
    return poll(&p, 1, 0) > 0
from lbcore_ext.runtime cimport ListenerRuntime

cdef llhttp_api_t* LL = llhttp_api()
cdef bytes REASON_OK = b"OK"
# The members a first try has tried: none (never appended to; a retry makes its own).
cdef list NONE_TRIED = []

cdef int K_UPSTREAM_PEER = HOOK_UPSTREAM_PEER
cdef Py_ssize_t O_RETRY_REASON = RETRY_REASON
cdef Py_ssize_t O_RETRY_BUDGET_EXHAUSTED = RETRY_BUDGET_EXHAUSTED
cdef int B_RETRY_502 = RETRY_502
cdef int B_RETRY_503 = RETRY_503
cdef Py_ssize_t O_TIMEOUT_CONNECT = TIMEOUT_CONNECT
cdef Py_ssize_t O_TIMEOUT_RESPONSE = TIMEOUT_RESPONSE
cdef Py_ssize_t O_TIMEOUT_REQUEST = TIMEOUT_REQUEST
cdef Py_ssize_t O_UPSTREAM_HIST = UPSTREAM_HIST
cdef Py_ssize_t O_BYTES_IN = BYTES_IN
cdef Py_ssize_t O_BYTES_OUT = BYTES_OUT
# A member block's cells (counters.M_*).
cdef Py_ssize_t O_M_REQUESTS = M_REQUESTS
cdef Py_ssize_t O_M_RESP_CLASS = M_RESP_CLASS
cdef Py_ssize_t O_M_FAIL = M_FAIL
cdef Py_ssize_t O_M_RETRIES = M_RETRIES
cdef Py_ssize_t O_M_HIST = M_HIST
cdef Py_ssize_t O_M_ACTIVE = M_ACTIVE
cdef Py_ssize_t O_M_CONN_ACTIVE = M_CONN_ACTIVE
cdef Py_ssize_t O_M_CONN_TOTAL = M_CONN_TOTAL
cdef Py_ssize_t O_M_BYTES_IN = M_BYTES_IN
cdef Py_ssize_t O_M_BYTES_OUT = M_BYTES_OUT
cdef int G_TOO_BIG = R_UPSTREAM_HEADER_TOO_BIG
# Live objects, counted in the worker's cells (leak checks in the tests).
cdef Py_ssize_t O_LIVE_EX = W_LIVE_EXCHANGES
cdef Py_ssize_t O_LIVE_MC = W_LIVE_MEMBER_CONNS
cdef Py_ssize_t O_LIVE_IDLE = W_LIVE_MEMBER_IDLE
cdef int K_RESPONSE_FILTER = HOOK_RESPONSE_FILTER
cdef int K_FAIL_TO_CONNECT = HOOK_FAIL_TO_CONNECT
cdef int K_ERROR_WHILE_PROXY = HOOK_ERROR_WHILE_PROXY
cdef int K_FAIL_TO_PROXY = HOOK_FAIL_TO_PROXY
cdef int K_LOGGING = HOOK_LOGGING
cdef tuple FAILURE_NAMES = (None, "refused", "connect_timeout", "lost", "response_timeout",
                            "invalid_response", "header_too_big", "status_502", "status_503")

# Exchange.state
DEF S_NEW = 0
DEF S_CONNECTING = 1
DEF S_SENDING = 2        # upstream attached, request body still streaming
DEF S_WAITING = 3        # request sent, waiting for/relaying the response
DEF S_DONE = 4
DEF S_BUFFERING = 5     # reading the request body before a member is chosen
DEF S_TUNNEL = 5       # 101 Switching Protocols: raw bytes both ways


# Failure kinds (decide retry and the final status).
DEF F_REFUSED = 1        # connect failed: nothing was sent
DEF F_CONNECT_TIMEOUT = 2
DEF F_LOST = 3           # connection closed/reset before any response byte
DEF F_RESPONSE_TIMEOUT = 4
DEF F_INVALID = 5        # malformed response
DEF F_TOO_BIG = 6        # response head (with its interim responses) over the limit
DEF F_STATUS_502 = 7     # the member answered 502 / 503 (retried only if the pool asks)
DEF F_STATUS_503 = 8


cdef inline Py_ssize_t member_block(Member m, Py_ssize_t listener):
    """The member's block for the listener at that position, or -1."""
    cdef tuple cells = m.cells
    if cells is None or listener < 0 or listener >= len(cells):
        return -1
    return <Py_ssize_t>cells[listener]


cdef inline double since(double t, double now):
    """Seconds from `t` to `now`; -1 (logged "-") when `t` never happened."""
    return now - t if t > 0.0 else -1.0


cdef inline int retry_reason(int kind):
    """A failure's index in counters.RETRY_REASONS (bit of Pool.retry_on);
    -1: never retried."""
    if kind == F_REFUSED or kind == F_CONNECT_TIMEOUT:
        return 0
    if kind == F_LOST:
        return 1
    if kind == F_RESPONSE_TIMEOUT:
        return 2
    if kind == F_STATUS_502:
        return 3
    if kind == F_STATUS_503:
        return 4
    return -1

# Response headers that are hop-by-hop (RFC 9110 7.6.1) or re-framed by us.
DEF R_RELAY = 0             # relayed as it came (most: Server, Date, Content-Type...)
DEF R_HOP = 1               # hop-by-hop: dropped (Connection and Upgrade are read)
DEF R_CHUNKED = 2           # Transfer-Encoding: re-framed by us
DEF R_LENGTH = 3            # Content-Length: re-framed by us
DEF R_SET_COOKIE = 4        # relayed, and read for application-cookie stickiness
DEF R_CONNECTION = 5
DEF R_UPGRADE = 6


cdef int response_field_kind(const char* name, Py_ssize_t n) noexcept:
    """What a response field is to the relay, by its name (no bytes object made)."""
    if n == 14:
        return R_LENGTH if same_lower(name, "content-length", 14) else R_RELAY
    if n == 10:
        if same_lower(name, "set-cookie", 10):
            return R_SET_COOKIE
        if same_lower(name, "connection", 10):
            return R_CONNECTION
        return R_HOP if same_lower(name, "keep-alive", 10) else R_RELAY
    if n == 17:
        return R_CHUNKED if same_lower(name, "transfer-encoding", 17) else R_RELAY
    if n == 7:
        if same_lower(name, "upgrade", 7):
            return R_UPGRADE
        return R_HOP if same_lower(name, "trailer", 7) else R_RELAY
    if n == 2:
        return R_HOP if same_lower(name, "te", 2) else R_RELAY
    if n == 16:
        return R_HOP if same_lower(name, "proxy-connection", 16) else R_RELAY
    return R_RELAY


cdef class Downstream(Receiver):
    cdef int ds_write(self, object data) except -1:
        raise NotImplementedError

    cdef int ds_exchange_done(self, Exchange ex, bint keep_alive) except -1:
        raise NotImplementedError

    cdef int ds_error(self, Exchange ex, int code, bytes router_code) except -1:
        raise NotImplementedError

    cdef int ds_local(self, Exchange ex, int status, bytes lines, bytes body) except -1:
        raise NotImplementedError

    cdef int ds_abort(self, Exchange ex) except -1:
        raise NotImplementedError

    cdef int ds_pause_reading(self) except -1:
        raise NotImplementedError

    cdef int ds_resume_reading(self) except -1:
        raise NotImplementedError

    cdef int ds_tunnel(self, Exchange ex) except -1:
        raise NotImplementedError

    cdef int ds_interim(self, Exchange ex, int status, bytes reason, object rhead) except -1:
        raise NotImplementedError

    cdef int ds_head(self, Exchange ex, int status, bytes reason, object rhead,
                     long long content_length, bint no_body) except -1:
        raise NotImplementedError

    cdef int ds_body(self, Exchange ex, object data) except -1:
        raise NotImplementedError

    cdef int ds_body_at(self, Exchange ex, const char* at, Py_ssize_t n) except -1:
        return self.ds_body(ex, PyBytes_FromStringAndSize(at, n))

    cdef int ds_end(self, Exchange ex) except -1:
        raise NotImplementedError

    cdef int ds_cork(self) except -1:
        return 0

    cdef int ds_deadline(self, double at) except -1:
        raise NotImplementedError

    cdef int ds_uncork(self) except -1:
        return 0

    cdef int ds_close(self) except -1:
        raise NotImplementedError


@cython.freelist(64)
cdef class Exchange:
    @staticmethod
    cdef Exchange new(Downstream ds, Request req):
        """Built once per request from the decided Request: __new__ and C
        assignments, no Python argument parsing."""
        cdef Exchange self = Exchange.__new__(Exchange)
        cdef ListenerRuntime lrt = req.lrt
        self.ds = ds
        self.req = req
        self.lrt = lrt
        self.pool = req.pool
        self.pbase = req.pbase
        self.loop = ds.loop
        self.head = req.upstream_head()
        self.is_head_method = req.is_head()
        self.idempotent = req.idempotent()
        self.has_body = req.has_body
        self.req_chunked = req.chunked
        self.client_http10 = req.http10
        self.client_keep_alive = req.keep_alive
        self.state = S_NEW
        self.resp_cl = -1
        self.gen_reason = -1
        self.mbase = -1
        self.t_start = monotonic()
        add(lrt.counters, O_LIVE_EX, 1)
        return self

    def __dealloc__(self):
        if self.retrying and self.pool is not None:
            self.pool.retrying -= 1     # (every end releases it first: a backstop)
        if self.lrt is not None:
            add(self.lrt.counters, O_LIVE_EX, -1)

    # ---- driven by the downstream -------------------------------------------------

    cdef int start(self) except -1:
        cdef Pool pool = self.pool
        cdef Member m = None
        if pool.buffer_max and self.has_body and not self.req_done and self.state == S_NEW \
                and not self.buffered:
            # Request buffering: the body first, then the member (spec 13.3).
            self.state = S_BUFFERING
            self.t_buffer = monotonic()
            self.ds.ds_deadline(self.t_buffer + pool.buffer_timeout)
            return 0
        if self.lrt.hooks & K_UPSTREAM_PEER:
            choice = self.lrt.phases.upstream_peer(self.req.view, pool.members)
            if isinstance(choice, str):
                # The hook chose another pool: its algorithm picks the member.
                pool = self.pool = self.lrt.pools[choice]
                self.pbase = self.lrt.pool_bases.get(choice, self.pbase)
                self.req.view.pool = choice
            elif choice is not None:
                m = choice
        if m is None:
            m = pool.pick(self.tried if self.tried is not None else NONE_TRIED,
                          self.req.client.peer_ip, self.req.cookie)
        if m is None:
            self.state = S_DONE
            # ELB's x-router-code: 40000 the default pool is empty, 40001 the
            # matched policy's pool is, 50000 no member is usable.
            router_code = (b"50000" if pool.members else
                           b"40001" if self.req.policy is not None else b"40000")
            self._error(503, router_code)
            return 0
        if pool.sticky == C_STICKY_SOURCE_IP:
            self.sticky_bound = True
        elif self.req.cookie is not None and pool.sticky:
            self.sticky_bound = pool.sticky_member(self.req.cookie) is m
        self._assign(m)
        self._acquire()
        return 0

    cdef int _assign(self, Member m) except -1:
        """Member.active counts requests from pick to end, connecting included,
        so least-connections sees load as soon as it is decided."""
        if self.member is not None:
            self.member.active -= 1
            add_at(self.lrt.counters, self.mbase, O_M_ACTIVE, -1)
        self.member = m
        if m is not None:
            m.active += 1
            self.mbase = member_block(m, self.lrt.index)
            add_at(self.lrt.counters, self.mbase, O_M_ACTIVE, 1)
        else:
            self.mbase = -1
        if m is None and self.retrying:             # the end of the request: out of the retry budget
            self.retrying = False
            self.pool.retrying -= 1
        return 0

    cdef int feed_body(self, object data) except -1:
        if self.state == S_DONE or self.body_dropped:
            return 0
        if self.body_buf is None:
            self.body_buf = []
        if self.state == S_BUFFERING:
            self.body_buf.append(data)
            self.body_buf_len += len(data)
            if self.body_buf_len > self.pool.buffer_max:
                self._end_buffering()       # more than it buffers: streamed from here
            return 0
        if self.state == S_SENDING and not self.body_held and not readable(self.conn.sock()):
            self._write_body(data)
        else:
            if self.state == S_SENDING and not self.body_held:
                self._hold_body()
            self.body_buf.append(data)
            self.body_buf_len += len(data)
            if self.body_buf_len > BODY_BUFFER_HIGH:
                self.ds.ds_pause_reading()
        return 0

    cdef int body_done(self) except -1:
        self.req_done = True
        if self.state == S_BUFFERING:
            return self._end_buffering()
        if self.body_dropped or self.body_held:
            return 0
        if self.state == S_SENDING:
            if self.req_chunked:
                self.conn.transport.write(self._last_chunk())
            self.state = S_WAITING
            self.last_read = monotonic()
            self._arm(self.lrt.response_timeout)
        return 0

    cdef int _end_buffering(self) except -1:
        """The body is in (or more than the pool buffers): choose the member
        now, and send it what was read."""
        self.buffered = True
        self.state = S_NEW
        self.start()
        if self.state == S_CONNECTING and self.body_buf_len > BODY_BUFFER_HIGH:
            self.ds.ds_pause_reading()
        return 0

    cdef int abort(self) except -1:
        """The client went away: drop the upstream side without reuse."""
        if self.state == S_DONE:
            return 0
        # A connect in flight is not cancelled: uvloop may already have called
        # connection_made, and a cancelled create_connection then closes the
        # transport without connection_lost, leaving the member connection to
        # the cyclic GC. _connected closes it when it completes.
        self.state = S_DONE
        if self.conn is not None:
            self._release(False)
        self._assign(None)
        return 0

    cdef int _hold_body(self) except -1:
        """The member sent something while the body is still going to it:
        most likely a final answer (a 413) before it closes, and a write now
        could meet its reset and lose that answer. Hold the body (buffered,
        the client paused past BODY_BUFFER_HIGH) until the head is read: a
        final one drops the body, an interim one (100 Continue) releases it."""
        self.body_held = True
        return 0

    cdef int _release_body(self) except -1:
        self.body_held = False
        self._send_buffered()
        return 0

    cdef bint _send_buffered(self) except -1:
        """The body buffered so far, then, if the request is complete, its
        end and the wait for the response (True)."""
        if self.body_buf:
            buf = self.body_buf
            self.body_buf = []
            self.body_buf_len = 0
            for chunk in buf:
                self._write_body(chunk)
            self.ds.ds_resume_reading()
        if not self.req_done:
            return False
        if self.req_chunked:
            self.conn.transport.write(self._last_chunk())
        self.state = S_WAITING
        self.last_read = monotonic()
        self._arm(self.lrt.response_timeout)
        return True

    cdef bytes _last_chunk(self):
        """The chunked body's end (counted: the caller writes it)."""
        cdef bytes out = b"0\r\n\r\n"
        if self.req.trailers is not None:
            out = b"0\r\n" + self.req.trailers + b"\r\n"
        self._up_out(len(out))
        return out

    cdef int pause_upstream(self) except -1:
        if self.conn is not None and not self.conn.closed and not self.conn.read_paused:
            self.conn.read_paused = True
            self.conn.transport.pause_reading()
        return 0

    cdef int resume_upstream(self) except -1:
        if self.conn is not None and not self.conn.closed and self.conn.read_paused:
            self.conn.read_paused = False
            self.conn.transport.resume_reading()
        return 0

    # ---- upstream connection ------------------------------------------------------

    cdef int _begin_try(self) except -1:
        self.t_try = monotonic()
        self.t_connected = 0.0
        self.t_header = 0.0
        add_at(self.lrt.counters, self.mbase, O_M_REQUESTS, 1)
        return 0

    cdef int _up_out(self, Py_ssize_t n) except -1:
        """`n` bytes were written to the member."""
        add_at(self.lrt.counters, self.mbase, O_M_BYTES_OUT, n)
        return 0

    cdef int _down_out(self, long long n, bint body) except -1:
        """`n` bytes of the response went to the client."""
        if body:
            self.tx_body += n
        else:
            self.tx_head += n
        add(self.lrt.counters, self.lrt.cbase + O_BYTES_OUT, n)
        return 0

    cdef int _acquire(self) except -1:
        cdef Member m = self.member
        cdef UpstreamConnection c
        cdef double now = monotonic()
        self._begin_try()
        while m.n_idle:
            c = idle_pop(m)
            add(self.lrt.counters, O_LIVE_IDLE, -1)
            if c.closed:
                continue
            if now - c.last_used > UPSTREAM_IDLE_EXPIRY:
                c.close()
                continue
            c.reused = True
            self._attach(c)
            return 0
        self._connect()
        return 0

    cdef int _connect(self) except -1:
        cdef Member m = self.member
        self.state = S_CONNECTING
        factory = partial(UpstreamConnection, m, self.lrt.counters, self.mbase)
        try:
            # On lbcore's own transport (lbcore_ext/transport.pyx), as clients are.
            self.connect_task = tcp_connect(self.loop, m.host, m.port, factory)
        except ValueError:
            # A member named by a host name the loop resolves (DNS members
            # arrive resolved): the loop's transport.
            self.connect_task = self.loop.create_task(
                self.loop.create_connection(factory, m.host, m.port))
        self.connect_task.add_done_callback(self._connected)
        self._arm(self.lrt.connect_timeout)
        return 0

    def _connected(self, task):
        if self.state != S_CONNECTING or task is not self.connect_task:
            if not task.cancelled() and task.exception() is None:
                task.result()[0].close()
            return
        self.connect_task = None
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self._fail(F_REFUSED)
            return
        self._attach(<UpstreamConnection>task.result()[1])

    cdef int _attach(self, UpstreamConnection conn) except -1:
        conn.ex = self
        conn.head_bytes = 0
        self.conn = conn
        if conn.own is not None:
            conn.own.write_at(PyByteArray_AS_STRING(self.head), PyByteArray_GET_SIZE(self.head))
        else:
            conn.write(bytes(self.head))
        self._up_out(PyByteArray_GET_SIZE(self.head))
        self.t_sent = monotonic()
        self.t_connected = self.t_sent
        if not self._send_buffered():
            self.state = S_SENDING
        return 0

    cdef int _write_body(self, object data) except -1:
        cdef UpstreamConnection c = self.conn
        cdef const unsigned char[:] view
        cdef ssize_t n
        self.body_sent = True
        if self.req_chunked:
            data = b"".join((chunk_header(len(data)), data, b"\r\n"))
        self._up_out(len(data))
        cdef int fd = c.sock()
        if fd < 0 or c.transport.get_write_buffer_size():
            c.transport.write(data)     # (behind bytes the transport holds: keep order)
            return 0
        # Sent here, not by the transport, so that a member which answered and
        # reset the connection (a 413 before reading the body) costs this
        # write, not the transport and the answer waiting in its socket.
        if not data:
            return 0
        view = data
        n = send(fd, &view[0], len(view), MSG_NOSIGNAL | MSG_DONTWAIT)
        if n < 0:
            if errno == EAGAIN or errno == EINTR:     # (EWOULDBLOCK is EAGAIN on Linux)
                c.transport.write(data)
            else:
                self._hold_body()       # gone: its answer (or its end) is read next
            return 0
        if n < len(view):
            c.transport.write(data[n:])
        return 0

    # ---- time-outs ----------------------------------------------------------------

    # Deadlines are checked lazily by the downstream's single timer: the common
    # path stamps times and arms nothing (DESIGN: timers on the loop, not per request).

    cdef int _arm(self, double delay) except -1:
        cdef double now = monotonic()
        if self.state == S_CONNECTING:
            self.t_connect = now
        self.ds.ds_deadline(now + delay)
        return 0

    cdef double deadline(self):
        """When this exchange times out if nothing happens; 0 = no deadline."""
        if self.state == S_CONNECTING:
            return self.t_connect + self.lrt.connect_timeout
        if self.state == S_WAITING:
            return self.last_read + self.lrt.response_timeout
        if self.state == S_BUFFERING:
            return self.t_buffer + self.pool.buffer_timeout
        return 0.0

    cdef int expire(self) except -1:
        """The downstream's timer found deadline() passed."""
        if self.state == S_BUFFERING:
            # The body did not arrive within the pool's request_buffering
            # time-out: 408, as for a request the client is too slow to send.
            inc(self.lrt.counters, self.lrt.cbase + O_TIMEOUT_REQUEST)
            self.state = S_DONE
            self.body_buf = []
            self.body_buf_len = 0
            self._error(408, None)
            return 0
        if self.state == S_CONNECTING:
            task = self.connect_task
            self.connect_task = None
            if task is not None:
                task.cancel()
            inc(self.lrt.counters, self.lrt.cbase + O_TIMEOUT_CONNECT)
            self._fail(F_CONNECT_TIMEOUT)
        elif self.state == S_WAITING:
            inc(self.lrt.counters, self.lrt.cbase + O_TIMEOUT_RESPONSE)
            if self.resp_started:
                self.state = S_DONE
                self._release(False)
                self._assign(None)
                self.ds.ds_abort(self)
            else:
                self._fail(F_RESPONSE_TIMEOUT)
        return 0

    # ---- failure, retry, completion -----------------------------------------------

    cdef int _fail(self, int kind) except -1:
        """Nothing reached the client yet: retry where spec 7.2 allows, else answer."""
        cdef bint reused = self.conn is not None and self.conn.reused
        cdef bint sent = kind >= F_LOST
        if kind <= F_TOO_BIG:
            add_at(self.lrt.counters, self.mbase, O_M_FAIL + kind - 1, 1)
        if self.req.meta is not None:
            self._try(FAILURE_NAMES[kind].encode())
        cdef int hooks = self.lrt.hooks
        if hooks & K_FAIL_TO_CONNECT and kind <= F_CONNECT_TIMEOUT:
            self.lrt.phases.fail_to_connect(self.req.view, self.member, FAILURE_NAMES[kind])
        elif hooks & K_ERROR_WHILE_PROXY and kind > F_CONNECT_TIMEOUT:
            self.lrt.phases.error_while_proxy(self.req.view, self.member, FAILURE_NAMES[kind])
        if self.conn is not None:
            self._release(False)
        # A reused keep-alive connection the backend closed under us: the
        # classic race. Retry once on a fresh connection to the same member.
        if (kind == F_LOST and reused and not self.fresh_retry_used
                and (not self.has_body or not self.body_sent)):
            self.fresh_retry_used = True
            self._restart()
            self._begin_try()
            self._connect()
            return 0
        cdef Member m = self._retry_target(kind)
        if m is not None:
            self._retry_on(m, kind)
            return 0
        self.state = S_DONE
        self._assign(None)
        code = 504 if kind in (F_CONNECT_TIMEOUT, F_RESPONSE_TIMEOUT) else 502
        self._error(code, None)
        return 0

    cdef Member _retry_target(self, int kind):
        """The member to retry on, or None: the pool's retries.on and
        max_retries, spec 7.2's rules, another member to go to, the budget."""
        cdef Pool pool = self.pool
        cdef int reason = retry_reason(kind)
        if reason < 0 or not (pool.retry_on >> reason) & 1 or self.retries >= pool.max_retries:
            return None
        # Once the request went out: idempotent methods only, and never a body
        # already streamed (it isn't kept to send again).
        if kind >= F_LOST and (not self.idempotent or (self.has_body and self.body_sent)):
            return None
        if kind == F_RESPONSE_TIMEOUT and self.sticky_bound:
            return None             # spec 7.2: sticky sessions are not retried on time-out
        if self.tried is None:
            self.tried = []
        self.tried.append(self.member)
        cdef Member m = pool.pick(self.tried, self.req.client.peer_ip, None)
        if m is None:
            return None
        if not pool.retry_allowed(self.retrying):
            inc(self.lrt.counters, self.pbase + O_RETRY_BUDGET_EXHAUSTED)
            return None
        return m

    cdef int _retry_on(self, Member m, int kind) except -1:
        if not self.retrying:
            self.retrying = True
            self.pool.retrying += 1
        self.retries += 1
        inc(self.lrt.counters, self.pbase + O_RETRY_REASON + retry_reason(kind))
        # (on the member that failed: it is the one to find on the dashboard)
        add_at(self.lrt.counters, self.mbase, O_M_RETRIES + retry_reason(kind), 1)
        self._restart()
        self._assign(m)
        self._acquire()
        return 0

    cdef _error(self, int code, bytes router_code):
        """Answer with a generated error; fail_to_proxy may supply its own."""
        if self.lrt.hooks & K_FAIL_TO_PROXY:
            custom = self.lrt.phases.fail_to_proxy(self.req.view, code)
            if custom is not None:
                status, lines, body = answer_parts(custom)
                count_response(self.lrt.counters, self.lrt.cbase, self.pbase, status, True,
                               clock_now() - self.t_start)
                n = local_size(status, lines, body, self.is_head_method)
                self._down_out(n - (0 if self.is_head_method else len(body)), False)
                if not self.is_head_method:
                    self._down_out(len(body), True)
                self.ds.ds_local(self, status, lines, body)
                self._log(status)
                return
        cdef bytes page = error_response(code, router_code, True, self.is_head_method)
        cdef long long nbody = 0 if self.is_head_method else len(page) - page.find(b"\r\n\r\n") - 4
        self._down_out(len(page) - nbody, False)
        self._down_out(nbody, True)
        self.ds.ds_error(self, code, router_code)
        self._log(code)

    cdef int _try(self, bytes outcome) except -1:
        """One try ended: (host, port, outcome, connect, header and response
        seconds, member name), each time from the try's start, -1 if the
        try never got there; connect is ~0 on a reused connection."""
        cdef double now = monotonic()
        if self.tries is None:
            self.tries = []
        self.tries.append((self.member.host, self.member.port, outcome,
                           since(self.t_try, self.t_connected) if self.t_connected else -1.0,
                           since(self.t_try, self.t_header) if self.t_header else -1.0,
                           now - self.t_try, self.member.name))
        return 0

    cdef int _log(self, int status) except -1:
        cdef Request req = self.req
        if req.meta is not None:
            if self.member is not None:
                self._try(b"%d" % status)
            self.lrt.access_log.append((req.meta, status, clock_now() - req.t_start,
                                        self.tries, req.rx_bytes() + req.body_seen
                                        + self.rx_tunnel, self.tx_head + self.tx_body,
                                        self.tx_body))
        if self.lrt.hooks & K_LOGGING:
            self.lrt.phases.logging(self.req.view, status, self.member)
        return 0

    cdef _restart(self):
        self.status = 0
        self.head_size = 0
        self.reason = None
        self.rhead = None
        self.resp_cl = -1
        self.resp_chunked = False
        self.resp_close = False
        self.resp_upgrade = None
        self.interim = False

    cdef int _release(self, bint reusable) except -1:
        cdef UpstreamConnection c = self.conn
        self.conn = None
        c.ex = None
        if reusable and not c.closed and self.member.n_idle < UPSTREAM_MAX_IDLE:
            c.last_used = monotonic()
            if c.read_paused:
                c.read_paused = False
                c.transport.resume_reading()
            idle_push(self.member, c)
            add(self.lrt.counters, O_LIVE_IDLE, 1)
        else:
            c.close()
        return 0

    cdef int _finish(self, bint reusable) except -1:
        self.state = S_DONE
        count_response(self.lrt.counters, self.lrt.cbase, self.pbase, self.status, False,
                       clock_now() - self.t_start)
        self._release(reusable)
        if self.lrt.hooks or self.req.meta is not None:
            self._log(self.status)
        self._assign(None)
        self.ds.ds_exchange_done(self, self.client_keep_alive)
        return 0

    # ---- response events from the UpstreamConnection ------------------------------

    cdef int up_status(self, bytes reason) except -1:
        self.reason = reason if self.reason is None else self.reason + reason
        return 0

    cdef int up_header(self, const char* name, Py_ssize_t nn, const char* value,
                       Py_ssize_t vn) except -1:
        """One response field, still in the member's read: relayed by one copy
        into the head, or read for what lbcore re-frames."""
        cdef int kind = response_field_kind(name, nn)
        cdef long long cl = 0
        cdef Py_ssize_t i
        if self.rhead is None:
            self.rhead = new_ba(HEAD_RESERVE)
        if kind == R_RELAY:
            put_header_at(self.rhead, name, nn, value, vn)
        elif kind == R_LENGTH:
            # (llhttp admitted digits only, and no second, different length)
            for i in range(vn):
                if 48 <= <unsigned char>value[i] <= 57:
                    cl = cl * 10 + (value[i] - 48)
            self.resp_cl = cl
        elif kind == R_CHUNKED:
            self.resp_chunked = True
        elif kind == R_CONNECTION:
            for i in range(vn - 4):
                if same_lower(value + i, "close", 5):
                    self.resp_close = True
                    break
        elif kind == R_UPGRADE:
            self.resp_upgrade = PyBytes_FromStringAndSize(value, vn)
        elif kind == R_SET_COOKIE:
            put_header_at(self.rhead, name, nn, value, vn)
            if self.pool.sticky == C_STICKY_APP_COOKIE:
                first = PyBytes_FromStringAndSize(value, vn).split(b";", 1)[0]
                v = cookie_value(first, self.pool.cookie_name)
                if v is not None:
                    self.pool.remember_app_cookie(v, self.member)
        return 0

    cdef int up_headers_complete(self, int status) except -1:
        # The head's size as relayed (status line, fields), interim ones summed.
        self.head_size += 17 + (len(self.reason) if self.reason is not None else 0) + (
            len(self.rhead) if self.rhead is not None else 0)
        if self.head_size > self.head_limit() and status != 101:
            self.up_too_big()           # (closes the member connection)
            return 0
        self.status = status
        cdef double now
        if status >= 200 or status == 101:
            now = monotonic()
            self.t_header = now
            observe(self.lrt.counters, self.pbase + O_UPSTREAM_HIST, now - self.t_sent)
            if self.mbase >= 0:
                observe(self.lrt.counters, self.mbase + O_M_HIST, now - self.t_sent)
                add_at(self.lrt.counters, self.mbase, O_M_RESP_CLASS + status // 100 - 1, 1)
        cdef Member m
        if ((status == 502 and self.pool.retry_on & B_RETRY_502)
                or (status == 503 and self.pool.retry_on & B_RETRY_503)):
            # The member's own 502/503, asked to be retried: nothing of it has
            # reached the client; its body is dropped with its connection.
            m = self._retry_target(F_STATUS_502 if status == 502 else F_STATUS_503)
            if m is not None:
                if self.req.meta is not None:
                    self._try(b"%d" % status)
                self._release(False)
                self._retry_on(m, F_STATUS_502 if status == 502 else F_STATUS_503)
                return 0
        if status < 200:
            # Interim response: relay 100/103 to HTTP/1.1 clients, drop the rest.
            self.interim = True
            if status == 101:
                if self.req.upgrade is None or self.resp_upgrade is None:
                    self.up_invalid()   # 101 to a request that asked for no upgrade
                    return 0
                self._start_tunnel()
                return 0
            if not self.client_http10 and not self.req.is_h2:      # (as ds_interim)
                self._down_out(15 + (len(self.reason) if self.reason is not None else 0)
                               + (len(self.rhead) if self.rhead is not None else 0) + 2, False)
            self.ds.ds_interim(self, status, self.reason, self.rhead)
            self.reason = None
            self.rhead = None
            if self.body_held and self.state == S_SENDING:
                self._release_body()
            return 0
        if self.state == S_SENDING:
            # A final response before the request body ended (a 413, a 401...):
            # the member won't read the rest, so sending it would only earn a
            # reset that loses this answer. The rest of the body is read from
            # the client and dropped; the member connection closes at the end.
            self.body_dropped = True
            self.body_held = False
            if self.body_buf:
                self.body_buf = []
                self.body_buf_len = 0
                self.ds.ds_resume_reading()
        if self.lrt.hooks & K_RESPONSE_FILTER:
            self._response_filter(status)
        if self.pool.sticky == C_STICKY_LB_COOKIE and not self.sticky_bound:
            if self.rhead is None:
                self.rhead = bytearray()
            self.rhead += b"Set-Cookie: " + self.pool.cookie_name + b"=" + self.member.token
            self.rhead += (self.pool.set_cookie_suffix if self.lrt.ssl_ctx is None
                           else self.pool.set_cookie_suffix_tls) + b"\r\n"
        self.resp_started = True
        self._down_out(self._head_size(status), False)
        self.ds.ds_head(self, status, self.reason, self.rhead,
                        -1 if self.resp_chunked else self.resp_cl,
                        self.is_head_method or status == 204 or status == 304)
        return 0

    cdef long long _head_size(self, int status):
        """The response head as HTTP/1.1 sends it: status line, the relayed
        fields, its framing field (Content-Length or chunked), the blank
        line (a Connection field lbcore adds is not counted)."""
        cdef long long n = 15 + (len(self.reason) if self.reason is not None else 0) + 2
        cdef long long v
        if self.rhead is not None:
            n += len(self.rhead)
        if not self.resp_chunked and self.resp_cl >= 0:
            n += 18
            v = self.resp_cl
            while True:
                n += 1
                v //= 10
                if v == 0:
                    break
        elif not (self.is_head_method or status == 204 or status == 304):
            n += 28                     # Transfer-Encoding: chunked CRLF
        return n

    cdef _response_filter(self, int status):
        """Hand the response headers to the hook as a list it may edit in place."""
        headers = []
        for line in bytes(self.rhead or b"").split(b"\r\n"):
            if line:
                name, _, value = line.partition(b":")
                headers.append((name, value.strip()))
        self.lrt.phases.response_filter(self.req.view, status, headers)
        self.rhead = bytearray(b"".join([header_line(n, v) for n, v in headers]))

    cdef _start_tunnel(self):
        """101: relay the switch, then both connections carry raw bytes."""
        cdef bytearray out = bytearray(b"HTTP/1.1 101 ")
        out += self.reason or b"Switching Protocols"
        out += b"\r\n"
        if self.rhead is not None:
            out += self.rhead
        out += b"Connection: upgrade\r\nUpgrade: " + self.resp_upgrade + b"\r\n\r\n"
        self.state = S_TUNNEL
        self.resp_started = True
        self.conn.tunnel = True
        self._down_out(len(out), False)
        self.ds.ds_write(out)
        self.ds.ds_tunnel(self)

    cdef int tunnel_write(self, object data) except -1:
        """Client bytes in a tunnel go straight to the member."""
        if self.state == S_TUNNEL and self.conn is not None and not self.conn.closed:
            self.rx_tunnel += len(data)
            add(self.lrt.counters, self.lrt.cbase + O_BYTES_IN, len(data))
            self._up_out(len(data))
            self.conn.transport.write(data)
        return 0

    cdef int up_body(self, const char* at, Py_ssize_t n) except -1:
        """A piece of the response body, still in the member's read."""
        if self.state == S_DONE:
            return 0
        self._down_out(n, True)
        self.ds.ds_body_at(self, at, n)
        return 0

    cdef int up_message_complete(self) except -1:
        if self.state == S_DONE or self.state == S_TUNNEL:
            return 0
        if self.interim:
            self.interim = False
            return 0
        self.ds.ds_end(self)
        # (a member that answered before the whole body reached it is not reused)
        self._finish(self.req_done and not self.body_dropped and not self.resp_close
                     and LL.should_keep_alive(&self.conn.parser.p))
        return 0

    cdef int up_lost(self) except -1:
        if self.state == S_DONE:
            return 0
        if self.state == S_TUNNEL:
            self.state = S_DONE
            self.conn = None
            self._assign(None)
            self.ds.ds_close()
            return 0
        if not self.resp_started:
            self._fail(F_LOST)
        elif self.resp_cl < 0 and not self.resp_chunked:
            # A response delimited by the backend closing: this is its end.
            self.ds.ds_end(self)
            self._finish(False)
        else:
            self.state = S_DONE
            self._release(False)
            self._assign(None)
            self.ds.ds_abort(self)
        return 0

    cdef Py_ssize_t head_limit(self):
        return self.pool.max_head if self.pool.max_head > 0 else self.lrt.max_header_block

    cdef int up_too_big(self) except -1:
        """The member's response head, interim responses included, passed
        the limit: 502 (never retried), and the connection is closed."""
        if self.state == S_DONE or self.resp_started:
            return 0
        self.gen_reason = G_TOO_BIG
        self._fail(F_TOO_BIG)
        return 0

    cdef int up_invalid(self) except -1:
        if self.state == S_DONE:
            return 0
        if not self.resp_started:
            self._fail(F_INVALID)
        else:
            self.state = S_DONE
            self._release(False)
            self._assign(None)
            self.ds.ds_abort(self)
        return 0


cdef class UpstreamConnection(Receiver):
    def __cinit__(self, Member member, Counters counters=None, Py_ssize_t mbase=-1):
        self.fd = -1
        self.member = member
        self.counters = counters
        self.mbase = mbase
        add(counters, O_LIVE_MC, 1)

    def __dealloc__(self):
        add(self.counters, O_LIVE_MC, -1)
        if self.counted_open:
            add_at(self.counters, self.mbase, O_M_CONN_ACTIVE, -1)

    def connection_made(self, transport):
        # The parser holds bound methods of this object: made here, dropped in
        # connection_lost, so a connect cancelled half-way leaves no cycle.
        self.transport = transport
        if self.mbase >= 0:
            self.counted_open = True
            add_at(self.counters, self.mbase, O_M_CONN_ACTIVE, 1)
            add_at(self.counters, self.mbase, O_M_CONN_TOTAL, 1)
        if isinstance(transport, SocketTransport):
            self.own = transport        # its fd is read there: -1 once it closed
        else:
            sock = transport.get_extra_info("socket")
            self.fd = sock.fileno() if sock is not None else -1
        self.parser = ResponseParser.__new__(ResponseParser)
        self.parser.start(HTTP_RESPONSE, <void*>self)
        # Bound once: a method looked up by name costs a lookup per call.
        self.write = transport.write

    def data_received(self, bytes data):
        self.buffer_received(PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))

    cdef int buffer_received(self, const char* at, Py_ssize_t n) except -1:
        """A read from the member, in place (lbcore's transports) or from
        data_received: parsed where it lies."""
        cdef Exchange ex = self.ex
        if ex is None:
            # Bytes from a backend while idle: the stream can't be trusted.
            self.close()
            return 0
        ex.last_read = monotonic()
        add_at(self.counters, ex.mbase, O_M_BYTES_IN, n)
        if self.tunnel:
            ex._down_out(n, True)
            ex.ds.ds_write(PyBytes_FromStringAndSize(at, n))
            return 0
        cdef Downstream ds = ex.ds
        cdef Py_ssize_t pos
        cdef int err
        ds.ds_cork()
        try:
            err = self.parser.execute(at, n)
            if self.parser.cb_error is not None:
                exc, self.parser.cb_error = self.parser.cb_error, None
                raise exc
            if err == HPE_PAUSED_UPGRADE:
                # The 101 head was parsed; what follows it is already tunnel data.
                pos = LL.get_error_pos(&self.parser.p) - at
                LL.resume_after_upgrade(&self.parser.p)
                ex = self.ex
                if ex is not None and self.tunnel and 0 <= pos < n:
                    ex._down_out(n - pos, True)
                    ex.ds.ds_write(PyBytes_FromStringAndSize(at + pos, n - pos))
                return 0
            if err != HPE_OK:
                ex = self.ex
                if ex is not None:
                    ex.up_invalid()
                self.close()
                return 0
            ex = self.ex
            if (ex is not None and not ex.resp_started
                    and (ex.state == S_WAITING or ex.state == S_SENDING)):
                # The head is still incomplete after this read: its bytes (and
                # those of interim responses before it) count against the limit,
                # so an endless header line costs one read past it, not the
                # worker (parsing stays linear).
                self.head_bytes += n
                if self.head_bytes > ex.head_limit():
                    ex.up_too_big()     # (closes this connection)
        finally:
            ds.ds_uncork()
        return 0

    def eof_received(self):
        return False

    def connection_lost(self, exc):
        self.closed = True
        if self.counted_open:
            self.counted_open = False
            add_at(self.counters, self.mbase, O_M_CONN_ACTIVE, -1)
        cdef Exchange ex = self.ex
        if ex is not None:
            ex.up_lost()
        elif self.in_idle:
            idle_remove(self.member, self)
            add(self.counters, O_LIVE_IDLE, -1)
        # The transport holds this connection: drop the way back so reference
        # counting frees it now, not the cyclic GC later.
        self.write = None
        self.ex = None
        self.transport = None
        self.own = None
        self.parser = None

    def pause_writing(self):
        if self.ex is not None:
            self.ex.ds.ds_pause_reading()

    def resume_writing(self):
        if self.ex is not None:
            self.ex.ds.ds_resume_reading()

    cdef int sock(self):
        """The socket, or -1: never a descriptor closed (and maybe reused) since."""
        if self.own is not None:
            return self.own.fd
        return self.fd

    cdef int close(self) except -1:
        if not self.closed:
            self.closed = True
            self.transport.close()
        return 0

    # ---- what the llhttp callbacks call: 0, or -1 to stop parsing (-2: an exception)

    cdef int _status(self, const char* at, size_t n) except -2:
        if self.ex is not None:
            self.ex.up_status(REASON_OK if n == 2 and at[0] == 79 and at[1] == 75
                              else PyBytes_FromStringAndSize(at, n))
        return 0

    cdef int _field(self, const char* name, Py_ssize_t nn, const char* value,
                    Py_ssize_t vn) except -2:
        if self.ex is not None:
            self.ex.up_header(name, nn, value, vn)
        return 0

    cdef int _headers_complete(self) except -2:
        """1: no body follows (a HEAD request's response, an upgrade)."""
        cdef Exchange ex = self.ex
        if ex is not None:
            ex.up_headers_complete(self.parser.p.status_code)
            if self.ex is not ex or self.closed:
                return -1               # failed, retried or closed: stop reading it
            if ex.is_head_method and self.parser.p.status_code >= 200:
                return 1
        return 1 if self.parser.p.upgrade else 0

    cdef int _body(self, const char* at, size_t n) except -2:
        if self.ex is not None:
            self.ex.up_body(at, n)
        return 0

    cdef int _message_complete(self) except -2:
        if self.ex is not None:
            self.ex.up_message_complete()
        return 0


cdef class ResponseParser(Parser):
    """llhttp's hooks for a member connection: each hands its part of the
    response to the UpstreamConnection that owns this parser."""
    cdef int on_status(self, const char* at, size_t n) except -2:
        return (<UpstreamConnection>self.owner)._status(at, n)

    cdef int on_field(self, const char* name, Py_ssize_t nn, const char* value,
                      Py_ssize_t vn) except -2:
        return (<UpstreamConnection>self.owner)._field(name, nn, value, vn)

    cdef int on_headers_complete(self) except -2:
        return (<UpstreamConnection>self.owner)._headers_complete()

    cdef int on_body(self, const char* at, size_t n) except -2:
        return (<UpstreamConnection>self.owner)._body(at, n)

    cdef int on_message_complete(self) except -2:
        return (<UpstreamConnection>self.owner)._message_complete()


def close_idle(Member m):
    """A member that left its pool: its idle connections close now rather
    than wait for their expiry (nothing will pick the member again)."""
    cdef UpstreamConnection c = <UpstreamConnection>m.idle_top
    cdef list all = []
    while c is not None:
        all.append(c)
        c = c.idle_below
    for c in all:
        c.close()


cdef int idle_push(Member m, UpstreamConnection c) except -1:
    c.idle_below = <UpstreamConnection>m.idle_top
    c.in_idle = True
    m.idle_top = c
    m.n_idle += 1
    return 0


cdef UpstreamConnection idle_pop(Member m):
    """The most recent idle connection, taken off the stack (m.n_idle > 0)."""
    cdef UpstreamConnection c = <UpstreamConnection>m.idle_top
    m.idle_top = c.idle_below
    c.idle_below = None
    c.in_idle = False
    m.n_idle -= 1
    return c


cdef int idle_remove(Member m, UpstreamConnection c) except -1:
    """c, wherever it is in the stack (a member closed an idle connection)."""
    cdef UpstreamConnection above = None
    cdef UpstreamConnection at = <UpstreamConnection>m.idle_top
    while at is not None and at is not c:
        above = at
        at = at.idle_below
    if at is None:
        return 0
    if above is None:
        m.idle_top = c.idle_below
    else:
        above.idle_below = c.idle_below
    c.idle_below = None
    c.in_idle = False
    m.n_idle -= 1
    return 0
