"""The master and its workers as operators drive them: signals, reloads under
load, dead and hung workers, health checks run once in the master."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time

import httpx
import pytest

from tests.e2e.test_metrics import scrape
from tests.support.lbproc import free_port

pytestmark = pytest.mark.timeout(120)


def config(admin: int, port: int, members: list[int], lb: str = "", listener: str = "",
           pool: str = "health_check: {enabled: false}") -> str:
    members_yaml = ", ".join(f"{{name: {'abcdefgh'[i]}, address: 127.0.0.1, port: {p}}}"
                             for i, p in enumerate(members))
    return f"""\
load_balancer:
  workers: 2
  admin: {{address: 127.0.0.1, port: {admin}}}
  access_log: {{path: "off"}}
  {lb}
listeners:
  - name: web
    protocol: HTTP
    address: 127.0.0.1
    port: {port}
    default_pool: p
    {listener}
pools:
  p:
    {pool}
    members: [{members_yaml}]
"""


def test_reloads_under_load_lose_no_request(running, slow_backends):
    a, b = slow_backends(2)
    admin, port = free_port(), free_port()
    lb = running(config(admin, port, [a]), admin, port)
    stop = threading.Event()
    counts = {"ok": 0, "failed": 0}
    errors: list[str] = []
    lock = threading.Lock()

    def load() -> None:
        with httpx.Client(timeout=10) as client:
            while not stop.is_set():
                try:
                    r = client.get(f"http://127.0.0.1:{port}/x")
                    ok = r.status_code == 200
                    if not ok:
                        errors.append(f"status {r.status_code}")
                except httpx.HTTPError as exc:
                    ok = False
                    errors.append(repr(exc))
                with lock:
                    counts["ok" if ok else "failed"] += 1

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    slow = []
    try:
        for n in range(3):
            time.sleep(0.7)
            # A slow request in flight across each reload must still finish.
            slow_result: list = []
            t = threading.Thread(target=lambda out=slow_result: out.append(lb.get("/slow/1")))
            t.start()
            slow.append((t, slow_result))
            time.sleep(0.2)
            members = [a, b] if n % 2 == 0 else [a]
            lb.reload(config(admin, port, members))
            lb.wait(lambda s, g=n + 2: s["config"]["generation"] == g
                    and all(w["generation"] == g for w in s["workers"]))
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(15)
    for t, out in slow:
        t.join(15)
        assert out and out[0].status_code == 200
    print(f"\nreloads under load: {counts['ok']} requests succeeded, {counts['failed']} failed")
    assert counts["failed"] == 0, errors[:5]
    assert counts["ok"] > 100
    m = scrape(admin)
    assert m[("lbcore_reloads_total", (("result", "success"),))] == 3
    assert m[("lbcore_requests_total", (("listener", "web"),))] >= counts["ok"]
    # The config of the third reload (members a and b) is the one serving.
    names = {lb.get("/who").json()["name"] for _ in range(6)}
    assert names == {"a", "b"}


def test_bad_config_on_reload_keeps_serving(running, slow_backends):
    (a,) = slow_backends(1)
    admin, port = free_port(), free_port()
    text = config(admin, port, [a])
    lb = running(text, admin, port)
    before = lb.status()
    lb.reload(text.replace(f"port: {port}", "port: 70000"))
    lb.wait(lambda s: s["config"]["reloads"].get("failure") == 1)
    lb.reload(text + "  broken: [\n")
    lb.wait(lambda s: s["config"]["reloads"].get("failure") == 2)
    after = lb.status()
    assert after["config"]["generation"] == before["config"]["generation"]
    assert {w["pid"] for w in after["workers"]} == {w["pid"] for w in before["workers"]}
    assert lb.get().status_code == 200
    m = scrape(admin)
    assert m[("lbcore_reloads_total", (("result", "failure"),))] == 2
    _, err = lb.stop()
    assert f"{lb.path}:10: listeners[0].port: 70000 is outside 1-65535" in err, err
    assert "still serving the old one" in err


def test_killed_worker_is_replaced(running, slow_backends):
    (a,) = slow_backends(1)
    admin, port = free_port(), free_port()
    lb = running(config(admin, port, [a]), admin, port)
    victim = lb.status()["workers"][0]["pid"]
    os.kill(victim, signal.SIGKILL)
    s = lb.wait(lambda s: len(lb.ready_workers(s)) == 2
                and victim not in {w["pid"] for w in s["workers"]})
    assert len(s["workers"]) == 2
    assert all(lb.get().status_code == 200 for _ in range(10))
    m = scrape(admin)
    assert m[("lbcore_worker_restarts_total", ())] == 1
    _, err = lb.stop()
    assert f"worker {victim} died (signal SIGKILL)" in err


def test_hung_worker_is_detected_and_replaced(running, slow_backends):
    (a,) = slow_backends(1)
    admin, port = free_port(), free_port()
    lb = running(config(admin, port, [a], lb="heartbeat_timeout: 1"), admin, port)
    victim = lb.status()["workers"][0]["pid"]
    os.kill(victim, signal.SIGSTOP)
    started = time.monotonic()
    lb.wait(lambda s: len(lb.ready_workers(s)) == 2
            and victim not in {w["pid"] for w in s["workers"]}, timeout=10)
    assert time.monotonic() - started < 5
    with pytest.raises(ProcessLookupError):
        os.kill(victim, 0)
    _, err = lb.stop()
    assert f"worker {victim} is hung (no heartbeat" in err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGQUIT])
def test_stop_signal_drains_in_flight_requests(running, slow_backends, sig):
    (a,) = slow_backends(1)
    admin, port = free_port(), free_port()
    lb = running(config(admin, port, [a], lb="drain_timeout: 10"), admin, port)
    result: list = []
    t = threading.Thread(target=lambda: result.append(lb.get("/slow/1.5")))
    t.start()
    time.sleep(0.4)
    os.kill(lb.pid, sig)
    # Not ready while draining, so a load balancer in front stops sending.
    deadline = time.monotonic() + 1
    while time.monotonic() < deadline:
        r = httpx.get(f"http://127.0.0.1:{admin}/readyz", timeout=2)
        if r.status_code == 503:
            break
    assert r.status_code == 503
    # New connections are refused at once, not queued for nobody.
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), 1).close()
    t.join(10)
    assert result and result[0].status_code == 200
    assert result[0].headers.get("connection") == "close"
    assert lb.lb.proc.wait(10) == 0


def test_sigint_exits_at_once(running, slow_backends):
    (a,) = slow_backends(1)
    admin, port = free_port(), free_port()
    lb = running(config(admin, port, [a], lb="drain_timeout: 30"), admin, port)
    errors: list = []

    def slow() -> None:
        try:
            lb.get("/slow/20")
        except httpx.HTTPError as exc:
            errors.append(exc)

    t = threading.Thread(target=slow)
    t.start()
    time.sleep(0.4)
    started = time.monotonic()
    os.kill(lb.pid, signal.SIGINT)
    assert lb.lb.proc.wait(10) == 0
    assert time.monotonic() - started < 4
    t.join(10)
    assert errors            # the request in flight was cut, not waited for


def test_sigusr1_reopens_access_log(running, slow_backends, tmp_path):
    (a,) = slow_backends(1)
    admin, port = free_port(), free_port()
    log_path = tmp_path / "access.log"
    text = config(admin, port, [a]).replace('access_log: {path: "off"}',
                                            f'access_log: {{path: "{log_path}"}}')
    lb = running(text, admin, port)
    for _ in range(4):
        assert lb.get("/before").status_code == 200
    time.sleep(0.3)                         # the writers flush every 20 ms
    rotated = tmp_path / "access.log.1"
    log_path.rename(rotated)
    os.kill(lb.pid, signal.SIGUSR1)
    time.sleep(0.3)
    for _ in range(4):
        assert lb.get("/after").status_code == 200
    time.sleep(0.3)
    old = rotated.read_text().splitlines()
    new = log_path.read_text().splitlines()
    assert len(old) == 4 and all("/before" in x for x in old)
    assert len(new) == 4 and all("/after" in x for x in new)


def test_health_checks_once_in_master_within_detection_window(running, slow_backends):
    a, b = slow_backends(2)
    admin, port = free_port(), free_port()
    hc = ("health_check: {protocol: HTTP, path: /hc, interval: 1, timeout: 1, "
          "healthy_threshold: 2, unhealthy_threshold: 2}")
    lb = running(config(admin, port, [a, b], pool=hc), admin, port)
    lb.wait(lambda s: all(m["health"] == "up" for m in s["pools"]["p"]["members"]))
    slow_backends.stop(b)
    # Spec 7.1 detection window: interval x unhealthy threshold + timeout.
    window = 1 * 2 + 1
    started = time.monotonic()
    lb.wait(lambda s: s["pools"]["p"]["members"][1]["health"] == "down", timeout=window + 2)
    assert time.monotonic() - started <= window + 1
    time.sleep(0.3)                          # workers poll the shared state every 0.1 s
    assert {lb.get("/x").json()["name"] for _ in range(10)} == {"a"}
    slow_backends(1, ports=[b])              # "a" again, on b's port
    lb.wait(lambda s: s["pools"]["p"]["members"][1]["health"] == "up", timeout=window + 2)
    m = scrape(admin)
    assert m[("lbcore_member_up", (("member", "b"), ("pool", "p")))] == 1
    # Probes ran once per interval for the load balancer, not once per worker.
    probes = m[("lbcore_health_checks_total", (("member", "a"), ("pool", "p"),
                                               ("result", "success")))]
    elapsed = time.monotonic() - started + 2
    assert probes <= elapsed + 3


def test_metrics_count_exactly_what_was_induced_across_workers(running, slow_backends):
    """Each fault is induced once while only worker 1 accepts and once while
    only worker 2 does (the other is SIGSTOPped): the scrape, summed by the
    master, must show exactly two of each."""
    (a,) = slow_backends(1)
    admin, port, dead_port, acl_port = free_port(), free_port(), free_port(), free_port()
    nobody = free_port()
    text = config(admin, port, [a], listener="request_timeout: 1\n    response_timeout: 1")
    text = text.replace("listeners:", "ip_groups:\n  banned: {addresses: [127.0.0.2]}\nlisteners:")
    text += f"""\
  gone:
    health_check: {{enabled: false}}
    members: [{{name: nobody, address: 127.0.0.1, port: {nobody}}}]
