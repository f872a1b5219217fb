"""The seed's design, measured: one uvloop process and an in-process publish/subscribe event bus.

    result = run(cfg, urls, duration_s=10)                        # in this process
    result = run_in_subprocess("config.yaml", urls, 10, cpu=1)    # in a fresh, pinned process
    python -m perpbot_bench.baseline --config FILE --urls-json JSON --duration S --out FILE [--cpu N]

The design a user would otherwise build, built competently, with PerpBot's
own parsers, edge function, filters, sizing, risk gate and paper venue:

- one picows websocket client per feed connection (the venue's `FeedSpec`:
  the same subscribe frames, ping rule and parser as `perpbot.feeds`);
- an `EventBus`: `publish` puts the event on one `asyncio.Queue` per
  subscriber, and each component is one task draining its queue;
- the feed callback parses the frame and publishes QUOTE_UPDATED;
- the scanner task keeps the latest quote per (venue, symbol) and checks the
  updated symbols across venues exactly as PerpBot's scanner does (fee-aware
  edge, stale / thin / repeat filters, thresholds from the config), then
  publishes ARBITRAGE_OPPORTUNITY_FOUND;
- the exec task re-reads both quotes, recomputes the edge, sizes with
  `choose_size`, checks both legs with the `RiskGate` over its own positions
  and hands both legs to the `PaperVenue`s at once; open trades are closed
  like PerpBot's (max hold or take profit) by a periodic check, unmeasured.

The paper venue prices its fills from a `QuoteBoard`: the process creates a
private one (unlinked at the end) and the feed callback writes each quote
into it after publishing. That write (~1 us) is the simulated venue's market
data, not the design's work: it comes after `ts_write`, so it is not in
feed_recv_to_write, but on one thread the scanner task runs only after the
callback returns, so it does sit inside board_write_to_detect (the fused
path pays the same write before its check).

Stamps, the same points as PerpBot's (DESIGN.md "latency accounting"):

    ts_recv      the frame callback is entered (the frame was read)
    ts_write     the quote is published on the bus
    ts_detect    the scanner found the opportunity, just before publishing it
    ts_exec      the exec task took the opportunity off its queue
    ts_decide    the risk gate approved both legs
    ts_dispatch  just before both legs are handed to the paper venues

    feed_recv_to_write     ts_write - ts_recv (one frame in 8, as PerpBot's feed samples)
    board_write_to_detect  ts_detect - ts_write
    tick_to_signal         ts_detect - ts_recv
    detect_to_exec         ts_exec - ts_detect: the bus hop
    exec_to_decide         ts_decide - ts_exec
    decide_to_dispatch     ts_dispatch - ts_decide
    tick_to_order          ts_dispatch - ts_recv

The pieces both in-process designs share (the feed connection, the scanner's
check, the exec core, the measured run and the command line) live here;
`perpbot_bench.fused` runs the same work inline in the frame callback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import resource
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, NamedTuple

import orjson
import picows

from perpbot.clock import Clock, now_ns
from perpbot.config import Config, load_config
from perpbot.events import EventType
from perpbot.exec.capital import margin_needed
from perpbot.exec.edge import exit_pnl, expected_funding_bps, fee_rate, leg_cash, net_edge_bps, pnl_bps
from perpbot.exec.positions import PositionBook, reduces
from perpbot.exec.risk import Approval, LegCheck, Limits, Purpose, Reason, RiskGate
from perpbot.exec.sizing import choose_size, round_price, to_decimal
from perpbot.exec.venues.base import FundingRate, Market, OrderRequest, OrderResult, Side
from perpbot.exec.venues.paper import QUOTE_ASSET, PaperVenue
from perpbot.feeds.process import HIST_SAMPLE_MASK, backoff_delays
from perpbot.feeds.registry import get_feed
from perpbot.feeds.spec import BBO, FeedSpec, ParseError, Parser, ParserContext, ResyncRequired
from perpbot.scanner.edge import Edge, TopOfBook, fee_multipliers, symbol_edge
from perpbot.shm import QuoteBoard
from perpbot.shm.board import BoardWriter
from perpbot.shm.layout import FeedState, TradingState, segment_names
from perpbot_bench.stats import HOP_NAMES, Hist

log = logging.getLogger("perpbot_bench")

_MS = 1_000_000
_ZERO = Decimal(0)
#: how long the feeds may take to connect before a run gives up
CONNECT_TIMEOUT_S = 15.0
#: after every connection is up: snapshots arrive and caches fill before measuring starts
WARMUP_S = 0.3
#: how long stopping waits for the connections to close
STOP_TIMEOUT_S = 5.0
#: a design process gets this long beyond its duration before it is killed
SUBPROCESS_GRACE_S = 60.0


# -- what the path carries -----------------------------------------------------------------------


class QuoteUpdated(NamedTuple):
    """QUOTE_UPDATED: the seed's fields, then the board indices and the stamps."""

    symbol: str
    bid: float
    ask: float
    bid_size: float
    ask_size: float
    exchange: str
    ts: int  # the venue's own time, epoch ns
    venue_idx: int
    symbol_idx: int
    ts_recv_ns: int
    ts_write_ns: int


class OpportunityFound(NamedTuple):
    """ARBITRAGE_OPPORTUNITY_FOUND: the seed's fields, then what exec needs and the stamps."""

    symbol: str
    buy_exchange: str
    sell_exchange: str
    spread_pct: float
    symbol_idx: int
    buy_venue: int
    sell_venue: int
    buy_price: float
    sell_price: float
    buy_size: float
    sell_size: float
    edge_bps: float
    ts_recv_ns: int
    ts_write_ns: int
    ts_detect_ns: int


