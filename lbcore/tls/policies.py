"""Security policies of spec 3.2: TLS versions and cipher suites in preference
order (OpenSSL names). Predefined ones by name; custom ones from the config."""

from __future__ import annotations

from dataclasses import dataclass

ECDSA_ALL = ("ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-ECDSA-AES128-GCM-SHA256",
             "ECDHE-ECDSA-AES128-SHA256", "ECDHE-ECDSA-AES256-SHA384", "ECDHE-ECDSA-AES128-SHA",
             "ECDHE-ECDSA-AES256-SHA")
RSA_ALL = ("ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-RSA-AES128-GCM-SHA256", "AES128-GCM-SHA256",
           "AES256-GCM-SHA384", "ECDHE-RSA-AES128-SHA256", "AES128-SHA256", "AES256-SHA256",
           "ECDHE-RSA-AES256-SHA384", "ECDHE-RSA-AES128-SHA", "ECDHE-RSA-AES256-SHA",
           "AES128-SHA", "AES256-SHA")
BASE = ECDSA_ALL + RSA_ALL
FS = ("ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-ECDSA-AES128-GCM-SHA256",
      "ECDHE-ECDSA-AES128-SHA256", "ECDHE-ECDSA-AES256-SHA384",
      "ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-RSA-AES128-GCM-SHA256",
      "ECDHE-RSA-AES128-SHA256", "ECDHE-RSA-AES256-SHA384")
TLS13 = ("TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256",
         "TLS_AES_128_CCM_SHA256", "TLS_AES_128_CCM_8_SHA256")
SHA1_CBC = ("ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA", "ECDHE-RSA-AES128-SHA",
            "ECDHE-RSA-AES256-SHA", "AES128-SHA", "AES256-SHA")
# tls-1-0-inherit: the legacy suites the local OpenSSL may still offer.
LEGACY = ("DES-CBC3-SHA", "CAMELLIA128-SHA", "CAMELLIA256-SHA", "DHE-RSA-AES128-GCM-SHA256",
          "DHE-RSA-AES256-GCM-SHA384", "DHE-RSA-AES128-SHA", "DHE-RSA-AES256-SHA")
NO_CBC = ("ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-ECDSA-AES128-GCM-SHA256",
          "ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-RSA-AES128-GCM-SHA256")
# What a custom policy may choose from (spec 3.2).
CUSTOM_ALLOWED = frozenset(BASE + ("CAMELLIA128-SHA", "DES-CBC3-SHA", "CAMELLIA256-SHA",
                                   "ECDHE-RSA-CHACHA20-POLY1305",
                                   "ECDHE-ECDSA-CHACHA20-POLY1305") + TLS13)
NATIONAL = ("SM2", "SM4", "ECC-SM4", "ECDHE-SM4")


@dataclass(frozen=True)
class ResolvedPolicy:
    name: str
    versions: tuple[str, ...]
    ciphers: tuple[str, ...]          # TLS 1.2 and below, in preference order
    tls13_suites: tuple[str, ...]


def _p(name, versions, ciphers, tls13=()):
    return ResolvedPolicy(name, tuple(versions), tuple(ciphers), tuple(tls13))


PREDEFINED: dict[str, ResolvedPolicy] = {p.name: p for p in (
    _p("tls-1-0", ("TLSv1", "TLSv1.1", "TLSv1.2"), BASE),
    _p("tls-1-1", ("TLSv1.1", "TLSv1.2"), BASE),
    _p("tls-1-2", ("TLSv1.2",), BASE),
    _p("tls-1-0-inherit", ("TLSv1", "TLSv1.1", "TLSv1.2"), BASE + LEGACY),
    _p("tls-1-2-strict", ("TLSv1.2",), tuple(c for c in BASE if c not in SHA1_CBC)),
    _p("tls-1-2-fs", ("TLSv1.2",), FS),
    _p("tls-1-0-with-1-3", ("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"), BASE, TLS13),
    _p("tls-1-2-fs-with-1-3", ("TLSv1.2", "TLSv1.3"), FS, TLS13),
    _p("tls-1-2-strict-no-cbc", ("TLSv1.2",), NO_CBC),
    _p("hybrid-policy-1-0", ("TLSv1.1", "TLSv1.2"), BASE),
)}


def custom_policy_problems(protocols, ciphers) -> list[str]:
    """Why a custom policy can't be used, if it can't."""
    problems = []
    for c in ciphers:
        if any(tag in c for tag in NATIONAL):
            problems.append(f"{c}: the SM2/SM4 national suites need a crypto library "
                            "lbcore does not have")
        elif c not in CUSTOM_ALLOWED:
            problems.append(f"{c}: not an allowed cipher suite")
    tls13 = [c for c in ciphers if c.startswith("TLS_")]
    legacy = [c for c in ciphers if not c.startswith("TLS_")]
    if "TLSv1.3" in protocols and not tls13:
        problems.append("TLSv1.3 is enabled but no TLS_ suite is chosen")
    if any(p != "TLSv1.3" for p in protocols) and not legacy:
        problems.append("TLS 1.2 or older is enabled but no TLS 1.2 suite is chosen")
    return problems


