from libc.stdint cimport int32_t, uint32_t

# IpTrie.lookup_key's family (the V4/V6 of iptrie.pyx).
cdef enum:
    IP_V4 = 0
    IP_V6 = 1

cdef class IpTrie:
    """Longest-prefix match for IPv4 and IPv6 (HAProxy pattern.c's model: one
    binary tree per family, keyed in network byte order). Nodes live in flat C
    arrays: a lookup is at most 32 or 128 steps of two array reads, no Python."""
    cdef int32_t* child[2][2]          # [family][bit] -> node index, 0 = none
    cdef int32_t* value[2]             # [family] -> value at node, -1 = none
    cdef Py_ssize_t used[2]
    cdef Py_ssize_t cap[2]
    cdef public Py_ssize_t prefixes
    cdef int _grow(self, int fam) except -1
    cdef int _insert(self, int fam, const unsigned char* key, int bits, int32_t val) except -1
    cdef int32_t lookup_key(self, int fam, const unsigned char* key) noexcept nogil
    cpdef int32_t lookup(self, str ip)
