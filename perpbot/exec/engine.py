"""The trade lifecycle: opportunity -> checked legs -> fills -> open trade -> close.

No ZeroMQ and no wall-clock sleeps in here: the process shell feeds it
opportunities and calls `check_open_trades` on a timer, and tests drive the
injected clock. One asyncio lock serialises every decision that sends orders,
so positions, open-trade counts and the risk gate always see settled state
(there is never an order in flight that the gate does not know about).

Opening (`on_opportunity`):
  too old? -> re-read both quotes, recompute the edge net of both taker fees
  -> size -> risk gate (both legs together) -> journal the intents (committed)
  -> send both legs concurrently -> journal results and fills -> positions.
  If the legs filled different quantities, the excess is unwound at once
  with a reduce-only taker order; a leg that cannot be unwound (kill switch,
  stale quote, venue refusal) is logged at ERROR, journaled as an incident and
  retried on every `check_open_trades` until it is flat.

Closing (`check_open_trades`): for each open trade, the PnL of closing now
(sell on the buy venue at its bid, buy back on the sell venue at its ask,
all four taker fees) -> close both legs concurrently when it reaches
`exec.take_profit_bps` of the entry notional or the trade is older than
`exec.max_hold_ms`. Closing and unwinding orders are market IOC (getting out
matters more than the price); opening orders are IOC limits at the quote.

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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

from perpbot.clock import now_ns
from perpbot.config import Config
from perpbot.events import EventType, check_event
from perpbot.exec.edge import exit_pnl, fee_rate, leg_cash, net_edge_bps, pnl_bps
from perpbot.exec.journal import Journal, OrderIntent
from perpbot.exec.positions import PositionBook, reduces
from perpbot.exec.recovery import RecoveredState
from perpbot.exec.risk import Approval, LegCheck, Limits, Purpose, Reason, RiskGate
from perpbot.exec.sizing import choose_size, round_price, to_decimal
from perpbot.exec.venues.base import (
    Market,
    OrderRequest,
    OrderResult,
    OrderStatus,
    Side,
    Venue,
)
from perpbot.messages import Opportunity
from perpbot.metrics import LocalHistogram
from perpbot.shm.board import QuoteBoard
from perpbot.shm.layout import N_COUNTERS, ExecCounter, Hop, TradeRingState
from perpbot.shm.status import StatusBoard

_ZERO = Decimal(0)
_MS = 1_000_000

RING_OPEN = TradeRingState.OPEN
RING_CLOSED = TradeRingState.CLOSED

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
    buy_avg: Decimal = _ZERO  # average price of the opening buy
    entry_notional: Decimal = _ZERO  # hedged_qty x buy_avg, the base of PnL bps
    cash: Decimal = _ZERO  # what all of its fills moved, fees included
    fees: Decimal = _ZERO
    ring_index: int = -1
    attempts: Counter[str] = field(default_factory=Counter)
    last_refusal: Reason = Reason.OK

    @property
    def balanced(self) -> bool:
        return self.long_qty == self.short_qty


@dataclass(frozen=True)
class ExecStatistics:
    """A frozen copy of the engine's counters."""

    opps_received: int
    opps_too_old: int
    orders_checked: int
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

    async def check_open_trades(self) -> int:
        """Close trades that reached take-profit or max hold, retry unwinds; returns trades closed."""
        return await self._check(force=None)

    async def flatten(self) -> int:
        """Close every open trade now, whatever its PnL; returns trades closed."""
        return await self._check(force="flatten")

    async def drain(self) -> None:
        """Take no further decisions and wait until orders in flight have finished."""
        self._closed = True
        async with self._lock:
            pass

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
        c[ExecCounter.ORDERS_CHECKED] = self.gate.checked
        c[ExecCounter.ORDERS_SENT] = self.gate.sent
        c[ExecCounter.RISK_REJECTS] = self.gate.rejected
        return c

    def statistics(self) -> ExecStatistics:
        c = self.counters()
        return ExecStatistics(
            opps_received=c[ExecCounter.OPPS_RECEIVED],
            opps_too_old=c[ExecCounter.OPPS_TOO_OLD],
            orders_checked=c[ExecCounter.ORDERS_CHECKED],
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
                buy_avg=rt.buy_avg, entry_notional=rt.entry_notional, cash=rt.cash, fees=rt.fees,
                ring_index=ring.get(rt.trade_id, -1) if rt.state == "open" else -1,
                attempts=Counter(rt.attempts),
            )
            self.trades[trade.trade_id] = trade
        self._next_trade_id = max(self._next_trade_id, state.next_trade_id)
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
        qb, qs = self._board.read(bv, s), self._board.read(sv, s)
        if qb is None or qs is None or not (qb.ask > 0 and qs.bid > 0):
            return self._skip(opp, Reason.NO_QUOTE, "")
        ask = round_price(to_decimal(qb.ask), bm.tick_size, Side.BUY)
        bid = round_price(to_decimal(qs.bid), sm.tick_size, Side.SELL)
        edge = net_edge_bps(ask, bid, self._fee_bps[bv], self._fee_bps[sv])
        if edge < self._min_edge_bps:
            return self._skip(opp, Reason.EDGE_GONE, f"{edge:.2f} bps net at {ask}/{bid}")
        size = choose_size(
            trade_notional_usd=self._notional, buy_price=ask, sell_price=bid,
            buy_top_size=to_decimal(qb.ask_size), sell_top_size=to_decimal(qs.bid_size),
            buy_market=bm, sell_market=sm,
        )
        if size.reason is not Reason.OK:
            return self._skip(opp, size.reason, size.detail)
        qty = size.qty
        legs = (LegCheck(bv, s, Side.BUY, qty, ask, Purpose.OPEN, qb.ts_recv_ns),
                LegCheck(sv, s, Side.SELL, qty, bid, Purpose.OPEN, qs.ts_recv_ns))
        approval = self.gate.check(legs, open_trades=len(self.trades), now_ns=self._clock(),
                                   position=self.book.qty)
        if not approval.ok:
            return self._skip(opp, approval.reason, approval.verdict.detail)
        ts_decide = self._clock()

        tid = self._next_trade_id
        self._next_trade_id += 1
        buy_id, sell_id = self._coid(tid, "open", "buy"), self._coid(tid, "open", "sell")
        trade = Trade(tid, opp.opp_id, s, bv, sv, edge, ts_decide, buy_id, sell_id)
        sym = self._snames[s]
        reqs = (OrderRequest(buy_id, sym, Side.BUY, qty, ask),
                OrderRequest(sell_id, sym, Side.SELL, qty, bid))
        self._journal.record_open_intent(
            trade_id=tid, opp_id=opp.opp_id, run_id=self.run_id, symbol=sym,
            buy_venue=self._vnames[bv], sell_venue=self._vnames[sv], qty=qty, entry_edge_bps=edge,
            orders=self._intents(trade, reqs, legs, "open", ts_decide),
        )
        self.trades[tid] = trade
        sent = await self._dispatch(approval, reqs, trade)
        if sent is None:
            self._finish(trade, "failed", "kill switch before dispatch")
            return Reason.HALTED
        results, ts_dispatch = sent
        self.hists[Hop.EXEC_TO_DECIDE].add(ts_decide - ts_recv_ns)
        self.hists[Hop.DECIDE_TO_DISPATCH].add(ts_dispatch - ts_decide)
        self.hists[Hop.TICK_TO_ORDER].add(ts_dispatch - opp.ts_recv_ns)
        trade.buy_avg = results[0].avg_price or _ZERO
        if not trade.balanced:
            self._log.warning("trade %d legs filled %s/%s: unwinding the excess", tid,
                              trade.long_qty, trade.short_qty)
            self._legging(trade, "leg_mismatch",
                f"buy {results[0].status.value} {results[0].filled_qty} ({results[0].reason}), "
                f"sell {results[1].status.value} {results[1].filled_qty} ({results[1].reason})")
            await self._unwind(trade)
        self._settle(trade, "open_failed")
        return Reason.OK

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
            legs.append(LegCheck(v, s, side, qty, price, purpose, 0 if q is None else q.ts_recv_ns))
        approval = self.gate.check(legs, open_trades=len(self.trades), now_ns=self._clock(),
                                   position=self.book.qty)
        if not approval.ok:
            self._refused(trade, purpose, approval)
            return False
        trade.last_refusal = Reason.OK
        ts_decide = self._clock()
        n = trade.attempts[purpose.value]
        trade.attempts[purpose.value] += 1
        sym = self._snames[s]
        reqs = tuple(
            OrderRequest(self._coid(trade.trade_id, purpose.value, leg, n), sym, side, qty, None,
                         reduce_only=reduces(self.book.qty(v, s), side, qty))
            for v, side, qty, leg in plan
        )
        self._journal.record_intents(self._intents(trade, reqs, legs, purpose.value, ts_decide))
        self._log.info("trade %d %s (%s): %s", trade.trade_id, purpose.value, why,
                       ", ".join(f"{r.side.value} {r.qty} on {self._vnames[l.venue]}"
                                 for r, l in zip(reqs, legs)))
        return await self._dispatch(approval, reqs, trade) is not None

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

    async def _dispatch(self, approval: Approval, reqs: Sequence[OrderRequest],
                        trade: Trade) -> tuple[list[OrderResult], int] | None:
        """Send an approved decision's orders concurrently; None if the kill switch beat us."""
        legs = self.gate.consume(approval)
        if not legs:
            self._journal.mark_orders([r.client_order_id for r in reqs], "not_sent", "kill switch")
            self._log.warning("trade %d: kill switch thrown before dispatch, nothing sent",
                              trade.trade_id)
            return None
        ts_dispatch = self._clock()
        outs = await asyncio.gather(
            *(self._venues[leg.venue].place_order(r) for leg, r in zip(legs, reqs)),
            return_exceptions=True,
        )
        results: list[OrderResult] = []
        for leg, req, out in zip(legs, reqs, outs):
            if isinstance(out, BaseException):
                # outcome unknown at the venue: recorded as refused, flagged for reconciliation
                self._log.error("order %s on %s raised %r", req.client_order_id,
                                self._vnames[leg.venue], out)
                self._journal.record_incident(trade.trade_id, "venue_error",
                                              f"{req.client_order_id}: {out!r}")
                out = OrderResult(req.client_order_id, self._vnames[leg.venue], req.symbol,
                                  req.side, req.qty, OrderStatus.REJECTED,
                                  ts_done_ns=self._clock(), reason=f"venue error: {out!r}")
            results.append(out)
        self._journal.record_results(results, ts_dispatch)
        for leg, req, res in zip(legs, reqs, results):
            self._apply(trade, leg, req, res, ts_dispatch)
        touched = {leg.venue for leg in legs}
        self._emit_positions(touched, trade.symbol)
        await self._capital_snapshot(touched)
        return results, ts_dispatch

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
            else:
                trade.short_qty -= f.side.sign * f.qty
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
            "fees": float(trade.fees), "close_reason": why, "ts": now,
        })
        self._log.info("trade %d closed (%s): realized %s after fees %s", trade.trade_id, why,
                       trade.cash, trade.fees)

    # -- helpers -------------------------------------------------------------------------------

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
        """Venue balances into the status segment and a CAPITAL_SNAPSHOT_UPDATE event."""
        payload: dict[str, Any] = {}
        for v in sorted(venues):
            balances = await self._venues[v].balances()
            free = sum((b.free for b in balances.values()), _ZERO)
            locked = sum((b.locked for b in balances.values()), _ZERO)
            total = sum((b.total for b in balances.values()), _ZERO)
            rec = self._status.capital[v]
            rec["free"], rec["locked"], rec["total"] = float(free), float(locked), float(total)
            realized = sum((self.book.get(v, s).realized_pnl for s in range(len(self._snames))), _ZERO)
            rec["realized_pnl"] = float(realized)
            payload[self._vnames[v]] = {"free": float(free), "locked": float(locked), "total": float(total)}
        self._emit(EventType.CAPITAL_SNAPSHOT_UPDATE, payload)

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
