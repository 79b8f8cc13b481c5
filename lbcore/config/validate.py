"""Checks that need the whole model: references, files, ports, SNI domains,
and what the local OpenSSL can do. Each problem is (yaml path, message)."""

from __future__ import annotations

import difflib
import ipaddress
import ssl
from pathlib import Path
from typing import Any

from lbcore.tls.certs import CertProblem, load_ca_bundle, load_server_cert
from lbcore.tls.policies import PREDEFINED, custom_policy_problems, resolve_policy

Problem = tuple[tuple[Any, ...], str]


def no_such(kind: str, name: str, choices) -> str:
    """'no pool named 'wbe' (did you mean 'web'?)'"""
    close = difflib.get_close_matches(str(name), list(choices), n=1)
    return f"no {kind} named {name!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
# spec 3.3 limits on SNI certificates per listener
MAX_SNI_DOMAINS = 200
IP_GROUP_SOFT_LIMIT = 300
EXPIRY_WARNING_DAYS = 14


def load_certificates(cfg, base_dir: Path, problems: list[Problem], warnings: list[str]):
    """Resolve paths against the config's folder and read each certificate."""
    out = {}
    for name, cert in cfg.certificates.items():
        path = (base_dir / cert.certificate).resolve()
        key = (base_dir / cert.private_key).resolve() if cert.private_key else None
        crl = (base_dir / cert.crl).resolve() if cert.crl else None
        info = None
        try:
            if cert.type == "server":
                if key is None:
                    problems.append((("certificates", name),
                                     "a server certificate needs private_key"))
                else:
                    info = load_server_cert(path, key)
            else:
                info = load_ca_bundle(path, crl)
        except CertProblem as exc:
            field = "private_key" if key is not None and str(key) in str(exc) else "certificate"
            if crl is not None and str(crl) in str(exc):
                field = "crl"
            problems.append((("certificates", name, field), str(exc)))
        if info is not None:
            days = info.days_to_expiry
            if days < 0:
                warnings.append(f"certificate {name} expired {-days} day(s) ago")
            elif days < EXPIRY_WARNING_DAYS:
                warnings.append(f"certificate {name} expires in {days} day(s)")
        out[name] = cert.model_copy(update={"certificate": path, "private_key": key,
                                            "crl": crl, "info": info})
    return out


def normalise_ip_groups(cfg, problems: list[Problem], warnings: list[str]):
    out = {}
    for name, group in cfg.ip_groups.items():
        seen: dict[str, None] = {}
        for i, entry in enumerate(group.addresses):
            try:
                net = ipaddress.ip_network(str(entry).strip(), strict=True)
            except ValueError as exc:
                problems.append((("ip_groups", name, "addresses", i),
                                 f"{entry!r} is not an IP address or CIDR block ({exc})"))
                continue
            seen.setdefault(str(net), None)
        if len(seen) > IP_GROUP_SOFT_LIMIT:
            warnings.append(f"ip group {name} has {len(seen)} entries "
                            f"(the product allows {IP_GROUP_SOFT_LIMIT})")
        out[name] = group.model_copy(update={"addresses": tuple(seen)})
    return out


def check_policies(cfg, problems: list[Problem]) -> None:
    for name, policy in cfg.security_policies.items():
        for msg in custom_policy_problems(policy.protocols, policy.ciphers):
            problems.append((("security_policies", name, "ciphers"), msg))


def _overlap(a: str | None, b: str | None) -> bool:
    return a is None or b is None or a in ("0.0.0.0", "::") or b in ("0.0.0.0", "::") or a == b


def check_pools(cfg, problems: list[Problem]) -> None:
    """Member names are unique within a pool: they label the per-member
    metrics (`lbcore_member_up{pool,member}`), where two would collide."""
    for pool_name, pool in cfg.pools.items():
        seen: dict[str, int] = {}
        for j, member in enumerate(pool.members):
            if member.name in seen:
                problems.append((("pools", pool_name, "members", j, "name"),
                                 f"{member.name!r} is also the name of members[{seen[member.name]}]"
                                 " (members without a name are named address:port)"))
            seen.setdefault(member.name, j)