class EventBus:
    """In-process publish/subscribe: one unbounded `asyncio.Queue` per subscriber.

    Subscribe every component before the first publish. `publish` never
    blocks and never drops: a slow subscriber's queue grows.
    """

    def __init__(self) -> None:
        self._subs: dict[EventType, list[asyncio.Queue[Any]]] = {}

    def subscribe(self, kind: EventType) -> asyncio.Queue[Any]:
        q: asyncio.Queue[Any] = asyncio.Queue()
        self._subs.setdefault(kind, []).append(q)
        return q

    def publish(self, kind: EventType, event: object) -> None:
        for q in self._subs.get(kind, ()):
            q.put_nowait(event)

    def publisher(self, kind: EventType) -> Callable[[object], None]:
        """`publish` bound to one event type: the topic lookup done once, not per event."""
        puts = [q.put_nowait for q in self._subs.get(kind, ())]
        if len(puts) == 1:
            return puts[0]

        def publish(event: object) -> None:
            for put in puts:
                put(event)

        return publish


# -- counting ---------------------------------------------------------------------------------


class Recorder:
    """The run's hop histograms and counters (`reset` when measuring starts)."""

    def __init__(self) -> None:
        self.hops: dict[str, Hist] = {name: Hist() for name in HOP_NAMES}
        self.feed_recv_to_write = self.hops["feed_recv_to_write"]
        self.board_write_to_detect = self.hops["board_write_to_detect"]
        self.tick_to_signal = self.hops["tick_to_signal"]
        self.detect_to_exec = self.hops["detect_to_exec"]
        self.exec_to_decide = self.hops["exec_to_decide"]
        self.decide_to_dispatch = self.hops["decide_to_dispatch"]
        self.tick_to_order = self.hops["tick_to_order"]
        self.opportunities = 0
        self.orders = 0
        self.trades_opened = 0
        self.trades_closed = 0
        self.skips: Counter[str] = Counter()

    def reset(self) -> None:
        """Empty everything in place (the components hold the histograms' bound `add`)."""
        for h in self.hops.values():
            h.counts = [0] * len(h.counts)
            h.max_ns = 0
        self.opportunities = self.orders = self.trades_opened = self.trades_closed = 0
        self.skips.clear()

    def summaries(self) -> dict[str, Any]:
        """The hops that saw samples, in path order (stats.py format)."""
        return {name: h.summary() for name, h in self.hops.items() if any(h.counts)}


# -- one websocket ----------------------------------------------------------------------------

_TEXT = picows.WSMsgType.TEXT
_BINARY = picows.WSMsgType.BINARY
_CLOSE = picows.WSMsgType.CLOSE


class VenueLink:
    """One venue's connections and the feed state derived from them (CONNECTED: all up)."""

    def __init__(self, session: Session, venue_idx: int) -> None:
        self.session = session
        self.venue_idx = venue_idx
        self.connections: list[FeedConnection] = []

    def refresh(self) -> None:
        self.session.connected[self.venue_idx] = all(c.transport is not None for c in self.connections)


class FeedConnection(picows.WSListener):
    """One feed websocket: PerpBot's subscribe frames, ping rule and parser for the venue.

    `on_ws_frame` stamps the receive time, drops pongs, parses and hands the
    frame's quotes to `on_quotes`, the design's path. Parse errors are counted,
    never fatal; a parser that lost its book (`ResyncRequired`) gets a fresh
    connection.
    """

    def __init__(self, session: Session, link: VenueLink, url: str, symbols: list[str]) -> None:
        super().__init__()
        venue = session.cfg.venue_names[link.venue_idx]
        vcfg = session.cfg.venues[venue]
        self.session = session
        self.link = link
        self.venue = venue
        self.venue_idx = link.venue_idx
        self.url = url
        self.symbols = symbols
        self.spec: FeedSpec = session.specs[link.venue_idx]
        self.parser_context = ParserContext({vcfg.symbols[bs]: size for bs, size in vcfg.contract_sizes.items()})
        self.parse: Parser = self.spec.make_parser(self.parser_context)
        self.transport: picows.WSTransport | None = None
        self.frames = 0
        self.parse_errors = 0
        self.unknown_symbols = 0
        ping = self.spec.ping
        self._is_pong = ping.is_pong if ping is not None else None
        symbol_index = {s: i for i, s in enumerate(session.cfg.symbol_names)}
        #: venue symbol -> (board index, board name)
        self.sym_map = {vs: (symbol_index[bs], bs) for bs, vs in vcfg.symbols.items()}
        self._sym_get = self.sym_map.get
        self._write = session.writers[link.venue_idx].write

    def on_quotes(self, parsed: list[BBO], t_recv: int) -> None:
        """The design's path for one frame's quotes."""
        raise NotImplementedError

    def on_ws_connected(self, transport: picows.WSTransport) -> None:
        self.parse = self.spec.make_parser(self.parser_context)  # book state never survives a reconnect
        self.transport = transport
        for frame in self.spec.subscribe(self.symbols):
            transport.send(_TEXT, frame)
        self.link.refresh()

    def on_ws_disconnected(self, transport: picows.WSTransport) -> None:
        self.transport = None
        self.link.refresh()

    def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
        t_recv = now_ns()
        mt = frame.msg_type
        if mt is _TEXT:
            binary = False
        elif mt is _BINARY:
            binary = True
        else:
            if mt is _CLOSE:
                transport.disconnect()
            return
        payload = frame.get_payload_as_bytes()
        self.frames += 1
        if self._is_pong is not None and not binary and self._is_pong(payload):
            return
        try:
            parsed = self.parse(payload, True) if binary else self.parse(payload)
        except ResyncRequired:
            self.parse_errors += 1
            transport.disconnect()
            return
        except ParseError:
            self.parse_errors += 1
            return
        except Exception:
            self.parse_errors += 1
            log.exception("%s: parser failed on %r", self.venue, payload[:120])
            return
        if parsed:
            self.on_quotes(parsed, t_recv)

    async def run(self, stop: asyncio.Event) -> None:
        """Keep the connection up until `stop`, with PerpBot's jittered backoff."""
        fcfg = self.session.cfg.feed
        rng = random.Random()
        delays = backoff_delays(fcfg.reconnect_initial_ms, fcfg.reconnect_max_ms, rng)
        while not stop.is_set():
            try:
                transport, _ = await picows.ws_connect(
                    lambda: self, self.url, extra_headers=dict(self.spec.extra_headers) or None,
                    websocket_handshake_timeout=5,
                )
            except (TimeoutError, OSError, picows.WSError) as e:
                log.warning("%s: connect to %s failed (%s)", self.venue, self.url, e)
                await _wait_or_stop(stop, next(delays))
                continue
            delays = backoff_delays(fcfg.reconnect_initial_ms, fcfg.reconnect_max_ms, rng)
            pinger = asyncio.create_task(self._ping(transport)) if self.spec.ping is not None else None
            stop_wait = asyncio.create_task(stop.wait())
            closed = asyncio.create_task(transport.wait_disconnected())
            try:
                await asyncio.wait({stop_wait, closed}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop_wait.cancel()
                if pinger is not None:
                    pinger.cancel()
                if not closed.done():
                    transport.send_close()
                    transport.disconnect()
                    await closed
            if stop.is_set():
                return
            log.warning("%s: disconnected from %s", self.venue, self.url)
            await _wait_or_stop(stop, next(delays))

    async def _ping(self, transport: picows.WSTransport) -> None:
        rule = self.spec.ping
        assert rule is not None
        while not transport.is_disconnected:
            await asyncio.sleep(rule.interval_s)
            if not transport.is_disconnected:
                transport.send(_TEXT, rule.payload())


async def _wait_or_stop(stop: asyncio.Event, delay_s: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), delay_s)
    except TimeoutError:
        pass


