"""Feed process: one venue's websocket(s) -> its row of the quote board.

    python -m perpbot.feeds.process --run-dir DIR --slot N --venue NAME

The frame callback is the hot path: stamp `ts_recv_ns`, parse, map the venue
symbol to a board index, seqlock-write. Counters are plain Python ints and go
to the status segment on the heartbeat, never per frame. A malformed frame is
counted and logged once per kind; it never ends the connection. A parser that
loses its book (`ResyncRequired`) gets a fresh connection and subscription.

Most venues use one connection for every symbol; a venue that subscribes by
URL (Extended) gets one connection per market. The venue's feed state is
CONNECTED only while all of its connections are up, and DOWN the moment one
drops, so the scanner never trades on a dead connection's last quote.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
from collections.abc import Iterator

import picows
import zmq

from perpbot.bus import EventPublisher
from perpbot.clock import now_ns
from perpbot.config import Config
from perpbot.events import EventType
from perpbot.feeds.registry import get_feed
from perpbot.feeds.spec import BBO, FeedSpec, ParseError, Parser, ParserContext, ResyncRequired
from perpbot.metrics import LocalHistogram
from perpbot.runctx import RunContext, child_args, die_with_parent, load_run, setup_logging
from perpbot.shm import QuoteBoard, StatusBoard
from perpbot.shm.board import BoardWriter
from perpbot.shm.layout import FeedCounter, FeedKind, FeedState, Hop, ProcState, Role

log = logging.getLogger("perpbot.feed")

#: modes whose feeds connect to the built-in loopback market
LOOPBACK_MODES = ("demo", "replay")
#: the receive->write histogram takes one write in 8: an unbiased sample at an eighth of the cost
HIST_SAMPLE_MASK = 7


def is_replay(q: BBO, last: BBO) -> bool:
    """True for a quote that brings nothing newer than `last` (the last written on this connection):
    stamped before it by the venue, or the same stamp with the same prices and sizes (a frozen book
    sent again). Quotes without a venue stamp (0) are always news."""
    ts, ts_last = q[5], last[5]
    if not ts or not ts_last:
        return False
    if ts < ts_last:
        return True
    return ts == ts_last and q[1:5] == last[1:5]


class FeedStats:
    """Process-local counters, flushed to the status segment on the heartbeat."""

    __slots__ = ("error_kinds", "frames", "parse_errors", "pongs", "quotes", "reconnects", "replayed",
                 "resyncs", "unknown_symbols")

    def __init__(self) -> None:
        self.frames = 0
        self.quotes = 0
        self.parse_errors = 0
        self.unknown_symbols = 0
        self.replayed = 0  # quotes older than, or repeating, the last one written: not written
        self.reconnects = 0
        self.resyncs = 0
        self.pongs = 0
        self.error_kinds: set[str] = set()


def base_url(ctx: RunContext, venue: str, spec: FeedSpec) -> str:
    """Where this venue's feed connects: config override, loopback market, or the venue itself."""
    vcfg = ctx.cfg.venues[venue]
    if vcfg.url:
        return vcfg.url
    if ctx.cfg.mode in LOOPBACK_MODES:
        return ctx.urls[venue]
    return spec.public_url


def backoff_delays(initial_ms: int, max_ms: int, rng: random.Random) -> Iterator[float]:
    """Jittered exponential backoff in seconds: spreads a reconnect storm across clients."""
    cap = initial_ms
    while True:
        yield rng.uniform(cap / 2, cap) / 1000.0
        cap = min(cap * 2, max_ms)


