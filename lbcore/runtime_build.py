"""Compile the validated config model into the data plane's runtime objects.

The data plane never sees YAML or pydantic: everything it needs per request is
precomputed here (header names with aliases applied, the table of header
actions, time-outs as floats, resolved member addresses)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from lbcore.dns import Resolution, Resolved, resolve_config
from lbcore_ext.balancer import (
    ALG_SOURCE_IP_HASH,
    ALG_WLC,
    ALG_WRR,
    COOKIE_SECURE_ALWAYS,
    COOKIE_SECURE_AUTO,
    COOKIE_SECURE_NEVER,
    STICKY_APP_COOKIE,
    STICKY_LB_COOKIE,
    STICKY_NONE,
    STICKY_SOURCE_IP,
    Member,
    Pool,
)
from lbcore_ext.counters import RETRY_REASONS
from lbcore_ext.iptrie import IpTrie
from lbcore_ext.policy import CONN_RATE_BURST_NS, compile_table
from lbcore_ext.runtime import (
    ACL_ALL,
    ACL_BLACKLIST,
    ACL_WHITELIST,
    CLIENTCERT_FIELDS,
    H_CONNECTION,
    H_CONTENT_LENGTH,
    H_COOKIE,
    H_DROP,
    H_HOST,
    H_LOGGED,
    H_PASS,
    H_REQUEST_ID,
    H_RULE_SLOT,
    H_TRANSFER_ENCODING,
    H_UPGRADE,
    H_XFF,
    TLS_ALPN,
    TLS_CERT_ID,
    TLS_CIPHER,
    TLS_PROTOCOL,
    TLS_SNI,
    XFF_APPEND,
    XFF_OFF,
    XFF_PRESERVE,
    XFF_REMOVE,
    ListenerRuntime,
)

# RFC 9110 7.6.1 hop-by-hop headers, plus the Proxy-* family (spec 5).
HOP_BY_HOP = ("keep-alive", "proxy-connection", "te", "trailer",
              "proxy-authorization", "proxy-authenticate")

# Headers lbcore owns: a client-sent copy never reaches a backend (spec 5),
# whether or not the listener inserts its own value.
ALWAYS_OWNED = (
    "x-real-ip", "x-forwarded-elb-ip", "x-forwarded-elb-id",
    "x-forwarded-tls-protocol", "x-forwarded-tls-cipher", "x-forwarded-tls-certificate-id",
    "x-forwarded-tls-sni", "x-forwarded-alpn-protocol", "x-forwarded-clientcert",
    "x-forwarded-clientcert-subjectdn", "x-forwarded-clientcert-issuerdn",
    "x-forwarded-clientcert-fingerprint", "x-forwarded-clientcert-serialnumber",
    "x-forwarded-clientcert-end", "x-forwarded-clientcert-clientverify",
)

# insert_headers key -> (default header name, TLS field bit or 0)
OPTIONAL_HEADERS: Mapping[str, tuple[str, int]] = {
    "x_forwarded_for": ("X-Forwarded-For", 0),
    "x_real_ip": ("X-Real-IP", 0),
    "x_forwarded_proto": ("X-Forwarded-Proto", 0),
    "x_forwarded_host": ("X-Forwarded-Host", 0),
    "x_forwarded_port": ("X-Forwarded-Port", 0),
    "x_forwarded_for_port": ("X-Forwarded-For-Port", 0),
    "x_forwarded_elb_id": ("X-Forwarded-ELB-ID", 0),
    "x_forwarded_elb_ip": ("X-Forwarded-ELB-IP", 0),
    "x_forwarded_tls_protocol": ("X-Forwarded-TLS-Protocol", TLS_PROTOCOL),
    "x_forwarded_tls_cipher": ("X-Forwarded-TLS-Cipher", TLS_CIPHER),
    "x_forwarded_tls_certificate_id": ("X-Forwarded-TLS-Certificate-ID", TLS_CERT_ID),
    "x_forwarded_tls_sni": ("X-Forwarded-Tls-Sni", TLS_SNI),
    "x_forwarded_alpn_protocol": ("X-Forwarded-Alpn-Protocol", TLS_ALPN),
}

XFF_MODES = {"append": XFF_APPEND, "remove": XFF_REMOVE, "preserve": XFF_PRESERVE}


ALGORITHMS = {"weighted_round_robin": ALG_WRR, "weighted_least_connections": ALG_WLC,
              "source_ip_hash": ALG_SOURCE_IP_HASH}
STICKY = {"lb_cookie": STICKY_LB_COOKIE, "app_cookie": STICKY_APP_COOKIE,
          "source_ip": STICKY_SOURCE_IP}
# The lb_cookie's name when the config names none.
DEFAULT_LB_COOKIE = "lbcore_sticky"


def build_members(resolved: tuple[Resolved, ...]) -> list[Member]:
    out = []
    for r in resolved:
        m = Member(r.name, r.host, r.port, r.weight)
        m.config_index = r.member       # with the address: which member it is across lookups
        out.append(m)
    return out


def build_pool(name: str, pool, resolved: tuple[Resolved, ...]) -> Pool:
    members = build_members(resolved)
    sticky = pool.sticky_session
    slow = pool.slow_start
    cookie = None
    if sticky is not None and sticky.type in ("lb_cookie", "app_cookie"):
        cookie = (sticky.cookie_name or DEFAULT_LB_COOKIE).encode()
    p = Pool(
        name, members,
        algorithm=ALGORITHMS[pool.algorithm],
        sticky=STICKY[sticky.type] if sticky is not None else STICKY_NONE,
        cookie_name=cookie,
        cookie_max_age=(sticky.timeout_minutes * 60) if sticky is not None else 0,
        slow_start=float(slow.duration) if slow is not None and slow.enabled else 0.0,
        fail_open=bool(getattr(pool, "fail_open", False)),
        max_head=pool.max_response_header or 0,
        **(_cookie_attributes(sticky) if sticky is not None else {}),
    )
    retries = pool.retries
    p.retry_on = sum(1 << RETRY_REASONS.index(reason) for reason in set(retries.retry_on))
    p.max_retries = retries.max_retries
    p.budget_percent = float(retries.budget.percent)
    p.budget_min = retries.budget.min_concurrent
    buffering = pool.request_buffering
    p.buffer_max = buffering.max_bytes if buffering.enabled else 0
    p.buffer_timeout = float(buffering.timeout)
    return p


def _cookie_attributes(sticky) -> dict:
    """The lb_cookie's Secure and SameSite, as balancer.Pool takes them."""
    secure = {"auto": COOKIE_SECURE_AUTO, True: COOKIE_SECURE_ALWAYS,
              False: COOKIE_SECURE_NEVER}[sticky.secure]
    return {"cookie_secure": secure,
            "cookie_same_site": sticky.same_site.encode() if sticky.same_site else None}


