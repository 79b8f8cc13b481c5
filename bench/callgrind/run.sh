#!/bin/bash
# Instructions per request of the lbcore data plane under callgrind: stable to
# about 0.5% where a timed benchmark moves by 10% on these machines.
# (TLS handshakes, lbcore against nginx under callgrind: bench/callgrind/tls.sh.)
#   bench/callgrind/run.sh [keepalive|close|tls-close|policies|policies-base] [requests]
# policies: keep-alive through bench/policies.py's 100 forwarding policies (the
# request matching the last); policies-base: the same request on a listener
# without policies. Their difference is what the policies cost.
# Needs valgrind, nginx (the origin) and h2load/wrk; loopback ports CG_PORT (28080)
# to CG_PORT+363; CG_DIR (/tmp/lbcore-callgrind) keeps the callgrind file for
# callgrind_annotate. Two runs at once need their own CG_PORT and CG_DIR.
set -euo pipefail
MODE=${1:-keepalive}; N=${2:-5000}
HERE=$(cd "$(dirname "$0")" && pwd); ROOT=$(cd "$HERE/../.." && pwd)
P=${CG_PORT:-28080}; D=${CG_DIR:-/tmp/lbcore-callgrind}; rm -rf $D; mkdir -p $D
cat > $D/origin.conf <<CONF
worker_processes 1; daemon off; pid $D/nginx.pid; error_log $D/nginx.err;
events { worker_connections 4096; }
http { access_log off; server { listen 127.0.0.1:$((P + 1)); location / { return 200 "hello world\n"; } } }
CONF
"$ROOT/.venv/bin/python" - "$D" <<'PY'
import sys, trustme
ca = trustme.CA(); leaf = ca.issue_cert("localhost", "127.0.0.1")
leaf.private_key_pem.write_to_path(sys.argv[1] + "/key.pem")
open(sys.argv[1] + "/crt.pem", "wb").write(b"".join(p.bytes() for p in leaf.cert_chain_pems))
PY
cat > $D/lb.yaml <<CONF
load_balancer: {workers: 1, admin: {port: $((P + 19))}, access_log: {path: "${ACCESS_LOG:-off}"}}
certificates:
  c: {type: server, certificate: $D/crt.pem, private_key: $D/key.pem}
listeners:
  - {name: h, protocol: HTTP, address: 127.0.0.1, port: $P, default_pool: p}
  - {name: s, protocol: HTTPS, address: 127.0.0.1, port: $((P + 363)), default_pool: p,
     server_certificate: c, security_policy: tls-1-2}
$(cd "$ROOT" && "$ROOT/.venv/bin/python" -c 'import sys; from bench import policies; print(policies.lbcore_listener(int(sys.argv[1]), "p"), end="")' $((P + 2)))
pools:
  p:
    health_check: {enabled: false}
    members: [{address: 127.0.0.1, port: $((P + 1))}]
CONF
taskset -c 1 nginx -c $D/origin.conf & NG=$!
cd "$ROOT"
valgrind --tool=callgrind --callgrind-out-file=$D/cg.%p \
    "$ROOT/.venv/bin/python" "$HERE/solo.py" $D/lb.yaml > $D/valgrind.log 2>&1 & V=$!
trap 'kill $V $NG 2>/dev/null || true' EXIT
for _ in $(seq 120); do sleep 1; curl -s -o /dev/null http://127.0.0.1:$P/ && break; done
URL=http://127.0.0.1:$P/
[ "$MODE" = tls-close ] && URL=https://127.0.0.1:$((P + 363))/
HDR=()
if [ "$MODE" = policies ] || [ "$MODE" = policies-base ]; then
    URL=http://127.0.0.1:$((P + 2))/last/x; [ "$MODE" = policies-base ] && URL=http://127.0.0.1:$P/last/x
    HDR=(-H ":authority: bench.test" -H "x-route: go")
fi
taskset -c 1 h2load --h1 -n 500 -c 10 "${HDR[@]}" $URL > /dev/null      # warm-up, not counted
callgrind_control -z $V > /dev/null
if [ "$MODE" = close ] || [ "$MODE" = tls-close ]; then
    N=$(taskset -c 1 wrk -t1 -c10 -d10 -H "Connection: close" $URL | awk '/requests in/ {print $1}')
else
    taskset -c 1 h2load --h1 -n "$N" -c 10 "${HDR[@]}" $URL | grep -E "^requests:"
fi
callgrind_control -d $V > /dev/null; sleep 1
F=$(ls -t $D/cg.*.1 | head -1)
T=$(callgrind_annotate "$F" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1; exit}')
echo "$MODE: $N requests, $T instructions, $((T / N)) per request ($F)"
