#!/bin/bash
# Instructions per TLS connection of lbcore's worker or of an nginx worker,
# both under callgrind, configured as bench/harness.py configures them (one
# worker, tls-1-2 with an ECDSA P-256 or RSA-2048 self-signed certificate,
# TLS 1.2 + 1.3 on one more port, keep-alive to the same nginx origin,
# X-Forwarded-For, no access log): the comparison a timed run on a noisy VM
# can't make to better than 10-50%.
#   bench/callgrind/tls.sh [lbcore|nginx] MODE [seconds]
# MODE:
#   full-ecdsa, full-rsa  bench/loadclients.py handshake: full TLS 1.2 handshakes
#                         (no session ever offered back), one GET with
#                         Connection: close each
#   tls13-resumed         the same client with --resume --tls13 (TLS 1.3 PSK)
#   tls-close             wrk -c10 with Connection: close (mostly TLS 1.2
#                         resumptions through wrk's session cache)
#   tls-ka                wrk -c10 keep-alive: per request, not per connection
# Loopback ports CG_PORT (29080) to CG_PORT+19; CG_DIR (/tmp/lbcore-cg-tls)
# keeps the callgrind file for callgrind_annotate. Two runs at once need their
# own CG_PORT and CG_DIR. CG_OPTS adds callgrind options, e.g. a cache model
# the size of this machine's per-core L2 (what a miss to L3 costs):
#   CG_OPTS="--cache-sim=yes --I1=32768,8,64 --D1=49152,12,64 --LL=2097152,16,64"
set -euo pipefail
WHO=${1:-lbcore}; MODE=${2:-full-ecdsa}; SECS=${3:-20}
HERE=$(cd "$(dirname "$0")" && pwd); ROOT=${CG_ROOT:-$(cd "$HERE/../.." && pwd)}
PY=${PYTHON:-/work/main/.venv/bin/python}; [ -x "$ROOT/.venv/bin/python" ] && PY=$ROOT/.venv/bin/python
P=${CG_PORT:-29080}; D=${CG_DIR:-/tmp/lbcore-cg-tls}; rm -rf $D; mkdir -p $D; chmod 755 $D
ORIGIN=$((P + 1)); ECDSA=$P; RSA=$((P + 2)); T13=$((P + 3))
cat > $D/origin.conf <<CONF
worker_processes 1; daemon off; pid $D/origin.pid; error_log $D/origin.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 100000000;
       server { listen 127.0.0.1:$ORIGIN; location / { return 200 "hello world\n"; } } }
