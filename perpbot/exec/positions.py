"""Positions per (venue, symbol) in Decimal, with average entry and realized PnL.

`apply_fill` is the one pure rule; `PositionBook` holds the engine's book and
mirrors it as floats into the status segment's `positions` view (display only:
nothing compares those floats).

Conventions: `qty` is signed (long > 0, short < 0) in base units; `avg_price`
is the average entry of the open quantity (0 when flat); `realized_pnl` is in
the quote asset (USD) and already has every fee subtracted, including the
fees of fills that opened the position.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal

import numpy as np

from perpbot.exec.venues.base import Side

_ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class Position:
    qty: Decimal = _ZERO
    avg_price: Decimal = _ZERO
    realized_pnl: Decimal = _ZERO  # fees included
    fees: Decimal = _ZERO  # total fees paid, for reporting

    @property
    def flat(self) -> bool:
        return self.qty == 0


FLAT = Position()


def apply_fill(pos: Position, side: Side, qty: Decimal, price: Decimal, fee: Decimal) -> Position:
    """The position after one fill.

    A fill in the position's direction (or from flat) moves the average
    entry; a fill against it realizes (price - avg) on the closed part, and
    any remainder beyond flat opens the other way at the fill price.
    """
    if qty <= 0:
        raise ValueError(f"fill quantity must be positive, got {qty}")
    signed = qty if side is Side.BUY else -qty
    q0 = pos.qty
    realized = pos.realized_pnl - fee
    fees = pos.fees + fee
    if q0 == 0 or (q0 > 0) == (signed > 0):
        q1 = q0 + signed
        avg = (abs(q0) * pos.avg_price + qty * price) / abs(q1)
        return Position(q1, avg, realized, fees)
    closed = min(abs(q0), qty)
    direction = 1 if q0 > 0 else -1
    realized += closed * (price - pos.avg_price) * direction
    q1 = q0 + signed
    if q1 == 0:
        avg = _ZERO
    elif (q1 > 0) == (q0 > 0):
        avg = pos.avg_price
    else:
        avg = price  # flipped: the remainder was opened by this fill
    return Position(q1, avg, realized, fees)


def add_funding(pos: Position, amount: Decimal) -> Position:
    """The position after the venue booked funding on it (`amount` > 0 received)."""
    return Position(pos.qty, pos.avg_price, pos.realized_pnl + amount, pos.fees)


def reduces(position_qty: Decimal, side: Side, qty: Decimal) -> bool:
    """True when an order only shrinks the net position (a valid reduce-only order)."""
    if position_qty == 0:
        return False
    opposite = (position_qty > 0) != (side is Side.BUY)
    return opposite and qty <= abs(position_qty)


class PositionBook:
    """The engine's positions, indexed by board (venue, symbol) indices."""

    def __init__(self, n_venues: int, n_symbols: int) -> None:
        self.n_venues = n_venues
        self.n_symbols = n_symbols
        self._pos: dict[tuple[int, int], Position] = {}

    def get(self, venue: int, symbol: int) -> Position:
        return self._pos.get((venue, symbol), FLAT)

    def qty(self, venue: int, symbol: int) -> Decimal:
        """Signed net quantity (the risk gate's `position` callback)."""
        return self._pos.get((venue, symbol), FLAT).qty

    def apply(self, venue: int, symbol: int, side: Side, qty: Decimal, price: Decimal,
              fee: Decimal) -> Position:
        pos = apply_fill(self.get(venue, symbol), side, qty, price, fee)
        self._pos[(venue, symbol)] = pos
        return pos

    def add_funding(self, venue: int, symbol: int, amount: Decimal) -> Position:
        pos = add_funding(self.get(venue, symbol), amount)
        self._pos[(venue, symbol)] = pos
        return pos

    def held(self) -> Iterator[tuple[tuple[int, int], Position]]:
        """The non-zero positions, unsorted (for the risk gate's exposure sums)."""
        return ((k, p) for k, p in self._pos.items() if p.qty)

    def items(self) -> Iterator[tuple[tuple[int, int], Position]]:
        return iter(sorted(self._pos.items()))

    def net(self, symbol: int) -> Decimal:
        """Net quantity of one symbol across every venue (0 when the legs hedge each other)."""
        return sum((p.qty for (_, s), p in self._pos.items() if s == symbol), _ZERO)

    def realized_pnl(self) -> Decimal:
        return sum((p.realized_pnl for p in self._pos.values()), _ZERO)

    def mirror(self, view: np.ndarray, venue: int, symbol: int) -> None:
        """Write one position as floats into the status segment's positions view."""
        pos = self.get(venue, symbol)
        view[venue, symbol] = (float(pos.qty), float(pos.avg_price))
