"""What `lbcore check` prints for a good configuration, like `nginx -t`."""

from __future__ import annotations

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
