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
