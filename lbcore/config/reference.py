"""docs/configuration.md and docs/security-policies.md, generated.

The types, ranges and defaults come from the pydantic model (model.py) by
walking it, so the reference can't drift from what `lbcore check` enforces;
only the one-line meanings live here, in MEANINGS, keyed by dotted path:

    load_balancer.admin.port             a nested mapping
    listeners[].limits.max_body          an item of a list
    pools.<name>.health_check.interval   a value of a mapping keyed by name
    listeners[].forwarding_policies[].action(redirect).status
                                         one variant of a union told apart by `type`

A key of the model with no meaning, or a meaning with no key, is an error
(tests/test_docs.py), as is a document that differs from what this module
writes. Regenerate after changing the model:

    make docs      # python -m lbcore.config.reference --write docs
"""

from __future__ import annotations

import argparse
import inspect
import sys
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union

import annotated_types
from pydantic import AfterValidator, BaseModel

from lbcore.config.model import Config

MEANINGS: dict[str, str] = {
    # ---- top level
    "load_balancer": "process-wide settings: workers, drain, admin endpoint, access log",
    "certificates": "PEM certificates by name, referred to by listeners",
    "ip_groups": "named lists of addresses and CIDR blocks, for access control",
    "security_policies": "custom TLS policies by name; the predefined ones need no entry "
                         "(see [security-policies.md](security-policies.md))",
    "listeners": "the frontends: one port and protocol each; at least one",
    "pools": "backend server groups by name; at least one",
    # ---- load_balancer
    "load_balancer.name": "a name for this load balancer, for your own reference",
    "load_balancer.id": "the load balancer's id, sent as X-Forwarded-ELB-ID when a listener's "
                        "insert_headers.x_forwarded_elb_id is on",
    "load_balancer.eip": "the public address clients reach, sent as X-Forwarded-ELB-IP by "
                         "listeners with transfer_eip",
    "load_balancer.workers": "worker processes; `auto`: one per core, capped by the cgroup "
                             "CPU quota. A change takes a restart, not a reload",
    "load_balancer.drain_timeout": "seconds a stopping or replaced worker may take to finish "
                                   "its requests in flight before it is killed",
    "load_balancer.heartbeat_timeout": "seconds without a heartbeat after which the master "
                                       "kills and replaces a hung worker",
    "load_balancer.session_ticket_rotation": "seconds between TLS session-ticket key "
                                             "rotations; the previous key still resumes "
                                             "sessions for one more period",
    "load_balancer.admin": "the admin HTTP endpoint: /metrics, /healthz, /readyz, /status",
    "load_balancer.admin.address": "address the admin endpoint listens on; it has no "
                                   "authentication, so keep it off public networks",
    "load_balancer.admin.port": "admin endpoint port; may not be a listener's port",
    "load_balancer.access_log": "one line per request",
    "load_balancer.access_log.path": "`-`: standard output; `off`: no access log; else a "
                                     "file, opened for appending and reopened on SIGUSR1",
    "load_balancer.access_log.format": "`json`: JSON lines; `elb`: ELB's `elb_01` line (33 "
                                       "fields); `combined`: nginx's combined; every field in "
                                       "[access-log.md](access-log.md)",
    # ---- certificates
    "certificates.<name>.type": "`server`: a certificate chain and key a listener serves; "
                                "`ca`: a bundle that verifies client certificates (mutual TLS)",
    "certificates.<name>.certificate": "PEM file; for `server`, the chain with the leaf "
                                       "first. Checked at load: parses, matches the key, "
                                       "domains and expiry reported (expired: a warning)",
    "certificates.<name>.private_key": "PEM file with the unencrypted private key; required "
                                       "for `server`",
    "certificates.<name>.crl": "`ca` only: a PEM certificate revocation list; a revoked "
                               "client certificate fails the handshake",
    # ---- ip_groups
    "ip_groups.<name>.description": "free text",
    "ip_groups.<name>.addresses": "IPv4/IPv6 addresses and CIDR blocks, normalised and "
                                  "deduplicated; above 300 entries a warning",
    # ---- security_policies
    "security_policies.<name>.description": "free text",
    "security_policies.<name>.protocols": "TLS versions the policy allows",
    "security_policies.<name>.ciphers": "OpenSSL suite names in preference order, TLS 1.3 "
                                        "(`TLS_...`) and older mixed; each protocol needs one "
                                        "suite it can use; allowed suites in "
                                        "[security-policies.md](security-policies.md)",
    # ---- listeners[]
    "listeners[].name": "unique; names the listener in metrics, logs and /status",
    "listeners[].protocol": "`HTTPS`: TLS terminated here; `HTTP`: plain (redirects, "
                            "internal traffic). Members always get plain HTTP/1.1",
    "listeners[].port": "port to listen on",
    "listeners[].address": "address to bind; null: every IPv4 and IPv6 address",
    "listeners[].description": "free text, shown in /status",
    "listeners[].ssl_authentication": "`mutual`: a client certificate issued by "
                                      "ca_certificate is required, else the handshake fails",
    "listeners[].server_certificate": "name of the `server` certificate served by default; "
                                      "required for HTTPS",
    "listeners[].ca_certificate": "name of the `ca` certificate that verifies clients; "
                                  "required for mutual",
    "listeners[].sni": "choosing the certificate by the name the client asks for",
    "listeners[].access_control": "who may connect, checked at accept before any TLS byte",
    "listeners[].transfer_client_ip": "pass the client address to members (X-Forwarded-For, "
                                      "X-Real-IP); false: neither is added",
    "listeners[].security_policy": "TLS versions and suites: a predefined policy or a key of "
                                   "security_policies (`lbcore policies` lists them)",
    "listeners[].http2": "offer HTTP/2 to clients (ALPN `h2`, HTTPS only; members stay "
                         "HTTP/1.1)",
    "listeners[].transfer_eip": "send X-Forwarded-ELB-IP: load_balancer.eip to members",
    "listeners[].idle_timeout": "seconds a keep-alive connection may wait for its next "
                                "request; 0: no keep-alive (Connection: close)",
    "listeners[].request_timeout": "seconds for the whole request head to arrive (else 408), "
                                   "and the longest gap between two body reads",
    "listeners[].response_timeout": "seconds to wait for a member's response head, or "
                                    "between two reads of it; then another member (idempotent "
                                    "requests), then 504",
    "listeners[].connect_timeout": "seconds to connect to a member; then another member, "
                                   "then 504",
    "listeners[].insert_headers": "headers added toward members (client copies of them are "
                                  "removed or overwritten)",
    "listeners[].limits": "size and rate limits on what clients send",
    "listeners[].default_pool": "pool for requests no forwarding policy matched",
    "listeners[].forwarding_policies": "ordered rules that forward, redirect or answer; "
                                       "at most 100",
    # ---- listeners[].sni
    "listeners[].sni.enabled": "choose the certificate by SNI; no SNI or no match: "
                               "server_certificate",
    "listeners[].sni.match": "`wildcard`: exact name, then `*.` one label deep; "
                             "`longest_suffix`: the most specific wildcard wins, any depth",
    "listeners[].sni.certificates": "names of `server` certificates to choose from (at most "
                                    "200 domains; a domain in one certificate per key type, "
                                    "so ECDSA and RSA may share it)",
    # ---- listeners[].access_control
    "listeners[].access_control.mode": "`all`: everyone; `whitelist`: only ip_group (empty: "
                                       "nobody); `blacklist`: all but ip_group. Refused "
                                       "connections are closed and counted",
    "listeners[].access_control.ip_group": "name of an ip group; required unless mode is "
                                           "`all`",
    # ---- listeners[].insert_headers
    "listeners[].insert_headers.x_forwarded_for": "`append`: the client's value plus the "
                                                  "peer; `remove`: the peer only; "
                                                  "`preserve`: the client's value untouched",
    "listeners[].insert_headers.x_forwarded_host": "X-Forwarded-Host: the client's Host; "
                                                   "false: the client's header passes as is",
    "listeners[].insert_headers.x_forwarded_proto": "X-Forwarded-Proto: `https` or `http`",
    "listeners[].insert_headers.x_real_ip": "X-Real-IP: the peer address (with "
                                            "transfer_client_ip)",
    "listeners[].insert_headers.x_forwarded_port": "X-Forwarded-Port: the listener's port",
    "listeners[].insert_headers.x_forwarded_for_port": "X-Forwarded-For-Port: the client's "
                                                       "source port",
    "listeners[].insert_headers.x_forwarded_elb_id": "X-Forwarded-ELB-ID: load_balancer.id",
    "listeners[].insert_headers.x_forwarded_tls_protocol": "X-Forwarded-TLS-Protocol: the "
                                                           "negotiated TLS version",
    "listeners[].insert_headers.x_forwarded_tls_cipher": "X-Forwarded-TLS-Cipher: the "
                                                         "negotiated suite",
    "listeners[].insert_headers.x_forwarded_tls_certificate_id": "X-Forwarded-TLS-"
                                                                 "Certificate-ID: the name "
                                                                 "of the certificate served",
    "listeners[].insert_headers.x_forwarded_tls_sni": "X-Forwarded-Tls-Sni: the name the "
                                                      "client sent",
    "listeners[].insert_headers.x_forwarded_alpn_protocol": "X-Forwarded-Alpn-Protocol: the "
                                                            "ALPN protocol chosen",
    "listeners[].insert_headers.x_forwarded_clientcert": "mutual TLS: X-Forwarded-Clientcert-"
                                                         "<field> for each field listed "
                                                         "(DNs, SHA-256 fingerprint, serial, "
                                                         "notAfter, verify result, URL-encoded "
                                                         "PEM)",
    "listeners[].insert_headers.aliases": "another name for any of the headers above, by "
                                          "key (1-40 characters `[A-Za-z0-9_-]`), e.g. "
                                          "`{x_forwarded_tls_cipher: x-tls-cipher}`",
    # ---- listeners[].limits
    "listeners[].limits.max_request_line": "bytes of the request line; over it: 414",
    "listeners[].limits.max_header_size": "bytes of one header field; over it: 431",
    "listeners[].limits.max_header_block": "bytes of the whole request head (431), and of a "
                                           "member's response head unless the pool sets "
                                           "max_response_header (502)",
    "listeners[].limits.max_headers": "header fields per request; over it: 431",
    "listeners[].limits.max_body": "bytes of a request body; over it: 413",
    "listeners[].limits.max_connections": "open client connections per listener; 0: no limit",
    "listeners[].limits.max_new_connections_per_second": "new client connections per second "
                                                         "per listener; 0: no limit",
    # ---- listeners[].forwarding_policies[]
    "listeners[].forwarding_policies[].name": "names the policy in logs and errors",
    "listeners[].forwarding_policies[].priority": "order of evaluation, smaller first; "
                                                  "unique per listener; the first match wins",
    "listeners[].forwarding_policies[].rules": "conditions, all of which must match (rules "
                                               "of different types AND, values of one rule "
                                               "OR); none: matches every request",
    "listeners[].forwarding_policies[].action": "what a matching request gets: forward, "
                                                "redirect or fixed_response, chosen by `type`",
    "listeners[].forwarding_policies[].qps_limit": "requests per second the policy admits "
                                                   "across all workers (over it: 503 with "
                                                   "Retry-After); 0: no limit",
    "listeners[].forwarding_policies[].rules[].type": "what is matched: Host, path (without "
                                                      "the query, normalised), method, a "
                                                      "header, a query parameter, a cookie or "
                                                      "the client address",
    "listeners[].forwarding_policies[].rules[].match": "path rules only: `prefix` (null), "
                                                       "`exact` or `regex` (RE2, a match "
                                                       "anywhere in the path)",
    "listeners[].forwarding_policies[].rules[].name": "the header, query parameter or "
                                                      "cookie's name; required for those types",
    "listeners[].forwarding_policies[].rules[].values": "what to match, any of them; host "
                                                        "values may start with `*.`; header, "
                                                        "query and cookie values may hold `*` "
                                                        "and `?`; source_ip values are CIDR "
                                                        "blocks",
    "listeners[].forwarding_policies[].action(forward).type": "`forward`: to a pool",
    "listeners[].forwarding_policies[].action(forward).pool": "the pool; exactly one of "
                                                              "pool and pools",
    "listeners[].forwarding_policies[].action(forward).pools": "pools with weights 0-100, "
                                                               "the traffic split between "
                                                               "them",
    "listeners[].forwarding_policies[].action(forward).insert_headers": "request fields set "
                                                                        "before forwarding "
                                                                        "(name: value); "
                                                                        "names lbcore owns "
                                                                        "refused",
    "listeners[].forwarding_policies[].action(forward).remove_headers": "request fields "
                                                                        "removed before "
                                                                        "forwarding",
    "listeners[].forwarding_policies[].action(forward).rewrite_url": "what the member gets "
                                                                     "instead of the "
                                                                     "request's host, path or "
                                                                     "query",
    "listeners[].forwarding_policies[].action(forward).rewrite_url.host": "the Host sent; may "
                                                                          "use ${host}",
    "listeners[].forwarding_policies[].action(forward).rewrite_url.path": "the path sent; may "
                                                                          "use ${path}",
    "listeners[].forwarding_policies[].action(forward).rewrite_url.query": "the query sent "
                                                                           "(without ?); may "
                                                                           "use ${query}",
    "listeners[].forwarding_policies[].action(redirect).type": "`redirect`: answer with a "
                                                               "redirect, never reaching a "
                                                               "member",
    "listeners[].forwarding_policies[].action(redirect).status": "the redirect's status code",
    "listeners[].forwarding_policies[].action(redirect).url": "the target; each part left "
                                                              "null keeps the request's own",
    "listeners[].forwarding_policies[].action(redirect).url.protocol": "scheme of the target "
                                                                       "(`HTTPS` for "
                                                                       "HTTP-to-HTTPS)",
    "listeners[].forwarding_policies[].action(redirect).url.host": "host of the target",
    "listeners[].forwarding_policies[].action(redirect).url.port": "port of the target (the "
                                                                   "HTTPS listener's port)",
    "listeners[].forwarding_policies[].action(redirect).url.path": "path of the target",
    "listeners[].forwarding_policies[].action(redirect).url.query": "query of the target",
    "listeners[].forwarding_policies[].action(fixed_response).type": "`fixed_response`: "
                                                                     "answer with a fixed "
                                                                     "body, never reaching a "
                                                                     "member",
    "listeners[].forwarding_policies[].action(fixed_response).status": "the status code",
    "listeners[].forwarding_policies[].action(fixed_response).content_type": "Content-Type "
                                                                             "of the body",
    "listeners[].forwarding_policies[].action(fixed_response).body": "the body",
    # ---- pools.<name>
    "pools.<name>.description": "free text",
    "pools.<name>.protocol": "members are spoken to in plain HTTP/1.1",
    "pools.<name>.algorithm": "`weighted_round_robin`: smooth, by weight; "
                              "`weighted_least_connections`: fewest active requests per "
                              "weight; `source_ip_hash`: consistent hash of the client address",
    "pools.<name>.sticky_session": "keep a client on one member while it is healthy; null: "
                                   "off",
    "pools.<name>.slow_start": "ramp a new or newly healthy member's share up "
                               "(weighted_round_robin only)",
    "pools.<name>.fail_open": "when every member is unhealthy, send to all of them instead of "
                              "503 (`x-router-code: 50000`)",
    "pools.<name>.resolve_interval": "seconds between re-resolutions of member host names "
                                     "(the master's; every address a name resolves to is a "
                                     "member); 0: resolved at load only",
    "pools.<name>.retries": "which failures are retried on another member, and how often",
    "pools.<name>.retries.retry_on": "`connect_failure`, `reset`, `response_timeout` (spec "
                                     "7.2's default), `http_502`, `http_503`; only idempotent "
                                     "requests before a response byte",
    "pools.<name>.retries.max_retries": "other members tried at most, after the first",
    "pools.<name>.retries.budget": "Envoy's retry budget: retries in flight per worker and pool",
    "pools.<name>.retries.budget.percent": "retries in flight at most this share of the pool's "
                                           "active requests",
    "pools.<name>.retries.budget.min_concurrent": "retries always allowed in flight, whatever "
                                                  "the share",
    "pools.<name>.request_buffering": "read a request body before choosing a member "
                                      "(nginx's proxy_request_buffering): a slow upload "
                                      "holds no member connection",
    "pools.<name>.request_buffering.enabled": "buffer request bodies for this pool",
    "pools.<name>.request_buffering.max_bytes": "bytes buffered; a larger body is streamed "
                                                "from there on",
    "pools.<name>.request_buffering.timeout": "seconds the buffered body may take in all; "
                                              "over it: 408",
    "pools.<name>.max_response_header": "bytes of a member's response head, 1xx included; "
                                        "over it: 502. null: the listener's "
                                        "limits.max_header_block",
    "pools.<name>.members": "the backend servers; an empty pool answers 503 "
                            "(`x-router-code: 40000`)",
    "pools.<name>.health_check": "one check per member, run by the master for all workers. "
                                 "The default: HTTP GET / every 5 s, expecting 200",
    # ---- sticky_session
    "pools.<name>.sticky_session.type": "`lb_cookie`: lbcore sets a cookie naming the member "
                                        "(an opaque token); `app_cookie`: follow the "
                                        "application's own cookie; `source_ip`: hash the "
                                        "client address",
    "pools.<name>.sticky_session.cookie_name": "the cookie's name; required for app_cookie; "
                                               "lb_cookie default `lbcore_sticky`",
    "pools.<name>.sticky_session.timeout_minutes": "how long a session lasts (the lb_cookie's "
                                                   "Max-Age, an app_cookie binding's life)",
    "pools.<name>.sticky_session.secure": "lb_cookie's Secure attribute. `auto`: on HTTPS "
                                          "listeners only (browsers drop a Secure cookie "
                                          "sent over HTTP); true: always; false: never",
    "pools.<name>.sticky_session.same_site": "lb_cookie's SameSite attribute; null: none. "
                                             "`None` needs Secure",
    # ---- slow_start
    "pools.<name>.slow_start.enabled": "ramp up newly added or newly healthy members",
    "pools.<name>.slow_start.duration": "seconds over which the share grows linearly to full",
    # ---- members[]
    "pools.<name>.members[].name": "unique in the pool; names the member in metrics and "
                                   "logs. null: `address:port`",
    "pools.<name>.members[].address": "IPv4 or IPv6 address, or a host name resolved at load "
                                      "(and at reload)",
    "pools.<name>.members[].port": "the member's HTTP port",
    "pools.<name>.members[].weight": "relative share of requests; 0: no new requests (drain)",
    # ---- health_check
    "pools.<name>.health_check.enabled": "false: members are always considered healthy",
    "pools.<name>.health_check.protocol": "`HTTP`: a request, judged by its status; `TCP`: "
                                          "a connect",
    "pools.<name>.health_check.port": "port to check; null: the member's port",
    "pools.<name>.health_check.domain": "Host header of HTTP checks; null: the member's "
                                        "address",
    "pools.<name>.health_check.path": "path of HTTP checks: starts with `/`, at most 80 "
                                      "characters. A member that redirects it fails the check",
    "pools.<name>.health_check.method": "method of HTTP checks",
    "pools.<name>.health_check.interval": "seconds between checks (the first at a random "
                                          "point of the first interval)",
    "pools.<name>.health_check.timeout": "seconds a check may take",
    "pools.<name>.health_check.healthy_threshold": "consecutive successes that mark a member "
                                                   "up (a new member: its first success)",
    "pools.<name>.health_check.unhealthy_threshold": "consecutive failures that mark a "
                                                     "member down",
    "pools.<name>.health_check.expected_codes": "statuses that pass: `200`, a list `200,202` "
                                                "or a range `200-299`",
}

