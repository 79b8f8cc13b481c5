"""Hooks for tests/e2e/test_policy_hooks.py: what the Phases hooks see of
the forwarding-policy decision, and an override of its pool.

- request_filter answers 299 with "policy=<name> pool=<name>" for /echo...
- upstream_peer sends /override... to pool "pc", whatever the policy chose."""

from __future__ import annotations

from lbcore.phases import Phases


class PolicyPhases(Phases):
    def request_filter(self, req):
        if req.target.startswith(b"/echo"):
            return 299, [("x-policy", str(req.policy)), ("x-pool", req.pool)], b""
        return None

    def upstream_peer(self, req, members):
        if req.target.startswith(b"/override"):
            return "pc"
        return None
