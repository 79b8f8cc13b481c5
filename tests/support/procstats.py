"""A worker's CPU time and a listener's metric, for the transport tests."""

from __future__ import annotations

import os
import time

from tests.e2e.test_metrics import scrape


def cpu_seconds(pid: int) -> float:
    """User + system CPU the process has used (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def listener_metric(admin: int, name: str, listener: str, **labels) -> float:
    """One series of the admin endpoint's /metrics, 0 when absent."""
    key = (name, tuple(sorted({"listener": listener, **labels}.items())))
    return scrape(admin).get(key, 0.0)


def cpu_spent(pids: list[int], seconds: float) -> list[float]:
    """CPU seconds each process uses over the next `seconds` of wall time."""
    before = [cpu_seconds(p) for p in pids]
    time.sleep(seconds)
    return [cpu_seconds(p) - t for p, t in zip(pids, before, strict=True)]
