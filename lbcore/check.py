"""What `lbcore check` prints for a good configuration, like `nginx -t`."""

from __future__ import annotations

import types

import yaml

from lbcore.tls.policies import resolve_policy


def summarize(cfg) -> str:
    out = []
    for lst in cfg.listeners:
        where = f"{lst.address or '*'}:{lst.port}"
        tls = ""
        if lst.protocol == "HTTPS":
            policy = resolve_policy(cfg, lst.security_policy)
            tls = (f", {lst.security_policy} ({'/'.join(policy.versions)}), "
                   f"{lst.ssl_authentication}" + (", h2" if lst.http2 else ""))
        out.append(f"listener {lst.name}: {lst.protocol} {where} -> pool {lst.default_pool}"
                   f"{tls}, {len(lst.forwarding_policies)} forwarding policies")
    for name, cert in cfg.certificates.items():
        info = cert.info
        if info is None:
            continue
        expiry = (f"expires in {info.days_to_expiry} days" if info.days_to_expiry >= 0
                  else f"EXPIRED {-info.days_to_expiry} days ago")
        domains = ", ".join(info.domains) or "-"
        out.append(f"certificate {name}: {cert.type} {info.key_type}, {domains}; {expiry}")
    for name, pool in cfg.pools.items():
        members = ", ".join(f"{m.address}:{m.port} w={m.weight}" for m in pool.members) or "none"
        hc = pool.health_check
        check = f"{hc.protocol} every {hc.interval}s" if hc.enabled else "no health check"
        out.append(f"pool {name}: {pool.algorithm}, {check}; members {members}")
    return "\n".join(out)


def effective(cfg) -> dict:
    """The configuration as lbcore serves it: every key, defaults filled in
    (member names too), in the shape a config file takes, so that the output
    passes `lbcore check` itself."""
    # The loader freezes its mappings; pydantic serialises only plain dicts.
    plain = cfg.model_copy(update={k: dict(v) for k, v in cfg
                                   if isinstance(v, types.MappingProxyType)})
    return plain.model_dump(mode="json")


def effective_yaml(cfg) -> str:
    source = f" of {cfg.source}" if cfg.source else ""
    head = (f"# lbcore: the effective configuration{source}, every default filled in.\n"
            "# null: not set (docs/configuration.md says what lbcore does then).\n")
    return head + yaml.safe_dump(effective(cfg), sort_keys=False, allow_unicode=True)
