"""The shared request-smuggling corpus replayed through a real lbcore process:
every case must end REJECTED or FORWARDED-CLEAN, never DESYNC or HANG."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus"
CASES = ("desync_guardian.jsonl", "smuggler_default.jsonl", "local.jsonl")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited early: {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"port {port} never opened")


@pytest.mark.skipif(not CORPUS.is_dir(), reason=f"corpus not found at {CORPUS}")
@pytest.mark.timeout(300)
def test_corpus_replay(tmp_path):
    origin_port, control_port, lb_port = free_port(), free_port(), free_port()
    config = tmp_path / "lb.yaml"
    config.write_text(f"""\
listeners:
  - name: http
    protocol: HTTP
    address: 127.0.0.1
    port: {lb_port}
    default_pool: origin
    request_timeout: 5
    response_timeout: 5
pools:
  origin:
    health_check: {{enabled: false}}
    members:
      - {{address: 127.0.0.1, port: {origin_port}}}
""")
    procs = []
    try:
        origin = subprocess.Popen(
            [sys.executable, str(CORPUS / "tools" / "echo_origin.py"), "--port", str(origin_port),
             "--control-port", str(control_port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(origin)
        lb = subprocess.Popen([sys.executable, "-m", "lbcore", "run", "-c", str(config)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        procs.append(lb)
        wait_port(origin_port, origin)
        wait_port(lb_port, lb)
        result = subprocess.run(
            [sys.executable, str(CORPUS / "tools" / "replay_corpus.py"), "--port", str(lb_port),
             "--control", f"127.0.0.1:{control_port}", "--timeout", "3",
             *(str(CORPUS / c) for c in CASES)],
            capture_output=True, text=True, timeout=280)
        out = result.stdout + result.stderr
        failures = [line for line in out.splitlines() if line.startswith("FAIL")]
        print(out.splitlines()[-1] if out.splitlines() else "no replay output")
        assert not failures, "\n".join(failures)
        assert " 0 failed" in out.splitlines()[-1], out[-2000:]
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
