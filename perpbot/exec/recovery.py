"""Rebuild exec's state from the journal after a crash (`kill -9` included).

The journal is written before every order is sent and after every result
(see `journal`), so it alone says what exec was holding when it died:

- `recover(path)` (pure: reads the file, writes nothing) rebuilds every trade
  still `opening` or `open` with its legs, money and per-purpose attempt
  counts; the positions per (venue, symbol) from every fill, with the same
  `positions.apply_fill` rule the engine uses; and the orders whose row is
  still an `intent` (the order may or may not have reached the venue).
- `resolve_intents(pending, venues)` asks each order's venue what became of
  it by client order id (`fetch_order`): a real venue answers from its own
  records (ccxt `fetch_order`); the paper venue, which fills IOC orders
  synchronously and remembers fills only, answers "unknown" for an order
  that never filled. `record_resolutions` journals the answers, after which
  `recover` is run again so the journal stays the one source of truth.
- `reconcile(...)` compares what the journal says each venue holds with what
  the venue reports; exec refuses to trade on a mismatch.

The engine then takes the result with `Engine.restore`. Client order ids
after recovery never repeat a journaled one: each trade's attempt counter
continues past the highest attempt journaled for each purpose, and trade ids
continue past the journal's highest (`Journal.next_trade_id`).
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Protocol, runtime_checkable

from perpbot.errors import FatalError
from perpbot.exec.edge import leg_cash
from perpbot.exec.journal import Journal
from perpbot.exec.positions import FLAT, Position, add_funding, apply_fill
from perpbot.exec.venues.base import Fill, OpenOrder, OrderResult, Side, Venue

_ZERO = Decimal(0)
#: journal states of a trade exec still holds
LIVE_STATES = ("opening", "open")
#: order status given to an intent the venue never saw
NOT_SENT = "not_sent"
#: order statuses whose outcome only the venue can tell: an intent written before the send,
#: and an order whose final state could not be established when it was sent
PENDING_STATES = ("intent", "unknown")
#: purposes whose fills build a trade's legs
ENTRY_PURPOSES = ("open", "hedge")


@dataclass(frozen=True, slots=True)
class RecoveredTrade:
    """One trade still held, as the engine's `Trade` had it (venues and symbol by name)."""

    trade_id: int
    opp_id: int
    symbol: str
    buy_venue: str
    sell_venue: str
    entry_edge_bps: float
    open_ns: int  # the opening decision's stamp (the engine's `Trade.open_ns`)
    buy_order: str
    sell_order: str
    state: str  # opening | open
    long_qty: Decimal
    short_qty: Decimal
    hedged_qty: Decimal
    buy_cost: Decimal  # qty x price of the fills that built the long leg
    buy_filled: Decimal
    entry_notional: Decimal
    cash: Decimal  # every fill of the trade, fees included, and its booked funding
    fees: Decimal
    funding: Decimal
    #: decisions journaled per exit purpose (close, unwind): the next attempt's number
    attempts: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class PendingOrder:
    """An order whose journal row is still `intent`: sent or not, the venue knows."""

    client_order_id: str
    trade_id: int
    venue: str
    symbol: str
    side: Side
    qty: Decimal
    purpose: str


@dataclass(frozen=True, slots=True)
class RecoveredState:
    """Everything exec held at its last journal commit."""

    trades: tuple[RecoveredTrade, ...]
    #: (venue, symbol) -> position after every journaled fill, in fill order
    positions: Mapping[tuple[str, str], Position]
    fills: tuple[Fill, ...]  # every journaled fill, in the order it was journaled
    pending: tuple[PendingOrder, ...]
    next_trade_id: int
    client_order_ids: frozenset[str] = field(default_factory=frozenset)

    def fills_on(self, venue: str) -> list[Fill]:
        """The journaled fills of one venue (what a paper venue is seeded with)."""
        return [f for f in self.fills if f.venue == venue]


def attempt_of(client_order_id: str) -> int:
    """The retry number of a client order id `<run>-<trade>-<purpose>-<leg>[-n]` (0 without `-n`)."""
    last = client_order_id.rsplit("-", 1)[-1]
    # the leg (buy | sell) is never numeric, and the run id is at the front: only a retry ends in digits
    return int(last) if last.isdigit() else 0


def _dec(s: str | None) -> Decimal:
    return _ZERO if s is None else Decimal(s)


