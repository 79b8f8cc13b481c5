from lbcore_ext.balancer cimport Member, Pool
from lbcore_ext.counters cimport Counters
from lbcore_ext.llhttp cimport Parser
from lbcore_ext.request cimport Request
from lbcore_ext.runtime cimport ListenerRuntime
from lbcore_ext.transport cimport Receiver, SocketTransport

cdef class Exchange
cdef class UpstreamConnection


cdef class ResponseParser(Parser):
    """llhttp's hooks for one member connection (lbcore_ext/llhttp.pxd Parser)."""
    pass


cdef class Downstream(Receiver):
    """What an Exchange needs from the client side: HTTP/1.1 connections now,
    HTTP/2 streams later. The forwarding core talks only to this."""
    cdef object transport
    cdef object loop
    cdef bint closed
    cdef int ds_write(self, object data) except -1
    cdef int ds_exchange_done(self, Exchange ex, bint keep_alive) except -1
    cdef int ds_error(self, Exchange ex, int code, bytes router_code) except -1
    # A complete answer of lbcore's own (a hook's page) instead of the member's.
    cdef int ds_local(self, Exchange ex, int status, bytes lines, bytes body) except -1
    cdef int ds_abort(self, Exchange ex) except -1
    cdef int ds_pause_reading(self) except -1
    cdef int ds_resume_reading(self) except -1
    cdef int ds_tunnel(self, Exchange ex) except -1
    # The response, in the client's framing (HTTP/1.1 chunked or Content-Length,
    # HTTP/2 frames): head once, body pieces, end.
    cdef int ds_interim(self, Exchange ex, int status, bytes reason, object rhead) except -1
    cdef int ds_head(self, Exchange ex, int status, bytes reason, object rhead,
                     long long content_length, bint no_body) except -1
    cdef int ds_body(self, Exchange ex, object data) except -1
    # (the body bytes where they lie, valid for the call: HTTP/1.1 gathers them
    # without an object; the default makes bytes for ds_body)
    cdef int ds_body_at(self, Exchange ex, const char* at, Py_ssize_t n) except -1
    cdef int ds_end(self, Exchange ex) except -1
    # Hold writes while one upstream read is processed, then send them as one.
    cdef int ds_cork(self) except -1
    # Make sure the owner's timer fires by loop time `at`, then asks deadline().
    cdef int ds_deadline(self, double at) except -1
    cdef int ds_uncork(self) except -1
    cdef int ds_close(self) except -1


