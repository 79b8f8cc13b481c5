# cython: language_level=3
"""The data plane's side of the Phases seam (DESIGN.md): hook bits and the
read-only request view handed to hooks. A view is built only when a listener
has at least one overridden hook; the default path never allocates one."""

HOOK_ON_ACCEPT = 1
HOOK_REQUEST_FILTER = 2
HOOK_UPSTREAM_PEER = 4
HOOK_UPSTREAM_REQUEST_FILTER = 8
HOOK_RESPONSE_FILTER = 16
HOOK_FAIL_TO_CONNECT = 32
HOOK_ERROR_WHILE_PROXY = 64
HOOK_FAIL_TO_PROXY = 128
HOOK_LOGGING = 256

HOOK_NAMES = {
    "on_accept": HOOK_ON_ACCEPT,
    "request_filter": HOOK_REQUEST_FILTER,
    "upstream_peer": HOOK_UPSTREAM_PEER,
    "upstream_request_filter": HOOK_UPSTREAM_REQUEST_FILTER,
    "response_filter": HOOK_RESPONSE_FILTER,
    "fail_to_connect": HOOK_FAIL_TO_CONNECT,
    "error_while_proxy": HOOK_ERROR_WHILE_PROXY,
    "fail_to_proxy": HOOK_FAIL_TO_PROXY,
    "logging": HOOK_LOGGING,
}


cdef class RequestView:
    """What a hook may read about the request; `ctx` is the hook's own scratch
    space, kept for the request's life (Pingora's CTX)."""
    cdef public bytes method
    cdef public bytes target
    cdef public str http_version
    cdef public str client_ip
    cdef public int client_port
    cdef public str listener
    cdef public bytes raw_headers
    cdef public object ctx
    cdef public str policy              # the forwarding policy that matched, or None
    cdef public str pool                # the pool the decision chose
    cdef list _headers

    def __init__(self, bytes method, bytes target, str http_version, str client_ip,
                 int client_port, str listener, bytes raw_headers):
        self.method = method
        self.target = target
        self.http_version = http_version
        self.client_ip = client_ip
        self.client_port = client_port
        self.listener = listener
        self.raw_headers = raw_headers
        self.ctx = {}

    @property
    def headers(self):
        """[(name, value)] as received (minus hop-by-hop), parsed on first use."""
        if self._headers is None:
            out = []
            for line in self.raw_headers.split(b"\r\n"):
                if line:
                    name, _, value = line.partition(b":")
                    out.append((name, value.strip()))
            self._headers = out
        return self._headers

    def header(self, name):
        """First value of header `name` (case-insensitive), or None."""
        lname = name.lower() if isinstance(name, bytes) else name.lower().encode()
        for n, v in self.headers:
            if n.lower() == lname:
                return v
        return None

    def __repr__(self):
        return f"<RequestView {self.method!r} {self.target!r} from {self.client_ip}>"
