# Every tunable of the data plane in one place, with where its default came from.

# Upstream keep-alive: idle connections kept per member and worker. One HTTP/2
# client connection alone has up to 100 requests in flight (H2_MAX_STREAMS),
# each on a member connection of its own: a pool smaller than the requests in
# flight closes connections after a burst that the next one reopens. 256 is
# the nginx `keepalive 256` of the benchmark; an idle one costs a few KiB.
DEF UPSTREAM_MAX_IDLE = 256
# An idle upstream connection older than this is closed instead of reused. Must
# stay below typical backend keep-alive time-outs (nginx 75 s, Apache 5 s,
# Node 5 s) so that we rarely race the backend's close; a race that does happen
# is retried once on a fresh connection.
DEF UPSTREAM_IDLE_EXPIRY = 4.0
# Bytes of request body held for an exchange whose upstream connection is not
# yet writable before reading from the client pauses (flow control).
DEF BODY_BUFFER_HIGH = 262144
# (Retries on other members are a pool's setting: Pool.max_retries, spec 7.2's 4.)
# A qps_limit's burst: what its bucket may lend ahead of the rate, in seconds
# of the rate (nginx limit_req's burst; 0.1 s of 100 qps lets 11 through at
# once). Small, so that over seconds the limit holds within a few percent.
DEF QPS_BURST_SECONDS = 0.1
# Connections a listener's max_new_connections_per_second lets through at once.
DEF CONN_RATE_BURST_SECONDS = 0.1

# ---- HTTP/2 (spec 9) -------------------------------------------------------------
# Request body bytes read and dropped on a stream answered before its body
# ended (a 413, an early member reply), before it is reset with NO_ERROR:
# enough for clients that send a whole upload before reading the answer.
DEF H2_DISCARD_MAX = 16777216
# SETTINGS_MAX_CONCURRENT_STREAMS: nginx's http2_max_concurrent_streams and
# HAProxy's default are both 100.
DEF H2_MAX_STREAMS = 100
# The HPACK encoder's table, whatever SETTINGS_HEADER_TABLE_SIZE the client
# asks for: the RFC 7541 default, so a client can't make us hold megabytes.
DEF H2_HPACK_ENCODER_MAX = 4096
# Receive window of the whole connection (streams keep the 64 KiB default):
# one slow upload must not stall the others' uploads.
DEF H2_CONN_WINDOW = 16777216
# Response bytes queued on a stream (waiting for the client's window) before
# its member connection stops being read; the client's initial window.
DEF H2_STREAM_BUFFER_HIGH = 65536
# nghttp2's own rapid-reset limiter and CONTINUATION cap sit above ours, so
# ours trip first and are counted by reason.
DEF H2_NGHTTP2_RST_BURST = 10000
DEF H2_NGHTTP2_RST_RATE = 1000
DEF H2_NGHTTP2_MAX_CONTINUATIONS = 1000
# Abuse budgets per connection: token buckets (burst, refill per second); an
# empty bucket is GOAWAY(ENHANCE_YOUR_CALM). Sized far above what browsers,
# curl or gRPC send (a page load resets tens of streams, pings a few times),
# far below a flood (millions per second). Like nginx's and Envoy's limits.
DEF H2_RST_BURST = 200             # RST_STREAM from the client (rapid reset)
DEF H2_RST_RATE = 100
DEF H2_PING_BURST = 50
DEF H2_PING_RATE = 10
DEF H2_SETTINGS_BURST = 50
DEF H2_SETTINGS_RATE = 10
DEF H2_PRIORITY_BURST = 1000
DEF H2_PRIORITY_RATE = 500
DEF H2_WINDOW_UPDATE_BURST = 1000  # plus one token per DATA frame we send
DEF H2_WINDOW_UPDATE_RATE = 500
DEF H2_EMPTY_BURST = 100           # DATA without END_STREAM or CONTINUATION, empty
DEF H2_EMPTY_RATE = 20
# A header block in more CONTINUATION frames than this, or more compressed
# bytes than twice the listener's max_header_block, is a flood.
DEF H2_MAX_CONTINUATIONS = 32
# A decoded header list this many times over max_header_block is an HPACK
# bomb (GOAWAY); merely over the limit is a 431 on that stream.
DEF H2_HEADER_FLOOD_FACTOR = 4

# ---- Client connections: accept, TCP and TLS (lbcore_ext/transport.pyx) --------
# Bytes read per readiness event (plaintext over TLS), into one buffer the whole
# worker shares, TLS and plain TCP alike: a TLS record is at most 16 KiB, so this
# is four records per data_received. uvloop gives each connection a 256 KiB
# buffer of its own (a plain one too, while it reads).
DEF READ_BUFFER = 65536
# Queued pieces one writev() takes on a plain connection (Linux's IOV_MAX is
# 1024; more than a few dozen pieces queued is already a slow reader).
DEF WRITEV_MAX = 64
# Ready sockets the Poller takes from epoll per loop callback (more wait for the
# next iteration: level-triggered, nothing is lost).
DEF POLL_BATCH = 128
# Write buffer marks for pause_writing/resume_writing: asyncio's defaults.
DEF WRITE_HIGH = 65536
DEF WRITE_LOW = 16384
# A close() waits this long for queued bytes to leave before it aborts (uvloop's
# ssl_shutdown_timeout is 30 s).
DEF CLOSE_FLUSH_TIMEOUT = 30.0
# After the 400 to plain HTTP on a TLS port, how long the rest of the client's
# bytes are read and thrown away before closing, so that closing over unread
# data does not reset the connection before the client read the answer
# (nginx's lingering_time is 30 s, its lingering_timeout 5 s).
DEF PLAIN_HTTP_LINGER = 2.0
# Out of file descriptors (EMFILE/ENFILE), a listener stops accepting this long:
# nginx's 500 ms. Connections wait in the kernel's backlog meanwhile.
DEF ACCEPT_BACKOFF = 0.5

# ---- Heads built field by field (lbcore_ext/bufs.pxd new_ba) ------------------------
# Room a request or response head starts with: most heads fit, so one allocation
# (under 512 bytes, from CPython's small-object allocator) serves the whole head.
DEF HEAD_RESERVE = 480
# A response head to a client gets room for a body of up to this many bytes
# (its Content-Length) as well: a small response's body, read with its head,
# goes out in the same buffer and the same send without a realloc.
DEF BODY_ROOM = 4096
# Room for the forwarded lines made once per connection (runtime.pyx
# ForwardedLines), besides the static and TLS lines: the longest names and an
# IPv6 peer fit.
DEF FWD_ROOM = 192