# Where a model's section gets a few sentences of its own, above its table.
INTROS: dict[str, str] = {
    "pools.<name>.health_check": (
        "Every pool is health-checked unless `enabled: false`: by default an HTTP "
        "`GET /` to each member's port every 5 s, and only a **200** passes. A "
        "member whose `/` answers a redirect (301, 302) or 404 is marked DOWN after "
        "3 checks, and when every member is down requests get 503. Point `path` at "
        "a page that answers 200, or widen `expected_codes` (`200-399`)."),
    "listeners[].forwarding_policies[]": (
        "Evaluated in `priority` order; the first policy whose rules all match "
        "decides. Requests no policy matches go to `default_pool`."),
}


@dataclass(frozen=True)
class Key:
    path: str            # the dotted path (MEANINGS' key)
    section: str         # the path of the mapping it belongs to
    name: str            # its name within that mapping
    type: str            # type and range, in words
    default: str         # the default, or "required"


def _bounds(metadata: list[Any]) -> tuple[Any, Any] | None:
    """The range of an `in_range` validator (model.Int and friends)."""
    for m in metadata:
        if isinstance(m, AfterValidator):
            names = inspect.getclosurevars(m.func).nonlocals
            if "lo" in names and "hi" in names:
                return names["lo"], names["hi"]
    return None


