"""A simple, obviously correct oracle for IpTrie: scan every network."""

import ipaddress


def longest_prefix(entries, ip: str) -> int:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return -1
    if addr.version == 6 and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    best_len, best_val = -1, -1
    for network, value in entries:
        net = ipaddress.ip_network(network, strict=False)
        if net.version == 6 and net.network_address.ipv4_mapped is not None \
                and net.prefixlen >= 96:
            net = ipaddress.ip_network(
                f"{net.network_address.ipv4_mapped}/{net.prefixlen - 96}")
        if net.version == addr.version and addr in net and net.prefixlen >= best_len:
            best_len, best_val = net.prefixlen, value
    return best_val
