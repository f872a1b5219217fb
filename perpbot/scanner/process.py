"""Scanner process: poll the board, find net-of-fee edges, PUSH opportunities to exec.

    python -m perpbot.scanner.process --run-dir DIR --slot N

One pass: check the kill switch, read the venues' change counters, read just
the changed slots (seqlock), re-evaluate each changed symbol across venues,
push what clears the threshold. Poll policy (DESIGN.md): `spin` never sleeps,
`hybrid` spins for `spin_us` after the last change then sleeps in `sleep_us`
steps, `sleep` always sleeps between passes.
"""

from __future__ import annotations

import logging
import os
import struct
import time
from typing import Any

import zmq

from perpbot import bus
from perpbot.bus import EventPublisher
from perpbot.clock import Clock, now_ns
from perpbot.config import Config
from perpbot.events import EventType
from perpbot.messages import Opportunity, encode_opportunity
from perpbot.metrics import LocalHistogram
from perpbot.runctx import child_args, die_with_parent, load_run, on_stop_signals, setup_logging
from perpbot.scanner.edge import fee_multipliers, symbol_edge
from perpbot.shm import Quote, QuoteBoard, StatusBoard
from perpbot.shm.layout import FeedState, Hop, ProcState, Role, ScannerCounter

log = logging.getLogger("perpbot.scanner")

_U4 = struct.Struct("<I").unpack_from
HEARTBEAT_NS = 200_000_000


class Scanner:
    """The scanner's state and one pass of work; the poll loop lives in `run`."""

    def __init__(self, cfg: Config, board: QuoteBoard, status: StatusBoard, push: zmq.Socket[Any] | None,
                 publisher: EventPublisher | None = None, clock: Clock = now_ns) -> None:
        sc = cfg.scanner
        self.cfg = cfg
        self.board = board
        self.status = status
        self.push = push
        self.publisher = publisher
        self.clock = clock
        self.n_venues = len(cfg.venue_names)
        self.n_symbols = len(cfg.symbol_names)
        self.buy_mult, self.sell_mult = fee_multipliers([v.taker_fee_bps for v in cfg.venues.values()])
        # a venue that does not list a symbol never quotes it; its slot stays empty
        self.quotes: list[list[Quote | None]] = [[None] * self.n_venues for _ in range(self.n_symbols)]
        self.stale_ns = sc.stale_after_ms * 1_000_000
        self.min_edge_bps = sc.min_edge_bps
        self.min_notional = sc.min_notional_usd
        self.repeat_ns = sc.repeat_interval_ms * 1_000_000
        self.last_sent: dict[tuple[int, int, int], int] = {}
        self.cursor = board.cursor()
        self.counters = [0] * len(ScannerCounter)
        self.hist_signal = LocalHistogram()
        self.hist_detect = LocalHistogram()
        self.next_opp_id = 1
        self.dropped = 0
        self._status_buf = status.segment.buf
        self._feed_state_offs = status.feed_state_offsets()

    def scan_once(self) -> int:
        """One pass; returns the number of changed slots seen (0 means idle)."""
        ctr = self.counters
        ctr[ScannerCounter.PASSES] += 1
        changes = self.cursor.poll()
        if not changes:
            return 0
        ctr[ScannerCounter.CHANGES] += len(changes)
        read = self.board.read
        # per changed symbol, the newest quote that changed in this pass: the tick that triggers it
        dirty: dict[int, Quote] = {}
        for v, s in changes:
            q = read(v, s)
            self.quotes[s][v] = q
            if q is not None:
                prev = dirty.get(s)
                if prev is None or q.ts_recv_ns > prev.ts_recv_ns:
                    dirty[s] = q
        if not self.status.may_open():
            ctr[ScannerCounter.HALTED_SKIPS] += 1
            return len(changes)
        t = self.clock()
        buf = self._status_buf
        connected = [_U4(buf, off)[0] == FeedState.CONNECTED for off in self._feed_state_offs]
        for s, trigger in dirty.items():
            self._evaluate(s, trigger, t, connected)
        return len(changes)

    def _evaluate(self, s: int, trigger: Quote, t: int, connected: list[bool]) -> None:
        ctr = self.counters
        qs = self.quotes[s]
        e, stale, thin = symbol_edge(qs, connected, t, stale_ns=self.stale_ns, min_notional=self.min_notional,
                                     buy_mult=self.buy_mult, sell_mult=self.sell_mult)
        ctr[ScannerCounter.STALE_SKIPS] += stale
        ctr[ScannerCounter.THIN_SKIPS] += thin
        if e is None or e.edge_bps < self.min_edge_bps:
            return
        key = (s, e.buy_venue, e.sell_venue)
        last = self.last_sent.get(key)
        if last is not None and t - last < self.repeat_ns:
            ctr[ScannerCounter.REPEATS_SUPPRESSED] += 1
            return
        qb = qs[e.buy_venue]
        qa = qs[e.sell_venue]
        assert qb is not None and qa is not None
        ts_detect = self.clock()
        opp = Opportunity(self.next_opp_id, s, e.buy_venue, e.sell_venue, qb.ask, qa.bid, qb.ask_size,
                          qa.bid_size, e.edge_bps, trigger.ts_exchange_ns, trigger.ts_recv_ns,
                          trigger.ts_write_ns, ts_detect)
        if self.push is not None:
            try:
                self.push.send(encode_opportunity(opp), zmq.NOBLOCK)
            except zmq.Again:
                # exec is not keeping up (or not there): an opportunity is worth nothing late
                self.dropped += 1
                return
        self.next_opp_id += 1
        self.last_sent[key] = t
        ctr[ScannerCounter.OPPORTUNITIES] += 1
        self.hist_signal.add(ts_detect - trigger.ts_recv_ns)
        self.hist_detect.add(ts_detect - trigger.ts_write_ns)
        self._report(opp)

    def _report(self, opp: Opportunity) -> None:
        """Off the critical path: the message is already on its way to exec."""
        self.status.push_opportunity(
            ts_detect_ns=opp.ts_detect_ns, opp_id=opp.opp_id, symbol=opp.symbol, buy_venue=opp.buy_venue,
            sell_venue=opp.sell_venue, edge_bps=opp.edge_bps, buy_price=opp.buy_price,
            sell_price=opp.sell_price, size=min(opp.buy_size, opp.sell_size),
        )
        if self.publisher is not None:
            gross_pct = (opp.sell_price - opp.buy_price) / opp.buy_price * 100
            self.publisher.publish(EventType.ARBITRAGE_OPPORTUNITY_FOUND, {
                "symbol": self.cfg.symbol_names[opp.symbol],
                "buy_exchange": self.cfg.venue_names[opp.buy_venue],
                "sell_exchange": self.cfg.venue_names[opp.sell_venue],
                "spread_pct": gross_pct, "net_edge_bps": opp.edge_bps, "opp_id": opp.opp_id,
                "buy_price": opp.buy_price, "sell_price": opp.sell_price,
                "ts_recv_ns": opp.ts_recv_ns, "ts_detect_ns": opp.ts_detect_ns,
            })

    def flush(self, slot: int) -> None:
        self.counters[ScannerCounter.RESCANS] = self.cursor.rescans
        if self.hist_signal.dirty:
            self.status.add_histogram(Hop.TICK_TO_SIGNAL, self.hist_signal.drain())
        if self.hist_detect.dirty:
            self.status.add_histogram(Hop.BOARD_WRITE_TO_DETECT, self.hist_detect.drain())
        self.status.heartbeat(slot, self.counters)


