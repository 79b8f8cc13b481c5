"""Access log lines from a running lbcore, in each format: request ids
honoured or generated and passed on, bytes both ways, durations in µs, every
upstream try with its member and times (a member that refuses, then one that
answers), TLS resumption."""

from __future__ import annotations

import json
import re
import socket
import ssl
import time

import httpx
import pytest

from tests.support.lbproc import free_port, run_config


def start(tmp_path, backend, fmt, extra=""):
    port = free_port()
    log = tmp_path / "access.log"
    text = f"""\
load_balancer: {{admin: {{port: {free_port()}}}, access_log: {{path: "{log}", format: {fmt}}}}}
listeners:
  - {{name: web, protocol: HTTP, address: 127.0.0.1, port: {port}, default_pool: p}}
pools:
  p:
    health_check: {{enabled: false}}
    members: [{{name: dead, address: 127.0.0.1, port: {free_port()}}},
              {{name: live, address: 127.0.0.1, port: {backend}}}]
{extra}"""
    return run_config(tmp_path, text, [port]), port, log


def read_lines(log, n, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = log.read_text().splitlines() if log.exists() else []
        if len(lines) >= n:
            return lines
        time.sleep(0.05)
    raise AssertionError(f"expected {n} lines in {log}")


def two_tries(port):
    """Two requests: round robin sends one (or both) to the dead member
    first, and it is retried on the live one."""
    answers = []
    for i in range(2):
        answers.append(httpx.get(f"http://127.0.0.1:{port}/x{i}",
                                 headers={"User-Agent": "t/1", "Referer": "http://r/"}))
    return answers


def test_json_access_log(tmp_path, backends):
    (b,) = backends(1)
    lb, port, log = start(tmp_path, b, "json")
    try:
        seen = two_tries(port)
        given = httpx.get(f"http://127.0.0.1:{port}/given", headers={"X-Request-ID": "req-42"})
        with socket.create_connection(("127.0.0.1", port)) as s:      # lbcore answers itself
            s.sendall(b"CONNECT example.test:443 HTTP/1.1\r\nHost: example.test\r\n\r\n")
            assert s.recv(100).startswith(b"HTTP/1.1 405")
        # (two workers write their own batches: order lines by what they asked)
        by_target = {line["target"]: line for line in map(json.loads, read_lines(log, 4))}
    finally:
        lb.stop()
    lines = [by_target[t] for t in ("/x0", "/x1", "/given", "example.test:443")]
    sent_ids = [dict((n.lower(), v) for n, v in s.json()["headers"])["x-request-id"]
                for s in seen]
    assert [line["request_id"] for line in lines[:2]] == sent_ids
    assert lines[2]["request_id"] == "req-42"
    assert dict((n.lower(), v) for n, v in given.json()["headers"])["x-request-id"] == "req-42"
    first = lines[0]
    assert first["status"] == 200 and first["target"] == "/x0" and first["user_agent"] == "t/1"
    assert first["listener"] == "web" and first["pool"] == "p" and first["method"] == "GET"
    # Bytes: the body exactly as relayed; the heads as HTTP/1.1 text.
    for line, answer in zip(lines[:3], [*seen, given], strict=True):
        assert line["body_bytes_sent"] == len(answer.content)
        assert line["bytes_sent"] > line["body_bytes_sent"] + 30
        assert line["bytes_received"] > 40
        assert 0 < line["duration_s"] < 5
    # Round robin over a dead and a live member: one request tried both.
    retried = next(line for line in lines[:2] if len(line["upstream"]) == 2)
    refused, answered = retried["upstream"]
    assert refused["member"] == "dead" and refused["result"] == "refused"
    assert refused["connect_s"] is None and refused["header_s"] is None
    assert answered["member"] == "live" and answered["result"] == "200"
    assert 0 <= answered["connect_s"] <= answered["header_s"] <= answered["response_s"]
    assert retried["duration_s"] >= answered["response_s"]
    # µs resolution: six decimals, and a local answer's time is not 0.
    assert re.search(r'"duration_s":\d+\.\d{6},', log.read_text())
    local = lines[3]
    assert local["status"] == 405 and local["upstream"] == [] and local["duration_s"] > 0
    assert local["bytes_sent"] > local["body_bytes_sent"] > 0


def logged(tmp_path, backends, fmt):
    """(listener port, live member port, the two answers, their lines)."""
    (b,) = backends(1)
    lb, port, log = start(tmp_path, b, fmt)
    try:
        answers = two_tries(port)
        lines = read_lines(log, 2)
    finally:
        lb.stop()
    return port, b, answers, lines


def test_elb_access_log(tmp_path, backends):
    port, b, answers, lines = logged(tmp_path, backends, "elb")
    line = next(x for x in lines if '"502, 200"' in x)
    answer = answers[int(re.search(r"/x(\d) ", line)[1])]
    assert f'"GET http://127.0.0.1:{port}/x' in line and '"http://r/"' in line
    assert " elb_01 " in line and ' 200 "GET ' in line and '"dead, live"' in line
    # request_length bytes_sent body_bytes_sent request_time, then the tries
    m = re.search(r'HTTP/1\.1" (\d+) (\d+) (\d+) (\d+\.\d{3}) "502, 200" "-, (\d+\.\d{3})" '
                  r'"-, (\d+\.\d{3})" "\d+\.\d{3}, (\d+\.\d{3})" "127\.0\.0\.1:\d+, 127\.0\.0\.1:'
                  rf'{b}"', line)
    assert m, line
    assert int(m[3]) == len(answer.content) and int(m[2]) > int(m[3]) and int(m[1]) > 40
    assert float(m[5]) <= float(m[6]) <= float(m[7])
    assert " lbcore web - p " in line and f" -:{port} " in line


def test_combined_access_log(tmp_path, backends):
    _, _, answers, lines = logged(tmp_path, backends, "combined")
    for line in lines:
        i = int(re.search(r"/x(\d) ", line)[1])
        answer = answers[i]
        assert re.fullmatch(
            rf'127\.0\.0\.1 - - \[\d\d/\w{{3}}/\d{{4}}:\d\d:\d\d:\d\d \+0000\] '
            rf'"GET /x{i} HTTP/1\.1" 200 {len(answer.content)} "http://r/" "t/1"', line), line


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_tls_resumption_is_logged(tmp_path, backends, certs, version):
    (b,) = backends(1)
    port = free_port()
    log = tmp_path / "access.log"
    text = f"""\
load_balancer: {{admin: {{port: {free_port()}}}, access_log: {{path: "{log}"}}}}
certificates:
  site: {{type: server, certificate: "{certs['crt']}", private_key: "{certs['key']}"}}
listeners:
  - {{name: web, protocol: HTTPS, address: 127.0.0.1, port: {port}, default_pool: p,
     server_certificate: site}}
pools:
  p:
    health_check: {{enabled: false}}
    members: [{{name: live, address: 127.0.0.1, port: {b}}}]
"""
    lb = run_config(tmp_path, text, [port])
    ctx = ssl.create_default_context(cafile=str(certs["ca"]))
    ctx.minimum_version = ctx.maximum_version = version
    session = None
    try:
        for i in range(2):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                    ctx.wrap_socket(raw, server_hostname="localhost", session=session) as s:
                s.sendall(b"GET /%d HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
                          % i)
                while s.recv(65536):
                    pass                  # TLS 1.3 tickets arrive after the handshake
                session = s.session
        lines = sorted(map(json.loads, read_lines(log, 2)), key=lambda line: line["target"])
    finally:
        lb.stop()
    name = "TLSv1.3" if version == ssl.TLSVersion.TLSv1_3 else "TLSv1.2"
    assert [line["tls"]["resumed"] for line in lines] == [False, True]
    assert all(line["tls"]["version"] == name and line["tls"]["cipher"] for line in lines)
