# cython: language_level=3
"""Runtime objects the control plane fills in and the data plane reads."""

include "consts.pxi"

from heapq import heappop, heappush

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.stdio cimport snprintf

from libc.stdlib cimport free, malloc
from libc.string cimport memcmp, memcpy

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE

from lbcore_ext.bufs cimport extend, fnv_hash, new_ba, put, put_at
from lbcore_ext.headers cimport header_line

from lbcore_ext.phases import HOOK_UPSTREAM_REQUEST_FILTER

cdef int K_UPSTREAM_REQUEST_FILTER = HOOK_UPSTREAM_REQUEST_FILTER

# Header actions: what http1 does with a client request header of that name.
H_DROP = 1          # hop-by-hop or owned by lbcore: never forwarded
H_XFF = 2           # X-Forwarded-For: handled per xff_mode
H_HOST = 3          # Host: forwarded, and remembered for X-Forwarded-Host
H_CONNECTION = 4    # Connection: its tokens name more hop-by-hop headers
H_CONTENT_LENGTH = 5
H_TRANSFER_ENCODING = 6
H_COOKIE = 7        # Cookie: forwarded, and read for sticky sessions
H_UPGRADE = 8       # Upgrade: forwarded only on an upgrade request (WebSocket)
H_REQUEST_ID = 9    # X-Request-ID: honoured, else generated (access log on)
H_LOGGED = 10       # User-Agent, Referer: forwarded and kept for the access log
H_PASS = 11         # forwarded as it came (a field only a header rule reads)
# A field a forwarding policy's header rule reads: action | (slot + 1) << 8.
H_RULE_SLOT = 256

XFF_APPEND = 0
XFF_REMOVE = 1
XFF_PRESERVE = 2
XFF_OFF = 3

cdef int C_XFF_APPEND = 0
cdef int C_XFF_REMOVE = 1

ACL_ALL = 0
ACL_WHITELIST = 1
ACL_BLACKLIST = 2

# Bits of ListenerRuntime.tls_fields.
TLS_PROTOCOL = 1
TLS_CIPHER = 2
TLS_CERT_ID = 4
TLS_SNI = 8
TLS_ALPN = 16
# X-Forwarded-Clientcert-* (mutual TLS), spec 5
CC_SUBJECTDN = 32
CC_ISSUERDN = 64
CC_FINGERPRINT = 128
CC_SERIALNUMBER = 256
CC_END = 512
CC_CLIENTVERIFY = 1024
CC_CERT = 2048
CLIENTCERT_FIELDS = {"subjectdn": CC_SUBJECTDN, "issuerdn": CC_ISSUERDN,
                     "fingerprint": CC_FINGERPRINT, "serialnumber": CC_SERIALNUMBER,
                     "end": CC_END, "clientverify": CC_CLIENTVERIFY, "cert": CC_CERT}         # transfer_client_ip false: the client's value passes untouched


cdef inline int _put_line(bytearray b, bytes name, bytes value) except -1:
    """name (with its ": ") value CRLF."""
    if name is None or value is None:
        raise TypeError("_put_line: None")      # as put() does, not a crash
    cdef Py_ssize_t a = PyBytes_GET_SIZE(name), n = PyBytes_GET_SIZE(value)
    cdef char* p = extend(b, a + n + 2)
    memcpy(p, PyBytes_AS_STRING(name), a)
    memcpy(p + a, PyBytes_AS_STRING(value), n)
    p[a + n] = 13
    p[a + n + 1] = 10
    return 0


