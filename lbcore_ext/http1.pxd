from lbcore_ext.llhttp cimport Parser
from lbcore_ext.request cimport Client, Request
from lbcore_ext.runtime cimport LazyTimer, ListenerRuntime
from lbcore_ext.transport cimport ProtocolFactory, SocketTransport
from lbcore_ext.upstream cimport Downstream, Exchange


cdef class HttpFactory(ProtocolFactory):
    cdef ListenerRuntime lrt

cdef class RequestParser(Parser):
    """llhttp's hooks for one client connection (lbcore_ext/llhttp.pxd Parser)."""
    pass


cdef class HttpProtocol(Downstream):
    cdef ListenerRuntime lrt
    cdef SocketTransport st             # the transport when it is lbcore's own, else None
    cdef Client client                  # peer and TLS facts, shared by its requests
    cdef RequestParser parser           # made in connection_made, dropped at the end
    cdef Request req                    # the request being parsed
    cdef Exchange active                # the exchange being answered
    cdef list waiting                   # pipelined ones behind it, in order; None: none
    cdef Exchange parsing               # the exchange receiving request body
    cdef bint reading_paused
    cdef bint stop_parsing              # no more requests on this connection
    cdef bint in_request_line
    cdef bint is_tls
    cdef bint handed_off                # the connection went to HTTP/2
    cdef bint idle                      # no request partly received
    cdef int resp_mode                  # R_* framing of the response being written
    cdef bint corked
    cdef bytearray wba                  # writes held while corked, gathered
    cdef LazyTimer timer
    cdef double req_start               # first byte of a request whose header is incomplete
    cdef double last_activity
    cdef Exchange tunnel                # set once a 101 switched this connection
    cdef bytes tunnel_pending           # client bytes after an upgrade request's head
    cdef int error_code
    cdef Request pending_answer         # a local answer behind pipelined requests
    cdef int _message_begin(self) except -2
    cdef int _url(self, const char* at, size_t n) except -2
    cdef int _field(self, const char* name, Py_ssize_t nn, const char* value,
                    Py_ssize_t vn) except -2
    cdef int _headers_complete(self) except -2
    cdef int _body(self, const char* at, size_t n) except -2
    cdef int _message_complete(self) except -2
    cdef int _out(self, object data) except -1
    cdef int _out_at(self, const char* p, Py_ssize_t n) except -1
    cdef int _answer_directly(self, Request req) except -1
    cdef int _send_error(self, int code, bytes router_code) except -1
    cdef int _emit_error(self, int code, bytes router_code, bint head) except -1
    cdef int _schedule(self, double at) except -1
    cdef int _after_exchange(self) except -1
    cdef int _abort_exchanges(self, Exchange spare) except -1
    cdef int _close(self) except -1
    cdef int init(self, ListenerRuntime lrt) except -1
    cdef int _t_write(self, object data) except -1
    cdef int _t_write_at(self, const char* p, Py_ssize_t n) except -1
    cdef int _t_close(self) except -1
    cdef int _t_abort(self) except -1
    cdef int _t_pause(self) except -1
    cdef int _t_resume(self) except -1
