"""The generic ccxt.pro feed for real: ccxt's own client against the demo market on loopback.

The demo market serves the example config's Binance USDⓈ-M venue with its
bookTicker protocol; the feed config gives that venue the feed
`ccxt:binanceusdm` with ccxt unified symbols and preset markets, so ccxt never
calls a venue. A second, plain picows client subscribed to the same streams
records every frame the market sent. Real board and status segments, the feed
in-process (the feed process does not dispatch `ccxt:` feeds yet).

Config validation does not accept `ccxt:` feeds yet either, so the feed's
config is the validated example config with one venue replaced
(`msgspec.structs.replace`); the market runs on the unmodified config.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import msgspec
import orjson
import picows
import pytest
import uvloop
from kit import DATA, make_config, segments, unique_run_id

from perpbot.clock import now_ns
from perpbot.config import Config, VenueConfig
from perpbot.feeds.ccxt_generic import CcxtFeedError, CcxtVenueFeed, load_markets_file, run_ccxt_feed
from perpbot.runctx import RunContext
from perpbot.shm import QuoteBoard
from perpbot.shm.layout import FeedKind, FeedState, ProcState
from perpbot.sim.server import DemoMarket, serve_market

DEADLINE_S = 20.0
SYMBOLS = {"BTC-PERP": "BTC/USDT:USDT", "ETH-PERP": "ETH/USDT:USDT"}
#: the example config's venue that the demo market serves with the Binance USDⓈ-M protocol
VENUE = next(v for v, vc in make_config().venues.items() if vc.feed == "binanceusdm")
NATIVE = {bs: make_config().venues[VENUE].symbols[bs] for bs in SYMBOLS}  # BTCUSDT, ETHUSDT
MARKETS = load_markets_file(DATA / "ccxt" / "binanceusdm-markets.json")
LOOPS: dict[str, Callable[[Coroutine[Any, Any, None]], None]] = {"asyncio": asyncio.run, "uvloop": uvloop.run}


def market_config(**feed: int) -> Config:
    # a quick market so that a few seconds give hundreds of quotes
    return make_config(feed={"heartbeat_ms": 50, **feed})


def ccxt_config(cfg: Config, symbols: dict[str, str] = SYMBOLS, url: str | None = None) -> Config:
    venues = dict(cfg.venues)
    venues[VENUE] = VenueConfig(feed="ccxt:binanceusdm", symbols=symbols, taker_fee_bps=5.0, url=url)
    return msgspec.structs.replace(cfg, venues=venues)


def run_context(cfg: Config, run_id: str, tmp: Path, market: DemoMarket) -> RunContext:
    return RunContext(run_id, tmp, tmp, cfg, 1, market.urls)


class Recorder(picows.WSListener):
    """A plain client on the market's native path: every bookTicker frame it sends, as floats."""

    def __init__(self) -> None:
        #: venue symbol -> {(bid, ask, bid_size, ask_size, ts_exchange_ns)}
        self.frames: dict[str, set[tuple[float, float, float, float, int]]] = {s: set() for s in NATIVE.values()}
        self.last: dict[str, tuple[float, float, float, float, int]] = {}

    def on_ws_connected(self, transport: picows.WSTransport) -> None:
        params = [f"{s.lower()}@bookTicker" for s in NATIVE.values()]
        transport.send(picows.WSMsgType.TEXT, orjson.dumps({"method": "SUBSCRIBE", "params": params, "id": 1}))

    def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
        if frame.msg_type is not picows.WSMsgType.TEXT:
            return
        d = orjson.loads(frame.get_payload_as_bytes()).get("data")
        if d is None:
            return
        rec = (float(d["b"]), float(d["a"]), float(d["B"]), float(d["A"]), d["E"] * 1_000_000)
        self.frames[d["s"]].add(rec)
        self.last[d["s"]] = rec


async def until(what: str, cond: Callable[[], bool], feed: asyncio.Task[None] | None = None) -> None:
    end = time.monotonic() + DEADLINE_S
    while not cond():
        if feed is not None and feed.done():
            feed.result()  # raises the feed's exception, if any
            raise AssertionError(f"feed ended while waiting for {what}")
        assert time.monotonic() < end, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def slot(board: QuoteBoard, cfg: Config, board_symbol: str) -> Any:
    return board.read(cfg.venue_names.index(VENUE), cfg.symbol_names.index(board_symbol))