def _lengths(metadata: list[Any]) -> tuple[int | None, int | None]:
    lo = hi = None
    for m in metadata:
        if isinstance(m, annotated_types.MinLen):
            lo = m.min_length
        elif isinstance(m, annotated_types.MaxLen):
            hi = m.max_length
    return lo, hi


UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB")


def _num(v: Any) -> str:
    """A number as YAML takes it; a whole number of KiB (a byte limit, most
    likely) also in binary units: 65536 (64 KiB)."""
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if not isinstance(v, int) or isinstance(v, bool) or v < 1024 or v % 1024:
        return str(v)
    n, unit = v // 1024, 0
    while n % 1024 == 0 and unit < len(UNITS) - 1:
        n, unit = n // 1024, unit + 1
    return f"{v} ({n} {UNITS[unit]})"


def _split(tp: Any) -> tuple[Any, list[Any]]:
    """An Annotated type's base and metadata."""
    if typing.get_origin(tp) is typing.Annotated:
        base, *meta = typing.get_args(tp)
        inner, more = _split(base)
        return inner, [*more, *meta]
    return tp, []


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _union_args(tp: Any) -> list[Any] | None:
    if typing.get_origin(tp) in (Union, types.UnionType):
        return list(typing.get_args(tp))
    return None


def describe_type(tp: Any, metadata: list[Any] = ()) -> str:
    """A type, its range and its length limits, in words."""
    tp, more = _split(tp)
    metadata = [*metadata, *more]
    args = _union_args(tp)
    if args is not None:
        models = [a for a in args if _is_model(_split(a)[0])]
        if len(models) > 1:
            return "mapping, one of the forms below (by `type`)"
        parts = [describe_type(a) for a in args if a is not type(None)]
        text = " or ".join(parts)
        return text + (", or null" if type(None) in args else "")
    origin = typing.get_origin(tp)
    lo, hi = _lengths(metadata)
    if origin is Literal:
        return "one of " + ", ".join(f"`{v}`" for v in typing.get_args(tp)) \
            if len(typing.get_args(tp)) > 1 else f"`{typing.get_args(tp)[0]}`"
    if origin is tuple:
        item = typing.get_args(tp)[0]
        base = _split(item)[0]
        if _is_model(base):
            text = "list of mappings"
        elif typing.get_origin(base) is Literal:
            text = "list of any of " + ", ".join(f"`{v}`" for v in typing.get_args(base))
        else:
            text = "list of " + describe_type(item) + "s"
        if lo and hi:
            return f"{text}, {lo} to {hi} items"
        if lo:
            return f"{text}, at least {lo}"
        return f"{text}, at most {hi} items" if hi else text
    if origin is dict:
        value = typing.get_args(tp)[1]
        what = "mapping" if _is_model(_split(value)[0]) else describe_type(value)
        return f"map of name to {what}"
    if _is_model(tp):
        return "mapping"
    bounds = _bounds(metadata)
    name = {bool: "boolean", int: "integer", float: "number", str: "string",
            Path: "file path"}.get(tp, getattr(tp, "__name__", str(tp)))
    if bounds is not None:
        return f"{name} {_num(bounds[0])}\u2013{_num(bounds[1])}"
    if tp is str and (lo or hi):
        if lo and hi:
            return f"string of {lo}\u2013{hi} characters"
        if hi:
            return f"string of at most {hi} characters"
        return "non-empty string" if lo == 1 else f"string of at least {lo} characters"
    return name


