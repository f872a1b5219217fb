"""Positions in Decimal: average entry, realized PnL with fees, flips, the status mirror."""

from __future__ import annotations

from decimal import Decimal as D

import numpy as np
import pytest

from perpbot.exec.positions import FLAT, Position, PositionBook, apply_fill, reduces
from perpbot.exec.venues.base import Side
from perpbot.shm.layout import POSITION_DTYPE


def test_opening_sets_entry_and_pays_the_fee() -> None:
    p = apply_fill(FLAT, Side.BUY, D("0.016"), D("60000.0"), D("0.48"))
    assert p == Position(D("0.016"), D("60000.0"), D("-0.48"), D("0.48"))


def test_adding_averages_the_entry() -> None:
    p = apply_fill(FLAT, Side.BUY, D(1), D(100), D(0))
    p = apply_fill(p, Side.BUY, D(3), D(200), D(0))
    assert p.qty == D(4) and p.avg_price == D(175)


def test_closing_a_long_realizes_price_difference_minus_all_fees() -> None:
    p = apply_fill(FLAT, Side.BUY, D("0.016"), D("60000.0"), D("0.48"))
    p = apply_fill(p, Side.SELL, D("0.016"), D("60150.0"), D("0.4812"))
    assert p.flat and p.avg_price == 0
    assert p.realized_pnl == D("0.016") * D(150) - D("0.48") - D("0.4812")
    assert p.realized_pnl == D("1.4388")
    assert p.fees == D("0.9612")
    assert isinstance(p.realized_pnl, D)


def test_closing_a_short_realizes_the_other_way() -> None:
    p = apply_fill(FLAT, Side.SELL, D(2), D(100), D("0.1"))
    assert p.qty == D(-2) and p.avg_price == D(100)
    p = apply_fill(p, Side.BUY, D("0.5"), D(90), D("0.05"))
    assert p.qty == D("-1.5") and p.avg_price == D(100)  # a partial close keeps the entry
    assert p.realized_pnl == D("0.5") * D(10) - D("0.15")


def test_a_fill_through_flat_flips_at_the_fill_price() -> None:
    p = apply_fill(FLAT, Side.BUY, D(1), D(100), D(0))
    p = apply_fill(p, Side.SELL, D(3), D(110), D(0))
    assert p.qty == D(-2) and p.avg_price == D(110) and p.realized_pnl == D(10)


def test_non_positive_fill_is_an_error() -> None:
    with pytest.raises(ValueError):
        apply_fill(FLAT, Side.BUY, D(0), D(1), D(0))


def test_reduces() -> None:
    assert reduces(D(1), Side.SELL, D(1))
    assert reduces(D(-1), Side.BUY, D("0.5"))
    assert not reduces(D(1), Side.SELL, D("1.5"))  # would flip
    assert not reduces(D(1), Side.BUY, D("0.1"))  # would add
    assert not reduces(D(0), Side.SELL, D("0.1"))


def test_book_keeps_each_venue_and_symbol_apart_and_mirrors_floats() -> None:
    book = PositionBook(2, 3)
    book.apply(0, 1, Side.BUY, D("0.5"), D("3000.01"), D("0.75"))
    book.apply(1, 1, Side.SELL, D("0.5"), D("3010.00"), D("0.75"))
    assert book.qty(0, 1) == D("0.5") and book.qty(1, 1) == D("-0.5")
    assert book.qty(0, 0) == 0 and book.get(1, 2) is FLAT
    assert book.realized_pnl() == D("-1.50")
    view = np.zeros((2, 3), POSITION_DTYPE)
    book.mirror(view, 1, 1)
    assert view[1, 1]["qty"] == -0.5 and view[1, 1]["avg_price"] == 3010.0
    assert [k for k, _ in book.items()] == [(0, 1), (1, 1)]


def test_net_per_symbol_across_venues_and_funding_in_realized() -> None:
    book = PositionBook(3, 2)
    book.apply(0, 0, Side.BUY, D("0.5"), D("3000"), D("0"))
    book.apply(1, 0, Side.SELL, D("0.3"), D("3001"), D("0"))
    book.apply(2, 0, Side.SELL, D("0.2"), D("3002"), D("0"))
    book.apply(2, 1, Side.BUY, D("1"), D("10"), D("0"))
    assert book.net(0) == 0  # hedged across three venues
    assert book.net(1) == D("1")
    book.add_funding(2, 1, D("-0.0125"))
    assert book.get(2, 1).realized_pnl == D("-0.0125") and book.get(2, 1).qty == D("1")
