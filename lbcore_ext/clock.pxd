"""The clock the per-request stamps read: CLOCK_MONOTONIC, the clock libuv's
(and asyncio's) loop.time() is on, without a Python call to the loop per
stamp. While the Poller dispatches a socket event, every stamp reads the
time taken once when that event's dispatch began (nginx and HAProxy stamp
with the time of their loop iteration): a keep-alive request read 13 clocks,
each a vDSO call of about 30 ns on this VM: 1.5% of the request's time.
A request's whole duration (metrics, access log) ends at clock_now(), so
that an answer made within one event still lasts more than zero."""

from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec


cdef inline double clock_now() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


# The time now: the current event's stamp inside a dispatch, else the clock.
cdef double monotonic() noexcept nogil
# Around the Poller's batch of events (nested calls allowed), and at each
# event of it: stamp() takes the time the stamps read until the next.
cdef void batch_begin() noexcept nogil
cdef void stamp() noexcept nogil
cdef void batch_end() noexcept nogil
