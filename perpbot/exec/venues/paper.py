"""The paper venue: taker orders filled against the live quote board.

One `PaperVenue` per configured venue (like one ccxt exchange object per
venue later), reading only its own row of the board. A taker IOC order fills
at that venue's current top of book when the order arrives: a buy at the ask,
a sell at the bid, the price turned into a Decimal and rounded to the tick
(buys up, sells down: never better than the board showed). It fills fully up
to the top-of-book size and partially beyond it (the rest is cancelled, as
IOC does); there is no depth beyond the top. The fee is notional x
`taker_fee_bps` / 1e4 of the venue's config.

Refusals are results, never exceptions: no quote on the board, a duplicate
client order id (real venues refuse those too, which is what makes a resend
safe), a quantity or price off the grid, a reduce-only order that would not
reduce. An IOC limit the board no longer reaches ends EXPIRED with no fill.

Every fill goes into `ledger` (the reference for reconciliation), and the
venue's positions and balances are computed from that ledger. A real venue
remembers your fills and positions when your process dies; this one lives
inside the exec process, so a restarted exec seeds it with the journal's
fills (`restore`), which is exactly what the venue would still hold: every
order is IOC and filled synchronously, so no fill can exist that was not
journaled. `fetch_order` answers recovery's "what became of this order?". Margin is not
modelled: nothing is ever `locked`. Latency and random rejects are not
modelled yet.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from decimal import Decimal

from perpbot.clock import now_ns
from perpbot.config import Config
from perpbot.exec.edge import fee_rate
from perpbot.exec.positions import FLAT, Position, apply_fill
from perpbot.exec.sizing import round_price, round_qty, to_decimal
from perpbot.exec.venues.base import (
    Balance,
    Fill,
    Market,
    OpenOrder,
    OrderRequest,
    OrderResult,
    OrderStatus,
    Side,
    Venue,
    VenuePosition,
)
from perpbot.shm.board import QuoteBoard

#: the asset every paper balance is kept in (all notionals are USD)
QUOTE_ASSET = "USD"
_ZERO = Decimal(0)


class PaperVenue(Venue):
    """A simulated venue named `name`, at row `venue_index` of the board."""

    def __init__(self, name: str, venue_index: int, cfg: Config, board: QuoteBoard, *,
                 clock: Callable[[], int] = now_ns, initial_balance_usd: Decimal = _ZERO) -> None:
        vc = cfg.venues[name]
        self.name = name
        self._v = venue_index
        self._board = board
        self._clock = clock
        self._fee = fee_rate(vc.taker_fee_bps)
        self._symbol_index = {s: i for i, s in enumerate(cfg.symbol_names)}
        self._markets = {
            s: Market(s, cfg.symbols[s].tick_size, cfg.symbols[s].lot_size,
                      Decimal(repr(cfg.symbols[s].min_notional_usd)))
            for s in vc.symbols
        }
        self._initial = initial_balance_usd
        self.ledger: list[Fill] = []
        self._positions: dict[str, Position] = {}
        self._seen: set[str] = set()
        self._results: dict[str, OrderResult] = {}
        self._orders = 0
        self.connected = False

    async def connect(self) -> None:
        self.connected = True

    async def close(self) -> None:
        self.connected = False

    def markets(self) -> dict[str, Market]:
        return dict(self._markets)

    async def place_order(self, req: OrderRequest) -> OrderResult:
        res = self.fill(req)
        if res.reason != "duplicate client order id":
            self._results[req.client_order_id] = res
        return res

    def restore(self, fills: Iterable[Fill]) -> None:
        """Seed the ledger with fills from before an exec restart (this venue's, in order).

        What a real venue does by itself: it remembers the positions and
        balances of an account whose client went away. The client order ids
        of those fills are remembered too, so resending one is refused as a
        duplicate. Only for a fresh venue: restoring twice would double.
        """
        if self.ledger:
            raise ValueError(f"paper venue {self.name} already has fills; restore only a fresh one")
        for f in fills:
            if f.venue != self.name:
                raise ValueError(f"fill {f.fill_id} is on {f.venue}, not on {self.name}")
            self.ledger.append(f)
            self._seen.add(f.client_order_id)
            self._positions[f.symbol] = apply_fill(
                self._positions.get(f.symbol, FLAT), f.side, f.qty, f.price, f.fee)

    async def fetch_order(self, client_order_id: str, symbol: str) -> OrderResult | None:
        """The terminal result of an order by client order id; None if never received.

        Orders placed since this object was made are known in full; orders
        from before a restart only through their fills (restored from the
        journal), and one that never filled was, to this venue, never there.
        """
        res = self._results.get(client_order_id)
        if res is not None:
            return res
        fills = tuple(f for f in self.ledger if f.client_order_id == client_order_id)
        if not fills:
            return None
        f0 = fills[0]
        qty = sum((f.qty for f in fills), _ZERO)
        return OrderResult(client_order_id, self.name, f0.symbol, f0.side, qty,
                           OrderStatus.FILLED, fills, ts_accepted_ns=f0.ts_ns,
                           ts_done_ns=fills[-1].ts_ns)

    def fill(self, req: OrderRequest) -> OrderResult:
        """The synchronous core of `place_order` (the venue has no latency to wait for)."""
        ts = self._clock()
        coid = req.client_order_id
        if coid in self._seen:
            return self._refuse(req, ts, "duplicate client order id")
        self._seen.add(coid)
        self._orders += 1
        voids = f"{self.name}-{self._orders}"
        if not self.connected:
            return self._refuse(req, ts, "venue not connected", voids)
        market = self._markets.get(req.symbol)
        if market is None:
            return self._refuse(req, ts, f"{self.name} does not trade {req.symbol}", voids)
        if req.qty <= 0 or req.qty % market.lot_size:
            return self._refuse(req, ts, f"quantity {req.qty} not on lot {market.lot_size}", voids)
        if req.price is not None and (req.price <= 0 or req.price % market.tick_size):
            return self._refuse(req, ts, f"price {req.price} not on tick {market.tick_size}", voids)
        q = self._board.read(self._v, self._symbol_index[req.symbol])
        if q is None or not (q.bid > 0 and q.ask > 0):
            return self._refuse(req, ts, "no quote", voids)
        buy = req.side is Side.BUY
        price = round_price(to_decimal(q.ask if buy else q.bid), market.tick_size, req.side)
        top = round_qty(to_decimal(q.ask_size if buy else q.bid_size), market.lot_size)
        if req.price is not None and (price > req.price if buy else price < req.price):
            return OrderResult(coid, self.name, req.symbol, req.side, req.qty, OrderStatus.EXPIRED,
                               venue_order_id=voids, ts_accepted_ns=ts, ts_done_ns=self._clock(),
                               reason=f"limit {req.price} not marketable at {price}")
        qty = req.qty
        reason = ""
        if req.reduce_only:
            pos = self._positions.get(req.symbol, FLAT).qty
            reducible = abs(pos) if pos and (pos > 0) != buy else _ZERO
            if not reducible:
                return self._refuse(req, ts, f"reduce-only {req.side.value} against position {pos}",
                                    voids)
            if qty > reducible:
                qty, reason = reducible, f"reduce-only trimmed to position {pos}"
        qty = min(qty, top)
        if qty <= 0:
            return OrderResult(coid, self.name, req.symbol, req.side, req.qty, OrderStatus.EXPIRED,
                               venue_order_id=voids, ts_accepted_ns=ts, ts_done_ns=self._clock(),
                               reason="no size at top of book")
        if qty < req.qty and not reason:
            reason = f"top of book holds {top}"
        fee = qty * price * self._fee
        done = self._clock()
        fill = Fill(f"{coid}-1", coid, self.name, req.symbol, req.side, qty, price, fee, done)
        self.ledger.append(fill)
        self._positions[req.symbol] = apply_fill(
            self._positions.get(req.symbol, FLAT), req.side, qty, price, fee)
        status = OrderStatus.FILLED if qty == req.qty else OrderStatus.PARTIAL
        return OrderResult(coid, self.name, req.symbol, req.side, req.qty, status, (fill,),
                           voids, ts, done, reason)

    def _refuse(self, req: OrderRequest, ts: int, reason: str, voids: str = "") -> OrderResult:
        return OrderResult(req.client_order_id, self.name, req.symbol, req.side, req.qty,
                           OrderStatus.REJECTED, venue_order_id=voids, ts_accepted_ns=ts,
                           ts_done_ns=ts, reason=reason)

    async def cancel_order(self, client_order_id: str, symbol: str) -> bool:
        # every paper order is IOC and finished when place_order returns: nothing rests
        return False

    async def open_orders(self, symbol: str | None = None) -> list[OpenOrder]:
        return []  # IOC only, so nothing ever rests (see cancel_order)

    async def positions(self) -> dict[str, VenuePosition]:
        return {s: VenuePosition(s, p.qty, p.avg_price, p.realized_pnl)
                for s, p in sorted(self._positions.items()) if p.qty}

    async def balances(self) -> dict[str, Balance]:
        realized = sum((p.realized_pnl for p in self._positions.values()), _ZERO)
        fees = sum((p.fees for p in self._positions.values()), _ZERO)
        total = self._initial + realized
        return {QUOTE_ASSET: Balance(QUOTE_ASSET, free=total, locked=_ZERO, total=total,
                                     extra={"realized_pnl": realized, "fees": fees})}