"""
    text = text.replace("pools:", f"""\
  - {{name: dead, protocol: HTTP, address: 127.0.0.1, port: {dead_port}, default_pool: gone}}
  - {{name: acl, protocol: HTTP, address: 127.0.0.1, port: {acl_port}, default_pool: p,
     access_control: {{mode: blacklist, ip_group: banned}}}}
pools:""")
    lb = running(text, admin, port)
    pids = [w["pid"] for w in lb.status()["workers"]]

    def induce() -> None:
        with httpx.Client(timeout=10, headers={"Connection": "close"}) as client:
            for _ in range(3):
                assert client.get(f"http://127.0.0.1:{port}/ok").status_code == 200
            assert client.get(f"http://127.0.0.1:{port}/slow/3").status_code == 504
            assert client.get(f"http://127.0.0.1:{dead_port}/").status_code == 502
        with socket.create_connection(("127.0.0.1", port), 5) as s:     # request time-out
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
            s.settimeout(5)
            assert s.recv(100).startswith(b"HTTP/1.1 408")
        with socket.create_connection(("127.0.0.1", acl_port), 5,
                                      source_address=("127.0.0.2", 0)) as s:
            s.settimeout(5)
            with contextlib.suppress(ConnectionResetError):
                assert s.recv(100) == b""          # closed before any byte

    for stopped in pids:
        os.kill(stopped, signal.SIGSTOP)
        try:
            induce()
        finally:
            os.kill(stopped, signal.SIGCONT)
    per_worker = {w["pid"]: w["requests"] for w in lb.status()["workers"]}
    assert per_worker[pids[0]] == per_worker[pids[1]] == 6     # 3 ok, the 504 and the
    # 408 (web), the 502 (dead): a request answered by lbcore itself counts too

    text_metrics = httpx.get(f"http://127.0.0.1:{admin}/metrics").text
    print("\n" + "\n".join(line for line in text_metrics.splitlines() if not line.startswith("#")
                           and line.rstrip().endswith((" 2.0", " 5.0", " 6.0", " 10.0"))))
    m = scrape(admin)
    web, dead, acl = (("listener", "web"),), (("listener", "dead"),), (("listener", "acl"),)
    assert m[("lbcore_responses_total", (("code", "2xx"), ("listener", "web"),
                                         ("pool", "p")))] == 6
    assert m[("lbcore_generated_errors_total", (("code", "504"), ("listener", "web"),
                                                ("reason", "gateway_timeout")))] == 2
    assert m[("lbcore_timeouts_total", (("kind", "response"),) + web)] == 2
    assert m[("lbcore_timeouts_total", (("kind", "request"),) + web)] == 2
    assert m[("lbcore_generated_errors_total", (("code", "408"), ("listener", "web"),
                                                ("reason", "request_timeout")))] == 2
    assert m[("lbcore_generated_errors_total", (("code", "502"), ("listener", "dead"),
                                                ("reason", "bad_gateway")))] == 2
    assert m[("lbcore_access_refused_total", acl)] == 2
    assert m[("lbcore_connections_total", acl)] == 0
    assert m[("lbcore_timeouts_total", (("kind", "connect"),) + dead)] == 0
    assert m[("lbcore_upstream_response_duration_seconds_count", web + (("pool", "p"),))] == 6
    # The 504s count in the request duration (at the 1 s response time-out), not upstream.
    assert m[("lbcore_request_duration_seconds_count", web + (("pool", "p"),))] == 8
    assert m[("lbcore_request_duration_seconds_bucket", (("le", "1.2"),) + web
              + (("pool", "p"),))] - m[("lbcore_request_duration_seconds_bucket",
                                        (("le", "0.5"),) + web + (("pool", "p"),))] == 2
    assert m[("lbcore_workers", (("state", "serving"),))] == 2
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool (Debian package prometheus) not installed")
    check = subprocess.run([promtool, "check", "metrics"], input=text_metrics, text=True,
                           capture_output=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr


def test_workers_leave_when_the_master_is_killed(running, slow_backends):
    """No orphans: a worker whose master died (SIGKILL, OOM killer) drains and
    exits instead of serving a config nobody manages."""
    (a,) = slow_backends(1)
    admin, port = free_port(), free_port()
    lb = running(config(admin, port, [a], lb="drain_timeout: 2"), admin, port)
    pids = [w["pid"] for w in lb.status()["workers"]]
    os.kill(lb.pid, signal.SIGKILL)
    lb.lb.proc.wait(5)
    deadline = time.monotonic() + 10
    alive = pids
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [pid for pid in pids if _alive(pid)]
    assert not alive, f"workers {alive} outlived their master"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"     # a zombie is gone
    except FileNotFoundError:
        return False
