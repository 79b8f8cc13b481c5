"""`lbcore check | run | version | demo` as a user runs them."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx

from tests.support.lbproc import LbProcess, free_port, wait_port


def lbcore(*args, timeout=30):
    return subprocess.run([sys.executable, "-m", "lbcore", *args], capture_output=True,
                          text=True, timeout=timeout)


GOOD = """\
listeners:
  - {name: web, protocol: HTTP, address: 127.0.0.1, port: PORT, default_pool: p}
pools:
  p:
    members: [{address: 127.0.0.1, port: 9}]
"""


def test_check_good_prints_summary(tmp_path):
    f = tmp_path / "lb.yaml"
    f.write_text(GOOD.replace("PORT", "18081"))
    out = lbcore("check", "-c", str(f))
    assert out.returncode == 0, out.stderr
    assert "listener web: HTTP 127.0.0.1:18081 -> pool p" in out.stdout
    assert "test is successful" in out.stdout


def test_check_bad_reports_file_line_path(tmp_path):
    f = tmp_path / "lb.yaml"
    f.write_text(GOOD.replace("PORT", "18081").replace("default_pool: p}",
                                                        "default_pool: p, idle_timeout: 5000}"))
    out = lbcore("check", "-c", str(f))
    assert out.returncode == 1
    assert f"{f}:2: listeners[0].idle_timeout: 5000 is outside 0-4000" in out.stderr


def test_run_bad_config_exits_and_never_listens(tmp_path):
    port = free_port()
    f = tmp_path / "lb.yaml"
    f.write_text(GOOD.replace("PORT", str(port)).replace("default_pool: p}",
                                                         "default_pool: nope}"))
    t0 = time.monotonic()
    out = lbcore("run", "-c", str(f))
    assert out.returncode == 1 and time.monotonic() - t0 < 10
    assert "no pool named 'nope'" in out.stderr
    with __import__("socket").socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0


def test_version():
    out = lbcore("version", "-v")
    assert out.returncode == 0 and out.stdout.startswith("lbcore ")
    assert "uvloop" in out.stdout and "openssl" in out.stdout


def test_demo_answers_from_both_backends(tmp_path):
    https_port, http_port = free_port(), free_port()
    demo = LbProcess(["demo", "--https-port", str(https_port), "--http-port", str(http_port)],
                     env={"LBCORE_STATE_DIR": str(tmp_path)})
    try:
        wait_port(https_port, demo.proc)
        names = Counter(httpx.get(f"https://localhost:{https_port}/", verify=False).text
                        for _ in range(4))
        assert names == {"hello from demo-a\n": 2, "hello from demo-b\n": 2}
        assert httpx.get(f"http://127.0.0.1:{http_port}/").status_code == 200
        assert (tmp_path / "demo.crt").exists() and (tmp_path / "demo.key").stat().st_mode \
            & 0o077 == 0
    finally:
        demo.stop()


# --- the conveniences of issue 15: --version, help, policies, --dump, pidfile ----------

def test_version_flag():
    from lbcore import __version__

    out = lbcore("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"lbcore {__version__}"


def test_every_option_has_help_and_worker_is_hidden():
    import argparse

    from lbcore.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = []
    for name, cmd in [("lbcore", parser), *sub.choices.items()]:
        if name == "_worker":
            continue
        for action in cmd._actions:
            if not action.help or action.help == argparse.SUPPRESS:
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert not missing, missing
    top = lbcore("--help")
    assert top.returncode == 0 and "_worker" not in top.stdout
    for name in ("run", "check", "reload", "stop", "policies", "demo", "version"):
        assert f"    {name} " in top.stdout, name


def test_policies_list_and_show():
    from lbcore.tls.policies import PREDEFINED

    out = lbcore("policies")
    assert out.returncode == 0, out.stderr
    for name in PREDEFINED:
        assert name in out.stdout
    assert "tls-1-2-fs-with-1-3 (default)" in out.stdout
    one = lbcore("policies", "tls-1-2-strict-no-cbc")
    assert one.returncode == 0, one.stderr
    listed = [line.split(". ", 1)[1] for line in one.stdout.splitlines() if ". " in line]
    assert listed == list(PREDEFINED["tls-1-2-strict-no-cbc"].ciphers)
    assert "TLS versions: 1.2" in one.stdout
    bad = lbcore("policies", "tls-9")
    assert bad.returncode == 1 and "no security policy named 'tls-9'" in bad.stderr


def test_policies_shows_a_configs_custom_policy(tmp_path):
    f = tmp_path / "lb.yaml"
    f.write_text("security_policies:\n  mine: {protocols: [TLSv1.3], "
                 "ciphers: [TLS_AES_256_GCM_SHA384]}\n" + GOOD.replace("PORT", "18081"))
    out = lbcore("policies", "-c", str(f), "mine")
    assert out.returncode == 0, out.stderr
    assert "mine: custom" in out.stdout and "1. TLS_AES_256_GCM_SHA384" in out.stdout


def test_check_dump_prints_every_default_and_passes_check(tmp_path):
    import yaml

    f = tmp_path / "lb.yaml"
    f.write_text(GOOD.replace("PORT", "18081"))
    out = lbcore("check", "--dump", "-c", str(f))
    assert out.returncode == 0, out.stderr
    assert "test is successful" in out.stderr        # stdout is only the config
    dumped = yaml.safe_load(out.stdout)
    lst = dumped["listeners"][0]
    assert lst["security_policy"] == "tls-1-2-fs-with-1-3" and lst["idle_timeout"] == 60
    assert lst["limits"]["max_body"] == 10737418240
    assert dumped["pools"]["p"]["health_check"] == {
        "enabled": True, "protocol": "HTTP", "port": None, "domain": None, "path": "/",
        "method": "GET", "interval": 5, "timeout": 3, "healthy_threshold": 3,
        "unhealthy_threshold": 3, "expected_codes": "200"}
    assert dumped["pools"]["p"]["members"][0]["name"] == "127.0.0.1:9"
    again = tmp_path / "effective.yaml"
    again.write_text(out.stdout)
    second = lbcore("check", "--dump", "-c", str(again))
    assert second.returncode == 0, second.stderr
    assert yaml.safe_load(second.stdout) == dumped


def _wait_file(path: Path, proc, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, f"{path} never written"
        time.sleep(0.05)


def test_pidfile_reload_and_stop(tmp_path):
    port, admin = free_port(), free_port()
    f = tmp_path / "lb.yaml"
    text = GOOD.replace("PORT", str(port)).replace(
        "listeners:", f"load_balancer: {{workers: 1, admin: {{port: {admin}}}}}\nlisteners:")
    f.write_text(text)
    pid_path = tmp_path / "run" / "lbcore.pid"
    pid_path.parent.mkdir()
    lb = LbProcess(["run", "-c", str(f), "--pidfile", str(pid_path)])
    try:
        _wait_file(pid_path, lb.proc)
        assert int(pid_path.read_text()) == lb.proc.pid

        def status():
            return httpx.get(f"http://127.0.0.1:{admin}/status", timeout=5).json()

        # A second master on the same pidfile is refused before it binds anything.
        twice = lbcore("run", "-c", str(f), "--pidfile", str(pid_path))
        assert twice.returncode == 1 and "already running" in twice.stderr

        # reload -c with a bad file signals nothing.
        bad = tmp_path / "bad.yaml"
        bad.write_text(text.replace("default_pool: p}", "default_pool: nope}"))
        refused = lbcore("reload", "-p", str(pid_path), "-c", str(bad))
        assert refused.returncode == 1 and "no pool named 'nope'" in refused.stderr
        assert status()["config"]["generation"] == 1

        out = lbcore("reload", "-p", str(pid_path), "-c", str(f))
        assert out.returncode == 0, out.stderr
        assert f"sent SIGHUP to the master (pid {lb.proc.pid})" in out.stderr
        deadline = time.monotonic() + 20
        while status()["config"]["reloads"].get("success") != 1:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert status()["config"]["generation"] == 2

        out = lbcore("stop", "-p", str(pid_path), timeout=60)
        assert out.returncode == 0, out.stderr
        assert "has exited" in out.stderr
        assert lb.proc.wait(5) == 0
        assert not pid_path.exists()
    finally:
        lb.stop()
    stale = lbcore("stop", "-p", str(pid_path))
    assert stale.returncode == 1 and "no such pidfile" in stale.stderr
    pid_path.write_text(f"{lb.proc.pid}\n")          # its process has exited
    stale = lbcore("reload", "-p", str(pid_path))
    assert stale.returncode == 1 and "stale" in stale.stderr


def test_demo_ports_are_options(tmp_path):
    https_port, http_port, admin = free_port(), free_port(), free_port()
    demo = LbProcess(["demo", "--https-port", str(https_port), "--http-port", str(http_port),
                      "--admin-port", str(admin)], env={"LBCORE_STATE_DIR": str(tmp_path)})
    try:
        wait_port(https_port, demo.proc)
        wait_port(admin, demo.proc)
        assert httpx.get(f"http://127.0.0.1:{admin}/healthz", timeout=5).status_code == 200
        import ssl

        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        import socket

        with socket.create_connection(("127.0.0.1", https_port), 5) as raw, \
                ctx.wrap_socket(raw) as s:
            assert s.version() == "TLSv1.3"          # the default policy offers it
    finally:
        _, err = demo.stop()
    assert "tls-1-2-fs-with-1-3" in err
