# cython: language_level=3
"""Forwarding policies (spec 10), compiled for the request core's decision
step (Request.decide): matching, the forward's pool choice, redirect
locations and URL rewrites. The control plane compiles a listener's policies
once per config (compile_table); a request then walks C-typed rules with no
Python call beyond what a match needs.

Matching order: priority, smaller first; the first policy whose every rule
matches wins. A request only evaluates the policies that could match it:
the table indexes each policy by one of its exact rules (host, path, path
prefix, method or a field's value), and a few dict lookups give the set of
candidates as a bit mask, walked in priority order. 100 policies on
distinct hosts, paths and field values cost those lookups and the policies
left (regexes, wildcards). Within a policy, the cheapest rules run first
(method, host, path, source IP, then fields, query, cookie, regexes)."""

cdef extern from *:
    """
    static inline int lb_ctz64(unsigned long long x) { return __builtin_ctzll(x); }
    """
    int lb_ctz64(unsigned long long x) nogil

include "consts.pxi"

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_GetItemWithError
from cpython.long cimport PyLong_AsSsize_t
from cpython.object cimport PyObject
from libc.stdint cimport uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcmp

from lbcore_ext.bufs cimport hex_value

from lbcore_ext.balancer cimport Member, Pool, cookie_value
from lbcore_ext.iptrie cimport IpTrie
from lbcore_ext.regex cimport Regex

import re

from lbcore_ext.balancer import STICKY_APP_COOKIE, STICKY_LB_COOKIE
from lbcore_ext.regex import glob_regex

cdef int S_LB_COOKIE = STICKY_LB_COOKIE
cdef int S_APP_COOKIE = STICKY_APP_COOKIE

# Rule kinds, in the order a policy evaluates them (cheapest first).
cdef enum:
    K_METHOD = 0
    K_HOST = 1
    K_PATH_EXACT = 2
    K_PATH_PREFIX = 3
    K_SOURCE_IP = 4
    K_HEADER = 5
    K_QUERY = 6
    K_COOKIE = 7
    K_PATH_REGEX = 8

# Template variables (redirect URL parts, URL rewrites).
cdef enum:
    V_PROTOCOL = 0
    V_HOST = 1
    V_PORT = 2
    V_PATH = 3
    V_QUERY = 4

TEMPLATE_VARS = {"protocol": V_PROTOCOL, "host": V_HOST, "port": V_PORT, "path": V_PATH,
                 "query": V_QUERY}
_VAR = re.compile(r"\$\{([A-Za-z_]+)\}")
ACTIONS = {"forward": A_FORWARD, "redirect": A_REDIRECT, "fixed_response": A_FIXED}
CONN_RATE_BURST_NS = int(CONN_RATE_BURST_SECONDS * 1e9)     # (consts.pxi)
# The trie's keys: one int object per byte value (never made per request).
cdef tuple BYTE_KEYS = tuple(range(256))
# What x-router-code says when a policy's qps_limit turned a request away.
ROUTER_CODE_QPS = b"50002"


cdef inline bint starts_with(bytes s, bytes prefix) noexcept:
    cdef Py_ssize_t n = PyBytes_GET_SIZE(prefix)
    return PyBytes_GET_SIZE(s) >= n and memcmp(PyBytes_AS_STRING(s), PyBytes_AS_STRING(prefix),
                                               n) == 0


