# cython: language_level=3
"""Member selection (spec 6). A Pool is immutable from the control plane's
view: a config reload or health change builds a new Pool and swaps the
reference; only the balancing state (WRR weights, counters) moves inside it."""

from libc.stdint cimport uint32_t, uint64_t
from libc.stdlib cimport free, malloc

import time

ALG_WRR = C_ALG_WRR
ALG_WLC = C_ALG_WLC
ALG_SOURCE_IP_HASH = C_ALG_SOURCE_IP_HASH

STICKY_NONE = C_STICKY_NONE
STICKY_LB_COOKIE = C_STICKY_LB_COOKIE
STICKY_APP_COOKIE = C_STICKY_APP_COOKIE
STICKY_SOURCE_IP = C_STICKY_SOURCE_IP
# When the lb_cookie carries Secure: on HTTPS listeners only (a browser drops a
# Secure cookie set over plain HTTP), on every listener, or never.
COOKIE_SECURE_AUTO = 0
COOKIE_SECURE_ALWAYS = 1
COOKIE_SECURE_NEVER = 2

# Points on the consistent-hash ring per unit of relative weight: 160 points
# for a member of the heaviest weight keeps remapping near 1/N (ketama uses 160).
DEF RING_POINTS = 160
# app_cookie sessions remembered per pool and worker before the oldest go.
DEF APP_SESSIONS_MAX = 100000

# Bits of Pool.retry_on, in the order of counters.RETRY_REASONS.
RETRY_CONNECT_FAILURE = 1
RETRY_RESET = 2
RETRY_RESPONSE_TIMEOUT = 4
RETRY_502 = 8
RETRY_503 = 16
# Spec 7.2's retries: a failed connect, a connection lost or timed out before
# any response byte. A member's own 502/503 is relayed unless asked for.
RETRY_DEFAULT = RETRY_CONNECT_FAILURE | RETRY_RESET | RETRY_RESPONSE_TIMEOUT


cdef uint64_t fnv1a(const unsigned char* p, Py_ssize_t n):
    """FNV-1a 64: stable across processes and runs, unlike hash(); every worker
    must map a client to the same member."""
    cdef uint64_t h = 14695981039346656037ULL
    cdef Py_ssize_t i
    for i in range(n):
        h ^= p[i]
        h *= 1099511628211ULL
    return h


cdef inline uint32_t mix32(uint64_t h):
    h ^= h >> 33
    h *= 0xff51afd7ed558ccdULL
    h ^= h >> 33
    return <uint32_t>(h & 0xffffffffULL)


cdef bytes cookie_value(bytes header, bytes name):
    """The value of cookie `name` in a Cookie header, or None."""
    cdef Py_ssize_t n = len(name)
    for part in header.split(b";"):
        part = part.strip()
        if len(part) > n and part[n] == 61 and part.startswith(name):  # '='
            return part[n + 1:]
    return None


cdef class Member:
    def __init__(self, str name, str host, int port, int weight=1):
        self.name = name
        self.host = host
        self.port = port
        self.weight = weight
        self.healthy = True
        self.up_since = 0.0
        self.active = 0
        self.current_weight = 0
        self.config_index = -1
        self.cells = ()
        key = f"{host}:{port}".encode()
        self.token = b"%016x" % fnv1a(key, len(key))

    cdef int eff_weight(self, double now, double slow_start):
        """Slow start: a newly healthy member's share ramps linearly (spec 6)."""
        cdef double age
        if slow_start <= 0.0 or self.up_since <= 0.0:
            return self.weight
        age = now - self.up_since
        if age >= slow_start:
            return self.weight
        if age <= 0.0:
            return 1
        return max(1, <int>(self.weight * age / slow_start))

    def __repr__(self):
        return f"<Member {self.name} {self.host}:{self.port} w={self.weight}>"


