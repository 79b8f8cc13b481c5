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
