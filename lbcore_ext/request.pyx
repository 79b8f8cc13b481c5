# cython: language_level=3
"""The request core: one protocol-neutral Request, filled by a front-end
(HTTP/1.1 bytes in http1.pyx, HTTP/2 frames in http2.pyx), then admitted,
decided, rewritten for the member and logged here, once for both.

Where framing ends: the front-ends parse their wire format, apply the rules
that only exist in it (llhttp's strict grammar; RFC 9113's pseudo-fields and
connection-specific fields) and call, in this order:
    Request.new -> add_target / field ... -> head_complete -> decide
    -> upstream_head (forward) or answer_* (answer locally) -> body_bytes ...
A refusal is a status code (refuse() marks it, refused() counts and logs it);
each front-end writes it in its own framing: an HTTP/1.1 response, or on
HTTP/2 a response or, for a malformed request, RST_STREAM(PROTOCOL_ERROR)."""

include "consts.pxi"

cimport cython
from cpython.bytearray cimport PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.string cimport memchr, memcmp

from lbcore_ext.bufs cimport (fnv_hash, hex_value, lower_hash, new_ba, put, put_ba,
                              put_header, put_header_at, put_int, same_lower)
from lbcore_ext.clock cimport clock_now, monotonic
from lbcore_ext.counters cimport add, count_reason, count_response, inc, shared_cell
from lbcore_ext.headers cimport error_body, error_response, header_line, reason_phrase
from lbcore_ext.policy cimport A_FIXED, A_FORWARD, A_REDIRECT, Facts, Policy
from lbcore_ext.ratelimit cimport take
from lbcore_ext.runtime cimport ListenerRuntime

from lbcore_ext.counters import BYTES_IN, BYTES_OUT, R_QPS_LIMIT, REQUESTS
from lbcore_ext.policy import ROUTER_CODE_QPS
from lbcore_ext.phases import HOOK_REQUEST_FILTER, RequestView

from lbcore_ext.runtime import (H_CONNECTION, H_CONTENT_LENGTH, H_COOKIE, H_DROP, H_HOST,
                                H_LOGGED, H_PASS, H_REQUEST_ID, H_RULE_SLOT, H_TRANSFER_ENCODING,
                                H_UPGRADE, H_XFF, XFF_APPEND, XFF_OFF, XFF_PRESERVE)

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
cdef int A_PASS = H_PASS
cdef int A_RULE_SLOT = H_RULE_SLOT
cdef int G_QPS_LIMIT = R_QPS_LIMIT
cdef bytes QPS_LINES = b"Retry-After: 1\r\nx-router-code: " + ROUTER_CODE_QPS + b"\r\n"
cdef int M_APPEND = XFF_APPEND
cdef int M_PRESERVE = XFF_PRESERVE
cdef int M_OFF = XFF_OFF
cdef int K_REQUEST_FILTER = HOOK_REQUEST_FILTER
cdef Py_ssize_t O_REQUESTS = REQUESTS
cdef Py_ssize_t O_BYTES_IN = BYTES_IN
cdef Py_ssize_t O_BYTES_OUT = BYTES_OUT
cdef object wall_time = __import__("time").time

# Field names up to this long are lower-cased on the stack (longer ones, rare,
# through a bytes object).
DEF FIELD_NAME_FAST = 64