cdef inline bint ends_with_label(bytes s, bytes suffix) noexcept:
    """`s` is one or more labels then `suffix` (".example.com")."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(suffix), m = PyBytes_GET_SIZE(s)
    return m > n and memcmp(PyBytes_AS_STRING(s) + m - n, PyBytes_AS_STRING(suffix), n) == 0


cdef Py_ssize_t _host_end(bytes host) noexcept:
    """Where the host name ends and ":port" begins (IPv6 literals in brackets)."""
    cdef const char* p = PyBytes_AS_STRING(host)
    cdef Py_ssize_t i, n = PyBytes_GET_SIZE(host)
    if n and p[0] == 91:                                # '['
        for i in range(n):
            if p[i] == 93:                              # ']'
                return i + 1
        return n
    for i in range(n - 1, -1, -1):
        if p[i] == 58:                                  # ':'
            return i
    return n


cdef bytes host_part(bytes host):
    """The host without its port, as received."""
    cdef Py_ssize_t end = _host_end(host)
    return host if end == PyBytes_GET_SIZE(host) else host[:end]


cdef bytes port_part(bytes host):
    """The port of a Host value, or None."""
    cdef Py_ssize_t i = _host_end(host)
    return host[i + 1:] if i + 1 < PyBytes_GET_SIZE(host) else None


cdef bytes lower(bytes s, Py_ssize_t n):
    """The first `n` bytes of `s` in ASCII lower case: `s` itself when that
    is all of it and already lower case (no copy), else one new object."""
    cdef const char* p = PyBytes_AS_STRING(s)
    cdef Py_ssize_t i
    cdef char c
    cdef bint upper = False
    for i in range(n):
        if 65 <= p[i] <= 90:
            upper = True
            break
    if not upper:
        return s if n == PyBytes_GET_SIZE(s) else p[:n]
    cdef bytes out = PyBytes_FromStringAndSize(NULL, n)
    cdef char* q = PyBytes_AS_STRING(out)
    for i in range(n):
        c = p[i]
        q[i] = c + 32 if 65 <= c <= 90 else c
    return out


cdef bytes host_key(bytes host):
    """What host rules compare: lower case, no port, no trailing dot."""
    if host is None:
        return b""
    cdef Py_ssize_t n = _host_end(host)
    cdef const char* p = PyBytes_AS_STRING(host)
    while n > 0 and p[n - 1] == 46:                     # '.'
        n -= 1
    return lower(host, n)


cdef bytes pct_decode(bytes s, bint plus):
    """%XX decoded (and + as space, in a query); a bad escape stays as sent."""
    if s.find(b"%") < 0 and not (plus and s.find(b"+") >= 0):
        return s
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(s)
    cdef Py_ssize_t i = 0, n = PyBytes_GET_SIZE(s)
    cdef bytearray out = bytearray()
    while i < n:
        if p[i] == 37 and i + 2 < n and hex_value(p[i + 1]) < 16 and hex_value(p[i + 2]) < 16:
            out.append(hex_value(p[i + 1]) * 16 + hex_value(p[i + 2]))
            i += 3
        elif plus and p[i] == 43:
            out.append(32)
            i += 1
        else:
            out.append(p[i])
            i += 1
    return bytes(out)


cdef list query_pairs(bytes query):
    out = []
    if query is None:
        return out
    for part in query.split(b"&"):
        if part:
            name, _, value = part.partition(b"=")
            out.append((pct_decode(name, True), pct_decode(value, True)))
    return out


cdef class Facts:
    cdef int store(self, Py_ssize_t slot, Py_ssize_t nslots, bytes value) except -1:
        """A field a header rule reads; repeated fields are joined with ", "
        (RFC 9110 5.3), as the member will read them."""
        if self.hvals is None:
            self.hvals = [None] * nslots
        old = self.hvals[slot]
        value = lower(value, PyBytes_GET_SIZE(value))
        self.hvals[slot] = value if old is None else old + b", " + value
        return 0


cdef class Rule:
    cdef bint matches(self, Facts f) except -1:
        cdef bytes v
        cdef Regex rx
        cdef int k = self.kind
        if k == K_HOST:
            if f.host_key is None:
                f.host_key = host_key(f.host)
            if f.host_key in self.exact:
                return True
            for v in self.prefixes:
                if ends_with_label(f.host_key, v):
                    return True
            return False
        if k == K_PATH_EXACT:
            return f.path in self.exact
        if k == K_PATH_PREFIX:
            for v in self.prefixes:
                if starts_with(f.path, v):
                    return True
            return False
        if k == K_METHOD:
            return f.method in self.exact
        if k == K_HEADER:
            v = <bytes>f.hvals[self.slot] if f.hvals is not None else None
        elif k == K_COOKIE:
            v = cookie_value(f.cookie, self.name) if f.cookie is not None else None
        elif k == K_QUERY:
            if f.qpairs is None:
                f.qpairs = query_pairs(f.query)
            for name, value in f.qpairs:
                if name == self.name and self._value(value):
                    return True
            return False
        elif k == K_SOURCE_IP:
            return self.trie.lookup(f.peer_ip.decode()) >= 0
        else:                                   # K_PATH_REGEX
            for rx in self.regexes:
                if rx.match(f.path):
                    return True
            return False
        return v is not None and self._value(v)

    cdef bint _value(self, bytes v):
        cdef Regex rx
        if v in self.exact:
            return True
        for rx in self.regexes:
            if rx.match(v):
                return True
        return False


cdef class Policy:
    cdef bint matches(self, Facts f) except -1:
        cdef Rule r
        for r in self.rules:
            if not r.matches(f):
                return False
        return True

    cdef Py_ssize_t choose(self, bytes cookie):
        """The index of the pool a weighted forward sends this request to: the
        pool its sticky cookie binds it to while that member is usable, else
        smooth weighted round robin across the pools (as across members)."""
        cdef Pool p
        cdef Member m
        cdef Py_ssize_t i, best = -1, n = len(self.pools)
        cdef long total = 0, w
        if cookie is not None:
            for i in range(n):
                p = self.pools[i]
                if p.cookie_name is not None and (p.sticky == S_LB_COOKIE
                                                  or p.sticky == S_APP_COOKIE):
                    m = p.sticky_member(cookie)
                    if m is not None and p.eligible(m, None):
                        return i
        for i in range(n):
            w = self.weights[i]
            if w <= 0:
                continue
            self.current[i] += w
            total += w
            if best < 0 or self.current[i] > self.current[best]:
                best = i
        if best >= 0:
            self.current[best] -= total
        return best

    cdef bytes rewrite(self, tuple template, Facts f, bytes original):
        if template is None:
            return original
        return _fill(template, None, f)

    cdef bytes location(self, bytes scheme, Facts f):
        """The Location of a redirect. Each part defaults to the request's:
        the client's host and port (the port of its Host, else the scheme's
        default), path and query; a new protocol without a port goes to that
        protocol's default port. Default ports are left out; IPv6 literals
        get their brackets."""
        cdef bytes proto = self.r_proto if self.r_proto is not None else scheme
        cdef bytes host = _fill(self.r_host, scheme, f) if self.r_host is not None \
            else host_part(f.host or b"")
        cdef bytes port
        if self.r_port is not None:
            port = self.r_port
        elif self.r_proto is not None and self.r_proto != scheme:
            port = None
        else:
            port = port_part(f.host) if f.host is not None else None
        if port is not None and port == (b"443" if proto == b"https" else b"80"):
            port = None
        if b":" in host and not host.startswith(b"["):
            host = b"[" + host + b"]"
        cdef bytes path = _fill(self.r_path, scheme, f) if self.r_path is not None else f.path
        if not path.startswith(b"/"):
            path = b"/" + path
        cdef bytes query = _fill(self.r_query, scheme, f) if self.r_query is not None \
            else f.query
        out = proto + b"://" + host
        if port is not None:
            out += b":" + port
        out += path
        if query:
            out += b"?" + query
        return out

    def __repr__(self):
        return f"<Policy {self.name} priority={self.priority} {self.action_name}>"


cdef bytes _fill(tuple template, bytes scheme, Facts f):
    """A compiled template: bytes parts and variable numbers."""
    out = bytearray()
    cdef bytes port
    for part in template:
        if isinstance(part, bytes):
            out += part
            continue
        var = <int>part
        if var == V_HOST:
            out += host_part(f.host or b"")
        elif var == V_PATH:
            out += f.path
        elif var == V_QUERY:
            out += f.query or b""
        elif var == V_PROTOCOL:
            out += scheme or b"http"
        else:
            port = port_part(f.host) if f.host is not None else None
            out += port if port is not None else (b"443" if scheme == b"https" else b"80")
    return bytes(out)


cdef class PolicyTable:
    def __dealloc__(self):
        free(self.masks)

    cdef inline int _or(self, uint64_t* c, dict index, object key) except -1:
        cdef PyObject* entry = PyDict_GetItemWithError(index, key)     # borrowed
        cdef Py_ssize_t e, w
        if entry != NULL:
            e = PyLong_AsSsize_t(<object>entry)
            for w in range(MASK_WORDS):
                c[w] |= self.masks[e * MASK_WORDS + w]
        return 0

    cdef int _prefixes(self, uint64_t* c, bytes path) except -1:
        """The prefix rules' candidates: a walk down a byte trie of the
        prefixes along the path, as far as it goes (no copy of the path)."""
        cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(path)
        cdef Py_ssize_t i, e, w, n = PyBytes_GET_SIZE(path)
        cdef tuple node = self.prefix_trie
        cdef PyObject* child
        for i in range(n):
            child = PyDict_GetItemWithError(<dict>node[0], BYTE_KEYS[p[i]])
            if child == NULL:
                return 0
            node = <tuple>child
            e = node[1]
            if e >= 0:
                for w in range(MASK_WORDS):
                    c[w] |= self.masks[e * MASK_WORDS + w]
        return 0

    cdef Policy route(self, Facts f):
        cdef Policy p
        cdef uint64_t c[MASK_WORDS]
        cdef uint64_t bits
        cdef Py_ssize_t w, n, slot
        cdef bytes path = f.path
        if not self.indexed:
            for p in self.policies:
                if p.matches(f):
                    return p
            return None
        for w in range(MASK_WORDS):
            c[w] = self.always[w]
        if self.by_host is not None:
            if f.host_key is None:
                f.host_key = host_key(f.host)
            self._or(c, self.by_host, f.host_key)
        if self.by_path is not None:
            self._or(c, self.by_path, path)
        if self.prefix_trie is not None:
            self._prefixes(c, path)
        if self.by_method is not None:
            self._or(c, self.by_method, f.method)
        if self.by_field is not None and f.hvals is not None:
            n = len(self.by_field)
            for slot in range(n):
                index = self.by_field[slot]
                if index is not None and f.hvals[slot] is not None:
                    self._or(c, <dict>index, f.hvals[slot])
        for w in range(MASK_WORDS):
            bits = c[w]
            while bits:
                p = self.policies[w * 64 + lb_ctz64(bits)]
                if p.matches(f):
                    return p
                bits &= bits - 1
        return None

    def _facts_for_test(self, method=b"GET", host=b"", path=b"/", query=None, headers=(),
                        cookie=None, peer_ip=b"127.0.0.1"):
        cdef Facts f = Facts()
        f.method, f.host, f.path, f.query, f.cookie, f.peer_ip = (method, host, path, query,
                                                                   cookie, peer_ip)
        for name, value in headers:
            slot = self.slots.get(name.lower())
            if slot is not None:
                f.store(slot, self.nslots, value)
        return f

    def route_for_test(self, **request):
        """Python entry point for unit tests: the policy a request would get."""
        return self.route(self._facts_for_test(**request))

    def matches_for_test(self, Policy p, **request):
        """One policy's rules alone, without the indexes (for tests)."""
        return p.matches(self._facts_for_test(**request))

    def choose_for_test(self, Policy p, cookie=None):
        cdef Py_ssize_t i = p.choose(cookie)
        return p.pools[i].name if i >= 0 else None


