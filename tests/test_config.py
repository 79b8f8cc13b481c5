"""The configuration model: ranges, defaults, errors with file:line:path."""

from __future__ import annotations

import pytest
import trustme
import yaml
from pydantic import ValidationError

from lbcore.config import ConfigError, load_config, load_config_text
from lbcore.tls.policies import PREDEFINED, resolve_policy

BASE = {
    "listeners": [{"name": "web", "protocol": "HTTP", "port": 8080, "default_pool": "p"}],
    "pools": {"p": {"members": [{"address": "127.0.0.1", "port": 9000}]}},
}


def cfg_text(**overrides) -> str:
    data = yaml.safe_load(yaml.safe_dump(BASE))
    for dotted, value in overrides.items():
        node = data
        parts = dotted.split(".")
        for part in parts[:-1]:
            node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
        node[parts[-1]] = value
    return yaml.safe_dump(data, sort_keys=False)


def errors_of(text: str, base_dir=None) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        load_config_text(text, "lb.yaml", base_dir)
    return [str(i) for i in exc.value.issues]


RANGES = [
    ("listeners.0.idle_timeout", 0, 4000),
    ("listeners.0.request_timeout", 1, 300),
    ("listeners.0.response_timeout", 1, 300),
    ("listeners.0.port", 1, 65535),
    ("listeners.0.limits.max_headers", 1, 10000),
    ("pools.p.members.0.weight", 0, 100),
    ("pools.p.members.0.port", 1, 65535),
    ("pools.p.health_check.interval", 1, 50),
    ("pools.p.health_check.timeout", 1, 50),
    ("pools.p.health_check.healthy_threshold", 1, 10),
    ("pools.p.health_check.unhealthy_threshold", 1, 10),
]


@pytest.mark.parametrize("key,lo,hi", RANGES)
def test_range_boundaries(key, lo, hi):
    load_config_text(cfg_text(**{key: lo}))
    load_config_text(cfg_text(**{key: hi}))
    path = key.replace(".0.", "[0].").replace(".0", "[0]")
    for bad in (lo - 1, hi + 1):
        (err,) = errors_of(cfg_text(**{key: bad}))
        assert err.endswith(f"{path}: {bad} is outside {lo}-{hi}"), err


def test_sticky_and_slow_start_ranges():
    for value, ok in ((1, True), (1440, True), (0, False), (1441, False)):
        text = cfg_text(**{"pools.p.sticky_session": {"type": "lb_cookie",
                                                      "timeout_minutes": value}})
        if ok:
            load_config_text(text)
        else:
            assert "timeout_minutes" in errors_of(text)[0]
    for value, ok in ((30, True), (1200, True), (29, False), (1201, False)):
        text = cfg_text(**{"pools.p.slow_start": {"enabled": True, "duration": value}})
        assert ok == (not _fails(text))


def _fails(text):
    try:
        load_config_text(text)
        return False
    except ConfigError:
        return True


def test_defaults_follow_the_spec():
    cfg = load_config_text(cfg_text())
    lst = cfg.listeners[0]
    assert (lst.idle_timeout, lst.request_timeout, lst.response_timeout) == (60, 60, 60)
    assert lst.connect_timeout == 5 and lst.security_policy == "tls-1-2-fs-with-1-3"
    assert lst.insert_headers.x_forwarded_for == "append" and lst.transfer_client_ip
    assert lst.limits.max_body == 10737418240 and lst.limits.max_request_line == 8192
    pool = cfg.pools["p"]
    assert pool.algorithm == "weighted_round_robin" and pool.members[0].weight == 1
    assert pool.members[0].name == "127.0.0.1:9000"
    hc = pool.health_check
    assert (hc.interval, hc.timeout, hc.healthy_threshold, hc.expected_codes) == (5, 3, 3, "200")


def test_all_errors_at_once_with_lines_and_did_you_mean():
    text = """\
listeners:
  - name: web
    protocol: HTTP
    port: 8080
    idle_timout: 5
    request_timeout: 0
    default_pool: p
pools:
  p:
    algorithm: round_robin
    members: [{address: 127.0.0.1, port: 9000}]
"""
    errs = errors_of(text)
    assert errs == [
        "lb.yaml:5: listeners[0].idle_timout: unknown key (did you mean 'idle_timeout'?)",
        "lb.yaml:6: listeners[0].request_timeout: 0 is outside 1-300",
        "lb.yaml:10: pools.p.algorithm: 'round_robin' is not one of "
        "'weighted_round_robin', 'weighted_least_connections' or 'source_ip_hash'",
    ]