# -- the scanner's check ----------------------------------------------------------------------


class EdgeCheck:
    """PerpBot's scanner check for one symbol (`perpbot.scanner.process.Scanner._evaluate`).

    Over `quotes[symbol][venue]`: skip venues whose feed is not connected or
    whose quote is older than `scanner.stale_after_ms`; a side is tradeable
    when its top of book holds `scanner.min_notional_usd`; the best pair by
    `perpbot.scanner.edge.best_edge` net of both taker fees must clear
    `scanner.min_edge_bps`, and the same (symbol, buy, sell) is reported at
    most once per `scanner.repeat_interval_ms`.
    """

    def __init__(self, cfg: Config, quotes: list[list[TopOfBook | None]], connected: list[bool]) -> None:
        sc = cfg.scanner
        self.quotes = quotes
        self.connected = connected
        self.n_venues = len(cfg.venue_names)
        self.buy_mult, self.sell_mult = fee_multipliers([v.taker_fee_bps for v in cfg.venues.values()])
        self.stale_ns = sc.stale_after_ms * _MS
        self.min_edge_bps = sc.min_edge_bps
        self.min_notional = sc.min_notional_usd
        self.repeat_ns = sc.repeat_interval_ms * _MS
        self.last_sent: dict[tuple[int, int, int], int] = {}
        self.stale_skips = 0
        self.thin_skips = 0
        self.repeats_suppressed = 0

    def evaluate(self, s: int, t: int) -> Edge | None:
        """The symbol's opportunity at time `t`, or None (a reported one counts for the repeat filter)."""
        e, stale, thin = symbol_edge(self.quotes[s], self.connected, t, stale_ns=self.stale_ns,
                                     min_notional=self.min_notional, buy_mult=self.buy_mult,
                                     sell_mult=self.sell_mult)
        self.stale_skips += stale
        self.thin_skips += thin
        if e is None or e.edge_bps < self.min_edge_bps:
            return None
        key = (s, e.buy_venue, e.sell_venue)
        last = self.last_sent.get(key)
        if last is not None and t - last < self.repeat_ns:
            self.repeats_suppressed += 1
            return None
        self.last_sent[key] = t
        return e


# -- the exec core ----------------------------------------------------------------------------


class _GateStatus:
    """What the risk gate reads of the status segment, for a process that has none."""

    def __init__(self, connected: list[bool]) -> None:
        self._connected = connected

    def halted(self) -> bool:
        return False

    def trading_state(self) -> TradingState:
        return TradingState.RUNNING

    def feed_state(self, venue: int) -> FeedState:
        return FeedState.CONNECTED if self._connected[venue] else FeedState.DOWN


@dataclass(slots=True)
class Trade:
    """An open arbitrage: long on the buy venue, short on the sell venue."""

    trade_id: int
    symbol: int
    buy_venue: int
    sell_venue: int
    open_ns: int
    long_qty: Decimal = _ZERO
    short_qty: Decimal = _ZERO
    cash: Decimal = _ZERO  # what its fills moved, fees included
    buy_cost: Decimal = _ZERO
    buy_filled: Decimal = _ZERO
    entry_notional: Decimal = _ZERO
    exits: int = 0
    busy: bool = False  # an exit is in flight

    @property
    def balanced(self) -> bool:
        return self.long_qty == self.short_qty


#: what the two legs of an opening came back as (an exception: the venue failed)
Results = tuple[OrderResult | BaseException, OrderResult | BaseException]


class Decision(NamedTuple):
    """Both legs of an opening, approved by the risk gate."""

    trade_id: int
    symbol: int
    buy_venue: int
    sell_venue: int
    qty: Decimal
    buy_price: Decimal
    sell_price: Decimal
    approval: Approval
    ts_recv_ns: int
    ts_decide_ns: int


