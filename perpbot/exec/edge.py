"""Pure money arithmetic of one arbitrage trade: entry edge and exit PnL.

A trade buys on the cheap venue (at its ask) and sells on the dear one (at its
bid); it closes by selling on the buy venue (at its bid) and buying back on
the sell venue (at its ask). Every leg pays its venue's taker fee, so a round
trip pays four.
"""

from __future__ import annotations

from decimal import Decimal

from perpbot.exec.venues.base import FundingRate
from perpbot.scanner.edge import net_edge_bps as scanner_edge_bps

_BPS = Decimal(10_000)


def fee_rate(bps: float) -> Decimal:
    """A fee in bps (config float) as an exact fraction of notional."""
    return Decimal(repr(bps)) / _BPS


def net_edge_bps(buy_ask: Decimal, sell_bid: Decimal, buy_fee_bps: float, sell_fee_bps: float) -> float:
    """Entry edge net of both taker fees, by the scanner's own definition (a threshold, so a float)."""
    return scanner_edge_bps(float(buy_ask), float(sell_bid), buy_fee_bps, sell_fee_bps)


def leg_cash(side_sign: int, qty: Decimal, price: Decimal, fee: Decimal) -> Decimal:
    """Cash a fill moves, fees included: a buy pays qty*price, a sell receives it."""
    return -side_sign * qty * price - fee


def exit_pnl(
    *,
    cash: Decimal,
    long_qty: Decimal,
    short_qty: Decimal,
    exit_bid_on_buy_venue: Decimal,
    exit_ask_on_sell_venue: Decimal,
    buy_venue_fee: Decimal,
    sell_venue_fee: Decimal,
) -> Decimal:
    """Realized PnL of the trade if both legs were closed now at the given prices.

    `cash` is what the trade's fills so far moved (fees included, see
    `leg_cash`); the exit sells `long_qty` at the bid and buys back `short_qty`
    at the ask, each paying its venue's taker fee rate.
    """
    sell_notional = long_qty * exit_bid_on_buy_venue
    buy_notional = short_qty * exit_ask_on_sell_venue
    return (cash + sell_notional - buy_notional
            - sell_notional * buy_venue_fee - buy_notional * sell_venue_fee)


def pnl_bps(pnl: Decimal, notional: Decimal) -> float:
    """PnL as bps of a notional (0 when the notional is 0)."""
    if not notional:
        return 0.0
    return float(pnl / notional * _BPS)


def expected_funding_bps(buy: FundingRate | None, sell: FundingRate | None, hold_ms: int) -> float:
    """Funding a long on the buy venue and a short on the sell venue expect over `hold_ms`.

    In bps of notional, + = received. A positive rate is paid by longs to
    shorts, once per the venue's interval (1 h and 8 h venues differ by 8x per
    payment, which is why the interval is part of the rate). Prorated over the
    holding time: an estimate for the entry threshold, not a booking (bookings
    come from the venue, `Venue.funding_payments`). Unknown rates count as 0.
    """
    bps = 0.0
    if buy is not None and buy.interval_ms > 0:
        bps -= float(buy.rate) * hold_ms / buy.interval_ms
    if sell is not None and sell.interval_ms > 0:
        bps += float(sell.rate) * hold_ms / sell.interval_ms
    return bps * 1e4
