"""The paper venue: taker, maker and resting orders against the live board, faults, latency,
funding, margin, and a ledger file that outlives the process."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import pytest
from kit import make_config, segments

from perpbot.config import Config
from perpbot.errors import ConfigError, RetryableError
from perpbot.exec.venues.base import (
    FundingRate,
    OpenOrder,
    OrderRequest,
    OrderResult,
    OrderStatus,
    OrderType,
    Side,
    Venue,
)
from perpbot.exec.venues.paper import QUOTE_ASSET, Fault, FaultKind, PaperVenue
from perpbot.exec.venues.registry import make_venues
from perpbot.shm import QuoteBoard
from perpbot.shm.board import BoardWriter

NOW = 10**15
BTC, ETH = 0, 1
HOUR_MS = 3_600_000
#: epoch ms one hour after an 8 h funding boundary
T0 = 59_028 * 8 * HOUR_MS + HOUR_MS


class Clock:
    def __init__(self, t: int = NOW) -> None:
        self.t = t

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


@dataclass
class Paper:
    """A board with okx's BTC quote written, and paper venues on it."""

    board: QuoteBoard
    writer: BoardWriter
    clock: Clock = field(default_factory=Clock)
    wall: Clock = field(default_factory=lambda: Clock(T0))

    def venue(self, name: str = "okx", paper: dict[str, Any] | None = None, *, connect: bool = True,
              **kw: Any) -> PaperVenue:
        cfg = make_config(paper=paper or {})
        kw.setdefault("clock", self.clock)
        kw.setdefault("wall_ms", self.wall)
        v = PaperVenue(name, cfg.venue_names.index(name), cfg, self.board, **kw)
        if connect:
            asyncio.run(v.connect())
        return v

    def quote(self, bid: float, ask: float, bid_size: float = 1.0, ask_size: float = 1.0,
              symbol: int = BTC) -> None:
        self.writer.write(symbol, bid, ask, bid_size, ask_size, 1, NOW)


@pytest.fixture
def paper() -> Iterator[Paper]:
    cfg = make_config()
    with ExitStack() as stack:
        board, _status = stack.enter_context(segments(cfg))
        w = board.writer(cfg.venue_names.index("okx"))
        stack.callback(w.release)
        p = Paper(board, w)
        p.quote(60000.0, 60000.05, 0.5, 0.02)
        yield p


def order(coid: str, side: Side, qty: str, price: str | None = None, symbol: str = "BTC-PERP",
          reduce_only: bool = False, order_type: OrderType = OrderType.IOC) -> OrderRequest:
    return OrderRequest(coid, symbol, side, D(qty), None if price is None else D(price),
                        order_type, reduce_only=reduce_only)


def place(venue: Venue, req: OrderRequest) -> OrderResult:
    return asyncio.run(venue.place_order(req))


def fetch(venue: Venue, coid: str, symbol: str = "BTC-PERP") -> OrderResult | OpenOrder | None:
    return asyncio.run(venue.fetch_order(coid, symbol))


def cancel(venue: Venue, coid: str, symbol: str = "BTC-PERP") -> bool:
    return asyncio.run(venue.cancel_order(coid, symbol))


def positions(venue: Venue) -> dict[str, D]:
    return {s: p.qty for s, p in asyncio.run(venue.positions()).items()}


# -- taker IOC ---------------------------------------------------------------------------------


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
    expected = D("100000.0") + D("0.020") * (D("60100.0") - D("60000.1")) - fees
    bal = asyncio.run(venue.balances())[QUOTE_ASSET]
    assert bal.total == expected and bal.free == expected and bal.locked == 0  # flat: no margin
    assert bal.extra["fees"] == fees and bal.extra["realized_pnl"] == expected - D("100000.0")
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
    btc = m["BTC-PERP"]
    assert (btc.tick_size, btc.lot_size) == (D("0.1"), D("0.001"))
    assert btc.min_notional_usd == D("5.0")
    assert (btc.contract_size, btc.taker_fee, btc.maker_fee) == (D(1), D("0.0005"), D("0.0002"))