class ExecCore:
    """PerpBot's taker opening (`Engine._open`) and closing, over the process's own state.

    `decide` (synchronous): too old? -> re-read both quotes, round to the
    tick, recompute the edge net of both taker fees plus expected funding ->
    `choose_size` -> `RiskGate.check` on both legs (this object is its
    `RiskView`; the config's limits) -> `ts_decide`. `dispatch`
    (synchronous): consume the approval, stamp `ts_dispatch`, hand both legs
    to their paper venues at once (`asyncio.gather`, as `Engine._send` does);
    the caller awaits the returned future, or attaches `finish` to it.

    Positions of a decision whose orders are in flight count for the gate,
    as if filled, so a decision taken meanwhile never sees less exposure than
    there will be. Trades close on `exec.max_hold_ms` or
    `exec.take_profit_bps` (`check_open_trades`, run periodically); a trade
    whose legs filled differently has the excess unwound at once. Exits are
    not measured.
    """

    def __init__(self, session: Session) -> None:
        cfg = session.cfg
        self.session = session
        self.cfg = cfg
        self.quotes = session.quotes
        self.venues = session.venues
        self.rec = session.rec
        self._clock = session.clock
        self.n_venues = len(cfg.venue_names)
        self.n_symbols = len(cfg.symbol_names)
        self._snames = cfg.symbol_names
        self._vnames = cfg.venue_names
        self._markets: list[list[Market | None]] = [
            [v.markets().get(s) for s in self._snames] for v in self.venues]
        self._fee_bps = [cfg.venues[n].taker_fee_bps for n in self._vnames]
        self._fee = [fee_rate(b) for b in self._fee_bps]
        self._leverage = [Decimal(repr(cfg.capital.leverage_per_venue.get(n, cfg.capital.leverage)))
                          for n in self._vnames]
        self._notional = Decimal(repr(cfg.exec.trade_notional_usd))
        self._max_age_ns = cfg.exec.max_opportunity_age_ms * _MS
        self._max_hold_ns = cfg.exec.max_hold_ms * _MS
        self._take_profit_bps = cfg.exec.take_profit_bps
        self._min_edge_bps = cfg.scanner.min_edge_bps
        self._funding_aware = cfg.exec.funding_aware
        self.gate = RiskGate(Limits.from_config(cfg), _GateStatus(session.connected))
        self.book = PositionBook(self.n_venues, self.n_symbols)
        self.trades: dict[int, Trade] = {}
        self.funding: dict[tuple[int, int], FundingRate] = {}
        self._margin_free: list[Decimal | None] = [None] * self.n_venues
        self._pending: dict[tuple[int, int], Decimal] = {}
        self._inflight = 0
        self._next_trade_id = 1
        self._tag = f"b{os.getpid()}"
        self._margin_dirty: set[int] = set()
        self._margin_task: asyncio.Task[None] | None = None
        #: events after the orders came back (the bus, in the baseline); None: not published
        self.publish: Callable[[EventType, dict[str, Any]], None] | None = None

    async def start(self) -> None:
        """Before the first decision: every venue's free margin and funding rates."""
        await self._refresh_margin(set(range(self.n_venues)))
        for v, venue in enumerate(self.venues):
            for s, name in enumerate(self._snames):
                if self._markets[v][s] is not None:
                    self.funding[(v, s)] = await venue.funding_rate(name)

    # -- what the risk gate reads (`perpbot.exec.risk.RiskView`) ------------------------------

    def qty(self, venue: int, symbol: int) -> Decimal:
        return self.book.qty(venue, symbol) + self._pending.get((venue, symbol), _ZERO)

    def held(self) -> Iterator[tuple[int, int, Decimal]]:
        if not self._pending:
            return ((v, s, p.qty) for (v, s), p in self.book.held())
        keys = {k for k, _ in self.book.held()} | set(self._pending)
        return ((v, s, q) for v, s in keys if (q := self.qty(v, s)))

    def mark(self, venue: int, symbol: int) -> Decimal | None:
        q = self.quotes[symbol][venue]
        if q is None or not (q.bid > 0 and q.ask > 0):
            return None
        return (to_decimal(q.bid) + to_decimal(q.ask)) / 2

    def open_orders(self, venue: int) -> int:
        return 0  # every order is IOC: nothing rests

    def margin_free(self, venue: int) -> Decimal | None:
        return self._margin_free[venue]

    def market(self, venue: int, symbol: int) -> Market | None:
        return self._markets[venue][symbol]

    def symbol_paused(self, symbol: int) -> bool:
        return False

    # -- opening ------------------------------------------------------------------------------

    def _skip(self, reason: Reason) -> None:
        self.rec.skips[reason.name] += 1

    def decide(self, s: int, bv: int, sv: int, ts_recv: int, ts_detect: int, ts_exec: int) -> Decision | None:
        """Both legs checked and approved, or None (the reason is counted in `rec.skips`)."""
        clock = self._clock
        if clock() - ts_detect > self._max_age_ns:
            self._skip(Reason.TOO_OLD)
            return None
        bm, sm = self._markets[bv][s], self._markets[sv][s]
        if bm is None or sm is None:
            self._skip(Reason.NO_MARKET)
            return None
        row = self.quotes[s]
        qb, qs = row[bv], row[sv]
        if qb is None or qs is None or not (qb.ask > 0 and qs.bid > 0):
            self._skip(Reason.NO_QUOTE)
            return None
        ask = round_price(to_decimal(qb.ask), bm.tick_size, Side.BUY)
        bid = round_price(to_decimal(qs.bid), sm.tick_size, Side.SELL)
        edge = net_edge_bps(ask, bid, self._fee_bps[bv], self._fee_bps[sv])
        if self._funding_aware:
            edge += expected_funding_bps(self.funding.get((bv, s)), self.funding.get((sv, s)),
                                         self._max_hold_ns // _MS)
        if edge < self._min_edge_bps:
            self._skip(Reason.EDGE_GONE)
            return None
        size = choose_size(
            trade_notional_usd=self._notional, buy_price=ask, sell_price=bid,
            buy_top_size=to_decimal(qb.ask_size), sell_top_size=to_decimal(qs.bid_size),
            buy_market=bm, sell_market=sm,
        )
        if size.reason is not Reason.OK:
            self._skip(size.reason)
            return None
        qty = size.qty
        legs = (
            LegCheck(bv, s, Side.BUY, qty, ask, Purpose.OPEN, qb.ts_recv_ns,
                     margin=margin_needed(qty * ask, self._leverage[bv]), limit_price=ask),
            LegCheck(sv, s, Side.SELL, qty, bid, Purpose.OPEN, qs.ts_recv_ns,
                     margin=margin_needed(qty * bid, self._leverage[sv]), limit_price=bid),
        )
        approval = self.gate.check(legs, open_trades=len(self.trades) + self._inflight, now_ns=clock(), view=self)
        if not approval.ok:
            self._skip(approval.reason)
            return None
        tid = self._next_trade_id
        self._next_trade_id = tid + 1
        self._inflight += 1
        pending = self._pending
        pending[(bv, s)] = pending.get((bv, s), _ZERO) + qty
        pending[(sv, s)] = pending.get((sv, s), _ZERO) - qty
        ts_decide = clock()
        self.rec.exec_to_decide.add(ts_decide - ts_exec)
        return Decision(tid, s, bv, sv, qty, ask, bid, approval, ts_recv, ts_decide)

    def dispatch(self, d: Decision) -> asyncio.Future[Results]:
        """Hand both legs to their venues now; the future resolves to their results."""
        sym = self._snames[d.symbol]
        tag = f"{self._tag}-{d.trade_id}-open"
        buy = OrderRequest(f"{tag}-buy", sym, Side.BUY, d.qty, d.buy_price)
        sell = OrderRequest(f"{tag}-sell", sym, Side.SELL, d.qty, d.sell_price)
        self.gate.consume(d.approval)  # no kill switch here: always both legs
        ts_dispatch = self._clock()
        fut = asyncio.gather(self.venues[d.buy_venue].place_order(buy),
                             self.venues[d.sell_venue].place_order(sell), return_exceptions=True)
        rec = self.rec
        rec.decide_to_dispatch.add(ts_dispatch - d.ts_decide_ns)
        rec.tick_to_order.add(ts_dispatch - d.ts_recv_ns)
        rec.orders += 2
        return fut

    def finish(self, d: Decision, results: Sequence[OrderResult | BaseException]) -> None:
        """Book an opening's fills: an open trade, a failed one, or one whose excess is unwound."""
        self._inflight -= 1
        pending = self._pending
        for key, delta in (((d.buy_venue, d.symbol), d.qty), ((d.sell_venue, d.symbol), -d.qty)):
            left = pending.get(key, _ZERO) - delta
            if left:
                pending[key] = left
            else:
                pending.pop(key, None)
        trade = Trade(d.trade_id, d.symbol, d.buy_venue, d.sell_venue, self._clock())
        self._book(trade, (d.buy_venue, d.sell_venue), results, Purpose.OPEN)
        if trade.long_qty == 0 and trade.short_qty == 0:
            self.rec.skips["UNFILLED"] += 1  # the quotes moved before the orders arrived
            return
        trade.entry_notional = min(trade.long_qty, trade.short_qty) * (
            trade.buy_cost / trade.buy_filled if trade.buy_filled else _ZERO)
        self.trades[trade.trade_id] = trade
        self.rec.trades_opened += 1
        if not trade.balanced:
            self.session.spawn(self._unwind(trade))

    def finish_callback(self, d: Decision) -> Callable[[asyncio.Future[Results]], None]:
        """`finish` as a done callback of `dispatch`'s future."""

        def done(fut: asyncio.Future[Results]) -> None:
            if fut.cancelled():
                return
            try:
                self.finish(d, fut.result())
            except Exception as e:
                self.session.fail(e)

        return done

    def _book(self, trade: Trade, venues: Sequence[int], results: Sequence[OrderResult | BaseException],
              purpose: Purpose) -> None:
        s = trade.symbol
        touched = set()
        for v, res in zip(venues, results):
            if isinstance(res, BaseException):
                log.warning("order on %s failed: %r", self._vnames[v], res)
                continue
            for f in res.fills:
                self.book.apply(v, s, f.side, f.qty, f.price, f.fee)
                trade.cash += leg_cash(f.side.sign, f.qty, f.price, f.fee)
                if v == trade.buy_venue:
                    trade.long_qty += f.side.sign * f.qty
                    if purpose is Purpose.OPEN and f.side is Side.BUY:
                        trade.buy_cost += f.qty * f.price
                        trade.buy_filled += f.qty
                else:
                    trade.short_qty -= f.side.sign * f.qty
                touched.add(v)
            if self.publish is not None:
                self._events(res)
        if touched:
            self._margin_changed(touched)

    def _events(self, res: OrderResult) -> None:
        assert self.publish is not None
        self.publish(EventType.ORDER_PLACED, {
            "order_id": res.client_order_id, "symbol": res.symbol, "exchange": res.venue,
            "side": res.side.value, "size": float(res.qty), "price": float(res.avg_price or 0)})
        for f in res.fills:
            self.publish(EventType.ORDER_FILLED, {
                "order_id": f.client_order_id, "fill_price": float(f.price), "fill_size": float(f.qty),
                "fee": float(f.fee), "is_partial": f.qty != res.qty})

    # -- closing (not measured) ---------------------------------------------------------------

    async def check_open_trades(self) -> None:
        """Close what reached max hold or take profit (PerpBot's `_close_reason`)."""
        now = self._clock()
        for trade in list(self.trades.values()):
            if trade.busy:
                continue
            if not trade.balanced:
                await self._unwind(trade)
                continue
            why = self._close_reason(trade, now)
            if why is not None:
                await self._exit(trade, Purpose.CLOSE, [
                    (trade.buy_venue, Side.SELL, trade.long_qty), (trade.sell_venue, Side.BUY, trade.short_qty)])

    def _close_reason(self, trade: Trade, now: int) -> str | None:
        if now - trade.open_ns >= self._max_hold_ns:
            return "max_hold"
        s = trade.symbol
        qb, qs = self.quotes[s][trade.buy_venue], self.quotes[s][trade.sell_venue]
        bm, sm = self._markets[trade.buy_venue][s], self._markets[trade.sell_venue][s]
        if qb is None or qs is None or bm is None or sm is None:
            return None
        pnl = exit_pnl(
            cash=trade.cash, long_qty=trade.long_qty, short_qty=trade.short_qty,
            exit_bid_on_buy_venue=round_price(to_decimal(qb.bid), bm.tick_size, Side.SELL),
            exit_ask_on_sell_venue=round_price(to_decimal(qs.ask), sm.tick_size, Side.BUY),
            buy_venue_fee=self._fee[trade.buy_venue], sell_venue_fee=self._fee[trade.sell_venue],
        )
        return "take_profit" if pnl_bps(pnl, trade.entry_notional) >= self._take_profit_bps else None

    async def _unwind(self, trade: Trade) -> None:
        excess = trade.long_qty - trade.short_qty
        if excess > 0:
            await self._exit(trade, Purpose.UNWIND, [(trade.buy_venue, Side.SELL, excess)])
        elif excess < 0:
            await self._exit(trade, Purpose.UNWIND, [(trade.sell_venue, Side.BUY, -excess)])

    async def _exit(self, trade: Trade, purpose: Purpose, plan: list[tuple[int, Side, Decimal]]) -> None:
        """Market IOC orders through the gate; a refusal is retried on the next check."""
        plan = [p for p in plan if p[2] > 0]
        if not plan or trade.busy:
            return
        s = trade.symbol
        legs = []
        for v, side, qty in plan:
            q = self.quotes[s][v]
            price = _ZERO if q is None else to_decimal(q.ask if side is Side.BUY else q.bid)
            legs.append(LegCheck(v, s, side, qty, price, purpose, 0 if q is None else q.ts_recv_ns))
        approval = self.gate.check(legs, open_trades=len(self.trades), now_ns=self._clock(), view=self)
        if not approval.ok:
            return
        self.gate.consume(approval)
        trade.busy = True
        trade.exits += 1
        tag = f"{self._tag}-{trade.trade_id}-{purpose.value}-{trade.exits}"
        reqs = [OrderRequest(f"{tag}-{i}", self._snames[s], side, qty, None,
                             reduce_only=reduces(self.book.qty(v, s), side, qty))
                for i, (v, side, qty) in enumerate(plan)]
        try:
            results = await asyncio.gather(*(self.venues[v].place_order(r) for (v, _, _), r in zip(plan, reqs)),
                                           return_exceptions=True)
            self._book(trade, [v for v, _, _ in plan], results, purpose)
        finally:
            trade.busy = False
        if trade.long_qty == 0 and trade.short_qty == 0:
            del self.trades[trade.trade_id]
            self.rec.trades_closed += 1
            if self.publish is not None:
                self.publish(EventType.TRADE_COMPLETED, {
                    "buy_order": f"{self._tag}-{trade.trade_id}-open-buy",
                    "sell_order": f"{self._tag}-{trade.trade_id}-open-sell", "realized_pnl": float(trade.cash)})

    # -- free margin (the gate's MARGIN check) --------------------------------------------------

    def _margin_changed(self, venues: set[int]) -> None:
        """Re-read the touched venues' balances in the background, one read in flight (as Engine does)."""
        self._margin_dirty |= venues
        if self._margin_task is None or self._margin_task.done():
            self._margin_task = self.session.spawn(self._flush_margin())

    async def _flush_margin(self) -> None:
        while self._margin_dirty:
            venues, self._margin_dirty = self._margin_dirty, set()
            await self._refresh_margin(venues)

    async def _refresh_margin(self, venues: set[int]) -> None:
        for v in sorted(venues):
            b = (await self.venues[v].balances()).get(QUOTE_ASSET)
            if b is not None:
                self._margin_free[v] = b.free


# -- one measured run -------------------------------------------------------------------------

FeedFactory = Callable[["Session", VenueLink, str, list[str]], FeedConnection]


class Session:
    """One measured run in this process: the private board, paper venues, quotes and exec core.

    `quotes[symbol][venue]` is the latest quote the design's scanner saw
    (None before the first); `connected[venue]` is the venue's feed state.
    """

    def __init__(self, cfg: Config, design: str, clock: Clock = now_ns) -> None:
        self.cfg = cfg
        self.design = design
        self.clock = clock
        self.rec = Recorder()
        n_v, n_s = len(cfg.venue_names), len(cfg.symbol_names)
        self.quotes: list[list[TopOfBook | None]] = [[None] * n_v for _ in range(n_s)]
        self.connected = [False] * n_v
        self.specs = [get_feed(cfg.venues[v].feed) for v in cfg.venue_names]
        self.board: QuoteBoard | None = None
        self.writers: list[BoardWriter] = []
        self.venues: list[PaperVenue] = []
        self.links: list[VenueLink] = []
        self.stop = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.failure: BaseException | None = None
        self._core: ExecCore | None = None

    @property
    def core(self) -> ExecCore:
        assert self._core is not None, "session not opened"
        return self._core

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """A task the session cancels at the end; its failure ends the run."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self.fail(exc)

    def fail(self, exc: BaseException) -> None:
        """A component failed: log it and end the run (it then has no result)."""
        log.error("%s: a component failed", self.design, exc_info=exc)
        if self.failure is None:
            self.failure = exc
        self.stop.set()

    async def open(self) -> None:
        """The private board (the paper venues' price source), the venues, the exec core."""
        cfg = self.cfg
        name = segment_names(f"bench{os.getpid()}{uuid.uuid4().hex[:6]}")[0]
        self.board = QuoteBoard.create(name, cfg.venue_names, cfg.symbol_names)
        self.writers = [self.board.writer(v) for v in range(len(cfg.venue_names))]
        for i, v in enumerate(cfg.venue_names):
            venue = PaperVenue(v, i, cfg, self.board)
            self.venues.append(venue)
            await venue.connect()
        self._core = ExecCore(self)
        await self._core.start()
        self.spawn(self._check_loop())

    async def _check_loop(self) -> None:
        period = self.cfg.exec.check_interval_ms / 1000
        core = self.core
        while True:
            await asyncio.sleep(period)
            await core.check_open_trades()

    async def close(self) -> None:
        """Cancel every task, close the venues, release and unlink the board. Safe after a failed open."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=STOP_TIMEOUT_S)
        for venue in self.venues:
            try:
                await venue.close()
            except Exception:
                log.exception("closing paper venue %s", venue.name)
        for w in self.writers:
            w.release()
        self.writers = []
        board, self.board = self.board, None
        if board is not None:
            try:
                board.close()
            finally:
                board.segment.unlink()

    async def measure(self, urls: Mapping[str, str], duration_s: float, factory: FeedFactory) -> dict[str, Any]:
        """Connect every feed, warm up, measure for `duration_s`, stop the feeds; the design's result."""
        cfg = self.cfg
        conns: list[FeedConnection] = []
        for vi, venue in enumerate(cfg.venue_names):
            link = VenueLink(self, vi)
            self.links.append(link)
            vcfg = cfg.venues[venue]
            base = vcfg.url or urls[venue]
            for url, syms in self.specs[vi].connections(base, list(vcfg.symbols.values())):
                c = factory(self, link, url, syms)
                link.connections.append(c)
                conns.append(c)
        feed_tasks = [self.spawn(c.run(self.stop)) for c in conns]
        try:
            deadline = time.monotonic() + CONNECT_TIMEOUT_S
            while not all(self.connected):
                if self.stop.is_set():
                    raise RuntimeError("stopped before the feeds connected")
                if time.monotonic() > deadline:
                    down = [v for v, up in zip(cfg.venue_names, self.connected) if not up]
                    raise RuntimeError(f"feeds not connected within {CONNECT_TIMEOUT_S:.0f} s: {', '.join(down)}")
                await asyncio.sleep(0.02)
            await _wait_or_stop(self.stop, WARMUP_S)
            rec = self.rec
            rec.reset()
            frames0 = sum(c.frames for c in conns)
            cpu0, t0 = _cpu_s(), time.monotonic()
            await _wait_or_stop(self.stop, duration_s)
            t1, cpu1 = time.monotonic(), _cpu_s()
            frames = sum(c.frames for c in conns) - frames0
            if self.stop.is_set():
                raise RunInterrupted("stopped before the end of the run") from self.failure
            wall = t1 - t0
            result: dict[str, Any] = {
                "hops": rec.summaries(),
                "frames": frames,
                "frames_per_s": round(frames / wall, 1),
                "opportunities": rec.opportunities,
                "orders": rec.orders,
                "cpu_pct": {self.design: round(100 * (cpu1 - cpu0) / wall, 1)},
                "duration_s": round(wall, 3),
                "trades_opened": rec.trades_opened,
                "trades_closed": rec.trades_closed,
                "skips": dict(rec.skips),
                "parse_errors": sum(c.parse_errors for c in conns),
            }
            return result
        finally:
            self.stop.set()
            await asyncio.wait(feed_tasks, timeout=STOP_TIMEOUT_S)


class RunInterrupted(RuntimeError):
    """A signal, or a failed task, ended the run before its duration: there is no result."""


def _cpu_s() -> float:
    """CPU seconds this process used so far, all threads, user + system."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


async def run_session(cfg: Config, urls: Mapping[str, str], duration_s: float, design: str,
                      setup: Callable[[Session], FeedFactory]) -> dict[str, Any]:
    """Open a session, let `setup` start the design's components, measure, clean up whatever happens."""
    session = Session(cfg, design)
    loop = asyncio.get_running_loop()
    handled = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, session.stop.set)
            handled.append(sig)
        except (ValueError, RuntimeError):  # not the main thread: the caller handles signals
            pass
    try:
        await session.open()
        factory = setup(session)
        return await session.measure(urls, duration_s, factory)
    finally:
        await session.close()
        for sig in handled:
            loop.remove_signal_handler(sig)


# -- the baseline's components ----------------------------------------------------------------


class BusFeed(FeedConnection):
    """The feed component: frame -> parse -> QUOTE_UPDATED on the bus (then the paper venues' board)."""

    def __init__(self, session: Session, link: VenueLink, url: str, symbols: list[str],
                 publish: Callable[[object], None]) -> None:
        super().__init__(session, link, url, symbols)
        self._publish = publish
        self._hist_add = session.rec.feed_recv_to_write.add

    def on_quotes(self, parsed: list[BBO], t_recv: int) -> None:
        n = self.frames
        for q in parsed:
            m = self._sym_get(q[0])
            if m is None:
                self.unknown_symbols += 1
                continue
            idx = m[0]
            ts_write = now_ns()
            self._publish(QuoteUpdated(m[1], q[1], q[2], q[3], q[4], self.venue, q[5], self.venue_idx, idx,
                                       t_recv, ts_write))
            if not n & HIST_SAMPLE_MASK:
                self._hist_add(ts_write - t_recv)
            # the paper venues' price source, after the publish (module docstring)
            self._write(idx, q[1], q[2], q[3], q[4], q[5], t_recv)


class BusScanner:
    """The scanner component: latest quote per (venue, symbol); each updated symbol checked once per drain."""

    def __init__(self, session: Session, publish: Callable[[object], None]) -> None:
        cfg = session.cfg
        self.quotes = session.quotes
        self.check = EdgeCheck(cfg, session.quotes, session.connected)
        self.publish = publish
        self.rec = session.rec
        self.clock = session.clock
        self.vnames = cfg.venue_names
        self.snames = cfg.symbol_names

    def on_events(self, batch: list[QuoteUpdated]) -> None:
        quotes = self.quotes
        if len(batch) == 1:
            ev = batch[0]
            quotes[ev.symbol_idx][ev.venue_idx] = ev
            self._evaluate(ev.symbol_idx, ev, self.clock())
            return
        # a burst drained at once: every quote stored, each symbol checked once on its newest tick
        dirty: dict[int, QuoteUpdated] = {}
        for ev in batch:
            s = ev.symbol_idx
            quotes[s][ev.venue_idx] = ev
            prev = dirty.get(s)
            if prev is None or ev.ts_recv_ns > prev.ts_recv_ns:
                dirty[s] = ev
        t = self.clock()
        for s, trigger in dirty.items():
            self._evaluate(s, trigger, t)

    def _evaluate(self, s: int, trigger: QuoteUpdated, t: int) -> None:
        e = self.check.evaluate(s, t)
        if e is None:
            return
        row = self.quotes[s]
        qb, qa = row[e.buy_venue], row[e.sell_venue]
        assert qb is not None and qa is not None  # an edge needs both quotes
        ts_detect = self.clock()
        self.publish(OpportunityFound(
            self.snames[s], self.vnames[e.buy_venue], self.vnames[e.sell_venue],
            (qa.bid - qb.ask) / qb.ask * 100, s, e.buy_venue, e.sell_venue, qb.ask, qa.bid, qb.ask_size,
            qa.bid_size, e.edge_bps, trigger.ts_recv_ns, trigger.ts_write_ns, ts_detect))
        rec = self.rec
        rec.opportunities += 1
        rec.tick_to_signal.add(ts_detect - trigger.ts_recv_ns)
        rec.board_write_to_detect.add(ts_detect - trigger.ts_write_ns)


class BusExec:
    """The exec component: newest opportunity per pair of a drained batch -> decide -> both legs out."""

    def __init__(self, session: Session) -> None:
        self.core = session.core
        self.rec = session.rec

    async def on_events(self, batch: list[OpportunityFound], ts_exec: int) -> None:
        add = self.rec.detect_to_exec.add
        for opp in batch:
            add(ts_exec - opp.ts_detect_ns)
        if len(batch) > 1:
            # as PerpBot's exec: a flood is worked off in one pass, never traded signal by signal
            newest: dict[tuple[int, int, int], OpportunityFound] = {}
            for opp in batch:
                newest[(opp.symbol_idx, opp.buy_venue, opp.sell_venue)] = opp
            self.rec.skips[Reason.SUPERSEDED.name] += len(batch) - len(newest)
            batch = list(newest.values())
        core = self.core
        for opp in batch:
            d = core.decide(opp.symbol_idx, opp.buy_venue, opp.sell_venue, opp.ts_recv_ns, opp.ts_detect_ns,
                            ts_exec)
            if d is not None:
                core.finish(d, await core.dispatch(d))


async def _drain_sync(queue: asyncio.Queue[Any], handle: Callable[[list[Any]], None]) -> None:
    """One component's task: wait for an event, take whatever else is queued, handle the batch."""
    get, get_nowait, empty = queue.get, queue.get_nowait, queue.empty
    while True:
        batch = [await get()]
        while not empty():
            batch.append(get_nowait())
        handle(batch)


async def _drain_async(queue: asyncio.Queue[Any], handle: Callable[[list[Any], int], Awaitable[None]],
                       clock: Clock) -> None:
    get, get_nowait, empty = queue.get, queue.get_nowait, queue.empty
    while True:
        first = await get()
        ts = clock()
        batch = [first]
        while not empty():
            batch.append(get_nowait())
        await handle(batch, ts)


def setup_baseline(session: Session) -> FeedFactory:
    """Subscribe the scanner and exec to the bus, start their tasks; the feeds' factory."""
    bus = EventBus()
    quotes_q = bus.subscribe(EventType.QUOTE_UPDATED)
    opps_q = bus.subscribe(EventType.ARBITRAGE_OPPORTUNITY_FOUND)
    scanner = BusScanner(session, bus.publisher(EventType.ARBITRAGE_OPPORTUNITY_FOUND))
    execc = BusExec(session)
    session.core.publish = bus.publish
    session.spawn(_drain_sync(quotes_q, scanner.on_events))
    session.spawn(_drain_async(opps_q, execc.on_events, session.clock))
    publish_quote = bus.publisher(EventType.QUOTE_UPDATED)

    def factory(s: Session, link: VenueLink, url: str, symbols: list[str]) -> FeedConnection:
        return BusFeed(s, link, url, symbols, publish_quote)

    return factory


def run(cfg: Config, urls: Mapping[str, str], duration_s: float) -> dict[str, Any]:
    """Run the baseline in this process for `duration_s` against the market at `urls`; its result."""
    import uvloop

    return uvloop.run(run_session(cfg, urls, duration_s, "baseline", setup_baseline))


# -- in a process of its own ------------------------------------------------------------------


def run_module_in_subprocess(module: str, cfg_path: str | os.PathLike[str], urls: Mapping[str, str],
                             duration_s: float, *, cpu: int | None = None) -> dict[str, Any]:
    """`python -m <module> ...` in a fresh process, waited for; its result. Raises RuntimeError if it fails."""
    with tempfile.TemporaryDirectory(prefix="pbd") as tmp:
        out = Path(tmp) / "result.json"
        log_path = Path(tmp) / "design.log"
        cmd = [sys.executable, "-m", module, "--config", str(cfg_path),
               "--urls-json", orjson.dumps(dict(urls)).decode(), "--duration", repr(float(duration_s)),
               "--out", str(out)]
        if cpu is not None:
            cmd += ["--cpu", str(cpu)]
        with open(log_path, "wb") as lf:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=lf, stderr=subprocess.STDOUT)
        try:
            code = proc.wait(duration_s + CONNECT_TIMEOUT_S + SUBPROCESS_GRACE_S)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if code != 0 or not out.exists():
            why = "timed out" if code is None else f"exited {code}"
            raise RuntimeError(f"{module} {why}:\n{log_path.read_text(errors='replace')[-4000:]}")
        result: dict[str, Any] = orjson.loads(out.read_bytes())
        return result