CONF
(cd "$ROOT" && "$PY" -c 'import sys; from pathlib import Path; from bench.harness import make_cert
for k in ("ecdsa", "rsa"): make_cert(Path(sys.argv[1]), k)' $D)
SUITES="TLS_AES_256_GCM_SHA384, TLS_CHACHA20_POLY1305_SHA256, TLS_AES_128_GCM_SHA256"
cat > $D/lb.yaml <<CONF
load_balancer: {workers: 1, admin: {port: $((P + 19))}, access_log: {path: "off"}}
certificates:
  c: {type: server, certificate: $D/ecdsa.crt, private_key: $D/ecdsa.key}
  r: {type: server, certificate: $D/rsa.crt, private_key: $D/rsa.key}
security_policies:
  t13: {protocols: [TLSv1.2, TLSv1.3], ciphers: [ECDHE-ECDSA-AES256-GCM-SHA384, $SUITES]}
listeners:
  - {name: s, protocol: HTTPS, address: 127.0.0.1, port: $ECDSA, default_pool: o,
     server_certificate: c, security_policy: tls-1-2,
     idle_timeout: 120, insert_headers: {x_real_ip: false, x_forwarded_host: false}}
  - {name: r, protocol: HTTPS, address: 127.0.0.1, port: $RSA, default_pool: o,
     server_certificate: r, security_policy: tls-1-2,
     idle_timeout: 120, insert_headers: {x_real_ip: false, x_forwarded_host: false}}
  - {name: t13, protocol: HTTPS, address: 127.0.0.1, port: $T13, default_pool: o,
     server_certificate: c, security_policy: t13,
     idle_timeout: 120, insert_headers: {x_real_ip: false, x_forwarded_host: false}}
pools:
  o:
    health_check: {enabled: false}
    members: [{address: 127.0.0.1, port: $ORIGIN}]
CONF
cat > $D/nginx.conf <<CONF
worker_processes 1; master_process off; daemon off; pid $D/nginx.pid; error_log $D/nginx.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 100000000; keepalive_timeout 120s;
  client_body_temp_path $D/nb; proxy_temp_path $D/np;
  upstream origin { server 127.0.0.1:$ORIGIN; keepalive 256; keepalive_requests 100000000; }
  proxy_http_version 1.1; proxy_set_header Connection "";
  proxy_max_temp_file_size 0;
  proxy_set_header Host \$host;
  proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
  proxy_set_header X-Forwarded-Proto \$scheme;
  ssl_protocols TLSv1.2;
  server { listen 127.0.0.1:$ECDSA ssl; ssl_certificate $D/ecdsa.crt; ssl_certificate_key $D/ecdsa.key;
           location / { proxy_pass http://origin; } }
  server { listen 127.0.0.1:$RSA ssl; ssl_certificate $D/rsa.crt; ssl_certificate_key $D/rsa.key;
           location / { proxy_pass http://origin; } }
  server { listen 127.0.0.1:$T13 ssl; ssl_protocols TLSv1.2 TLSv1.3;
           ssl_certificate $D/ecdsa.crt; ssl_certificate_key $D/ecdsa.key;
           location / { proxy_pass http://origin; } } }
CONF
taskset -c 1 nginx -c $D/origin.conf & NG=$!
cd "$ROOT"; export PYTHONPATH=$ROOT
if [ "$WHO" = nginx ]; then
    CMD=(nginx -c $D/nginx.conf)
else
    CMD=("$PY" "$HERE/solo.py" $D/lb.yaml)
fi
valgrind --tool=callgrind ${CG_OPTS:-} --callgrind-out-file=$D/cg.%p "${CMD[@]}" > $D/valgrind.log 2>&1 & V=$!
trap 'kill $V $NG 2>/dev/null || true' EXIT
for _ in $(seq 300); do
    sleep 1; curl -sk -o /dev/null https://127.0.0.1:$ECDSA/ && curl -sk -o /dev/null https://127.0.0.1:$T13/ && break
done
PORT=$ECDSA; EXTRA=()
case $MODE in
    full-ecdsa) ;;
    full-rsa) PORT=$RSA ;;
    tls13-resumed) PORT=$T13; EXTRA=(--resume --tls13) ;;
    tls-close|tls-ka) ;;
    *) echo "unknown mode $MODE" >&2; exit 2 ;;
esac
load() {    # $1 seconds; prints the number of connections made
    if [ "$MODE" = tls-close ]; then
        taskset -c 1 wrk -t1 -c10 -d"$1" -H "Connection: close" https://127.0.0.1:$PORT/ \
            | awk '/requests in/ {print $1}'
    elif [ "$MODE" = tls-ka ]; then
        taskset -c 1 wrk -t1 -c10 -d"$1" https://127.0.0.1:$PORT/ | awk '/requests in/ {print $1}'
    else
        taskset -c 1 "$PY" -m bench.loadclients handshake $PORT --seconds "$1" --procs 4 \
            "${EXTRA[@]}" > $D/load.json
        "$PY" -c 'import json, sys; r = json.load(open(sys.argv[1]))
assert r["errors"] == 0, r; assert (r["resumed"] == 0) == (sys.argv[2] == "full"), r
print(r["handshakes"])' $D/load.json "${MODE%%-*}"
    fi
}
load 3 > /dev/null                                         # warm-up, not counted
callgrind_control -z $V > /dev/null
N=$(load "$SECS")
callgrind_control -d $V > /dev/null; sleep 1
F=$(ls -t $D/cg.*.1 | head -1)
T=$(callgrind_annotate "$F" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1; exit}')
UNIT=connection; [ "$MODE" = tls-ka ] && UNIT=request
echo "$WHO $MODE: $N ${UNIT}s, $T instructions, $((T / N)) per $UNIT ($F)"
