"""Forwarding policies with the Phases hooks and with reloads: the hooks see
the chosen policy and pool and may override the pool; a reload applies new
policies to new requests while those in flight finish under the old ones."""

from __future__ import annotations

import threading

import httpx

from tests.support.lbproc import LbProcess, free_port, wait_port


def config(admin: int, port: int, a: int, b: int, c: int, api_pool: str = "pb") -> str:
    return f"""\
load_balancer: {{workers: 2, admin: {{port: {admin}}}, access_log: {{path: "off"}}}}
listeners:
  - name: web
    protocol: HTTP
    address: 127.0.0.1
    port: {port}
    default_pool: pa
    forwarding_policies:
      - {{name: api, priority: 1, rules: [{{type: path, values: [/api, /echo/api, /override,
                                                                /slow]}}],
         action: {{type: forward, pool: {api_pool}}}}}
pools:
  pa: {{health_check: {{enabled: false}}, members: [{{address: 127.0.0.1, port: {a}}}]}}
  pb: {{health_check: {{enabled: false}}, members: [{{address: 127.0.0.1, port: {b}}}]}}
  pc: {{health_check: {{enabled: false}}, members: [{{address: 127.0.0.1, port: {c}}}]}}
"""


def test_hooks_see_the_policy_and_may_override_the_pool(tmp_path, backends):
    a, b, c = backends(3)
    admin, port = free_port(), free_port()
    path = tmp_path / "lb.yaml"
    path.write_text(config(admin, port, a, b, c))
    lb = LbProcess(["run", "-c", str(path), "--phases",
                    "tests.support.policy_phases:PolicyPhases"])
    try:
        wait_port(port, lb.proc)
        r = httpx.get(f"http://127.0.0.1:{port}/echo/api/x")
        assert r.status_code == 299
        assert (r.headers["x-policy"], r.headers["x-pool"]) == ("api", "pb")
        r = httpx.get(f"http://127.0.0.1:{port}/echo/other")
        assert (r.headers["x-policy"], r.headers["x-pool"]) == ("None", "pa")
        assert httpx.get(f"http://127.0.0.1:{port}/override/1").json()["name"] == "c"
        assert httpx.get(f"http://127.0.0.1:{port}/api/1").json()["name"] == "b"
    finally:
        lb.stop()


def test_reload_applies_new_policies_to_new_requests_only(running, slow_backends):
    a, b, c = slow_backends(3)
    admin, port = free_port(), free_port()
    lb = running(config(admin, port, a, b, c), admin, port)
    assert lb.get("/api/x").json()["name"] == "b"
    results: list = []

    def slow():
        results.append(httpx.get(f"http://127.0.0.1:{port}/slow/2", timeout=10).json())

    threads = [threading.Thread(target=slow) for _ in range(4)]
    for t in threads:
        t.start()
    before = lb.status()["config"]["generation"]
    lb.reload(config(admin, port, a, b, c, api_pool="pc"))
    lb.wait(lambda s: s["config"]["generation"] > before and len(
        [w for w in lb.ready_workers(s) if w["generation"] > before]) == 2)
    # New requests: the new policy.
    names = {lb.get("/api/x").json()["name"] for _ in range(10)}
    assert names == {"c"}, names
    for t in threads:
        t.join()
    # In flight across the reload: finished, under the old policy (pool pb).
    assert [r["name"] for r in results] == ["b"] * 4, results
