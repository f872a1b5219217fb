"""Fee-aware cross-venue edge for one symbol: pure functions, no I/O.

Buying on venue i costs `ask_i * (1 + taker_i)` per unit; selling on venue j
yields `bid_j * (1 - taker_j)`. The edge is the best (j proceeds - i cost) /
i cost over i != j, found in O(venues) from the two cheapest buys and the two
dearest sells.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol


class Edge(NamedTuple):
    buy_venue: int
    sell_venue: int
    edge_bps: float  # net of both taker fees


def net_edge_bps(buy_ask: float, sell_bid: float, buy_fee_bps: float, sell_fee_bps: float) -> float:
    """The edge of one (buy, sell) pair net of both taker fees; `best_edge` uses the same formula."""
    cost = buy_ask * (1.0 + buy_fee_bps / 1e4)
    return (sell_bid * (1.0 - sell_fee_bps / 1e4) - cost) / cost * 1e4


def fee_multipliers(taker_fee_bps: Sequence[float]) -> tuple[list[float], list[float]]:
    """(buy cost multipliers, sell proceeds multipliers) per venue."""
    return [1.0 + f / 1e4 for f in taker_fee_bps], [1.0 - f / 1e4 for f in taker_fee_bps]


def best_edge(bids: Sequence[float], asks: Sequence[float], buy_mult: Sequence[float],
              sell_mult: Sequence[float], can_buy: Sequence[bool], can_sell: Sequence[bool]) -> Edge | None:
    """The most profitable (buy venue, sell venue) pair, or None if fewer than two venues qualify.

    `can_buy[i]` / `can_sell[j]` exclude venues whose quote is stale, missing or too thin
    on that side. The edge may be negative; the caller applies its threshold.
    """
    b1 = b2 = -1  # cheapest and second-cheapest buy
    c1 = c2 = float("inf")
    s1 = s2 = -1  # dearest and second-dearest sell
    p1 = p2 = float("-inf")
    for v in range(len(bids)):
        if can_buy[v]:
            c = asks[v] * buy_mult[v]
            if c < c1:
                b2, c2, b1, c1 = b1, c1, v, c
            elif c < c2:
                b2, c2 = v, c
        if can_sell[v]:
            p = bids[v] * sell_mult[v]
            if p > p1:
                s2, p2, s1, p1 = s1, p1, v, p
            elif p > p2:
                s2, p2 = v, p
    if b1 < 0 or s1 < 0:
        return None
    if b1 != s1:
        return Edge(b1, s1, (p1 - c1) / c1 * 1e4)
    best: Edge | None = None
    if s2 >= 0:
        best = Edge(b1, s2, (p2 - c1) / c1 * 1e4)
    if b2 >= 0:
        alt = Edge(b2, s1, (p1 - c2) / c2 * 1e4)
        if best is None or alt.edge_bps > best.edge_bps:
            best = alt
    return best


class TopOfBook(Protocol):
    """What `symbol_edge` reads of a quote (`perpbot.shm.Quote` has it)."""

    @property
    def bid(self) -> float: ...
    @property
    def ask(self) -> float: ...
    @property
    def bid_size(self) -> float: ...
    @property
    def ask_size(self) -> float: ...
    @property
    def ts_recv_ns(self) -> int: ...


class SymbolEdge(NamedTuple):
    edge: Edge | None
    stale: int  # venues left out: feed not connected, or quote older than the stale limit
    thin: int  # venues whose top of book on one side is below the minimum notional


def symbol_edge(quotes: Sequence[TopOfBook | None], connected: Sequence[bool], t: int, *, stale_ns: int,
                min_notional: float, buy_mult: Sequence[float], sell_mult: Sequence[float]) -> SymbolEdge:
    """The best edge for one symbol over the venues' latest quotes at time `t`.

    A venue takes part only with a connected feed and a quote younger than
    `stale_ns`; a side of it only with at least `min_notional` at the top.
    """
    n = len(quotes)
    bids = [0.0] * n
    asks = [0.0] * n
    can_buy = [False] * n
    can_sell = [False] * n
    stale = thin = 0
    for v in range(n):
        q = quotes[v]
        if q is None:
            continue
        if not connected[v] or t - q.ts_recv_ns > stale_ns:
            stale += 1
            continue
        bids[v] = q.bid
        asks[v] = q.ask
        can_buy[v] = q.ask * q.ask_size >= min_notional
        can_sell[v] = q.bid * q.bid_size >= min_notional
        if not (can_buy[v] and can_sell[v]):
            thin += 1
    return SymbolEdge(best_edge(bids, asks, buy_mult, sell_mult, can_buy, can_sell), stale, thin)
