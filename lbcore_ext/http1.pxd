from lbcore_ext.runtime cimport LazyTimer, ListenerRuntime
from lbcore_ext.upstream cimport Downstream, Exchange

cdef class HttpProtocol(Downstream):
    cdef ListenerRuntime lrt
    cdef object parser
    cdef bytes peer_ip
    cdef bytes peer_port
    cdef bytes tls_lines                # X-Forwarded-TLS-* lines, built once
    cdef list queue                     # exchanges in request order; [0] is running
    cdef Exchange parsing               # the exchange receiving request body
    cdef bint reading_paused
    cdef bint stop_parsing              # no more requests on this connection
    cdef bint in_request_line
    cdef bint is_tls
    cdef bint handed_off                # the connection went to HTTP/2
    cdef bint idle                      # no request partly received
    cdef object sni_name                # SNI of the handshake (mutual+SNI listeners)
    cdef int resp_mode                  # R_* framing of the response being written
    cdef bint corked
    cdef list wbuf                      # writes held while corked
    cdef int _out(self, object data) except -1
    cdef LazyTimer timer
    cdef double req_start               # first byte of a request whose header is incomplete
    cdef double last_activity
    # the request being parsed
    cdef bytes url
    cdef bytearray hbuf
    cdef Py_ssize_t nheaders
    cdef Py_ssize_t block_size
    cdef bytes host
    cdef bytes xff
    cdef bytes cookie
    cdef bytes upgrade_value
    cdef bytes request_id
    cdef bytes user_agent
    cdef bytes referer
    cdef tuple meta                     # access-log facts of the request being parsed
    cdef tuple tls_info                 # (version, cipher, sni), once per connection
    cdef Exchange tunnel                # set once a 101 switched this connection
    cdef bytes tunnel_pending           # client bytes after an upgrade request's head
    cdef list conn_tokens
    cdef bint keepalive_token           # Connection: keep-alive was sent
    cdef str version                    # "1.1", "1.0"... of the request
    cdef long long cl
    cdef bint chunked
    cdef bint bad_te
    cdef long long body_seen
    cdef int error_code
    cdef int _send_error(self, int code, bytes router_code) except -1
    cdef int _emit_error(self, int code, bytes router_code, double seconds) except -1
    cdef int _access_meta(self, bytes method) except -1
    cdef int _schedule(self, double at) except -1
    cdef int _after_exchange(self) except -1
    cdef bytes _build_head(self, object view)
    cdef int _close(self) except -1