def check_admin(cfg, problems: list[Problem]) -> None:
    """The admin endpoint can't share a listener's port: one of them would
    not start (and without the admin, no /metrics, /healthz or /readyz)."""
    admin = cfg.load_balancer.admin
    for i, lst in enumerate(cfg.listeners):
        if lst.port == admin.port and _overlap(lst.address, admin.address):
            problems.append((("load_balancer", "admin", "port"),
                             f"port {admin.port} is also the port of listeners[{i}] "
                             f"({lst.name!r})"))


def check_listeners(cfg, certs, problems: list[Problem], warnings: list[str]) -> None:
    names: dict[str, int] = {}
    for i, lst in enumerate(cfg.listeners):
        at = ("listeners", i)
        if lst.name in names:
            problems.append((at + ("name",), f"{lst.name!r} is also the name of listeners"
                             f"[{names[lst.name]}]"))
        names.setdefault(lst.name, i)
        for j, other in enumerate(cfg.listeners[:i]):
            if other.port == lst.port and _overlap(other.address, lst.address):
                problems.append((at + ("port",), f"port {lst.port} is already used by "
                                 f"listeners[{j}] ({other.name})"))
        if lst.default_pool not in cfg.pools:
            problems.append((at + ("default_pool",), no_such("pool", lst.default_pool, cfg.pools)))
        if lst.security_policy not in PREDEFINED and lst.security_policy not in \
                cfg.security_policies:
            problems.append((at + ("security_policy",),
                             f"no security policy named {lst.security_policy!r} "
                             f"(predefined: {', '.join(PREDEFINED)})"))
        ac = lst.access_control
        if ac.mode != "all" and ac.ip_group not in cfg.ip_groups:
            problems.append((at + ("access_control", "ip_group"),
                             no_such("ip group", ac.ip_group, cfg.ip_groups)))
        _check_tls(cfg, certs, i, lst, problems, warnings)


# ELB's limits (spec 10).
MAX_POLICIES = 100
MAX_RULES = 10
# Request headers a forwarding policy may not insert or remove: those lbcore
# frames, routes by or sets itself (ELB's reserved list, spec 10, and lbcore's
# own); a policy that could would undo what the listener guarantees.
RESERVED_HEADERS = frozenset((
    "connection", "upgrade", "content-length", "transfer-encoding", "keep-alive", "te",
    "trailer", "host", "cookie", "remoteip", "authority", "proxy-connection",
    "proxy-authorization", "proxy-authenticate", "x-request-id",
    "x-forwarded-host", "x-forwarded-for", "x-forwarded-for-port", "x-forwarded-port",
    "x-forwarded-proto", "x-real-ip", "x-forwarded-elb-ip", "x-forwarded-elb-id",
    "x-forwarded-elb-vip", "x-forwarded-tls-certificate-id", "x-forwarded-tls-protocol",
    "x-forwarded-tls-cipher", "x-forwarded-tls-sni", "x-forwarded-alpn-protocol",
))
# Header rules on these would never see what the client sent: each has a rule
# type of its own, or lbcore owns the field.
NOT_HEADER_RULES = {"host": "use a host rule", "cookie": "use a cookie rule"}


def _reserved(name: str) -> bool:
    n = name.lower()
    return n in RESERVED_HEADERS or n.startswith("x-forwarded-clientcert")