def describe_default(field) -> str:
    if field.is_required():
        return "required"
    v = field.default
    if _is_model(type(v)):
        return "see below"
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, tuple | list):
        return "`[]`" if not v else "`[" + ", ".join(map(str, v)) + "]`"
    if isinstance(v, dict):
        return "`{}`" if not v else f"`{v}`"
    if isinstance(v, str):
        return f'`"{v}"`' if v in ("", "-") else f"`{v}`"
    return f"`{_num(v)}`"


def _models_in(tp: Any) -> list[tuple[str, type[BaseModel]]]:
    """(path suffix, model) for each model a field's type leads to."""
    tp, _ = _split(tp)
    args = _union_args(tp)
    if args is not None:
        models = [a for a in (_split(x)[0] for x in args) if _is_model(a)]
        if len(models) > 1:         # told apart by their `type`
            out = []
            for m in models:
                (tag,) = typing.get_args(m.model_fields["type"].annotation)
                out.append((f"({tag})", m))
            return out
        return [("", models[0])] if models else []
    origin = typing.get_origin(tp)
    if origin is tuple:
        return [("[]" + s, m) for s, m in _models_in(typing.get_args(tp)[0])]
    if origin is dict:
        return [(".<name>" + s, m) for s, m in _models_in(typing.get_args(tp)[1])]
    return [("", tp)] if _is_model(tp) else []


