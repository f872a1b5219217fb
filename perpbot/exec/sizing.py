"""Pure sizing: lot and tick rounding, and one size valid for both legs.

Prices on the board are floats; they become `Decimal` here through their
shortest repr (`Decimal(repr(x))`), so 60000.1 is exactly `60000.1` and not
the binary neighbour `60000.09999999999854...`.

Rounding rules (all deliberate, all conservative):

- Sizes round DOWN to the lot: never trade more than was decided or than the
  book showed.
- A buy price rounds UP to the tick, a sell price DOWN. For a taker IOC limit
  this keeps the order marketable against the quote it was priced from (an ask
  rounded down could fall below the ask and not fill), and for an edge or PnL
  estimate it assumes the slightly worse price, never the better one.
"""

from __future__ import annotations

from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import NamedTuple

from perpbot.exec.risk import Reason
from perpbot.exec.venues.base import Market, Side

_ZERO = Decimal(0)


def to_decimal(x: float) -> Decimal:
    """A board float as the Decimal it was written as (shortest repr)."""
    return Decimal(repr(x))


def round_down(x: Decimal, step: Decimal) -> Decimal:
    """The largest multiple of `step` not above `x` (`step` > 0)."""
    return (x / step).to_integral_value(rounding=ROUND_FLOOR) * step


def round_up(x: Decimal, step: Decimal) -> Decimal:
    """The smallest multiple of `step` not below `x` (`step` > 0)."""
    return (x / step).to_integral_value(rounding=ROUND_CEILING) * step


def round_qty(qty: Decimal, lot: Decimal) -> Decimal:
    """A size on the lot grid, rounded down."""
    return round_down(qty, lot)


def round_price(price: Decimal, tick: Decimal, side: Side) -> Decimal:
    """A limit price on the tick grid: buys round up, sells round down (module docstring)."""
    return round_up(price, tick) if side is Side.BUY else round_down(price, tick)


class SizeDecision(NamedTuple):
    """`qty` > 0 and `reason` OK, or `qty` 0 and the reason it cannot be traded."""

    qty: Decimal
    reason: Reason
    detail: str = ""


def choose_size(
    *,
    trade_notional_usd: Decimal,
    buy_price: Decimal,
    sell_price: Decimal,
    buy_top_size: Decimal,
    sell_top_size: Decimal,
    buy_market: Market,
    sell_market: Market,
) -> SizeDecision:
    """One quantity valid on both legs, or a skip reason.

    The target is `trade_notional_usd` at the dearer of the two prices (so
    neither leg exceeds it), capped by both top-of-book sizes, rounded down to
    the coarser lot. It must also sit on the finer lot (true when one lot is a
    multiple of the other) and reach each leg's `min_notional_usd`.
    """
    if buy_price <= 0 or sell_price <= 0:
        return SizeDecision(_ZERO, Reason.NO_SIZE, "non-positive price")
    ref = max(buy_price, sell_price)
    raw = min(trade_notional_usd / ref, buy_top_size, sell_top_size)
    lot = max(buy_market.lot_size, sell_market.lot_size)
    other = min(buy_market.lot_size, sell_market.lot_size)
    qty = round_qty(raw, lot) if raw > 0 else _ZERO
    if qty <= 0:
        return SizeDecision(_ZERO, Reason.NO_SIZE, f"size {raw} below lot {lot}")
    if qty % other:
        return SizeDecision(_ZERO, Reason.NO_SIZE, f"lots {lot} and {other} share no grid")
    for price, market, leg in ((buy_price, buy_market, "buy"), (sell_price, sell_market, "sell")):
        if qty * price < market.min_notional_usd:
            return SizeDecision(
                _ZERO, Reason.MIN_NOTIONAL,
                f"{leg} leg {qty} x {price} below min notional {market.min_notional_usd}",
            )
    return SizeDecision(qty, Reason.OK)