def test_make_venues_gives_one_paper_venue_per_configured_venue() -> None:
    cfg = make_config()
    with segments(cfg) as (board, _):
        venues = make_venues(cfg, board)
        assert [v.name for v in venues] == list(cfg.venue_names)
        assert all(isinstance(v, PaperVenue) for v in venues)


def test_size_based_slippage_worsens_a_taker_price_but_never_past_the_limit(paper: Paper) -> None:
    paper.quote(60000.0, 60000.05, 1.0, 1.0)
    venue = paper.venue(paper={"slippage_bps_per_10k_usd": 10})
    # 0.1 x 60000.1 = 6000.01 USD -> 6.00001 bps worse: 60036.10012..., up to the tick
    r = place(venue, order("c1", Side.BUY, "0.1"))
    assert r.fills[0].price == D("60036.2")
    assert r.fills[0].fee == D("0.1") * D("60036.2") * D("0.0005")
    r = place(venue, order("c2", Side.SELL, "0.1"))
    assert r.fills[0].price == D("59964.0")  # 6000 USD: 60000.0 x (1 - 0.0006)
    r = place(venue, order("c3", Side.BUY, "0.1", "60010.0"))
    assert r.status is OrderStatus.FILLED and r.fills[0].price == D("60010.0")
    assert place(venue, order("c4", Side.BUY, "0.001")).fills[0].price == D("60000.5")  # 60 USD: 0.06 bps, 0.36 up


# -- maker and resting orders --------------------------------------------------------------------


def test_post_only_that_would_take_liquidity_is_rejected(paper: Paper) -> None:
    venue = paper.venue()
    r = place(venue, order("p1", Side.BUY, "0.01", "60000.1", order_type=OrderType.POST_ONLY))
    assert r.status is OrderStatus.REJECTED and "post-only would take liquidity" in r.reason
    r = place(venue, order("p2", Side.SELL, "0.01", "60000.0", order_type=OrderType.POST_ONLY))
    assert r.status is OrderStatus.REJECTED and "post-only" in r.reason
    r = place(venue, order("p3", Side.BUY, "0.01", order_type=OrderType.POST_ONLY))
    assert r.status is OrderStatus.REJECTED and "needs a price" in r.reason
    assert venue.ledger == []


def test_post_only_rests_and_fills_at_its_price_with_the_maker_fee_when_the_board_crosses(
        paper: Paper) -> None:
    venue = paper.venue()
    r = place(venue, order("p1", Side.BUY, "0.03", "59990.0", order_type=OrderType.POST_ONLY))
    assert r.status is OrderStatus.OPEN and r.fills == ()
    assert asyncio.run(venue.open_orders()) == [OpenOrder("p1", "BTC-PERP", Side.BUY, D("0.03"), D(0),
                                                          D("59990.0"))]
    paper.quote(59990.5, 59991.0, 1.0, 1.0)  # not crossed yet
    assert isinstance(fetch(venue, "p1"), OpenOrder) and venue.ledger == []
    paper.quote(59980.0, 59989.0, 1.0, 0.02)  # a seller crossed: 0.02 at the ask
    got = fetch(venue, "p1")
    assert isinstance(got, OpenOrder) and got.filled_qty == D("0.02")
    (f,) = venue.ledger
    assert (f.price, f.qty, f.fee) == (D("59990.0"), D("0.02"), D("0.02") * D("59990.0") * D("0.0002"))
    assert f.fill_id == "p1-1"
    assert isinstance(fetch(venue, "p1"), OpenOrder)  # the same quote never fills twice
    paper.quote(59980.0, 59985.0, 1.0, 5.0)
    got = fetch(venue, "p1")
    assert isinstance(got, OrderResult) and got.status is OrderStatus.FILLED
    assert [x.qty for x in got.fills] == [D("0.02"), D("0.01")] and got.avg_price == D("59990.0")
    assert asyncio.run(venue.open_orders()) == []
    assert cancel(venue, "p1") is False


