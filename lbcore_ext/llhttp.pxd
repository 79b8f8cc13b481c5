# llhttp's C API, as the parser module of httptools exports it (lbcore_ext/llhttp.pyx
# checks at import that this layout is the loaded library's).
from libc.stdint cimport int32_t, uint8_t, uint16_t, uint64_t

# llhttp 9.4's struct llhttp__internal_s, field for field.
ctypedef struct llhttp_t:
    int32_t _index
    void* _span_pos0
    void* _span_cb0
    int32_t error
    const char* reason
    const char* error_pos
    void* data
    void* _current
    uint64_t content_length
    uint8_t type
    uint8_t method
    uint8_t http_major
    uint8_t http_minor
    uint8_t header_state
    uint16_t lenient_flags
    uint8_t upgrade
    uint8_t finish
    uint16_t flags
    uint16_t status_code
    uint8_t initial_message_completed
    void* settings

ctypedef int (*llhttp_cb)(llhttp_t* p) noexcept
ctypedef int (*llhttp_data_cb)(llhttp_t* p, const char* at, size_t n) noexcept

# llhttp 9.4's llhttp_settings_s, in its order.
ctypedef struct llhttp_settings_t:
    llhttp_cb on_message_begin
    llhttp_data_cb on_protocol
    llhttp_data_cb on_url
    llhttp_data_cb on_status
    llhttp_data_cb on_method
    llhttp_data_cb on_version
    llhttp_data_cb on_header_field
    llhttp_data_cb on_header_value
    llhttp_data_cb on_chunk_extension_name
    llhttp_data_cb on_chunk_extension_value
    llhttp_cb on_headers_complete
    llhttp_data_cb on_body
    llhttp_cb on_message_complete
    llhttp_cb on_protocol_complete
    llhttp_cb on_url_complete
    llhttp_cb on_status_complete
    llhttp_cb on_method_complete
    llhttp_cb on_version_complete
    llhttp_cb on_header_field_complete
    llhttp_cb on_header_value_complete
    llhttp_cb on_chunk_extension_name_complete
    llhttp_cb on_chunk_extension_value_complete
    llhttp_cb on_chunk_header
    llhttp_cb on_chunk_complete
    llhttp_cb on_reset

# llhttp_type_t, llhttp_errno_t (the values lbcore reads)
cdef enum:
    HTTP_REQUEST = 1
    HTTP_RESPONSE = 2
    HPE_OK = 0
    HPE_PAUSED = 21
    HPE_PAUSED_UPGRADE = 22
    HPE_USER = 24
    F_CHUNKED = 1 << 3
    F_CONTENT_LENGTH = 1 << 5

# The functions, resolved by dlsym at import: called through this table.
ctypedef struct llhttp_api_t:
    void (*init)(llhttp_t* p, int type, const llhttp_settings_t* s) noexcept
    void (*settings_init)(llhttp_settings_t* s) noexcept
    int (*execute)(llhttp_t* p, const char* data, size_t n) noexcept
    int (*finish)(llhttp_t* p) noexcept
    void (*reset)(llhttp_t* p) noexcept
    int (*should_keep_alive)(const llhttp_t* p) noexcept
    int (*message_needs_eof)(const llhttp_t* p) noexcept
    void (*resume_after_upgrade)(llhttp_t* p) noexcept
    const char* (*get_error_pos)(const llhttp_t* p) noexcept
    const char* (*get_error_reason)(const llhttp_t* p) noexcept
    const char* (*errno_name)(int err) noexcept
    const char* (*method_name)(int method) noexcept

cdef llhttp_api_t* llhttp_api() except NULL
cdef bytes method_bytes(uint8_t method)


cdef class Parser:
    """One connection's llhttp, with C callbacks: a subclass's on_* hooks see
    the bytes in place. A header field reaches on_field as pointers into the
    read being parsed, copied first only when a read ended inside it. Each
    hook returns 0, or -1 to stop parsing (-2 is an exception, kept in
    cb_error for the caller of execute())."""
    cdef llhttp_t p
    cdef void* owner                    # the protocol, borrowed: it owns this parser
    cdef object cb_error
    # the field being parsed: pointers into the read, or its parts copied
    cdef const char* f_at
    cdef Py_ssize_t f_len
    cdef const char* v_at
    cdef Py_ssize_t v_len
    cdef bytearray f_copy
    cdef bytearray v_copy

    cdef int start(self, int kind, void* owner) except -1
    cdef int execute(self, const char* at, Py_ssize_t n) except -2
    cdef int _keep(self) except -1
    cdef int on_message_begin(self) except -2
    cdef int on_url(self, const char* at, size_t n) except -2
    cdef int on_status(self, const char* at, size_t n) except -2
    cdef int on_field(self, const char* name, Py_ssize_t nn, const char* value,
                      Py_ssize_t vn) except -2
    cdef int on_headers_complete(self) except -2
    cdef int on_body(self, const char* at, size_t n) except -2
    cdef int on_message_complete(self) except -2