cdef class ListenerRuntime:
    def __init__(self, name: str, pool):
        self.name = name
        self.pool = pool
        self.policies = None
        self.pools = {}
        self.pbase = -1
        self.pbase_local = -1
        self.pool_bases = {}
        self.max_connections = 0
        self.conn_bucket = -1
        self.scheme = b"http"
        self.port_bytes = b"0"
        self.header_actions = {}
        self.conns = set()
        self.xff_mode = XFF_APPEND
        self.static_lines = b""
        self.idle_timeout = 60.0
        self.request_timeout = 60.0
        self.response_timeout = 60.0
        self.connect_timeout = 5.0
        self.max_request_line = 8192
        self.max_header_size = 16384
        self.max_header_block = 65536
        self.max_headers = 100
        self.max_body = 10737418240
        self.cert_id = b""
        self.ssl_ctx = None
        self.handshake_timeout = 10.0
        self.acl_mode = ACL_ALL
        self.acl = None
        self.refused = 0
        self.phases = None
        self.n_clientcert = {}
        self.sni_guard = None
        self.counters = None
        self.cbase = -1
        self.access_log = None
        self.rid_prefix = b""
        self.rid_seq = 0
        self.hooks = 0
        self.n_xff = b"X-Forwarded-For: "
        self.n_real_ip = b"X-Real-IP: "
        self.n_proto = b"X-Forwarded-Proto: "
        self.n_host = b"X-Forwarded-Host: "
        self.n_port = b"X-Forwarded-Port: "
        self.n_for_port = b"X-Forwarded-For-Port: "
        self.n_tls_protocol = b"X-Forwarded-TLS-Protocol: "
        self.n_tls_cipher = b"X-Forwarded-TLS-Cipher: "
        self.n_tls_sni = b"X-Forwarded-Tls-Sni: "
        self.n_alpn = b"X-Forwarded-Alpn-Protocol: "
        self.n_cert_id = b"X-Forwarded-TLS-Certificate-ID: "

    def __dealloc__(self):
        free(self._aoff)
        free(self._alen)
        free(self._aact)

    @property
    def header_actions(self):
        """Lower-case header name -> H_* action (indexed for C lookups when set)."""
        return self._actions

    @header_actions.setter
    def header_actions(self, dict actions):
        self._actions = actions
        self._index_actions()

    cdef int _index_actions(self) except -1:
        cdef Py_ssize_t size = 16, i, off = 0
        cdef unsigned int slot
        cdef bytes name
        while size < 2 * len(self._actions):
            size *= 2
        free(self._aoff)
        free(self._alen)
        free(self._aact)
        self._aoff = <Py_ssize_t*>malloc(size * sizeof(Py_ssize_t))
        self._alen = <int*>malloc(size * sizeof(int))
        self._aact = <int*>malloc(size * sizeof(int))
        if self._aoff == NULL or self._alen == NULL or self._aact == NULL:
            raise MemoryError()
        for i in range(size):
            self._alen[i] = 0
        self._amask = <unsigned int>(size - 1)
        self._akeys = b"".join(self._actions)
        for name, action in self._actions.items():
            if not name or name != name.lower():
                raise ValueError(f"header action names are lower case: {name!r}")
            slot = fnv_hash(PyBytes_AS_STRING(name), len(name)) & self._amask
            while self._alen[slot]:
                slot = (slot + 1) & self._amask
            self._aoff[slot] = off
            self._alen[slot] = len(name)
            self._aact[slot] = action
            off += len(name)
        return 0

    cdef int action_of(self, const char* lname, Py_ssize_t n, unsigned int h) noexcept:
        """The H_* action of a field by its lower-case name and lower_hash, or 0."""
        cdef unsigned int slot = h & self._amask
        cdef const char* keys = PyBytes_AS_STRING(self._akeys)
        while self._alen[slot]:
            if self._alen[slot] == n and memcmp(keys + self._aoff[slot], lname, n) == 0:
                return self._aact[slot]
            slot = (slot + 1) & self._amask
        return 0

    cdef bytes tls_lines(self, object transport):
        """X-Forwarded-TLS-* lines: fixed for a connection, so built once per connection."""
        cdef int f = self.tls_fields
        sslobj = transport.get_extra_info("ssl_object")
        if sslobj is None:
            return b""
        out = b""
        if f & TLS_PROTOCOL:
            out += self.n_tls_protocol + (sslobj.version() or "").encode() + b"\r\n"
        if f & TLS_CIPHER:
            out += self.n_tls_cipher + (sslobj.cipher() or ("",))[0].encode() + b"\r\n"
        if f & TLS_SNI:
            out += self.n_tls_sni + (getattr(sslobj, "lbcore_sni", None) or "").encode() + b"\r\n"
        if f & TLS_CERT_ID:
            out += self.n_cert_id + self.cert_id + b"\r\n"
        if f & TLS_ALPN:
            out += self.n_alpn + (sslobj.selected_alpn_protocol() or "").encode() + b"\r\n"
        if f >= CC_SUBJECTDN:
            out += self._clientcert_lines(sslobj)
        return out

    def _clientcert_lines(self, sslobj):
        """Details of the verified client certificate (mutual TLS only)."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from urllib.parse import quote

        cdef int f = self.tls_fields
        der = sslobj.getpeercert(binary_form=True)
        names = self.n_clientcert
        if der is None:
            return names["clientverify"] + b"NONE\r\n" if f & CC_CLIENTVERIFY else b""
        cert = x509.load_der_x509_certificate(der)
        values = {
            CC_SUBJECTDN: ("subjectdn", cert.subject.rfc4514_string()),
            CC_ISSUERDN: ("issuerdn", cert.issuer.rfc4514_string()),
            CC_FINGERPRINT: ("fingerprint", cert.fingerprint(hashes.SHA256()).hex()),
            CC_SERIALNUMBER: ("serialnumber", format(cert.serial_number, "x")),
            CC_END: ("end", cert.not_valid_after_utc.strftime("%b %d %H:%M:%S %Y GMT")),
            CC_CLIENTVERIFY: ("clientverify", "SUCCESS"),
            CC_CERT: ("cert", quote(cert.public_bytes(serialization.Encoding.PEM).decode(),
                                    safe="")),
        }
        out = b""
        for bit, (key, value) in values.items():
            if f & bit:
                out += names[key] + value.encode() + b"\r\n"
        return out

    cdef ForwardedLines forwarded_lines(self, bytes peer_ip, bytes peer_port, bytes tls_lines):
        """What append_forwarded adds for every request of one connection, made
        in one buffer: head (X-Forwarded-For of the peer alone, X-Real-IP,
        -Proto), then tail; rest is head from its X-Real-IP on. (Joined with
        `+`, these were nine bytes objects per connection, about 2,500
        instructions: a TLS connection's own code is about 35,000.)"""
        cdef ForwardedLines f = ForwardedLines.__new__(ForwardedLines)
        cdef bytearray b = new_ba(FWD_ROOM + len(self.static_lines)
                                  + (len(tls_lines) if tls_lines is not None else 0))
        f.lrt = self
        f.peer_ip = peer_ip
        if self.xff_mode == C_XFF_APPEND or self.xff_mode == C_XFF_REMOVE:
            _put_line(b, self.n_xff, peer_ip)
        f.rest_at = PyByteArray_GET_SIZE(b)
        if self.x_real_ip:
            _put_line(b, self.n_real_ip, peer_ip)
        if self.x_forwarded_proto:
            _put_line(b, self.n_proto, self.scheme)
        f.tail_at = PyByteArray_GET_SIZE(b)
        if self.x_forwarded_port:
            _put_line(b, self.n_port, self.port_bytes)
        if self.x_forwarded_for_port:
            _put_line(b, self.n_for_port, peer_port)
        if tls_lines is not None:
            put(b, tls_lines)
        put(b, self.static_lines)
        f.lines = b
        return f

    cdef int append_forwarded(self, bytearray out, ForwardedLines f, bytes xff, bytes host,
                              object view) except -1:
        """The headers lbcore adds toward the backend (spec 5), after the
        client's own, in this order: X-Forwarded-For, X-Real-IP,
        X-Forwarded-Proto, -Host, -Port, -For-Port, the TLS lines, the static
        lines; `xff` is the client's X-Forwarded-For when appending. f holds
        what is the same for the whole connection (forwarded_lines())."""
        cdef const char* lines = PyByteArray_AS_STRING(f.lines)
        if xff is not None and self.xff_mode == C_XFF_APPEND:
            put(out, self.n_xff)
            put(out, xff)
            put(out, b", ")
            put(out, f.peer_ip)
            put(out, b"\r\n")
            put_at(out, lines + f.rest_at, f.tail_at - f.rest_at)
        else:
            put_at(out, lines, f.tail_at)
        if self.x_forwarded_host and host is not None:
            _put_line(out, self.n_host, host)
        put_at(out, lines + f.tail_at, PyByteArray_GET_SIZE(f.lines) - f.tail_at)
        if self.hooks & K_UPSTREAM_REQUEST_FILTER:
            extra = self.phases.upstream_request_filter(view)
            if extra:
                for name, value in extra:
                    put(out, header_line(name, value))
        return 0

    cdef bytes next_request_id(self):
        """Unique per process without a syscall: a random prefix and a counter."""
        cdef char buf[80]
        self.rid_seq += 1
        if len(self.rid_prefix) > 40:
            return self.rid_prefix + (b"%x" % self.rid_seq)
        cdef int n = snprintf(buf, sizeof(buf), "%s%llx", PyBytes_AS_STRING(self.rid_prefix),
                              <unsigned long long>self.rid_seq)
        return buf[:n]


# Timer resolution: deadlines are rounded up to the next 10 ms tick.
DEF TICK = 0.01

# One wheel per event loop (a worker has one; tests may run several).
cdef dict _wheels = {}


cdef TimerWheel _last_wheel = None


cdef TimerWheel wheel_for(object loop):
    global _last_wheel
    cdef TimerWheel w = _last_wheel
    if w is not None and w.loop is loop:
        return w
    w = _wheels.get(id(loop))
    if w is None or w.loop is not loop:
        w = TimerWheel(loop)
        _wheels[id(loop)] = w
    _last_wheel = w
    return w


cdef class TimerBucket:
    pass


cdef class TimerWheel:
    """Every connection's timer, on one loop timer. A loop timer costs uvloop
    about 5,000 instructions to make (a TimerHandle, a libuv timer, a context
    copy): per connection, that was 6% of a short connection's cost. Here a
    timer joins the list of its 10 ms tick, and the loop timer is armed only
    when a tick earlier than all others appears. Joining the tick of the
    previous join (the common case: every connection of those 10 ms asks for
    the same time-out) and leaving touch no dict."""

    def __init__(self, loop):
        self.loop = loop
        self.buckets = {}
        self.heap = []

    cdef int add(self, LazyTimer t, long long tick) except -1:
        cdef TimerBucket b = self.last
        if b is None or b.tick != tick:
            b = self.buckets.get(tick)
            if b is None:
                b = TimerBucket.__new__(TimerBucket)
                b.tick = tick
                self.buckets[tick] = b
                heappush(self.heap, tick)
            self.last = b
        t.bucket = b
        t.prev = None
        t.next = b.head
        if b.head is not None:
            b.head.prev = t
        b.head = t
        if self.handle is None or tick < self.armed:
            if self.handle is not None:
                self.handle.cancel()
            self.armed = tick
            self.handle = self.loop.call_at(tick * TICK, self.fire)
        return 0

    cdef int remove(self, LazyTimer t) except -1:
        cdef TimerBucket b = t.bucket
        if b is None:
            return 0
        if t.prev is not None:
            t.prev.next = t.next
        else:
            b.head = t.next
        if t.next is not None:
            t.next.prev = t.prev
        t.prev = None
        t.next = None
        t.bucket = None
        return 0

    def fire(self):
        cdef LazyTimer t
        cdef TimerBucket b
        cdef long long now = <long long>(self.loop.time() / TICK)
        self.handle = None
        while self.heap and self.heap[0] <= now:
            b = self.buckets.pop(heappop(self.heap), None)
            if b is None:
                continue
            if b is self.last:
                self.last = None
            while b.head is not None:
                t = b.head
                self.remove(t)
                if t.tick:
                    t.tick = 0
                    try:
                        if t.owner is not None:
                            t.owner.on_timer()
                        else:
                            t.callback()
                    except Exception as exc:    # one connection's bug stops no timer
                        self.loop.call_exception_handler({
                            "message": "lbcore timer callback failed", "exception": exc})
        if self.heap:
            self.armed = self.heap[0]
            self.handle = self.loop.call_at(self.armed * TICK, self.fire)


cdef LazyTimer new_timer(object loop, object callback):
    cdef LazyTimer t = LazyTimer.__new__(LazyTimer)
    t.callback = callback
    t.wheel = wheel_for(loop)
    return t


cdef LazyTimer owned_timer(object loop, TimerOwner owner):
    """A timer that calls owner.on_timer(); the owner drops it when it ends
    (it holds the owner: a cycle until then)."""
    cdef LazyTimer t = LazyTimer.__new__(LazyTimer)
    t.owner = owner
    t.wheel = wheel_for(loop)
    return t


cdef class TimerOwner:
    cdef int on_timer(self) except -1:
        return 0


cdef class LazyTimer:
    def __init__(self, loop, callback):
        self.callback = callback
        self.wheel = wheel_for(loop)

    cdef int schedule(self, double at) except -1:
        """Make sure the callback runs by `at` (to the next 10 ms). A later
        deadline needs nothing: the owner re-arms for the remainder when the
        timer fires early."""
        cdef long long tick = <long long>(at / TICK) + 1
        if self.tick:
            if self.tick <= tick:
                return 0
            self.wheel.remove(self)
        self.tick = tick
        self.wheel.add(self, tick)
        return 0

    cdef int cancel(self) except -1:
        if self.tick:
            self.wheel.remove(self)
            self.tick = 0
        return 0


cdef class ForwardedLines:
    pass
