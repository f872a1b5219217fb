"""The paper venue fills taker orders against the live board, with fees and a ledger."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from decimal import Decimal as D

import pytest
from kit import make_config, segments

from perpbot.exec.venues.base import OrderRequest, OrderStatus, Side, Venue
from perpbot.exec.venues.paper import QUOTE_ASSET, PaperVenue
from perpbot.exec.venues.registry import make_venues
from perpbot.shm import QuoteBoard

NOW = 10**15
BTC, ETH = 0, 1


class Clock:
    def __init__(self) -> None:
        self.t = NOW

    def __call__(self) -> int:
        return self.t


@pytest.fixture
def rig() -> Iterator[tuple[QuoteBoard, PaperVenue]]:
    cfg = make_config()
    with segments(cfg) as (board, _status):
        okx = cfg.venue_names.index("okx")
        venue = PaperVenue("okx", okx, cfg, board, clock=Clock())
        asyncio.run(venue.connect())
        w = board.writer(okx)
        w.write(BTC, 60000.0, 60000.05, 0.5, 0.02, 1, NOW)
        yield board, venue
        w.release()


def order(coid: str, side: Side, qty: str, price: str | None = None, symbol: str = "BTC-PERP",
          reduce_only: bool = False) -> OrderRequest:
    return OrderRequest(coid, symbol, side, D(qty), None if price is None else D(price),
                        reduce_only=reduce_only)


def place(venue: Venue, req: OrderRequest):
    return asyncio.run(venue.place_order(req))


def test_buy_fills_at_the_ask_rounded_up_to_the_tick_with_the_taker_fee(rig) -> None:
    _, venue = rig
    r = place(venue, order("c1", Side.BUY, "0.016", "60000.1"))
    assert r.status is OrderStatus.FILLED
    (f,) = r.fills
    assert (f.side, f.qty, f.price) == (Side.BUY, D("0.016"), D("60000.1"))
    assert f.fee == D("0.016") * D("60000.1") * D("5.0") / D(10000)  # okx taker 5 bps
    assert r.avg_price == D("60000.1") and r.filled_qty == D("0.016")
    assert f.client_order_id == "c1" and f.venue == "okx"


def test_sell_fills_at_the_bid(rig) -> None:
    _, venue = rig
    r = place(venue, order("c1", Side.SELL, "0.1"))  # market order
    assert r.status is OrderStatus.FILLED
    assert r.fills[0].price == D("60000.0")


def test_beyond_the_top_of_book_is_a_partial_fill(rig) -> None:
    _, venue = rig
    r = place(venue, order("c1", Side.BUY, "0.05"))  # ask size 0.02
    assert r.status is OrderStatus.PARTIAL
    assert r.filled_qty == D("0.020")
    assert "top of book" in r.reason


def test_no_quote_is_a_rejection(rig) -> None:
    _, venue = rig
    r = place(venue, order("c1", Side.BUY, "0.1", symbol="ETH-PERP"))  # ETH slot never written
    assert r.status is OrderStatus.REJECTED and r.fills == () and r.reason == "no quote"
    assert venue.ledger == []


def test_a_limit_the_board_no_longer_reaches_expires_unfilled(rig) -> None:
    _, venue = rig
    r = place(venue, order("c1", Side.BUY, "0.01", "60000.0"))  # ask is 60000.1 after rounding
    assert r.status is OrderStatus.EXPIRED and r.filled_qty == 0
    r = place(venue, order("c2", Side.SELL, "0.01", "60000.1"))  # bid is 60000.0
    assert r.status is OrderStatus.EXPIRED


def test_a_client_order_id_is_accepted_once(rig) -> None:
    _, venue = rig
    assert place(venue, order("c1", Side.BUY, "0.01")).status is OrderStatus.FILLED
    again = place(venue, order("c1", Side.BUY, "0.01"))
    assert again.status is OrderStatus.REJECTED and "duplicate" in again.reason
    assert len(venue.ledger) == 1


def test_off_grid_orders_are_refused(rig) -> None:
    _, venue = rig
    assert place(venue, order("c1", Side.BUY, "0.0105")).status is OrderStatus.REJECTED
    assert place(venue, order("c2", Side.BUY, "0.01", "60000.15")).status is OrderStatus.REJECTED


def test_reduce_only_never_adds(rig) -> None:
    _, venue = rig
    r = place(venue, order("c1", Side.SELL, "0.01", reduce_only=True))
    assert r.status is OrderStatus.REJECTED  # flat: nothing to reduce
    place(venue, order("c2", Side.BUY, "0.01"))
    r = place(venue, order("c3", Side.SELL, "0.015", reduce_only=True))
    assert r.status is OrderStatus.PARTIAL and r.filled_qty == D("0.01")
    assert "trimmed" in r.reason


def test_positions_and_balances_come_from_the_ledger(rig) -> None:
    board, venue = rig
    place(venue, order("c1", Side.BUY, "0.02"))
    pos = asyncio.run(venue.positions())
    assert pos["BTC-PERP"].qty == D("0.020") and pos["BTC-PERP"].avg_price == D("60000.1")
    board.writer(1).write(BTC, 60100.0, 60100.1, 1.0, 1.0, 1, NOW)
    place(venue, order("c2", Side.SELL, "0.02"))
    assert asyncio.run(venue.positions()) == {}  # flat positions are not listed
    fees = sum(f.fee for f in venue.ledger)
    expected = D("0.020") * (D("60100.0") - D("60000.1")) - fees
    bal = asyncio.run(venue.balances())[QUOTE_ASSET]
    assert bal.total == expected and bal.free == expected and bal.locked == 0
    assert bal.extra["fees"] == fees
    assert asyncio.run(venue.open_orders()) == []  # IOC: nothing rests
    assert asyncio.run(venue.cancel_order("c1", "BTC-PERP")) is False


def test_an_unconnected_venue_refuses(rig) -> None:
    _, venue = rig
    asyncio.run(venue.close())
    assert place(venue, order("c1", Side.BUY, "0.01")).status is OrderStatus.REJECTED


def test_markets_come_from_the_config(rig) -> None:
    _, venue = rig
    m = venue.markets()
    assert set(m) == {"BTC-PERP", "ETH-PERP", "SOL-PERP"}
    assert (m["BTC-PERP"].tick_size, m["BTC-PERP"].lot_size) == (D("0.1"), D("0.001"))
    assert m["BTC-PERP"].min_notional_usd == D("5.0")


def test_make_venues_gives_one_paper_venue_per_configured_venue() -> None:
    cfg = make_config()
    with segments(cfg) as (board, _):
        venues = make_venues(cfg, board)
        assert [v.name for v in venues] == list(cfg.venue_names)
        assert all(isinstance(v, PaperVenue) for v in venues)
