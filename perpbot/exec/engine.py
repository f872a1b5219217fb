"""The trade lifecycle: opportunity -> checked legs -> fills -> open trade -> close.

No ZeroMQ and no wall-clock sleeps of its own: the process shell feeds it
opportunities and calls `check_open_trades`, `reconcile_positions` and
`refresh_funding` on timers, and tests drive the injected clock. One asyncio
lock serialises every decision that sends orders, so positions, open-trade
counts, capital and the risk gate always see settled state (there is never an
order in flight that the gate does not know about).

Opening (`on_opportunity`):
  too old? -> re-read both quotes, recompute the edge net of both taker fees
  (plus the funding both legs expect over the holding time) -> one size valid
  on both venues (lots, min notional; `sizing.choose_size`) -> the risk gate
  on both legs together -> capital reserved on both venues -> the venues'
  entry rate budgets -> journal the intents (committed) -> send:

  - `taker` (default): both legs IOC at once;
  - `maker_first`: a post-only order on one venue (the slower one by
    measured round trip, or as configured); when it fills, the other leg is
    sent taker as a hedge; if it never fills it is cancelled (the venue's
    answer settles a fill racing the cancel) and the trade falls back to
    taker-taker at the then-current quotes.

  Every order goes through `orders.OrderRunner`: retried only when its
  outcome is unknown and only after asking the venue, followed while it
  rests, cancelled at its deadline and settled by `fetch_order`.

Legging (`_fix_legs`): when one leg filled more than the other, within
`exec.legging_deadline_ms`: hedge the difference taker on the short leg's
venue; if that venue filled nothing and refuses again, on the next-best
venue for that side (the leg moves there); what is still unhedged is unwound
on the long leg with a reduce-only order. Every step is journaled as an
incident and published (LEGGING), which the launcher turns into an alert.
A leg that cannot be fixed by the deadline is a naked leg: logged at ERROR,
alerted, and retried on every check until flat.

Closing (`check_open_trades`): for each open trade, the PnL of closing now
(sell on the buy venue at its bid, buy back on the sell venue at its ask,
all four taker fees, funding booked so far) -> close both legs concurrently
when it reaches `exec.take_profit_bps` of the entry notional or the trade is
older than `exec.max_hold_ms`. Closing, hedging and unwinding orders are
market IOC (getting out matters more than the price); opening orders are
IOC limits at the quote.

Reconciliation (`reconcile_positions`): the engine's position book against
each venue's reported positions; a mismatch pauses new trades on that
symbol (POSITION_MISMATCH event and incident) until they agree again.

Client order ids are `<run_id>-<trade_id>-<purpose>-<leg>`, with `-<n>` added
for the n-th retry of the same purpose: deterministic per decision, unique
across the run (trade ids continue from the journal), so a resent order is
refused by the venue as a duplicate instead of doubling.

Recovery (`restore`): a restarted exec takes the state `recovery.recover`
rebuilt from the journal: open trades (with their attempt counters, so no
client order id repeats), the position book replayed from every fill, the
status segment's positions mirrored. `check_open_trades` then closes those
trades as usual.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

from perpbot.clock import now_ns
from perpbot.config import Config
from perpbot.events import EventType, check_event
from perpbot.exec.capital import (
    CapitalOrchestrator,
    Pool,
    Reservation,
    SnapshotProvider,
    margin_needed,
)
from perpbot.exec.edge import (
    exit_pnl,
    expected_funding_bps,
    fee_rate,
    leg_cash,
    net_edge_bps,
    pnl_bps,
)
from perpbot.exec.journal import Journal, OrderIntent
from perpbot.exec.orders import OrderPolicy, OrderRunner, Outcome
from perpbot.exec.positions import PositionBook, reduces
from perpbot.exec.ratelimit import Priority, RateBudget
from perpbot.exec.recovery import NOT_SENT, RecoveredState
from perpbot.exec.risk import Approval, LegCheck, Limits, Purpose, Reason, RiskGate
from perpbot.exec.sizing import choose_size, round_down, round_price, round_qty, round_up, to_decimal
from perpbot.exec.venues.base import (
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
)
from perpbot.messages import Opportunity
from perpbot.metrics import LocalHistogram
from perpbot.shm.board import QuoteBoard
from perpbot.shm.layout import N_COUNTERS, ExecCounter, FeedState, Hop, TradeRingState
from perpbot.shm.status import StatusBoard

_ZERO = Decimal(0)
_MS = 1_000_000

RING_OPEN = TradeRingState.OPEN
RING_CLOSED = TradeRingState.CLOSED

#: purposes whose fills build a trade's legs (the others take them down)
_ENTRY_PURPOSES = frozenset({Purpose.OPEN, Purpose.HEDGE})
#: journal status of an order whose final state could not be established yet
UNKNOWN = "unknown"
#: hedge-then-unwind rounds `_fix_legs` tries before leaving the rest to the periodic check
LEGGING_ROUNDS = 3

_HOPS = (Hop.DETECT_TO_EXEC, Hop.EXEC_TO_DECIDE, Hop.DECIDE_TO_DISPATCH, Hop.TICK_TO_ORDER)


class EventSink(Protocol):
    """Where events go (`perpbot.bus.EventPublisher` satisfies it)."""

    def publish(self, kind: EventType, payload: dict[str, Any]) -> None: ...


@dataclass
class Trade:
    """One arbitrage trade: long on the buy venue, short on the sell venue."""

    trade_id: int
    opp_id: int
    symbol: int
    buy_venue: int
    sell_venue: int
    entry_edge_bps: float
    open_ns: int
    buy_order: str
    sell_order: str
    state: str = "opening"  # opening | open (journal states; closed/failed leave the engine)
    long_qty: Decimal = _ZERO  # still open on the buy venue
    short_qty: Decimal = _ZERO  # still open on the sell venue
    hedged_qty: Decimal = _ZERO  # quantity held on both legs once open
    entry_notional: Decimal = _ZERO  # hedged_qty x buy_avg, the base of PnL bps
    cash: Decimal = _ZERO  # what all of its fills moved, fees included
    fees: Decimal = _ZERO
    ring_index: int = -1
    attempts: Counter[str] = field(default_factory=Counter)
    last_refusal: Reason = Reason.OK
    funding: Decimal = _ZERO  # funding booked on its legs (in `cash` too), + received
    buy_cost: Decimal = _ZERO  # sum of qty x price of the fills that built the long leg
    buy_filled: Decimal = _ZERO
    capital_key: str = ""

    @property
    def balanced(self) -> bool:
        return self.long_qty == self.short_qty

    @property
    def buy_avg(self) -> Decimal:
        """Average price of the fills that built the long leg (0 before any)."""
        return self.buy_cost / self.buy_filled if self.buy_filled else _ZERO


@dataclass(frozen=True)
class ExecStatistics:
    """A frozen copy of the engine's counters."""

    opps_received: int
    opps_too_old: int
    orders_approved: int
    orders_sent: int
    fills: int
    trades_opened: int
    trades_closed: int
    risk_rejects: int
    malformed: int
    open_trades: int
    realized_pnl: Decimal
    skips: Mapping[str, int]


