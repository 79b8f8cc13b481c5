"""Starting the real `lbcore` command on loopback for end-to-end tests."""

from __future__ import annotations

import functools
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


@functools.cache
def _ephemeral_floor() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A loopback port nothing holds, below the kernel's ephemeral range. A
    port that bind(0) hands out is in that range, and an outgoing connection
    (a test client's, or a proxy's to its backend) may take it as its source
    port before the server under test binds it (the suspected cause of a
    rare start-up failure in CI, not proven: that run kept no stderr)."""
    floor = _ephemeral_floor()
    for _ in range(100):
        port = random.randrange(max(1024, floor - 12000), floor)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 15.0,
              host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"lbcore exited with {proc.returncode}:\n"
                               f"{proc.stderr.read() if proc.stderr else ''}")
        try:
            socket.create_connection((host, port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"port {port} never opened")


class LbProcess:
    """`lbcore <args>` as a child process; stopped with SIGTERM (then SIGKILL)."""

    def __init__(self, args: list[str], env: dict | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lbcore", *args], stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})

    def stop(self) -> tuple[str, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.stdout.read(), self.proc.stderr.read()


def run_config(tmp_path: Path, yaml_text: str, ports: list[int]) -> LbProcess:
    """Write the config, start `lbcore run`, wait until every port accepts."""
    path = tmp_path / "lb.yaml"
    path.write_text(yaml_text)
    lb = LbProcess(["run", "-c", str(path)])
    try:
        for port in ports:
            wait_port(port, lb.proc)
    except Exception:
        lb.stop()
        raise
    return lb