class VenueFeed:
    """One venue: its board row, its counters and the connections that feed them."""

    def __init__(self, cfg: Config, venue: str, venue_idx: int, spec: FeedSpec, board: QuoteBoard,
                 writer: BoardWriter, status: StatusBoard, publisher: EventPublisher | None) -> None:
        vcfg = cfg.venues[venue]
        self.cfg = cfg
        self.venue = venue
        self.venue_idx = venue_idx
        self.spec = spec
        self.board = board
        self.writer = writer
        #: slot seqs when this process took the row over (a restarted feed counts from here)
        self.seq_at_start = [getattr(board.read(venue_idx, i), "seq", 0) for i in range(len(cfg.symbol_names))]
        self.status = status
        self.publisher = publisher
        symbol_index = {s: i for i, s in enumerate(cfg.symbol_names)}
        self.venue_symbols = list(vcfg.symbols.values())
        #: venue symbol -> (board index, board name)
        self.sym_map = {vs: (symbol_index[bs], bs) for bs, vs in vcfg.symbols.items()}
        self.parser_context = ParserContext(
            {vcfg.symbols[bs]: size for bs, size in vcfg.contract_sizes.items()})
        self.stats = FeedStats()
        self.hist = LocalHistogram()
        self.connections: list[Connection] = []
        # 0 disables the events: the next one is then never due
        self._quote_interval_ns = cfg.feed.quote_event_interval_ms * 1_000_000 or 2**62
        #: per board symbol index, when its next QUOTE_UPDATED event is due
        self.next_event_ns = [0 if cfg.feed.quote_event_interval_ms and publisher else 2**62] * len(cfg.symbol_names)
        #: the last quote written per board symbol: a replayed or older one carries no news, and
        #: writing it would make a frozen book look fresh (the board's age is our receive time)
        self.last_quote: list[BBO | None] = [None] * len(cfg.symbol_names)

    def refresh_state(self) -> None:
        """CONNECTED only while every connection is up; DOWN as soon as one is not."""
        up = sum(1 for c in self.connections if c.transport is not None)
        state = FeedState.CONNECTED if up == len(self.connections) else FeedState.DOWN
        self.status.feeds[self.venue_idx]["connections_up"] = up
        if self.status.feed_state(self.venue_idx) != state:
            self.status.set_feed_state(self.venue_idx, state)

    def bad_frame(self, kind: str, detail: str, payload: bytes) -> None:
        self.stats.parse_errors += 1
        if kind not in self.stats.error_kinds:
            self.stats.error_kinds.add(kind)
            log.warning("%s: bad frame (%s), first of its kind: %r", self.venue, detail, payload[:120])

    def quote_event(self, q: BBO, board_symbol: str, idx: int, t_recv: int, ts_write: int) -> None:
        """A QUOTE_UPDATED event, at most one per symbol per interval (the hot path checks the time)."""
        self.next_event_ns[idx] = ts_write + self._quote_interval_ns
        if self.publisher is not None:
            self.publisher.publish(EventType.QUOTE_UPDATED, {
                "symbol": board_symbol, "bid": q[1], "ask": q[2], "bid_size": q[3],
                "ask_size": q[4], "exchange": self.venue, "ts": q[5],
                "ts_recv_ns": t_recv, "ts_write_ns": ts_write,
            })

    def _written(self) -> tuple[int, int]:
        """(quotes written since start, newest receive stamp) read off this venue's board row."""
        total = 0
        newest = 0
        for idx, _ in self.sym_map.values():
            q = self.board.read(self.venue_idx, idx)
            if q is not None:
                total += (q.seq - self.seq_at_start[idx]) // 2
                newest = max(newest, q.ts_recv_ns)
        return total, newest

    def stale_symbols(self, now: int) -> int:
        """Subscribed symbols whose slot was not written for feed.symbol_stale_ms (read off the board)."""
        limit = self.cfg.feed.symbol_stale_ms * 1_000_000
        stale = 0
        for idx, _ in self.sym_map.values():
            q = self.board.read(self.venue_idx, idx)
            if q is None or now - q.ts_write_ns > limit:
                stale += 1
        return stale

    def flush(self, slot: int) -> None:
        st = self.stats
        rec = self.status.feeds[self.venue_idx]
        st.frames = sum(c.frames for c in self.connections)
        # every board write adds 2 to its slot's seq: the quote count needs no counter on the hot path
        st.quotes, last_recv = self._written()
        rec["frames"] = st.frames
        rec["quotes"] = st.quotes
        rec["parse_errors"] = st.parse_errors
        rec["unknown_symbols"] = st.unknown_symbols
        rec["reconnects"] = st.reconnects
        rec["resyncs"] = st.resyncs
        rec["last_recv_ns"] = last_recv
        rec["stale_symbols"] = self.stale_symbols(now_ns())
        if self.hist.dirty:
            self.status.add_histogram(Hop.FEED_RECV_TO_WRITE, self.hist.drain())
        counters = [0] * len(FeedCounter)
        counters[FeedCounter.FRAMES] = st.frames
        counters[FeedCounter.QUOTES] = st.quotes
        counters[FeedCounter.PARSE_ERRORS] = st.parse_errors
        counters[FeedCounter.UNKNOWN_SYMBOLS] = st.unknown_symbols
        counters[FeedCounter.RECONNECTS] = st.reconnects
        self.status.heartbeat(slot, counters)


_TEXT = picows.WSMsgType.TEXT
_BINARY = picows.WSMsgType.BINARY
_CLOSE = picows.WSMsgType.CLOSE