cdef class Pool:
    def __init__(self, str name, members, int algorithm=C_ALG_WRR, int sticky=C_STICKY_NONE,
                 bytes cookie_name=None, int cookie_max_age=86400, double slow_start=0.0,
                 bint fail_open=False, clock=None, Py_ssize_t max_head=0,
                 int cookie_secure=COOKIE_SECURE_AUTO, bytes cookie_same_site=b"Lax"):
        self.name = name
        self.max_head = max_head
        self.members = tuple(members)
        self.algorithm = algorithm
        self.sticky = sticky
        self.cookie_name = cookie_name
        self.cookie_max_age = cookie_max_age
        self.slow_start = slow_start
        self.fail_open = fail_open
        suffix = b"; Max-Age=%d; Path=/; HttpOnly" % cookie_max_age
        if cookie_same_site:
            suffix += b"; SameSite=" + cookie_same_site
        self.set_cookie_suffix = suffix + (
            b"; Secure" if cookie_secure == COOKIE_SECURE_ALWAYS else b"")
        self.set_cookie_suffix_tls = suffix + (
            b"" if cookie_secure == COOKIE_SECURE_NEVER else b"; Secure")
        self.clock = clock if clock is not None else time.monotonic
        self.by_token = {m.token: m for m in self.members}
        self.app_sessions = {}
        # Spec 7.2's "up to 4 retries"; the budget as Envoy's defaults it.
        self.retry_on = RETRY_DEFAULT
        self.max_retries = 4
        self.budget_percent = 20.0
        self.budget_min = 3
        if algorithm == C_ALG_SOURCE_IP_HASH or sticky == C_STICKY_SOURCE_IP:
            self._build_ring()

    def __dealloc__(self):
        free(self.ring_hash)
        free(self.ring_member)

    def _build_ring(self):
        cdef Member m
        cdef int maxw = max([m.weight for m in self.members] or [0])
        points = []
        for idx, m in enumerate(self.members):
            if m.weight <= 0:
                continue
            n = max(1, RING_POINTS * m.weight // maxw)
            for i in range(n):
                key = f"{m.host}:{m.port}#{i}".encode()
                points.append((mix32(fnv1a(key, len(key))), idx))
        points.sort()
        self.ring_len = len(points)
        self.ring_hash = <uint32_t*>malloc(sizeof(uint32_t) * max(1, self.ring_len))
        self.ring_member = <int*>malloc(sizeof(int) * max(1, self.ring_len))
        if self.ring_hash == NULL or self.ring_member == NULL:
            raise MemoryError()
        for i, (h, idx) in enumerate(points):
            self.ring_hash[i] = h
            self.ring_member[i] = idx

    cdef bint retry_allowed(self, bint already):
        """The retry budget: may one more request of this pool (or one already
        counted, `already`) be on a retry now? Active requests are those that
        picked a member and have not finished, this one included. Only the
        retry path asks, so the sum over members costs the common path nothing."""
        cdef Member m
        cdef long active = 0
        for m in self.members:
            active += m.active
        cdef long limit = <long>(self.budget_percent * active / 100.0)
        if limit < self.budget_min:
            limit = self.budget_min
        return self.retrying - (1 if already else 0) < limit

    def retry_allowed_for_test(self, already=False):
        return self.retry_allowed(already)

    cdef bint eligible(self, Member m, list tried):
        if m.weight <= 0 or not (m.healthy or self.fail_open):
            return False
        return tried is None or m not in tried

    cdef Member pick(self, list tried, bytes client_ip, bytes cookie):
        """The member for this request: a sticky binding if it is still usable,
        else the pool's algorithm."""
        cdef Member m
        if self.sticky == C_STICKY_SOURCE_IP and client_ip is not None:
            return self._hash(tried, client_ip)
        if cookie is not None and (self.sticky == C_STICKY_LB_COOKIE
                                   or self.sticky == C_STICKY_APP_COOKIE):
            m = self.sticky_member(cookie)
            if m is not None and self.eligible(m, tried):
                return m
        if self.algorithm == C_ALG_WRR:
            return self._wrr(tried, self.clock() if self.slow_start > 0.0 else 0.0)
        if self.algorithm == C_ALG_WLC:
            return self._wlc(tried, self.clock() if self.slow_start > 0.0 else 0.0)
        return self._hash(tried, client_ip if client_ip is not None else b"")

    cpdef Member sticky_member(self, bytes cookie):
        value = cookie_value(cookie, self.cookie_name)
        if value is None:
            return None
        if self.sticky == C_STICKY_LB_COOKIE:
            return self.by_token.get(value)
        entry = self.app_sessions.get(value)
        if entry is None:
            return None
        if entry[1] < self.clock():
            del self.app_sessions[value]
            return None
        return entry[0]

    cpdef remember_app_cookie(self, bytes value, Member m):
        """The backend set the application cookie: bind its value to the member."""
        if len(self.app_sessions) >= APP_SESSIONS_MAX:
            # Dicts keep insertion order: drop the oldest tenth.
            for key in list(self.app_sessions)[:APP_SESSIONS_MAX // 10]:
                del self.app_sessions[key]
        self.app_sessions[value] = (m, self.clock() + self.cookie_max_age)

    cdef Member _wrr(self, list tried, double now):
        """Smooth weighted round robin (nginx's algorithm): no bursts to one
        member, exact shares over a cycle."""
        cdef Member m, best = None
        cdef long total = 0
        cdef int w
        for m in self.members:
            if not self.eligible(m, tried):
                continue
            w = m.eff_weight(now, self.slow_start) if now > 0.0 else m.weight
            m.current_weight += w
            total += w
            if best is None or m.current_weight > best.current_weight:
                best = m
        if best is not None:
            best.current_weight -= total
        return best

    cdef Member _wlc(self, list tried, double now):
        """Fewest in-flight requests per unit of weight; ties rotate so equal
        members share the load."""
        cdef Member m, best = None
        cdef Py_ssize_t i, n = len(self.members)
        cdef int w, bw = 0
        self.rr_start = (self.rr_start + 1) % n if n else 0
        for i in range(n):
            m = self.members[(self.rr_start + i) % n]
            if not self.eligible(m, tried):
                continue
            w = m.eff_weight(now, self.slow_start) if now > 0.0 else m.weight
            # active/w < best.active/bw without division
            if best is None or m.active * bw < best.active * w:
                best = m
                bw = w
        return best

    cdef Member _hash(self, list tried, bytes key):
        """Consistent hashing on a ring: adding or removing one member remaps
        about 1/N of the keys. Ineligible members are walked past clockwise."""
        cdef uint32_t h = mix32(fnv1a(key, len(key)))
        cdef Py_ssize_t lo = 0, hi = self.ring_len, mid, i
        cdef Member m
        if self.ring_len == 0:
            return None
        while lo < hi:
            mid = (lo + hi) >> 1
            if self.ring_hash[mid] < h:
                lo = mid + 1
            else:
                hi = mid
        for i in range(self.ring_len):
            m = self.members[self.ring_member[(lo + i) % self.ring_len]]
            if self.eligible(m, tried):
                return m
        return None

    # ---- Python entry points for tests and the control plane ----------------------

    def set_members(self, members):
        """A new member set (a member's host name answers other addresses
        now). The tuple is swapped in one assignment; members that stay are
        passed in as the same objects, so their in-flight counts, idle
        connections and WRR state carry on. Requests that already picked a
        member that left keep it until they finish."""
        cdef Member m
        new = tuple(members)
        self.members = new
        self.by_token = {m.token: m for m in new}
        if self.app_sessions:
            kept = set(new)
            self.app_sessions = {k: v for k, v in self.app_sessions.items() if v[0] in kept}
        self.rr_start = 0
        if self.ring_hash != NULL or self.ring_member != NULL:
            free(self.ring_hash)
            free(self.ring_member)
            self.ring_hash = NULL
            self.ring_member = NULL
            self.ring_len = 0
            self._build_ring()

    def pick_for_test(self, tried=None, client_ip=None, cookie=None):
        return self.pick(tried, client_ip, cookie)

