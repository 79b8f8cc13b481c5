"""lbcore and nginx side by side at the same moment: `python -m bench.ab`.

`make bench` runs the proxies one after another, and on a shared VM a
proxy's rounds spread by ±25% (the host's load drifts between the runs), so a
gap of a few per cent per TLS connection takes dozens of rounds to see. Here
both proxies run at once, pinned to the same CPU, with the bench's configs
(nginx's listeners moved by +10000) and one load whose every client process
alternates its connections between the two: whatever the machine does
falls on both in the same window. The windows of one run agree to about 1%,
runs minutes apart to about 3%.
Both proxies share the CPU's caches, so the absolute figures are higher than
in `make bench`; the ratio is what this is for (does a change move it?).

  python -m bench.ab [--mode full-ecdsa|full-rsa|tls13-resumed]
                     [--windows 6] [--seconds 5] [--lbcore-tree DIR]

Loopback only; the bench's ports (see harness.py) and those +10000."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from multiprocessing import Process, Value
from pathlib import Path

from bench import harness
from bench.loadclients import client_context, one_request

SHIFT = 10000           # nginx's listeners: the bench's ports + SHIFT
PORTS = {"full-ecdsa": harness.HTTPS_PORT, "full-rsa": harness.RSA_PORT,
         "tls13-resumed": harness.TLS13_PORT}


def cpu_ns(root: int) -> int:
    """CPU time of a process tree, all threads, in ns (schedstat: finer than
    /proc's ticks, which a 5 s window of one proxy would round by 1-2%)."""
    total = 0
    for pid in harness.pids_of(root):
        for task in Path(f"/proc/{pid}/task").glob("*/schedstat"):
            with contextlib.suppress(OSError, IndexError, ValueError):
                total += int(task.read_text().split()[0])
    return total


def _client(stop, counts, ports: tuple[int, int], resume: bool) -> None:
    """One load process: a connection to each proxy in turn, a GET on each."""
    ctx = client_context(tls13=resume)
    sessions: list = [None, None]
    while not stop.value:
        for i, port in enumerate(ports):
            try:
                _, _, _, got = one_request(ctx, port, session=sessions[i])
            except (OSError, ValueError):
                time.sleep(0.01)
                continue
            if resume and got is not None and got.has_ticket:
                sessions[i] = got
            with counts[i].get_lock():
                counts[i].value += 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.split("\n")[0])
    p.add_argument("--mode", choices=sorted(PORTS), default="full-ecdsa")
    p.add_argument("--windows", type=int, default=6)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--procs", type=int, default=4,
                   help=f"load processes (on CPU {harness.LOAD_CPU})")
    p.add_argument("--lbcore-tree", type=Path, default=None,
                   help="run lbcore from another checkout (extension built in place)")
    args = p.parse_args(argv)
    harness.need("nginx", "nginx-light")
    d = Path(tempfile.mkdtemp(prefix="lbcore-ab-"))
    for kind in ("ecdsa", "rsa"):
        harness.make_cert(d, kind)
    cmds = harness.configs(d)
    conf = (d / "nginx.conf").read_text()
    conf = re.sub(r"listen 127\.0\.0\.1:(\d+)", lambda m: f"listen 127.0.0.1:{int(m[1]) + SHIFT}",
                  conf)
    (d / "nginx.conf").write_text(conf)
    port = PORTS[args.mode]
    ports = (port, port + SHIFT)
    resume = args.mode == "tls13-resumed"
    harness.ensure_free(harness.ORIGIN_PORT, "the origin")
    origin = subprocess.Popen(["taskset", "-c", harness.LOAD_CPU, "nginx", "-c",
                               str(d / "origin.conf")])
    procs: list = []
    rows: list[tuple[float, float]] = []
    lb = ng = None
    stop = Value("b", 0)
    counts = (Value("q", 0), Value("q", 0))
    try:
        harness.wait_port(harness.ORIGIN_PORT, proc=origin)
        lb = harness.start_proxy("lbcore", cmds["lbcore"], d, args.lbcore_tree, (port,))
        ng = harness.start_proxy("nginx", cmds["nginx"], d, None, (port + SHIFT,))
        for _ in range(args.procs):
            proc = Process(target=_client, args=(stop, counts, ports, resume))
            proc.start()
            os.sched_setaffinity(proc.pid, {int(harness.LOAD_CPU)})
            procs.append(proc)
        time.sleep(2)                                   # warm-up, not counted
        for w in range(args.windows):
            c0, n0 = (cpu_ns(lb.pid), cpu_ns(ng.pid)), (counts[0].value, counts[1].value)
            time.sleep(args.seconds)
            c1, n1 = (cpu_ns(lb.pid), cpu_ns(ng.pid)), (counts[0].value, counts[1].value)
            us = [(c1[i] - c0[i]) / 1e3 / max(1, n1[i] - n0[i]) for i in (0, 1)]
            rows.append((us[0], us[1]))
            print(f"window {w + 1}/{args.windows}: lbcore {us[0]:.1f} µs, nginx {us[1]:.1f} µs"
                  f" per connection, {us[0] / us[1]:.3f}x ({n1[0] - n0[0]} connections each)",
                  flush=True)
    finally:
        stop.value = 1
        for proc in procs:
            proc.join(30)
        for proxy in (lb, ng):
            if proxy is not None:
                harness.stop_proxy(proxy)
        origin.terminate()
        origin.wait()
    if not rows:
        return 1
    ratios = [a / b for a, b in rows]
    print(f"{args.mode}: lbcore/nginx median {statistics.median(ratios):.3f}x "
          f"(windows {min(ratios):.3f}-{max(ratios):.3f}); µs per connection, medians: "
          f"lbcore {statistics.median(a for a, _ in rows):.1f}, "
          f"nginx {statistics.median(b for _, b in rows):.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