def resolve_policy(cfg, name: str) -> ResolvedPolicy:
    """A predefined policy by name, else the config's custom policy of that name."""
    if name in PREDEFINED:
        return PREDEFINED[name]
    custom = cfg.security_policies[name]
    return ResolvedPolicy(name, tuple(custom.protocols),
                          tuple(c for c in custom.ciphers if not c.startswith("TLS_")),
                          tuple(c for c in custom.ciphers if c.startswith("TLS_")))


# ---- what `lbcore policies` and docs/security-policies.md show ----------------------------

def default_policy() -> str:
    """The listener's default, read from the config model so that the table
    can never disagree with what a listener without the key gets."""
    from lbcore.config.model import Listener  # lbcore.config imports this module

    return Listener.model_fields["security_policy"].default


def _versions(p: ResolvedPolicy) -> str:
    return ", ".join("1.0" if v == "TLSv1" else v.removeprefix("TLSv") for v in p.versions)


def all_policies(cfg=None) -> list[tuple[ResolvedPolicy, str]]:
    """(policy, kind) for every predefined policy, then a config's custom ones."""
    out = [(p, "predefined") for p in PREDEFINED.values()]
    if cfg is not None:
        out += [(resolve_policy(cfg, name), "custom") for name in cfg.security_policies]
    return out


def policy_table(cfg=None) -> str:
    """One line per policy: name, TLS versions, how many suites of each kind."""
    default = default_policy()
    rows = [("policy", "kind", "TLS versions", "TLS<=1.2 suites", "TLS 1.3 suites")]
    for p, kind in all_policies(cfg):
        rows.append((p.name + (" (default)" if p.name == default else ""), kind, _versions(p),
                     str(len(p.ciphers)) if p.ciphers else "-",
                     str(len(p.tls13_suites)) if p.tls13_suites else "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in rows]
    return "\n".join(lines) + "\n\n`lbcore policies NAME` lists a policy's suites in order."


def describe(name: str, cfg=None) -> str | None:
    """A policy's versions and suites in the server's preference order; None
    if there is no such policy."""
    found = [(p, kind) for p, kind in all_policies(cfg) if p.name == name]
    if not found:
        return None
    p, kind = found[0]
    out = [f"{p.name}: {kind}" + (", the default" if p.name == default_policy() else ""),
           f"TLS versions: {_versions(p)}"]
    if p.ciphers:
        out.append("TLS 1.2 and older suites, in the server's order of preference:")
        out += [f"  {i:2d}. {c}" for i, c in enumerate(p.ciphers, 1)]
    if p.tls13_suites:
        out.append("TLS 1.3 suites, in the server's order of preference:")
        out += [f"  {i:2d}. {c}" for i, c in enumerate(p.tls13_suites, 1)]
    return "\n".join(out)


def policies_markdown() -> str:
    """docs/security-policies.md, generated (lbcore.config.reference)."""
    default = default_policy()
    out = ["# TLS security policies", "",
           "<!-- Generated by `python -m lbcore.config.reference --write docs` from",
           "     lbcore/tls/policies.py; tests/test_docs.py fails when it is stale. -->", "",
           "A listener's `security_policy` names one of these, or a key of the",
           "configuration's `security_policies` (custom policies: `protocols` and",
           "`ciphers`, see [configuration.md](configuration.md)). The server's order of",
           "preference wins (server cipher preference is on). A listener without the",
           f"key uses **{default}**: TLS 1.3, and TLS 1.2 with forward-secret",
           "(ECDHE) suites only, as HAProxy's and nginx's defaults offer TLS 1.3.",
           "`lbcore policies` prints the same table, `lbcore policies NAME` one policy.",
           "", "| policy | TLS versions | TLS 1.2 and older suites, in order | "
           "TLS 1.3 suites, in order |", "|---|---|---|---|"]
    for p, _ in all_policies():
        name = f"`{p.name}`" + (" (default)" if p.name == default else "")
        ciphers = "<br>".join(p.ciphers) or "-"
        tls13 = "<br>".join(p.tls13_suites) or "-"
        out.append(f"| {name} | {_versions(p)} | {ciphers} | {tls13} |")
    out += ["", "A custom policy may choose from these suites:", "",
            ", ".join(f"`{c}`" for c in sorted(CUSTOM_ALLOWED)) + ".", "",
            "The SM2/SM4 national suites of `hybrid-policy-1-0` need a crypto library",
            "lbcore does not have: a custom policy asking for them is refused.", ""]
    return "\n".join(out)