def check_forwarding(cfg, problems: list[Problem]) -> None:
    """Forwarding policies (spec 10): references, priorities, ELB's limits,
    the headers they may touch, and every regex compiled by the engine that
    will run it (RE2), so that what check accepts is what run serves."""
    try:
        from lbcore_ext.regex import glob_regex, regex_error
    except ImportError:             # `check` without the extension: `run` compiles again
        regex_error = glob_regex = None
    for i, lst in enumerate(cfg.listeners):
        at = ("listeners", i, "forwarding_policies")
        if len(lst.forwarding_policies) > MAX_POLICIES:
            problems.append((at, f"{len(lst.forwarding_policies)} policies; at most "
                             f"{MAX_POLICIES} per listener"))
        prios: dict[int, str] = {}
        names: dict[str, int] = {}
        for k, fp in enumerate(lst.forwarding_policies):
            fat = at + (k,)
            if fp.priority in prios:
                problems.append((fat + ("priority",), f"priority {fp.priority} is also used "
                                 f"by {prios[fp.priority]!r}"))
            prios.setdefault(fp.priority, fp.name)
            if fp.name in names:
                problems.append((fat + ("name",), f"{fp.name!r} is also the name of "
                                 f"forwarding_policies[{names[fp.name]}]"))
            names.setdefault(fp.name, k)
            if len(fp.rules) > MAX_RULES:
                problems.append((fat + ("rules",), f"{len(fp.rules)} rules; at most {MAX_RULES}"
                                 " per policy"))
            act = fp.action
            if act.type == "forward":
                for pool in ([act.pool] if act.pool else list(act.pools or {})):
                    if pool not in cfg.pools:
                        problems.append((fat + ("action", "pool" if act.pool else "pools"),
                                         no_such("pool", pool, cfg.pools)))
                for name in act.insert_headers:
                    if _reserved(name):
                        problems.append((fat + ("action", "insert_headers", name),
                                         f"{name} is a header lbcore owns; it can't be inserted"))
                for h, name in enumerate(act.remove_headers):
                    if _reserved(name):
                        problems.append((fat + ("action", "remove_headers", h),
                                         f"{name} is a header lbcore owns; it can't be removed"))
            for r, rule in enumerate(fp.rules):
                rat = fat + ("rules", r)
                if rule.type == "header" and rule.name.lower() in NOT_HEADER_RULES:
                    problems.append((rat + ("name",), f"a header rule on {rule.name}: "
                                     f"{NOT_HEADER_RULES[rule.name.lower()]}"))
                elif rule.type == "header" and _reserved(rule.name) and \
                        rule.name.lower() != "x-forwarded-for":
                    problems.append((rat + ("name",), f"{rule.name} is set by lbcore, not the "
                                     "client: a header rule on it would never match"))
                for v, value in enumerate(rule.values):
                    if rule.type == "source_ip":
                        try:
                            ipaddress.ip_network(value, strict=False)
                        except ValueError:
                            problems.append((rat + ("values", v),
                                             f"{value!r} is not an IP address or CIDR block"))
                    elif regex_error is not None and rule.type == "path" and \
                            rule.match == "regex":
                        err = regex_error(value)
                        if err:
                            problems.append((rat + ("values", v), f"regex {value!r}: {err} "
                                             "(RE2 syntax: no lookaround, no backreference)"))
                    elif regex_error is not None and rule.type in ("header", "query", "cookie"):
                        err = regex_error(glob_regex(value))
                        if err:
                            problems.append((rat + ("values", v), f"{value!r}: {err}"))


