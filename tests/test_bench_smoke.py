"""Keeps bench/ from rotting without running a benchmark (they never gate CI):
the harness's configs for lbcore, HAProxy and nginx must stay valid."""

from __future__ import annotations

import shutil
import subprocess
import sys

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

