"""The admin endpoint of a running lbcore: Prometheus counters written by the
data plane into shared memory, probes and status."""

from __future__ import annotations

import json
import socket
import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.support.lbproc import free_port, run_config


def scrape(port: int) -> dict:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_probes_and_status(tmp_path, backends, certs):
    (b,) = backends(1)
    admin, port, dead_port = free_port(), free_port(), free_port()
    text = f"""\
load_balancer: {{admin: {{address: 127.0.0.1, port: {admin}}}}}
certificates:
  site: {{type: server, certificate: "{certs['crt']}", private_key: "{certs['key']}"}}
listeners:
  - {{name: web, protocol: HTTP, address: 127.0.0.1, port: {port}, default_pool: p,
     request_timeout: 1}}
  - {{name: dead, protocol: HTTP, address: 127.0.0.1, port: {dead_port}, default_pool: gone}}
pools:
  p:
    health_check: {{enabled: false}}
    members: [{{address: 127.0.0.1, port: {b}}}]
  gone:
    health_check: {{interval: 1, unhealthy_threshold: 1}}
    members: [{{name: nobody, address: 127.0.0.1, port: {free_port()}}}]
"""
    lb = run_config(tmp_path, text, [port, dead_port, admin])
    try:
        for _ in range(3):
            assert httpx.get(f"http://127.0.0.1:{port}/").status_code == 200
        assert httpx.get(f"http://127.0.0.1:{dead_port}/").status_code in (502, 503)
        with socket.create_connection(("127.0.0.1", port)) as s:   # an unfinished header
            s.sendall(b"GET / HTTP/1.1\r\n")
            assert s.recv(100).startswith(b"HTTP/1.1 408")
        time.sleep(1.5)                                           # a health check round
        m = scrape(admin)
        web = (("listener", "web"),)
        # The 408's request counts too: every response lbcore writes, its own
        # errors included, belongs to a counted request (HTTP/1.1 and HTTP/2 alike).
        assert m[("lbcore_requests_total", web)] == 4
        assert m[("lbcore_responses_total", (("code", "2xx"), ("listener", "web"),
                                             ("pool", "p")))] == 3
        assert m[("lbcore_timeouts_total", (("kind", "request"), ("listener", "web")))] == 1
        assert m[("lbcore_generated_errors_total", (("code", "408"), ("listener", "web"),
                                                    ("reason", "request_timeout")))] == 1
        gen_dead = sum(v for (name, labels), v in m.items()
                       if name == "lbcore_generated_errors_total"
                       and ("listener", "dead") in labels)
        assert gen_dead == 1
        assert m[("lbcore_request_duration_seconds_count", web + (("pool", "p"),))] == 3
        assert m[("lbcore_member_up", (("member", "nobody"), ("pool", "gone")))] == 0
        assert m[("lbcore_certificate_expiry_timestamp_seconds",
                  (("certificate", "site"),))] > time.time()
        assert m[("lbcore_connections_active", web)] == 0
        assert httpx.get(f"http://127.0.0.1:{admin}/healthz").status_code == 200
        assert httpx.get(f"http://127.0.0.1:{admin}/readyz").status_code == 200
        status = json.loads(httpx.get(f"http://127.0.0.1:{admin}/status").text)
        assert status["pools"]["gone"]["members"][0]["health"] == "down"
        assert [lst["name"] for lst in status["listeners"]] == ["web", "dead"]
    finally:
        lb.stop()


def test_per_member_series(tmp_path, backends):
    """Traffic to two members and one that refuses: each member's requests,
    responses, latency, connections and bytes, and the retry counted on the
    member that failed (its pool's series count it too)."""
    a, b = backends(2)
    admin, port = free_port(), free_port()
    text = f"""\
load_balancer: {{workers: 2, admin: {{address: 127.0.0.1, port: {admin}}}}}
listeners:
  - {{name: web, protocol: HTTP, address: 127.0.0.1, port: {port}, default_pool: p}}
pools:
  p:
    health_check: {{enabled: false}}
    members: [{{name: a, address: 127.0.0.1, port: {a}}},
              {{name: b, address: 127.0.0.1, port: {b}}},
              {{name: dead, address: 127.0.0.1, port: {free_port()}}}]
"""
    lb = run_config(tmp_path, text, [port, admin])
    try:
        served = {}
        with httpx.Client() as c:
            for i in range(30):
                r = c.get(f"http://127.0.0.1:{port}/{i}")
                assert r.status_code == 200
                served[r.json()["name"]] = served.get(r.json()["name"], 0) + 1
        m = scrape(admin)
    finally:
        lb.stop()

    def member(name, *extra):
        return tuple(sorted([("listener", "web"), ("member", name), ("pool", "p"), *extra]))

    assert set(served) == {"a", "b"}
    for name, label in (("a", "a"), ("b", "b")):
        assert m[("lbcore_member_requests_total", member(name))] == served[label]
        assert m[("lbcore_member_responses_total", member(name, ("code", "2xx")))] == \
            served[label]
        assert m[("lbcore_member_response_duration_seconds_count", member(name))] == \
            served[label]
        assert m[("lbcore_member_failures_total", member(name, ("kind", "refused")))] == 0
        assert m[("lbcore_member_sent_bytes_total", member(name))] > 40 * served[label]
        assert m[("lbcore_member_received_bytes_total", member(name))] > 40 * served[label]
        assert m[("lbcore_member_requests_active", member(name))] == 0
        assert 1 <= m[("lbcore_member_connections_total", member(name))] <= 2   # keep-alive
        assert m[("lbcore_member_connections_active", member(name))] <= 2
    refused = m[("lbcore_member_failures_total", member("dead", ("kind", "refused")))]
    retried = m[("lbcore_member_retries_total", member("dead", ("reason", "connect_failure")))]
    assert refused >= 1 and retried == refused
    assert m[("lbcore_member_requests_total", member("dead"))] == refused
    assert m[("lbcore_member_responses_total", member("dead", ("code", "2xx")))] == 0
    assert m[("lbcore_retries_total", (("listener", "web"), ("pool", "p"),
                                       ("reason", "connect_failure")))] == retried
    web = (("listener", "web"),)
    assert m[("lbcore_received_bytes_total", web)] > 30 * 40
    assert m[("lbcore_sent_bytes_total", web)] > sum(
        m[("lbcore_member_received_bytes_total", member(n))] for n in ("a", "b")) * 0.9
