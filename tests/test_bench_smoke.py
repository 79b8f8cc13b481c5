"""Keeps bench/ from rotting without running a benchmark (they never gate CI):
the harness's configs for lbcore, HAProxy and nginx must stay valid."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench import harness


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench")
    for kind in ("ecdsa", "rsa"):
        harness.make_cert(d, kind)
    harness.configs(d)
    return d


def test_lbcore_config_passes_check(bench_dir):
    run = subprocess.run([sys.executable, "-m", "lbcore", "check", "-c",
                          str(bench_dir / "lbcore.yaml")], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stderr
    assert "test is successful" in run.stdout


@pytest.mark.parametrize("tool,args", [
    ("haproxy", ["-c", "-f", "haproxy.cfg"]),
    ("nginx", ["-t", "-c", "nginx.conf"]),
    ("nginx", ["-t", "-c", "origin.conf"]),
])
def test_reference_proxy_configs_are_valid(bench_dir, tool, args):
    exe = shutil.which(tool) or shutil.which(tool, path="/usr/sbin")
    if exe is None:
        pytest.skip(f"{tool} not installed (make bench installs it)")
    args = [str(bench_dir / a) if a.endswith((".cfg", ".conf")) else a for a in args]
    run = subprocess.run([exe, *args], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr



# --- the locust kit: its target, and its naming of certificate failures ---------------

@pytest.fixture(scope="module")
def locust_target():
    """`python -m bench.locust_target` with its defaults: free ports, Python backends."""
    import signal

    proc = subprocess.Popen([sys.executable, "-m", "bench.locust_target"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    info = {}
    try:
        for line in proc.stdout:
            key, _, value = line.strip().partition(": " if ": " in line else "=")
            info[key] = value
            if key == "run":
                break
        assert "host" in info, proc.stderr.read()
        yield info
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_locust_target_serves_the_site_on_free_ports(locust_target):
    import ssl

    import httpx

    host, ca = locust_target["host"], locust_target["export LBCORE_CA"]
    assert not host.endswith((":19543", ":19101", ":19102"))
    with httpx.Client(verify=ssl.create_default_context(cafile=ca), base_url=host) as c:
        first = c.get("/")
        assert first.status_code == 200 and "home" in first.text
        backend = first.headers["x-backend"]
        assert "Secure" in first.headers["set-cookie"]
        for path, status in (("/api/items/7", 200), ("/static/photo-1m.jpg", 200),
                             ("/no-such-page/1", 404)):
            r = c.get(path)
            assert r.status_code == status, path
            assert r.headers["x-backend"] == backend         # the sticky cookie holds
        assert len(c.get("/static/app-256k.js").content) == 256 << 10
        order = c.post("/api/orders", json={"item": 1, "quantity": 2})
        assert order.status_code == 200 and order.json()["ok"] is True


def test_certificate_failure_is_named(locust_target):
    import httpx

    from bench.locust_checks import describe_error

    host = locust_target["host"]
    with pytest.raises(httpx.ConnectError) as exc:
        httpx.get(host + "/")                       # the system's trust store: no test CA
    text = describe_error(exc.value)
    assert text.startswith("certificate verification failed against the system's trust store")
    assert "LBCORE_CA" in text

    # requests (locust's client) wraps it deeper: SSLError(MaxRetryError(reason=SSLError(...)))
    class MaxRetryError(Exception):
        def __init__(self, reason):
            super().__init__("max retries")
            self.reason = reason

    cause = exc.value.__cause__ or exc.value.__context__
    wrapped = OSError(MaxRetryError(OSError(cause)))
    assert describe_error(wrapped, "/tmp/old/ca.crt").startswith(
        "certificate verification failed against the CA in /tmp/old/ca.crt")
    assert describe_error(ConnectionRefusedError(111, "refused")).startswith("no response")


def test_locust_nginx_origin_config_is_valid(tmp_path):
    from bench.locust_target import nginx_binary, write_nginx

    exe = nginx_binary()
    if exe is None:
        pytest.skip("nginx not installed (make locust-target ORIGIN=nginx installs it)")
    conf = write_nginx(tmp_path, [18101, 18102])
    run = subprocess.run([exe, "-t", "-c", str(conf)], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr


def test_chart_is_drawn_from_a_results_file(tmp_path):
    pytest.importorskip("matplotlib", reason="the bench extra (make bench installs it)")
    src = Path(harness.__file__).parent / "results" / "2026-12-01-0834.json"
    shutil.copy(src, tmp_path / "run.json")
    out = subprocess.run([sys.executable, "-m", "bench", "--chart", str(tmp_path / "run.json")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "run.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pool_prints_medians_and_the_quiet_cpu_fit():
    """--pool over two committed runs: the medians table, then each handshake
    figure fitted to a quiet CPU 0 (the runs' rounds spread over 1-24%)."""
    res = Path(harness.__file__).parent / "results"
    out = subprocess.run([sys.executable, "-m", "bench", "--pool",
                          str(res / "2026-12-01-2211.json"), str(res / "2026-12-01-2247.json")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    medians, _, fitted = out.stdout.partition("Fitted to a quiet CPU 0")
    assert "| https_full_handshake_ecdsa | µs/handshake |" in medians
    rows = [r for r in fitted.splitlines() if r.startswith("| https_full_handshake_ecdsa |")]
    assert len(rows) == 1 and rows[0].rstrip(" |").endswith("x"), fitted