async def other_tasks_settle() -> list[asyncio.Task[Any]]:
    """Tasks still alive besides this one, after a grace period for ccxt's fire-and-forget closes."""
    end = time.monotonic() + 2.0
    while True:
        left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()]
        if not left or time.monotonic() > end:
            return left
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("loop", list(LOOPS))
def test_ccxt_feed_writes_exactly_what_the_market_sent(loop: str, tmp_path: Path) -> None:
    cfg = market_config()
    fcfg = ccxt_config(cfg)
    vi = cfg.venue_names.index(VENUE)
    run_id = unique_run_id()

    async def scenario() -> None:
        market = await serve_market(cfg)
        recorder = Recorder()
        rec_tr, _ = await picows.ws_connect(lambda: recorder, market.urls[VENUE])
        states: list[FeedState] = []
        try:
            with segments(cfg, run_id) as (board, status):
                stop = asyncio.Event()
                feed = asyncio.create_task(
                    run_ccxt_feed(run_context(fcfg, run_id, tmp_path, market), VENUE, stop, markets=MARKETS))

                def seen_state() -> FeedState:
                    s = status.feed_state(vi)
                    if not states or states[-1] != s:
                        states.append(s)
                    return s

                await until("CONNECTED", lambda: seen_state() == FeedState.CONNECTED, feed)
                assert status.feeds[vi]["kind"] == FeedKind.CCXT
                # and `perpbot-ctl status` says it is the slower kind
                from perpbot.summary import status_report
                assert "slower" in status_report(status, "r", [])["feeds"][VENUE]["kind"]
                assert status.procs[1]["state"] == ProcState.RUNNING
                assert status.procs[1]["name"] == f"feed-{VENUE}".encode()
                await until("100 quotes on the board", lambda: status.feeds[vi]["quotes"] >= 100, feed)

                # every quote on the board is a frame the market sent, with its exchange time
                samples = []
                for _ in range(40):
                    for bs in SYMBOLS:
                        q = slot(board, cfg, bs)
                        assert q is not None
                        samples.append((bs, q))
                    seen_state()
                    await asyncio.sleep(0.01)
                await asyncio.sleep(0.2)  # let the recorder read what was sent meanwhile
                for bs, q in samples:
                    assert (q.bid, q.ask, q.bid_size, q.ask_size, q.ts_exchange_ns) in recorder.frames[NATIVE[bs]], q
                    assert 0 < q.ts_recv_ns <= q.ts_write_ns <= now_ns()
                    assert q.ts_exchange_ns > 1_700_000_000_000 * 1_000_000
                assert len({q.seq for _, q in samples}) > 10  # it kept moving
                assert slot(board, cfg, "SOL-PERP") is None  # not configured for this venue
                other = (vi + 1) % len(cfg.venue_names)
                assert all(board.read(other, si) is None for si in range(len(cfg.symbol_names)))  # not its row

                # the market stops: the board holds its very last quote, then the row goes DOWN
                await market.close()
                await until("DOWN after the market closed", lambda: seen_state() != FeedState.CONNECTED, feed)
                await asyncio.sleep(0.2)
                for bs in SYMBOLS:
                    q = slot(board, cfg, bs)
                    want = market.model.quote(VENUE, bs)
                    p, s = market.model.price_decimals(bs), market.model.size_decimals(bs)
                    printed = tuple(float(f"{v:.{d}f}") for v, d in (
                        (want.bid, p), (want.ask, p), (want.bid_size, s), (want.ask_size, s)))
                    assert (q.bid, q.ask, q.bid_size, q.ask_size) == printed
                    assert (q.bid, q.ask, q.bid_size, q.ask_size, q.ts_exchange_ns) == recorder.last[NATIVE[bs]]

                stop.set()
                await asyncio.wait_for(feed, DEADLINE_S)
                assert status.feed_state(vi) == FeedState.DOWN
                assert status.procs[1]["state"] == ProcState.STOPPED
                assert status.feeds[vi]["quotes"] >= 100
                assert status.feeds[vi]["frames"] >= status.feeds[vi]["quotes"]
                assert status.feeds[vi]["parse_errors"] == 0
                assert sum(status.histogram(0)) == status.feeds[vi]["quotes"]  # FEED_RECV_TO_WRITE, flushed
                # (the first state seen may be the fresh segment's DOWN, before the feed task ran)
                assert FeedState.CONNECTED in states and states[-1] == FeedState.DOWN
        finally:
            rec_tr.disconnect()
            await market.close()
        left = await other_tasks_settle()
        assert not left, f"tasks left running: {left}"

    LOOPS[loop](scenario())


