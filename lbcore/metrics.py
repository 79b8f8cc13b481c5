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
from lbcore.cells import CellMap, ListenerCells, apply_layout, apply_member_cells
from lbcore_ext import counters as C

TIMEOUT_KINDS = (("idle", C.TIMEOUT_IDLE), ("request", C.TIMEOUT_REQUEST),
                 ("response", C.TIMEOUT_RESPONSE), ("connect", C.TIMEOUT_CONNECT))
TLS_NAMES = ("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")


def attach_counters(cfg, runtime) -> tuple[C.Counters, list[ListenerCells]]:
    """A process alone: one row, sized for its config (lbcore.cells)."""
    cells = CellMap.sized_for(cfg, sum(len(p.members) for p in runtime.pools.values()))
    layout = cells.layout(cfg)
    block = C.Counters(cells.row, 1)
    apply_layout(runtime, block, layout)
    apply_member_cells(runtime.pools,
                       lambda pool, m: cells.member_cells(cfg, layout, pool, m.name))
    return block, layout


@dataclass(frozen=True)
class Serving:
    """What a scrape describes: the config, the cells of each of its
    listeners, and when it was loaded."""

    cfg: object
    layout: list[ListenerCells]
    loaded_at: float


class LbcoreCollector:
    """Sums the shared cells of every worker row for the listeners of what
    `serving()` returns (the master's current generation changes on reload);
    member state comes from `members()`, the serving members' counter blocks
    from `member_blocks()` ((listener, pool, member, block)), and `extra()`
    adds the families only the master knows (reloads, workers)."""

    def __init__(self, serving: Callable[[], Serving], counters: C.Counters,
                 members: Callable[[], Iterable[tuple[str, str, bool]]],
                 extra: Callable[[], Iterable] | None = None,
                 member_blocks: Callable[[], Iterable[tuple[str, str, str, int]]] | None = None
                 ) -> None:
        self.serving = serving
        self.counters = counters
        self.members = members
        self.extra = extra
        self.member_blocks = member_blocks

    def collect(self):
        c = self.counters
        now = self.serving()
        fam = {
            "conn": CounterMetricFamily("lbcore_connections", "Client connections accepted",
                                        labels=["listener"]),
            "active": GaugeMetricFamily("lbcore_connections_active", "Open client connections",
                                        labels=["listener"]),
            "opening": GaugeMetricFamily("lbcore_connections_opening",
                                         "Accepted client connections not yet handed to "
                                         "HTTP (TLS handshake in progress)",
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
            "conn_refused": CounterMetricFamily("lbcore_connections_refused",
                                                "Connections closed at accept by the "
                                                "listener's limits", labels=["listener", "reason"]),
            "matches": CounterMetricFamily("lbcore_forwarding_policy_matches",
                                           "Requests a forwarding policy matched",
                                           labels=["listener", "policy", "action"]),
            "tls": CounterMetricFamily("lbcore_tls_handshakes", "Completed TLS handshakes",
                                       labels=["listener", "version"]),
            "tls_fail": CounterMetricFamily("lbcore_tls_handshake_failures",
                                            "Failed TLS handshakes by reason",
                                            labels=["listener", "reason"]),
            "goaway": CounterMetricFamily("lbcore_http2_goaways",
                                          "HTTP/2 connections ended with a GOAWAY, by reason "
                                          "(abuse budgets send ENHANCE_YOUR_CALM)",
                                          labels=["listener", "reason"]),
            "resumed": CounterMetricFamily("lbcore_tls_resumed_handshakes",
                                           "TLS handshakes that resumed a session (ticket)",
                                           labels=["listener"]),
            "backoff": CounterMetricFamily("lbcore_accept_backoffs",
                                           "Times accepting paused for lack of file "
                                           "descriptors (EMFILE/ENFILE)", labels=["listener"]),
            "sni": CounterMetricFamily("lbcore_sni_unmatched",
                                       "Handshakes whose SNI matched no certificate "
                                       "(the default one was served)", labels=["listener"]),
            "rx": CounterMetricFamily("lbcore_received_bytes", "Bytes received from clients "
                                      "(heads as HTTP/1.1 text, bodies, tunnels)",
                                      labels=["listener"]),
            "tx": CounterMetricFamily("lbcore_sent_bytes", "Bytes sent to clients "
                                      "(heads as HTTP/1.1 text, bodies, tunnels)",
                                      labels=["listener"]),
        }
        hist = HistogramMetricFamily("lbcore_request_duration_seconds",
                                     "Time from the complete request header to the end of "
                                     "the response", labels=["listener", "pool"])
        upstream = HistogramMetricFamily("lbcore_upstream_response_duration_seconds",
                                         "Time from sending the request to a member to its "
                                         "response header", labels=["listener", "pool"])
        for lst, cells in zip(now.cfg.listeners, now.layout, strict=True):
            name, b = lst.name, cells.base
            fam["conn"].add_metric([name], c.total(b + C.CONN_TOTAL))
            fam["active"].add_metric([name], c.total(b + C.CONN_ACTIVE))
            fam["opening"].add_metric([name], c.total(b + C.CONN_OPENING))
            fam["req"].add_metric([name], c.total(b + C.REQUESTS))
            for k, reason in enumerate(C.CONN_REFUSED_REASONS):
                fam["conn_refused"].add_metric([name, reason], c.total(b + C.CONN_REFUSED + k))
            for fp in lst.forwarding_policies:
                fam["matches"].add_metric([name, fp.name, fp.action.type],
                                          c.total(cells.policies[fp.name][0]))
            # The pool label is the pool the decision chose; "" for lbcore's
            # own answers (refusals, redirects, fixed responses).
            for pool, r in cells.routes.items():
                for k in range(5):
                    fam["resp"].add_metric([name, pool, f"{k + 1}xx"],
                                           c.total(r + C.RESP_CLASS + k))
                if pool:
                    for k, reason in enumerate(C.RETRY_REASONS):
                        fam["retries"].add_metric([name, pool, reason],
                                                  c.total(r + C.RETRY_REASON + k))
                    fam["budget"].add_metric([name, pool], c.total(r + C.RETRY_BUDGET_EXHAUSTED))
                    _histogram(upstream, c, [name, pool], r + C.UPSTREAM_HIST)
                _histogram(hist, c, [name, pool], r + C.HIST)
            for kind, off in TIMEOUT_KINDS:
                fam["timeouts"].add_metric([name, kind], c.total(b + off))
            for k, (code, reason) in enumerate(C.GENERATED_CODES):
                fam["errors"].add_metric([name, str(code), reason], c.total(b + C.GENERATED + k))
            fam["refused"].add_metric([name], c.total(b + C.REFUSED))
            fam["rx"].add_metric([name], c.total(b + C.BYTES_IN))
            fam["tx"].add_metric([name], c.total(b + C.BYTES_OUT))
            fam["backoff"].add_metric([name], c.total(b + C.ACCEPT_BACKOFF))
            if lst.protocol == "HTTPS":
                for k, version in enumerate(TLS_NAMES):
                    fam["tls"].add_metric([name, version], c.total(b + C.TLS_VERSIONS + k))
                for k, reason in enumerate(C.TLS_FAIL_REASONS):
                    fam["tls_fail"].add_metric([name, reason], c.total(b + C.TLS_FAIL + k))
                fam["sni"].add_metric([name], c.total(b + C.SNI_UNMATCHED))
                fam["resumed"].add_metric([name], c.total(b + C.TLS_RESUMED))
                if lst.http2:
                    for k, reason in enumerate(C.H2_GOAWAY_REASONS):
                        fam["goaway"].add_metric([name, reason], c.total(b + C.H2_GOAWAY + k))
        yield from fam.values()
        yield hist
        yield upstream
        if self.member_blocks is not None:
            yield from member_families(c, self.member_blocks())
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


def member_families(c: C.Counters, blocks: Iterable[tuple[str, str, str, int]]):
    """The per-member series: one block per (listener, pool, member)."""
    labels = ["listener", "pool", "member"]
    fam = {
        "req": CounterMetricFamily("lbcore_member_requests", "Tries sent to the member "
                                   "(a request retried elsewhere counts on each)", labels=labels),
        "resp": CounterMetricFamily("lbcore_member_responses", "The member's responses by "
                                    "status class", labels=[*labels, "code"]),
        "fail": CounterMetricFamily("lbcore_member_failures", "Tries that failed on the member, "
                                    "by kind", labels=[*labels, "kind"]),
        "retries": CounterMetricFamily("lbcore_member_retries", "Retries away from the member "
                                       "after it failed, by the failure retried",
                                       labels=[*labels, "reason"]),
        "active": GaugeMetricFamily("lbcore_member_requests_active", "Requests on the member "
                                    "now", labels=labels),
        "conns": GaugeMetricFamily("lbcore_member_connections_active", "Connections open to "
                                   "the member (busy or idle)", labels=labels),
        "opened": CounterMetricFamily("lbcore_member_connections", "Connections opened to the "
                                      "member", labels=labels),
        "rx": CounterMetricFamily("lbcore_member_received_bytes", "Bytes read from the member",
                                  labels=labels),
        "tx": CounterMetricFamily("lbcore_member_sent_bytes", "Bytes written to the member",
                                  labels=labels),
    }
    hist = HistogramMetricFamily("lbcore_member_response_duration_seconds",
                                 "Time from sending the request to the member to its "
                                 "response header", labels=labels)
    for listener, pool, member, b in blocks:
        lv = [listener, pool, member]
        fam["req"].add_metric(lv, c.total(b + C.M_REQUESTS))
        for k in range(5):
            fam["resp"].add_metric([*lv, f"{k + 1}xx"], c.total(b + C.M_RESP_CLASS + k))
        for k, kind in enumerate(C.MEMBER_FAILURES):
            fam["fail"].add_metric([*lv, kind], c.total(b + C.M_FAIL + k))
        for k, reason in enumerate(C.RETRY_REASONS):
            fam["retries"].add_metric([*lv, reason], c.total(b + C.M_RETRIES + k))
        fam["active"].add_metric(lv, c.total(b + C.M_ACTIVE))
        fam["conns"].add_metric(lv, c.total(b + C.M_CONN_ACTIVE))
        fam["opened"].add_metric(lv, c.total(b + C.M_CONN_TOTAL))
        fam["rx"].add_metric(lv, c.total(b + C.M_BYTES_IN))
        fam["tx"].add_metric(lv, c.total(b + C.M_BYTES_OUT))
        _histogram(hist, c, lv, b + C.M_HIST)
    yield from fam.values()
    yield hist


def _histogram(family: HistogramMetricFamily, c: C.Counters, labels: list[str],
               at: int) -> None:
    """Cells at `at`: per-bucket counts (not cumulative), +Inf, sum in µs."""
    counts = c.totals(at, len(C.BUCKETS) + 1)
    buckets, running = [], 0
    for bound, n in zip([*map(str, C.BUCKETS), "+Inf"], counts, strict=True):
        running += n
        buckets.append((bound, running))
    family.add_metric(labels, buckets, c.total(at + len(C.BUCKETS) + 1) / 1e6)
