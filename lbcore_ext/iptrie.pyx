# cython: language_level=3
"""IP address groups for access control and source-IP rules (spec 4 and 10)."""

from libc.stdint cimport int32_t, uint32_t
from libc.stdlib cimport free, realloc
from libc.string cimport memset

import ipaddress


cdef extern from "arpa/inet.h" nogil:
    int inet_pton(int af, const char* src, void* dst)

cdef extern from "sys/socket.h":
    int AF_INET
    int AF_INET6

DEF V4 = 0
DEF V6 = 1
DEF INITIAL_NODES = 64


cdef class IpTrie:
    def __cinit__(self):
        cdef int fam
        for fam in range(2):
            self.used[fam] = 1          # node 0 is the root
            self.cap[fam] = 0
            self.child[fam][0] = NULL
            self.child[fam][1] = NULL
            self.value[fam] = NULL
            self._grow(fam)

    def __init__(self, entries=()):
        """`entries`: iterable of CIDR strings, or of (CIDR, value) pairs."""
        for entry in entries:
            if isinstance(entry, tuple):
                self.add(entry[0], entry[1])
            else:
                self.add(entry)

    def __dealloc__(self):
        cdef int fam
        for fam in range(2):
            free(self.child[fam][0])
            free(self.child[fam][1])
            free(self.value[fam])

    cdef int _grow(self, int fam) except -1:
        cdef Py_ssize_t new_cap = self.cap[fam] * 2 if self.cap[fam] else INITIAL_NODES
        cdef int32_t* c0 = <int32_t*>realloc(self.child[fam][0], new_cap * sizeof(int32_t))
        if c0 == NULL:
            raise MemoryError()
        self.child[fam][0] = c0
        cdef int32_t* c1 = <int32_t*>realloc(self.child[fam][1], new_cap * sizeof(int32_t))
        if c1 == NULL:
            raise MemoryError()
        self.child[fam][1] = c1
        cdef int32_t* v = <int32_t*>realloc(self.value[fam], new_cap * sizeof(int32_t))
        if v == NULL:
            raise MemoryError()
        self.value[fam] = v
        memset(c0 + self.cap[fam], 0, (new_cap - self.cap[fam]) * sizeof(int32_t))
        memset(c1 + self.cap[fam], 0, (new_cap - self.cap[fam]) * sizeof(int32_t))
        cdef Py_ssize_t i
        for i in range(self.cap[fam], new_cap):
            v[i] = -1
        self.cap[fam] = new_cap
        return 0

    cdef int _insert(self, int fam, const unsigned char* key, int bits,
                     int32_t val) except -1:
        cdef int32_t node = 0, nxt
        cdef int i, bit
        for i in range(bits):
            bit = (key[i >> 3] >> (7 - (i & 7))) & 1
            nxt = self.child[fam][bit][node]
            if nxt == 0:
                if self.used[fam] >= self.cap[fam]:
                    self._grow(fam)
                nxt = <int32_t>self.used[fam]
                self.used[fam] += 1
                self.child[fam][bit][node] = nxt
            node = nxt
        if self.value[fam][node] < 0:
            self.prefixes += 1
        self.value[fam][node] = val
        return 0

    def add(self, str network, int value=0):
        """Add a CIDR block or a single address (= /32 or /128). IPv4-mapped
        IPv6 networks are stored as IPv4, so both spellings match alike."""
        if value < 0:
            raise ValueError("values must be >= 0")
        net = ipaddress.ip_network(network, strict=False)
        if net.version == 6 and net.network_address.ipv4_mapped is not None \
                and net.prefixlen >= 96:
            net = ipaddress.ip_network(
                f"{net.network_address.ipv4_mapped}/{net.prefixlen - 96}")
        cdef bytes key = net.network_address.packed
        self._insert(V4 if net.version == 4 else V6, key, net.prefixlen, value)

    cdef int32_t lookup_key(self, int fam, const unsigned char* key) noexcept nogil:
        """Value of the longest prefix containing `key` (4 or 16 bytes), or -1."""
        cdef int32_t node = 0, best = self.value[fam][0]
        cdef int i, nbits = 32 if fam == V4 else 128
        for i in range(nbits):
            node = self.child[fam][(key[i >> 3] >> (7 - (i & 7))) & 1][node]
            if node == 0:
                break
            if self.value[fam][node] >= 0:
                best = self.value[fam][node]
        return best

    cpdef int32_t lookup(self, str ip):
        """Longest-prefix value for an address string, or -1 (also for garbage)."""
        cdef unsigned char buf[16]
        cdef bytes b = ip.encode("ascii", "replace")
        if inet_pton(AF_INET, b, buf) == 1:
            return self.lookup_key(V4, buf)
        if inet_pton(AF_INET6, b, buf) != 1:
            return -1
        # ::ffff:a.b.c.d is an IPv4 client on a dual-stack socket (spec 4).
        if (buf[10] == 0xff and buf[11] == 0xff and buf[0] == 0 and buf[1] == 0
                and buf[2] == 0 and buf[3] == 0 and buf[4] == 0 and buf[5] == 0
                and buf[6] == 0 and buf[7] == 0 and buf[8] == 0 and buf[9] == 0):
            return self.lookup_key(V4, buf + 12)
        return self.lookup_key(V6, buf)

    def __contains__(self, str ip):
        return self.lookup(ip) >= 0

    def __len__(self):
        return self.prefixes

    def lookup_many(self, list ips):
        """Lookups in one call, for the micro-benchmark (no per-call overhead)."""
        cdef Py_ssize_t hits = 0
        for ip in ips:
            if self.lookup(ip) >= 0:
                hits += 1
        return hits