class Engine:
    """The exec decision core for one run."""

    def __init__(
        self,
        cfg: Config,
        board: QuoteBoard,
        status: StatusBoard,
        journal: Journal,
        venues: Sequence[Venue],
        *,
        run_id: str,
        clock: Callable[[], int] = now_ns,
        events: EventSink | None = None,
        log: logging.Logger | None = None,
        capital: CapitalOrchestrator | None = None,
        budgets: Mapping[str, RateBudget] | None = None,
        wall_ms: Callable[[], int] = lambda: int(time.time() * 1000),
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if [v.name for v in venues] != list(cfg.venue_names):
            raise ValueError("venues must be given in board order, one per configured venue")
        self.cfg = cfg
        self._board = board
        self._status = status
        self._journal = journal
        self._venues = tuple(venues)
        self.run_id = run_id
        self._clock = clock
        self._events = events
        self._log = log or logging.getLogger("perpbot.exec")
        self._vnames = cfg.venue_names
        self._snames = cfg.symbol_names
        self._sidx = {n: i for i, n in enumerate(self._snames)}
        self._vidx = {n: i for i, n in enumerate(self._vnames)}
        self.n_venues = len(self._vnames)
        self.n_symbols = len(self._snames)
        self._markets: list[list[Market | None]] = [
            [v.markets().get(s) for s in self._snames] for v in venues
        ]
        self._fee_bps = [cfg.venues[n].taker_fee_bps for n in self._vnames]
        self._fee = [fee_rate(b) for b in self._fee_bps]
        self._notional = Decimal(repr(cfg.exec.trade_notional_usd))
        self._max_age_ns = cfg.exec.max_opportunity_age_ms * _MS
        self._max_hold_ns = cfg.exec.max_hold_ms * _MS
        self._take_profit_bps = cfg.exec.take_profit_bps
        self._min_edge_bps = cfg.scanner.min_edge_bps
        self.gate = RiskGate(Limits.from_config(cfg), status)
        self.book = PositionBook(len(self._vnames), len(self._snames))
        self.trades: dict[int, Trade] = {}
        self._next_trade_id = journal.next_trade_id()
        # the daily loss limit: today's realized PnL from the journal, so a restart does not forget it
        self._day = _utc_day()
        self._day_pnl = journal.realized_since(_day_start(self._day))
        self._loss_limit_hit = False
        self._lock = asyncio.Lock()
        self._daily_limit = cfg.risk.max_daily_loss_usd
        self._closed = False
        self._counters = [0] * N_COUNTERS
        self._skips: Counter[str] = Counter()
        self.malformed = 0
        self.hists = {hop: LocalHistogram() for hop in _HOPS}
        ex = cfg.exec
        self._entry_mode = ex.entry_mode
        self._maker_venue = ex.maker_venue
        self._maker_timeout_ns = ex.maker_timeout_ms * _MS
        self._order_timeout_ns = ex.order_timeout_ms * _MS
        self._legging_deadline_ns = ex.legging_deadline_ms * _MS
        self._next_best = ex.hedge_next_best_venue
        self._funding_aware = ex.funding_aware
        # readonly watches real venues: every opportunity is journaled as a skip, none is traded
        self._read_only = cfg.mode == "readonly"
        policy = OrderPolicy(retry_attempts=ex.retry_attempts, retry_backoff_ms=ex.retry_backoff_ms,
                             poll_ms=ex.order_poll_ms, max_poll_ms=ex.max_order_poll_ms)
        self._budgets = [budgets.get(n) if budgets else None for n in self._vnames]
        self._runners = [OrderRunner(v, policy, clock=clock, sleep=sleep, log=self._log, budget=b)
                         for v, b in zip(venues, self._budgets)]
        self._rtt = [0.0] * len(venues)  # order round trip per venue, ns, smoothed
        self._unresolved: dict[str, tuple[int, LegCheck, OrderRequest]] = {}
        self._fallbacks = 0
        self._capital = capital if capital is not None else CapitalOrchestrator(cfg.capital, log=self._log)
        self._snapshots = SnapshotProvider(cfg.capital, self._capital, clock=clock, log=self._log)
        self._leverage = [Decimal(repr(cfg.capital.leverage_per_venue.get(n, cfg.capital.leverage)))
                          for n in self._vnames]
        self._wall_ms = wall_ms
        #: symbol index -> why it is paused (a position mismatch); opens are refused
        self.paused_symbols: dict[int, str] = {}
        #: (venue, symbol) -> funding rate, refreshed by `refresh_funding`
        self.funding: dict[tuple[int, int], FundingRate] = {}
        self._funding_seen: set[str] = journal.funding_ids()
        self._funding_since_ms = wall_ms()
        self._margin_free: list[Decimal | None] = [None] * len(venues)
        self._capital_dirty: set[int] = set()
        self._capital_task: asyncio.Task[None] | None = None
        self._open_orders = [0] * len(venues)

    # -- public API ------------------------------------------------------------------

    async def on_opportunity(self, opp: Opportunity, ts_recv_ns: int) -> Reason:
        """Act on one opportunity received at `ts_recv_ns`; OK if a trade was attempted."""
        self._counters[ExecCounter.OPPS_RECEIVED] += 1
        self.hists[Hop.DETECT_TO_EXEC].add(ts_recv_ns - opp.ts_detect_ns)
        async with self._lock:
            if self._closed:
                self._skips[Reason.STOPPING.name] += 1
                return Reason.STOPPING
            return await self._open(opp, ts_recv_ns)

    async def start(self) -> None:
        """Before the first decision: balances (margin headroom, capital pools) and funding rates."""
        await self.refresh_capital()
        await self.refresh_funding()

    async def check_open_trades(self) -> int:
        """Close trades that reached take-profit or max hold, retry unwinds; returns trades closed."""
        return await self._check(force=None)

    async def flatten(self) -> int:
        """Close every open trade now, whatever its PnL; returns trades closed."""
        return await self._check(force="flatten")

    async def drain(self) -> None:
        """Take no further decisions, wait for orders in flight, and leave no leg naked.

        Open trades stay open (the journal holds them for the next start), but a
        trade whose legs differ is unwound first: stopping must not leave
        exposure that nothing hedges.
        """
        self._closed = True
        await self.level_legs("stopping")
        await self.capital_settled()

    async def level_legs(self, why: str) -> int:
        """Unwind every trade whose legs differ, now; returns how many were left uneven.

        Called when stopping, and by a restarted exec right after recovery, before
        the slower start-up reads: a leg the crash left naked is not left waiting.
        """
        async with self._lock:
            for trade in list(self.trades.values()):
                if not trade.balanced and not self._status.halted():
                    self._log.warning("%s: trade %d legs differ (long %s, short %s); unwinding", why,
                                      trade.trade_id, trade.long_qty, trade.short_qty)
                    if await self._unwind(trade):
                        self._settle(trade, "unwind")
            return sum(1 for t in self.trades.values() if not t.balanced)

    def note_superseded(self, opp: Opportunity, ts_recv_ns: int) -> None:
        """An opportunity dropped unread because a newer one for the same pair came with it."""
        self._counters[ExecCounter.OPPS_RECEIVED] += 1
        self.hists[Hop.DETECT_TO_EXEC].add(ts_recv_ns - opp.ts_detect_ns)
        if not self._closed:
            self._skip(opp, Reason.SUPERSEDED, "")

    def count_malformed(self) -> None:
        """A message that did not decode (counted here so `statistics()` has it)."""
        self.malformed += 1

    def counters(self) -> list[int]:
        """The status record's counters, indexed by `ExecCounter`."""
        c = list(self._counters)
        c[ExecCounter.ORDERS_APPROVED] = self.gate.approved
        c[ExecCounter.ORDERS_SENT] = self.gate.sent
        c[ExecCounter.RISK_REJECTS] = self.gate.rejected
        return c

    def statistics(self) -> ExecStatistics:
        c = self.counters()
        return ExecStatistics(
            opps_received=c[ExecCounter.OPPS_RECEIVED],
            opps_too_old=c[ExecCounter.OPPS_TOO_OLD],
            orders_approved=c[ExecCounter.ORDERS_APPROVED],
            orders_sent=c[ExecCounter.ORDERS_SENT],
            fills=c[ExecCounter.FILLS],
            trades_opened=c[ExecCounter.TRADES_OPENED],
            trades_closed=c[ExecCounter.TRADES_CLOSED],
            risk_rejects=c[ExecCounter.RISK_REJECTS],
            malformed=self.malformed,
            open_trades=len(self.trades),
            realized_pnl=self.book.realized_pnl(),
            skips=dict(self._skips),
        )

    def flush_histograms(self) -> None:
        """Add the latency counts gathered since the last flush to the status segment."""
        for hop, h in self.hists.items():
            if h.dirty:
                self._status.add_histogram(hop, h.drain())

    def restore(self, state: RecoveredState) -> int:
        """Take over what a previous exec held, as rebuilt from the journal; before any trading.

        Trades left half-settled by the crash are settled now: one still
        `opening` with both legs flat failed, one `opening` with equal legs is
        open, one `open` with both legs flat is closed (`recovered`).
        Returns the number of trades still held.
        """
        if self.trades or any(True for _ in self.book.items()):
            raise RuntimeError("restore() is for a fresh engine, before it has traded")
        vidx = {n: i for i, n in enumerate(self._vnames)}
        sidx = {n: i for i, n in enumerate(self._snames)}
        for f in state.fills:
            self.book.apply(vidx[f.venue], sidx[f.symbol], f.side, f.qty, f.price, f.fee)
        for v in range(len(self._vnames)):
            for s in range(len(self._snames)):
                self.book.mirror(self._status.positions, v, s)
        # the ring of recent trades lives in the launcher's segment, which outlived the crash
        ring = {int(r["trade_id"]): i for i, r in enumerate(self._status.trades)
                if int(r["state"]) == RING_OPEN}
        for rt in state.trades:
            trade = Trade(
                rt.trade_id, rt.opp_id, sidx[rt.symbol], vidx[rt.buy_venue], vidx[rt.sell_venue],
                rt.entry_edge_bps, rt.open_ns, rt.buy_order, rt.sell_order, state=rt.state,
                long_qty=rt.long_qty, short_qty=rt.short_qty, hedged_qty=rt.hedged_qty,
                buy_cost=rt.buy_cost, buy_filled=rt.buy_filled, entry_notional=rt.entry_notional,
                cash=rt.cash, fees=rt.fees, funding=rt.funding,
                capital_key=self._capital_key(rt.trade_id),
                ring_index=ring.get(rt.trade_id, -1) if rt.state == "open" else -1,
                attempts=Counter(rt.attempts),
            )
            self.trades[trade.trade_id] = trade
        self._next_trade_id = max(self._next_trade_id, state.next_trade_id)
        for trade in self.trades.values():
            # the legs exist on the venues whatever the budget: their margin is committed again
            legs = {self._vnames[trade.buy_venue]: trade.long_qty,
                    self._vnames[trade.sell_venue]: trade.short_qty}
            committed = {n: margin_needed(abs(q) * trade.buy_avg, self._leverage[self._vidx[n]])
                         for n, q in legs.items() if q and trade.buy_avg}
            if committed:
                self._capital.adopt(trade.capital_key, Pool.ARBITRAGE, committed)
        for trade in list(self.trades.values()):
            flat = trade.long_qty == 0 and trade.short_qty == 0
            if trade.state == "opening" and (flat or trade.balanced):
                self._settle(trade, "open_failed")
            elif trade.state == "open" and flat:
                self._settle(trade, "recovered")
        if state.fills:
            self._emit_positions(set(range(len(self._vnames))), 0)
        self._log.info("restored from the journal: %d open trades, %d fills, next trade id %d",
                       len(self.trades), len(state.fills), self._next_trade_id)
        return len(self.trades)

    def positions_by_name(self) -> dict[tuple[str, str], Decimal]:
        """Net quantity per (venue, symbol) name, non-zero only (for reconciliation)."""
        return {(self._vnames[v], self._snames[s]): p.qty for (v, s), p in self.book.items()
                if p.qty}

    # -- opening ---------------------------------------------------------------------------

    async def _open(self, opp: Opportunity, ts_recv_ns: int) -> Reason:
        now = self._clock()
        if self._daily_loss_reached():
            return self._skip(opp, Reason.DAILY_LOSS, f"realized {self._day_pnl} today")
        # age since detection: a backlog or a slow hop makes the signal worthless
        if now - opp.ts_detect_ns > self._max_age_ns:
            self._counters[ExecCounter.OPPS_TOO_OLD] += 1
            return self._skip(opp, Reason.TOO_OLD, f"{(now - opp.ts_detect_ns) / _MS:.1f} ms old")
        s, bv, sv = opp.symbol, opp.buy_venue, opp.sell_venue
        if not (0 <= s < len(self._snames) and 0 <= bv < len(self._vnames)
                and 0 <= sv < len(self._vnames) and bv != sv):
            return self._skip(opp, Reason.BAD_MESSAGE, f"symbol {s} venues {bv}/{sv}")
        bm, sm = self._markets[bv][s], self._markets[sv][s]
        if bm is None or sm is None:
            return self._skip(opp, Reason.NO_MARKET, "a venue does not trade the symbol")
        if s in self.paused_symbols:
            return self._skip(opp, Reason.SYMBOL_PAUSED, self.paused_symbols[s])
        if self._read_only:
            return self._skip(opp, Reason.READ_ONLY,
                              f"{opp.edge_bps:.2f} bps at {opp.buy_price}/{opp.sell_price}")
        qb, qs = self._board.read(bv, s), self._board.read(sv, s)
        if qb is None or qs is None or not (qb.ask > 0 and qs.bid > 0):
            return self._skip(opp, Reason.NO_QUOTE, "")
        ask = round_price(to_decimal(qb.ask), bm.tick_size, Side.BUY)
        bid = round_price(to_decimal(qs.bid), sm.tick_size, Side.SELL)
        edge = net_edge_bps(ask, bid, self._fee_bps[bv], self._fee_bps[sv])
        funding = self._expected_funding_bps(bv, sv, s)
        if edge + funding < self._min_edge_bps:
            return self._skip(opp, Reason.EDGE_GONE,
                              f"{edge:.2f} bps net at {ask}/{bid}, funding {funding:+.2f} bps")
        # both legs checked together BEFORE either is sent: one size valid on both venues
        size = choose_size(
            trade_notional_usd=self._notional, buy_price=ask, sell_price=bid,
            buy_top_size=to_decimal(qb.ask_size), sell_top_size=to_decimal(qs.bid_size),
            buy_market=bm, sell_market=sm,
        )
        if size.reason is not Reason.OK:
            return self._skip(opp, size.reason, size.detail)
        qty = size.qty
        legs = (self._leg(bv, s, Side.BUY, qty, ask, Purpose.OPEN, qb.ts_recv_ns, ask),
                self._leg(sv, s, Side.SELL, qty, bid, Purpose.OPEN, qs.ts_recv_ns, bid))
        if self._entry_mode == "maker_first":
            return await self._open_maker_first(opp, ts_recv_ns, legs, edge + funding)
        # capital and the venues' order budgets first: an order the gate approves is then always
        # sent (or held back by a kill), so orders approved and orders sent stay equal
        held = self._admit(opp, legs)
        if held is not Reason.OK:
            return held
        approval = self.gate.check(legs, open_trades=len(self.trades), now_ns=self._clock(),
                                   view=self)
        if not approval.ok:
            self._release_capital(self._next_trade_id)
            return self._skip(opp, approval.reason, approval.verdict.detail)
        trade = self._new_trade(opp, legs, edge + funding)
        sym = self._snames[s]
        reqs = (OrderRequest(trade.buy_order, sym, Side.BUY, qty, ask),
                OrderRequest(trade.sell_order, sym, Side.SELL, qty, bid))
        results = await self._send_opening(opp, ts_recv_ns, trade, approval, reqs, legs, qty,
                                           self._order_timeout_ns)
        if results is None:
            return Reason.HALTED
        if not trade.balanced:
            self._legging(trade, "leg_mismatch", _describe(results))
            await self._fix_legs(trade)
        self._settle(trade, "open_failed")
        return Reason.OK

    async def _open_maker_first(self, opp: Opportunity, ts_recv_ns: int,
                                legs: tuple[LegCheck, LegCheck], edge: float) -> Reason:
        """A post-only leg on the maker venue, then the other leg taker as its hedge."""
        buy, sell = legs
        mi = self._maker_index(buy.venue, sell.venue)
        maker, taker = legs[mi], legs[1 - mi]
        s, mv = maker.symbol, maker.venue
        market = self._markets[mv][s]
        q = self._board.read(mv, s)
        assert market is not None
        if q is None or not (q.bid > 0 and q.ask > 0):
            return self._skip(opp, Reason.NO_QUOTE, "maker venue")
        # join our side of the maker venue's book: a buy at its bid, a sell at its ask (never crossing)
        if maker.side is Side.BUY:
            price = round_down(to_decimal(q.bid), market.tick_size)
        else:
            price = round_up(to_decimal(q.ask), market.tick_size)
        maker = self._leg(mv, s, maker.side, maker.qty, price, Purpose.OPEN, q.ts_recv_ns, price)
        # pre-validation: the pair as it would stand once hedged (sizes equal, both venues' limits)
        pair = (maker, taker) if mi == 0 else (taker, maker)
        verdict = self.gate.validate(pair, open_trades=len(self.trades), now_ns=self._clock(),
                                     view=self)
        if not verdict.ok:
            return self._skip(opp, verdict.reason, verdict.detail)
        held = self._admit(opp, pair)
        if held is not Reason.OK:
            return held
        approval = self.gate.check((maker,), open_trades=len(self.trades), now_ns=self._clock(),
                                   view=self)
        if not approval.ok:
            self._release_capital(self._next_trade_id)
            return self._skip(opp, approval.reason, approval.verdict.detail)
        trade = self._new_trade(opp, pair, edge)
        req = OrderRequest(trade.buy_order if maker.side is Side.BUY else trade.sell_order,
                           self._snames[s], maker.side, maker.qty, price,
                           order_type=OrderType.POST_ONLY)
        results = await self._send_opening(opp, ts_recv_ns, trade, approval, (req,), (maker,),
                                           maker.qty, self._maker_timeout_ns)
        if results is None:
            return Reason.HALTED
        if results[0].filled_qty > 0:
            # the maker leg filled (all or part): the taker leg is its hedge, on the same deadline
            await self._fix_legs(trade)
            self._settle(trade, "open_failed")
            return Reason.OK
        # nothing rested into a fill: taker-taker at the quotes as they are now, if still worth it
        self._settle(trade, "maker_unfilled")
        self._fallbacks += 1
        return await self._open_taker_fallback(opp, ts_recv_ns)

    def _admit(self, opp: Opportunity, pair: Sequence[LegCheck]) -> Reason:
        """Reserve the pair's capital under the next trade id, and check the venues' entry budgets."""
        tid = self._next_trade_id
        if not self._entry_budget_free(pair):
            return self._skip(opp, Reason.RATE_LIMIT, "entry budget spent on a venue")
        reserved = self._reserve_capital(tid, pair)
        if reserved:
            return self._skip(opp, Reason.CAPITAL, reserved)
        return Reason.OK

    def _new_trade(self, opp: Opportunity, pair: Sequence[LegCheck], edge: float) -> Trade:
        """The Trade of an admitted, approved pair; its entry orders are counted in the budgets."""
        tid = self._next_trade_id
        self._take_entry_budget(pair)
        self._next_trade_id += 1
        buy, sell = pair
        return Trade(tid, opp.opp_id, buy.symbol, buy.venue, sell.venue, edge, self._clock(),
                     self._coid(tid, "open", "buy"), self._coid(tid, "open", "sell"),
                     capital_key=self._capital_key(tid))

    async def _send_opening(self, opp: Opportunity, ts_recv_ns: int, trade: Trade,
                            approval: Approval, reqs: Sequence[OrderRequest],
                            legs: Sequence[LegCheck], qty: Decimal,
                            timeout_ns: int) -> list[OrderResult] | None:
        """Journal the trade and its opening orders, send them; None if the kill switch won."""
        ts_decide = trade.open_ns
        self._journal.record_open_intent(
            trade_id=trade.trade_id, opp_id=opp.opp_id, run_id=self.run_id,
            symbol=self._snames[trade.symbol], buy_venue=self._vnames[trade.buy_venue],
            sell_venue=self._vnames[trade.sell_venue], qty=qty,
            entry_edge_bps=trade.entry_edge_bps,
            orders=self._intents(trade, reqs, legs, "open", ts_decide),
        )
        self.trades[trade.trade_id] = trade
        sent = await self._send(approval, reqs, trade, deadline_ns=self._deadline(timeout_ns))
        if sent is None:
            self._finish(trade, "failed", "kill switch before dispatch")
            return None
        results, ts_dispatch = sent
        self.hists[Hop.EXEC_TO_DECIDE].add(ts_decide - ts_recv_ns)
        self.hists[Hop.DECIDE_TO_DISPATCH].add(ts_dispatch - ts_decide)
        self.hists[Hop.TICK_TO_ORDER].add(ts_dispatch - opp.ts_recv_ns)
        return results

    async def _open_taker_fallback(self, opp: Opportunity, ts_recv_ns: int) -> Reason:
        mode, self._entry_mode = self._entry_mode, "taker"
        try:
            return await self._open(opp._replace(ts_detect_ns=self._clock()), ts_recv_ns)
        finally:
            self._entry_mode = mode

    def _maker_index(self, buy_venue: int, sell_venue: int) -> int:
        """0 when the buy leg rests as maker, 1 for the sell leg."""
        if self._maker_venue == "buy":
            return 0
        if self._maker_venue == "sell":
            return 1
        # the slower venue: its quote is older by the time our order lands, so rest there
        return 0 if self._rtt[buy_venue] >= self._rtt[sell_venue] else 1


    def _skip(self, opp: Opportunity, reason: Reason, detail: str) -> Reason:
        self._skips[reason.name] += 1
        ok = 0 <= opp.symbol < len(self._snames)
        self._journal.record_skip(
            opp_id=opp.opp_id, reason=reason.name, ts_ns=self._clock(),
            symbol=self._snames[opp.symbol] if ok else str(opp.symbol),
            buy_venue=self._vname(opp.buy_venue), sell_venue=self._vname(opp.sell_venue),
            detail=detail,
        )
        return reason

    def _vname(self, v: int) -> str:
        return self._vnames[v] if 0 <= v < len(self._vnames) else str(v)

    # -- closing and unwinding ------------------------------------------------------------

    async def _check(self, force: str | None) -> int:
        async with self._lock:
            if self._unresolved and not self._closed:
                await self._resolve_unknown()
            if self._closed or not self.trades:
                return 0
            if self._status.halted():
                return 0  # the gate would refuse every order; skip the work
            closed = 0
            for trade in list(self.trades.values()):
                if force is not None:
                    why: str | None = force
                    sent = await self._close(trade, force)
                elif not trade.balanced:
                    why = "unwind"
                    sent = await self._unwind(trade)
                else:
                    why = self._close_reason(trade)
                    sent = why is not None and await self._close(trade, why)
                if sent and not trade.balanced:
                    # the close's legs filled differently: take the larger down now, not a check later
                    await self._unwind(trade)
                if sent and why is not None:
                    closed += self._settle(trade, why)
            return closed

    def _close_reason(self, trade: Trade) -> str | None:
        s = trade.symbol
        qb, qs = self._board.read(trade.buy_venue, s), self._board.read(trade.sell_venue, s)
        held = self._clock() - trade.open_ns
        if held >= self._max_hold_ns:
            return "max_hold"
        if qb is None or qs is None:
            return None
        bm, sm = self._markets[trade.buy_venue][s], self._markets[trade.sell_venue][s]
        assert bm is not None and sm is not None
        pnl = exit_pnl(
            cash=trade.cash, long_qty=trade.long_qty, short_qty=trade.short_qty,
            exit_bid_on_buy_venue=round_price(to_decimal(qb.bid), bm.tick_size, Side.SELL),
            exit_ask_on_sell_venue=round_price(to_decimal(qs.ask), sm.tick_size, Side.BUY),
            buy_venue_fee=self._fee[trade.buy_venue], sell_venue_fee=self._fee[trade.sell_venue],
        )
        if pnl_bps(pnl, trade.entry_notional) >= self._take_profit_bps:
            return "take_profit"
        return None

    async def _fix_legs(self, trade: Trade) -> None:
        """Bring a trade's legs level within the legging deadline (module docstring, Legging)."""
        deadline = self._clock() + self._legging_deadline_ns
        tried_next_best = False
        rounds = 0
        while not trade.balanced and self._clock() < deadline and rounds < LEGGING_ROUNDS:
            rounds += 1
            deficit = trade.long_qty - trade.short_qty
            if deficit > 0:  # the short leg is missing: sell on the sell venue
                v, side, qty, leg = trade.sell_venue, Side.SELL, deficit, "sell"
            else:  # the long leg is missing: buy on the buy venue
                v, side, qty, leg = trade.buy_venue, Side.BUY, -deficit, "buy"
            sent = await self._hedge(trade, v, side, qty, leg, "same venue")
            if trade.balanced:
                break
            # the leg may move only while its venue holds nothing of it: a trade's legs are
            # one venue each, which is how its fills are told apart
            untouched = (trade.short_qty if leg == "sell" else trade.long_qty) == 0
            if (self._next_best and untouched and not tried_next_best
                    and not self._unresolved_on(trade)):
                tried_next_best = True
                w = self._next_best_venue(trade, side)
                if w is not None:
                    self._repoint(trade, leg, w)
                    await self._hedge(trade, w, side, abs(trade.long_qty - trade.short_qty), leg,
                                      "next-best venue")
                    if trade.balanced:
                        break
            # what cannot be hedged is unwound on the leg that filled
            await self._unwind(trade)
            if not sent:
                break  # refused by the gate: the periodic check retries, do not spin here
        if trade.balanced:
            self._legging(trade, "legs_level", f"long {trade.long_qty} short {trade.short_qty}")

    async def _hedge(self, trade: Trade, v: int, side: Side, qty: Decimal, leg: str,
                     where: str) -> bool:
        market = self._markets[v][trade.symbol]
        if market is None:
            return False
        qty = round_qty(qty, market.lot_size)
        if qty <= 0:
            return False
        self._legging(trade, "hedge", f"{side.value} {qty} on {self._vnames[v]} ({where})")
        return await self._exit_orders(trade, Purpose.HEDGE, [(v, side, qty, leg)], "hedge")

    def _next_best_venue(self, trade: Trade, side: Side) -> int | None:
        """The venue with the best fresh quote for `side`, other than the trade's two."""
        s, now = trade.symbol, self._clock()
        cands = []
        for v in range(len(self._vnames)):
            if v in (trade.buy_venue, trade.sell_venue) or self._markets[v][s] is None:
                continue
            if self._status.feed_state(v) != FeedState.CONNECTED:
                continue
            q = self._board.read(v, s)
            if q is None or now - q.ts_recv_ns > self.gate.limits.stale_after_ns:
                continue
            price = q.bid if side is Side.SELL else q.ask
            if price > 0:
                cands.append((price, v))
        if not cands:
            return None
        return (max(cands) if side is Side.SELL else min(cands))[1]

    def _repoint(self, trade: Trade, leg: str, v: int) -> None:
        old = trade.sell_venue if leg == "sell" else trade.buy_venue
        if leg == "sell":
            trade.sell_venue = v
        else:
            trade.buy_venue = v
        self._journal.update_trade_venues(trade.trade_id, buy_venue=self._vnames[trade.buy_venue],
                                          sell_venue=self._vnames[trade.sell_venue])
        self._legging(trade, "leg_moved",
                      f"{leg} leg moved from {self._vnames[old]} to {self._vnames[v]}")

    async def _close(self, trade: Trade, why: str) -> bool:
        """Send reduce-side orders for whatever is still open on each leg; True if sent."""
        plan = []
        if trade.long_qty > 0:
            plan.append((trade.buy_venue, Side.SELL, trade.long_qty, "sell"))
        if trade.short_qty > 0:
            plan.append((trade.sell_venue, Side.BUY, trade.short_qty, "buy"))
        return await self._exit_orders(trade, Purpose.CLOSE, plan, why)

    async def _unwind(self, trade: Trade) -> bool:
        """Bring the larger leg down to the smaller one with one reduce-side order; True if sent."""
        excess = trade.long_qty - trade.short_qty
        if excess > 0:
            plan = [(trade.buy_venue, Side.SELL, excess, "sell")]
        elif excess < 0:
            plan = [(trade.sell_venue, Side.BUY, -excess, "buy")]
        else:
            return False
        return await self._exit_orders(trade, Purpose.UNWIND, plan, "unwind")

    async def _exit_orders(self, trade: Trade, purpose: Purpose,
                           plan: list[tuple[int, Side, Decimal, str]], why: str) -> bool:
        if not plan:
            return False
        s = trade.symbol
        legs: list[LegCheck] = []
        for v, side, qty, _ in plan:
            q = self._board.read(v, s)
            price = _ZERO if q is None else to_decimal(q.ask if side is Side.BUY else q.bid)
            # no quote: stamp 0, which the gate refuses as NO_QUOTE
            legs.append(self._leg(v, s, side, qty, price, purpose,
                                  0 if q is None else q.ts_recv_ns, None))
        if purpose is Purpose.CLOSE and not self._exit_budget_now(legs):
            return False  # the venue's order budget is spent: the next check closes it
        approval = self.gate.check(legs, open_trades=len(self.trades), now_ns=self._clock(),
                                   view=self)
        if not approval.ok:
            self._refused(trade, purpose, approval)
            return False
        if purpose is not Purpose.CLOSE:
            for leg in legs:  # a hedge or unwind waits for its budget (headroom is kept for it)
                await self._take_exit_budget(leg.venue)
        trade.last_refusal = Reason.OK
        ts_decide = self._clock()
        n = trade.attempts[purpose.value]
        trade.attempts[purpose.value] += 1
        sym = self._snames[s]
        reqs = tuple(
            OrderRequest(self._coid(trade.trade_id, purpose.value, leg, n), sym, side, qty, None,
                         reduce_only=purpose is not Purpose.HEDGE
                         and reduces(self.book.qty(v, s), side, qty))
            for v, side, qty, leg in plan
        )
        self._journal.record_intents(self._intents(trade, reqs, legs, purpose.value, ts_decide))
        self._log.info("trade %d %s (%s): %s", trade.trade_id, purpose.value, why,
                       ", ".join(f"{r.side.value} {r.qty} on {self._vnames[l.venue]}"
                                 for r, l in zip(reqs, legs)))
        return await self._send(approval, reqs, trade,
                                deadline_ns=self._deadline(self._order_timeout_ns)) is not None

    def _refused(self, trade: Trade, purpose: Purpose, approval: Approval) -> None:
        # a refused exit is retried every check: say so once per reason, not every 5 ms
        if approval.reason is trade.last_refusal:
            return
        trade.last_refusal = approval.reason
        level = logging.ERROR if not trade.balanced else logging.WARNING
        self._log.log(level, "trade %d %s refused: %s %s (long %s, short %s)", trade.trade_id,
                      purpose.value, approval.reason.name, approval.verdict.detail,
                      trade.long_qty, trade.short_qty)
        if not trade.balanced:
            self._legging(trade, "naked_leg",
                f"{purpose.value} refused ({approval.reason.name} {approval.verdict.detail}); "
                f"long {trade.long_qty} short {trade.short_qty} left open")

    # -- sending -------------------------------------------------------------------------------

    async def _send(self, approval: Approval, reqs: Sequence[OrderRequest], trade: Trade, *,
                    deadline_ns: int) -> tuple[list[OrderResult], int] | None:
        """Send an approved decision's orders concurrently and follow each to its final state.

        None if the kill switch beat us (nothing was sent).
        """
        legs = self.gate.consume(approval)
        if not legs:
            self._journal.mark_orders([r.client_order_id for r in reqs], "not_sent", "kill switch")
            self._log.warning("trade %d: kill switch thrown before dispatch, nothing sent",
                              trade.trade_id)
            return None
        ts_dispatch = self._clock()
        outs = await asyncio.gather(
            *(self._runners[leg.venue].run(r, deadline_ns=deadline_ns) for leg, r in zip(legs, reqs)),
            return_exceptions=True,
        )
        done = self._clock()
        results: list[OrderResult] = []
        unknown: list[tuple[LegCheck, OrderRequest, str]] = []
        for leg, req, out in zip(legs, reqs, outs):
            vname = self._vnames[leg.venue]
            if isinstance(out, BaseException):
                # a bug or a venue error the runner did not classify: the outcome is unknown
                out = Outcome(OrderResult(req.client_order_id, vname, req.symbol, req.side, req.qty,
                                          OrderStatus.REJECTED, ts_done_ns=done,
                                          reason=f"venue error: {out!r}"),
                              unknown=True, note=repr(out))
            if out.unknown:
                unknown.append((leg, req, out.note))
            if out.race_filled:
                self._journal.record_incident(trade.trade_id, "cancel_race",
                                              f"{req.client_order_id} on {vname}: {out.note}")
            if out.sends > 1:
                self._journal.record_incident(trade.trade_id, "resent",
                                              f"{req.client_order_id} on {vname} sent {out.sends} times "
                                              f"(same client order id): {out.note}")
            if req.order_type is OrderType.IOC and out.result.status.terminal:
                self._rtt[leg.venue] += (out.result.ts_done_ns - ts_dispatch - self._rtt[leg.venue]) / 8
            results.append(out.result)
        unknown_ids = {req.client_order_id for _, req, _ in unknown}
        self._journal.record_results([r for r in results if r.client_order_id not in unknown_ids],
                                     ts_dispatch)
        for leg, req, note in unknown:
            self._journal.mark_orders([req.client_order_id], UNKNOWN, note, ts_dispatch)
            self._journal.record_incident(trade.trade_id, "unknown_state",
                                          f"{req.client_order_id} on {self._vnames[leg.venue]}: {note}")
            self._log.error("order %s on %s: final state unknown (%s); asking again on every check",
                            req.client_order_id, self._vnames[leg.venue], note)
            self._unresolved[req.client_order_id] = (trade.trade_id, leg, req)
        for leg, req, res in zip(legs, reqs, results):
            if req.client_order_id not in self._unresolved:
                self._apply(trade, leg, req, res, ts_dispatch)
        touched = {leg.venue for leg in legs}
        self._emit_positions(touched, trade.symbol)
        await self._capital_snapshot(touched)
        return results, ts_dispatch

    async def _resolve_unknown(self) -> None:
        """Ask the venues again about orders whose final state was unknown."""
        for coid, (tid, leg, req) in list(self._unresolved.items()):
            try:
                got = await self._runners[leg.venue].lookup(req)
            except Exception as e:  # still cannot say: ask again next time
                self._log.debug("fetch_order %s still failing: %r", coid, e)
                continue
            if isinstance(got, OpenOrder):
                outcome = await self._runners[leg.venue].cancel_and_settle(
                    req, OrderResult(coid, self._vnames[leg.venue], req.symbol, req.side, req.qty,
                                     OrderStatus.OPEN))
                if outcome.unknown:
                    continue
                got = outcome.result
            del self._unresolved[coid]
            if got is None:
                self._journal.mark_orders([coid], NOT_SENT, "the venue never received it")
                continue
            self._journal.record_results([got], got.ts_accepted_ns)
            self._journal.record_incident(tid, "unknown_resolved",
                                          f"{coid}: {got.status.value} {got.filled_qty}")
            trade = self.trades.get(tid)
            if trade is None:
                # the trade was finished meanwhile: its fills still move the book
                for f in got.fills:
                    self.book.apply(leg.venue, leg.symbol, f.side, f.qty, f.price, f.fee)
                    self.book.mirror(self._status.positions, leg.venue, leg.symbol)
                continue
            self._apply(trade, leg, req, got, got.ts_accepted_ns)

    def _unresolved_on(self, trade: Trade) -> bool:
        return any(tid == trade.trade_id for tid, _, _ in self._unresolved.values())


    def _apply(self, trade: Trade, leg: LegCheck, req: OrderRequest, res: OrderResult,
               ts_dispatch: int) -> None:
        s, v = trade.symbol, leg.venue
        self._emit(EventType.ORDER_PLACED, {
            "order_id": req.client_order_id, "symbol": req.symbol, "exchange": self._vnames[v],
            "side": req.side.value, "size": float(req.qty),
            # a market order has no limit: report the quote it was decided on
            "price": float(req.price if req.price is not None else leg.price),
            "market": req.price is None, "purpose": leg.purpose.value,
            "trade_id": trade.trade_id, "reduce_only": req.reduce_only, "ts": ts_dispatch,
        })
        for f in res.fills:
            self._counters[ExecCounter.FILLS] += 1
            self.book.apply(v, s, f.side, f.qty, f.price, f.fee)
            self.book.mirror(self._status.positions, v, s)
            self._status.push_fill(ts_ns=f.ts_ns, trade_id=trade.trade_id, symbol=s, venue=v,
                                   side=1 if f.side is Side.BUY else 2, qty=float(f.qty), price=float(f.price),
                                   fee=float(f.fee))
            trade.cash += leg_cash(f.side.sign, f.qty, f.price, f.fee)
            trade.fees += f.fee
            if v == trade.buy_venue:
                trade.long_qty += f.side.sign * f.qty
                if f.side is Side.BUY and leg.purpose in _ENTRY_PURPOSES:
                    trade.buy_cost += f.qty * f.price
                    trade.buy_filled += f.qty
            elif v == trade.sell_venue:
                trade.short_qty -= f.side.sign * f.qty
            else:  # cannot happen while legs move only when empty; if it does, say so loudly
                self._log.error("trade %d: fill %s on %s, neither of its venues", trade.trade_id,
                                f.fill_id, self._vnames[v])
                self._journal.record_incident(trade.trade_id, "stray_fill",
                                              f"{f.fill_id} on {self._vnames[v]}")
            if leg.purpose in _ENTRY_PURPOSES:
                self._commit_capital(trade, v, f.qty * f.price)
            self._emit(EventType.ORDER_FILLED, {
                "order_id": f.client_order_id, "fill_price": float(f.price),
                "fill_size": float(f.qty), "fee": float(f.fee),
                "is_partial": res.status is not OrderStatus.FILLED,
                "fill_id": f.fill_id, "exchange": self._vnames[v], "symbol": f.symbol,
                "side": f.side.value, "ts": f.ts_ns,
            })
        unfilled = req.qty - res.filled_qty
        if unfilled > 0:
            # IOC: whatever did not fill at once is cancelled by the venue
            self._emit(EventType.ORDER_CANCELLED, {
                "order_id": req.client_order_id, "status": res.status.value,
                "unfilled_size": float(unfilled), "reason": res.reason,
            })

    def _settle(self, trade: Trade, why: str) -> int:
        """Bring a trade's state in line with its legs; 1 if it just closed."""
        if trade.long_qty == 0 and trade.short_qty == 0:
            was_open = trade.state == "open"
            self._finish(trade, "closed" if was_open else "failed", why)
            return 1 if was_open else 0
        if not trade.balanced:
            if trade.last_refusal is Reason.OK:
                self._log.error("trade %d NAKED: long %s on %s, short %s on %s; retrying",
                                trade.trade_id, trade.long_qty, self._vnames[trade.buy_venue],
                                trade.short_qty, self._vnames[trade.sell_venue])
                self._legging(trade, "naked_leg",
                    f"long {trade.long_qty} short {trade.short_qty} after {why}")
            return 0
        if trade.state == "opening":
            trade.state = "open"
            trade.hedged_qty = trade.long_qty
            trade.entry_notional = trade.long_qty * trade.buy_avg
            trade.ring_index = self._status.push_trade(
                trade_id=trade.trade_id, symbol=trade.symbol, buy_venue=trade.buy_venue,
                sell_venue=trade.sell_venue, state=RING_OPEN, size=float(trade.hedged_qty),
                open_ns=trade.open_ns, close_ns=0, realized_pnl=0.0,
            )
            self._counters[ExecCounter.TRADES_OPENED] += 1
            # what the legs did not fill was reserved for nothing: only the committed margin stays
            if self._capital.holding(trade.capital_key) is not None:
                self._capital.release(trade.capital_key)
            self._journal.update_trade(trade.trade_id, state="open", qty=trade.hedged_qty,
                                       realized_pnl=trade.cash, fees=trade.fees)
            self._log.info("trade %d open: %s %s long %s / short %s, entry edge %.2f bps",
                           trade.trade_id, trade.hedged_qty, self._snames[trade.symbol],
                           self._vnames[trade.buy_venue], self._vnames[trade.sell_venue],
                           trade.entry_edge_bps)
        else:
            self._journal.update_trade(trade.trade_id, state=trade.state, qty=trade.hedged_qty,
                                       realized_pnl=trade.cash, fees=trade.fees)
        return 0

    def _daily_loss_reached(self) -> bool:
        """True once today's realized loss reached the limit (reported once a day)."""
        limit = self._daily_limit
        today = _utc_day()
        if today != self._day:
            self._day, self._day_pnl, self._loss_limit_hit = today, _ZERO, False
        if limit is None or -self._day_pnl < Decimal(repr(limit)):
            return False
        if not self._loss_limit_hit:
            self._loss_limit_hit = True
            self._log.error("daily loss limit reached: realized %s today, limit %s USD; opening nothing more",
                            self._day_pnl, limit)
            self._emit(EventType.DAILY_LOSS_LIMIT, {"realized_pnl": float(self._day_pnl), "limit": float(limit),
                                                    "ts": self._clock()})
        return True

    def set_daily_loss_limit(self, limit_usd: float | None) -> None:
        """`reload-risk` changes the daily limit too."""
        self._daily_limit = limit_usd

    def _finish(self, trade: Trade, state: str, why: str) -> None:
        self.trades.pop(trade.trade_id, None)
        self._release_capital(trade.trade_id)
        now = self._clock()
        if _utc_day() != self._day:
            self._day, self._day_pnl, self._loss_limit_hit = _utc_day(), _ZERO, False
        self._day_pnl += trade.cash
        self._daily_loss_reached()
        self._journal.update_trade(trade.trade_id, state=state, qty=trade.hedged_qty,
                                   realized_pnl=trade.cash, fees=trade.fees, close_reason=why,
                                   closed=True)
        if state != "closed":
            self._log.warning("trade %d %s (%s), realized %s", trade.trade_id, state, why,
                              trade.cash)
            return
        self._counters[ExecCounter.TRADES_CLOSED] += 1
        idx = trade.ring_index
        # the ring holds N_RECENT trades: only update our record if it was not overwritten
        if idx >= 0 and int(self._status.trades[idx]["trade_id"]) == trade.trade_id:
            self._status.update_trade(idx, state=RING_CLOSED, close_ns=now,
                                      realized_pnl=float(trade.cash))
        self._emit(EventType.TRADE_COMPLETED, {
            "buy_order": trade.buy_order, "sell_order": trade.sell_order,
            "realized_pnl": float(trade.cash), "trade_id": trade.trade_id,
            "symbol": self._snames[trade.symbol], "size": float(trade.hedged_qty),
            "fees": float(trade.fees), "funding": float(trade.funding), "close_reason": why,
            "ts": now,
        })
        self._log.info("trade %d closed (%s): realized %s after fees %s", trade.trade_id, why,
                       trade.cash, trade.fees)

    # -- what the risk gate reads (`risk.RiskView`) ----------------------------------------

    def qty(self, venue: int, symbol: int) -> Decimal:
        return self.book.qty(venue, symbol)

    def held(self) -> Iterator[tuple[int, int, Decimal]]:
        return ((v, s, p.qty) for (v, s), p in self.book.held())

    def mark(self, venue: int, symbol: int) -> Decimal | None:
        q = self._board.read(venue, symbol)
        if q is None or not (q.bid > 0 and q.ask > 0):
            return None
        return (to_decimal(q.bid) + to_decimal(q.ask)) / 2

    def open_orders(self, venue: int) -> int:
        return self._open_orders[venue]

    def margin_free(self, venue: int) -> Decimal | None:
        return self._margin_free[venue]

    def market(self, venue: int, symbol: int) -> Market | None:
        return self._markets[venue][symbol]

    def symbol_paused(self, symbol: int) -> bool:
        return symbol in self.paused_symbols

    def set_open_orders(self, venue: int, n: int) -> None:
        """What rests on a venue now (the process counts it periodically)."""
        self._open_orders[venue] = n

    # -- capital, rate budgets, funding ---------------------------------------------------------

    def _capital_key(self, trade_id: int) -> str:
        return f"{self.run_id}-{trade_id}"

    def _reserve_capital(self, trade_id: int, legs: Sequence[LegCheck]) -> str:
        """Reserve both legs' margin in the arbitrage pool; "" if reserved, else why not."""
        margins: dict[str, Decimal] = {}
        for leg in legs:
            name = self._vnames[leg.venue]
            margins[name] = margins.get(name, _ZERO) + leg.margin
        got = self._capital.reserve(self._capital_key(trade_id), Pool.ARBITRAGE, margins)
        return "" if isinstance(got, Reservation) else str(got)

    def _release_capital(self, trade_id: int) -> None:
        key = self._capital_key(trade_id)
        if self._capital.holding(key) is not None:
            self._capital.close(key)

    def _commit_capital(self, trade: Trade, venue: int, notional: Decimal) -> None:
        if not trade.capital_key:
            return
        held = self._capital.holding(trade.capital_key)
        name = self._vnames[venue]
        if held is None:
            return
        # a hedge on the same venue may slip past the reserved price, and one on the next-best
        # venue had nothing reserved there: commit what the reservation covers
        amount = min(margin_needed(notional, self._leverage[venue]), held.reserved.get(name, _ZERO))
        if amount > 0:
            self._capital.commit(trade.capital_key, name, amount)

    def _entry_budget_free(self, legs: Sequence[LegCheck]) -> bool:
        """Each leg's venue has an order left in the entry share of its rate budget now."""
        # an order counts in the venue's order windows only: its request windows pace the reads
        # (balances, positions, order lookups), which venues limit per endpoint, separately
        return all(b.wait_ms(Priority.ENTRY, orders=1, requests=0) == 0
                   for leg in legs if (b := self._budgets[leg.venue]) is not None)

    def _take_entry_budget(self, legs: Sequence[LegCheck]) -> None:
        """Count one order on each leg's venue (free: checked by `_entry_budget_free` under the lock)."""
        for leg in legs:
            b = self._budgets[leg.venue]
            if b is not None and not b.try_acquire(Priority.ENTRY, orders=1, requests=0):
                self._log.warning("%s: entry order over its budget", self._vnames[leg.venue])

    def _may_read(self, venue: int) -> bool:
        """A periodic read (balances, positions, funding) fits the venue's budget now.

        Never waits: these reads can come next round, and a reconciliation holds
        the decision lock. They take the entry share, so hedges keep theirs.
        """
        b = self._budgets[venue]
        return b is None or b.try_acquire(Priority.ENTRY, requests=1)

    def _exit_budget_now(self, legs: Sequence[LegCheck]) -> bool:
        """Count one exit order per leg if every leg's venue has one now; else count none.

        A close can wait for the next check; holding the decision lock while a
        budget refills would stall every other venue's trading meanwhile.
        """
        budgets = [b for leg in legs if (b := self._budgets[leg.venue]) is not None]
        if any(b.wait_ms(Priority.EXIT, orders=1, requests=0) != 0 for b in budgets):
            return False
        return all(b.try_acquire(Priority.EXIT, orders=1, requests=0) for b in budgets)

    async def _take_exit_budget(self, venue: int) -> None:
        b = self._budgets[venue]
        if b is not None and not await b.acquire(Priority.EXIT, orders=1, requests=0, timeout_s=1.0):
            # the venue would throttle us: send anyway, a hedge must not wait on our own limiter
            self._log.warning("exit order on %s exceeds its rate budget", self._vnames[venue])

    def _expected_funding_bps(self, buy_venue: int, sell_venue: int, symbol: int) -> float:
        """Funding both legs expect over the holding time, bps of notional (+ = received)."""
        if not self._funding_aware:
            return 0.0
        fb = self.funding.get((buy_venue, symbol))
        fs = self.funding.get((sell_venue, symbol))
        return expected_funding_bps(fb, fs, self._max_hold_ns // _MS)

    async def refresh_funding(self) -> None:
        """Read funding rates, and book the payments the venues report on our positions."""
        async def rate(v: int, s: int) -> None:
            try:
                self.funding[(v, s)] = await self._venues[v].funding_rate(self._snames[s])
            except Exception as e:  # keep the last known rate
                self._log.warning("funding rate of %s on %s: %r", self._snames[s], self._vnames[v], e)

        # all at once: one round trip for the lot, not one per venue and symbol
        await asyncio.gather(*(rate(v, s) for v in range(len(self._venues)) for s in range(len(self._snames))
                               if self._markets[v][s] is not None and self._may_read(v)))
        since = self._funding_since_ms
        async with self._lock:
            for v, venue in enumerate(self._venues):
                if not self._may_read(v):
                    continue
                try:
                    payments = await venue.funding_payments(since)
                except Exception as e:
                    self._log.warning("funding payments on %s: %r", self._vnames[v], e)
                    continue
                for pay in payments:
                    self._book_funding(v, pay)

    def _book_funding(self, v: int, pay: FundingPayment) -> None:
        pid = f"{self._vnames[v]}:{pay.payment_id}"
        if pid in self._funding_seen or pay.symbol not in self._sidx:
            return
        self._funding_seen.add(pid)
        s = self._sidx[pay.symbol]
        self.book.add_funding(v, s, pay.amount)
        # a trade holding a leg there gets it (the one with the most on that venue, if several)
        holders = [t for t in self.trades.values() if s == t.symbol
                   and ((v == t.buy_venue and t.long_qty) or (v == t.sell_venue and t.short_qty))]
        trade = max(holders, key=lambda t: (t.long_qty if v == t.buy_venue else t.short_qty),
                    default=None)
        if trade is not None:
            trade.cash += pay.amount
            trade.funding += pay.amount
        self._journal.record_funding(payment_id=pid, venue=self._vnames[v], symbol=pay.symbol,
                                     amount=pay.amount, ts_ms=pay.ts_ms,
                                     trade_id=trade.trade_id if trade else None)

    # -- reconciliation ---------------------------------------------------------------------------

    async def reconcile_positions(self) -> list[tuple[str, str, Decimal, Decimal]]:
        """Compare the book with every venue's positions; pause mismatched symbols.

        Runs under the decision lock, so no order of ours is in flight and
        a difference is real. Returns (venue, symbol, ours, venue's) mismatches.
        """
        async with self._lock:
            if self._unresolved:
                await self._resolve_unknown()
            found: list[tuple[str, str, Decimal, Decimal]] = []
            bad: dict[int, str] = {}
            for v, venue in enumerate(self._venues):
                reported = None
                if self._may_read(v):
                    try:
                        reported = await venue.positions()
                    except Exception as e:
                        self._log.warning("positions of %s unavailable: %r", self._vnames[v], e)
                else:  # its request budget is spent on trading: compare next round
                    self._log.debug("positions of %s: request budget spent", self._vnames[v])
                if reported is None:
                    # cannot compare: keep whatever was paused on this venue's account
                    for s, why in self.paused_symbols.items():
                        if why.startswith(self._vnames[v] + " "):
                            bad[s] = why
                    continue
                for s, name in enumerate(self._snames):
                    ours = self.book.qty(v, s)
                    rep = reported[name].qty if name in reported else _ZERO
                    if ours != rep:
                        found.append((self._vnames[v], name, ours, rep))
                        bad.setdefault(s, f"{self._vnames[v]} {name}: ours {ours}, venue {rep}")
            for s, why in bad.items():
                if s not in self.paused_symbols:
                    self._log.error("position mismatch, %s paused: %s", self._snames[s], why)
                    self._journal.record_incident(None, "position_mismatch", why)
            for vname, name, ours, rep in found:
                if self._sidx[name] not in self.paused_symbols:
                    self._emit(EventType.POSITION_MISMATCH, {
                        "exchange": vname, "symbol": name, "expected": float(ours),
                        "actual": float(rep), "ts": self._clock()})
            for s in set(self.paused_symbols) - set(bad):
                self._log.warning("positions of %s agree again: trading it resumes", self._snames[s])
                self._journal.record_incident(None, "position_agrees", self._snames[s])
            self.paused_symbols = bad
            return found

    # -- helpers -------------------------------------------------------------------------------

    def _leg(self, v: int, s: int, side: Side, qty: Decimal, price: Decimal, purpose: Purpose,
             quote_ts_ns: int, limit: Decimal | None) -> LegCheck:
        margin = margin_needed(qty * price, self._leverage[v]) if purpose in _ENTRY_PURPOSES else _ZERO
        return LegCheck(v, s, side, qty, price, purpose, quote_ts_ns, margin=margin,
                        limit_price=limit)

    def _deadline(self, after_ns: int) -> int:
        return self._clock() + after_ns

    def _coid(self, trade_id: int, purpose: str, leg: str, attempt: int = 0) -> str:
        base = f"{self.run_id}-{trade_id}-{purpose}-{leg}"
        return f"{base}-{attempt}" if attempt else base

    def _intents(self, trade: Trade, reqs: Sequence[OrderRequest], legs: Sequence[LegCheck],
                 purpose: str, ts_decide: int) -> list[OrderIntent]:
        return [
            OrderIntent(r.client_order_id, trade.trade_id, trade.opp_id, self._vnames[leg.venue],
                        r.symbol, r.side.value, r.qty,
                        r.price if r.price is not None else leg.price, purpose,
                        r.order_type.value, r.reduce_only, ts_decide)
            for r, leg in zip(reqs, legs)
        ]

    def _emit_positions(self, venues: set[int], symbol: int) -> None:
        payload = {
            self._vnames[v]: {self._snames[s]: float(self.book.qty(v, s))
                              for s in range(len(self._snames))}
            for v in sorted(venues)
        }
        self._emit(EventType.POSITION_UPDATED, payload)

    async def _capital_snapshot(self, venues: set[int]) -> None:
        """After fills: the touched venues' balances, read in the background.

        Reading balances is a round trip per venue; done inline it would hold
        the decision lock and delay the next opportunity. Meanwhile the capital
        pools are exact (reservations are counted at once); only the venues'
        own free margin lags by that round trip. Coalesced: one read in flight.
        """
        self._capital_dirty |= venues
        if self._capital_task is None or self._capital_task.done():
            self._capital_task = asyncio.get_running_loop().create_task(self._flush_capital())

    async def _flush_capital(self) -> None:
        while self._capital_dirty:
            venues, self._capital_dirty = self._capital_dirty, set()
            try:
                await self.refresh_capital(venues)
            except Exception:
                self._log.exception("capital snapshot after fills failed")

    async def capital_settled(self) -> None:
        """Wait for the balance reads started after fills (shutdown, tests)."""
        task = self._capital_task
        if task is not None and not task.done():
            await task

    async def refresh_capital(self, venues: set[int] | None = None) -> None:
        """Balances (all venues, or `venues`) -> capital pools, margin headroom, status, event."""
        which = [v for v in sorted(range(len(self._venues)) if venues is None else venues)
                 if self._may_read(v)]
        snap = await self._snapshots.refresh([self._venues[v] for v in which])
        for v in which:
            b = snap.balances.get(self._vnames[v])
            if b is None or b.equity is None:
                continue
            self._margin_free[v] = b.free
            rec = self._status.capital[v]
            rec["free"], rec["locked"], rec["total"] = float(b.free), float(b.locked), float(b.equity)
            realized = sum((self.book.get(v, s).realized_pnl for s in range(len(self._snames))), _ZERO)
            rec["realized_pnl"] = float(realized)
        self._emit(EventType.CAPITAL_SNAPSHOT_UPDATE, self._snapshots.event_payload(snap))

    def capital_due(self) -> bool:
        """The periodic snapshot is due (`capital.snapshot_interval_ms`)."""
        return self._snapshots.due(self._clock())

    def _legging(self, trade: Trade, kind: str, detail: str) -> None:
        """Journal a leg problem and publish it, so the launcher raises a `legging` alert."""
        self._journal.record_incident(trade.trade_id, kind, detail)
        self._emit(EventType.LEGGING, {
            "symbol": self._snames[trade.symbol],
            "exchange": f"{self._vnames[trade.buy_venue]}/{self._vnames[trade.sell_venue]}",
            "action": kind, "detail": detail, "trade_id": trade.trade_id,
            "long_qty": float(trade.long_qty), "short_qty": float(trade.short_qty),
        })

    def _emit(self, kind: EventType, payload: dict[str, Any]) -> None:
        if self._events is None:
            return
        check_event(kind.value, payload)
        self._events.publish(kind, payload)


def _utc_day() -> int:
    """Days since the epoch, UTC: the daily loss limit's day."""
    return int(time.time() // 86400)


def _day_start(day: int) -> float:
    return float(day * 86400)


def _describe(results: Sequence[OrderResult]) -> str:
    """`buy filled 0.01 (...), sell rejected 0 (...)` for incidents and alerts."""
    return ", ".join(f"{r.side.value} {r.status.value} {r.filled_qty} ({r.reason})" for r in results)