def run(scanner: Scanner, slot: int, policy: str, spin_us: int, sleep_us: int, stop: list[bool]) -> None:
    """The poll loop. `stop[0]` is set from the signal handler."""
    spin_ns = spin_us * 1000
    sleep_s = sleep_us / 1e6
    clock = scanner.clock
    last_change = clock()
    next_hb = last_change + HEARTBEAT_NS
    next_event = last_change
    publisher = scanner.publisher
    scan = scanner.scan_once
    while not stop[0]:
        n = scan()
        t = clock()
        if n:
            last_change = t
        elif policy == "sleep" or (policy == "hybrid" and t - last_change > spin_ns):
            time.sleep(sleep_s)
        if t >= next_hb:
            next_hb = t + HEARTBEAT_NS
            scanner.flush(slot)
            if publisher is not None and t >= next_event:
                next_event = t + 1_000_000_000
                publisher.heartbeat("running")
    scanner.flush(slot)


def main(argv: list[str] | None = None) -> int:
    args = child_args("scanner", argv)
    die_with_parent()
    ctx = load_run(args.run_dir, args.slot)
    setup_logging("scanner", ctx)
    cfg = ctx.cfg
    board = QuoteBoard.attach(ctx.board_name, cfg.venue_names, cfg.symbol_names)
    status = StatusBoard.attach(ctx.status_name, cfg.venue_names, cfg.symbol_names)
    status.register_proc(ctx.slot, "scanner", Role.SCANNER, os.getpid())
    # the context's I/O thread inherits the affinity of the thread that creates it:
    # create context and sockets first, then pin only this (main) thread
    zctx = zmq.Context()
    push = bus.opportunity_push(zctx, ctx.endpoints)
    publisher = EventPublisher(zctx, ctx.endpoints, "scanner")
    if cfg.scanner.core is not None:
        os.sched_setaffinity(0, {cfg.scanner.core})
        log.info("pinned to core %d", cfg.scanner.core)
    stop = [False]

    def request_stop() -> None:
        stop[0] = True

    on_stop_signals(request_stop)
    scanner = Scanner(cfg, board, status, push, publisher)
    status.set_proc_state(ctx.slot, ProcState.RUNNING)
    log.info("scanning %d venues x %d symbols, poll=%s", scanner.n_venues, scanner.n_symbols, cfg.scanner.poll)
    try:
        run(scanner, ctx.slot, cfg.scanner.poll, cfg.scanner.spin_us, cfg.scanner.sleep_us, stop)
    finally:
        status.set_proc_state(ctx.slot, ProcState.STOPPED)
        log.info("stopped: %d opportunities, %d dropped (exec queue full)",
                 scanner.counters[ScannerCounter.OPPORTUNITIES], scanner.dropped)
        del scanner
        push.close()
        publisher.close()
        zctx.term()
        board.close()
        status.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