# ---- compiling (control plane) ----------------------------------------------------

def compile_template(text: str | None) -> tuple | None:
    """"${path}/x" -> (V_PATH, b"/x"); unknown variables raise ValueError."""
    if text is None:
        return None
    parts: list = []
    pos = 0
    for m in _VAR.finditer(text):
        if m.start() > pos:
            parts.append(text[pos:m.start()].encode())
        name = m.group(1)
        if name not in TEMPLATE_VARS:
            raise ValueError(f"${{{name}}} is not one of " +
                             ", ".join("${%s}" % v for v in TEMPLATE_VARS))
        parts.append(TEMPLATE_VARS[name])
        pos = m.end()
    if pos < len(text):
        parts.append(text[pos:].encode())
    return tuple(parts)


def _rule(cfg_rule, slots: dict) -> Rule:
    cdef Rule r = Rule()
    values = list(cfg_rule.values)
    kind = cfg_rule.type
    r.exact = frozenset()
    r.prefixes = ()
    r.regexes = ()
    r.slot = -1
    if kind == "host":
        r.kind = K_HOST
        r.exact = frozenset(v.lower().rstrip(".").encode() for v in values
                            if not v.startswith("*."))
        r.prefixes = tuple(v[1:].lower().rstrip(".").encode() for v in values
                           if v.startswith("*."))
    elif kind == "path":
        match = cfg_rule.match or "prefix"
        if match == "exact":
            r.kind = K_PATH_EXACT
            r.exact = frozenset(v.encode() for v in values)
        elif match == "prefix":
            r.kind = K_PATH_PREFIX
            r.prefixes = tuple(v.encode() for v in values)
        else:
            r.kind = K_PATH_REGEX
            r.regexes = tuple(Regex(v) for v in values)
    elif kind == "method":
        r.kind = K_METHOD
        r.exact = frozenset(v.encode() for v in values)
    elif kind == "source_ip":
        r.kind = K_SOURCE_IP
        r.trie = IpTrie(values)
    else:
        # header values compare case-insensitively (as AWS ALB's); query and
        # cookie values exactly (ELB's query rules are case-sensitive).
        fold = kind == "header"
        if fold:
            r.kind = K_HEADER
            r.slot = slots.setdefault(cfg_rule.name.lower().encode(), len(slots))
        else:
            r.kind = K_QUERY if kind == "query" else K_COOKIE
            r.name = cfg_rule.name.encode()
        plain = [v for v in values if "*" not in v and "?" not in v]
        r.exact = frozenset((v.lower() if fold else v).encode() for v in plain)
        r.regexes = tuple(Regex(glob_regex(v.lower() if fold else v), True,
                                prefix=_glob_prefix(v.lower() if fold else v))
                          for v in values if v not in plain)
    return r


