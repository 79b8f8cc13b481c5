# cython: language_level=3
"""Downstream HTTP/2 framing (ALPN h2, spec 9) on libnghttp2's C API: frames
in, a Request out (lbcore_ext/request.pyx decides it, as for HTTP/1.1),
answers and relayed responses written back as HEADERS and DATA frames.

What stays here is what only exists in HTTP/2: RFC 9113's pseudo-fields and
field syntax (nghttp2's HTTP messaging checks plus valid_field_value), flow
control in both directions, and the per-connection abuse budgets (rapid
reset, PING/SETTINGS/PRIORITY/WINDOW_UPDATE floods, empty frames,
CONTINUATION floods, HPACK bombs) that end a connection with
GOAWAY(ENHANCE_YOUR_CALM), counted by reason."""

include "consts.pxi"

cimport cython
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcpy

from lbcore_ext.clock cimport clock_now, monotonic
from lbcore_ext.counters cimport add, count_reason, count_response, inc
from lbcore_ext.headers cimport error_body, error_lines
from lbcore_ext.request cimport D_ANSWER, Client, Request, valid_field_value
from lbcore_ext.runtime cimport LazyTimer, ListenerRuntime, new_timer
from lbcore_ext.upstream cimport Downstream, Exchange

import asyncio

from lbcore_ext.counters import (CONN_ACTIVE, H2_GOAWAY, H2_GOAWAY_REASONS, TIMEOUT_REQUEST,
                                 W_LIVE_CLIENT_CONNS)


cdef extern from "nghttp2/nghttp2.h":
    ctypedef struct nghttp2_session:
        pass
    ctypedef struct nghttp2_session_callbacks:
        pass
    ctypedef struct nghttp2_option:
        pass
    ctypedef struct nghttp2_info:
        int age
        int version_num
        const char* version_str
        const char* proto_str

    ctypedef struct nghttp2_frame_hd:
        size_t length
        int32_t stream_id
        uint8_t type
        uint8_t flags
        uint8_t reserved

    ctypedef struct nghttp2_nv:
        uint8_t* name
        uint8_t* value
        size_t namelen
        size_t valuelen
        uint8_t flags

    ctypedef enum nghttp2_headers_category:
        NGHTTP2_HCAT_REQUEST
        NGHTTP2_HCAT_RESPONSE
        NGHTTP2_HCAT_PUSH_RESPONSE
        NGHTTP2_HCAT_HEADERS

    ctypedef struct nghttp2_headers:
        nghttp2_frame_hd hd
        nghttp2_headers_category cat

    ctypedef struct nghttp2_goaway:
        nghttp2_frame_hd hd
        int32_t last_stream_id
        uint32_t error_code

    ctypedef union nghttp2_frame:
        nghttp2_frame_hd hd
        nghttp2_headers headers
        nghttp2_goaway goaway

    ctypedef union nghttp2_data_source:
        int fd
        void* ptr

    ctypedef ssize_t (*nghttp2_data_source_read_callback)(
        nghttp2_session* session, int32_t stream_id, uint8_t* buf, size_t length,
        uint32_t* data_flags, nghttp2_data_source* source, void* user_data)

    ctypedef struct nghttp2_data_provider:
        nghttp2_data_source source
        nghttp2_data_source_read_callback read_callback

    ctypedef struct nghttp2_settings_entry:
        int32_t settings_id
        uint32_t value

    ctypedef struct nghttp2_priority_spec:
        pass

    enum:
        NGHTTP2_VERSION_NUM
        NGHTTP2_DATA
        NGHTTP2_HEADERS
        NGHTTP2_PRIORITY
        NGHTTP2_RST_STREAM
        NGHTTP2_SETTINGS
        NGHTTP2_PING
        NGHTTP2_GOAWAY
        NGHTTP2_WINDOW_UPDATE
        NGHTTP2_CONTINUATION
        NGHTTP2_FLAG_NONE
        NGHTTP2_FLAG_END_STREAM
        NGHTTP2_FLAG_END_HEADERS
        NGHTTP2_FLAG_ACK
        NGHTTP2_NO_ERROR
        NGHTTP2_PROTOCOL_ERROR
        NGHTTP2_INTERNAL_ERROR
        NGHTTP2_REFUSED_STREAM
        NGHTTP2_CANCEL
        NGHTTP2_ENHANCE_YOUR_CALM
        NGHTTP2_ERR_CALLBACK_FAILURE
        NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE
        NGHTTP2_ERR_DEFERRED
        NGHTTP2_ERR_FLOODED
        NGHTTP2_DATA_FLAG_EOF
        NGHTTP2_NV_FLAG_NONE
        NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS
        NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE

    nghttp2_info* nghttp2_version(int least_version)
    const char* nghttp2_strerror(int lib_error_code)

    int nghttp2_session_callbacks_new(nghttp2_session_callbacks** callbacks_ptr)
    void nghttp2_session_callbacks_set_on_begin_frame_callback(
        nghttp2_session_callbacks* cbs,
        int (*cb)(nghttp2_session*, const nghttp2_frame_hd*, void*))
    void nghttp2_session_callbacks_set_on_frame_recv_callback(
        nghttp2_session_callbacks* cbs,
        int (*cb)(nghttp2_session*, const nghttp2_frame*, void*))
    void nghttp2_session_callbacks_set_on_frame_send_callback(
        nghttp2_session_callbacks* cbs,
        int (*cb)(nghttp2_session*, const nghttp2_frame*, void*))
    void nghttp2_session_callbacks_set_on_invalid_frame_recv_callback(
        nghttp2_session_callbacks* cbs,
        int (*cb)(nghttp2_session*, const nghttp2_frame*, int, void*))
    void nghttp2_session_callbacks_set_on_begin_headers_callback(
        nghttp2_session_callbacks* cbs,
        int (*cb)(nghttp2_session*, const nghttp2_frame*, void*))
    void nghttp2_session_callbacks_set_on_header_callback(
        nghttp2_session_callbacks* cbs,
        int (*cb)(nghttp2_session*, const nghttp2_frame*, const uint8_t*, size_t,
                  const uint8_t*, size_t, uint8_t, void*))
    void nghttp2_session_callbacks_set_on_invalid_header_callback(
        nghttp2_session_callbacks* cbs,
        int (*cb)(nghttp2_session*, const nghttp2_frame*, const uint8_t*, size_t,
                  const uint8_t*, size_t, uint8_t, void*))
    void nghttp2_session_callbacks_set_on_data_chunk_recv_callback(
        nghttp2_session_callbacks* cbs,
        int (*cb)(nghttp2_session*, uint8_t, int32_t, const uint8_t*, size_t, void*))
    void nghttp2_session_callbacks_set_on_stream_close_callback(
        nghttp2_session_callbacks* cbs,
        int (*cb)(nghttp2_session*, int32_t, uint32_t, void*))

    int nghttp2_option_new(nghttp2_option** option_ptr)
    void nghttp2_option_set_no_auto_window_update(nghttp2_option* option, int val)
    void nghttp2_option_set_max_deflate_dynamic_table_size(nghttp2_option* option, size_t val)
    void nghttp2_option_set_no_closed_streams(nghttp2_option* option, int val)
    void nghttp2_option_set_stream_reset_rate_limit(nghttp2_option* option, uint64_t burst,
                                                    uint64_t rate)
    void nghttp2_option_set_max_continuations(nghttp2_option* option, size_t val)

    int nghttp2_session_server_new2(nghttp2_session** session_ptr,
                                    const nghttp2_session_callbacks* callbacks,
                                    void* user_data, const nghttp2_option* option)
    void nghttp2_session_del(nghttp2_session* session)
    ssize_t nghttp2_session_mem_recv(nghttp2_session* session, const uint8_t* data,
                                     size_t inlen)
    ssize_t nghttp2_session_mem_send(nghttp2_session* session, const uint8_t** data_ptr)
    int nghttp2_session_want_read(nghttp2_session* session)
    int nghttp2_session_want_write(nghttp2_session* session)
    void* nghttp2_session_get_stream_user_data(nghttp2_session* session, int32_t stream_id)
    int nghttp2_session_set_stream_user_data(nghttp2_session* session, int32_t stream_id,
                                             void* stream_user_data)
    int nghttp2_session_consume(nghttp2_session* session, int32_t stream_id, size_t size)
    int nghttp2_session_resume_data(nghttp2_session* session, int32_t stream_id)
    int nghttp2_session_set_local_window_size(nghttp2_session* session, uint8_t flags,
                                              int32_t stream_id, int32_t window_size)
    int32_t nghttp2_session_get_last_proc_stream_id(nghttp2_session* session)
    int nghttp2_session_terminate_session(nghttp2_session* session, uint32_t error_code)
    int nghttp2_submit_settings(nghttp2_session* session, uint8_t flags,
                                const nghttp2_settings_entry* iv, size_t niv)
    int nghttp2_submit_response(nghttp2_session* session, int32_t stream_id,
                                const nghttp2_nv* nva, size_t nvlen,
                                const nghttp2_data_provider* data_prd)
    int nghttp2_submit_rst_stream(nghttp2_session* session, uint8_t flags, int32_t stream_id,
                                  uint32_t error_code)
    int nghttp2_submit_goaway(nghttp2_session* session, uint8_t flags, int32_t last_stream_id,
                              uint32_t error_code, const uint8_t* opaque_data,
                              size_t opaque_data_len)


