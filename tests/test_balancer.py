"""Smooth weighted round robin: exact shares over a cycle, no bursts."""

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from lbcore_ext.balancer import Member, Pool


def make_pool(weights):
    return Pool("p", [Member(f"m{i}", "127.0.0.1", 1000 + i, w) for i, w in enumerate(weights)])


def test_nginx_sequence():
    pool = make_pool([5, 1, 1])
    assert [pool.pick_for_test().name for _ in range(7)] == [
        "m0", "m0", "m1", "m0", "m2", "m0", "m0"]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=100), min_size=1, max_size=8))
def test_shares_proportional_to_weights(weights):
    pool = make_pool(weights)
    total = sum(weights)
    picks = 10_000
    counts = Counter()
    for _ in range(picks):
        m = pool.pick_for_test()
        if m is None:
            assert total == 0
            return
        counts[m.name] += 1
    for i, w in enumerate(weights):
        share = counts[f"m{i}"] / picks
        assert abs(share - w / total) <= 0.01, (weights, counts)


def test_weight_zero_and_unhealthy_get_nothing():
    pool = make_pool([1, 0, 1])
    pool.members[2].healthy = False
    assert {pool.pick_for_test().name for _ in range(50)} == {"m0"}


def test_tried_members_are_skipped():
    pool = make_pool([1, 1])
    first = pool.pick_for_test()
    assert all(pool.pick_for_test([first]) is not first for _ in range(10))
    assert pool.pick_for_test(list(pool.members)) is None


def test_no_bursts():
    """Smoothness: with weights 3:1, the light member is never starved for
    more than 3 picks in a row."""
    pool = make_pool([3, 1])
    seq = "".join(pool.pick_for_test().name[-1] for _ in range(40))
    assert "0000" not in seq


# ---- weighted least connections ---------------------------------------------------

from lbcore_ext.balancer import (  # noqa: E402
    ALG_SOURCE_IP_HASH,
    ALG_WLC,
    STICKY_APP_COOKIE,
    STICKY_LB_COOKIE,
    STICKY_SOURCE_IP,
)


def test_wlc_prefers_least_active_per_weight():
    pool = Pool("p", [Member("a", "127.0.0.1", 1, 1), Member("b", "127.0.0.1", 2, 2)],
                algorithm=ALG_WLC)
    a, b = pool.members
    a.active, b.active = 1, 1
    assert pool.pick_for_test() is b          # 1/2 < 1/1
    a.active, b.active = 1, 3
    assert pool.pick_for_test() is a          # 1/1 < 3/2


def test_wlc_ties_rotate():
    pool = Pool("p", [Member(f"m{i}", "127.0.0.1", i + 1, 1) for i in range(3)],
                algorithm=ALG_WLC)
    assert {pool.pick_for_test().name for _ in range(6)} == {"m0", "m1", "m2"}


# ---- consistent hashing -------------------------------------------------------------

def hash_pool(n, weight=1):
    return Pool("p", [Member(f"m{i}", f"10.0.0.{i + 1}", 80, weight) for i in range(n)],
                algorithm=ALG_SOURCE_IP_HASH)


def ips(count):
    return [f"192.0.{i // 250}.{i % 250}".encode() for i in range(count)]


@settings(max_examples=15, deadline=None)
@given(st.integers(min_value=3, max_value=30))
def test_consistent_hash_remaps_about_one_nth(n):
    clients = ips(4000)
    before = hash_pool(n)
    after = hash_pool(n + 1)          # one member added
    moved = sum(before.pick_for_test(None, c).name != after.pick_for_test(None, c).name
                for c in clients)
    assert moved / len(clients) <= 1.5 / (n + 1)
    # removing a member moves only its own clients
    removed = "m0"
    before_map = {c: before.pick_for_test(None, c).name for c in clients}
    smaller = Pool("p", [m for m in hash_pool(n).members if m.name != removed],
                   algorithm=ALG_SOURCE_IP_HASH)
    moved = [c for c in clients if before_map[c] != smaller.pick_for_test(None, c).name]
    assert all(before_map[c] == removed for c in moved)
    assert len(moved) / len(clients) <= 1.5 / n


def test_hash_is_stable_and_skips_unhealthy():
    pool = hash_pool(5)
    c = b"198.51.100.7"
    first = pool.pick_for_test(None, c)
    assert all(pool.pick_for_test(None, c) is first for _ in range(10))
    first.healthy = False
    assert pool.pick_for_test(None, c) is not first


# ---- sticky sessions -----------------------------------------------------------------

def test_lb_cookie_binds_to_member_by_opaque_token():
    pool = Pool("p", [Member("a", "10.0.0.1", 80), Member("b", "10.0.0.2", 80)],
                sticky=STICKY_LB_COOKIE, cookie_name=b"s")
    b = pool.members[1]
    assert b"10.0.0.2" not in b.token
    cookie = b"x=1; s=" + b.token + b"; y=2"
    assert all(pool.pick_for_test(None, None, cookie) is b for _ in range(10))
    b.healthy = False                         # binding holds only while healthy
    assert pool.pick_for_test(None, None, cookie) is pool.members[0]
    assert pool.pick_for_test(None, None, b"s=bogus") is not None


def test_app_cookie_binding_expires():
    now = [100.0]
    pool = Pool("p", [Member("a", "10.0.0.1", 80), Member("b", "10.0.0.2", 80)],
                sticky=STICKY_APP_COOKIE, cookie_name=b"JSESSIONID", cookie_max_age=60,
                clock=lambda: now[0])
    b = pool.members[1]
    pool.remember_app_cookie(b"abc", b)
    assert all(pool.pick_for_test(None, None, b"JSESSIONID=abc") is b for _ in range(5))
    now[0] += 61
    picks = {pool.pick_for_test(None, None, b"JSESSIONID=abc").name for _ in range(4)}
    assert picks == {"a", "b"}


def test_source_ip_sticky():
    pool = Pool("p", [Member(f"m{i}", f"10.0.0.{i}", 80) for i in range(4)],
                sticky=STICKY_SOURCE_IP)
    assert len({pool.pick_for_test(None, b"203.0.113.9").name for _ in range(20)}) == 1


# ---- slow start ------------------------------------------------------------------------

def test_slow_start_ramps_linearly():
    now = [1000.0]
    new = Member("new", "10.0.0.2", 80, 10)
    old = Member("old", "10.0.0.1", 80, 10)
    new.up_since = 1000.0
    pool = Pool("p", [old, new], slow_start=100.0, clock=lambda: now[0])

    def share():
        c = Counter(pool.pick_for_test().name for _ in range(2000))
        return c["new"] / 2000

    now[0] = 1010.0                           # 10% in: weight 1 of 10
    assert 0.05 <= share() <= 0.12
    now[0] = 1050.0                           # half way: 5 of 10
    assert 0.30 <= share() <= 0.36
    now[0] = 1200.0                           # done: equal shares
    assert 0.49 <= share() <= 0.51