def _glob_prefix(value: str) -> str:
    """The literal start of a wildcard value: what comes before * or ?."""
    cut = min((i for i in (value.find("*"), value.find("?")) if i >= 0), default=len(value))
    return value[:cut]


def _policy(fp, pools: dict, slots: dict) -> Policy:
    cdef Policy p = Policy()
    p.name = fp.name
    p.priority = fp.priority
    act = fp.action
    p.action_name = act.type
    p.action = ACTIONS[act.type]
    p.rules = tuple(sorted((_rule(r, slots) for r in fp.rules), key=lambda r: r.kind))
    p.pbase = -1
    p.pbases = ()
    p.match_cell = -1
    p.bucket = -1
    p.lines = b""
    p.body = b""
    p.insert_lines = b""
    p.remove = []
    if fp.qps_limit:
        p.interval_ns = 1_000_000_000 // fp.qps_limit
        p.tolerance_ns = <long long>(QPS_BURST_SECONDS * 1e9)
    if act.type == "forward":
        if act.pool is not None:
            p.pool = pools[act.pool]
            p.pools = p.pool_names = ()
        else:
            p.pool_names = tuple(act.pools)
            p.pools = tuple(pools[name] for name in act.pools)
            p.weights = [int(w) for w in act.pools.values()]
            p.current = [0] * len(p.pools)
        p.insert_lines = b"".join(f"{n}: {v}\r\n".encode() for n, v in act.insert_headers.items())
        p.remove = sorted({n.lower().encode() for n in (*act.remove_headers,
                                                        *act.insert_headers)})
        rw = act.rewrite_url
        if rw is not None:
            p.rw_host = compile_template(rw.host)
            p.rw_path = compile_template(rw.path)
            p.rw_query = compile_template(rw.query)
    elif act.type == "redirect":
        p.status = act.status
        url = act.url
        p.r_proto = url.protocol.lower().encode() if url.protocol else None
        p.r_port = str(url.port).encode() if url.port else None
        p.r_host = compile_template(url.host)
        p.r_path = compile_template(url.path)
        p.r_query = compile_template(url.query)
    else:
        p.status = act.status
        p.lines = f"Content-Type: {act.content_type}\r\n".encode()
        p.body = act.body.encode()
    return p