def test_ccxt_feed_reconnects_after_the_venue_drops_it(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = market_config(reconnect_initial_ms=50, reconnect_max_ms=200)
    fcfg = ccxt_config(cfg)
    vi = cfg.venue_names.index(VENUE)
    run_id = unique_run_id()
    caplog.set_level(logging.INFO, logger="perpbot.feed")

    async def scenario() -> None:
        market = await serve_market(cfg)
        try:
            with segments(cfg, run_id) as (board, status):
                stop = asyncio.Event()
                feed = asyncio.create_task(
                    run_ccxt_feed(run_context(fcfg, run_id, tmp_path, market), VENUE, stop, markets=MARKETS))
                await until("quotes", lambda: status.feeds[vi]["quotes"] >= 20, feed)
                before = status.feeds[vi]["quotes"]
                for c in market.venues[VENUE].clients:
                    assert c.transport is not None
                    c.transport.disconnect()  # the venue drops the connection without a close frame
                await until("DOWN at once", lambda: status.feed_state(vi) != FeedState.CONNECTED, feed)
                await until("CONNECTED again", lambda: status.feed_state(vi) == FeedState.CONNECTED, feed)
                await until("new quotes", lambda: status.feeds[vi]["quotes"] > before + 20, feed)
                await until("reconnect counted", lambda: status.feeds[vi]["reconnects"] >= 1, feed)
                assert market.statistics().connections >= 2
                stop.set()
                await asyncio.wait_for(feed, DEADLINE_S)
                assert status.feed_state(vi) == FeedState.DOWN
                assert status.procs[1]["state"] == ProcState.STOPPED
        finally:
            await market.close()

    asyncio.run(scenario())
    text = caplog.text
    assert "ccxt.pro generic feed (slower than native)" in text  # said at start-up
    assert "watch failed" in text and "retry in" in text


def test_ccxt_feed_drops_a_silent_connection(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = market_config(silent_reconnect_ms=400, reconnect_initial_ms=50, reconnect_max_ms=100)
    vi = cfg.venue_names.index(VENUE)
    run_id = unique_run_id()
    caplog.set_level(logging.INFO, logger="perpbot.feed")

    async def scenario() -> None:
        market = await serve_market(cfg)
        # a wrong routed path is answered but never gets data, like Binance's legacy root path
        host_port = market.urls[VENUE].split("/public/")[0]
        fcfg = ccxt_config(cfg, url=f"{host_port}/nowhere/ws")
        try:
            with segments(cfg, run_id) as (board, status):
                stop = asyncio.Event()
                feed = asyncio.create_task(
                    run_ccxt_feed(run_context(fcfg, run_id, tmp_path, market), VENUE, stop, markets=MARKETS))
                await until("two silent reconnects", lambda: status.feeds[vi]["reconnects"] >= 2, feed)
                assert status.feed_state(vi) != FeedState.CONNECTED
                assert status.feeds[vi]["quotes"] == 0
                assert slot(board, cfg, "BTC-PERP") is None
                stop.set()
                await asyncio.wait_for(feed, DEADLINE_S)
                assert status.feed_state(vi) == FeedState.DOWN
        finally:
            await market.close()

    asyncio.run(scenario())
    assert "silent for 400 ms, reconnecting" in caplog.text


def test_unknown_symbol_faults_the_feed_without_retrying(tmp_path: Path) -> None:
    cfg = market_config()
    fcfg = ccxt_config(cfg, symbols={"BTC-PERP": "BTC/USDT:USDT", "SOL-PERP": "SOL/USDT"})
    vi = cfg.venue_names.index(VENUE)
    run_id = unique_run_id()

    async def scenario() -> None:
        market = await serve_market(cfg)
        try:
            with segments(cfg, run_id) as (board, status):
                stop = asyncio.Event()
                with pytest.raises(CcxtFeedError, match="has no market 'SOL/USDT'"):
                    await asyncio.wait_for(
                        run_ccxt_feed(run_context(fcfg, run_id, tmp_path, market), VENUE, stop, markets=MARKETS),
                        DEADLINE_S)
                assert status.procs[1]["state"] == ProcState.FAULTED
                assert status.feed_state(vi) == FeedState.DOWN
                assert status.feeds[vi]["reconnects"] == 0
        finally:
            await market.close()

    asyncio.run(scenario())


def test_loopback_mode_needs_preset_markets(tmp_path: Path) -> None:
    cfg = market_config()
    fcfg = ccxt_config(cfg)

    async def scenario() -> None:
        ctx = RunContext(unique_run_id(), tmp_path, tmp_path, fcfg, 1, {VENUE: "ws://127.0.0.1:9/public/stream"})
        with pytest.raises(CcxtFeedError, match="no venue REST API"):
            await run_ccxt_feed(ctx, VENUE, asyncio.Event())

    asyncio.run(scenario())


class FakeExchange:
    """Just enough of a ccxt.pro exchange to drive `CcxtVenueFeed.watch` by hand."""

    id = "fake"

    def __init__(self, has_bids_asks: bool) -> None:
        self.has = {"watchBidsAsks": has_bids_asks, "watchOrderBook": True}
        self.markets = MARKETS
        self.bidsasks: dict[str, Any] = {}
        self.updates: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.books: dict[str, asyncio.Queue[dict[str, Any]]] = {s: asyncio.Queue() for s in SYMBOLS.values()}

    async def load_markets(self) -> Any:
        return self.markets

    async def watch_bids_asks(self, symbols: list[str]) -> dict[str, Any]:
        t = await self.updates.get()
        self.bidsasks[t["symbol"]] = t  # as ccxt does: cache, then resolve with the same dict
        return {t["symbol"]: t}

    async def watch_order_book(self, symbol: str, limit: int | None = None) -> dict[str, Any]:
        return await self.books[symbol].get()


def _feed(cfg: Config, board: QuoteBoard, status: Any) -> CcxtVenueFeed:
    vi = cfg.venue_names.index(VENUE)
    return CcxtVenueFeed(cfg, VENUE, vi, board.writer(vi), status, None)


def test_a_new_session_never_rewrites_quotes_ccxt_cached_before_it() -> None:
    cfg = ccxt_config(market_config())
    t_ms = 1_790_000_000_000

    async def scenario() -> None:
        with segments(cfg) as (board, status):
            feed = _feed(cfg, board, status)
            ex = FakeExchange(has_bids_asks=True)
            # ccxt still holds ETH from the previous connection
            ex.bidsasks["ETH/USDT:USDT"] = {"symbol": "ETH/USDT:USDT", "bid": 1.0, "ask": 2.0, "bidVolume": 1.0,
                                            "askVolume": 1.0, "timestamp": t_ms}
            task = asyncio.create_task(feed.watch(ex, "auto", None))
            await ex.updates.put({"symbol": "BTC/USDT:USDT", "bid": 60000.0, "ask": 60000.5, "bidVolume": 2.0,
                                  "askVolume": 3.0, "timestamp": t_ms + 1})
            await until("BTC written", lambda: slot(board, cfg, "BTC-PERP") is not None)
            await asyncio.sleep(0.05)
            assert slot(board, cfg, "ETH-PERP") is None  # the old ETH quote was not presented as new
            q = slot(board, cfg, "BTC-PERP")
            assert (q.bid, q.ask, q.bid_size, q.ask_size, q.ts_exchange_ns) == (
                60000.0, 60000.5, 2.0, 3.0, (t_ms + 1) * 1_000_000)
            assert status.feed_state(cfg.venue_names.index(VENUE)) == FeedState.CONNECTED
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            feed.writer.release()

    asyncio.run(scenario())


def test_order_book_path_writes_each_top_of_book_in_base_units() -> None:
    raw = market_config()
    venues = dict(raw.venues)
    venues[VENUE] = VenueConfig(feed="ccxt:binanceusdm", symbols=SYMBOLS, taker_fee_bps=5.0,
                                contract_sizes={"BTC-PERP": 0.01})  # the config's size wins over the market's 1
    cfg = msgspec.structs.replace(raw, venues=venues)

    async def scenario() -> None:
        with segments(cfg) as (board, status):
            feed = _feed(cfg, board, status)
            ex = FakeExchange(has_bids_asks=False)
            task = asyncio.create_task(feed.watch(ex, "auto", None))
            await ex.books["BTC/USDT:USDT"].put({"bids": [[60000.0, 250.0], [59999.0, 1.0]],
                                                 "asks": [[60000.5, 100.0]], "timestamp": 1_790_000_000_000})
            await ex.books["ETH/USDT:USDT"].put({"bids": [], "asks": [[3000.5, 1.0]], "timestamp": None})
            await ex.books["ETH/USDT:USDT"].put({"bids": [[3000.0, 4.0]], "asks": [[3000.5, 5.0]], "timestamp": None})
            await until("both symbols", lambda: slot(board, cfg, "ETH-PERP") is not None
                        and slot(board, cfg, "BTC-PERP") is not None)
            btc, eth = slot(board, cfg, "BTC-PERP"), slot(board, cfg, "ETH-PERP")
            assert (btc.bid, btc.ask, btc.bid_size, btc.ask_size) == (60000.0, 60000.5, 2.5, 1.0)
            assert btc.ts_exchange_ns == 1_790_000_000_000 * 1_000_000
            assert (eth.bid, eth.ask, eth.bid_size, eth.ask_size, eth.ts_exchange_ns) == (3000.0, 3000.5, 4.0, 5.0, 0)
            stats = feed.statistics()
            assert (stats.updates, stats.quotes, stats.one_sided) == (3, 2, 1)  # the one-sided book wrote nothing
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            feed.writer.release()

    asyncio.run(scenario())