def test_a_resting_sell_fills_when_a_buyer_crosses_it(paper: Paper) -> None:
    venue = paper.venue()
    r = place(venue, order("s1", Side.SELL, "0.01", "60010.0", order_type=OrderType.POST_ONLY))
    assert r.status is OrderStatus.OPEN
    paper.quote(60010.0, 60010.5, 0.5, 0.5)
    got = fetch(venue, "s1")
    assert isinstance(got, OrderResult) and got.status is OrderStatus.FILLED
    assert got.fills[0].price == D("60010.0") and positions(venue) == {"BTC-PERP": D("-0.01")}


def test_resting_orders_share_a_quotes_size_best_price_first(paper: Paper) -> None:
    venue = paper.venue()
    for coid, price in (("low", "59980.0"), ("high", "59990.0")):
        place(venue, order(coid, Side.BUY, "0.02", price, order_type=OrderType.POST_ONLY))
    paper.quote(59970.0, 59975.0, 1.0, 0.03)  # crosses both; 0.03 for the two of them
    asyncio.run(venue.positions())
    assert [(f.client_order_id, f.qty) for f in venue.ledger] == [("high", D("0.02")), ("low", D("0.01"))]
    asyncio.run(venue.positions())
    assert len(venue.ledger) == 2


def test_limit_takes_what_crosses_and_rests_the_rest(paper: Paper) -> None:
    venue = paper.venue()
    r = place(venue, order("l1", Side.BUY, "0.05", "60000.1", order_type=OrderType.LIMIT))
    assert r.status is OrderStatus.OPEN  # ask size 0.02 taken, 0.03 rests
    (taken,) = r.fills
    assert (taken.qty, taken.price, taken.fee) == (D("0.02"), D("60000.1"),
                                                  D("0.02") * D("60000.1") * D("0.0005"))
    got = fetch(venue, "l1")  # the quote it took from is used up: the rest waits for a newer one
    assert isinstance(got, OpenOrder) and got.filled_qty == D("0.02")
    paper.quote(59999.0, 60000.0, 1.0, 0.01)
    got = fetch(venue, "l1")
    assert isinstance(got, OpenOrder) and got.filled_qty == D("0.03")
    assert venue.ledger[-1].fee == D("0.01") * D("60000.1") * D("0.0002")  # maker, at its price
    assert cancel(venue, "l1") is True
    done = fetch(venue, "l1")
    assert isinstance(done, OrderResult) and done.status is OrderStatus.PARTIAL
    assert done.filled_qty == D("0.03") and len(done.fills) == 2
    assert cancel(venue, "l1") is False
    paper.quote(59000.0, 59000.5, 1.0, 1.0)
    assert fetch(venue, "l1") == done  # cancelled: nothing fills any more


def test_cancel_of_an_unfilled_resting_order_expires_it(paper: Paper) -> None:
    venue = paper.venue()
    place(venue, order("p1", Side.BUY, "0.01", "59000.0", order_type=OrderType.POST_ONLY))
    assert cancel(venue, "p1", "ETH-PERP") is False  # another symbol: no such order
    assert cancel(venue, "p1") is True
    got = fetch(venue, "p1")
    assert isinstance(got, OrderResult) and got.status is OrderStatus.EXPIRED and got.fills == ()
    assert fetch(venue, "never") is None


def test_a_resting_reduce_only_order_is_cancelled_once_the_position_is_gone(paper: Paper) -> None:
    venue = paper.venue()
    place(venue, order("b", Side.BUY, "0.01"))
    place(venue, order("r", Side.SELL, "0.01", "60100.0", reduce_only=True, order_type=OrderType.POST_ONLY))
    place(venue, order("s", Side.SELL, "0.01"))  # flat again
    paper.quote(60100.0, 60100.5)
    got = fetch(venue, "r")
    assert isinstance(got, OrderResult) and got.status is OrderStatus.EXPIRED
    assert "reduce-only" in got.reason and positions(venue) == {}