# The library this module was built against must be the one loaded.
if nghttp2_version(0).version_num != NGHTTP2_VERSION_NUM:
    raise ImportError(
        f"libnghttp2 {nghttp2_version(0).version_str.decode()} is loaded but lbcore_ext.http2 "
        f"was built against 0x{NGHTTP2_VERSION_NUM:06x}: rebuild (make build)")

# What `lbcore version -v` reports.
NGHTTP2_VERSION = nghttp2_version(0).version_str.decode()

cdef object get_running_loop = asyncio.get_running_loop
# SETTINGS(MAX_CONCURRENT_STREAMS = H2_MAX_STREAMS): see H2Connection.connection_made.
cdef bytes OUR_SETTINGS = (b"\x00\x00\x06\x04\x00\x00\x00\x00\x00\x00\x03"
                           + (H2_MAX_STREAMS).to_bytes(4, "big"))
cdef Py_ssize_t O_CONN_ACTIVE = CONN_ACTIVE
cdef Py_ssize_t O_GOAWAY = H2_GOAWAY
cdef Py_ssize_t O_TIMEOUT_REQUEST = TIMEOUT_REQUEST
cdef Py_ssize_t O_LIVE_CC = W_LIVE_CLIENT_CONNS

# Budgets, in the order of their reasons in H2_GOAWAY_REASONS.
DEF N_BUDGETS = 6
DEF B_RST = 0
DEF B_PING = 1
DEF B_SETTINGS = 2
DEF B_PRIORITY = 3
DEF B_WINDOW = 4
DEF B_EMPTY = 5
cdef double BURST[N_BUDGETS]
cdef double RATE[N_BUDGETS]
BURST[:] = [H2_RST_BURST, H2_PING_BURST, H2_SETTINGS_BURST, H2_PRIORITY_BURST,
            H2_WINDOW_UPDATE_BURST, H2_EMPTY_BURST]
RATE[:] = [H2_RST_RATE, H2_PING_RATE, H2_SETTINGS_RATE, H2_PRIORITY_RATE,
           H2_WINDOW_UPDATE_RATE, H2_EMPTY_RATE]
for _k, _name in enumerate(("rapid_reset", "ping_flood", "settings_flood", "priority_flood",
                            "window_update_flood", "empty_frames")):
    assert H2_GOAWAY_REASONS[_k] == _name
cdef int R_CONTINUATION = H2_GOAWAY_REASONS.index("continuation_flood")
cdef int R_HEADER_FLOOD = H2_GOAWAY_REASONS.index("header_flood")
cdef int R_OUTPUT_FLOOD = H2_GOAWAY_REASONS.index("output_flood")
cdef int R_PROTOCOL = H2_GOAWAY_REASONS.index("protocol_error")
cdef int R_DRAIN = H2_GOAWAY_REASONS.index("drain")
cdef int R_IDLE = H2_GOAWAY_REASONS.index("idle")


# ---- the session's callbacks: guard and dispatch (uvloop's stream.pyx style) ---

cdef inline H2Stream stream_of(nghttp2_session* s, int32_t sid):
    cdef void* p = nghttp2_session_get_stream_user_data(s, sid)
    return <H2Stream>p if p != NULL else None


cdef int fail(H2Connection c, object exc) noexcept:
    """An exception inside a callback: kept, raised again after mem_recv."""
    if c.error is None:
        c.error = exc
    return NGHTTP2_ERR_CALLBACK_FAILURE


cdef int cb_begin_frame(nghttp2_session* s, const nghttp2_frame_hd* hd, void* ud) noexcept:
    cdef H2Connection c = <H2Connection>ud
    try:
        return c.on_begin_frame(hd)
    except BaseException as exc:
        return fail(c, exc)


cdef int cb_begin_headers(nghttp2_session* s, const nghttp2_frame* f, void* ud) noexcept:
    cdef H2Connection c = <H2Connection>ud
    try:
        return c.on_begin_headers(f)
    except BaseException as exc:
        return fail(c, exc)


