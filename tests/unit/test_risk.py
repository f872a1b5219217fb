"""The risk gate: every limit at its edge, by reason and layer; decisions together; counters."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal as D

import pytest
from kit import make_config

from perpbot.errors import ConfigError
from perpbot.exec.risk import (
    LAYERS,
    LegCheck,
    Limits,
    Purpose,
    Reason,
    RiskGate,
    RiskView,
    Verdict,
    check_legs,
)
from perpbot.exec.venues.base import Market, Side
from perpbot.shm.layout import FeedState, TradingState

NOW = 10**15
MS = 1_000_000
BTC, ETH = 0, 1
LIMITS = Limits(
    max_notional_per_trade_usd=D(5000),
    max_position_notional_usd=D(20000),
    max_open_trades=4,
    stale_after_ns=1000 * MS,
    max_gross_exposure_usd=D(100000),
    max_venue_notional_usd=D(50000),
    max_open_orders_per_venue=20,
    min_margin_headroom_usd=D(0),
    max_symbol_net_exposure_usd=D(5000),
    price_band_bps=D(50),
)
UP = FeedState.CONNECTED
RUNNING = TradingState.RUNNING
EXITS = (Purpose.CLOSE, Purpose.UNWIND)
EPS = D("0.01")

BTC_MARKET = Market("BTC-PERP", tick_size=D("0.1"), lot_size=D("0.001"), min_notional_usd=D(5))
ETH_MARKET = Market("ETH-PERP", tick_size=D("0.01"), lot_size=D("0.01"), min_notional_usd=D(5))


@dataclass
class View:
    """A `RiskView` over plain dicts: 3 venues, BTC at 60000 and ETH at 3000 everywhere."""

    n_venues: int = 3
    n_symbols: int = 2
    pos: dict[tuple[int, int], D] = field(default_factory=dict)
    marks: dict[tuple[int, int], D | None] = field(
        default_factory=lambda: {(v, s): D(60000) if s == BTC else D(3000) for v in range(3) for s in range(2)})
    orders: dict[int, int] = field(default_factory=dict)
    margin: dict[int, D | None] = field(default_factory=lambda: {v: D(10000) for v in range(3)})
    markets: dict[tuple[int, int], Market | None] = field(
        default_factory=lambda: {(v, s): BTC_MARKET if s == BTC else ETH_MARKET for v in range(3) for s in range(2)})
    paused: set[int] = field(default_factory=set)

    def qty(self, venue: int, symbol: int) -> D:
        return self.pos.get((venue, symbol), D(0))

    def held(self) -> list[tuple[int, int, D]]:
        return [(v, s, q) for (v, s), q in self.pos.items() if q]

    def mark(self, venue: int, symbol: int) -> D | None:
        return self.marks.get((venue, symbol))

    def open_orders(self, venue: int) -> int:
        return self.orders.get(venue, 0)

    def margin_free(self, venue: int) -> D | None:
        return self.margin.get(venue)

    def market(self, venue: int, symbol: int) -> Market | None:
        return self.markets.get((venue, symbol))

    def symbol_paused(self, symbol: int) -> bool:
        return symbol in self.paused


def leg(venue: int = 0, side: Side = Side.BUY, qty: str = "0.016", price: str = "60000",
        purpose: Purpose = Purpose.OPEN, age_ms: int = 1, symbol: int = BTC, margin: str = "0",
        limit: str | None = None) -> LegCheck:
    return LegCheck(venue, symbol, side, D(qty), D(price), purpose, NOW - age_ms * MS,
                    margin=D(margin), limit_price=None if limit is None else D(limit))


def pair(purpose: Purpose = Purpose.OPEN, **kw: object) -> list[LegCheck]:
    """Buy on venue 0, sell on venue 1: 0.016 BTC at 60000 = 960 USD each."""
    return [leg(0, Side.BUY, purpose=purpose, **kw),  # type: ignore[arg-type]
            leg(1, Side.SELL, purpose=purpose, **kw)]  # type: ignore[arg-type]


def check(legs: Sequence[LegCheck], *, view: View | None = None, limits: Limits = LIMITS,
          halted: bool = False, state: TradingState = RUNNING, open_trades: int = 0,
          feeds: Sequence[FeedState] | None = None, **lim: object) -> Verdict:
    if lim:
        limits = dataclasses.replace(limits, **lim)  # type: ignore[arg-type]
    return check_legs(legs, limits=limits, halted=halted, trading_state=state,
                      open_trades=open_trades, now_ns=NOW,
                      feed_states=feeds or [UP] * len(legs), view=view or View())


def refused(v: Verdict, reason: Reason, layer: str, leg: int | None = None) -> bool:
    assert v.reason is reason, v
    assert v.layer == layer, v
    if leg is not None:
        assert v.leg == leg, v
    assert v.detail
    return True


def test_the_test_view_is_a_risk_view() -> None:
    view: RiskView = View()
    assert view.n_venues == 3 and view.mark(0, BTC) == D(60000)


def test_ok() -> None:
    v = check(pair())
    assert v.ok and v.reason is Reason.OK and v.layer is None


def test_reason_codes_are_stable() -> None:
    assert Reason.OK == 0 and Reason.HALTED == 1 and Reason.PAUSED == 2
    assert Reason.GROSS_EXPOSURE == 18 and Reason.CAPITAL == 29
    assert LAYERS == ("global", "venue", "symbol", "order")


# -- global -----------------------------------------------------------------------------


@pytest.mark.parametrize("purpose", list(Purpose))
def test_halted_refuses_every_order_of_every_kind(purpose: Purpose) -> None:
    assert refused(check(pair(purpose), halted=True), Reason.HALTED, "global", -1)
    assert refused(check(pair(purpose), state=TradingState.HALTED), Reason.HALTED, "global")


def test_paused_refuses_opening_only() -> None:
    assert refused(check(pair(), state=TradingState.PAUSED), Reason.PAUSED, "global")
    assert check(pair(Purpose.CLOSE), state=TradingState.PAUSED).ok
    assert check([leg(purpose=Purpose.UNWIND)], state=TradingState.PAUSED).ok
    assert check([leg(purpose=Purpose.HEDGE)], state=TradingState.PAUSED).ok


def test_reduce_only_refuses_opening_and_allows_exits() -> None:
    ro = TradingState.REDUCE_ONLY
    assert refused(check(pair(), state=ro), Reason.REDUCE_ONLY, "global")
    view = View(pos={(0, BTC): D("0.016")})
    assert check([leg(0, Side.SELL, purpose=Purpose.CLOSE)], view=view, state=ro).ok
    # an exit that adds to the venue position is still an exit: not blocked
    assert check([leg(2, Side.BUY, purpose=Purpose.UNWIND)], state=ro).ok


def test_reduce_only_hedge_must_not_grow_the_net_across_venues() -> None:
    ro = TradingState.REDUCE_ONLY
    # long 0.016 on venue 0, nothing short yet: net +0.016
    view = View(pos={(0, BTC): D("0.016")})
    assert check([leg(1, Side.SELL, purpose=Purpose.HEDGE)], view=view, state=ro).ok  # net -> 0
    # selling more than the net flips it to -0.017: |net| grows by 0.001
    v = check([leg(1, Side.SELL, qty="0.033", purpose=Purpose.HEDGE)], view=view, state=ro)
    assert refused(v, Reason.REDUCE_ONLY, "global", 0)
    # exactly flipping to -0.016 does not grow |net|
    assert check([leg(1, Side.SELL, qty="0.032", purpose=Purpose.HEDGE)], view=view, state=ro).ok
    # buying adds to the net long
    v = check([leg(2, Side.BUY, purpose=Purpose.HEDGE)], view=view, state=ro)
    assert refused(v, Reason.REDUCE_ONLY, "global", 0)
    # the same hedge is fine while RUNNING
    assert check([leg(2, Side.BUY, purpose=Purpose.HEDGE)], view=view).ok


def test_max_open_trades() -> None:
    assert check(pair(), open_trades=3).ok
    assert refused(check(pair(), open_trades=4), Reason.MAX_OPEN_TRADES, "global", -1)
    assert check(pair(Purpose.CLOSE), open_trades=9).ok
    assert check([leg(purpose=Purpose.HEDGE)], open_trades=9).ok


def test_gross_exposure_after_the_whole_decision() -> None:
    # 10 ETH short on venue 2 (30000) + the pair's 960 + 960 = 31920 after the decision
    view = View(pos={(2, ETH): D(-10)})
    assert check(pair(), view=view, max_gross_exposure_usd=D(31920)).ok
    v = check(pair(), view=view, max_gross_exposure_usd=D(31920) - EPS)
    assert refused(v, Reason.GROSS_EXPOSURE, "global", -1)
    # one leg alone would pass: both legs count
    assert check(pair()[:1], view=view, max_gross_exposure_usd=D(31920) - EPS).ok


def test_gross_exposure_counts_hedges_but_never_exits() -> None:
    view = View(pos={(0, BTC): D("0.016")})  # 960
    hedge = [leg(1, Side.SELL, purpose=Purpose.HEDGE)]
    assert check(hedge, view=view, max_gross_exposure_usd=D(1920)).ok
    assert refused(check(hedge, view=view, max_gross_exposure_usd=D(1920) - EPS),
                   Reason.GROSS_EXPOSURE, "global")
    big = View(pos={(0, BTC): D("0.016"), (1, BTC): D("-0.016"), (2, ETH): D(100)})
    for purpose in EXITS:
        assert check(pair(purpose, qty="0.016"), view=big, max_gross_exposure_usd=D(1),
                     max_venue_notional_usd=D(1), max_position_notional_usd=D(1),
                     max_symbol_net_exposure_usd=D(1)).ok


def test_a_position_that_cannot_be_valued_refuses_openings_not_exits() -> None:
    view = View(pos={(2, ETH): D(1)})
    view.marks[(2, ETH)] = None
    assert refused(check(pair(), view=view), Reason.NO_QUOTE, "global")
    assert check(pair(Purpose.CLOSE), view=view).ok


# -- venue ------------------------------------------------------------------------------


def test_stale_quote_on_either_leg_refuses_both() -> None:
    legs = [leg(0, age_ms=1), leg(1, Side.SELL, age_ms=1001)]
    assert refused(check(legs), Reason.STALE_QUOTE, "venue", 1)
    assert check([leg(0, age_ms=1000), leg(1, Side.SELL, age_ms=1000)]).ok
    assert refused(check(pair(Purpose.CLOSE, age_ms=1001)), Reason.STALE_QUOTE, "venue")


def test_feed_not_connected() -> None:
    assert refused(check(pair(), feeds=[UP, FeedState.STALE]), Reason.FEED_DOWN, "venue", 1)
    assert refused(check(pair(Purpose.CLOSE), feeds=[FeedState.DOWN, UP]), Reason.FEED_DOWN, "venue", 0)


def test_missing_quote() -> None:
    legs = [LegCheck(0, 0, Side.SELL, D("0.01"), D(0), Purpose.UNWIND, 0)]
    assert refused(check(legs), Reason.NO_QUOTE, "venue", 0)


def test_venue_notional_after_the_order() -> None:
    # venue 0 holds 1 ETH long (3000); the buy adds 960 BTC: 3960 on venue 0
    view = View(pos={(0, ETH): D(1)})
    assert check(pair(), view=view, max_venue_notional_usd=D(3960), max_position_notional_usd=D(960)).ok
    v = check(pair(), view=view, max_venue_notional_usd=D(3960) - EPS, max_position_notional_usd=D(960))
    assert refused(v, Reason.VENUE_NOTIONAL, "venue", 0)
    for purpose in EXITS:
        assert check(pair(purpose), view=view, max_venue_notional_usd=D(1)).ok


def test_open_orders_per_venue_count_this_decision() -> None:
    assert check(pair(), view=View(orders={1: 19})).ok  # 19 resting + 1 = 20
    assert refused(check(pair(), view=View(orders={1: 20})), Reason.VENUE_OPEN_ORDERS, "venue", 1)
    # two orders of one decision on the same venue both count
    legs = [leg(0, purpose=Purpose.HEDGE), leg(0, symbol=ETH, qty="1", price="3000", purpose=Purpose.HEDGE)]
    assert check(legs, view=View(orders={0: 18})).ok
    assert refused(check(legs, view=View(orders={0: 19})), Reason.VENUE_OPEN_ORDERS, "venue", 0)
    assert check(pair(Purpose.CLOSE), view=View(orders={0: 99, 1: 99})).ok


def test_margin_headroom() -> None:
    view = View(margin={0: D(1000), 1: D(5000), 2: D(0)})
    legs = pair(margin="200")  # 960 / leverage ~4.8
    assert check(legs, view=view, min_margin_headroom_usd=D(800)).ok  # 1000 - 200 = 800
    v = check(legs, view=view, min_margin_headroom_usd=D(800) + EPS)
    assert refused(v, Reason.MARGIN, "venue", 0)
    assert check(pair(Purpose.CLOSE, margin="200"), view=view, min_margin_headroom_usd=D(10**6)).ok


def test_unknown_margin_refuses_openings_only() -> None:
    view = View()
    view.margin[1] = None
    v = check(pair(), view=view)
    assert refused(v, Reason.MARGIN, "venue", 1) and v.detail == "margin unknown"
    assert check(pair(Purpose.CLOSE), view=view).ok
    assert check([leg(1, Side.SELL, purpose=Purpose.HEDGE)], view=view).ok


# -- symbol -----------------------------------------------------------------------------


def test_symbol_paused_refuses_opening_only() -> None:
    view = View(paused={BTC})
    assert refused(check(pair(), view=view), Reason.SYMBOL_PAUSED, "symbol", 0)
    assert check(pair(Purpose.CLOSE), view=view).ok
    assert check([leg(1, Side.SELL, purpose=Purpose.HEDGE)], view=view).ok
    assert check(pair(symbol=ETH, qty="0.3", price="3000"), view=view).ok


def test_max_position_after_the_order() -> None:
    # 0.3 BTC long already (18000); buying 0.016 more makes 18960
    view = View(pos={(0, BTC): D("0.3"), (1, BTC): D("-0.3")})
    assert check(pair(), view=view, max_position_notional_usd=D(18960), max_symbol_net_exposure_usd=D(0)).ok
    v = check(pair(), view=view, max_position_notional_usd=D(18960) - EPS)
    assert refused(v, Reason.MAX_POSITION, "symbol", 0)
    # the same order against a short shrinks the position: fine
    flipped = View(pos={(0, BTC): D("-0.3"), (1, BTC): D("0.3")})
    assert check(pair(), view=flipped, max_position_notional_usd=D(18000)).ok
    # a sell adds to a short on the sell venue
    short = View(pos={(1, BTC): D("-0.3"), (2, BTC): D("0.3")})
    v = check(pair(), view=short, max_position_notional_usd=D(18960) - EPS)
    assert refused(v, Reason.MAX_POSITION, "symbol", 1)
    # hedges are held to it, exits are not
    hedge = [leg(0, purpose=Purpose.HEDGE)]
    assert refused(check(hedge, view=view, max_position_notional_usd=D(18960) - EPS), Reason.MAX_POSITION, "symbol")
    assert check([leg(0, purpose=Purpose.UNWIND)], view=view, max_position_notional_usd=D(1)).ok


def test_symbol_net_exposure_across_venues() -> None:
    # a naked 0.05 BTC long on venue 2: net 0.05 x 60000 = 3000; the pair itself is net 0
    view = View(pos={(2, BTC): D("0.05")})
    assert check(pair(), view=view, max_symbol_net_exposure_usd=D(3000)).ok
    v = check(pair(), view=view, max_symbol_net_exposure_usd=D(3000) - EPS)
    assert refused(v, Reason.SYMBOL_EXPOSURE, "symbol", 0)
    # other symbols do not count
    assert check(pair(symbol=ETH, qty="0.3", price="3000"), view=view, max_symbol_net_exposure_usd=D(1)).ok
    # exits and hedges are not held to it (a hedge is what shrinks it)
    assert check(pair(Purpose.CLOSE), view=view, max_symbol_net_exposure_usd=D(1)).ok
    assert check([leg(1, Side.SELL, purpose=Purpose.HEDGE)], view=view, max_symbol_net_exposure_usd=D(1)).ok


# -- order ------------------------------------------------------------------------------


@pytest.mark.parametrize("purpose", list(Purpose))
def test_zero_quantity(purpose: Purpose) -> None:
    assert refused(check(pair(purpose, qty="0")), Reason.NO_SIZE, "order", 0)


def test_no_market() -> None:
    view = View()
    view.markets[(1, BTC)] = None
    assert refused(check(pair(), view=view), Reason.NO_MARKET, "order", 1)


def test_off_grid_quantity_and_limit_price() -> None:
    assert refused(check(pair(qty="0.0165")), Reason.OFF_GRID, "order", 0)
    assert refused(check(pair(Purpose.CLOSE, qty="0.0165")), Reason.OFF_GRID, "order", 0)
    assert check(pair(limit="60000.1")).ok
    assert refused(check(pair(limit="60000.15")), Reason.OFF_GRID, "order", 0)
    assert refused(check([leg(limit="0")]), Reason.OFF_GRID, "order", 0)
    # the valuation price need not be on the tick (it is a quote)
    assert check(pair(price="60000.05")).ok


def test_price_band_for_openings() -> None:
    # mid 60000, band 50 bps = 300
    assert check(pair(limit="60300.0")).ok
    assert refused(check(pair(limit="60300.1")), Reason.PRICE_BAND, "order", 0)
    assert check(pair(limit="59700.0")).ok
    assert refused(check(pair(limit="59699.9")), Reason.PRICE_BAND, "order", 0)
    # a market order is banded by the quote it was priced from
    assert check(pair(price="60300")).ok
    assert refused(check(pair(price="60300.01")), Reason.PRICE_BAND, "order", 0)
    # against its own venue's mid
    view = View()
    view.marks[(1, BTC)] = D(61000)
    assert refused(check(pair(limit="60000.0"), view=view), Reason.PRICE_BAND, "order", 1)
    assert refused(check([leg(0, purpose=Purpose.HEDGE, price="70000")]), Reason.PRICE_BAND, "order", 0)


def test_price_band_without_a_mid() -> None:
    view = View()
    view.marks[(0, BTC)] = None
    assert refused(check(pair(), view=view), Reason.NO_QUOTE, "order", 0)


@pytest.mark.parametrize("purpose", EXITS)
def test_exits_are_never_banded(purpose: Purpose) -> None:
    assert check(pair(purpose, price="30000")).ok
    assert check(pair(purpose, limit="90000.0")).ok
    view = View()
    view.marks[(0, BTC)] = None
    assert check(pair(purpose), view=view).ok


def test_min_notional() -> None:
    # BTC min notional 5: 0.001 x 5000 = 5 passes, 0.001 x 4999.9 does not
    view = View(marks={(v, s): D(5000) for v in range(3) for s in range(2)})
    assert check(pair(qty="0.001", price="5000"), view=view).ok
    v = check(pair(qty="0.001", price="4999.9"), view=view)
    assert refused(v, Reason.MIN_NOTIONAL, "order", 0)
    assert check(pair(Purpose.CLOSE, qty="0.001", price="4999.9"), view=view).ok


def test_legs_unequal() -> None:
    legs = [leg(0, qty="0.016"), leg(1, Side.SELL, qty="0.017")]
    assert refused(check(legs, max_symbol_net_exposure_usd=D(100)), Reason.LEGS_UNEQUAL, "order", 1)
    assert check([leg(0, purpose=Purpose.UNWIND, qty="0.016"), leg(1, Side.SELL, purpose=Purpose.UNWIND,
                                                                    qty="0.017")]).ok


def test_max_notional_per_order() -> None:
    # 0.08 x 60000 = 4800; limit 4800 passes, just below refuses
    assert check(pair(qty="0.08"), max_notional_per_trade_usd=D(4800)).ok
    v = check(pair(qty="0.08"), max_notional_per_trade_usd=D(4800) - EPS)
    assert refused(v, Reason.MAX_NOTIONAL, "order", 0)
    assert check(pair(Purpose.CLOSE, qty="0.1"), max_notional_per_trade_usd=D(1)).ok  # getting out is never capped


# -- decisions and layers -----------------------------------------------------------------


def test_layers_are_checked_in_order() -> None:
    # over the gross limit (global) and the per-order notional (order): global wins
    v = check(pair(qty="0.1"), max_gross_exposure_usd=D(1))
    assert refused(v, Reason.GROSS_EXPOSURE, "global")
    # a stale quote (venue) before a paused symbol (symbol) before a zero size (order)
    v = check([leg(age_ms=5000, qty="0")], view=View(paused={BTC}))
    assert refused(v, Reason.STALE_QUOTE, "venue")
    assert refused(check([leg(qty="0")], view=View(paused={BTC})), Reason.SYMBOL_PAUSED, "symbol")


def test_positions_after_all_legs_of_the_decision() -> None:
    # 0.3 BTC long on venue 0 (18000): a hedge buying 0.05 alone makes 21000 > 20000, but with an
    # unwind selling 0.05 on the same venue in the same decision the position stays at 18000
    view = View(pos={(0, BTC): D("0.3")})
    hedge = leg(0, qty="0.05", purpose=Purpose.HEDGE)
    unwind = leg(0, Side.SELL, qty="0.05", purpose=Purpose.UNWIND)
    assert refused(check([hedge], view=view), Reason.MAX_POSITION, "symbol", 0)
    assert check([hedge, unwind], view=view).ok
    assert check([unwind, hedge], view=view).ok


def test_one_failing_leg_refuses_the_decision() -> None:
    view = View()
    view.markets[(1, BTC)] = None
    gate = RiskGate(LIMITS, FakeStatus())
    a = gate.check(pair(), open_trades=0, now_ns=NOW, view=view)
    assert not a.ok and a.verdict.leg == 1
    with pytest.raises(RuntimeError):
        gate.consume(a)
    assert gate.sent == 0 and gate.approved == 0


# -- config -----------------------------------------------------------------------------


def test_limits_from_config() -> None:
    cfg = make_config(risk={"max_open_trades": 2, "max_gross_exposure_usd": 70000, "max_venue_notional_usd": 30000,
                            "max_open_orders_per_venue": 7, "min_margin_headroom_usd": 250.5,
                            "max_symbol_net_exposure_usd": 1234, "price_band_bps": 12.5},
                      scanner={"stale_after_ms": 250})
    lim = Limits.from_config(cfg)
    assert lim.max_open_trades == 2
    assert lim.stale_after_ns == 250 * MS
    assert lim.max_notional_per_trade_usd == D("5000.0")
    assert lim.max_position_notional_usd == D("20000.0")
    assert lim.max_gross_exposure_usd == D(70000)
    assert lim.max_venue_notional_usd == D(30000)
    assert lim.max_open_orders_per_venue == 7
    assert lim.min_margin_headroom_usd == D("250.5")
    assert lim.max_symbol_net_exposure_usd == D(1234)
    assert lim.price_band_bps == D("12.5")


def test_default_limits_do_not_block_the_demo() -> None:
    cfg = make_config()
    lim = Limits.from_config(cfg)
    qty = D(repr(cfg.exec.trade_notional_usd)) / D(60000)
    qty = qty.quantize(D("0.001"))
    n = cfg.risk.max_open_trades - 1
    # every open trade so far on the same two venues and symbol
    view = View(pos={(0, BTC): qty * n, (1, BTC): -qty * n})
    legs = [LegCheck(0, BTC, Side.BUY, qty, D(60000), Purpose.OPEN, NOW, margin=qty * 12000,
                     limit_price=D("60000.0")),
            LegCheck(1, BTC, Side.SELL, qty, D(60000), Purpose.OPEN, NOW, margin=qty * 12000,
                     limit_price=D("60000.0"))]
    v = check_legs(legs, limits=lim, halted=False, trading_state=RUNNING, open_trades=n, now_ns=NOW,
                   feed_states=[UP, UP], view=view)
    assert v.ok, v


@pytest.mark.parametrize(("key", "value"), [
    ("max_gross_exposure_usd", 0),
    ("max_venue_notional_usd", -1),
    ("max_open_orders_per_venue", 0),
    ("min_margin_headroom_usd", -0.01),
    ("max_symbol_net_exposure_usd", 0),
    ("price_band_bps", 0),
    ("price_band_bps", 1000.5),
    ("max_open_orders_per_venue", "many"),
])
def test_config_bounds_name_the_key(key: str, value: object) -> None:
    with pytest.raises(ConfigError) as e:
        make_config(risk={key: value})
    assert e.value.path == f"$.risk.{key}"


@pytest.mark.parametrize(("values", "named"), [
    ({"max_venue_notional_usd": 19999}, "max_venue_notional_usd"),
    ({"max_gross_exposure_usd": 49999}, "max_gross_exposure_usd"),
])
def test_config_limits_must_nest(values: dict[str, float], named: str) -> None:
    with pytest.raises(ConfigError) as e:
        make_config(risk=values)
    assert e.value.path == "$.risk" and named in e.value.problem
    make_config(risk={"max_position_notional_usd": 1000, "max_venue_notional_usd": 1000,
                      "max_gross_exposure_usd": 1000, "max_notional_per_trade_usd": 1000})


# -- the gate ---------------------------------------------------------------------------


class FakeStatus:
    def __init__(self) -> None:
        self.halt = False
        self.state = TradingState.RUNNING
        self.feeds = [UP, UP, UP]

    def halted(self) -> bool:
        return self.halt

    def trading_state(self) -> TradingState:
        return self.state

    def feed_state(self, venue: int) -> FeedState:
        return self.feeds[venue]


def test_gate_counts_and_approvals_are_single_use() -> None:
    st = FakeStatus()
    gate = RiskGate(LIMITS, st)
    view = View()
    a = gate.check(pair(), open_trades=0, now_ns=NOW, view=view)
    assert a.ok and gate.checked == 2 and gate.approved == 2 and gate.sent == 0 and gate.pending == 2
    assert len(gate.consume(a)) == 2 and gate.sent == 2 and gate.pending == 0
    with pytest.raises(RuntimeError):
        gate.consume(a)
    st.feeds[1] = FeedState.DOWN
    refused_ = gate.check(pair(), open_trades=0, now_ns=NOW, view=view)
    assert refused_.reason is Reason.FEED_DOWN
    with pytest.raises(RuntimeError):
        gate.consume(refused_)
    st.feeds[1] = UP
    st.state = TradingState.REDUCE_ONLY
    assert gate.check(pair(), open_trades=0, now_ns=NOW, view=View(paused={BTC})).reason is Reason.REDUCE_ONLY
    st.state = TradingState.RUNNING
    assert gate.check(pair(), open_trades=0, now_ns=NOW, view=View(paused={BTC})).reason is Reason.SYMBOL_PAUSED
    assert gate.check(pair(qty="0.0161"), open_trades=0, now_ns=NOW, view=view).reason is Reason.OFF_GRID
    assert gate.checked == 10 and gate.approved == 2 and gate.sent == 2 and gate.rejected == 4
    assert gate.rejections == {Reason.FEED_DOWN: 1, Reason.REDUCE_ONLY: 1, Reason.SYMBOL_PAUSED: 1,
                               Reason.OFF_GRID: 1}
    assert gate.layer_rejections == {"venue": 1, "global": 1, "symbol": 1, "order": 1}
    assert gate.sent + gate.held + gate.pending == gate.approved <= gate.checked


def test_gate_reads_the_kill_switch_again_at_dispatch() -> None:
    st = FakeStatus()
    gate = RiskGate(LIMITS, st)
    a = gate.check(pair(), open_trades=0, now_ns=NOW, view=View())
    b = gate.check([leg(purpose=Purpose.CLOSE)], open_trades=0, now_ns=NOW, view=View())
    assert a.ok and b.ok and gate.approved == 3
    st.halt = True  # thrown while the intents are journaled
    assert gate.consume(a) == ()
    assert gate.sent == 0 and gate.held == 2 and gate.pending == 1
    assert gate.rejected == 1 and gate.rejections[Reason.HALTED] == 1 and gate.layer_rejections["global"] == 1
    with pytest.raises(RuntimeError):
        gate.consume(a)  # a held approval is spent too
    st.halt = False
    assert len(gate.consume(b)) == 1
    assert gate.sent + gate.held == gate.approved and gate.pending == 0


def test_gate_passes_the_status_flags_and_view_through() -> None:
    st = FakeStatus()
    gate = RiskGate(LIMITS, st)
    st.state = TradingState.PAUSED
    assert gate.check(pair(), open_trades=0, now_ns=NOW, view=View()).reason is Reason.PAUSED
    assert gate.check(pair(Purpose.CLOSE), open_trades=0, now_ns=NOW, view=View()).ok
    st.state = TradingState.RUNNING
    v = gate.check(pair(), open_trades=0, now_ns=NOW, view=View(orders={0: 20})).verdict
    assert v.reason is Reason.VENUE_OPEN_ORDERS and v.layer == "venue"
    gate.limits = dataclasses.replace(LIMITS, max_open_orders_per_venue=21)  # reload-risk
    assert gate.check(pair(), open_trades=0, now_ns=NOW, view=View(orders={0: 20})).ok
