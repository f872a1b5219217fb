"""Fee-aware cross-venue edge."""

from __future__ import annotations

import itertools
import random

import pytest

from perpbot.scanner.edge import best_edge, fee_multipliers


def brute_force(bids, asks, bm, sm, cb, cs):
    best = None
    for i, j in itertools.permutations(range(len(bids)), 2):
        if cb[i] and cs[j]:
            cost = asks[i] * bm[i]
            e = (bids[j] * sm[j] - cost) / cost * 1e4
            if best is None or e > best[2]:
                best = (i, j, e)
    return best


def test_fees_turn_a_gross_spread_into_a_net_edge() -> None:
    bm, sm = fee_multipliers([5.0, 5.0])
    # buy at 100 on venue 0, sell at 100.2 on venue 1: 20 bps gross, ~10 bps net of 2 x 5 bps
    e = best_edge([99.9, 100.2], [100.0, 100.3], bm, sm, [True, True], [True, True])
    assert e is not None and (e.buy_venue, e.sell_venue) == (0, 1)
    assert e.edge_bps == pytest.approx((100.2 * 0.9995 - 100.0 * 1.0005) / (100.0 * 1.0005) * 1e4)
    assert 9.9 < e.edge_bps < 10.0


def test_cheaper_fee_venue_wins_over_a_slightly_better_price() -> None:
    bm, sm = fee_multipliers([10.0, 1.0, 5.0])
    e = best_edge([99.0, 99.0, 101.0], [99.99, 100.0, 102.0], bm, sm, [True] * 3, [True] * 3)
    assert e is not None and e.buy_venue == 1 and e.sell_venue == 2


def test_same_venue_best_on_both_sides_uses_the_runner_up() -> None:
    bm, sm = fee_multipliers([0.0, 0.0, 0.0])
    # venue 0 has both the lowest ask and the highest bid (a wide venue cannot trade with itself)
    e = best_edge([101.0, 100.0, 99.0], [99.0, 100.5, 101.5], bm, sm, [True] * 3, [True] * 3)
    assert e is not None and e.buy_venue != e.sell_venue
    assert e == brute_force([101.0, 100.0, 99.0], [99.0, 100.5, 101.5], bm, sm, [True] * 3, [True] * 3)


def test_excluded_venues_and_too_few_venues() -> None:
    bm, sm = fee_multipliers([5.0, 5.0, 5.0])
    assert best_edge([1, 2, 3], [1.1, 2.1, 3.1], bm, sm, [True, False, False], [True, False, False]) is None
    e = best_edge([100, 200, 300], [101, 201, 301], bm, sm, [True, True, True], [True, True, False])
    assert e is not None and e.sell_venue == 1  # venue 2's bid is stale or thin


def test_matches_brute_force_on_random_books() -> None:
    rng = random.Random(3)
    for _ in range(2000):
        n = rng.randint(2, 8)
        mids = [100 + rng.uniform(-1, 1) for _ in range(n)]
        bids = [m - rng.uniform(0.01, 0.2) for m in mids]
        asks = [m + rng.uniform(0.01, 0.2) for m in mids]
        bm, sm = fee_multipliers([rng.uniform(0, 10) for _ in range(n)])
        cb = [rng.random() > 0.2 for _ in range(n)]
        cs = [rng.random() > 0.2 for _ in range(n)]
        got = best_edge(bids, asks, bm, sm, cb, cs)
        want = brute_force(bids, asks, bm, sm, cb, cs)
        if want is None:
            assert got is None
        else:
            assert got is not None and got.edge_bps == pytest.approx(want[2])


def test_exec_recheck_uses_the_scanner_definition() -> None:
    from decimal import Decimal

    from perpbot.exec.edge import net_edge_bps as exec_edge
    bm, sm = fee_multipliers([5.0, 6.0])
    e = best_edge([0.0, 60090.0], [60000.0, 0.0], bm, sm, [True, False], [False, True])
    assert e is not None
    assert exec_edge(Decimal(60000), Decimal(60090), 5.0, 6.0) == pytest.approx(e.edge_bps, abs=1e-9)