cdef int cb_header(nghttp2_session* s, const nghttp2_frame* f, const uint8_t* name,
                   size_t namelen, const uint8_t* value, size_t valuelen, uint8_t flags,
                   void* ud) noexcept:
    cdef H2Connection c = <H2Connection>ud
    try:
        return c.on_header(f, name, namelen, value, valuelen)
    except BaseException as exc:
        return fail(c, exc)


cdef int cb_invalid_header(nghttp2_session* s, const nghttp2_frame* f, const uint8_t* name,
                           size_t namelen, const uint8_t* value, size_t valuelen,
                           uint8_t flags, void* ud) noexcept:
    """A field nghttp2 would otherwise drop silently (RFC 9113 8.2.1): the
    request is malformed; nghttp2 resets the stream with PROTOCOL_ERROR."""
    cdef H2Connection c = <H2Connection>ud
    cdef H2Stream st
    try:
        st = stream_of(s, f.hd.stream_id)
        if st is not None:
            st.malformed(False)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE
    except BaseException as exc:
        return fail(c, exc)


cdef int cb_frame_recv(nghttp2_session* s, const nghttp2_frame* f, void* ud) noexcept:
    cdef H2Connection c = <H2Connection>ud
    try:
        return c.on_frame_recv(f)
    except BaseException as exc:
        return fail(c, exc)


cdef int cb_invalid_frame_recv(nghttp2_session* s, const nghttp2_frame* f, int err,
                               void* ud) noexcept:
    """nghttp2 refused a frame; a request's HEADERS means a malformed
    request, reset by nghttp2 (counted and logged here)."""
    cdef H2Connection c = <H2Connection>ud
    cdef H2Stream st
    try:
        if f.hd.type == NGHTTP2_HEADERS:
            st = stream_of(s, f.hd.stream_id)
            if st is not None:
                st.malformed(False)
        return 0
    except BaseException as exc:
        return fail(c, exc)


cdef int cb_frame_send(nghttp2_session* s, const nghttp2_frame* f, void* ud) noexcept:
    cdef H2Connection c = <H2Connection>ud
    cdef H2Stream st
    try:
        if f.hd.type == NGHTTP2_DATA:
            c.refund_window()
        elif f.hd.type == NGHTTP2_GOAWAY:
            c.count_goaway(f.goaway.error_code)
        if f.hd.flags & NGHTTP2_FLAG_END_STREAM and (f.hd.type == NGHTTP2_DATA
                                                     or f.hd.type == NGHTTP2_HEADERS):
            st = stream_of(s, f.hd.stream_id)
            if st is not None and not st.req_ended:
                # The response is complete before the request (an answer of
                # our own, a member's early reply, a 413). RFC 9113 8.1 lets us
                # reset the stream with NO_ERROR at once, but clients that
                # send the whole body before they read (httpx, curl) then
                # fail instead of showing the answer. So, as nginx lingers
                # on HTTP/1.1: the rest of the body is read and dropped, up
                # to H2_DISCARD_MAX bytes or a request_timeout gap, then the
                # stream is reset with NO_ERROR.
                st.discarding = True
        return 0
    except BaseException as exc:
        return fail(c, exc)


cdef int cb_data_chunk(nghttp2_session* s, uint8_t flags, int32_t sid, const uint8_t* data,
                       size_t length, void* ud) noexcept:
    cdef H2Connection c = <H2Connection>ud
    try:
        return c.on_data(sid, data, length)
    except BaseException as exc:
        return fail(c, exc)


cdef int cb_stream_close(nghttp2_session* s, int32_t sid, uint32_t error_code,
                         void* ud) noexcept:
    cdef H2Connection c = <H2Connection>ud
    try:
        return c.on_stream_close(sid)
    except BaseException as exc:
        return fail(c, exc)


cdef ssize_t cb_read_body(nghttp2_session* s, int32_t sid, uint8_t* buf, size_t length,
                          uint32_t* data_flags, nghttp2_data_source* source,
                          void* ud) noexcept:
    cdef H2Stream st = <H2Stream>source.ptr
    try:
        return st.read_body(buf, length, data_flags)
    except BaseException as exc:
        return fail(<H2Connection>ud, exc)


cdef nghttp2_session_callbacks* CALLBACKS = NULL
cdef nghttp2_option* OPTIONS = NULL


cdef int make_session_setup() except -1:
    """Callbacks and options: the same for every connection, made once."""
    global CALLBACKS, OPTIONS
    if nghttp2_session_callbacks_new(&CALLBACKS) != 0 or nghttp2_option_new(&OPTIONS) != 0:
        raise MemoryError("nghttp2")
    nghttp2_session_callbacks_set_on_begin_frame_callback(CALLBACKS, cb_begin_frame)
    nghttp2_session_callbacks_set_on_begin_headers_callback(CALLBACKS, cb_begin_headers)
    nghttp2_session_callbacks_set_on_header_callback(CALLBACKS, cb_header)
    nghttp2_session_callbacks_set_on_invalid_header_callback(CALLBACKS, cb_invalid_header)
    nghttp2_session_callbacks_set_on_frame_recv_callback(CALLBACKS, cb_frame_recv)
    nghttp2_session_callbacks_set_on_invalid_frame_recv_callback(CALLBACKS,
                                                                  cb_invalid_frame_recv)
    nghttp2_session_callbacks_set_on_frame_send_callback(CALLBACKS, cb_frame_send)
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(CALLBACKS, cb_data_chunk)
    nghttp2_session_callbacks_set_on_stream_close_callback(CALLBACKS, cb_stream_close)
    # Window updates are ours: a stream's window opens as its body reaches the
    # member, so a slow member slows its client (flow control both ways).
    nghttp2_option_set_no_auto_window_update(OPTIONS, 1)
    nghttp2_option_set_max_deflate_dynamic_table_size(OPTIONS, H2_HPACK_ENCODER_MAX)
    nghttp2_option_set_stream_reset_rate_limit(OPTIONS, H2_NGHTTP2_RST_BURST,
                                               H2_NGHTTP2_RST_RATE)
    nghttp2_option_set_max_continuations(OPTIONS, H2_NGHTTP2_MAX_CONTINUATIONS)
    return 0


make_session_setup()


# One response's fields as nghttp2_nv entries, built in module-level buffers
# reused for every response: nghttp2_submit_response copies them at once
# (NGHTTP2_NV_FLAG_NONE), so nothing is allocated per response. Entries hold
# offsets into NV_BUF until nv_build() turns them into pointers.
cdef char* NV_BUF = NULL
cdef size_t NV_BUF_CAP = 0
cdef size_t NV_BUF_LEN = 0
cdef nghttp2_nv* NV = NULL
cdef size_t NV_CAP = 0
cdef size_t NV_N = 0


