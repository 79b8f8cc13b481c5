"""Prometheus exposition (spec 11). The data plane only adds to C integers in
shared memory (lbcore_ext.counters); this collector reads and sums them when
/metrics is scraped, so no prometheus_client call happens per request."""

from __future__ import annotations

import platform
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

from lbcore import __version__
from lbcore_ext import counters as C

TIMEOUT_KINDS = (("idle", C.TIMEOUT_IDLE), ("request", C.TIMEOUT_REQUEST),
                 ("response", C.TIMEOUT_RESPONSE), ("connect", C.TIMEOUT_CONNECT))
TLS_NAMES = ("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")


def attach_counters(runtime) -> C.Counters:
    """A process alone: one row, the worker cells, then a block per listener."""
    block = C.Counters(C.WORKER_CELLS + C.BLOCK * max(1, len(runtime.listeners)), 1)
    for i, lrt in enumerate(runtime.listeners):
        lrt.counters = block
        lrt.cbase = C.WORKER_CELLS + i * C.BLOCK
    return block


@dataclass(frozen=True)
class Serving:
    """What a scrape describes: the config, the first counter cell of each of
    its listeners, and when it was loaded."""

    cfg: object
    bases: list[int]
    loaded_at: float


class LbcoreCollector:
    """Sums the shared cells of every worker row for the listeners of what
    `serving()` returns (the master's current generation changes on reload);
    member state comes from `members()`, and `extra()` adds the families only
    the master knows (reloads, workers)."""

    def __init__(self, serving: Callable[[], Serving], counters: C.Counters,
                 members: Callable[[], Iterable[tuple[str, str, bool]]],
                 extra: Callable[[], Iterable] | None = None) -> None:
        self.serving = serving
        self.counters = counters
        self.members = members
        self.extra = extra

    def collect(self):
        c = self.counters
        now = self.serving()
        fam = {
            "conn": CounterMetricFamily("lbcore_connections", "Client connections accepted",
                                        labels=["listener"]),
            "active": GaugeMetricFamily("lbcore_connections_active", "Open client connections",
                                        labels=["listener"]),
            "req": CounterMetricFamily("lbcore_requests", "Requests received",
                                       labels=["listener"]),
            "resp": CounterMetricFamily("lbcore_responses", "Responses sent by status class",
                                        labels=["listener", "pool", "code"]),
            "retries": CounterMetricFamily("lbcore_retries", "Retries on another member, by "
                                           "the failure retried", labels=["listener", "pool",
                                                                          "reason"]),
            "budget": CounterMetricFamily("lbcore_retry_budget_exhausted",
                                          "Retries not made because the pool's retry budget "
                                          "was spent", labels=["listener", "pool"]),
            "timeouts": CounterMetricFamily("lbcore_timeouts", "Time-outs by kind",
                                            labels=["listener", "kind"]),
            "errors": CounterMetricFamily("lbcore_generated_errors",
                                          "Error responses lbcore generated itself",
                                          labels=["listener", "code", "reason"]),
            "refused": CounterMetricFamily("lbcore_access_refused",
                                           "Connections refused by access control",
                                           labels=["listener"]),
            "tls": CounterMetricFamily("lbcore_tls_handshakes", "Completed TLS handshakes",
                                       labels=["listener", "version"]),
            "tls_fail": CounterMetricFamily("lbcore_tls_handshake_failures",
                                            "Failed TLS handshakes by reason",
                                            labels=["listener", "reason"]),
            "goaway": CounterMetricFamily("lbcore_http2_goaways",
                                          "HTTP/2 connections ended with a GOAWAY, by reason "
                                          "(abuse budgets send ENHANCE_YOUR_CALM)",
                                          labels=["listener", "reason"]),
            "sni": CounterMetricFamily("lbcore_sni_unmatched",
                                       "Handshakes whose SNI matched no certificate "
                                       "(the default one was served)", labels=["listener"]),
        }
        hist = HistogramMetricFamily("lbcore_request_duration_seconds",
                                     "Time from the complete request header to the end of "
                                     "the response", labels=["listener", "pool"])
        upstream = HistogramMetricFamily("lbcore_upstream_response_duration_seconds",
                                         "Time from sending the request to a member to its "
                                         "response header", labels=["listener", "pool"])
        for lst, b in zip(now.cfg.listeners, now.bases, strict=True):
            name, pool = lst.name, lst.default_pool
            fam["conn"].add_metric([name], c.total(b + C.CONN_TOTAL))
            fam["active"].add_metric([name], c.total(b + C.CONN_ACTIVE))
            fam["req"].add_metric([name], c.total(b + C.REQUESTS))
            for k in range(5):
                fam["resp"].add_metric([name, pool, f"{k + 1}xx"], c.total(b + C.RESP_CLASS + k))
            for k, reason in enumerate(C.RETRY_REASONS):
                fam["retries"].add_metric([name, pool, reason], c.total(b + C.RETRY_REASON + k))
            fam["budget"].add_metric([name, pool], c.total(b + C.RETRY_BUDGET_EXHAUSTED))
            for kind, off in TIMEOUT_KINDS:
                fam["timeouts"].add_metric([name, kind], c.total(b + off))
            for k, (code, reason) in enumerate(C.GENERATED_CODES):
                fam["errors"].add_metric([name, str(code), reason], c.total(b + C.GENERATED + k))
            fam["refused"].add_metric([name], c.total(b + C.REFUSED))
            if lst.protocol == "HTTPS":
                for k, version in enumerate(TLS_NAMES):
                    fam["tls"].add_metric([name, version], c.total(b + C.TLS_VERSIONS + k))
                for k, reason in enumerate(C.TLS_FAIL_REASONS):
                    fam["tls_fail"].add_metric([name, reason], c.total(b + C.TLS_FAIL + k))
                fam["sni"].add_metric([name], c.total(b + C.SNI_UNMATCHED))
                if lst.http2:
                    for k, reason in enumerate(C.H2_GOAWAY_REASONS):
                        fam["goaway"].add_metric([name, reason], c.total(b + C.H2_GOAWAY + k))
            _histogram(hist, c, [name, pool], b + C.HIST)
            _histogram(upstream, c, [name, pool], b + C.UPSTREAM_HIST)
        yield from fam.values()
        yield hist
        yield upstream
        up = GaugeMetricFamily("lbcore_member_up", "1 if the member takes new requests",
                               labels=["pool", "member"])
        for pool_name, member, healthy in self.members():
            up.add_metric([pool_name, member], 1.0 if healthy else 0.0)
        yield up
        expiry = GaugeMetricFamily("lbcore_certificate_expiry_timestamp_seconds",
                                   "notAfter of each configured certificate",
                                   labels=["certificate"])
        for name, cert in now.cfg.certificates.items():
            if cert.info is not None:
                expiry.add_metric([name], cert.info.not_after.timestamp())
        yield expiry
        loaded = GaugeMetricFamily("lbcore_config_loaded_timestamp_seconds",
                                   "When the running configuration was loaded")
        loaded.add_metric([], now.loaded_at)
        yield loaded
        info = GaugeMetricFamily("lbcore_build_info", "Versions",
                                 labels=["version", "python", "openssl"])
        info.add_metric([__version__, platform.python_version(), ssl.OPENSSL_VERSION], 1.0)
        yield info
        if self.extra is not None:
            yield from self.extra()


def _histogram(family: HistogramMetricFamily, c: C.Counters, labels: list[str],
               at: int) -> None:
    """Cells at `at`: per-bucket counts (not cumulative), +Inf, sum in µs."""
    counts = c.totals(at, len(C.BUCKETS) + 1)
    buckets, running = [], 0
    for bound, n in zip([*map(str, C.BUCKETS), "+Inf"], counts, strict=True):
        running += n
        buckets.append((bound, running))
    family.add_metric(labels, buckets, c.total(at + len(C.BUCKETS) + 1) / 1e6)