# RFC 3986 host (reg-name / IP-literal) plus ":" port: anything else in Host is a 400.
cdef unsigned char HOST_OK[256]
# RFC 9110 5.6.2 tchar: methods and field names.
cdef unsigned char TCHAR[256]
# RFC 3986 2.3 unreserved: decoded where percent-encoded (6.2.2.2).
cdef unsigned char UNRESERVED[256]
cdef bytes HEXDIGITS = b"0123456789ABCDEF"
for _c in range(256):
    UNRESERVED[_c] = 1 if bytes((_c,)) in (
        b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~") else 0
    HOST_OK[_c] = 1 if bytes((_c,)) in (
        b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~%!$&'()*+,;=:[]") else 0
    TCHAR[_c] = 1 if bytes((_c,)) in (
        b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-.^_`|~") else 0


cdef inline bint all_in(const unsigned char* table, const unsigned char* p,
                        Py_ssize_t n) noexcept:
    """n > 0 bytes, each allowed by `table`."""
    cdef Py_ssize_t i
    if n == 0:
        return False
    for i in range(n):
        if not table[p[i]]:
            return False
    return True


cdef inline bint is_space(char c) noexcept:
    """What bytes.strip() strips: SP, HTAB, LF, VT, FF, CR."""
    return c == 32 or 9 <= c <= 13


cdef bint valid_host(bytes value):
    return all_in(HOST_OK, <const unsigned char*>PyBytes_AS_STRING(value),
                  PyBytes_GET_SIZE(value))


cdef bint valid_token(const unsigned char* p, Py_ssize_t n) noexcept:
    return all_in(TCHAR, p, n)


cdef bint valid_field_value(const unsigned char* p, Py_ssize_t n) noexcept:
    """RFC 9110 5.5: VCHAR, obs-text, SP and HTAB inside; no CTL (VT, NUL,
    CR, LF...) or DEL anywhere, no whitespace at either end. llhttp enforces
    this grammar for HTTP/1.1; HTTP/2 fields come here."""
    cdef Py_ssize_t i
    cdef unsigned char c
    if n and (p[0] == 32 or p[0] == 9 or p[n - 1] == 32 or p[n - 1] == 9):
        return False
    for i in range(n):
        c = p[i]
        if (c < 32 and c != 9) or c == 127:
            return False
    return True


cdef bint valid_target_chars(bytes t):
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(t)
    cdef Py_ssize_t i, n = PyBytes_GET_SIZE(t)
    for i in range(n):
        if p[i] <= 32 or p[i] == 127:
            return False
    return True


cdef long long parse_length(bytes value):
    """Content-Length digits, or -1 (the framings already refuse most bad ones)."""
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(value)
    cdef Py_ssize_t i, n = PyBytes_GET_SIZE(value)
    cdef Py_ssize_t j = 0
    cdef long long v = 0
    while j < n and (p[j] == 32 or p[j] == 9):
        j += 1
    while n > j and (p[n - 1] == 32 or p[n - 1] == 9):
        n -= 1
    if n == j or n - j > 18:
        return -1
    for i in range(j, n):
        if p[i] < 48 or p[i] > 57:
            return -1
        v = v * 10 + (p[i] - 48)
    return v


cdef long long local_size(int status, bytes lines, bytes body, bint head):
    """The bytes of http1.local_response(status, lines, body, head):
    "HTTP/1.1 200 " reason CRLF, lines, "Content-Length: " digits CRLF,
    "Connection: close" CRLF CRLF, the body unless HEAD."""
    cdef long long nbody = PyBytes_GET_SIZE(body) if body is not None else 0
    cdef long long n = 13 + PyBytes_GET_SIZE(reason_phrase(status)) + 2 + 16 + 23
    cdef long long v = nbody
    if lines is not None:
        n += PyBytes_GET_SIZE(lines)
    if not head:
        n += nbody
    while True:
        n += 1
        v //= 10
        if v == 0:
            break
    return n


cdef tuple answer_parts(object answer):
    """A hook's answer (status, [(name, value)], body) as (status, header
    lines, body bytes), its fields checked once (header_line)."""
    status, headers, body = answer
    if isinstance(body, str):
        body = body.encode()
    return (int(status), b"".join([header_line(n, v) for n, v in headers or ()]),
            bytes(body or b""))


cdef bytes normalise_path(bytes path):
    """The path a forwarding policy matches and the member gets (spec 10),
    so that no policy can be bypassed by spelling a path another way: what
    RFC 3986 6.2.2 says is the same path is made the same bytes.
    - percent-encoded unreserved characters are decoded (%41 -> A, %2E -> .),
      other escapes kept with upper-case digits (%2f -> %2F: an encoded slash
      stays data, never a separator);
    - dot-segments are removed (5.2.4) and repeated slashes merged, as nginx
      does before matching locations.
    None (the request gets 400) for a bad escape, %00, or ".." above the root.
    Without "%", "//" or "/." the path is returned as it is, at no cost."""
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(path)
    cdef Py_ssize_t i, n = PyBytes_GET_SIZE(path)
    cdef unsigned char c, v
    for i in range(n):
        c = p[i]
        if c == 37 or (c == 47 and i + 1 < n and (p[i + 1] == 47 or p[i + 1] == 46)):
            break
    else:
        return path
    cdef bytearray buf = bytearray()
    i = 0
    while i < n:
        c = p[i]
        if c == 37:
            if i + 2 >= n or hex_value(p[i + 1]) > 15 or hex_value(p[i + 2]) > 15:
                return None
            v = hex_value(p[i + 1]) * 16 + hex_value(p[i + 2])
            if v == 0:
                return None
            if UNRESERVED[v]:
                buf.append(v)
            else:
                buf.append(37)
                buf.append(HEXDIGITS[v >> 4])
                buf.append(HEXDIGITS[v & 15])
            i += 3
        else:
            buf.append(c)
            i += 1
    segs = bytes(buf).split(b"/")
    cdef Py_ssize_t last = len(segs) - 1
    out = []
    for i in range(1, last + 1):
        seg = segs[i]
        if seg == b".":
            pass
        elif seg == b"..":
            if not out:
                return None
            out.pop()
        elif seg or i == last:
            out.append(seg)
            continue
        else:
            continue
        if i == last:
            out.append(b"")
    return b"/" + b"/".join(out)


cdef class Client:
    cdef bytes tls_lines(self):
        if self._tls_lines is None:
            self._tls_lines = self.lrt.tls_lines(self.transport) if self.lrt.tls_fields else b""
        return self._tls_lines

    cdef bytes local_authority(self):
        """host:port of the listener address this connection reached."""
        sock = self.transport.get_extra_info("sockname") if self.transport is not None else None
        if not sock:
            return b"localhost"
        host = sock[0]
        if host.startswith("::ffff:") and "." in host:
            host = host[7:]
        if ":" in host:
            host = f"[{host}]"
        return f"{host}:{sock[1]}".encode()

    cdef tuple tls_info(self):
        if self._tls_info is None:
            sslobj = (self.transport.get_extra_info("ssl_object")
                      if self.lrt.ssl_ctx is not None and self.transport is not None else None)
            self._tls_info = ((sslobj.version(), sslobj.cipher()[0],
                               getattr(sslobj, "lbcore_sni", None), bool(sslobj.session_reused))
                              if sslobj is not None else (None, None, None, None))
        return self._tls_info


@cython.freelist(64)
cdef class Request:
    @staticmethod
    cdef Request new(Client client):
        cdef Request self = Request.__new__(Request)
        self.client = client
        self.lrt = client.lrt
        self.hbuf = new_ba(HEAD_RESERVE)
        self.cl = -1
        self.pbase = client.lrt.pbase_local
        self.t_start = monotonic()
        return self

    # ---- admission --------------------------------------------------------------

    cdef int refuse(self, int code) except -1:
        """Mark the request refused with `code` (the first refusal wins)."""
        if self.error == 0:
            self.error = code
        return self.error

    cdef int add_target(self, bytes part) except -1:
        """The request target, possibly in pieces (llhttp's on_url)."""
        self.target = part if self.target is None else self.target + part
        if PyBytes_GET_SIZE(self.target) > self.lrt.max_request_line:
            return self.refuse(414)
        return 0

    cdef int absolute_form(self) except -1:
        """An HTTP/1.1 absolute-form target (http://host/path, RFC 9112
        3.2.2): its authority is the request's host, as HTTP/2's :authority
        (so Host, if sent, must name the same), and the member gets the
        origin-form path: never two hosts for one request."""
        cdef bytes t = self.target
        if self.authority is not None or t is None or PyBytes_GET_SIZE(t) == 0 or t[0] == 47:
            return 0
        cdef Py_ssize_t skip
        if t[:7].lower() == b"http://":
            skip = 7
        elif t[:8].lower() == b"https://":
            skip = 8
        else:
            return 0
        cdef Py_ssize_t end = skip
        cdef Py_ssize_t n = PyBytes_GET_SIZE(t)
        while end < n and t[end] != 47 and t[end] != 63:      # '/', '?'
            end += 1
        auth = t[skip:end]
        if not auth or b"@" in auth:
            return self.refuse(400)
        rest = t[end:]
        self.target = rest if rest[:1] == b"/" else b"/" + rest
        self.set_authority(auth)
        return 0

    cdef int field(self, bytes name, bytes lname, bytes value) except -1:
        """One header field as bytes (HTTP/2); `lname` is its name in lower
        case. Returns 0, or the status of the refusal."""
        return self.field_at(PyBytes_AS_STRING(name), PyBytes_GET_SIZE(name),
                             PyBytes_AS_STRING(lname),
                             fnv_hash(PyBytes_AS_STRING(lname), PyBytes_GET_SIZE(lname)),
                             PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value), value)

    cdef int field_raw(self, const char* name, Py_ssize_t nn, const char* value,
                       Py_ssize_t vn) except -1:
        """One header field still in the parser's input (HTTP/1.1): a field
        lbcore only forwards is copied once, into the head, and never becomes
        a Python object."""
        cdef char low[FIELD_NAME_FAST]
        cdef bytes lname
        if nn <= FIELD_NAME_FAST:
            return self.field_at(name, nn, low, lower_hash(name, low, nn), value, vn, None)
        lname = PyBytes_FromStringAndSize(name, nn).lower()
        return self.field_at(name, nn, PyBytes_AS_STRING(lname),
                             fnv_hash(PyBytes_AS_STRING(lname), nn), value, vn, None)

    cdef int field_at(self, const char* name, Py_ssize_t nn, const char* low, unsigned int h,
                      const char* vp, Py_ssize_t vn, bytes value) except -1:
        """field() and field_raw(): the name, its lower case and lower_hash,
        the value (and its bytes when the caller has them)."""
        cdef ListenerRuntime lrt = self.lrt
        cdef Py_ssize_t size = nn + vn + 4
        self.nheaders += 1
        self.block_size += size
        if self.error:
            return self.error
        if (size > lrt.max_header_size or self.nheaders > lrt.max_headers
                or self.block_size > lrt.max_header_block):
            return self.refuse(431)
        if self.nheaders == 1 and not self.is_h2:
            self.absolute_form()
        cdef int a = lrt.action_of(low, nn, h)
        if a == 0:
            put_header_at(self.hbuf, name, nn, vp, vn)
            return 0
        if a == A_DROP:
            # Hop-by-hop or owned by lbcore: never forwarded.
            return 0
        if a == A_CONNECTION:
            # (Its tokens are read where they lie: Connection: close and
            # keep-alive make no bytes object.)
            return self.connection_tokens(vp, vn)
        if value is None:
            value = PyBytes_FromStringAndSize(vp, vn)
        cdef long long n
        if a >= A_RULE_SLOT:
            # A field a header rule of a forwarding policy reads (and maybe
            # one with an action of its own, in the low byte).
            if self.facts is None:
                self.facts = Facts.__new__(Facts)
            self.facts.store((a >> 8) - 1, lrt.policies.nslots, value)
            a &= 255
            if a == A_PASS:
                put_header_at(self.hbuf, name, nn, vp, vn)
                return 0
        if a == A_HOST:
            if self.host is not None or not valid_host(value):
                return self.refuse(400)
            self.host = value
            if self.authority is None:
                put_header_at(self.hbuf, name, nn, vp, vn)
            elif value.lower() != self.authority.lower():
                # RFC 9113 8.3.1: Host, when sent too, names the same authority.
                return self.refuse(400)
        elif a == A_XFF:
            if lrt.xff_mode == M_PRESERVE or lrt.xff_mode == M_OFF:
                put_header_at(self.hbuf, name, nn, vp, vn)
            elif lrt.xff_mode == M_APPEND:
                self.xff = value if self.xff is None else self.xff + b", " + value
        elif a == A_COOKIE:
            # Joined into one field: HTTP/2 splits cookies (RFC 9113 8.2.3) and
            # an HTTP/1.1 member wants one line (RFC 6265 5.4).
            if self.cookie is None:
                self.cookie = value
                self.cookie_name = PyBytes_FromStringAndSize(name, nn)
            else:
                self.cookie = self.cookie + b"; " + value
        elif a == A_REQUEST_ID or a == A_LOGGED:
            if a == A_REQUEST_ID:
                self.request_id = value
            elif low[0] == 117:                                 # 'u': user-agent
                self.user_agent = value
            else:
                self.referer = value
            put_header_at(self.hbuf, name, nn, vp, vn)
        elif a == A_CL:
            n = parse_length(value)
            if n < 0 or (self.cl >= 0 and n != self.cl):
                return self.refuse(400)
            self.cl = n
        elif a == A_TE:
            if value.strip().lower() == b"chunked":
                self.chunked = True
            else:
                self.bad_te = True
        elif a == A_CONNECTION:
            self.connection_tokens(PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value))
        elif a == A_UPGRADE:
            self.upgrade = value
        return 0

    cdef int connection_tokens(self, const char* vp, Py_ssize_t vn) except -1:
        """Connection's comma-separated tokens: keep-alive noted, close and
        upgrade read elsewhere (llhttp's flags, the Upgrade field), any other
        name one more hop-by-hop field to drop. A token naming a field lbcore
        frames, routes or owns (Host, Content-Length, Transfer-Encoding,
        Cookie, X-Forwarded-For, X-Real-IP...) is ignored, as nginx ignores
        them all: the client can't strip what the member needs or what
        lbcore sets."""
        cdef Py_ssize_t i = 0, b, e, n
        cdef bytes tok
        cdef unsigned int h
        while i <= vn:
            b = i
            while i < vn and vp[i] != 44:                   # ','
                i += 1
            e = i
            i += 1
            while b < e and is_space(vp[b]):
                b += 1
            while e > b and is_space(vp[e - 1]):
                e -= 1
            n = e - b
            if n == 0:
                continue
            if n == 10 and same_lower(vp + b, "keep-alive", 10):
                self.keepalive_token = True
                continue
            if ((n == 5 and same_lower(vp + b, "close", 5))
                    or (n == 7 and same_lower(vp + b, "upgrade", 7))):
                continue
            tok = PyBytes_FromStringAndSize(NULL, n)
            h = lower_hash(vp + b, PyBytes_AS_STRING(tok), n)
            if self.lrt.action_of(PyBytes_AS_STRING(tok), n, h) == 0:
                if self.conn_tokens is None:
                    self.conn_tokens = []
                self.conn_tokens.append(tok)
        return 0

    cdef int set_authority(self, bytes value) except -1:
        """HTTP/2's :authority (the pseudo-fields come before every field):
        the member gets it as the host line, first, where an HTTP/1.1
        client's Host would be. Validated in head_complete."""
        self.authority = value
        put_header(self.hbuf, b"host", value)
        return 0

    cdef int trailer(self, bytes name, bytes value) except -1:
        """A request trailer field (HTTP/2): forwarded in the chunked body's
        trailer section when the member gets a chunked body; fields that
        frame, route or are lbcore's own never are (RFC 9110 6.5.1)."""
        if self.lrt._actions.get(name) is not None:
            return 0
        if self.trailers is None:
            self.trailers = b""
        if len(self.trailers) + len(name) + len(value) + 4 <= self.lrt.max_header_block:
            self.trailers += name + b": " + value + b"\r\n"
        return 0

    cdef int head_complete(self) except -1:
        """Every rule a complete request head must pass (spec 5, 7.3, 8, 9).
        Returns 0, or the status of the refusal."""
        cdef ListenerRuntime lrt = self.lrt
        self._count()
        self.rx_head = self.rx_bytes()
        add(lrt.counters, lrt.cbase + O_BYTES_IN, self.rx_head)
        if self.nheaders == 0 and not self.is_h2:
            self.absolute_form()
        if self.error:
            return self.error
        cdef bytes m = self.method
        if m is None or not valid_token(<const unsigned char*>PyBytes_AS_STRING(m),
                                        PyBytes_GET_SIZE(m)):
            return self.refuse(400)
        if self.bad_te:
            return self.refuse(501)
        if self.scheme is not None and self.scheme != lrt.scheme:
            return self.refuse(400)
        if self.authority is not None:
            # (Its host line went first, where an HTTP/1.1 client's would be.)
            if not valid_host(self.authority):
                return self.refuse(400)
            if self.host is None:
                self.host = self.authority
        if self.host is None:
            if not self.http10:
                return self.refuse(400)
            # HTTP/1.0 may omit Host; the member gets HTTP/1.1, which may not.
            # It gets the address the client reached (the listener's), as
            # nginx falls back to its server name.
            self.host = self.client.local_authority()
            put_header(self.hbuf, b"Host", self.host)
        if m == b"CONNECT":
            if self.target is None:
                self.target = self.authority
            return self.refuse(405)
        cdef bytes t = self.target
        if t is None or PyBytes_GET_SIZE(t) == 0 or not valid_target_chars(t):
            return self.refuse(400)
        if t[0] != 47:                                  # '/': origin-form
            if t == b"*":
                if m != b"OPTIONS":
                    return self.refuse(400)
            elif self.is_h2 or not (t[:7].lower() == b"http://" or t[:8].lower() == b"https://"):
                return self.refuse(400)
        if self.cl > lrt.max_body:
            return self.refuse(413)
        if self.is_h2:
            if self.end_stream:
                # HEADERS with END_STREAM has no body, whatever content-length
                # says: never promise a member body bytes that won't come (0.CL).
                if self.cl > 0:
                    return self.refuse(400)
                self.has_body = False
            else:
                self.has_body = True
                self.chunked = self.cl < 0
        else:
            self.has_body = self.chunked or self.cl > 0
        if lrt.sni_guard is not None and lrt.sni_guard.misdirected(self.client.sni_name,
                                                                   self.host):
            return self.refuse(421)
        if self.upgrade is not None and self.has_body:
            # An upgrade with a body: what is tunnel and what is body would be
            # the member's guess (request smuggling across the switch).
            return self.refuse(400)
        if self.upgrade is not None and self.upgrade.lower().find(b"h2c") >= 0:
            # No h2c (spec 9): a cleartext HTTP/2 tunnel would carry requests past
            # every rule of this proxy ("h2c smuggling"). Forwarded without Upgrade.
            self.upgrade = None
        if lrt.policies is not None:
            return self._facts()
        return 0

    cdef int _facts(self) except -1:
        """What the listener's forwarding policies read; the path is
        normalised here, and the member gets the same normalised path."""
        cdef Facts f = self.facts
        if f is None:
            f = self.facts = Facts.__new__(Facts)
        cdef bytes t = self.target
        cdef const char* tp = PyBytes_AS_STRING(t)
        cdef const char* qp = <const char*>memchr(tp, 63, PyBytes_GET_SIZE(t))   # '?'
        cdef Py_ssize_t q = -1 if qp == NULL else qp - tp
        cdef bytes raw = t if q < 0 else t[:q]
        f.query = None if q < 0 else t[q + 1:]
        if raw == b"*":
            f.path = raw
        else:
            f.path = normalise_path(raw)
            if f.path is None:
                return self.refuse(400)
            if f.path is not raw:
                self.target = f.path if q < 0 else f.path + b"?" + f.query
        f.method = self.method
        f.host = self.host
        f.cookie = self.cookie
        f.peer_ip = self.client.peer_ip
        return 0

    cdef int body_bytes(self, Py_ssize_t n) except -1:
        """Body bytes received; returns 413 once max_body is passed."""
        self.body_seen += n
        add(self.lrt.counters, self.lrt.cbase + O_BYTES_IN, n)
        if self.body_seen > self.lrt.max_body:
            return self.refuse(413)
        return 0

    # ---- the decision ------------------------------------------------------------

    cdef int decide(self) except -1:
        """Forward to a pool, or answer here: the listener's forwarding
        policies first (spec 10), then the hooks. Without policies or hooks
        this is the default pool and nothing else."""
        cdef ListenerRuntime lrt = self.lrt
        cdef Policy p = None
        self.pool = lrt.pool
        self.pbase = lrt.pbase
        if lrt.policies is not None:
            p = lrt.policies.route(self.facts)
            if p is not None:
                self.policy = p
                inc(lrt.counters, p.match_cell)
                if p.bucket >= 0 and lrt.counters is not None and not take(
                        shared_cell(lrt.counters, p.bucket), p.interval_ns, p.tolerance_ns):
                    return self._answer(503, QPS_LINES, b"", G_QPS_LIMIT + 1)
                if p.action == A_REDIRECT:
                    return self._answer(p.status, b"Location: " + p.location(
                        lrt.scheme, self.facts) + b"\r\n", b"", 0)
                if p.action == A_FIXED:
                    return self._answer(p.status, p.lines, p.body, 0)
                self.apply_policy(p)
        if lrt.access_log is not None:
            self._meta()
        if lrt.hooks:
            self.view = RequestView(self.method, self.target, self.version,
                                    self.client.peer_ip.decode(), int(self.client.peer_port),
                                    lrt.name, bytes(self.hbuf))
            self.view.policy = p.name if p is not None else None
            self.view.pool = self.pool.name
            if lrt.hooks & K_REQUEST_FILTER:
                answer = lrt.phases.request_filter(self.view)
                if answer is not None:
                    self.set_answer(answer)
                    self.pbase = lrt.pbase_local
                    return D_ANSWER
        return D_FORWARD

    cdef int _answer(self, int status, bytes lines, bytes body, int reason) except -1:
        """A policy answers: redirect, fixed response, or its qps limit."""
        self.answer_status = status
        self.answer_lines = lines
        self.answer_body = body
        self.gen_reason = reason
        self.pbase = self.lrt.pbase_local
        if self.lrt.access_log is not None:
            self._meta()
        return D_ANSWER

    cdef int apply_policy(self, Policy p) except -1:
        """A forward: its pool (or one of its weighted pools), the fields it
        inserts and removes, and its URL rewrite."""
        cdef ListenerRuntime lrt = self.lrt
        cdef Py_ssize_t i
        cdef Facts f = self.facts
        if p.pool is not None:
            self.pool = p.pool
            self.pbase = p.pbase
        else:
            i = p.choose(self.cookie)
            if i >= 0:
                self.pool = p.pools[i]
                self.pbase = p.pbases[i]
        if p.remove:
            self.conn_tokens = p.remove if self.conn_tokens is None else self.conn_tokens + p.remove
        if p.insert_lines:
            self.extra_lines = p.insert_lines
        if p.rw_host is not None:
            host = p.rewrite(p.rw_host, f, None)
            self.conn_tokens = [b"host"] if self.conn_tokens is None else self.conn_tokens + [b"host"]
            line = b"Host: " + host + b"\r\n"
            self.extra_lines = line if self.extra_lines is None else line + self.extra_lines
        if p.rw_path is not None or p.rw_query is not None:
            path = p.rewrite(p.rw_path, f, f.path)
            query = p.rewrite(p.rw_query, f, f.query)
            if not path.startswith(b"/"):
                path = b"/" + path
            self.target = path + b"?" + query if query else path
        return 0

    def set_answer(self, answer):
        self.answer_status, self.answer_lines, self.answer_body = answer_parts(answer)

    cdef bint is_head(self):
        return self.method == b"HEAD"

    cdef bint idempotent(self) noexcept:
        """RFC 9110 9.2.2: GET, HEAD, OPTIONS, PUT, DELETE and TRACE may be
        retried after they were sent (compared in C: no set lookup)."""
        cdef bytes m = self.method
        if m is None:
            return False
        cdef const char* p = PyBytes_AS_STRING(m)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(m)
        if n == 3:
            return memcmp(p, b"GET", 3) == 0 or memcmp(p, b"PUT", 3) == 0
        if n == 4:
            return memcmp(p, b"HEAD", 4) == 0
        if n == 5:
            return memcmp(p, b"TRACE", 5) == 0
        if n == 6:
            return memcmp(p, b"DELETE", 6) == 0
        return n == 7 and memcmp(p, b"OPTIONS", 7) == 0

    # ---- toward the member ---------------------------------------------------------

    cdef bytearray upstream_head(self):
        """The HTTP/1.1 head the member gets: the client's fields minus
        hop-by-hop and owned ones, then lbcore's (spec 5)."""
        cdef ListenerRuntime lrt = self.lrt
        cdef bytearray out = new_ba(PyByteArray_GET_SIZE(self.hbuf) + HEAD_RESERVE)
        put(out, self.method)
        put(out, b" ")
        put(out, self.target)
        put(out, b" HTTP/1.1\r\n")
        if self.conn_tokens is None:
            put_ba(out, self.hbuf)
        else:
            # Rare: Connection names more hop-by-hop headers; filter them out.
            for line in bytes(self.hbuf).split(b"\r\n"):
                if line and line.split(b":", 1)[0].strip().lower() not in self.conn_tokens:
                    out += line
                    out += b"\r\n"
        if self.cookie is not None:
            put_header(out, self.cookie_name, self.cookie)
        if self.extra_lines is not None:
            put(out, self.extra_lines)
        if lrt.access_log is not None and self.request_id is None:
            self._meta()                # (decide() made it already: a no-op)
            put_header(out, b"X-Request-ID", self.meta[6])
        if self.upgrade is not None:
            put(out, b"Connection: upgrade\r\n")
            put_header(out, b"Upgrade", self.upgrade)
        if self.chunked:
            put(out, b"Transfer-Encoding: chunked\r\n")
        elif self.cl >= 0:
            put(out, b"Content-Length: ")
            put_int(out, self.cl)
            put(out, b"\r\n")
        cdef Client client = self.client
        if client.fwd is None or client.fwd.lrt is not lrt:
            client.fwd = lrt.forwarded_lines(client.peer_ip, client.peer_port,
                                             client.tls_lines())
        lrt.append_forwarded(out, client.fwd, self.xff, self.host, self.view)
        put(out, b"\r\n")
        return out

    # ---- counting and the access log ---------------------------------------------

    cdef int _meta(self) except -1:
        """What the access log needs of this request, as one tuple (the
        control plane formats it later, in batches)."""
        cdef ListenerRuntime lrt = self.lrt
        if self.meta is not None or lrt.access_log is None:
            return 0
        if self.host is None and self.authority is not None and valid_host(self.authority):
            self.host = self.authority
        rid = self.request_id if self.request_id is not None else lrt.next_request_id()
        self.meta = (wall_time(), self.client.peer_ip, self.client.peer_port, self.method,
                     self.target, self.version, rid, self.user_agent, self.referer,
                     self.xff, self.host, lrt.name,
                     (self.pool if self.pool is not None else lrt.pool).name,
                     self.client.tls_info(),
                     self.policy.name if self.policy is not None else None)
        return 0

    cdef int _count(self) except -1:
        if not self.counted:
            self.counted = True
            inc(self.lrt.counters, self.lrt.cbase + O_REQUESTS)
        return 0

    cdef long long rx_bytes(self):
        """The head as HTTP/1.1 text: request line, fields as received (an
        HTTP/2 :authority as its host line), the blank line."""
        if self.rx_head:
            return self.rx_head
        cdef long long n = self.block_size + 14        # " " " HTTP/1.1\r\n" "\r\n"
        if self.method is not None:
            n += PyBytes_GET_SIZE(self.method)
        if self.target is not None:
            n += PyBytes_GET_SIZE(self.target)
        if self.is_h2 and self.authority is not None:
            n += PyBytes_GET_SIZE(self.authority) + 8
        return n

    cdef long long answer_size(self, int status, bint generated, bint body):
        """Bytes of an answer of lbcore's own as HTTP/1.1 writes it; with
        `body` False, its body's alone."""
        cdef bint head = self.is_head()
        if generated:
            if not body:
                return 0 if head else PyBytes_GET_SIZE(error_body(status))
            return PyBytes_GET_SIZE(error_response(status, None, True, head))
        if not body:
            return 0 if head or self.answer_body is None else PyBytes_GET_SIZE(self.answer_body)
        return local_size(status, self.answer_lines, self.answer_body, head)

    cdef int refused(self, int code) except -1:
        """A refusal was written: count it and log it."""
        return self.answered(code, True)

    cdef int answered(self, int status, bint generated) except -1:
        """lbcore answered this request itself (refusal, hook answer)."""
        cdef ListenerRuntime lrt = self.lrt
        cdef long long tx = self.answer_size(status, generated, True)
        self._count()
        add(lrt.counters, lrt.cbase + O_BYTES_OUT, tx)
        if self.gen_reason:
            count_reason(lrt.counters, lrt.cbase, self.pbase, status, self.gen_reason - 1, -1.0)
        else:
            count_response(lrt.counters, lrt.cbase, self.pbase, status, generated, -1.0)
        if lrt.access_log is not None:
            self._meta()
            lrt.access_log.append((self.meta, status, clock_now() - self.t_start,
                                   None, self.rx_bytes() + self.body_seen, tx,
                                   self.answer_size(status, generated, False)))
        return 0
