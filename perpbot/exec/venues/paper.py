"""The paper venue: a simulated venue that fills orders against the live quote board.

One `PaperVenue` per configured venue (like one ccxt exchange object per
venue), reading only its own row of the board. It is the reference ledger for
reconciliation, so every amount in it is an exact `Decimal`: board floats
become Decimals through their shortest repr and nothing is ever rounded
except prices to the tick and sizes to the lot.

Orders
    IOC (taker; `price` None is a market order) fills at once at the top of
    book: a buy at the ask rounded up to the tick, a sell at the bid rounded
    down (never better than the board showed), up to the top-of-book size
    (PARTIAL beyond it, the rest cancelled; there is no depth beyond the
    top). A limit the board no longer reaches ends EXPIRED. The price is then
    worsened by `paper.slippage_bps_per_10k_usd` bps per 10,000 USD of the
    fill's notional, never beyond the order's limit. Fee: notional x the
    venue's `taker_fee_bps`.

    POST_ONLY is REJECTED if it would cross the board at arrival; otherwise
    it rests (`place_order` answers OPEN with no fills). LIMIT (good till
    cancelled) takes what crosses at arrival as a taker and rests the rest.
    A resting buy at P fills at P with the maker fee when a board quote newer
    than the one it arrived on shows an ask <= P (a seller crossed it), up to
    that quote's ask size, which the resting orders of that side share in
    price-then-time priority; a resting sell is symmetric. A reduce-only
    order never fills beyond the position; a resting one is cancelled once
    there is nothing left to reduce.

    Resting orders are matched by a background task (started by `connect`,
    stopped by `close`, polling every `paper.rest_poll_ms` while anything
    rests) and also at the start of every venue call, so a test that writes
    the board and then calls the venue gets a deterministic answer.

    `cancel_order` ends a resting order (PARTIAL if something filled,
    EXPIRED if not) and answers True; False if it was not resting.
    `fetch_order` answers an `OrderResult` for a finished order, an
    `OpenOrder` for a resting one, None for one the venue never received.

Refusals are results (REJECTED with a reason), never exceptions: no quote,
a duplicate client order id (real venues refuse those too, which is what
makes a resend safe), a quantity or price off the grid, a limit or post-only
order without a price, a reduce-only order that would not reduce, a
post-only order that would take liquidity, the venue not connected. The only
exception `place_order` raises is the TIMEOUT fault's `RetryableError`.

Faults
    Injected by a test with `inject(Fault(FaultKind.X, ...))` (spent by the
    next orders that reach the venue, on `symbol` if given, `count` times)
    or drawn at random per order from the `paper` config's rates with a
    generator seeded by `paper.seed` and the venue name (reproducible):

    REJECT          the order is refused; the reason names the fault
    NEVER_FILL      accepted and left OPEN without ever filling (even an IOC)
                    until cancelled, then EXPIRED
    PARTIAL         at most `fraction` of the quantity (rounded down to the
                    lot) ever fills; an IOC's rest is cancelled, a resting
                    order stays OPEN once it reaches that
    TIMEOUT         `place_order` raises `RetryableError`. With `executed`
                    the venue received and executed the order first
                    (`fetch_order` finds it); without, it never arrived
                    (`fetch_order` answers None and a resend of the same
                    client order id is accepted)
    LATE_FILL       accepted and left OPEN without filling; the cancel, when
                    it arrives, finds it filled completely (cancel answers
                    False, `fetch_order` shows FILLED)
    POSITION_DRIFT  booked at once by `inject`: an external fill of signed
                    `qty` (a liquidation or auto-deleverage) with client order
                    id `external-...`, so `positions()` differs from what
                    the client thinks

    The config's `paper.drift` schedules such external fills: entry i on
    this venue is booked `at_s` seconds (by the wall clock `wall_ms`) after
    the first `connect`, at the board mid, by the background task or the
    first call after that, as client order id `external-<venue>-drift-<i>`
    (logged at WARNING). Booked once per account: a venue reloaded from its
    ledger skips the entries it already booked. Without a quote for the
    symbol it is retried every `DRIFT_RETRY_MS`.

Latency
    Every call is a round trip of `paper.latency_ms` (+ up to
    `latency_jitter_ms`): half is awaited before the venue acts on the
    request, half before the answer returns, so a board change during the
    first half is what an order meets.

Money
    `ledger` holds every fill in order; positions follow from it. Balances
    (one asset, USD): total = `paper.initial_balance_usd` + realized PnL
    (fees included) + funding; locked = (sum of |position| x mark + the
    unfilled notional of resting orders) / `paper.leverage`, mark being the
    board mid; free = total - locked, reported even when negative.

    Funding: `funding_rate` reports the configured rate, paid at every whole
    multiple of the interval in epoch time. At each such boundary (checked at
    every call, in the background task, or by `book_funding`) every open
    position pays qty x mark x rate (longs pay shorts when the rate is
    positive), booked as a `FundingPayment`.

Persistence
    With `ledger_path`, every accepted order, every change of its state,
    every fill and every funding payment is appended to that file as one JSON
    line (Decimals as strings) and flushed before the call returns. A new
    `PaperVenue` on an existing file reloads all of it: orders and their
    states, resting orders, fills, positions, funding, client order ids seen.
    So the venue outlives a crash of the process that holds it, as a real
    one does. A torn last line (a crash mid-write) is dropped.

    Without a file, `restore` seeds a fresh venue with the fills a journal
    holds (what a real venue would still remember of the account).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import IO, Any, NamedTuple

import orjson

from perpbot.clock import now_ns
from perpbot.config import Config
from perpbot.errors import RetryableError
from perpbot.exec.edge import fee_rate
from perpbot.exec.positions import FLAT, Position, apply_fill
from perpbot.exec.sizing import round_price, round_qty, to_decimal
from perpbot.exec.venues.base import (
    Balance,
    Fill,
    FundingPayment,
    FundingRate,
    Market,
    OpenOrder,
    OrderRequest,
    OrderResult,
    OrderStatus,
    OrderType,
    Side,
    Venue,
    VenuePosition,
)
from perpbot.shm.board import QuoteBoard

#: the asset every paper balance is kept in (all notionals are USD)
QUOTE_ASSET = "USD"
#: format version written in the first line of a ledger file
LEDGER_VERSION = 1

_ZERO = Decimal(0)
_ONE = Decimal(1)
_BPS = Decimal(10000)
_SLIPPAGE_UNIT_USD = Decimal(10000)
_HOUR_MS = 3_600_000
#: the background task wakes at least this often while nothing rests (funding boundaries)
_IDLE_WAKE_S = 60.0
#: a scheduled drift whose symbol has no quote yet is tried again this much later
DRIFT_RETRY_MS = 100

log = logging.getLogger(__name__)


def epoch_ms() -> int:
    """Wall-clock time, epoch milliseconds."""
    return time.time_ns() // 1_000_000


class FaultKind(str, enum.Enum):
    REJECT = "reject"
    NEVER_FILL = "never_fill"
    PARTIAL = "partial"
    TIMEOUT = "timeout"
    LATE_FILL = "late_fill"
    POSITION_DRIFT = "position_drift"


@dataclass(frozen=True, slots=True)
class Fault:
    """A fault for `PaperVenue.inject` (see the module docstring for each kind)."""

    kind: FaultKind
    #: how many orders it hits (POSITION_DRIFT: how many times it is booked)
    count: int = 1
    #: only orders on this board symbol; None: any (POSITION_DRIFT: required)
    symbol: str | None = None
    #: PARTIAL: the share of the quantity that may fill, 0 < fraction < 1
    fraction: Decimal = Decimal("0.5")
    #: TIMEOUT: the venue executed the order before the answer was lost
    executed: bool = False
    #: POSITION_DRIFT: signed base quantity of the external fill (> 0 bought, < 0 sold)
    qty: Decimal = _ZERO
    #: POSITION_DRIFT: the fill's price; None: the board mid rounded to the tick
    price: Decimal | None = None

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"fault count must be >= 1, got {self.count}")
        if self.kind is FaultKind.PARTIAL and not _ZERO < self.fraction < _ONE:
            raise ValueError(f"PARTIAL fraction must be in (0, 1), got {self.fraction}")
        if self.kind is FaultKind.POSITION_DRIFT and (self.symbol is None or not self.qty):
            raise ValueError("POSITION_DRIFT needs a symbol and a non-zero qty")


class _Top(NamedTuple):
    """A board quote as Decimals."""

    seq: int
    bid: Decimal
    ask: Decimal
    bid_size: Decimal
    ask_size: Decimal

    @property
    def mid(self) -> Decimal:
        return (self.bid + self.ask) / 2


@dataclass(slots=True)
class _Order:
    """An order the venue received, and what became of it."""

    req: OrderRequest
    venue_order_id: str
    n: int  # arrival number: time priority
    ts_accepted_ns: int
    #: board seq of the quote it arrived on: resting, it matches only newer quotes
    seq: int
    #: the most that may ever fill (below qty under a PARTIAL fault)
    cap: Decimal
    never_fill: bool = False
    late_fill: bool = False
    #: why it may fill less than asked (the fault that hit it), for the result's reason
    note: str = ""
    status: OrderStatus = OrderStatus.OPEN
    fills: list[Fill] = field(default_factory=list)
    ts_done_ns: int = 0
    reason: str = ""

    @property
    def filled(self) -> Decimal:
        return sum((f.qty for f in self.fills), _ZERO)

    def result(self, venue: str) -> OrderResult:
        r = self.req
        return OrderResult(r.client_order_id, venue, r.symbol, r.side, r.qty, self.status,
                           tuple(self.fills), self.venue_order_id, self.ts_accepted_ns,
                           self.ts_done_ns, self.reason)

    def open_order(self) -> OpenOrder:
        r = self.req
        return OpenOrder(r.client_order_id, r.symbol, r.side, r.qty, self.filled, r.price)


class PaperVenue(Venue):
    """A simulated venue named `name`, at row `venue_index` of the board.

    `clock` stamps fills and results (monotonic ns), `wall_ms` is the epoch
    clock of funding, `my_trades` and `server_time_ms`, `sleep` awaits the
    latency; `initial_balance_usd` overrides the config's.
    """

    def __init__(self, name: str, venue_index: int, cfg: Config, board: QuoteBoard, *,
                 clock: Callable[[], int] = now_ns,
                 initial_balance_usd: Decimal | None = None,
                 ledger_path: Path | None = None,
                 wall_ms: Callable[[], int] = epoch_ms,
                 sleep: Callable[[float], Awaitable[object]] = asyncio.sleep) -> None:
        vc = cfg.venues[name]
        pc = cfg.paper
        ov = pc.venues.get(name)
        self.name = name
        self._v = venue_index
        self._board = board
        self._clock = clock
        self._wall_ms = wall_ms
        self._sleep = sleep
        self._taker_fee = fee_rate(vc.taker_fee_bps)
        self._maker_fee = fee_rate(vc.maker_fee_bps)
        self._symbol_index = {s: i for i, s in enumerate(cfg.symbol_names)}
        self._markets = {
            s: Market(s, cfg.symbols[s].tick_size, cfg.symbols[s].lot_size,
                      to_decimal(cfg.symbols[s].min_notional_usd), Decimal(1),
                      self._taker_fee, self._maker_fee)
            for s in vc.symbols
        }
        self._initial = (to_decimal(pc.initial_balance_usd) if initial_balance_usd is None
                         else initial_balance_usd)
        self._leverage = to_decimal(pc.leverage)
        self._slippage = to_decimal(pc.slippage_bps_per_10k_usd)
        latency_ms = pc.latency_ms if ov is None or ov.latency_ms is None else ov.latency_ms
        self._latency_s = latency_ms / 1000
        self._jitter_s = pc.latency_jitter_ms / 1000
        reject = pc.reject_rate if ov is None or ov.reject_rate is None else ov.reject_rate
        # the order of this tuple fixes which fault wins when several are drawn at once
        self._rates = ((FaultKind.REJECT, reject), (FaultKind.TIMEOUT, pc.timeout_rate),
                       (FaultKind.NEVER_FILL, pc.never_fill_rate),
                       (FaultKind.LATE_FILL, pc.late_fill_rate),
                       (FaultKind.PARTIAL, pc.partial_fill_rate))
        # string seeds hash the same in every process, so a run's faults repeat
        self._rng = random.Random(f"{pc.seed}/{name}/faults")
        self._jitter_rng = random.Random(f"{pc.seed}/{name}/latency")
        bps = pc.funding_rate_bps if ov is None or ov.funding_rate_bps is None else ov.funding_rate_bps
        self._funding_rate = to_decimal(bps) / _BPS
        hours = (pc.funding_interval_h if ov is None or ov.funding_interval_h is None
                 else ov.funding_interval_h)
        self._interval_ms = hours * _HOUR_MS
        self._skew_ms = pc.server_time_skew_ms
        self._poll_s = pc.rest_poll_ms / 1000
        #: scheduled external fills of this venue not booked yet: [due ms after start, $.paper.drift index,
        #: 1 once a missing quote was logged]
        self._drift = sorted([round(d.at_s * 1000), i, 0] for i, d in enumerate(pc.drift) if d.venue == name)
        self._drift_cfg = pc.drift
        self._drift_start_ms: int | None = None  # wall ms of the first connect

        #: every fill, in order (the reference for reconciliation)
        self.ledger: list[Fill] = []
        self._fill_wall_ms: dict[str, int] = {}
        self._positions: dict[str, Position] = {}
        self._funding: list[FundingPayment] = []
        self._seen: set[str] = set()
        self._orders: dict[str, _Order] = {}
        self._resting: dict[str, _Order] = {}
        #: per (symbol, side of the resting orders): the board seq last matched and the size used
        self._rest_used: dict[tuple[str, Side], tuple[int, Decimal]] = {}
        self._faults: list[list[Any]] = []  # [Fault, hits left]
        self._dirty = False  # ledger lines written but not flushed
        self._n_orders = 0
        self._n_external = 0
        # no funding for boundaries before the venue existed
        self._funded_until_ms = self._wall_ms() // self._interval_ms * self._interval_ms
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self.connected = False

        self._path = ledger_path
        self._fh: IO[bytes] | None = None
        if ledger_path is not None:
            if ledger_path.exists() and ledger_path.stat().st_size:
                self._load(ledger_path)
            else:
                self._emit({"e": "venue", "v": LEDGER_VERSION, "venue": name,
                            "funded_until_ms": self._funded_until_ms})

    # -- session -------------------------------------------------------------------------------

    async def connect(self) -> None:
        self.connected = True
        if self._drift_start_ms is None:
            self._drift_start_ms = self._wall_ms()
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"paper-{self.name}")

    async def close(self) -> None:
        self.connected = False
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            if task.get_loop() is asyncio.get_running_loop():
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def markets(self) -> dict[str, Market]:
        return dict(self._markets)

    # -- orders --------------------------------------------------------------------------------

    async def place_order(self, req: OrderRequest) -> OrderResult:
        await self._latency()
        self._catch_up()
        fault, label = self._fault_for(req)
        if fault is not None and fault.kind is FaultKind.TIMEOUT:
            if fault.executed:
                self._receive(req, None, "")
            raise RetryableError(f"{self.name}: order {req.client_order_id} timed out ({label})")
        res = self._receive(req, fault, label)
        await self._latency()
        return res

    async def cancel_order(self, client_order_id: str, symbol: str) -> bool:
        await self._latency()
        self._catch_up()
        done = self._cancel(client_order_id, symbol)
        await self._latency()
        return done

    async def fetch_order(self, client_order_id: str, symbol: str) -> OrderResult | OpenOrder | None:
        """An order by client order id: finished, resting, or None if never received.

        Fills seeded by `restore` answer as one FILLED order per client order
        id; an order from before such a restart that never filled was, to this
        venue, never there.
        """
        await self._latency()
        self._catch_up()
        found = self._lookup(client_order_id, symbol)
        await self._latency()
        return found

    async def open_orders(self, symbol: str | None = None) -> list[OpenOrder]:
        await self._latency()
        self._catch_up()
        out = [o.open_order() for o in self._resting.values() if symbol is None or o.req.symbol == symbol]
        await self._latency()
        return out

    def inject(self, fault: Fault) -> None:
        """Arm a fault for the next orders (POSITION_DRIFT is booked at once)."""
        if fault.kind is FaultKind.POSITION_DRIFT:
            assert fault.symbol is not None  # checked by Fault
            for _ in range(fault.count):
                self.external_fill(fault.symbol, fault.qty, fault.price)
            return
        self._faults.append([fault, fault.count])

    @property
    def faults_pending(self) -> int:
        """Injected order faults not spent yet."""
        return sum(left for _, left in self._faults)

    def external_fill(self, symbol: str, qty: Decimal, price: Decimal | None = None, *,
                      client_order_id: str | None = None) -> Fill:
        """Book a fill the client did not send (liquidation, auto-deleverage); `qty` signed."""
        market = self._markets.get(symbol)
        if market is None:
            raise ValueError(f"{self.name} does not trade {symbol}")
        if not qty or qty % market.lot_size:
            raise ValueError(f"external fill quantity {qty} is zero or off lot {market.lot_size}")
        side = Side.BUY if qty > 0 else Side.SELL
        if price is None:
            top = self._top(symbol)
            if top is None:
                raise ValueError(f"no quote for {symbol} to price an external fill")
            price = round_price(top.mid, market.tick_size, side)
        coid = client_order_id or f"external-{self.name}-{self._n_external + 1}"
        fill = self._emit_fill(coid, symbol, side, abs(qty), price, _ZERO, f"{coid}-1")
        self._flush()
        return fill

    # -- account -------------------------------------------------------------------------------

    async def positions(self) -> dict[str, VenuePosition]:
        await self._latency()
        self._catch_up()
        out = {s: VenuePosition(s, p.qty, p.avg_price, p.realized_pnl)
               for s, p in sorted(self._positions.items()) if p.qty}
        await self._latency()
        return out

    async def balances(self) -> dict[str, Balance]:
        await self._latency()
        self._catch_up()
        out = self._balances()
        await self._latency()
        return out

    async def my_trades(self, symbol: str | None = None, since_ms: int | None = None) -> list[Fill]:
        await self._latency()
        self._catch_up()
        out = [f for f in self.ledger
               if (symbol is None or f.symbol == symbol)
               and (since_ms is None or self._fill_wall_ms[f.fill_id] >= since_ms)]
        await self._latency()
        return out

    async def funding_rate(self, symbol: str) -> FundingRate:
        await self._latency()
        self._catch_up()
        if symbol not in self._markets:
            raise ValueError(f"{self.name} does not trade {symbol}")
        now = self._wall_ms()
        nxt = (now // self._interval_ms + 1) * self._interval_ms
        await self._latency()
        return FundingRate(symbol, self._funding_rate, self._interval_ms, nxt)

    async def funding_payments(self, since_ms: int | None = None) -> list[FundingPayment]:
        await self._latency()
        self._catch_up()
        out = [p for p in self._funding if since_ms is None or p.ts_ms >= since_ms]
        await self._latency()
        return out

    async def server_time_ms(self) -> int:
        await self._latency()
        now = self._wall_ms() + self._skew_ms
        await self._latency()
        return now

    def book_funding(self, now_ms: int) -> list[FundingPayment]:
        """Book every funding boundary up to epoch ms `now_ms` not booked yet; the new payments."""
        booked: list[FundingPayment] = []
        step = self._interval_ms
        boundary = (self._funded_until_ms // step + 1) * step
        while boundary <= now_ms:
            for sym, pos in sorted(self._positions.items()):
                if not pos.qty:
                    continue
                top = self._top(sym)
                mark = top.mid if top is not None else pos.avg_price
                amount = -pos.qty * mark * self._funding_rate
                if amount:
                    self._emit({"e": "funding", "id": f"{self.name}-funding-{sym}-{boundary}",
                                "symbol": sym, "amount": str(amount), "ts_ms": boundary})
                    booked.append(self._funding[-1])
            self._emit({"e": "funded", "until_ms": boundary})
            boundary += step
        self._flush()
        return booked

    def restore(self, fills: Iterable[Fill]) -> None:
        """Seed the ledger with fills from before an exec restart (this venue's, in order).

        What a real venue does by itself: it remembers the positions and
        balances of an account whose client went away. The client order ids
        of those fills are remembered too, so resending one is refused as a
        duplicate. Only for a fresh venue: restoring twice would double.
        """
        if self.ledger:
            raise ValueError(f"paper venue {self.name} already has fills; restore only a fresh one")
        fills = list(fills)
        for f in fills:
            if f.venue != self.name:
                raise ValueError(f"fill {f.fill_id} is on {f.venue}, not on {self.name}")
        for f in fills:
            self._emit_fill(f.client_order_id, f.symbol, f.side, f.qty, f.price, f.fee, f.fill_id,
                            ts_ns=f.ts_ns)

    # -- the venue's side of an order ------------------------------------------------------------

    def _fault_for(self, req: OrderRequest) -> tuple[Fault | None, str]:
        """The fault this order meets: an injected one first, else a random draw."""
        # always the same number of draws, so one order's outcome never shifts the next one's
        draws = [self._rng.random() for _ in range(len(self._rates) + 2)]
        for i, entry in enumerate(self._faults):
            fault: Fault = entry[0]
            if fault.symbol is None or fault.symbol == req.symbol:
                entry[1] -= 1
                if entry[1] == 0:
                    del self._faults[i]
                return fault, f"injected fault {fault.kind.value}"
        for (kind, rate), u in zip(self._rates, draws):
            if u < rate:
                fraction = min(max(Decimal(repr(round(draws[-1], 4))), Decimal("0.0001")), Decimal("0.9999"))
                return (Fault(kind, executed=draws[-2] < 0.5, fraction=fraction),
                        f"random fault {kind.value}")
        return None, ""

    def _receive(self, req: OrderRequest, fault: Fault | None, label: str) -> OrderResult:
        """The venue handles an order that arrived (synchronously: no await in here)."""
        coid = req.client_order_id
        ts = self._clock()
        if coid in self._seen:
            return OrderResult(coid, self.name, req.symbol, req.side, req.qty, OrderStatus.REJECTED,
                               ts_accepted_ns=ts, ts_done_ns=ts, reason="duplicate client order id")
        kind = fault.kind if fault is not None else None
        market = self._markets.get(req.symbol)
        top = self._top(req.symbol) if market is not None else None
        cap = req.qty
        note = ""
        if fault is not None and kind is FaultKind.PARTIAL and market is not None:
            cap = round_qty(req.qty * fault.fraction, market.lot_size)
            note = f"{label}: at most {cap} fills"
        self._emit({"e": "order", "coid": coid, "symbol": req.symbol, "side": req.side.value,
                    "qty": str(req.qty), "price": None if req.price is None else str(req.price),
                    "type": req.order_type.value, "reduce_only": req.reduce_only,
                    "voids": f"{self.name}-{self._n_orders + 1}", "ts_ns": ts,
                    "seq": top.seq if top is not None else 0, "cap": str(cap),
                    "never_fill": kind is FaultKind.NEVER_FILL, "late_fill": kind is FaultKind.LATE_FILL,
                    "note": note})
        o = self._orders[coid]
        refusal = self._refusal(req, market, top, label if kind is FaultKind.REJECT else "")
        if refusal:
            self._finish(o, OrderStatus.REJECTED, refusal)
            return o.result(self.name)
        assert market is not None and top is not None  # a refusal otherwise
        if o.never_fill or o.late_fill:
            self._nudge()
            return o.result(self.name)
        why = ""
        if req.order_type is not OrderType.POST_ONLY:
            why = self._take(o, market, top)
        if o.filled == req.qty:
            self._finish(o, OrderStatus.FILLED, why)
        elif req.order_type is OrderType.IOC:
            self._finish(o, OrderStatus.PARTIAL if o.filled else OrderStatus.EXPIRED, why)
        else:
            self._nudge()
        return o.result(self.name)

    def _refusal(self, req: OrderRequest, market: Market | None, top: _Top | None, fault: str) -> str:
        """Why the venue refuses an order; "" if it does not."""
        if not self.connected:
            return "venue not connected"
        if market is None:
            return f"{self.name} does not trade {req.symbol}"
        if req.qty <= 0 or req.qty % market.lot_size:
            return f"quantity {req.qty} not on lot {market.lot_size}"
        if req.price is not None and (req.price <= 0 or req.price % market.tick_size):
            return f"price {req.price} not on tick {market.tick_size}"
        if req.price is None and req.order_type is not OrderType.IOC:
            return f"a {req.order_type.value} order needs a price"
        if fault:
            return f"rejected: {fault}"
        if top is None:
            return "no quote"
        if req.reduce_only and not self._reducible(req.symbol, req.side):
            pos = self._positions.get(req.symbol, FLAT).qty
            return f"reduce-only {req.side.value} against position {pos}"
        if req.order_type is OrderType.POST_ONLY:
            assert req.price is not None
            if req.side is Side.BUY and top.ask <= req.price:
                return f"post-only would take liquidity: ask {top.ask} <= {req.price}"
            if req.side is Side.SELL and top.bid >= req.price:
                return f"post-only would take liquidity: bid {top.bid} >= {req.price}"
        return ""

    def _take(self, o: _Order, market: Market, top: _Top) -> str:
        """Fill what crosses at arrival as a taker; why it was not all ("" if it was)."""
        req = o.req
        buy = req.side is Side.BUY
        price = round_price(top.ask if buy else top.bid, market.tick_size, req.side)
        if req.price is not None and (price > req.price if buy else price < req.price):
            return f"limit {req.price} not marketable at {price}"
        qty = min(req.qty, o.cap)
        why = o.note if o.cap < req.qty else ""
        reducible = self._reducible(req.symbol, req.side) if req.reduce_only else qty
        if qty > reducible:
            qty = reducible
            why = why or f"reduce-only trimmed to position {self._positions[req.symbol].qty}"
        size = round_qty(top.ask_size if buy else top.bid_size, market.lot_size)
        if qty > size:
            qty = size
            why = why or f"top of book holds {size}"
        if qty <= 0:
            return why or "no size at top of book"
        price = self._slipped(price, qty, req.side, req.price, market.tick_size)
        self._emit_fill(req.client_order_id, req.symbol, req.side, qty, price,
                        qty * price * self._taker_fee, f"{req.client_order_id}-{len(o.fills) + 1}")
        return why

    def _slipped(self, price: Decimal, qty: Decimal, side: Side, limit: Decimal | None,
                 tick: Decimal) -> Decimal:
        """A taker price worsened by size-based slippage, kept on the tick and within the limit."""
        if not self._slippage:
            return price
        bps = self._slippage * qty * price / _SLIPPAGE_UNIT_USD
        worse = round_price(price * (1 + side.sign * bps / _BPS), tick, side)
        if limit is None:
            return worse
        return min(worse, limit) if side is Side.BUY else max(worse, limit)

    def _match(self) -> None:
        """Fill resting orders the board has crossed since they arrived (maker fills at their price)."""
        if not self._resting:
            return

        def priority(o: _Order) -> tuple[Any, ...]:
            p = o.req.price or _ZERO
            return (o.req.symbol, o.req.side.value, -p if o.req.side is Side.BUY else p, o.n)

        for o in sorted(self._resting.values(), key=priority):
            req = o.req
            if o.never_fill or o.late_fill or req.price is None or req.order_type is OrderType.IOC:
                continue
            top = self._top(req.symbol)
            if top is None or top.seq <= o.seq:
                continue
            buy = req.side is Side.BUY
            if not (top.ask <= req.price if buy else top.bid >= req.price):
                continue
            want = min(req.qty, o.cap) - o.filled
            if req.reduce_only:
                reducible = self._reducible(req.symbol, req.side)
                if not reducible:
                    self._finish(o, OrderStatus.PARTIAL if o.fills else OrderStatus.EXPIRED,
                                 "reduce-only: no position left to reduce")
                    continue
                want = min(want, reducible)
            lot = self._markets[req.symbol].lot_size
            seen_seq, used = self._rest_used.get((req.symbol, req.side), (0, _ZERO))
            size = round_qty(top.ask_size if buy else top.bid_size, lot) - (used if seen_seq == top.seq else _ZERO)
            qty = min(want, size)
            if qty <= 0:
                continue
            self._emit_fill(req.client_order_id, req.symbol, req.side, qty, req.price,
                            qty * req.price * self._maker_fee, f"{req.client_order_id}-{len(o.fills) + 1}",
                            seq=top.seq)
            if o.filled == req.qty:
                self._finish(o, OrderStatus.FILLED, "")

    def _cancel(self, coid: str, symbol: str) -> bool:
        o = self._resting.get(coid)
        if o is None or o.req.symbol != symbol:
            return False
        if o.late_fill:
            req = o.req
            price = req.price
            taker = req.order_type is OrderType.IOC or price is None
            if price is None:
                top = self._top(req.symbol)
                if top is not None:
                    market = self._markets[req.symbol]
                    price = round_price(top.ask if req.side is Side.BUY else top.bid, market.tick_size,
                                        req.side)
            if price is not None:
                qty = req.qty - o.filled
                fee = qty * price * (self._taker_fee if taker else self._maker_fee)
                self._emit_fill(coid, req.symbol, req.side, qty, price, fee, f"{coid}-{len(o.fills) + 1}")
                self._finish(o, OrderStatus.FILLED, "filled before the cancel arrived")
                return False
        self._finish(o, OrderStatus.PARTIAL if o.fills else OrderStatus.EXPIRED, "cancelled")
        return True

    def _lookup(self, coid: str, symbol: str) -> OrderResult | OpenOrder | None:
        o = self._orders.get(coid)
        if o is not None:
            if o.req.symbol != symbol:
                return None
            return o.open_order() if o.status is OrderStatus.OPEN else o.result(self.name)
        fills = tuple(f for f in self.ledger if f.client_order_id == coid and f.symbol == symbol)
        if not fills:
            return None
        f0 = fills[0]
        qty = sum((f.qty for f in fills), _ZERO)
        return OrderResult(coid, self.name, f0.symbol, f0.side, qty, OrderStatus.FILLED, fills,
                           ts_accepted_ns=f0.ts_ns, ts_done_ns=fills[-1].ts_ns)

    def _reducible(self, symbol: str, side: Side) -> Decimal:
        """How much an order on `side` may fill and still only reduce the position."""
        pos = self._positions.get(symbol, FLAT).qty
        return abs(pos) if pos and (pos > 0) != (side is Side.BUY) else _ZERO

    def _top(self, symbol: str) -> _Top | None:
        i = self._symbol_index.get(symbol)
        q = self._board.read(self._v, i) if i is not None else None
        if q is None or not (q.bid > 0 and q.ask > 0):
            return None
        return _Top(q.seq, to_decimal(q.bid), to_decimal(q.ask), to_decimal(q.bid_size),
                    to_decimal(q.ask_size))

    def _balances(self) -> dict[str, Balance]:
        realized = sum((p.realized_pnl for p in self._positions.values()), _ZERO)
        fees = sum((p.fees for p in self._positions.values()), _ZERO)
        funding = sum((p.amount for p in self._funding), _ZERO)
        total = self._initial + realized + funding
        position_notional = _ZERO
        for sym, pos in self._positions.items():
            if pos.qty:
                top = self._top(sym)
                position_notional += abs(pos.qty) * (top.mid if top is not None else pos.avg_price)
        order_notional = _ZERO
        for o in self._resting.values():
            price = o.req.price
            if price is None:
                top = self._top(o.req.symbol)
                price = top.mid if top is not None else _ZERO
            order_notional += (o.req.qty - o.filled) * price
        margined = position_notional + order_notional
        locked = margined / self._leverage if margined else _ZERO
        return {QUOTE_ASSET: Balance(QUOTE_ASSET, free=total - locked, locked=locked, total=total,
                                     extra={"realized_pnl": realized, "fees": fees, "funding": funding,
                                            "position_notional": position_notional,
                                            "order_notional": order_notional})}

    # -- time ----------------------------------------------------------------------------------

    async def _latency(self) -> None:
        """Half of one round trip; what the venue booked so far is on disk before either half."""
        self._flush()
        if self._latency_s <= 0 and self._jitter_s <= 0:
            return
        delay = self._latency_s / 2
        if self._jitter_s > 0:
            delay += self._jitter_rng.uniform(0, self._jitter_s) / 2
        await self._sleep(delay)

    def _catch_up(self) -> None:
        """What the venue did since the last call: resting fills, funding and scheduled drift."""
        self._match()
        now = self._wall_ms()
        if now >= self._funded_until_ms + self._interval_ms:
            self.book_funding(now)
        if self._drift:
            self._book_drift(now)

    def _drift_due_ms(self) -> int:
        """Wall ms when the next scheduled drift is due (far away when none is)."""
        if not self._drift or self._drift_start_ms is None:
            return 2**62
        return self._drift_start_ms + self._drift[0][0]

    def _book_drift(self, now_ms: int) -> None:
        """Book every scheduled external fill (`paper.drift`) that is due."""
        while self._drift and now_ms >= self._drift_due_ms():
            entry = self._drift[0]
            i = entry[1]
            d = self._drift_cfg[i]
            coid = f"external-{self.name}-drift-{i}"
            if coid in self._seen:  # booked before this process reloaded the ledger
                self._drift.pop(0)
                continue
            try:
                fill = self.external_fill(d.symbol, d.qty, client_order_id=coid)
            except ValueError as e:
                if not entry[2]:
                    entry[2] = 1
                    log.warning("paper venue %s: scheduled drift paper.drift[%d] waits: %s", self.name, i, e)
                assert self._drift_start_ms is not None
                entry[0] = now_ms + DRIFT_RETRY_MS - self._drift_start_ms
                self._drift.sort()
                return
            self._drift.pop(0)
            log.warning("paper venue %s: scheduled drift paper.drift[%d] booked: external %s %s %s at %s, "
                        "position now %s", self.name, i, fill.side.value, fill.qty, d.symbol, fill.price,
                        self._positions[d.symbol].qty)

    def _nudge(self) -> None:
        """Wake the background task: something rests now."""
        if self._task is not None and not self._task.done() and self._wake is not None:
            self._wake.set()

    async def _run(self) -> None:
        try:
            while True:
                if self._resting:
                    await asyncio.sleep(self._poll_s)
                else:
                    wake = self._wake
                    assert wake is not None
                    wake.clear()
                    due_ms = min(self._funded_until_ms + self._interval_ms, self._drift_due_ms()) - self._wall_ms()
                    timeout = min(max(due_ms / 1000, self._poll_s), _IDLE_WAKE_S)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(wake.wait(), timeout)
                self._catch_up()
                self._flush()
        except asyncio.CancelledError:
            raise
        except Exception:
            # the calls still catch up by themselves; a dead matcher only makes fills later
            log.exception("paper venue %s: background matching stopped", self.name)

    # -- the ledger: every change is an event, applied the same way live and on reload -----------

    def _emit_fill(self, coid: str, symbol: str, side: Side, qty: Decimal, price: Decimal, fee: Decimal,
                   fill_id: str, *, seq: int | None = None, ts_ns: int | None = None) -> Fill:
        self._emit({"e": "fill", "fill_id": fill_id, "coid": coid, "symbol": symbol, "side": side.value,
                    "qty": str(qty), "price": str(price), "fee": str(fee),
                    "ts_ns": self._clock() if ts_ns is None else ts_ns, "wall_ms": self._wall_ms(),
                    "seq": seq})
        return self.ledger[-1]

    def _finish(self, o: _Order, status: OrderStatus, reason: str) -> None:
        self._emit({"e": "state", "coid": o.req.client_order_id, "status": status.value, "reason": reason,
                    "ts_ns": self._clock()})

    def _emit(self, ev: dict[str, Any]) -> None:
        if self._path is not None:
            if self._fh is None:
                self._fh = self._path.open("ab")
            # one write per event, one flush per answer (`_flush`): a call books 2-3 events
            self._fh.write(orjson.dumps(ev) + b"\n")
            self._dirty = True
        self._apply(ev)

    def _flush(self) -> None:
        if self._dirty and self._fh is not None:
            self._fh.flush()
            self._dirty = False

    def _apply(self, ev: dict[str, Any]) -> None:
        kind = ev["e"]
        if kind == "fill":
            side = Side(ev["side"])
            f = Fill(ev["fill_id"], ev["coid"], self.name, ev["symbol"], side, Decimal(ev["qty"]),
                     Decimal(ev["price"]), Decimal(ev["fee"]), ev["ts_ns"])
            self.ledger.append(f)
            self._fill_wall_ms[f.fill_id] = ev["wall_ms"]
            self._seen.add(f.client_order_id)
            if f.client_order_id.startswith("external-"):
                self._n_external += 1
            self._positions[f.symbol] = apply_fill(self._positions.get(f.symbol, FLAT), side, f.qty,
                                                   f.price, f.fee)
            o = self._orders.get(f.client_order_id)
            if o is not None:
                o.fills.append(f)
            if ev["seq"] is not None:
                key = (f.symbol, side)
                seq, used = self._rest_used.get(key, (0, _ZERO))
                self._rest_used[key] = (ev["seq"], (used if seq == ev["seq"] else _ZERO) + f.qty)
        elif kind == "state":
            o = self._orders[ev["coid"]]
            o.status = OrderStatus(ev["status"])
            o.reason = ev["reason"]
            if o.status.terminal:
                o.ts_done_ns = ev["ts_ns"]
                self._resting.pop(o.req.client_order_id, None)
        elif kind == "order":
            price = ev["price"]
            req = OrderRequest(ev["coid"], ev["symbol"], Side(ev["side"]), Decimal(ev["qty"]),
                               None if price is None else Decimal(price), OrderType(ev["type"]),
                               ev["reduce_only"])
            self._n_orders += 1
            o = _Order(req, ev["voids"], self._n_orders, ev["ts_ns"], ev["seq"], Decimal(ev["cap"]),
                       ev["never_fill"], ev["late_fill"], ev["note"])
            self._seen.add(req.client_order_id)
            self._orders[req.client_order_id] = o
            self._resting[req.client_order_id] = o  # until a state event ends it
        elif kind == "funding":
            self._funding.append(FundingPayment(ev["id"], self.name, ev["symbol"], Decimal(ev["amount"]),
                                                ev["ts_ms"]))
        elif kind == "funded":
            self._funded_until_ms = max(self._funded_until_ms, ev["until_ms"])
        elif kind == "venue":
            if ev["venue"] != self.name or ev["v"] != LEDGER_VERSION:
                raise ValueError(f"ledger of venue {ev['venue']!r} (format {ev['v']}), not of {self.name!r} "
                                 f"(format {LEDGER_VERSION})")
            self._funded_until_ms = ev["funded_until_ms"]
        else:
            raise ValueError(f"unknown ledger event {kind!r}")

    def _load(self, path: Path) -> None:
        data = path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            # a crash mid-write left a torn line; appending after it would corrupt the next one too
            with path.open("r+b") as fh:
                fh.truncate(end)
        lines = data[:end].decode("utf-8").splitlines()
        for i, line in enumerate(lines, 1):
            try:
                ev = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i}: not a ledger line: {e}") from None
            if i == 1 and ev.get("e") != "venue":
                raise ValueError(f"{path}:1: not a paper venue ledger")
            self._apply(ev)


def read_ledger(path: Path) -> tuple[list[Fill], list[FundingPayment]]:
    """The fills and funding payments in a paper venue's account record, in booking order.

    Reads the file only (no board, no venue): what reconciliation compares a
    journal with. A torn last line (a crash mid-write) is ignored.
    """
    fills: list[Fill] = []
    funding: list[FundingPayment] = []
    venue = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            ev = json.loads(line)
        except json.JSONDecodeError:
            break
        if ev["e"] == "venue":
            venue = ev["venue"]
        elif ev["e"] == "fill":
            fills.append(Fill(ev["fill_id"], ev["coid"], venue, ev["symbol"], Side(ev["side"]),
                              Decimal(ev["qty"]), Decimal(ev["price"]), Decimal(ev["fee"]), ev["ts_ns"]))
        elif ev["e"] == "funding":
            funding.append(FundingPayment(ev["id"], venue, ev["symbol"], Decimal(ev["amount"]),
                                          ev["ts_ms"]))
    return fills, funding