def _index(PolicyTable t):
    """Index each policy by its first rule whose values are all exact, in
    the order host, exact path, prefix, field, method, then a path regex
    whose every pattern has a literal start; the rest are always candidates."""
    cdef Policy p
    cdef Rule r
    cdef Py_ssize_t i, w
    n = len(t.policies)
    t.indexed = n <= MASK_WORDS * 64
    if not t.indexed:
        return
    entries: dict = {}                  # (kind, slot, key) -> mask as a Python int
    for i, p in enumerate(t.policies):
        key = None
        for r in sorted(p.rules, key=lambda r: _INDEX_ORDER.get((<Rule>r).kind, 99)):
            if r.kind == K_HOST and not r.prefixes:
                key = (K_HOST, -1, r.exact)
            elif r.kind in (K_PATH_EXACT, K_METHOD):
                key = (r.kind, -1, r.exact)
            elif r.kind == K_PATH_PREFIX:
                key = (K_PATH_PREFIX, -1, frozenset(r.prefixes))
            elif r.kind == K_PATH_REGEX and all((<Regex>x).prefix for x in r.regexes):
                # Every match starts the path with the regex's literal start:
                # as a candidate, the policy is a prefix rule's.
                key = (K_PATH_PREFIX, -1, frozenset((<Regex>x).prefix for x in r.regexes))
            elif r.kind == K_HEADER and not r.regexes:
                key = (K_HEADER, r.slot, r.exact)
            else:
                continue
            break
        if key is None:
            t.always[i // 64] |= (<uint64_t>1) << (i % 64)
            continue
        kind, slot, values = key
        for v in values:
            entries[(kind, slot, v)] = entries.get((kind, slot, v), 0) | (1 << i)
    t.nmasks = len(entries)
    t.masks = <uint64_t*>calloc(max(1, t.nmasks) * MASK_WORDS, sizeof(uint64_t))
    if t.masks == NULL:
        raise MemoryError()
    dicts: dict = {}
    fields: dict = {}
    for e, ((kind, slot, v), mask) in enumerate(entries.items()):
        for w in range(MASK_WORDS):
            t.masks[e * MASK_WORDS + w] = (mask >> (64 * w)) & 0xFFFFFFFFFFFFFFFF
        if kind == K_HEADER:
            fields.setdefault(slot, {})[v] = e
        else:
            dicts.setdefault(kind, {})[v] = e
    t.by_host = dicts.get(K_HOST)
    t.by_path = dicts.get(K_PATH_EXACT)
    prefixes = dicts.get(K_PATH_PREFIX)
    t.prefix_trie = _trie(prefixes) if prefixes else None
    t.by_method = dicts.get(K_METHOD)
    if fields:
        t.by_field = [fields.get(slot) for slot in range(t.nslots)]


def _trie(prefixes: dict) -> tuple:
    """{prefix: entry} as nested (children by byte, entry or -1) nodes."""
    root: list = [{}, -1]
    for prefix, entry in prefixes.items():
        node = root
        for byte in prefix:
            node = node[0].setdefault(BYTE_KEYS[byte], [{}, -1])
        node[1] = entry

    def freeze(node: list) -> tuple:
        return ({k: freeze(v) for k, v in node[0].items()}, node[1])

    return freeze(root)


# Which exact rule indexes a policy: the most selective first.
_INDEX_ORDER = {K_HOST: 0, K_PATH_EXACT: 1, K_PATH_PREFIX: 2, K_HEADER: 3, K_METHOD: 4,
                K_PATH_REGEX: 5}


def compile_table(policies, pools: dict) -> PolicyTable | None:
    """A listener's forwarding_policies (config model) against the worker's
    pools; None when it has none (the decision then costs nothing)."""
    if not policies:
        return None
    cdef PolicyTable t = PolicyTable()
    slots: dict = {}
    ordered = tuple(_policy(fp, pools, slots) for fp in sorted(policies,
                                                               key=lambda fp: fp.priority))
    t.policies = ordered
    t.slots = slots
    t.nslots = len(slots)
    _index(t)
    return t