cdef int nv_reserve(size_t more_bytes) except -1:
    global NV_BUF, NV_BUF_CAP, NV, NV_CAP
    cdef size_t cap
    cdef void* p
    if NV_BUF_LEN + more_bytes > NV_BUF_CAP:
        cap = max(2 * NV_BUF_CAP, NV_BUF_LEN + more_bytes, 4096)
        p = realloc(NV_BUF, cap)
        if p == NULL:
            raise MemoryError()
        NV_BUF, NV_BUF_CAP = <char*>p, cap
    if NV_N + 1 > NV_CAP:
        cap = max(2 * NV_CAP, 64)
        p = realloc(NV, cap * sizeof(nghttp2_nv))
        if p == NULL:
            raise MemoryError()
        NV, NV_CAP = <nghttp2_nv*>p, cap
    return 0


cdef int nv_add(const char* name, size_t nlen, const char* value, size_t vlen) except -1:
    """One field; the name is lower-cased on the way in (HTTP/2 wants it)."""
    global NV_BUF_LEN, NV_N
    cdef size_t i
    cdef char c
    nv_reserve(nlen + vlen)
    cdef char* q = NV_BUF + NV_BUF_LEN
    for i in range(nlen):
        c = name[i]
        q[i] = c + 32 if 65 <= c <= 90 else c
    memcpy(q + nlen, value, vlen)
    NV[NV_N].name = <uint8_t*>NV_BUF_LEN            # an offset until nv_build()
    NV[NV_N].namelen = nlen
    NV[NV_N].valuelen = vlen
    NV[NV_N].flags = NGHTTP2_NV_FLAG_NONE
    NV_BUF_LEN += nlen + vlen
    NV_N += 1
    return 0


cdef int nv_add_lines(const char* p, Py_ssize_t n) except -1:
    """"Name: value\r\n" lines (what the Exchange and the core build)."""
    cdef Py_ssize_t i = 0, colon, end, vs, ve
    while i < n:
        end = i
        while end < n and p[end] != 13:
            end += 1
        colon = i
        while colon < end and p[colon] != 58:
            colon += 1
        if i < colon < end:
            vs = colon + 1
            while vs < end and (p[vs] == 32 or p[vs] == 9):
                vs += 1
            ve = end
            while ve > vs and (p[ve - 1] == 32 or p[ve - 1] == 9):
                ve -= 1
            nv_add(p + i, colon - i, p + vs, ve - vs)
        i = end + 2
    return 0


cdef inline void nv_reset() noexcept:
    global NV_BUF_LEN, NV_N
    NV_BUF_LEN = 0
    NV_N = 0


cdef void nv_build() noexcept:
    cdef size_t k, off
    for k in range(NV_N):
        off = <size_t>NV[k].name
        NV[k].name = <uint8_t*>(NV_BUF + off)
        NV[k].value = <uint8_t*>(NV_BUF + off + NV[k].namelen)