def test_the_background_task_fills_resting_orders_without_any_call(paper: Paper) -> None:
    venue = paper.venue(connect=False)

    async def scenario() -> None:
        await venue.connect()
        await venue.place_order(order("p1", Side.BUY, "0.01", "59990.0", order_type=OrderType.POST_ONLY))
        paper.quote(59980.0, 59985.0)
        for _ in range(500):
            if venue.ledger:
                break
            await asyncio.sleep(0.01)
        await venue.close()

    asyncio.run(scenario())
    assert [f.client_order_id for f in venue.ledger] == ["p1"]


# -- faults --------------------------------------------------------------------------------------


def test_an_injected_reject_refuses_the_next_order_on_its_symbol(paper: Paper) -> None:
    venue = paper.venue()
    venue.inject(Fault(FaultKind.REJECT, symbol="ETH-PERP"))
    assert place(venue, order("c1", Side.BUY, "0.01")).status is OrderStatus.FILLED  # BTC: not hit
    venue.inject(Fault(FaultKind.REJECT, count=2))
    for coid in ("c2", "c3"):
        r = place(venue, order(coid, Side.BUY, "0.01"))
        assert r.status is OrderStatus.REJECTED and "injected fault reject" in r.reason
    assert venue.faults_pending == 1  # the ETH one
    assert place(venue, order("c4", Side.BUY, "0.01")).status is OrderStatus.FILLED
    got = fetch(venue, "c2")
    assert isinstance(got, OrderResult) and got.status is OrderStatus.REJECTED


def test_never_fill_leaves_even_an_ioc_open_until_cancelled(paper: Paper) -> None:
    venue = paper.venue()
    venue.inject(Fault(FaultKind.NEVER_FILL))
    r = place(venue, order("c1", Side.BUY, "0.01"))
    assert r.status is OrderStatus.OPEN and r.fills == ()
    paper.quote(59000.0, 59000.5)
    assert isinstance(fetch(venue, "c1"), OpenOrder) and venue.ledger == []
    assert [o.client_order_id for o in asyncio.run(venue.open_orders("BTC-PERP"))] == ["c1"]
    assert cancel(venue, "c1") is True
    got = fetch(venue, "c1")
    assert isinstance(got, OrderResult) and got.status is OrderStatus.EXPIRED


def test_partial_fills_only_the_fraction_rounded_down_to_the_lot(paper: Paper) -> None:
    paper.quote(60000.0, 60000.05, 1.0, 1.0)
    venue = paper.venue()
    venue.inject(Fault(FaultKind.PARTIAL, fraction=D("0.5")))
    r = place(venue, order("c1", Side.BUY, "0.015"))
    assert r.status is OrderStatus.PARTIAL and r.filled_qty == D("0.007")
    assert "injected fault partial" in r.reason
    venue.inject(Fault(FaultKind.PARTIAL, fraction=D("0.4")))
    r = place(venue, order("c2", Side.BUY, "0.05", "59000.0", order_type=OrderType.POST_ONLY))
    paper.quote(58000.0, 58500.0, 1.0, 1.0)
    got = fetch(venue, "c2")
    assert isinstance(got, OpenOrder) and got.filled_qty == D("0.02")  # stuck at its cap
    assert cancel(venue, "c2") is True
    with pytest.raises(ValueError, match="fraction"):
        Fault(FaultKind.PARTIAL, fraction=D(1))


def test_a_timeout_after_execution_leaves_an_order_only_fetch_order_knows(paper: Paper) -> None:
    venue = paper.venue()
    venue.inject(Fault(FaultKind.TIMEOUT, executed=True))
    req = order("c1", Side.BUY, "0.01")
    with pytest.raises(RetryableError, match="timed out"):
        place(venue, req)
    got = fetch(venue, "c1")
    assert isinstance(got, OrderResult) and got.status is OrderStatus.FILLED and got.filled_qty == D("0.01")
    again = place(venue, req)
    assert again.status is OrderStatus.REJECTED and "duplicate" in again.reason
    assert positions(venue) == {"BTC-PERP": D("0.01")}


