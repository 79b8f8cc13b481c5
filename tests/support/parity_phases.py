"""Hooks for tests/e2e/test_parity.py, loaded by the lbcore workers with
`--phases tests.support.parity_phases:ParityPhases`.

- request_filter answers 451 for any target under /hook, without a backend.
- fail_to_proxy replaces lbcore's own 502/503/504 on the listener named "dead"
  (whose only member is a closed port) with a 503 page of its own. It uses the
  contract of the protocol-neutral request core: it returns
  (status, headers, body) like request_filter, not raw HTTP/1.1 bytes."""

from __future__ import annotations

from lbcore.phases import Phases

FILTER_STATUS = 451
FILTER_HEADER = ("x-hook", "request-filter")
FILTER_BODY = b"blocked by the request_filter hook\n"

FAIL_STATUS = 503
FAIL_HEADER = ("x-hook", "fail-to-proxy")
FAIL_BODY = b"the fail_to_proxy hook's own page\n"
FAIL_LISTENER = "dead"


def _text(v) -> str:
    return v.decode("latin-1") if isinstance(v, (bytes, bytearray)) else str(v or "")


class ParityPhases(Phases):
    def request_filter(self, req):
        if _text(getattr(req, "target", "")).startswith("/hook"):
            return FILTER_STATUS, [FILTER_HEADER], FILTER_BODY
        return None

    def fail_to_proxy(self, req, status):
        if _text(getattr(req, "listener", "")) == FAIL_LISTENER and status in (502, 503, 504):
            return FAIL_STATUS, [FAIL_HEADER], FAIL_BODY
        return None
