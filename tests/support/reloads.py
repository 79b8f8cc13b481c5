"""Reloads under load: what the zero-failure reload tests of both transports share."""

from __future__ import annotations

import threading
import time


def reload_under_load(lb, text: str, threads: list[threading.Thread], stop: threading.Event,
                      reloads: int = 10, workers: int = 2) -> None:
    """Start the client threads, make `reloads` SIGHUP reloads 0.3 s apart
    (each waited for until every worker of the new generation is ready),
    give the clients 1.5 s more, then stop and join them."""
    for t in threads:
        t.start()
    try:
        for gen in range(2, 2 + reloads):
            time.sleep(0.3)
            lb.reload(text + f"# reload {gen}\n")
            lb.wait(lambda s, gen=gen: s["config"]["generation"] == gen
                    and len([w for w in s["workers"] if w["generation"] == gen
                             and w["state"] == "ready"]) == workers, timeout=30)
        time.sleep(1.5)
    finally:
        stop.set()
        for t in threads:
            t.join(20)
