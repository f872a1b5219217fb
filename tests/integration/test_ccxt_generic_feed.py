"""The generic ccxt.pro feed for real: ccxt's own client against the demo market on loopback.

The demo market serves one venue ("okx" in the example config, speaking
Binance USDⓈ-M bookTicker); the feed config gives that venue the feed
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
from perpbot.feeds.ccxt_generic import CcxtFeedError, load_markets_file, run_ccxt_feed
from perpbot.runctx import RunContext
from perpbot.shm import QuoteBoard
from perpbot.shm.layout import FeedKind, FeedState, ProcState
from perpbot.sim.server import DemoMarket, serve_market

DEADLINE_S = 20.0
VENUE = "okx"  # served by the demo market with the Binance USDⓈ-M protocol
SYMBOLS = {"BTC-PERP": "BTC/USDT:USDT", "ETH-PERP": "ETH/USDT:USDT"}
NATIVE = {"BTC-PERP": "BTCUSDT", "ETH-PERP": "ETHUSDT"}
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
                assert board.read(0, 0) is None  # other venues' rows untouched

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