def recover(path: Path) -> RecoveredState:
    """Read a journal file and rebuild what exec held; writes nothing."""
    if not path.exists():
        return RecoveredState((), {}, (), (), 1)
    # read-only: recovery must never create or change the file it recovers from
    con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return _recover(con)
    finally:
        con.close()


def _recover(con: sqlite3.Connection) -> RecoveredState:
    con.row_factory = sqlite3.Row
    fills: list[Fill] = []
    positions: dict[tuple[str, str], Position] = {}
    by_order: dict[str, list[Fill]] = {}
    for r in con.execute("SELECT * FROM fills ORDER BY rowid"):
        f = Fill(r["fill_id"], r["client_order_id"], r["venue"], r["symbol"], Side(r["side"]),
                 Decimal(r["qty"]), Decimal(r["price"]), Decimal(r["fee"]), int(r["ts_ns"]))
        fills.append(f)
        by_order.setdefault(f.client_order_id, []).append(f)
        key = (f.venue, f.symbol)
        positions[key] = apply_fill(positions.get(key, FLAT), f.side, f.qty, f.price, f.fee)

    fill_pos = {f.fill_id: n for n, f in enumerate(fills)}
    orders = con.execute("SELECT * FROM orders ORDER BY rowid").fetchall()
    pending = tuple(
        PendingOrder(o["client_order_id"], int(o["trade_id"]), o["venue"], o["symbol"],
                     Side(o["side"]), Decimal(o["qty"]), o["purpose"])
        for o in orders if o["status"] in PENDING_STATES
    )
    funding_of: dict[int, Decimal] = {}
    for r in con.execute("SELECT * FROM funding ORDER BY rowid"):
        key = (r["venue"], r["symbol"])
        positions[key] = add_funding(positions.get(key, FLAT), Decimal(r["amount"]))
        if r["trade_id"] is not None:
            tid = int(r["trade_id"])
            funding_of[tid] = funding_of.get(tid, _ZERO) + Decimal(r["amount"])
    orders_of: dict[int, list[sqlite3.Row]] = {}
    for o in orders:
        orders_of.setdefault(int(o["trade_id"]), []).append(o)

    trades = []
    marks = ",".join("?" * len(LIVE_STATES))
    for t in con.execute(f"SELECT * FROM trades WHERE state IN ({marks}) ORDER BY trade_id",
                         LIVE_STATES):
        trades.append(_trade(t, orders_of.get(int(t["trade_id"]), []), by_order, fill_pos,
                             funding_of.get(int(t["trade_id"]), _ZERO)))
    top = con.execute("SELECT COALESCE(MAX(trade_id), 0) FROM trades").fetchone()[0]
    return RecoveredState(tuple(trades), positions, tuple(fills), pending, int(top) + 1,
                          frozenset(o["client_order_id"] for o in orders))


def _trade(t: sqlite3.Row, orders: Sequence[sqlite3.Row], by_order: Mapping[str, list[Fill]],
           fill_pos: Mapping[str, int], funding: Decimal) -> RecoveredTrade:
    tid = int(t["trade_id"])
    buy_venue = t["buy_venue"]
    long_qty = short_qty = cash = fees = buy_cost = buy_filled = _ZERO
    purpose_of = {o["client_order_id"]: o["purpose"] for o in orders}
    # the engine applies fills in the order the venue results arrived, which is journal order
    trade_fills = sorted((f for o in orders for f in by_order.get(o["client_order_id"], ())),
                         key=lambda f: fill_pos[f.fill_id])
    for f in trade_fills:
        cash += leg_cash(f.side.sign, f.qty, f.price, f.fee)
        fees += f.fee
        if f.venue == buy_venue:
            long_qty += f.side.sign * f.qty
            if f.side is Side.BUY and purpose_of[f.client_order_id] in ENTRY_PURPOSES:
                buy_cost += f.qty * f.price
                buy_filled += f.qty
        else:
            short_qty -= f.side.sign * f.qty
    cash += funding
    opens = {o["side"]: o for o in orders if o["purpose"] == "open"}
    buy_open, sell_open = opens.get("buy"), opens.get("sell")
    # the same arithmetic as `Trade.buy_avg`, so the Decimal comes out identical
    buy_avg = buy_cost / buy_filled if buy_filled else _ZERO
    state = t["state"]
    # while opening, the engine has not fixed the hedged size yet; once open the journal holds it
    hedged = Decimal(t["qty"]) if state == "open" else _ZERO
    attempts: Counter[str] = Counter()
    for o in orders:
        if o["purpose"] != "open":
            attempts[o["purpose"]] = max(attempts[o["purpose"]], attempt_of(o["client_order_id"]) + 1)
    first = buy_open if buy_open is not None else sell_open
    open_ns = int(first["ts_decide_ns"]) if first is not None else int(t["open_ns"])
    return RecoveredTrade(
        trade_id=tid, opp_id=int(t["opp_id"]), symbol=t["symbol"], buy_venue=buy_venue,
        sell_venue=t["sell_venue"], entry_edge_bps=float(t["entry_edge_bps"]), open_ns=open_ns,
        buy_order=buy_open["client_order_id"] if buy_open is not None else "",
        sell_order=sell_open["client_order_id"] if sell_open is not None else "",
        state=state, long_qty=long_qty, short_qty=short_qty, hedged_qty=hedged, buy_cost=buy_cost,
        buy_filled=buy_filled, entry_notional=hedged * buy_avg if state == "open" else _ZERO,
        cash=cash, fees=fees, funding=funding,
        attempts=dict(attempts),
    )



