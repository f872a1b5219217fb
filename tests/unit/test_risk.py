"""The risk gate: one test per reason, both legs together, counters, one-time approvals."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal as D

import pytest
from kit import make_config

from perpbot.exec.risk import (
    LegCheck,
    Limits,
    Purpose,
    Reason,
    RiskGate,
    check_legs,
)
from perpbot.exec.venues.base import Side
from perpbot.shm.layout import FeedState

NOW = 10**15
MS = 1_000_000
LIMITS = Limits(
    max_notional_per_trade_usd=D(5000),
    max_position_notional_usd=D(20000),
    max_open_trades=4,
    stale_after_ns=1000 * MS,
)
UP = FeedState.CONNECTED


def leg(venue: int = 0, side: Side = Side.BUY, qty: str = "0.016", price: str = "60000",
        purpose: Purpose = Purpose.OPEN, age_ms: int = 1) -> LegCheck:
    return LegCheck(venue, 0, side, D(qty), D(price), purpose, NOW - age_ms * MS)


def pair(purpose: Purpose = Purpose.OPEN, **kw: object) -> list[LegCheck]:
    return [leg(0, Side.BUY, purpose=purpose, **kw),  # type: ignore[arg-type]
            leg(1, Side.SELL, purpose=purpose, **kw)]  # type: ignore[arg-type]


def check(legs: Sequence[LegCheck], *, halted: bool = False, may_open: bool = True,
          open_trades: int = 0, feeds: Sequence[FeedState] | None = None,
          positions: Sequence[D] | None = None):
    return check_legs(legs, limits=LIMITS, halted=halted, may_open=may_open,
                      open_trades=open_trades, now_ns=NOW,
                      feed_states=feeds or [UP] * len(legs),
                      positions=positions or [D(0)] * len(legs))


def test_ok() -> None:
    v = check(pair())
    assert v.ok and v.reason is Reason.OK


def test_reason_codes_are_stable() -> None:
    assert Reason.OK == 0 and Reason.HALTED == 1 and Reason.PAUSED == 2


@pytest.mark.parametrize("purpose", list(Purpose))
def test_halted_refuses_every_order_of_every_kind(purpose: Purpose) -> None:
    assert check(pair(purpose), halted=True, may_open=False).reason is Reason.HALTED


def test_paused_refuses_opening_but_not_closing() -> None:
    assert check(pair(), may_open=False).reason is Reason.PAUSED
    assert check(pair(Purpose.CLOSE), may_open=False).ok
    assert check([leg(purpose=Purpose.UNWIND)], may_open=False).ok


def test_max_open_trades() -> None:
    assert check(pair(), open_trades=4).reason is Reason.MAX_OPEN_TRADES
    assert check(pair(), open_trades=3).ok
    assert check(pair(Purpose.CLOSE), open_trades=9).ok


def test_max_notional_per_order() -> None:
    v = check(pair(qty="0.1"))  # 6000 USD
    assert v.reason is Reason.MAX_NOTIONAL and v.leg == 0
    assert check(pair(Purpose.CLOSE, qty="0.1")).ok  # getting out is never capped


def test_max_position_after_the_order() -> None:
    # 0.3 BTC long already (18000 USD); buying 0.05 more makes 21000 > 20000
    v = check(pair(qty="0.05"), positions=[D("0.3"), D(0)])
    assert v.reason is Reason.MAX_POSITION and v.leg == 0
    # the same order against a short shrinks the position: fine
    assert check(pair(qty="0.05"), positions=[D("-0.3"), D(0)]).ok
    # a sell adds to a short on the sell venue
    v = check(pair(qty="0.05"), positions=[D(0), D("-0.3")])
    assert v.reason is Reason.MAX_POSITION and v.leg == 1


def test_stale_quote_on_either_leg_refuses_both() -> None:
    legs = [leg(0, age_ms=1), leg(1, Side.SELL, age_ms=1001)]
    v = check(legs)
    assert v.reason is Reason.STALE_QUOTE and v.leg == 1
    assert check(pair(Purpose.CLOSE, age_ms=1001)).reason is Reason.STALE_QUOTE


def test_feed_not_connected() -> None:
    v = check(pair(), feeds=[UP, FeedState.STALE])
    assert v.reason is Reason.FEED_DOWN and v.leg == 1
    assert check(pair(Purpose.CLOSE), feeds=[FeedState.DOWN, UP]).reason is Reason.FEED_DOWN


def test_missing_quote() -> None:
    legs = [LegCheck(0, 0, Side.SELL, D("0.01"), D(0), Purpose.UNWIND, 0)]
    assert check(legs).reason is Reason.NO_QUOTE


def test_zero_quantity() -> None:
    assert check(pair(qty="0")).reason is Reason.NO_SIZE


def test_limits_from_config() -> None:
    cfg = make_config(risk={"max_open_trades": 2}, scanner={"stale_after_ms": 250})
    lim = Limits.from_config(cfg)
    assert lim.max_open_trades == 2
    assert lim.stale_after_ns == 250 * MS
    assert lim.max_notional_per_trade_usd == D("5000.0")


class FakeStatus:
    def __init__(self) -> None:
        self.halt = False
        self.open_ok = True
        self.feeds = [UP, UP]

    def halted(self) -> bool:
        return self.halt

    def may_open(self) -> bool:
        return self.open_ok and not self.halt

    def feed_state(self, venue: int) -> FeedState:
        return self.feeds[venue]


def test_gate_counts_checked_and_sent_and_approvals_are_single_use() -> None:
    st = FakeStatus()
    gate = RiskGate(LIMITS, st)
    a = gate.check(pair(), open_trades=0, now_ns=NOW, position=lambda v, s: D(0))
    assert a.ok and gate.checked == 2 and gate.sent == 0
    assert len(gate.consume(a)) == 2 and gate.sent == 2
    with pytest.raises(RuntimeError):
        gate.consume(a)
    st.feeds[1] = FeedState.DOWN
    refused = gate.check(pair(), open_trades=0, now_ns=NOW, position=lambda v, s: D(0))
    assert refused.reason is Reason.FEED_DOWN
    assert gate.checked == 4 and gate.rejected == 1
    with pytest.raises(RuntimeError):
        gate.consume(refused)
    assert gate.sent <= gate.checked


def test_gate_reads_the_kill_switch_again_at_dispatch() -> None:
    st = FakeStatus()
    gate = RiskGate(LIMITS, st)
    a = gate.check(pair(), open_trades=0, now_ns=NOW, position=lambda v, s: D(0))
    assert a.ok
    st.halt = True  # thrown while the intents are journaled
    assert gate.consume(a) == ()
    assert gate.sent == 0
