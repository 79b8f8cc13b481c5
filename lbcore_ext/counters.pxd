from libc.stdint cimport int64_t

cdef class Counters:
    """Hot-path counters: C int64 cells in a shared memory block, one row per
    worker slot; the master sums the rows at scrape time."""
    cdef int64_t* row
    cdef int64_t* base
    cdef object mem
    cdef public Py_ssize_t size
    cdef public Py_ssize_t slots

cdef inline void inc(Counters c, Py_ssize_t i) noexcept:
    if c is not None and i >= 0:
        c.row[i] += 1

cdef inline void add(Counters c, Py_ssize_t i, int64_t v) noexcept:
    if c is not None and i >= 0:
        c.row[i] += v

cdef inline void add_at(Counters c, Py_ssize_t base, Py_ssize_t off, int64_t v) noexcept:
    """Cell `off` of the block at `base`; nothing where the block is -1."""
    if c is not None and base >= 0:
        c.row[base + off] += v

cdef inline int64_t sum_cell(Counters c, Py_ssize_t i) noexcept:
    """Cell `i` summed over every worker's row (a gauge across workers)."""
    cdef int64_t t = 0
    cdef Py_ssize_t s
    if c is None or i < 0:
        return 0
    for s in range(c.slots):
        t += c.base[s * c.size + i]
    return t

cdef inline int64_t* shared_cell(Counters c, Py_ssize_t i) noexcept:
    """Cell `i` of row 0, which every worker shares (rate-limit buckets)."""
    return c.base + i

cpdef void count_response(Counters c, Py_ssize_t base, Py_ssize_t pbase, int status,
                          bint generated, double seconds)

cpdef void count_reason(Counters c, Py_ssize_t base, Py_ssize_t pbase, int status, int reason,
                        double seconds)

cpdef void observe(Counters c, Py_ssize_t at, double seconds)
