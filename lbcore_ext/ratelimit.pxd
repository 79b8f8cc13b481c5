"""Limits that hold across all workers (spec 8, 10): a GCRA token bucket in
one int64 cell of the shared counter memory (row 0, which no worker writes
its counts to), taken with a compare-and-swap: no lock, no syscall (the
clock is CLOCK_MONOTONIC through the vDSO, one clock for every process).

The cell holds the bucket's theoretical arrival time (TAT) in nanoseconds.
A request at `now` is allowed when TAT - now <= tolerance, and moves TAT to
max(TAT, now) + interval; interval = 1 s / rate, tolerance = what a burst
may borrow (HAProxy's and nginx's limit_req "burst")."""

from libc.stdint cimport int64_t
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

cdef extern from *:
    """
    static inline int lb_gcra_take(int64_t *cell, int64_t now, int64_t interval,
                                   int64_t tolerance) {
        int64_t tat = __atomic_load_n(cell, __ATOMIC_RELAXED);
        for (;;) {
            int64_t base = tat > now ? tat : now;
            if (base - now > tolerance)
                return 0;
            if (__atomic_compare_exchange_n(cell, &tat, base + interval, 1,
                                            __ATOMIC_ACQ_REL, __ATOMIC_RELAXED))
                return 1;
        }
    }
    """
    bint lb_gcra_take(int64_t* cell, int64_t now, int64_t interval, int64_t tolerance) nogil


cdef inline int64_t now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef inline bint take(int64_t* cell, int64_t interval, int64_t tolerance) noexcept nogil:
    """One request (or connection) through the bucket, or False."""
    return lb_gcra_take(cell, now_ns(), interval, tolerance)
