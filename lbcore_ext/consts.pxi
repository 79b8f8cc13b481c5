# Every tunable of the data plane in one place, with where its default came from.

# Upstream keep-alive: idle connections kept per member. nginx's `keepalive 32`
# per worker is the common production value; 64 leaves room for bursts.
DEF UPSTREAM_MAX_IDLE = 64
# An idle upstream connection older than this is closed instead of reused. Must
# stay below typical backend keep-alive time-outs (nginx 75 s, Apache 5 s,
# Node 5 s) so that we rarely race the backend's close; a race that does happen
# is retried once on a fresh connection.
DEF UPSTREAM_IDLE_EXPIRY = 4.0
# Bytes of request body held for an exchange whose upstream connection is not
# yet writable before reading from the client pauses (flow control).
DEF BODY_BUFFER_HIGH = 262144
# The most retries on other members (spec 7.2).
DEF MAX_RETRIES = 4
