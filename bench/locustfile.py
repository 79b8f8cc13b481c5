"""A realistic load for lbcore (or anything in front of the same site): each
simulated user browses over one keep-alive connection with a cookie jar, so
the load balancer's sticky cookie (lb_cookie, `lbcore_sticky` by default) is
sent back and every response must come from the backend the user started on
(when the backends name themselves in X-Backend). The mix, by weight:

    GET  /                          10   small HTML
    GET  /api/items/<id>             8   small JSON, ids spread over 10,000 names
    POST /api/orders                 2   small JSON body
    GET  /static/1k.txt ... 1m.jpg  12   1 KiB, 16 KiB, 256 KiB, 1 MiB (6:3:2:1)
    GET  /  Connection: close        2   the next request opens a new connection
                                         (a full TLS handshake: nothing resumes)
    GET  /no-such-page/<n>           1   must be 404 (a 404 is a success here)

Certificates are verified, against the CA file in LBCORE_CA (or --lbcore-ca),
else against the system's trust store; verification is never turned off, and
a request that fails it is reported as "certificate verification failed",
naming the CA it was checked against (bench/locust_checks.py).
`python -m bench.locust_target` serves this site behind lbcore with a test CA,
on free ports, with Python backends (or nginx, --origin nginx).

Headless, bounded, with CSV and HTML reports:

    LBCORE_CA=.../ca.crt .venv/bin/locust -f bench/locustfile.py --headless \\
        -H https://localhost:PORT -u 50 -r 10 -t 60s \\
        --csv bench/results/locust --html bench/results/locust.html

The gate, checked when locust quits (standalone or on the master): the exit
code is 1 if the failure ratio is over LOCUST_MAX_FAIL_RATIO (--max-fail-ratio,
default 0.01), if the 99th percentile response time is over LOCUST_MAX_P99_MS
(--max-p99-ms, default 500 ms), or if nothing was requested; else locust's own.
"""

from __future__ import annotations

import logging
import random
import sys
from pathlib import Path

from locust import HttpUser, between, events, task
from locust.runners import WorkerRunner

# locust puts bench/ on sys.path, not the repository: bench.locust_checks needs it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.locust_checks import describe_error  # noqa: E402

STATIC = (("/static/1k.txt", 6), ("/static/app-16k.css", 3), ("/static/app-256k.js", 2),
          ("/static/photo-1m.jpg", 1))


@events.init_command_line_parser.add_listener
def _options(parser) -> None:
    parser.add_argument("--lbcore-ca", env_var="LBCORE_CA", default="",
                        help="CA file the proxy's certificate must verify against "
                             "(default: the system's trust store)")
    parser.add_argument("--max-fail-ratio", env_var="LOCUST_MAX_FAIL_RATIO", type=float,
                        default=0.01, help="gate: highest failure ratio that passes")
    parser.add_argument("--max-p99-ms", env_var="LOCUST_MAX_P99_MS", type=float, default=500,
                        help="gate: highest 99th percentile response time (ms) that passes")
    parser.add_argument("--sticky-cookie", env_var="LOCUST_STICKY_COOKIE",
                        default="lbcore_sticky", help="the load balancer's sticky cookie")


class Visitor(HttpUser):
    wait_time = between(0.1, 1.0)

    def on_start(self) -> None:
        opts = self.environment.parsed_options
        self.ca = opts.lbcore_ca if opts and opts.lbcore_ca else ""
        self.client.verify = self.ca or True
        self.sticky_cookie = opts.sticky_cookie if opts else "lbcore_sticky"
        self.backend = None
        with self.client.get("/", name="/ (first visit)", catch_response=True) as r:
            self._check(r)
            self.backend = r.headers.get("X-Backend")

    def _check(self, r, expect: int = 200) -> None:
        """Status as expected, and still on the user's backend once the sticky
        cookie is set."""
        if r.status_code == 0:
            # No HTTP answer at all: name the cause (a certificate that does not
            # verify, most likely) instead of "status 0".
            r.failure(describe_error(getattr(r, "error", None), self.ca))
            return
        if r.status_code != expect:
            r.failure(f"status {r.status_code}, expected {expect}")
            return
        served_by = r.headers.get("X-Backend")
        if (self.backend and served_by and served_by != self.backend
                and self.client.cookies.get(self.sticky_cookie)):
            r.failure(f"sticky session broken: {self.backend} then {served_by}")
            return
        r.success()

    def _get(self, path: str, name: str | None = None, expect: int = 200, **kw) -> None:
        with self.client.get(path, name=name, catch_response=True, **kw) as r:
            self._check(r, expect)

    @task(10)
    def home(self) -> None:
        self._get("/")

    @task(8)
    def api_item(self) -> None:
        self._get(f"/api/items/{random.randint(1, 10_000)}", name="/api/items/[id]")

    @task(2)
    def api_order(self) -> None:
        body = {"item": random.randint(1, 10_000), "quantity": random.randint(1, 5)}
        with self.client.post("/api/orders", json=body, catch_response=True) as r:
            self._check(r)

    @task(12)
    def static(self) -> None:
        path = random.choices([p for p, _ in STATIC], weights=[w for _, w in STATIC])[0]
        self._get(path)

    @task(2)
    def new_connection(self) -> None:
        # The server closes after this response; the next request reconnects.
        self._get("/", name="/ (Connection: close)", headers={"Connection": "close"})

    @task(1)
    def not_found(self) -> None:
        self._get(f"/no-such-page/{random.randint(1, 1_000_000)}", name="/no-such-page/[n]",
                  expect=404)


@events.quitting.add_listener
def _gate(environment, **_kw) -> None:
    if isinstance(environment.runner, WorkerRunner):
        return                       # the master holds the totals and decides
    opts = environment.parsed_options
    max_fail = opts.max_fail_ratio if opts else 0.01
    max_p99 = opts.max_p99_ms if opts else 500.0
    total = environment.stats.total
    p99 = total.get_response_time_percentile(0.99) or 0
    log = logging.getLogger("gate")
    if total.num_requests == 0:
        log.error("gate: FAIL, no request was made")
        environment.process_exit_code = 1
    elif total.fail_ratio > max_fail:
        log.error("gate: FAIL, failure ratio %.4f > %.4f", total.fail_ratio, max_fail)
        environment.process_exit_code = 1
    elif p99 > max_p99:
        log.error("gate: FAIL, p99 %.0f ms > %.0f ms", p99, max_p99)
        environment.process_exit_code = 1
    else:
        log.info("gate: pass, %d requests, failure ratio %.4f <= %.4f, p99 %.0f ms <= %.0f ms",
                 total.num_requests, total.fail_ratio, max_fail, p99, max_p99)