def test_a_timeout_before_arrival_leaves_nothing_and_a_resend_is_accepted(paper: Paper) -> None:
    venue = paper.venue()
    venue.inject(Fault(FaultKind.TIMEOUT, executed=False))
    req = order("c1", Side.BUY, "0.01")
    with pytest.raises(RetryableError, match="timed out"):
        place(venue, req)
    assert fetch(venue, "c1") is None and venue.ledger == []
    assert place(venue, req).status is OrderStatus.FILLED
    assert positions(venue) == {"BTC-PERP": D("0.01")}


def test_a_late_fill_beats_the_cancel(paper: Paper) -> None:
    venue = paper.venue()
    venue.inject(Fault(FaultKind.LATE_FILL))
    r = place(venue, order("c1", Side.BUY, "0.05", "59990.0", order_type=OrderType.POST_ONLY))
    assert r.status is OrderStatus.OPEN
    paper.quote(59000.0, 59001.0)  # crossed, but the late fill waits for the cancel
    assert venue.ledger == []
    assert cancel(venue, "c1") is False
    got = fetch(venue, "c1")
    assert isinstance(got, OrderResult) and got.status is OrderStatus.FILLED
    (f,) = got.fills
    assert (f.qty, f.price, f.fee) == (D("0.05"), D("59990.0"), D("0.05") * D("59990.0") * D("0.0002"))
    venue.inject(Fault(FaultKind.LATE_FILL))
    assert place(venue, order("c2", Side.SELL, "0.01")).status is OrderStatus.OPEN  # an IOC
    assert cancel(venue, "c2") is False
    got = fetch(venue, "c2")
    assert isinstance(got, OrderResult) and got.fills[0].price == D("59000.0")  # at the bid, taker
    assert got.fee == D("0.01") * D("59000.0") * D("0.0005")


def test_position_drift_books_an_external_fill(paper: Paper) -> None:
    venue = paper.venue()
    place(venue, order("c1", Side.BUY, "0.02"))
    venue.inject(Fault(FaultKind.POSITION_DRIFT, symbol="BTC-PERP", qty=D("-0.015")))
    assert positions(venue) == {"BTC-PERP": D("0.005")}
    ext = venue.ledger[-1]
    assert ext.client_order_id.startswith("external-") and ext.side is Side.SELL
    assert (ext.qty, ext.price, ext.fee) == (D("0.015"), D("60000.0"), D(0))  # mid 60000.025, down
    assert asyncio.run(venue.my_trades("BTC-PERP"))[-1] == ext
    venue.inject(Fault(FaultKind.POSITION_DRIFT, symbol="ETH-PERP", qty=D("0.1"), price=D("3000")))
    assert positions(venue) == {"BTC-PERP": D("0.005"), "ETH-PERP": D("0.1")}
    with pytest.raises(ValueError, match="symbol"):
        Fault(FaultKind.POSITION_DRIFT, qty=D(1))


def _outcomes(paper: Paper, seed: int) -> list[str]:
    paper.quote(60000.0, 60000.05, 100.0, 100.0)
    venue = paper.venue(paper={"seed": seed, "reject_rate": 0.2, "never_fill_rate": 0.2,
                               "partial_fill_rate": 0.2, "timeout_rate": 0.2})
    out = []
    for i in range(60):
        try:
            r = place(venue, order(f"c{i}", Side.BUY, "0.01"))
        except RetryableError:
            out.append("timeout:" + ("executed" if fetch(venue, f"c{i}") else "lost"))
            continue
        out.append(f"{r.status.value}:{r.filled_qty}")
    return out


def test_random_faults_repeat_with_the_seed(paper: Paper) -> None:
    first = _outcomes(paper, 7)
    assert _outcomes(paper, 7) == first
    assert _outcomes(paper, 8) != first
    kinds = {o.split(":")[0] for o in first}
    assert {"rejected", "open", "timeout", "filled"} <= kinds
    assert 0 < sum(o.startswith("filled") for o in first) < 60


# -- latency -------------------------------------------------------------------------------------


