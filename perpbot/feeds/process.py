"""Feed process: one venue's websocket -> its row of the quote board.

    python -m perpbot.feeds.process --run-dir DIR --slot N --venue NAME

The frame callback is the hot path: stamp `ts_recv_ns`, parse, map the venue
symbol to a board index, seqlock-write. Counters are plain Python ints and go
to the status segment on the heartbeat, never per frame. A malformed frame is
counted and logged once per kind; it never ends the connection.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
from typing import Any

import picows
import zmq

from perpbot.bus import EventPublisher
from perpbot.clock import now_ns
from perpbot.config import Config
from perpbot.events import EventType
from perpbot.feeds.registry import get_feed
from perpbot.feeds.spec import FeedSpec, ParseError, Parser, ParserContext
from perpbot.metrics import LocalHistogram
from perpbot.runctx import RunContext, child_args, die_with_parent, load_run, setup_logging
from perpbot.shm import QuoteBoard, StatusBoard
from perpbot.shm.board import BoardWriter
from perpbot.shm.layout import FeedCounter, FeedState, Hop, ProcState, Role

log = logging.getLogger("perpbot.feed")


class FeedStats:
    """Process-local counters, flushed to the status segment on the heartbeat."""

    __slots__ = (
        "error_kinds",
        "frames",
        "last_recv_ns",
        "parse_errors",
        "quotes",
        "reconnects",
        "unknown_symbols",
    )

    def __init__(self) -> None:
        self.frames = 0
        self.quotes = 0
        self.parse_errors = 0
        self.unknown_symbols = 0
        self.reconnects = 0
        self.last_recv_ns = 0
        self.error_kinds: set[str] = set()


def feed_url(ctx: RunContext, venue: str, spec: FeedSpec) -> str:
    """Where this venue's feed connects: config override, demo market, or the venue itself."""
    vcfg = ctx.cfg.venues[venue]
    if vcfg.url:
        return vcfg.url
    if ctx.cfg.mode == "demo":
        return ctx.urls[venue]
    return spec.public_url


def backoff_delays(initial_ms: int, max_ms: int, rng: random.Random) -> Any:
    """Jittered exponential backoff ("full jitter"): spreads a reconnect storm across clients."""
    cap = initial_ms
    while True:
        yield rng.uniform(cap / 2, cap) / 1000.0
        cap = min(cap * 2, max_ms)


class _Listener(picows.WSListener):
    def __init__(self, feed: FeedConnection) -> None:
        self.feed = feed

    def on_ws_connected(self, transport: picows.WSTransport) -> None:
        self.feed.on_connected(transport)

    def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
        t_recv = now_ns()
        mt = frame.msg_type
        if mt is picows.WSMsgType.TEXT or mt is picows.WSMsgType.BINARY:
            self.feed.on_frame(frame.get_payload_as_bytes(), t_recv)
        elif mt is picows.WSMsgType.CLOSE:
            transport.disconnect()

    def on_ws_disconnected(self, transport: picows.WSTransport) -> None:
        self.feed.on_disconnected()


class FeedConnection:
    """Owns one venue's connection, its parser and its board row."""

    def __init__(self, cfg: Config, venue: str, venue_idx: int, spec: FeedSpec, writer: BoardWriter,
                 status: StatusBoard, publisher: EventPublisher | None) -> None:
        vcfg = cfg.venues[venue]
        self.venue = venue
        self.venue_idx = venue_idx
        self.spec = spec
        self.writer = writer
        self.status = status
        self.publisher = publisher
        self.parse: Parser = spec.make_parser(ParserContext())
        symbol_index = {s: i for i, s in enumerate(cfg.symbol_names)}
        self.venue_symbols = list(vcfg.symbols.values())
        #: venue symbol -> (board index, board name)
        self.sym_map = {vs: (symbol_index[bs], bs) for bs, vs in vcfg.symbols.items()}
        self.stats = FeedStats()
        self.hist = LocalHistogram()
        self.transport: picows.WSTransport | None = None
        self.connected = asyncio.Event()
        self._quote_interval_ns = cfg.feed.quote_event_interval_ms * 1_000_000
        self._last_event_ns = [0] * len(cfg.symbol_names)

    def on_connected(self, transport: picows.WSTransport) -> None:
        self.transport = transport
        for frame in self.spec.subscribe(self.venue_symbols):
            transport.send(picows.WSMsgType.TEXT, frame)
        self.stats.last_recv_ns = now_ns()
        self.status.set_feed_state(self.venue_idx, FeedState.CONNECTED)
        self.connected.set()
        log.info("%s: connected, subscribed to %d symbols", self.venue, len(self.venue_symbols))

    def on_disconnected(self) -> None:
        # mark the row unusable at once: the scanner must not trade on a dead feed's last quote
        self.status.set_feed_state(self.venue_idx, FeedState.DOWN)
        self.transport = None
        self.connected.clear()

    def on_frame(self, payload: bytes, t_recv: int) -> None:
        st = self.stats
        st.frames += 1
        st.last_recv_ns = t_recv
        try:
            quotes = self.parse(payload)
        except ParseError as e:
            self._bad_frame(e.kind, str(e), payload)
            return
        except Exception as e:
            self._bad_frame(f"parser_bug_{type(e).__name__}", repr(e), payload)
            return
        for q in quotes:
            m = self.sym_map.get(q.symbol)
            if m is None:
                st.unknown_symbols += 1
                continue
            idx = m[0]
            ts_write = self.writer.write(idx, q.bid, q.ask, q.bid_size, q.ask_size, q.ts_exchange_ns, t_recv)
            st.quotes += 1
            self.hist.add(ts_write - t_recv)
            if (self.publisher is not None and self._quote_interval_ns
                    and ts_write - self._last_event_ns[idx] >= self._quote_interval_ns):
                    self._last_event_ns[idx] = ts_write
                    self.publisher.publish(EventType.QUOTE_UPDATED, {
                        "symbol": m[1], "bid": q.bid, "ask": q.ask, "bid_size": q.bid_size,
                        "ask_size": q.ask_size, "exchange": self.venue, "ts": q.ts_exchange_ns,
                        "ts_recv_ns": t_recv, "ts_write_ns": ts_write,
                    })

    def _bad_frame(self, kind: str, detail: str, payload: bytes) -> None:
        self.stats.parse_errors += 1
        if kind not in self.stats.error_kinds:
            self.stats.error_kinds.add(kind)
            log.warning("%s: bad frame (%s), first of its kind: %r", self.venue, detail, payload[:120])

    def flush(self, slot: int) -> None:
        st = self.stats
        rec = self.status.feeds[self.venue_idx]
        rec["frames"] = st.frames
        rec["quotes"] = st.quotes
        rec["parse_errors"] = st.parse_errors
        rec["unknown_symbols"] = st.unknown_symbols
        rec["reconnects"] = st.reconnects
        rec["last_recv_ns"] = st.last_recv_ns
        if self.hist.dirty:
            self.status.add_histogram(Hop.FEED_RECV_TO_WRITE, self.hist.drain())
        counters = [0] * len(FeedCounter)
        counters[FeedCounter.FRAMES] = st.frames
        counters[FeedCounter.QUOTES] = st.quotes
        counters[FeedCounter.PARSE_ERRORS] = st.parse_errors
        counters[FeedCounter.UNKNOWN_SYMBOLS] = st.unknown_symbols
        counters[FeedCounter.RECONNECTS] = st.reconnects
        self.status.heartbeat(slot, counters)


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
    feed = FeedConnection(cfg, venue, venue_idx, spec, writer, status, publisher)
    status.register_proc(ctx.slot, f"feed-{venue}", Role.FEED, os.getpid())
    url = feed_url(ctx, venue, spec)
    hb_task = asyncio.create_task(_heartbeat(ctx, feed, stop))
    try:
        status.set_proc_state(ctx.slot, ProcState.RUNNING)
        await _connect_loop(ctx, feed, url, stop)
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


