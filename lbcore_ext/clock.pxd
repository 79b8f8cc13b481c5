"""The clock the per-request stamps read: CLOCK_MONOTONIC through the vDSO,
the clock libuv's (and asyncio's) loop.time() is on, without a Python call
to the loop per stamp (several per request; each a method lookup and call)."""

from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec


cdef inline double monotonic() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9
