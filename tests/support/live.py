"""The leak check: a worker's live data-plane objects (lbcore/supervisor.py
`live_objects`, in /status) back to zero once its clients are gone, as
uvloop's debug build counts its handles. Idle pooled member connections may
stay; every other member connection must have ended with its exchange."""

from __future__ import annotations

import time

import httpx


def live_objects(admin: int) -> list[dict]:
    status = httpx.get(f"http://127.0.0.1:{admin}/status", timeout=5).json()
    return [w["live"] for w in status["workers"]]


def at_rest(live: dict) -> bool:
    return (live["client_connections"] == 0 and live["exchanges"] == 0
            and live["member_connections"] == live["member_connections_idle"])


def wait_live_zero(admin: int, timeout: float = 5.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        now = live_objects(admin)
        if all(at_rest(w) for w in now):
            return now
        if time.monotonic() > deadline:
            raise AssertionError(f"live objects left behind: {now}")
        time.sleep(0.05)