async def _connect_loop(ctx: RunContext, feed: FeedConnection, url: str, stop: asyncio.Event) -> None:
    fcfg = ctx.cfg.feed
    delays = backoff_delays(fcfg.reconnect_initial_ms, fcfg.reconnect_max_ms, random.Random())
    first = True
    while not stop.is_set():
        if not first:
            feed.stats.reconnects += 1
        first = False
        feed.status.set_feed_state(feed.venue_idx, FeedState.CONNECTING)
        try:
            transport, _ = await picows.ws_connect(
                lambda: _Listener(feed), url, extra_headers=dict(feed.spec.extra_headers) or None,
                websocket_handshake_timeout=5,
            )
        except (TimeoutError, OSError, picows.WSError) as e:
            feed.status.set_feed_state(feed.venue_idx, FeedState.DOWN)
            delay = next(delays)
            log.warning("%s: connect to %s failed (%s); retry in %.0f ms", feed.venue, url, e, delay * 1000)
            await _sleep_or_stop(stop, delay)
            continue
        delays = backoff_delays(fcfg.reconnect_initial_ms, fcfg.reconnect_max_ms, random.Random())
        stop_wait = asyncio.create_task(stop.wait())
        closed = asyncio.create_task(transport.wait_disconnected())
        await asyncio.wait({stop_wait, closed}, return_when=asyncio.FIRST_COMPLETED)
        stop_wait.cancel()
        if not closed.done():
            transport.send_close()
            transport.disconnect()
            await closed
            return
        log.warning("%s: disconnected", feed.venue)
        await _sleep_or_stop(stop, next(delays))


async def _sleep_or_stop(stop: asyncio.Event, delay: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), delay)
    except TimeoutError:
        pass


async def _heartbeat(ctx: RunContext, feed: FeedConnection, stop: asyncio.Event) -> None:
    fcfg = ctx.cfg.feed
    silent_ns = fcfg.silent_reconnect_ms * 1_000_000
    period = fcfg.heartbeat_ms / 1000.0
    last_event = 0
    while not stop.is_set():
        await asyncio.sleep(period)
        feed.flush(ctx.slot)
        t = now_ns()
        tr = feed.transport
        if tr is not None and t - feed.stats.last_recv_ns > silent_ns:
            # open but silent (e.g. a wrong routed path fails silently): drop and reconnect
            log.warning("%s: silent for %d ms, reconnecting", feed.venue, fcfg.silent_reconnect_ms)
            feed.status.set_feed_state(feed.venue_idx, FeedState.STALE)
            tr.disconnect()
        if feed.publisher is not None and t - last_event > 1_000_000_000:
            last_event = t
            feed.publisher.heartbeat("connected" if tr is not None else "down")


def main(argv: list[str] | None = None) -> int:
    args = child_args("feed", argv, venue=True)
    die_with_parent()
    setup_logging(f"feed-{args.venue}")
    ctx = load_run(args.run_dir, args.slot)
    if args.venue not in ctx.cfg.venues:
        log.error("unknown venue %r; configured: %s", args.venue, ", ".join(ctx.cfg.venues))
        return 2
    import uvloop

    async def amain() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run_feed(ctx, args.venue, stop)

    uvloop.run(amain())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