def test_wrong_type_and_missing_and_duplicate_key():
    (err,) = errors_of(cfg_text(**{"listeners.0.idle_timeout": "abc"}))
    assert "idle_timeout: expected an integer, got 'abc'" in err
    (err,) = errors_of("listeners:\n  - {name: w, protocol: HTTP, port: 80}\n"
                       "pools:\n  p: {members: []}\n")
    assert err == "lb.yaml:2: listeners[0].default_pool: required key missing"
    (err,) = errors_of("pools: {}\npools: {}\n")
    assert err.startswith("lb.yaml:2: pools: duplicate key")
    (err,) = errors_of("listeners: [\n")
    assert err.startswith("lb.yaml:") and "YAML" in err


def test_dangling_references_and_ports():
    text = cfg_text(**{"listeners.0.default_pool": "pp"})
    data = yaml.safe_load(text)
    data["listeners"].append({"name": "web", "protocol": "HTTP", "port": 8080,
                              "default_pool": "p", "security_policy": "tls-9",
                              "access_control": {"mode": "blacklist", "ip_group": "bad"}})
    errs = errors_of(yaml.safe_dump(data, sort_keys=False))
    joined = "\n".join(errs)
    assert "listeners[0].default_pool: no pool named 'pp' (did you mean 'p'?)" in joined
    assert "listeners[1].name: 'web' is also the name of listeners[0]" in joined
    assert "listeners[1].port: port 8080 is already used by listeners[0]" in joined
    assert "listeners[1].security_policy: no security policy named 'tls-9'" in joined
    assert "listeners[1].access_control.ip_group: no ip group named 'bad'" in joined


def test_duplicate_member_names_and_admin_port_collision():
    text = cfg_text(**{"pools.p.members": [
        {"name": "a", "address": "127.0.0.1", "port": 9000},
        {"name": "a", "address": "127.0.0.1", "port": 9001},
        {"address": "127.0.0.1", "port": 9002}, {"address": "127.0.0.1", "port": 9002}],
        "load_balancer": {"admin": {"port": 8080}}})
    joined = "\n".join(errors_of(text))
    assert "pools.p.members[1].name: 'a' is also the name of members[0]" in joined
    assert "pools.p.members[3].name: '127.0.0.1:9002' is also the name of members[2]" in joined
    assert ("load_balancer.admin.port: port 8080 is also the port of listeners[0] ('web')"
            in joined)
    # Every line is located in the file.
    assert all(e.startswith("lb.yaml:") for e in errors_of(text))


def test_ip_groups_normalised_and_deduplicated():
    cfg = load_config_text(cfg_text(**{"ip_groups": {"g": {"addresses": [
        "10.0.0.1", "10.0.0.1/32", "2001:DB8::/32", "2001:db8::/32", "192.0.2.0/24"]}}}))
    assert cfg.ip_groups["g"].addresses == ("10.0.0.1/32", "2001:db8::/32", "192.0.2.0/24")
    errs = errors_of(cfg_text(**{"ip_groups": {"g": {"addresses": ["10.0.0.1/8", "nope"]}}}))
    assert len(errs) == 2 and "host bits set" in errs[0] and "'nope'" in errs[1]


def test_model_is_immutable():
    cfg = load_config_text(cfg_text())
    with pytest.raises(ValidationError):
        cfg.listeners[0].port = 1
    with pytest.raises(TypeError):
        cfg.pools["x"] = None


@pytest.fixture
def tls_files(tmp_path):
    ca = trustme.CA()
    out = {}
    for name, kt, hosts in (("rsa", trustme.KeyType.RSA, ("a.test",)),
                            ("ec", trustme.KeyType.ECDSA, ("a.test",)),
                            ("ec2", trustme.KeyType.ECDSA, ("a.test", "b.test"))):
        c = ca.issue_cert(*hosts, key_type=kt)
        (tmp_path / f"{name}.crt").write_bytes(b"".join(p.bytes() for p in c.cert_chain_pems))
        (tmp_path / f"{name}.key").write_bytes(c.private_key_pem.bytes())
    (tmp_path / "ca.crt").write_bytes(ca.cert_pem.bytes())
    return tmp_path, out


def https_text(certs: dict, **listener) -> str:
    data = yaml.safe_load(cfg_text())
    data["certificates"] = certs
    data["listeners"][0].update({"protocol": "HTTPS", "server_certificate": "main", **listener})
    return yaml.safe_dump(data, sort_keys=False)


