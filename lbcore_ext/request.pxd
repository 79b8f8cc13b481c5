from lbcore_ext.balancer cimport Pool
from lbcore_ext.policy cimport Facts, Policy
from lbcore_ext.runtime cimport ForwardedLines, ListenerRuntime

# Request.decide()
cdef enum:
    D_FORWARD = 1           # to Request.pool
    D_ANSWER = 2            # answer locally: Request.answer_status / _lines / _body


cdef class Client:
    """What every request on one client connection shares: the peer and the
    TLS facts, looked up once per connection (HTTP/1.1 or HTTP/2)."""
    cdef ListenerRuntime lrt
    cdef object transport
    cdef bytes peer_ip
    cdef bytes peer_port
    cdef object sni_name                # SNI of the handshake (mutual+SNI listeners)
    cdef bytes _tls_lines               # X-Forwarded-TLS-* lines, built on first use
    cdef tuple _tls_info                # (version, cipher, sni, resumed) for the access log
    cdef ForwardedLines fwd             # made at its first forwarded request
    cdef bytes tls_lines(self)
    cdef bytes local_authority(self)
    cdef tuple tls_info(self)


cdef class Request:
    """One request, whichever framing brought it. The front-ends (http1.pyx,
    http2.pyx) only fill it: target, fields, body framing. Every rule about
    it lives here, once: admission (field(), head_complete(), body_bytes()),
    the decision (decide()), the upstream head (upstream_head()), counting
    and the access log (refused(), answered())."""
    cdef ListenerRuntime lrt
    cdef Client client
    # filled by the framing
    cdef bytes method
    cdef bytes target
    cdef str version                    # "1.1", "1.0", "2"
    cdef bytes scheme                   # HTTP/2 :scheme (None on HTTP/1.1)
    cdef bytes authority                # HTTP/2 :authority
    cdef bint end_stream                # HTTP/2: HEADERS carried END_STREAM (no body)
    cdef bint is_h2
    cdef bint http10
    cdef bint keep_alive                # HTTP/1.1: the connection may carry another request
    # gathered from the fields
    cdef bytearray hbuf                 # client fields forwarded as they came
    cdef Py_ssize_t nheaders
    cdef Py_ssize_t block_size
    cdef bytes host
    cdef bytes xff
    cdef bytes cookie                   # all Cookie fields joined with "; "
    cdef bytes cookie_name              # the first Cookie field's name as received
    cdef bytes upgrade
    cdef bytes request_id
    cdef bytes user_agent
    cdef bytes referer
    cdef list conn_tokens               # more hop-by-hop names from Connection
    cdef bint keepalive_token           # Connection: keep-alive was sent
    cdef long long cl                   # Content-Length, -1 if none
    cdef bint chunked
    cdef bint bad_te
    cdef bint has_body
    cdef long long body_seen
    cdef bytes trailers                 # request trailer lines to forward (chunked only)
    cdef int error                      # the first refusal's status, 0 while admitted
    cdef bint counted                   # counted in the listener's requests
    cdef Facts facts                    # what forwarding policies read (listeners with any)
    # decided
    cdef Policy policy                  # the forwarding policy that matched, or None
    cdef Pool pool
    cdef Py_ssize_t pbase               # the route block its responses count in
    cdef bytes extra_lines              # fields a policy inserts toward the member
    cdef int gen_reason                 # a local answer's GENERATED_CODES reason + 1, or 0
    cdef object view                    # RequestView when the listener has hooks
    cdef tuple meta                     # access-log facts, or None when the log is off
    cdef int answer_status
    cdef bytes answer_lines
    cdef bytes answer_body
    cdef double t_start                 # its first byte (monotonic): the log's duration
    cdef long long rx_head              # its head's bytes, as HTTP/1.1 text

    @staticmethod
    cdef Request new(Client client)
    cdef int add_target(self, bytes part) except -1
    cdef int absolute_form(self) except -1
    cdef int field(self, bytes name, bytes lname, bytes value) except -1
    cdef int field_raw(self, const char* name, Py_ssize_t nn, const char* value,
                       Py_ssize_t vn) except -1
    cdef int connection_tokens(self, const char* vp, Py_ssize_t vn) except -1
    cdef int field_at(self, const char* name, Py_ssize_t nn, const char* low, unsigned int h,
                      const char* vp, Py_ssize_t vn, bytes value) except -1
    cdef int set_authority(self, bytes value) except -1
    cdef int trailer(self, bytes name, bytes value) except -1
    cdef int head_complete(self) except -1
    cdef int body_bytes(self, Py_ssize_t n) except -1
    cdef int decide(self) except -1
    cdef int apply_policy(self, Policy p) except -1
    cdef int _answer(self, int status, bytes lines, bytes body, int reason) except -1
    cdef int _facts(self) except -1
    cdef bytearray upstream_head(self)
    cdef bint is_head(self)
    cdef bint idempotent(self) noexcept
    cdef int refuse(self, int code) except -1
    cdef int refused(self, int code) except -1
    cdef int answered(self, int status, bint generated) except -1
    cdef int _meta(self) except -1
    cdef int _count(self) except -1
    cdef long long rx_bytes(self)
    cdef long long answer_size(self, int status, bint generated, bint body)


cdef tuple answer_parts(object answer)
cdef long long local_size(int status, bytes lines, bytes body, bint head)
cdef bytes normalise_path(bytes path)
cdef bint valid_field_value(const unsigned char* p, Py_ssize_t n) noexcept
cdef bint valid_token(const unsigned char* p, Py_ssize_t n) noexcept