def build_pools(cfg, resolution: Resolution | None = None) -> dict[str, Pool]:
    """`resolution`: the master's member sets; alone, the process resolves."""
    if resolution is None:
        resolution = resolve_config(cfg)
    return {name: build_pool(name, pool, resolution[name]) for name, pool in cfg.pools.items()}


def _header_name(ih, key: str) -> str:
    aliases = getattr(ih, "aliases", None) or {}
    return aliases.get(key) or OPTIONAL_HEADERS[key][0]


def build_listener(cfg, listener, pools: Mapping[str, Pool]) -> ListenerRuntime:
    ih = listener.insert_headers
    lrt = ListenerRuntime(listener.name, pools[listener.default_pool])
    lrt.scheme = b"https" if listener.protocol == "HTTPS" else b"http"
    lrt.port_bytes = str(listener.port).encode()

    def name_of(key: str) -> bytes:
        return _header_name(ih, key).encode() + b": "

    actions: dict[bytes, int] = {b"connection": H_CONNECTION, b"host": H_HOST,
                                 b"content-length": H_CONTENT_LENGTH, b"cookie": H_COOKIE,
                                 b"upgrade": H_UPGRADE,
                                 b"transfer-encoding": H_TRANSFER_ENCODING}
    for h in HOP_BY_HOP + ALWAYS_OWNED:
        actions[h.encode()] = H_DROP

    lrt.xff_mode = XFF_MODES[ih.x_forwarded_for] if listener.transfer_client_ip else XFF_OFF
    lrt.x_real_ip = bool(listener.transfer_client_ip and ih.x_real_ip)
    lrt.x_forwarded_proto = bool(ih.x_forwarded_proto)
    lrt.x_forwarded_host = bool(ih.x_forwarded_host)
    lrt.x_forwarded_port = bool(ih.x_forwarded_port)
    lrt.x_forwarded_for_port = bool(ih.x_forwarded_for_port)
    lrt.n_xff, lrt.n_real_ip = name_of("x_forwarded_for"), name_of("x_real_ip")
    lrt.n_proto, lrt.n_host = name_of("x_forwarded_proto"), name_of("x_forwarded_host")
    lrt.n_port, lrt.n_for_port = name_of("x_forwarded_port"), name_of("x_forwarded_for_port")
    lrt.n_tls_protocol = name_of("x_forwarded_tls_protocol")
    lrt.n_tls_cipher = name_of("x_forwarded_tls_cipher")
    lrt.n_cert_id = name_of("x_forwarded_tls_certificate_id")
    lrt.n_tls_sni = name_of("x_forwarded_tls_sni")
    lrt.n_alpn = name_of("x_forwarded_alpn_protocol")

    # Every header lbcore inserts is owned: the client's copy is dropped.
    inserted = {
        "x_forwarded_for": lrt.xff_mode in (XFF_APPEND, XFF_REMOVE),
        "x_real_ip": True,
        "x_forwarded_proto": lrt.x_forwarded_proto,
        "x_forwarded_host": lrt.x_forwarded_host,
        "x_forwarded_port": lrt.x_forwarded_port,
        "x_forwarded_for_port": lrt.x_forwarded_for_port,
    }
    tls_fields = 0
    if listener.protocol == "HTTPS":
        for key, (_, bit) in OPTIONAL_HEADERS.items():
            if bit and getattr(ih, key, False):
                tls_fields |= bit
                inserted[key] = True
    if listener.protocol == "HTTPS" and listener.ssl_authentication == "mutual":
        # x_forwarded_clientcert: [subjectdn, ...]; its alias, if any, is the
        # prefix of the header names.
        prefix = (getattr(ih, "aliases", None) or {}).get("x_forwarded_clientcert",
                                                          "X-Forwarded-Clientcert")
        names = {}
        for field in ih.x_forwarded_clientcert:
            tls_fields |= CLIENTCERT_FIELDS[field]
            header = prefix if field == "cert" else f"{prefix}-{field}"
            names[field] = header.encode() + b": "
            actions[header.lower().encode()] = H_DROP
        lrt.n_clientcert = names
    lrt.tls_fields = tls_fields
    for key, on in inserted.items():
        if on and key != "x_forwarded_for":
            actions[_header_name(ih, key).lower().encode()] = H_DROP
    actions[_header_name(ih, "x_forwarded_for").lower().encode()] = H_XFF

    static = b""
    lb = cfg.load_balancer
    if listener.transfer_eip and lb.eip:
        static += name_of("x_forwarded_elb_ip") + lb.eip.encode() + b"\r\n"
        actions[_header_name(ih, "x_forwarded_elb_ip").lower().encode()] = H_DROP
    if ih.x_forwarded_elb_id and lb.id:
        static += name_of("x_forwarded_elb_id") + lb.id.encode() + b"\r\n"
        actions[_header_name(ih, "x_forwarded_elb_id").lower().encode()] = H_DROP
    if cfg.load_balancer.access_log.path != "off":
        # Honour a client's X-Request-ID, else one is generated and sent on.
        lrt.access_log = []
        lrt.rid_prefix = os.urandom(4).hex().encode() + b"-"
        actions[b"x-request-id"] = H_REQUEST_ID
        actions[b"user-agent"] = H_LOGGED
        actions[b"referer"] = H_LOGGED
    lrt.static_lines = static
    lrt.pools = dict(pools)
    lrt.policies = compile_table(listener.forwarding_policies, pools)
    if lrt.policies is not None:
        # The fields header rules read: their slot rides on the field's action.
        for lname, slot in lrt.policies.slots.items():
            actions[lname] = actions.get(lname, H_PASS) | ((slot + 1) * H_RULE_SLOT)
    lrt.header_actions = actions
    lrt.cert_id = (listener.server_certificate or "").encode()

    lrt.idle_timeout = float(listener.idle_timeout)
    lrt.request_timeout = float(listener.request_timeout)
    lrt.response_timeout = float(listener.response_timeout)
    lrt.connect_timeout = float(listener.connect_timeout)
    lim = listener.limits
    lrt.max_request_line = lim.max_request_line
    lrt.max_header_size = lim.max_header_size
    lrt.max_header_block = lim.max_header_block
    lrt.max_headers = lim.max_headers
    lrt.max_body = lim.max_body
    lrt.max_connections = lim.max_connections
    if lim.max_new_connections_per_second:
        lrt.conn_interval_ns = 1_000_000_000 // lim.max_new_connections_per_second
        lrt.conn_tolerance_ns = CONN_RATE_BURST_NS
    ac = listener.access_control
    if ac is not None and ac.mode != "all":
        lrt.acl_mode = ACL_WHITELIST if ac.mode == "whitelist" else ACL_BLACKLIST
        lrt.acl = IpTrie(cfg.ip_groups[ac.ip_group].addresses)
    else:
        lrt.acl_mode = ACL_ALL
    return lrt


@dataclass(frozen=True)
class Runtime:
    """Everything one worker serves: built whole, swapped whole on reload."""

    pools: Mapping[str, Pool]
    listeners: tuple[ListenerRuntime, ...]


def build_runtime(cfg, ssl_context_for=None, phases=None,
                  resolution: Resolution | None = None) -> Runtime:
    """`ssl_context_for(listener)` gives the listener's (SSLContext, SniSelector)
    ((None, None) for HTTP); `phases` is a lbcore.phases.Phases instance or None."""
    from lbcore.phases import hook_mask

    pools = build_pools(cfg, resolution)
    listeners = []
    hooks = hook_mask(phases)
    for listener in cfg.listeners:
        lrt = build_listener(cfg, listener, pools)
        if ssl_context_for is not None:
            lrt.ssl_ctx, selector = ssl_context_for(listener)
            if selector is not None and listener.ssl_authentication == "mutual":
                lrt.sni_guard = selector
        lrt.phases, lrt.hooks = (phases, hooks) if hooks else (None, 0)
        listeners.append(lrt)
    return Runtime(pools, tuple(listeners))