def test_certificates_checked(tls_files):
    d, _ = tls_files
    ok = {"main": {"type": "server", "certificate": "rsa.crt", "private_key": "rsa.key"}}
    cfg = load_config_text(https_text(ok), base_dir=d)
    info = cfg.certificates["main"].info
    assert info.domains == ("a.test",) and info.key_type == "RSA" and info.days_to_expiry > 100
    assert cfg.certificates["main"].certificate.is_absolute()
    mismatch = {"main": {"type": "server", "certificate": "rsa.crt", "private_key": "ec.key"}}
    (err,) = errors_of(https_text(mismatch), d)
    assert "certificates.main.private_key" in err and "does not match" in err
    missing = {"main": {"type": "server", "certificate": "none.crt", "private_key": "ec.key"}}
    (err,) = errors_of(https_text(missing), d)
    assert "certificates.main.certificate: cannot read" in err
    ca_as_server = {"main": {"type": "ca", "certificate": "ca.crt"}}
    (err,) = errors_of(https_text(ca_as_server), d)
    assert "is a ca certificate" in err
    (err,) = errors_of(https_text(ok, ssl_authentication="mutual"), d)
    assert "mutual authentication needs ca_certificate" in err


def test_sni_domains_unique_per_key_type(tls_files):
    d, _ = tls_files
    certs = {name: {"type": "server", "certificate": f"{name}.crt", "private_key": f"{name}.key"}
             for name in ("rsa", "ec", "ec2")}
    certs["main"] = certs["rsa"]
    # an ECDSA and an RSA certificate for one name: allowed (served by client capability)
    load_config_text(https_text(certs, sni={"enabled": True, "certificates": ["rsa", "ec"]}),
                     base_dir=d)
    errs = errors_of(https_text(certs, sni={"enabled": True, "certificates": ["ec", "ec2"]}), d)
    assert any("domain a.test is in both 'ec' and 'ec2'" in e for e in errs)


@pytest.mark.parametrize("name", sorted(PREDEFINED))
def test_predefined_policies_resolve_and_load(name, tls_files):
    d, _ = tls_files
    ok = {"main": {"type": "server", "certificate": "ec.crt", "private_key": "ec.key"}}
    load_config_text(https_text(ok, security_policy=name), base_dir=d)
    policy = resolve_policy(None, name)
    assert policy.versions and policy.ciphers


def test_custom_policy_rules():
    bad = cfg_text(**{"security_policies": {"x": {"protocols": ["TLSv1.3"],
                                                  "ciphers": ["ECDHE-RSA-AES128-GCM-SHA256",
                                                              "ECC-SM4-SM3"]}}})
    errs = errors_of(bad)
    assert any("SM2/SM4" in e for e in errs) and any("no TLS_ suite" in e for e in errs)


def test_load_config_reads_file(tmp_path):
    f = tmp_path / "lb.yaml"
    f.write_text(cfg_text())
    assert load_config(f).source == f
    with pytest.raises(ConfigError) as exc:
        load_config(tmp_path / "absent.yaml")
    assert "cannot read" in str(exc.value)


def test_schema_errors_do_not_hide_the_rest():
    """References are checked on what passed the schema; indexes of removed
    items are mapped back, and an entry that failed the schema is not
    reported again as missing where it is referenced."""
    text = """\
listeners:
  - {name: a, protocol: HTTP, port: 70000, default_pool: p}
  - {name: b, protocol: HTTP, port: 8081, default_pool: nope}
  - {name: b, protocol: HTTP, port: 8082, default_pool: q}
  - {name: c, protocol: HTTP, port: 8083, default_pool: r}
pools:
  p:
    members:
      - {address: 127.0.0.1, port: 0}
      - {address: 127.0.0.1, port: 9001}
      - {address: 127.0.0.1, port: 9001}
  q: {algorithm: fastest}
  r: {algorithm: source_ip_hash, slow_start: {enabled: true}}
"""
    assert errors_of(text) == [
        "lb.yaml:2: listeners[0].port: 70000 is outside 1-65535",
        "lb.yaml:3: listeners[1].default_pool: no pool named 'nope'",
        "lb.yaml:4: listeners[2].name: 'b' is also the name of listeners[1]",
        "lb.yaml:9: pools.p.members[0].port: 0 is outside 1-65535",
        "lb.yaml:11: pools.p.members[2].name: '127.0.0.1:9001' is also the name of "
        "members[1] (members without a name are named address:port)",
        "lb.yaml:12: pools.q.algorithm: 'fastest' is not one of 'weighted_round_robin', "
        "'weighted_least_connections' or 'source_ip_hash'",
        "lb.yaml:13: pools.r: slow_start works with weighted_round_robin only",
    ]
