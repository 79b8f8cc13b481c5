"""Access log lines from a running lbcore: JSON and ELB formats, request ids
honoured or generated and passed on, every upstream try recorded."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from tests.support.lbproc import free_port, run_config


def start(tmp_path, backend, fmt):
    port = free_port()
    log = tmp_path / "access.log"
    text = f"""\
load_balancer: {{admin: {{port: {free_port()}}}, access_log: {{path: "{log}", format: {fmt}}}}}
listeners:
  - {{name: web, protocol: HTTP, address: 127.0.0.1, port: {port}, default_pool: p}}
pools:
  p:
    health_check: {{enabled: false}}
    members: [{{address: 127.0.0.1, port: {free_port()}}}, {{address: 127.0.0.1, port: {backend}}}]
"""
    return run_config(tmp_path, text, [port]), port, log


def read_lines(log, n, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = log.read_text().splitlines() if log.exists() else []
        if len(lines) >= n:
            return lines
        time.sleep(0.05)
    raise AssertionError(f"expected {n} lines in {log}")


def test_json_access_log(tmp_path, backends):
    (b,) = backends(1)
    lb, port, log = start(tmp_path, b, "json")
    try:
        seen = [httpx.get(f"http://127.0.0.1:{port}/x{i}", headers={"User-Agent": "t/1"}).json()
                for i in range(2)]
        given = httpx.get(f"http://127.0.0.1:{port}/given", headers={"X-Request-ID": "req-42"})
        lines = [json.loads(line) for line in read_lines(log, 3)]
    finally:
        lb.stop()
    sent_ids = [dict((n.lower(), v) for n, v in s["headers"])["x-request-id"] for s in seen]
    assert [line["request_id"] for line in lines[:2]] == sent_ids
    assert lines[2]["request_id"] == "req-42"
    assert dict((n.lower(), v) for n, v in given.json()["headers"])["x-request-id"] == "req-42"
    first = lines[0]
    assert first["status"] == 200 and first["target"] == "/x0" and first["user_agent"] == "t/1"
    assert first["listener"] == "web" and first["pool"] == "p" and first["method"] == "GET"
    # One of the two members is dead: some request shows the refused try, then the 200.
    results = [[u["result"] for u in line["upstream"]] for line in lines]
    assert ["refused", "200"] in results and all(r[-1] == "200" for r in results)


@pytest.mark.parametrize("fmt", ["elb"])
def test_elb_access_log(tmp_path, backends, fmt):
    (b,) = backends(1)
    lb, port, log = start(tmp_path, b, fmt)
    try:
        httpx.get(f"http://127.0.0.1:{port}/elb", headers={"Referer": "http://r/"})
        (line,) = read_lines(log, 1)
    finally:
        lb.stop()
    assert '"GET /elb HTTP/1.1"' in line and '"http://r/"' in line and " 200 " in line
    assert " web p " in line