cdef int nv_status(int status) except -1:
    cdef char digits[3]
    digits[0] = <char>(48 + status // 100 % 10)
    digits[1] = <char>(48 + status // 10 % 10)
    digits[2] = <char>(48 + status % 10)
    return nv_add(":status", 7, digits, 3)


cdef int nv_length(long long n) except -1:
    cdef char digits[24]
    cdef int k = 24
    if n == 0:
        k -= 1
        digits[k] = 48
    while n > 0:
        k -= 1
        digits[k] = <char>(48 + n % 10)
        n //= 10
    return nv_add("content-length", 14, digits + k, 24 - k)


@cython.final
@cython.freelist(128)
cdef class H2Stream(Downstream):
    """One request stream: the Downstream its Exchange writes the response to."""
    cdef H2Connection conn
    cdef int32_t sid
    cdef Request req
    cdef Exchange ex
    cdef list out                       # response body pieces not yet framed
    cdef Py_ssize_t out_off             # bytes of out[0] already framed
    cdef Py_ssize_t out_len             # bytes waiting in out
    cdef bint out_end                   # the response body is complete
    cdef bint deferred                  # nghttp2 waits for resume_data
    cdef bint responded                 # a response (or reset) was submitted
    cdef bint closed                    # nghttp2 closed the stream
    cdef bint refused                   # a refusal is decided: later fields ignored
    cdef bint logged                    # the refusal was counted and logged
    cdef bint upstream_paused           # its member connection is not being read
    cdef bint paused                    # its DATA is not given back to the window
    cdef size_t unconsumed              # DATA bytes held back while paused
    cdef Py_ssize_t decoded             # decoded header bytes (HPACK bomb check)
    cdef bint req_ended                 # the client's END_STREAM arrived
    cdef double last_in                 # when its HEADERS or last DATA arrived
    cdef bint discarding                # answered before its body ended: DATA dropped
    cdef long long discarded            # bytes dropped so far

    # ---- requests in ----------------------------------------------------------------

    cdef int stop_discarding(self) except -1:
        """Enough of a body nobody reads: the client may stop (NO_ERROR)."""
        self.discarding = False
        if not self.closed:
            nghttp2_submit_rst_stream(self.conn.session, NGHTTP2_FLAG_NONE, self.sid,
                                      NGHTTP2_NO_ERROR)
            self.conn.flush()
        return 0

    cdef int refused_as(self, int code) except -1:
        """What every refusal of a stream shares, whatever its framing: later
        fields ignored, nothing (more) forwarded, counted and logged once as
        the `code` an HTTP/1.1 client would get."""
        self.refused = True
        if self.ex is not None:
            self.ex.abort()
            self.ex = None
        if not self.logged:
            self.logged = True
            self.req.refused(code)
        return 0

    cdef int malformed(self, bint reset) except -1:
        """RFC 9113 8.1.1: a malformed request is a stream error
        (PROTOCOL_ERROR); nothing of it is forwarded. `reset`: ours to send
        (nghttp2 sends its own for the faults it finds)."""
        self.refused_as(400)
        if reset and not self.responded:
            self.responded = True
            nghttp2_submit_rst_stream(self.conn.session, NGHTTP2_FLAG_NONE, self.sid,
                                      NGHTTP2_PROTOCOL_ERROR)
        return 0

    cdef int timed_out(self) except -1:
        """request_timeout passed with the request incomplete: counted as
        HTTP/1.1 counts its 408, and the stream is cancelled (a response
        could not follow a head still in CONTINUATION frames)."""
        inc(self.conn.lrt.counters, self.conn.lrt.cbase + O_TIMEOUT_REQUEST)
        self.refused_as(408)
        self.responded = True
        nghttp2_submit_rst_stream(self.conn.session, NGHTTP2_FLAG_NONE, self.sid, NGHTTP2_CANCEL)
        return 0

    cdef int refuse(self, int code) except -1:
        """The request core refused it: a response in HTTP/2 framing, or a
        reset for a malformed request."""
        if code == 400:
            return self.malformed(True)
        self.refused_as(code)
        self.respond(code, error_lines(code, None), error_body(code), self.req.is_head())
        return 0

    # ---- responses out ----------------------------------------------------------------

    cdef int respond(self, int status, bytes lines, bytes body, bint head) except -1:
        """A complete answer of lbcore's own (refusal, hook, generated error)."""
        if self.responded or self.closed:
            return 0
        nv_reset()
        nv_status(status)
        nv_add_lines(PyBytes_AS_STRING(lines), PyBytes_GET_SIZE(lines))
        nv_length(len(body))
        if head or not body:
            self.submit(False)
        else:
            self.out = [body]
            self.out_len = len(body)
            self.out_end = True
            self.submit(True)
        self.conn.flush()
        return 0

    cdef int submit(self, bint with_body) except -1:
        """The fields in NV go out as this stream's response HEADERS."""
        cdef nghttp2_data_provider prd
        nv_build()
        self.responded = True
        if with_body:
            prd.source.ptr = <void*>self
            prd.read_callback = cb_read_body
            nghttp2_submit_response(self.conn.session, self.sid, NV, NV_N, &prd)
        else:
            nghttp2_submit_response(self.conn.session, self.sid, NV, NV_N, NULL)
        return 0

    cdef ssize_t read_body(self, uint8_t* buf, size_t length, uint32_t* data_flags) except -1:
        """nghttp2 asks for at most `length` bytes of the body (what the
        windows and the frame size allow)."""
        cdef Py_ssize_t n = 0, take, avail
        cdef bytes piece
        while self.out and n < <Py_ssize_t>length:
            piece = self.out[0]
            avail = PyBytes_GET_SIZE(piece) - self.out_off
            take = min(avail, <Py_ssize_t>length - n)
            memcpy(buf + n, PyBytes_AS_STRING(piece) + self.out_off, take)
            n += take
            if take == avail:
                self.out.pop(0)
                self.out_off = 0
            else:
                self.out_off += take
        self.out_len -= n
        if self.upstream_paused and self.out_len < H2_STREAM_BUFFER_HIGH and self.ex is not None:
            self.upstream_paused = False
            self.ex.resume_upstream()
        if self.out_len == 0:
            if self.out_end:
                data_flags[0] |= NGHTTP2_DATA_FLAG_EOF
            elif n == 0:
                self.deferred = True
                return NGHTTP2_ERR_DEFERRED
        return n

    cdef int more_body(self) except -1:
        if self.deferred and not self.closed:
            self.deferred = False
            nghttp2_session_resume_data(self.conn.session, self.sid)
        self.conn.flush()
        return 0

    # ---- what the Exchange calls ---------------------------------------------------

    cdef int ds_write(self, object data) except -1:
        return 0        # raw HTTP/1 bytes (an upgrade's 101) never happen on HTTP/2

    cdef int ds_interim(self, Exchange ex, int status, bytes reason, object rhead) except -1:
        return 0

    cdef int ds_head(self, Exchange ex, int status, bytes reason, object rhead,
                     long long content_length, bint no_body) except -1:
        if self.responded or self.closed:
            return 0
        nv_reset()
        nv_status(status)
        if rhead is not None:
            nv_add_lines(PyByteArray_AS_STRING(rhead), PyByteArray_GET_SIZE(rhead))
        if content_length >= 0:
            nv_length(content_length)
        if no_body:
            self.submit(False)
        else:
            self.out = []
            self.submit(True)
        self.conn.flush()
        return 0

    cdef int ds_body(self, Exchange ex, object data) except -1:
        if self.closed or not data:
            return 0
        self.out.append(bytes(data))
        self.out_len += len(data)
        if self.out_len > H2_STREAM_BUFFER_HIGH and not self.upstream_paused:
            # The client's window is shut: stop reading the member.
            self.upstream_paused = True
            ex.pause_upstream()
        self.more_body()
        return 0

    cdef int ds_end(self, Exchange ex) except -1:
        self.out_end = True
        self.more_body()
        return 0

    cdef int ds_exchange_done(self, Exchange ex, bint keep_alive) except -1:
        self.ex = None
        return 0

    cdef int ds_error(self, Exchange ex, int code, bytes router_code) except -1:
        # The Exchange logs its own errors; their time counts in the histogram.
        cdef double seconds = clock_now() - ex.t_start if ex is not None else -1.0
        cdef Py_ssize_t pbase = ex.pbase if ex is not None else self.conn.lrt.pbase_local
        if ex is not None and ex.gen_reason >= 0:
            count_reason(self.conn.lrt.counters, self.conn.lrt.cbase, pbase, code,
                         ex.gen_reason, seconds)
        else:
            count_response(self.conn.lrt.counters, self.conn.lrt.cbase, pbase, code, True,
                           seconds)
        self.ex = None
        self.respond(code, error_lines(code, router_code), error_body(code),
                     ex is not None and ex.is_head_method)
        return 0

    cdef int ds_local(self, Exchange ex, int status, bytes lines, bytes body) except -1:
        self.ex = None
        self.respond(status, lines, body, ex.is_head_method)
        return 0

    cdef int ds_abort(self, Exchange ex) except -1:
        """Mid-response failure: the client must see a broken stream, never a
        complete-looking response."""
        self.ex = None
        if not self.closed:
            self.responded = True
            nghttp2_submit_rst_stream(self.conn.session, NGHTTP2_FLAG_NONE, self.sid,
                                      NGHTTP2_INTERNAL_ERROR)
            self.conn.flush()
        return 0

    cdef int ds_pause_reading(self) except -1:
        self.paused = True
        return 0

    cdef int ds_resume_reading(self) except -1:
        if self.paused:
            self.paused = False
            if self.unconsumed and not self.closed:
                nghttp2_session_consume(self.conn.session, self.sid, self.unconsumed)
                self.unconsumed = 0
                self.conn.flush()
        return 0

    cdef int ds_tunnel(self, Exchange ex) except -1:
        raise RuntimeError("no upgrades over HTTP/2")

    cdef int ds_close(self) except -1:
        self.ds_abort(self.ex)
        return 0

    cdef int ds_deadline(self, double at) except -1:
        self.conn.schedule(at)
        return 0


cdef class H2Connection:
    """One HTTP/2 client connection (taken over from HttpProtocol after ALPN)."""
    cdef nghttp2_session* session
    cdef object transport
    cdef object loop
    cdef ListenerRuntime lrt
    cdef Client client
    cdef dict streams                   # stream id -> H2Stream, while nghttp2 has it
    cdef list starting                  # streams whose exchange starts after this read
    cdef object error                   # an exception raised inside a callback
    cdef bint closed
    cdef bint read_paused
    cdef bint write_paused
    cdef bint flush_pending
    cdef bint going_away
    cdef LazyTimer timer
    cdef double last_activity
    cdef double now
    cdef int calm                       # reason + 1 of the budget that ran out
    cdef int goaway_reason              # reason of the GOAWAY we send, -1 = by its code
    cdef double tokens[N_BUDGETS]
    cdef double stamp[N_BUDGETS]
    cdef int32_t max_sid                # the highest stream the client opened
    cdef int32_t closed_ids[H2_MAX_STREAMS]   # the last streams closed (a ring)
    cdef int closed_at                  # the ring's next slot
    cdef bint bad_stream_id             # HEADERS on a stream id it can't use
    cdef bint ack_pending               # the client's ACK of our first SETTINGS is due
    cdef Py_ssize_t preface_left        # client preface bytes not yet seen
    cdef Py_ssize_t frame_left          # payload bytes of the frame being passed on
    cdef bytes held                     # a frame header split across reads
    cdef int cont_frames                # CONTINUATION frames of the header block
    cdef size_t cont_bytes              # compressed bytes of the header block

    def __init__(self, Client client):
        cdef int k
        self.client = client
        self.lrt = client.lrt
        self.streams = {}
        self.starting = []
        self.goaway_reason = -1
        for k in range(N_BUDGETS):
            self.tokens[k] = BURST[k]
            self.stamp[k] = 0.0
        add(self.lrt.counters, O_LIVE_CC, 1)

    def __dealloc__(self):
        if self.session != NULL:
            nghttp2_session_del(self.session)
            self.session = NULL
        if self.lrt is not None:
            add(self.lrt.counters, O_LIVE_CC, -1)

    def connection_made(self, transport):
        cdef nghttp2_settings_entry iv[1]
        self.transport = transport
        self.loop = get_running_loop()
        self.timer = new_timer(self.loop, self._on_timer)
        if nghttp2_session_server_new2(&self.session, CALLBACKS, <void*>self, OPTIONS) != 0:
            raise MemoryError("nghttp2_session_server_new2")
        # SETTINGS_MAX_CONCURRENT_STREAMS goes in a SETTINGS frame of our own,
        # ahead of nghttp2's, and its ACK is taken out before nghttp2 reads:
        # nghttp2 treats a stream over a limit the client has acknowledged as
        # a connection error, where RFC 9113 5.1.2 wants a stream error. So
        # nghttp2 never learns the limit, and we refuse the streams over it
        # with REFUSED_STREAM (on_begin_headers); the connection carries on.
        transport.write(OUR_SETTINGS)
        self.ack_pending = True
        self.preface_left = 24
        iv[0].settings_id = NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE
        iv[0].value = <uint32_t>self.lrt.max_header_block
        nghttp2_submit_settings(self.session, NGHTTP2_FLAG_NONE, iv, 1)
        nghttp2_session_set_local_window_size(self.session, NGHTTP2_FLAG_NONE, 0,
                                              H2_CONN_WINDOW)
        self.last_activity = self.now = self.loop.time()
        self.schedule(self.last_activity + (self.lrt.idle_timeout or self.lrt.request_timeout))
        self.flush_now()

    # ---- reading ------------------------------------------------------------------

    def data_received(self, bytes data):
        cdef Py_ssize_t rv
        cdef H2Stream st
        if self.closed:
            return
        self.now = self.last_activity = monotonic()
        if self.ack_pending:
            data = self.take_first_ack(data)
        rv = nghttp2_session_mem_recv(self.session,
                                      <const uint8_t*>PyBytes_AS_STRING(data),
                                      PyBytes_GET_SIZE(data))
        if self.error is not None:
            exc, self.error = self.error, None
            self.loop.call_exception_handler({"message": "lbcore HTTP/2 callback failed",
                                              "exception": exc})
            self.terminate(R_PROTOCOL, NGHTTP2_INTERNAL_ERROR)
            return
        if rv < 0:
            if self.bad_stream_id:
                self.terminate(R_PROTOCOL, NGHTTP2_PROTOCOL_ERROR)
            elif self.calm:
                self.terminate(self.calm - 1, NGHTTP2_ENHANCE_YOUR_CALM)
            elif rv == NGHTTP2_ERR_FLOODED:
                self.terminate(R_OUTPUT_FLOOD, NGHTTP2_ENHANCE_YOUR_CALM)
            else:
                self.terminate(R_PROTOCOL, NGHTTP2_PROTOCOL_ERROR)
            return
        # Exchanges start only now: a stream opened and reset in the same read
        # (rapid reset) never costs a member connection.
        if self.starting:
            starting, self.starting = self.starting, []
            for st in starting:
                if not st.closed and st.ex is not None:
                    st.ex.start()
        self.flush()

    cdef bytes take_first_ack(self, bytes data):
        """The client's bytes minus the (zero-length) SETTINGS ACK of
        OUR_SETTINGS, the first ACK it sends. Frame headers are walked only
        until then: a few frames per connection."""
        cdef bytes buf = self.held + data if self.held is not None else data
        cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(buf)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(buf), pos = 0, take, length
        self.held = None
        if self.preface_left:
            take = min(self.preface_left, n)
            pos += take
            self.preface_left -= take
        while pos < n:
            if self.frame_left:
                take = min(self.frame_left, n - pos)
                pos += take
                self.frame_left -= take
                continue
            if n - pos < 9:
                self.held = buf[pos:]
                return buf[:pos]
            length = (p[pos] << 16) | (p[pos + 1] << 8) | p[pos + 2]
            if p[pos + 3] == NGHTTP2_SETTINGS and p[pos + 4] & NGHTTP2_FLAG_ACK and length == 0:
                self.ack_pending = False
                return buf[:pos] + buf[pos + 9:]
            pos += 9
            self.frame_left = length
        return buf

    cdef int terminate(self, int reason, uint32_t code) except -1:
        """GOAWAY with `code`, counted under `reason`, then close."""
        if self.goaway_reason < 0:
            self.goaway_reason = reason
        nghttp2_session_terminate_session(self.session, code)
        self.flush_now()
        self._close()
        return 0

    cdef int spend(self, int k) except -1:
        """One event against budget k; 0 if within it, else the callback
        failure that ends the connection."""
        cdef double t = self.tokens[k] + (self.now - self.stamp[k]) * RATE[k]
        if t > BURST[k]:
            t = BURST[k]
        self.stamp[k] = self.now
        if t < 1.0:
            self.calm = k + 1
            return NGHTTP2_ERR_CALLBACK_FAILURE
        self.tokens[k] = t - 1.0
        return 0

    cdef bint recently_closed(self, int32_t sid) noexcept:
        """One of the last H2_MAX_STREAMS streams closed (nghttp2 remembers
        about as many): looked up only for a HEADERS on an old stream id."""
        cdef int k
        for k in range(H2_MAX_STREAMS):
            if self.closed_ids[k] == sid:
                return True
        return False

    cdef int refund_window(self) except -1:
        if self.tokens[B_WINDOW] < BURST[B_WINDOW]:
            self.tokens[B_WINDOW] += 1.0
        return 0

    cdef int count_goaway(self, uint32_t code) except -1:
        cdef int reason = self.goaway_reason
        if reason < 0:
            reason = R_DRAIN if code == NGHTTP2_NO_ERROR else R_PROTOCOL
        inc(self.lrt.counters, self.lrt.cbase + O_GOAWAY + reason)
        return 0

    cdef int on_begin_frame(self, const nghttp2_frame_hd* hd) except -1:
        cdef uint8_t t = hd.type
        if t == NGHTTP2_DATA:
            if hd.length == 0 and not hd.flags & NGHTTP2_FLAG_END_STREAM:
                return self.spend(B_EMPTY)
        elif t == NGHTTP2_HEADERS:
            self.cont_frames = 0
            self.cont_bytes = hd.length
            if (hd.stream_id & 1 and hd.stream_id <= self.max_sid
                    and hd.stream_id not in self.streams
                    and not self.recently_closed(hd.stream_id)):
                # RFC 9113 5.1.1: a new stream's id must exceed every earlier
                # one (nghttp2 would ignore the frame). Streams it knows as
                # closed are left to it (STREAM_CLOSED).
                self.bad_stream_id = True
                return NGHTTP2_ERR_CALLBACK_FAILURE
        elif t == NGHTTP2_CONTINUATION:
            self.cont_frames += 1
            self.cont_bytes += hd.length
            if (self.cont_frames > H2_MAX_CONTINUATIONS
                    or self.cont_bytes > <size_t>(2 * self.lrt.max_header_block)):
                self.calm = R_CONTINUATION + 1
                return NGHTTP2_ERR_CALLBACK_FAILURE
            if hd.length == 0:
                return self.spend(B_EMPTY)
        elif t == NGHTTP2_RST_STREAM:
            return self.spend(B_RST)
        elif t == NGHTTP2_PING:
            if not hd.flags & NGHTTP2_FLAG_ACK:
                return self.spend(B_PING)
        elif t == NGHTTP2_SETTINGS:
            if not hd.flags & NGHTTP2_FLAG_ACK:
                return self.spend(B_SETTINGS)
        elif t == NGHTTP2_PRIORITY:
            return self.spend(B_PRIORITY)
        elif t == NGHTTP2_WINDOW_UPDATE:
            return self.spend(B_WINDOW)
        return 0

    cdef int on_begin_headers(self, const nghttp2_frame* f) except -1:
        if f.headers.cat != NGHTTP2_HCAT_REQUEST:
            return 0
        if len(self.streams) >= H2_MAX_STREAMS:
            # Over SETTINGS_MAX_CONCURRENT_STREAMS: that stream only, retryable.
            nghttp2_submit_rst_stream(self.session, NGHTTP2_FLAG_NONE, f.hd.stream_id,
                                      NGHTTP2_REFUSED_STREAM)
            if f.hd.stream_id > self.max_sid:
                self.max_sid = f.hd.stream_id
            return 0
        cdef H2Stream st = H2Stream.__new__(H2Stream)
        st.conn = self
        st.sid = f.hd.stream_id
        st.loop = self.loop
        st.transport = self.transport
        cdef Request req = Request.new(self.client)
        req.is_h2 = True
        req.version = "2"
        req.keep_alive = True
        st.req = req
        st.last_in = self.now
        self.schedule(self.now + self.lrt.request_timeout)
        self.streams[st.sid] = st
        if st.sid > self.max_sid:
            self.max_sid = st.sid
        nghttp2_session_set_stream_user_data(self.session, st.sid, <void*>st)
        return 0

    cdef int on_header(self, const nghttp2_frame* f, const uint8_t* name, size_t namelen,
                       const uint8_t* value, size_t valuelen) except -1:
        cdef H2Stream st = stream_of(self.session, f.hd.stream_id)
        cdef Request req
        cdef int code
        if st is None:
            return 0
        st.decoded += <Py_ssize_t>(namelen + valuelen + 32)
        if st.decoded > H2_HEADER_FLOOD_FACTOR * self.lrt.max_header_block:
            self.calm = R_HEADER_FLOOD + 1
            return NGHTTP2_ERR_CALLBACK_FAILURE
        if st.refused:
            return 0
        req = st.req
        if not valid_field_value(value, valuelen):
            st.malformed(True)
            return 0
        n = PyBytes_FromStringAndSize(<const char*>name, namelen)
        v = PyBytes_FromStringAndSize(<const char*>value, valuelen)
        if f.headers.cat == NGHTTP2_HCAT_HEADERS:
            req.trailer(n, v)
            return 0
        if namelen and name[0] == 58:              # ':' (order, names, once: nghttp2)
            if n == b":method":
                req.method = v
            elif n == b":path":
                if req.add_target(v):
                    st.refused = True
            elif n == b":authority":
                req.set_authority(v)
            elif n == b":scheme":
                req.scheme = v
            return 0
        if req.field(n, n, v):
            st.refused = True
        return 0

    cdef int on_frame_recv(self, const nghttp2_frame* f) except -1:
        cdef uint8_t t = f.hd.type
        cdef H2Stream st
        if t == NGHTTP2_HEADERS:
            st = stream_of(self.session, f.hd.stream_id)
            if st is None:
                return 0
            if f.hd.flags & NGHTTP2_FLAG_END_STREAM:
                st.req_ended = True
            if f.headers.cat == NGHTTP2_HCAT_REQUEST:
                st.req.end_stream = st.req_ended
                self.head_done(st)
            elif st.req_ended and st.ex is not None:
                st.ex.body_done()                  # after trailers
        elif t == NGHTTP2_DATA:
            st = stream_of(self.session, f.hd.stream_id)
            if st is not None:
                st.last_in = self.now
                if f.hd.flags & NGHTTP2_FLAG_END_STREAM:
                    st.req_ended = True
                    if st.ex is not None:
                        st.ex.body_done()
        return 0

    cdef int head_done(self, H2Stream st) except -1:
        """The request's fields are all in: admit, decide, forward or answer."""
        cdef Request req = st.req
        cdef Exchange ex
        if st.logged:
            return 0
        cdef int code = req.head_complete()
        if code:
            return st.refuse(code)
        if req.decide() == D_ANSWER:
            st.logged = True
            st.respond(req.answer_status, req.answer_lines, req.answer_body, req.is_head())
            req.answered(req.answer_status, False)
            return 0
        ex = Exchange.new(st, req)
        st.ex = ex
        if req.end_stream:
            ex.body_done()
        self.starting.append(st)
        return 0

    cdef int on_data(self, int32_t sid, const uint8_t* data, size_t length) except -1:
        cdef H2Stream st = stream_of(self.session, sid)
        cdef Exchange ex
        if st is None or st.ex is None or st.discarding:
            nghttp2_session_consume(self.session, sid, length)
            if st is not None and st.discarding:
                st.discarded += length
                if st.discarded > H2_DISCARD_MAX:
                    st.stop_discarding()
            return 0
        if st.req.body_bytes(length):
            nghttp2_session_consume(self.session, sid, length)
            if st.ex.resp_started:
                # Too late for a 413: the stream is reset, and its exchange
                # (and member connection) ends now, not when the member does.
                ex = st.ex
                st.ds_abort(ex)
                ex.abort()
            else:
                st.refuse(413)
            return 0
        st.ex.feed_body(PyBytes_FromStringAndSize(<const char*>data, length))
        if st.paused:
            st.unconsumed += length
        else:
            nghttp2_session_consume(self.session, sid, length)
        return 0

    cdef int on_stream_close(self, int32_t sid) except -1:
        cdef H2Stream st = self.streams.pop(sid, None)
        if st is None:
            return 0
        self.closed_ids[self.closed_at] = sid
        self.closed_at = (self.closed_at + 1) % H2_MAX_STREAMS
        st.closed = True
        st.out = None
        if st.ex is not None:
            st.ex.abort()
            st.ex = None
        return 0

    # ---- writing ------------------------------------------------------------------

    cdef int flush(self) except -1:
        """Write nghttp2's output once per loop iteration: every stream's
        frames ready in this iteration go out in one TLS batch and one send."""
        if not self.closed and not self.flush_pending:
            self.flush_pending = True
            self.loop.call_soon(self._flush_soon)
        return 0

    def _flush_soon(self):
        self.flush_pending = False
        self.flush_now()

    cdef int flush_now(self) except -1:
        cdef const uint8_t* p
        cdef Py_ssize_t n, at
        cdef bytearray out
        if self.closed or self.write_paused:
            return 0
        out = bytearray()
        while True:
            n = nghttp2_session_mem_send(self.session, &p)
            if n <= 0:
                break
            at = PyByteArray_GET_SIZE(out)
            PyByteArray_Resize(out, at + n)
            memcpy(PyByteArray_AS_STRING(out) + at, p, n)
        if PyByteArray_GET_SIZE(out):
            self.transport.write(bytes(out))
        if n < 0 or (not nghttp2_session_want_read(self.session)
                     and not nghttp2_session_want_write(self.session)):
            self._close()
        return 0

    def pause_writing(self):
        # The client does not read: stop reading it too, so that it can't
        # queue acks (SETTINGS, PING) we can't send; frames wait in nghttp2.
        self.write_paused = True
        if not self.read_paused and not self.closed:
            self.read_paused = True
            self.transport.pause_reading()

    def resume_writing(self):
        self.write_paused = False
        if self.read_paused and not self.closed:
            self.read_paused = False
            self.transport.resume_reading()
        self.flush_now()

    # ---- time-outs, drain, end ----------------------------------------------------

    cdef int schedule(self, double at) except -1:
        if not self.closed:
            self.timer.schedule(at)
        return 0

    def _on_timer(self):
        if self.closed:
            return
        cdef double now = self.loop.time(), d, due = 1e300
        cdef H2Stream st
        for st in list(self.streams.values()):
            if st.discarding and not st.req_ended:
                d = st.last_in + self.lrt.request_timeout
                if now >= d:
                    st.stop_discarding()
                else:
                    due = min(due, d)
                continue
            if not st.req_ended and not st.responded:
                # A head or body gap longer than request_timeout (spec 2): the
                # stream is reset, as HTTP/1.1 answers 408 or closes.
                d = st.last_in + self.lrt.request_timeout
                if now >= d:
                    st.timed_out()
                    continue
                due = min(due, d)
            if st.ex is None:
                continue
            d = st.ex.deadline()
            if d <= 0.0:
                continue
            if now >= d:
                st.ex.expire()
            else:
                due = min(due, d)
        if not self.streams:
            d = self.last_activity + (self.lrt.idle_timeout or self.lrt.request_timeout)
            if now >= d:
                self.goaway_reason = R_IDLE
                nghttp2_submit_goaway(self.session, NGHTTP2_FLAG_NONE,
                                      nghttp2_session_get_last_proc_stream_id(self.session),
                                      NGHTTP2_NO_ERROR, NULL, 0)
                self.flush_now()
                self._close()
                return
            due = min(due, d)
        else:
            due = min(due, now + self.lrt.request_timeout)
        self.schedule(due)
        self.flush()

    def drain(self):
        """Graceful stop (RFC 9113 6.8): GOAWAY naming the last stream we
        took; those finish, then the connection closes."""
        if self.closed or self.going_away:
            return
        self.going_away = True
        self.goaway_reason = R_DRAIN
        nghttp2_submit_goaway(self.session, NGHTTP2_FLAG_NONE,
                              nghttp2_session_get_last_proc_stream_id(self.session),
                              NGHTTP2_NO_ERROR, NULL, 0)
        self.flush_now()

    def eof_received(self):
        return False

    def connection_lost(self, exc):
        cdef H2Stream st
        add(self.lrt.counters, self.lrt.cbase + O_CONN_ACTIVE, -1)
        self.lrt.conns.discard(self)
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None           # breaks the protocol <-> timer cycle
        for st in list(self.streams.values()):
            st.closed = True
            if st.ex is not None:
                st.ex.abort()
                st.ex = None
        self.streams = {}
        self.starting = []
        if self.session != NULL:
            nghttp2_session_del(self.session)
            self.session = NULL

    cdef int _close(self) except -1:
        if not self.closed:
            self.closed = True
            if self.timer is not None:
                self.timer.cancel()
            self.transport.close()
        return 0
