"""Micro-benchmark (not a test): IpTrie lookups per second with 300 and with
100,000 prefixes. Run: .venv/bin/python bench/iptrie_bench.py"""

import ipaddress
import random
import time

from lbcore_ext.iptrie import IpTrie


def run(n_prefixes: int, n_lookups: int = 500_000, seed: int = 7) -> float:
    rnd = random.Random(seed)
    trie = IpTrie()
    for i in range(n_prefixes):
        if i % 4 == 3:
            net = ipaddress.IPv6Network((rnd.getrandbits(128), rnd.randint(16, 64)), strict=False)
        else:
            net = ipaddress.IPv4Network((rnd.getrandbits(32), rnd.randint(8, 32)), strict=False)
        trie.add(str(net))
    probes = [str(ipaddress.IPv4Address(rnd.getrandbits(32))) for _ in range(n_lookups // 2)]
    probes += [str(ipaddress.IPv6Address(rnd.getrandbits(128))) for _ in range(n_lookups // 2)]
    start = time.perf_counter()
    trie.lookup_many(probes)
    return n_lookups / (time.perf_counter() - start)


if __name__ == "__main__":
    for n in (300, 100_000):
        print(f"{n:>7} prefixes: {run(n) / 1e6:.2f} M lookups/s (string parse included)")