def walk(model: type[BaseModel] = Config, prefix: str = "") -> list[Key]:
    """Every key a configuration file may hold, depth first, a mapping's own
    keys before the mappings nested in it."""
    keys: list[Key] = []
    nested: list[tuple[str, type[BaseModel]]] = []
    for name, field in model.model_fields.items():
        if field.exclude:           # filled in by the loader, never read from YAML
            continue
        path = f"{prefix}.{name}" if prefix else name
        keys.append(Key(path, prefix, name, describe_type(field.annotation, field.metadata),
                        describe_default(field)))
        nested += [(path + suffix, m) for suffix, m in _models_in(field.annotation)]
    for path, m in nested:
        keys += walk(m, path)
    return keys


def problems(keys: list[Key] | None = None) -> list[str]:
    """Keys without a meaning, and meanings without a key."""
    keys = walk() if keys is None else keys
    paths = {k.path for k in keys}
    out = [f"{p}: no meaning in lbcore/config/reference.py MEANINGS"
           for p in (k.path for k in keys) if p not in MEANINGS]
    out += [f"{p}: in MEANINGS but not a key of the model" for p in MEANINGS
            if p not in paths]
    out += [f"{p}: in INTROS but not a mapping of the model" for p in INTROS
            if p not in {k.section for k in keys}]
    return out


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def configuration_markdown() -> str:
    keys = walk()
    missing = problems(keys)
    if missing:
        raise ValueError("the configuration reference is incomplete:\n  " +
                         "\n  ".join(missing))
    out = [
        "# Configuration reference", "",
        "<!-- Generated by `make docs` (python -m lbcore.config.reference --write docs)",
        "     from lbcore/config/model.py and the meanings in lbcore/config/reference.py.",
        "     Do not edit: tests/test_docs.py fails when this file and the model differ. -->",
        "",
        "A configuration is one YAML file. `lbcore check -c FILE` validates it and",
        "reports every fault with its file, line and key; `lbcore check --dump -c FILE`",
        "prints it back with every default filled in. Unknown keys are refused, and so",
        "is a value out of range (never clamped). Relative file paths are relative to",
        "the configuration file. Complete examples: [examples/](../examples/).", "",
        "Paths: `a.b` is key `b` in mapping `a`; `a[]` is each item of list `a`;",
        "`a.<name>` is each value of mapping `a`, under a name you choose; `a(t)` is",
        "the form of `a` whose `type` is `t`. Ranges are inclusive.", "",
    ]
    sections: dict[str, list[Key]] = {}
    for k in keys:
        sections.setdefault(k.section, []).append(k)
    toc = [f"- [`{s or 'top level'}`](#{_anchor(s)})" for s in sections]
    out += ["Sections:", "", *toc, ""]
    for section, rows in sections.items():
        out += [f'<a id="{_anchor(section)}"></a>', "",
                f"## `{section}`" if section else "## Top level", ""]
        if section in INTROS:
            out += [INTROS[section], ""]
        out += ["| key | type and range | default | meaning |", "|---|---|---|---|"]
        for k in rows:
            out.append(f"| `{k.name}` | {_cell(k.type)} | {_cell(k.default)} | "
                       f"{_cell(MEANINGS[k.path])} |")
        out.append("")
    return "\n".join(out)