def test_latency_is_awaited_half_each_way_and_the_order_meets_the_board_of_its_arrival(
        paper: Paper) -> None:
    delays: list[float] = []

    async def sleep(s: float) -> None:
        if not delays:
            paper.quote(60010.0, 60010.5, 1.0, 1.0)  # the board moves while the order travels
        delays.append(s)
        paper.clock.t += int(s * 1e9)

    venue = paper.venue(paper={"latency_ms": 100, "venues": {"okx": {"latency_ms": 30}}}, sleep=sleep)
    t0 = paper.clock.t
    r = place(venue, order("c1", Side.BUY, "0.01"))
    assert delays == [0.015, 0.015]
    assert r.fills[0].price == D("60010.5") and r.ts_accepted_ns == t0 + 15_000_000
    cancel(venue, "c1")
    asyncio.run(venue.server_time_ms())
    assert delays == [0.015] * 6
    other = paper.venue("bybit", paper={"latency_ms": 100, "latency_jitter_ms": 10}, sleep=sleep)
    asyncio.run(other.positions())
    assert all(0.05 <= d <= 0.055 for d in delays[6:]) and len(delays) == 8


def test_with_real_sleeps_a_board_change_during_the_latency_window_is_what_fills(paper: Paper) -> None:
    venue = paper.venue(paper={"latency_ms": 40}, connect=False)

    async def scenario() -> OrderResult:
        await venue.connect()
        task = asyncio.create_task(venue.place_order(order("c1", Side.BUY, "0.01")))
        await asyncio.sleep(0)  # the order is on its way now
        paper.quote(60020.0, 60020.5, 1.0, 1.0)
        res = await task
        await venue.close()
        return res

    assert asyncio.run(scenario()).fills[0].price == D("60020.5")


# -- money: margin, funding, clock ---------------------------------------------------------------


def test_balances_lock_margin_for_positions_and_resting_orders(paper: Paper) -> None:
    venue = paper.venue(paper={"leverage": 4, "initial_balance_usd": 5000})
    place(venue, order("c1", Side.BUY, "0.02"))  # at 60000.1, fee 0.6000010
    place(venue, order("p1", Side.BUY, "0.01", "59000.0", order_type=OrderType.POST_ONLY))
    bal = asyncio.run(venue.balances())[QUOTE_ASSET]
    assert bal.total == D("5000") - D("0.6000010")
    # (0.02 x mid 60000.025 + 0.01 x 59000.0) / 4
    assert bal.locked == (D("1200.0005") + D("590.0")) / 4 == D("447.500125")
    assert bal.free == D("4999.3999990") - D("447.500125") == D("4551.899874")
    paper.quote(60100.0, 60100.1, 1.0, 1.0)
    bal = asyncio.run(venue.balances())[QUOTE_ASSET]
    assert bal.locked == (D("0.02") * D("60100.05") + D("590.0")) / 4
    tight = paper.venue("bybit", paper={"leverage": 1, "initial_balance_usd": 0})
    tight.inject(Fault(FaultKind.POSITION_DRIFT, symbol="BTC-PERP", qty=D("0.01"), price=D("60000")))
    bal = asyncio.run(tight.balances())[QUOTE_ASSET]
    assert bal.free < 0 and bal.free == -bal.locked  # reported, not hidden
    assert bal.locked == D("0.01") * D("60000")  # bybit has no quote: marked at entry