cdef class Exchange:
    """One request's trip: pick a member, get a connection, send, relay the
    response, retry or fail with the right status."""
    cdef Downstream ds
    cdef Request req
    cdef ListenerRuntime lrt
    cdef Pool pool
    cdef Py_ssize_t pbase               # the route block its responses count in
    cdef object loop
    cdef bytearray head                 # the upstream request head, kept for a retry
    cdef bint is_head_method
    cdef bint idempotent
    cdef bint has_body
    cdef bint req_chunked
    cdef bint req_done
    cdef list body_buf
    cdef Py_ssize_t body_buf_len
    cdef bint body_sent
    cdef bint buffered                  # request buffering is over (or never began)
    cdef double t_buffer                # when it began
    cdef bint body_dropped             # the member answered before the body ended: stop sending
    cdef bint body_held                # the member sent bytes mid-body: wait for its head
    cdef int _hold_body(self) except -1
    cdef int _release_body(self) except -1
    cdef bint _send_buffered(self) except -1
    cdef int _end_buffering(self) except -1
    cdef public bint client_http10
    cdef public bint client_keep_alive
    cdef Member member
    cdef Py_ssize_t mbase              # the member's block for this listener, -1: none
    cdef list tried
    cdef int retries
    cdef bint retrying                 # counted in pool.retrying (the retry budget)
    cdef bint fresh_retry_used
    cdef UpstreamConnection conn
    cdef object connect_task
    cdef double t_connect
    cdef double t_start
    cdef double t_sent              # the request head went to the member
    cdef int state
    cdef double last_read
    cdef int status
    cdef bytes reason
    cdef bytearray rhead
    cdef long long resp_cl
    cdef bint resp_chunked
    cdef bint resp_close
    cdef bint interim
    cdef bint resp_started
    cdef bint sticky_bound
    cdef public int gen_reason         # GENERATED_CODES index of a non-default reason, or -1
    cdef Py_ssize_t head_size          # bytes of the member's response heads so far
    cdef list tries                    # per try, for the access log (see _try)
    cdef double t_try                  # this try began (monotonic)
    cdef double t_connected            # its connection was ready; 0: not yet
    cdef double t_header               # its final response head came; 0: not yet
    cdef long long tx_head             # bytes of response heads sent to the client
    cdef long long tx_body             # bytes of response body sent to the client
    cdef long long rx_tunnel           # client bytes sent into a 101 tunnel
    cdef int _log(self, int status) except -1
    cdef int _try(self, bytes outcome) except -1
    cdef int _begin_try(self) except -1
    cdef int _up_out(self, Py_ssize_t n) except -1
    cdef int _down_out(self, long long n, bint body) except -1
    cdef bytes resp_upgrade
    cdef int tunnel_write(self, object data) except -1
    cdef bytes _last_chunk(self)
    cdef int _assign(self, Member m) except -1

    @staticmethod
    cdef Exchange new(Downstream ds, Request req)
    cdef int start(self) except -1
    cdef int feed_body(self, object data) except -1
    cdef int body_done(self) except -1
    cdef int abort(self) except -1
    cdef int pause_upstream(self) except -1
    cdef int resume_upstream(self) except -1
    cdef int _acquire(self) except -1
    cdef int _attach(self, UpstreamConnection conn) except -1
    cdef int _write_body(self, object data) except -1
    cdef int _arm(self, double delay) except -1
    cdef double deadline(self)
    cdef int expire(self) except -1
    cdef int _fail(self, int kind) except -1
    cdef Member _retry_target(self, int kind)
    cdef int _retry_on(self, Member m, int kind) except -1
    cdef int _release(self, bint reusable) except -1
    cdef int _finish(self, bint reusable) except -1
    cdef _restart(self)
    cdef _start_tunnel(self)
    cdef long long _head_size(self, int status)
    cdef _response_filter(self, int status)
    cdef _error(self, int code, bytes router_code)
    cdef int _connect(self) except -1
    cdef int up_status(self, bytes reason) except -1
    cdef int up_header(self, const char* name, Py_ssize_t nn, const char* value,
                       Py_ssize_t vn) except -1
    cdef int up_headers_complete(self, int status) except -1
    cdef int up_body(self, const char* at, Py_ssize_t n) except -1
    cdef int up_message_complete(self) except -1
    cdef int up_lost(self) except -1
    cdef int up_invalid(self) except -1
    cdef int up_too_big(self) except -1
    cdef Py_ssize_t head_limit(self)


cdef class UpstreamConnection(Receiver):
    cdef object transport
    cdef Member member
    cdef Counters counters              # the worker's, for the live-object counts
    cdef Py_ssize_t mbase               # the member block it counts open in, -1: none
    cdef bint counted_open              # counted in M_CONN_ACTIVE
    cdef ResponseParser parser          # made in connection_made, dropped at the end
    cdef object write                   # transport.write, bound once
    cdef Exchange ex
    cdef bint closed
    cdef bint read_paused               # pause_reading() is in force
    cdef Py_ssize_t head_bytes          # bytes read while the response head is incomplete
    cdef bint reused
    cdef bint tunnel
    cdef double last_used
    cdef int fd                         # the socket's, for a readability check mid-body
    cdef SocketTransport own            # the transport when it is lbcore's own
    cdef UpstreamConnection idle_below  # the next in its member's idle stack
    cdef bint in_idle
    cdef int sock(self)
    cdef int close(self) except -1
    cdef int _status(self, const char* at, size_t n) except -2
    cdef int _field(self, const char* name, Py_ssize_t nn, const char* value,
                    Py_ssize_t vn) except -2
    cdef int _headers_complete(self) except -2
    cdef int _body(self, const char* at, size_t n) except -2
    cdef int _message_complete(self) except -2
