"""Prometheus exposition (spec 11). The data plane only adds to C integers in
shared memory (lbcore_ext.counters); this collector reads and sums them when
/metrics is scraped, so no prometheus_client call happens per request."""

from __future__ import annotations

import platform
import ssl
import time

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


def attach_counters(runtime, slots: int = 1) -> C.Counters:
    """One block of cells per listener; the runtime's listeners get their base."""
    block = C.Counters(C.BLOCK * max(1, len(runtime.listeners)), slots)
    for i, lrt in enumerate(runtime.listeners):
        lrt.counters = block
        lrt.cbase = i * C.BLOCK
    return block


class LbcoreCollector:
    def __init__(self, cfg, runtime, counters: C.Counters, loaded_at: float | None = None):
        self.cfg = cfg
        self.runtime = runtime
        self.counters = counters
        self.loaded_at = loaded_at or time.time()

    def collect(self):
        c = self.counters
        fam = {
            "conn": CounterMetricFamily("lbcore_connections", "Client connections accepted",
                                        labels=["listener"]),
            "active": GaugeMetricFamily("lbcore_connections_active", "Open client connections",
                                        labels=["listener"]),
            "req": CounterMetricFamily("lbcore_requests", "Requests received",
                                       labels=["listener"]),
            "resp": CounterMetricFamily("lbcore_responses", "Responses sent by status class",
                                        labels=["listener", "pool", "code"]),
            "retries": CounterMetricFamily("lbcore_retries", "Requests retried on another member",
                                           labels=["listener", "pool"]),
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
        }
        hist = HistogramMetricFamily("lbcore_request_duration_seconds",
                                     "Time from the complete request header to the end of "
                                     "the response", labels=["listener", "pool"])
        for lst, lrt in zip(self.cfg.listeners, self.runtime.listeners, strict=True):
            b, name, pool = lrt.cbase, lst.name, lst.default_pool
            fam["conn"].add_metric([name], c.total(b + C.CONN_TOTAL))
            fam["active"].add_metric([name], c.total(b + C.CONN_ACTIVE))
            fam["req"].add_metric([name], c.total(b + C.REQUESTS))
            for k in range(5):
                fam["resp"].add_metric([name, pool, f"{k + 1}xx"], c.total(b + C.RESP_CLASS + k))
            fam["retries"].add_metric([name, pool], c.total(b + C.RETRIES))
            for kind, off in TIMEOUT_KINDS:
                fam["timeouts"].add_metric([name, kind], c.total(b + off))
            for k, (code, reason) in enumerate(C.GENERATED_CODES):
                fam["errors"].add_metric([name, str(code), reason], c.total(b + C.GENERATED + k))
            fam["refused"].add_metric([name], c.total(b + C.REFUSED))
            for k, version in enumerate(TLS_NAMES):
                fam["tls"].add_metric([name, version], c.total(b + C.TLS_VERSIONS + k))
            counts = c.totals(b + C.HIST, len(C.BUCKETS) + 1)
            buckets, running = [], 0
            for bound, n in zip([*map(str, C.BUCKETS), "+Inf"], counts, strict=True):
                running += n
                buckets.append((bound, running))
            hist.add_metric([name, pool], buckets, c.total(b + C.HIST_SUM_US) / 1e6)
        yield from fam.values()
        yield hist
        up = GaugeMetricFamily("lbcore_member_up", "1 if the member takes new requests",
                               labels=["pool", "member"])
        for pool_name, pool in self.runtime.pools.items():
            for m in pool.members:
                up.add_metric([pool_name, m.name], 1.0 if m.healthy else 0.0)
        yield up
        expiry = GaugeMetricFamily("lbcore_certificate_expiry_timestamp_seconds",
                                   "notAfter of each configured certificate",
                                   labels=["certificate"])
        for name, cert in self.cfg.certificates.items():
            if cert.info is not None:
                expiry.add_metric([name], cert.info.not_after.timestamp())
        yield expiry
        loaded = GaugeMetricFamily("lbcore_config_loaded_timestamp_seconds",
                                   "When the running configuration was loaded")
        loaded.add_metric([], self.loaded_at)
        yield loaded
        info = GaugeMetricFamily("lbcore_build_info", "Versions",
                                 labels=["version", "python", "openssl"])
        info.add_metric([__version__, platform.python_version(), ssl.OPENSSL_VERSION], 1.0)
        yield info