def run_in_subprocess(cfg_path: str | os.PathLike[str], urls: Mapping[str, str], duration_s: float, *,
                      cpu: int | None = None) -> dict[str, Any]:
    """The baseline in a fresh process (pinned to core `cpu` if given), so this process is not measured."""
    return run_module_in_subprocess("perpbot_bench.baseline", cfg_path, urls, duration_s, cpu=cpu)


def design_main(design: str, run_design: Callable[[Config, Mapping[str, str], float], dict[str, Any]],
                argv: list[str] | None = None) -> int:
    """The command line of a design process: run once, write the result as JSON."""
    p = argparse.ArgumentParser(prog=f"python -m perpbot_bench.{design}",
                                description=f"Run the {design} design once against a running market.")
    p.add_argument("--config", required=True, type=Path)
    p.add_argument("--urls-json", required=True, help='venue -> websocket URL, e.g. {"okx": "ws://..."}')
    p.add_argument("--duration", required=True, type=float, help="seconds measured, after connecting")
    p.add_argument("--out", required=True, type=Path, help="where the result JSON goes")
    p.add_argument("--cpu", type=int, default=None, help="pin to this core")
    args = p.parse_args(argv)
    from perpbot.runctx import die_with_parent

    die_with_parent()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg = load_config(args.config)
    urls = orjson.loads(args.urls_json)
    try:
        result = run_design(cfg, urls, args.duration)
    except RunInterrupted as e:
        print(f"{design}: {e}", file=sys.stderr)
        return 1
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    os.replace(tmp, args.out)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m perpbot_bench.baseline`."""
    return design_main("baseline", run, argv)


if __name__ == "__main__":
    sys.exit(main())