class Connection(picows.WSListener):
    """One websocket of a venue: its URL, its symbols, its own parser state.

    It is its own picows listener, so a frame costs one Python call before the
    parser: the hot path below keeps everything it needs in bound locals.
    """

    def __init__(self, feed: VenueFeed, url: str, symbols: list[str]) -> None:
        self.feed = feed
        self.url = url
        self.symbols = symbols
        self.parse: Parser = feed.spec.make_parser(feed.parser_context)
        self.transport: picows.WSTransport | None = None
        self.frames = 0
        #: frames seen at the last heartbeat and when that count last moved (silence watchdog)
        self.frames_seen = 0
        self.last_progress_ns = 0
        ping = feed.spec.ping
        self._is_pong = ping.is_pong if ping is not None else None
        self._write = feed.writer.write
        self._sym_get = feed.sym_map.get
        self._hist_add = feed.hist.add
        self._next_event = feed.next_event_ns

    def on_ws_connected(self, transport: picows.WSTransport) -> None:
        # a fresh parser per connection: book state never survives a reconnect
        self.parse = self.feed.spec.make_parser(self.feed.parser_context)
        self.transport = transport
        self.last_progress_ns = now_ns()
        # the first quote after a (re)subscription is news even if unchanged: the venue confirms
        # its book; only repeats on a live connection are a frozen book
        for sym in self.symbols:
            m = self._sym_get(sym)
            if m is not None:
                self.feed.last_quote[m[0]] = None
        for frame in self.feed.spec.subscribe(self.symbols):
            transport.send(picows.WSMsgType.TEXT, frame)
        self.feed.refresh_state()
        log.info("%s: connected to %s, subscribed to %d symbols", self.feed.venue, self.url, len(self.symbols))

    def on_ws_disconnected(self, transport: picows.WSTransport) -> None:
        self.transport = None
        self.feed.refresh_state()

    def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
        """One frame: every quote in it reaches the board, in arrival order."""
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
        n = self.frames = self.frames + 1
        if self._is_pong is not None and not binary and self._is_pong(payload):
            self.feed.stats.pongs += 1
            return
        try:
            parsed = self.parse(payload, True) if binary else self.parse(payload)
        except ResyncRequired as e:
            self.feed.stats.resyncs += 1
            self.feed.bad_frame(e.kind, f"{e}; resubscribing", payload)
            transport.disconnect()
            return
        except ParseError as e:
            self.feed.bad_frame(e.kind, str(e), payload)
            return
        except Exception as e:
            self.feed.bad_frame(f"parser_bug_{type(e).__name__}", repr(e), payload)
            return
        last_quote = self.feed.last_quote
        for q in parsed:
            m = self._sym_get(q[0])
            if m is None:
                self.feed.stats.unknown_symbols += 1
                continue
            idx = m[0]
            last = last_quote[idx]
            if last is not None and is_replay(q, last):
                st = self.feed.stats
                st.replayed += 1
                if st.replayed & (st.replayed - 1) == 0:  # 1, 2, 4, 8...: said, not flooded
                    log.warning("%s: %d quotes not written: older than, or the same as, the last one "
                                "(%s at venue time %d)", self.feed.venue, st.replayed, q[0], q[5])
                continue
            last_quote[idx] = q
            ts_write = self._write(idx, q[1], q[2], q[3], q[4], q[5], t_recv)
            if not n & HIST_SAMPLE_MASK:
                self._hist_add(ts_write - t_recv)
            if ts_write >= self._next_event[idx]:
                self.feed.quote_event(q, m[1], idx, t_recv, ts_write)

    async def run(self, stop: asyncio.Event) -> None:
        """Keep this connection up until `stop`: connect, ping, watch for silence, back off."""
        feed = self.feed
        fcfg = feed.cfg.feed
        spec = feed.spec
        rng = random.Random()
        delays = backoff_delays(fcfg.reconnect_initial_ms, fcfg.reconnect_max_ms, rng)
        first = True
        while not stop.is_set():
            if not first:
                feed.stats.reconnects += 1
            first = False
            try:
                transport, _ = await picows.ws_connect(
                    lambda: self, self.url, extra_headers=dict(spec.extra_headers) or None,
                    websocket_handshake_timeout=5,
                )
            except (TimeoutError, OSError, picows.WSError) as e:
                delay = next(delays)
                log.warning("%s: connect to %s failed (%s); retry in %.0f ms", feed.venue, self.url, e, delay * 1000)
                await _sleep_or_stop(stop, delay)
                continue
            delays = backoff_delays(fcfg.reconnect_initial_ms, fcfg.reconnect_max_ms, rng)
            pinger = asyncio.create_task(self._ping(transport)) if spec.ping is not None else None
            stop_wait = asyncio.create_task(stop.wait())
            closed = asyncio.create_task(transport.wait_disconnected())
            await asyncio.wait({stop_wait, closed}, return_when=asyncio.FIRST_COMPLETED)
            stop_wait.cancel()
            if pinger is not None:
                pinger.cancel()
            if not closed.done():
                transport.send_close()
                transport.disconnect()
                await closed
                return
            log.warning("%s: disconnected from %s", feed.venue, self.url)
            await _sleep_or_stop(stop, next(delays))

    async def _ping(self, transport: picows.WSTransport) -> None:
        rule = self.feed.spec.ping
        assert rule is not None
        while not transport.is_disconnected:
            await asyncio.sleep(rule.interval_s)
            if not transport.is_disconnected:
                transport.send(picows.WSMsgType.TEXT, rule.payload())


