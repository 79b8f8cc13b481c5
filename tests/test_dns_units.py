"""Member host names -> member sets (lbcore/dns.py) and the pool's swap."""

from __future__ import annotations

import pytest

from lbcore.config import load_config_text
from lbcore.dns import ResolveError, resolve_addresses, resolve_config
from lbcore_ext.balancer import ALG_SOURCE_IP_HASH, Member, Pool


def test_names_expand_to_every_address(tmp_path, monkeypatch):
    hosts = tmp_path / "hosts"
    hosts.write_text("10.0.0.2 svc.test\n10.0.0.1 svc.test  # two pods\n10.0.0.2 svc.test\n"
                     "fd00::1 six.test\n")
    monkeypatch.setenv("LBCORE_TEST_HOSTS", str(hosts))
    assert resolve_addresses("svc.test") == ["10.0.0.1", "10.0.0.2"]    # sorted, unique
    assert resolve_addresses("six.test") == ["fd00::1"]
    assert resolve_addresses("10.1.1.1") == ["10.1.1.1"]
    with pytest.raises(ResolveError, match="'gone.invalid' does not resolve"):
        resolve_addresses("gone.invalid")
    cfg = load_config_text("""\
listeners: [{name: w, protocol: HTTP, port: 8080, default_pool: p}]
pools:
  p:
    members:
      - {address: svc.test, port: 80}
      - {name: one, address: six.test, port: 80}
      - {address: 10.9.9.9, port: 81}
""")
    (members,) = resolve_config(cfg).values()
    assert [(r.member, r.name, r.host) for r in members] == [
        (0, "svc.test:80/10.0.0.1", "10.0.0.1"), (0, "svc.test:80/10.0.0.2", "10.0.0.2"),
        (1, "one", "fd00::1"), (2, "10.9.9.9:81", "10.9.9.9")]


def test_pool_swaps_its_member_set():
    a, b, c, d = (Member(n, f"10.0.0.{i}", 80) for i, n in enumerate("abcd", 1))
    pool = Pool("p", [a, b, c], algorithm=ALG_SOURCE_IP_HASH)
    before = {ip: pool.pick_for_test(client_ip=ip) for ip in (b"1.1.1.%d" % i for i in range(90))}
    assert set(before.values()) == {a, b, c}
    pool.set_members([b, c])
    after = {ip: pool.pick_for_test(client_ip=ip) for ip in before}
    # Consistent hashing: clients of the members that stayed stay with them.
    assert all(after[ip] is m for ip, m in before.items() if m is not a)
    pool.set_members([b, c, d])
    assert d in {pool.pick_for_test(client_ip=ip) for ip in before}