def _anchor(section: str) -> str:
    keep = "".join(c if c.isalnum() else "-" for c in section.lower())
    return "k-" + ("-".join(p for p in keep.split("-") if p) or "top")


def documents() -> dict[str, str]:
    """File name under docs/ -> its generated text."""
    from lbcore.tls.policies import policies_markdown

    return {"configuration.md": configuration_markdown(),
            "security-policies.md": policies_markdown()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lbcore.config.reference",
                                description="Generate docs/configuration.md and "
                                "docs/security-policies.md from the config model.")
    p.add_argument("--write", type=Path, metavar="DIR",
                   help="write both files into DIR (e.g. docs); without it, print "
                   "configuration.md on stdout")
    p.add_argument("--check", type=Path, metavar="DIR",
                   help="exit 1, naming the files, if DIR's copies are stale")
    args = p.parse_args(argv)
    try:
        docs = documents()
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 1
    if args.check:
        stale = [n for n, text in docs.items()
                 if not (args.check / n).exists() or (args.check / n).read_text() != text]
        for n in stale:
            print(f"{args.check / n} is stale: run `make docs`", file=sys.stderr)
        return 1 if stale else 0
    if args.write:
        args.write.mkdir(parents=True, exist_ok=True)
        for n, text in docs.items():
            (args.write / n).write_text(text)
            print(f"wrote {args.write / n}", file=sys.stderr)
        return 0
    sys.stdout.write(docs["configuration.md"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
