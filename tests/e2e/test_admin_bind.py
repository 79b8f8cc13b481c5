"""An admin endpoint that can't bind stops the start (exit 1, a clear
message) before any worker starts: serving without /metrics, /healthz and
/readyz is a silent failure in production."""

from __future__ import annotations

import socket
import subprocess
import sys

from tests.support.lbproc import free_port


def test_admin_port_taken_fails_the_start(tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    admin = taken.getsockname()[1]
    try:
        (tmp_path / "lb.yaml").write_text(f"""\
load_balancer: {{workers: 1, admin: {{port: {admin}}}}}
listeners:
  - {{name: web, protocol: HTTP, address: 127.0.0.1, port: {free_port()}, default_pool: p}}
pools:
  p: {{members: [{{address: 127.0.0.1, port: {free_port()}}}]}}
""")
        proc = subprocess.run([sys.executable, "-m", "lbcore", "run", "-c",
                               str(tmp_path / "lb.yaml")], capture_output=True, text=True,
                              timeout=30)
    finally:
        taken.close()
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert f"admin endpoint 127.0.0.1:{admin} cannot listen" in proc.stderr
