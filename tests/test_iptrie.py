"""IpTrie against the ipaddress-based oracle in tests/reference."""

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from lbcore_ext.iptrie import IpTrie
from tests.reference.ipmatch import longest_prefix

v4_addr = st.integers(0, 2**32 - 1).map(lambda i: str(ipaddress.IPv4Address(i)))
v6_addr = st.integers(0, 2**128 - 1).map(lambda i: str(ipaddress.IPv6Address(i)))
v4_net = st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 32)).map(
    lambda t: str(ipaddress.IPv4Network((t[0], t[1]), strict=False)))
v6_net = st.tuples(st.integers(0, 2**128 - 1), st.integers(0, 128)).map(
    lambda t: str(ipaddress.IPv6Network((t[0], t[1]), strict=False)))


def near(nets):
    """Addresses inside or next to the given networks, so matches are common."""
    return st.sampled_from(nets).flatmap(
        lambda n: st.integers(-2, 2).map(lambda d: _offset(n, d)))


def _offset(network, delta):
    net = ipaddress.ip_network(network)
    addr = int(net.network_address) + delta
    top = 2**32 if net.version == 4 else 2**128
    return str(ipaddress.ip_address(addr % top) if net.version == 4
               else ipaddress.IPv6Address(addr % top))


@settings(max_examples=200, deadline=None)
@given(st.data(), st.lists(st.one_of(v4_net, v6_net), min_size=1, max_size=30))
def test_matches_reference(data, nets):
    entries = [(n, i) for i, n in enumerate(nets)]
    trie = IpTrie(entries)
    probes = data.draw(st.lists(st.one_of(v4_addr, v6_addr, near(nets)), max_size=30))
    for ip in probes:
        assert trie.lookup(ip) == longest_prefix(entries, ip), ip


def test_ipv4_mapped_peers_match_as_ipv4():
    trie = IpTrie([("192.0.2.0/24", 1)])
    assert trie.lookup("::ffff:192.0.2.7") == 1
    assert trie.lookup("::ffff:198.51.100.1") == -1
    mapped = IpTrie([("::ffff:192.0.2.0/120", 2)])
    assert mapped.lookup("192.0.2.200") == 2


def test_single_addresses_and_default_route():
    trie = IpTrie([("198.51.100.7", 1), ("0.0.0.0/0", 0), ("::1", 3)])
    assert trie.lookup("198.51.100.7") == 1
    assert trie.lookup("198.51.100.8") == 0
    assert trie.lookup("::1") == 3
    assert trie.lookup("::2") == -1
    assert trie.lookup("not an ip") == -1
    assert "198.51.100.7" in trie and len(trie) == 3


def test_empty_trie_matches_nothing():
    trie = IpTrie()
    assert trie.lookup("127.0.0.1") == -1 and trie.lookup("::1") == -1