# -- orders that may or may not have reached their venue -----------------------------------------


@runtime_checkable
class OrderLookup(Protocol):
    """A venue that can say what became of an order, by client order id.

    A ccxt venue answers with `fetch_order`; the paper venue from its ledger.
    """

    async def fetch_order(self, client_order_id: str,
                          symbol: str) -> OrderResult | OpenOrder | None:
        """The order's terminal result, its resting state, or None when never received."""
        ...


@dataclass(frozen=True, slots=True)
class Resolution:
    """What the venue says about one pending order."""

    order: PendingOrder
    #: the venue's terminal result; None when the venue never saw the order
    result: OrderResult | None


class RecoveryError(FatalError):
    """Recovery cannot establish the truth: exec must not trade."""


async def resolve_intents(pending: Sequence[PendingOrder],
                          venues: Mapping[str, Venue]) -> list[Resolution]:
    """Ask each pending order's venue what became of it.

    Never resends anything: an order whose intent was journaled may be live
    at the venue, so only the venue's answer settles it.
    """
    out: list[Resolution] = []
    for p in pending:
        venue = venues.get(p.venue)
        if venue is None or not isinstance(venue, OrderLookup):
            raise RecoveryError(f"order {p.client_order_id}: venue {p.venue!r} cannot be asked "
                                "for it by client order id")
        got = await venue.fetch_order(p.client_order_id, p.symbol)
        if isinstance(got, OpenOrder):
            # still resting (a real venue's limit order): the decision it served is gone with
            # the dead process, so cancel it and take the final state the venue then reports
            await venue.cancel_order(p.client_order_id, p.symbol)
            got = await venue.fetch_order(p.client_order_id, p.symbol)
            if not isinstance(got, OrderResult):
                raise RecoveryError(f"order {p.client_order_id} on {p.venue} is still resting "
                                    "after a cancel; settle it by hand")
        out.append(Resolution(p, got))
    return out


def record_resolutions(journal: Journal, resolutions: Sequence[Resolution]) -> None:
    """Journal each resolved order's terminal state (and fills), or `not_sent`."""
    for r in resolutions:
        if r.result is not None:
            journal.record_results([r.result], r.result.ts_accepted_ns)
    unknown = [r.order.client_order_id for r in resolutions if r.result is None]
    if unknown:
        journal.mark_orders(unknown, NOT_SENT, "recovery: the venue never received it")


# -- the venue's view against the journal's ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Mismatch:
    """A (venue, symbol) where the journal and the venue disagree on the net quantity."""

    venue: str
    symbol: str
    journal_qty: Decimal
    venue_qty: Decimal


def reconcile(journal_positions: Mapping[tuple[str, str], Position],
              venue_positions: Mapping[str, Mapping[str, Decimal]]) -> list[Mismatch]:
    """Compare net quantities for every venue that reported (`venue -> symbol -> qty`)."""
    out: list[Mismatch] = []
    for venue, reported in sorted(venue_positions.items()):
        symbols = set(reported) | {s for v, s in journal_positions if v == venue}
        for s in sorted(symbols):
            j = journal_positions.get((venue, s), FLAT).qty
            got = reported.get(s, _ZERO)
            if j != got:
                out.append(Mismatch(venue, s, j, got))
    return out
