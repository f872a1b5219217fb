"""Lot/tick rounding and the one size valid for both legs."""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from perpbot.exec.risk import Reason
from perpbot.exec.sizing import (
    choose_size,
    round_down,
    round_price,
    round_qty,
    round_up,
    to_decimal,
)
from perpbot.exec.venues.base import Market, Side

BTC = Market("BTC-PERP", tick_size=D("0.1"), lot_size=D("0.001"), min_notional_usd=D(5))


def test_to_decimal_uses_the_shortest_repr() -> None:
    assert to_decimal(60000.1) == D("60000.1")
    assert to_decimal(0.1 + 0.2) == D("0.30000000000000004")  # what was written is kept


@pytest.mark.parametrize(
    ("x", "step", "down", "up"),
    [
        (D("1.2345"), D("0.001"), D("1.234"), D("1.235")),
        (D("1.234"), D("0.001"), D("1.234"), D("1.234")),  # on the grid: unchanged
        (D("60000.05"), D("0.1"), D("60000.0"), D("60000.1")),
        (D(7), D(5), D(5), D(10)),
    ],
)
def test_round_down_and_up(x: D, step: D, down: D, up: D) -> None:
    assert round_down(x, step) == down
    assert round_up(x, step) == up


def test_round_qty_never_rounds_up() -> None:
    assert round_qty(D("0.0169999"), D("0.001")) == D("0.016")


def test_buy_price_rounds_up_sell_price_down() -> None:
    assert round_price(D("60000.04"), D("0.1"), Side.BUY) == D("60000.1")
    assert round_price(D("60000.04"), D("0.1"), Side.SELL) == D("60000.0")
    assert round_price(D("60000.1"), D("0.1"), Side.BUY) == D("60000.1")


def _size(notional: str = "1000", buy: str = "60000", sell: str = "60300",
          buy_top: str = "1", sell_top: str = "1", bm: Market = BTC, sm: Market = BTC):
    return choose_size(trade_notional_usd=D(notional), buy_price=D(buy), sell_price=D(sell),
                       buy_top_size=D(buy_top), sell_top_size=D(sell_top),
                       buy_market=bm, sell_market=sm)


def test_size_is_notional_at_the_dearer_price_rounded_down_to_the_lot() -> None:
    r = _size()
    assert r.reason is Reason.OK
    assert r.qty == D("0.016")  # 1000 / 60300 = 0.01658...
    assert r.qty * D(60300) <= D(1000)


def test_size_is_capped_by_both_tops_of_book() -> None:
    assert _size(buy_top="0.0105").qty == D("0.010")
    assert _size(sell_top="0.0123").qty == D("0.012")


def test_nothing_left_after_rounding_is_no_size() -> None:
    r = _size(sell_top="0.0009")
    assert (r.qty, r.reason) == (D(0), Reason.NO_SIZE)
    assert _size(buy_top="0").reason is Reason.NO_SIZE


def test_below_min_notional_is_refused_on_either_leg() -> None:
    strict = Market("BTC-PERP", D("0.1"), D("0.001"), min_notional_usd=D(100))
    r = _size(buy_top="0.001", sm=strict)
    assert r.reason is Reason.MIN_NOTIONAL
    assert "sell" in r.detail
    assert _size(buy_top="0.001", bm=strict).reason is Reason.MIN_NOTIONAL


def test_the_coarser_lot_wins_when_legs_differ() -> None:
    coarse = Market("BTC-PERP", D("0.1"), D("0.01"), D(5))
    r = _size(notional="5000", sm=coarse)  # 5000 / 60300 = 0.0829
    assert r.qty == D("0.08")


def test_lots_without_a_common_grid_are_refused() -> None:
    odd = Market("BTC-PERP", D("0.1"), D("0.003"), D(5))
    two = Market("BTC-PERP", D("0.1"), D("0.002"), D(5))
    r = _size(notional="5000", bm=odd, sm=two)  # 0.081 on the 0.003 grid is off the 0.002 grid
    assert r.reason is Reason.NO_SIZE


def test_non_positive_prices_are_refused() -> None:
    assert _size(buy="0").reason is Reason.NO_SIZE