def test_funding_is_booked_at_each_boundary_longs_pay_shorts(paper: Paper) -> None:
    venue = paper.venue(paper={"funding_rate_bps": 1.0, "funding_interval_h": 8})
    rate = asyncio.run(venue.funding_rate("BTC-PERP"))
    boundary = (T0 // (8 * HOUR_MS) + 1) * 8 * HOUR_MS
    assert rate == FundingRate("BTC-PERP", D("0.0001"), 8 * HOUR_MS, boundary)
    place(venue, order("c1", Side.BUY, "0.02"))
    assert venue.book_funding(boundary - 1) == []
    (p,) = venue.book_funding(boundary)
    assert p.amount == D("-0.02") * D("60000.025") * D("0.0001") == D("-0.12000005")
    assert (p.symbol, p.ts_ms, p.venue) == ("BTC-PERP", boundary, "okx")
    assert venue.book_funding(boundary) == []  # once per boundary
    bal = asyncio.run(venue.balances())[QUOTE_ASSET]
    assert bal.total == D("100000.0") - venue.ledger[0].fee + p.amount and bal.extra["funding"] == p.amount
    place(venue, order("c2", Side.SELL, "0.05"))  # now short 0.03
    paper.wall.t = boundary + 2 * 8 * HOUR_MS + 5  # two more boundaries pass: booked lazily by any call
    asyncio.run(venue.positions())
    pays = asyncio.run(venue.funding_payments(since_ms=boundary + 1))
    assert [x.amount for x in pays] == [D("0.03") * D("60000.025") * D("0.0001")] * 2
    assert [x.ts_ms for x in pays] == [boundary + 8 * HOUR_MS, boundary + 16 * HOUR_MS]
    assert len({x.payment_id for x in asyncio.run(venue.funding_payments())}) == 3


def test_funding_settings_per_venue(paper: Paper) -> None:
    venue = paper.venue(paper={"funding_rate_bps": 1.0, "venues": {"okx": {"funding_rate_bps": -2.5,
                                                                           "funding_interval_h": 1}}})
    rate = asyncio.run(venue.funding_rate("BTC-PERP"))
    assert (rate.rate, rate.interval_ms, rate.next_funding_ms) == (D("-0.00025"), HOUR_MS, T0 + HOUR_MS)
    place(venue, order("c1", Side.BUY, "0.02"))
    (p,) = venue.book_funding(T0 + HOUR_MS)
    assert p.amount == D("0.02") * D("60000.025") * D("0.00025")  # negative rate: longs receive


def test_server_time_and_my_trades_use_the_wall_clock(paper: Paper) -> None:
    venue = paper.venue(paper={"server_time_skew_ms": -250})
    assert asyncio.run(venue.server_time_ms()) == T0 - 250
    place(venue, order("c1", Side.BUY, "0.01"))
    paper.wall.t += 1000
    place(venue, order("c2", Side.SELL, "0.01"))
    assert [f.client_order_id for f in asyncio.run(venue.my_trades())] == ["c1", "c2"]
    assert [f.client_order_id for f in asyncio.run(venue.my_trades(since_ms=T0 + 1))] == ["c2"]
    assert asyncio.run(venue.my_trades("ETH-PERP")) == []


# -- persistence ---------------------------------------------------------------------------------


def _answers(venue: PaperVenue, coids: list[str]) -> tuple[Any, ...]:
    return (asyncio.run(venue.positions()), asyncio.run(venue.balances()), asyncio.run(venue.open_orders()),
            [fetch(venue, c) for c in coids], list(venue.ledger), asyncio.run(venue.funding_payments()))


def test_a_venue_on_the_same_ledger_file_is_the_same_venue(paper: Paper, tmp_path: Path) -> None:
    path = tmp_path / "okx.jsonl"
    settings = {"funding_rate_bps": 1.0}
    a = paper.venue(paper=settings, ledger_path=path)
    place(a, order("c1", Side.BUY, "0.02"))
    place(a, order("c2", Side.BUY, "0.01", symbol="SOL-PERP"))  # no quote: rejected
    place(a, order("p1", Side.BUY, "0.03", "59990.0", order_type=OrderType.POST_ONLY))
    place(a, order("p2", Side.SELL, "0.01", "61000.0", order_type=OrderType.POST_ONLY))
    paper.quote(59980.0, 59989.0, 1.0, 0.01)
    asyncio.run(a.positions())  # p1 fills 0.01 of 0.03
    cancel(a, "p2")
    a.inject(Fault(FaultKind.POSITION_DRIFT, symbol="BTC-PERP", qty=D("-0.001")))
    a.book_funding(T0 + 8 * HOUR_MS)
    coids = ["c1", "c2", "p1", "p2", "never"]
    before = _answers(a, coids)
    assert len(before[5]) == 1 and isinstance(before[3][2], OpenOrder)
    asyncio.run(a.close())

    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert lines[0]["e"] == "venue" and {x["e"] for x in lines} == {"venue", "order", "state", "fill",
                                                                     "funding", "funded"}
    assert all(isinstance(x["qty"], str) for x in lines if x["e"] == "fill")

    b = paper.venue(paper=settings, ledger_path=path)
    assert _answers(b, coids) == before  # the same quote does not fill p1 again
    again = place(b, order("c1", Side.BUY, "0.02"))
    assert again.status is OrderStatus.REJECTED and "duplicate" in again.reason
    paper.quote(59980.0, 59985.0, 1.0, 1.0)
    got = fetch(b, "p1")
    assert isinstance(got, OrderResult) and got.status is OrderStatus.FILLED and len(got.fills) == 2
    asyncio.run(b.close())
    c = paper.venue(paper=settings, ledger_path=path)
    assert fetch(c, "p1") == got and c.ledger == b.ledger


def test_a_torn_last_line_is_dropped_and_another_venues_ledger_refused(paper: Paper, tmp_path: Path) -> None:
    path = tmp_path / "okx.jsonl"
    a = paper.venue(ledger_path=path)
    place(a, order("c1", Side.BUY, "0.01"))
    asyncio.run(a.close())
    with path.open("a") as fh:
        fh.write('{"e":"fill","fill_id":"c9-1"')  # the process died mid-write
    b = paper.venue(ledger_path=path)
    assert positions(b) == {"BTC-PERP": D("0.01")}
    place(b, order("c2", Side.BUY, "0.01"))
    asyncio.run(b.close())
    assert positions(paper.venue(ledger_path=path)) == {"BTC-PERP": D("0.02")}
    with pytest.raises(ValueError, match="not of 'bybit'"):
        paper.venue("bybit", ledger_path=path)


def test_restore_still_seeds_a_fresh_venue(paper: Paper) -> None:
    a = paper.venue()
    place(a, order("c1", Side.BUY, "0.01"))
    b = paper.venue()
    b.restore(a.ledger)
    assert b.ledger == a.ledger and positions(b) == positions(a)
    got = fetch(b, "c1")
    assert isinstance(got, OrderResult) and got.fills == tuple(a.ledger)
    assert place(b, order("c1", Side.BUY, "0.01")).status is OrderStatus.REJECTED
    with pytest.raises(ValueError, match="already has fills"):
        b.restore(a.ledger)


# -- configuration -------------------------------------------------------------------------------


def test_the_paper_section_defaults_to_an_ideal_venue() -> None:
    p = make_config().paper
    assert (p.latency_ms, p.reject_rate, p.timeout_rate, p.slippage_bps_per_10k_usd) == (0, 0, 0, 0)
    assert (p.seed, p.initial_balance_usd, p.leverage, p.funding_interval_h) == (1, 100000.0, 5.0, 8)


@pytest.mark.parametrize(("section", "path"), [
    ({"reject_rate": 1.5}, "$.paper.reject_rate"),
    ({"timeout_rate": -0.1}, "$.paper.timeout_rate"),
    ({"latency_ms": -1}, "$.paper.latency_ms"),
    ({"leverage": 0}, "$.paper.leverage"),
    ({"rest_poll_ms": 0}, "$.paper.rest_poll_ms"),
    ({"funding_interval_h": 2}, "$.paper.funding_interval_h"),
    ({"seed": "x"}, "$.paper.seed"),
    ({"bogus": 1}, "$.paper.bogus"),
    ({"venues": {"nope": {"latency_ms": 1}}}, "$.paper.venues.nope"),
    ({"venues": {"okx": {"reject_rate": 2}}}, "$.paper.venues.okx.reject_rate"),
    ({"venues": {"okx": {"funding_interval_h": 3}}}, "$.paper.venues.okx.funding_interval_h"),
])
def test_paper_config_errors_name_the_key(section: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError) as e:
        make_config(paper=section)
    assert e.value.path == path


def test_paper_overrides_parse() -> None:
    cfg: Config = make_config(paper={"venues": {"okx": {"latency_ms": 3, "funding_interval_h": 4}}})
    ov = cfg.paper.venues["okx"]
    assert (ov.latency_ms, ov.funding_interval_h, ov.reject_rate) == (3.0, 4, None)