async def _sleep_or_stop(stop: asyncio.Event, delay: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), delay)
    except TimeoutError:
        pass


async def run_feed(ctx: RunContext, venue: str, stop: asyncio.Event) -> None:
    """Connect, keep connected, and write quotes until `stop` is set."""
    cfg = ctx.cfg
    spec = get_feed(cfg.venues[venue].feed)
    venue_idx = cfg.venue_names.index(venue)
    board = QuoteBoard.attach(ctx.board_name, cfg.venue_names, cfg.symbol_names)
    status = StatusBoard.attach(ctx.status_name, cfg.venue_names, cfg.symbol_names)
    zctx = zmq.Context()
    publisher = EventPublisher(zctx, ctx.endpoints, f"feed-{venue}")
    writer = board.writer(venue_idx)
    feed = VenueFeed(cfg, venue, venue_idx, spec, board, writer, status, publisher)
    feed.connections = [Connection(feed, url, syms) for url, syms in spec.connections(
        base_url(ctx, venue, spec), feed.venue_symbols)]
    status.register_proc(ctx.slot, f"feed-{venue}", Role.FEED, os.getpid())
    status.feeds[venue_idx]["kind"] = FeedKind.NATIVE
    status.set_feed_state(venue_idx, FeedState.CONNECTING)
    hb_task = asyncio.create_task(_heartbeat(ctx, feed, stop))
    try:
        status.set_proc_state(ctx.slot, ProcState.RUNNING)
        await asyncio.gather(*(c.run(stop) for c in feed.connections))
    finally:
        hb_task.cancel()
        try:
            await hb_task
        except asyncio.CancelledError:
            pass
        status.set_feed_state(venue_idx, FeedState.DOWN)
        feed.flush(ctx.slot)
        status.set_proc_state(ctx.slot, ProcState.STOPPED)
        writer.release()
        del feed, writer
        publisher.close()
        zctx.term()
        board.close()
        status.close()


async def _heartbeat(ctx: RunContext, feed: VenueFeed, stop: asyncio.Event) -> None:
    fcfg = ctx.cfg.feed
    silent_ns = fcfg.silent_reconnect_ms * 1_000_000
    period = fcfg.heartbeat_ms / 1000.0
    last_event = 0
    while not stop.is_set():
        await asyncio.sleep(period)
        feed.flush(ctx.slot)
        t = now_ns()
        for c in feed.connections:
            tr = c.transport
            if c.frames != c.frames_seen:
                c.frames_seen = c.frames
                c.last_progress_ns = t
            if tr is not None and t - c.last_progress_ns > silent_ns:
                # open but silent (e.g. a wrong routed path fails silently): drop and reconnect
                log.warning("%s: %s silent for %d ms, reconnecting", feed.venue, c.url, fcfg.silent_reconnect_ms)
                feed.status.set_feed_state(feed.venue_idx, FeedState.STALE)
                tr.disconnect()
        if feed.publisher is not None and t - last_event > 1_000_000_000:
            last_event = t
            up = all(c.transport is not None for c in feed.connections)
            feed.publisher.heartbeat("connected" if up else "down")


def main(argv: list[str] | None = None) -> int:
    args = child_args("feed", argv, venue=True)
    die_with_parent()
    ctx = load_run(args.run_dir, args.slot)
    setup_logging(f"feed-{args.venue}", ctx)
    if args.venue not in ctx.cfg.venues:
        log.error("unknown venue %r; configured: %s", args.venue, ", ".join(ctx.cfg.venues))
        return 2
    import uvloop

    from perpbot.feeds.ccxt_generic import is_ccxt_feed, load_markets_file, run_ccxt_feed

    async def amain() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        feed = ctx.cfg.venues[args.venue].feed
        if is_ccxt_feed(feed):
            markets_file = ctx.cfg.venues[args.venue].ccxt_markets_file
            markets = load_markets_file(markets_file) if markets_file else None
            await run_ccxt_feed(ctx, args.venue, stop, markets=markets)
        else:
            await run_feed(ctx, args.venue, stop)

    uvloop.run(amain())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