def _check_tls(cfg, certs, i, lst, problems: list[Problem], warnings: list[str]) -> None:
    at = ("listeners", i)
    if lst.protocol == "HTTP":
        if lst.http2:
            warnings.append(f"listener {lst.name}: http2 needs HTTPS (ALPN); ignored on HTTP")
        return
    if not lst.server_certificate:
        problems.append((at, "an HTTPS listener needs server_certificate"))
    elif lst.server_certificate not in certs:
        problems.append((at + ("server_certificate",),
                         no_such("certificate", lst.server_certificate, certs)))
    elif certs[lst.server_certificate].type != "server":
        problems.append((at + ("server_certificate",),
                         f"{lst.server_certificate!r} is a ca certificate, not a server one"))
    if lst.ssl_authentication == "mutual":
        if not lst.ca_certificate:
            problems.append((at, "mutual authentication needs ca_certificate"))
        elif lst.ca_certificate not in certs:
            problems.append((at + ("ca_certificate",),
                             no_such("certificate", lst.ca_certificate, certs)))
        elif certs[lst.ca_certificate].type != "ca":
            problems.append((at + ("ca_certificate",),
                             f"{lst.ca_certificate!r} is a server certificate, not a ca"))
    owner: dict[str, str] = {}
    total = 0
    for k, name in enumerate(lst.sni.certificates):
        if name not in certs:
            problems.append((at + ("sni", "certificates", k), no_such("certificate", name, certs)))
            continue
        info = certs[name].info
        if certs[name].type != "server":
            problems.append((at + ("sni", "certificates", k), f"{name!r} is not a server "
                             "certificate"))
            continue
        for domain in info.domains if info else ():
            total += 1
            # The same name may have an ECDSA and an RSA certificate (spec 3.1);
            # two certificates of one key type for a domain is ambiguous.
            key = f"{domain}/{info.key_type}"
            if key in owner and owner[key] != name:
                problems.append((at + ("sni", "certificates", k),
                                 f"domain {domain} is in both {owner[key]!r} and {name!r}"))
            owner.setdefault(key, name)
    if total > MAX_SNI_DOMAINS:
        problems.append((at + ("sni", "certificates"),
                         f"{total} domain names; at most {MAX_SNI_DOMAINS}"))
    if not any(p[0][:2] == at for p in problems) and lst.server_certificate in certs:
        _check_openssl(cfg, certs, lst, at, problems)


def _check_openssl(cfg, certs, lst, at, problems: list[Problem]) -> None:
    """Every version and suite of the policy must be enabled by the local
    OpenSSL: name the ones it can't (never drop them silently)."""
    policy = resolve_policy(cfg, lst.security_policy)
    legacy = any(v in ("TLSv1", "TLSv1.1") for v in policy.versions)
    for suite in policy.ciphers:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            ctx.set_ciphers(suite + (":@SECLEVEL=0" if legacy else ""))
        except ssl.SSLError:
            if lst.security_policy in PREDEFINED and suite in (
                    "DES-CBC3-SHA", "CAMELLIA128-SHA", "CAMELLIA256-SHA",
                    "DHE-RSA-AES128-GCM-SHA256", "DHE-RSA-AES256-GCM-SHA384",
                    "DHE-RSA-AES128-SHA", "DHE-RSA-AES256-SHA"):
                continue    # tls-1-0-inherit: "legacy suites the local OpenSSL still offers"
            problems.append((at + ("security_policy",),
                             f"{lst.security_policy}: cipher {suite} is not available in "
                             f"the local OpenSSL ({ssl.OPENSSL_VERSION})"))
    if policy.tls13_suites:
        try:
            from lbcore_ext.tlsctl import set_ciphersuites
        except ImportError:
            return      # `lbcore check` works without the extension; `run` checks again
        for suite in policy.tls13_suites:
            try:
                set_ciphersuites(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), suite)
            except ValueError:
                problems.append((at + ("security_policy",),
                                 f"{lst.security_policy}: TLS 1.3 suite {suite} is not "
                                 "available in the local OpenSSL"))


def check_resolution(cfg, problems: list[Problem]) -> None:
    """Member host names must resolve now, as HAProxy's default init-addr
    wants: a name that doesn't would make `run` fail, or a reload."""
    from lbcore.dns import ResolveError, resolve_addresses

    seen: dict[str, str | None] = {}
    for pool_name, pool in cfg.pools.items():
        for j, member in enumerate(pool.members):
            if member.address not in seen:
                try:
                    resolve_addresses(member.address)
                    seen[member.address] = None
                except ResolveError as exc:
                    seen[member.address] = str(exc)
            if seen[member.address] is not None:
                problems.append((("pools", pool_name, "members", j, "address"),
                                 seen[member.address]))
