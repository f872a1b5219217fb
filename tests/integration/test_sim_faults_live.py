"""Scheduled faults on the demo market's real loopback servers, seen by a websocket client.

Each case starts the market in process with a `demo.faults` schedule, connects
the way the venue's feed does (its URL, its subscribe frames, its parser) and
watches the fault happen. Every wait is bounded by a generous deadline on
observable state (frames, connection state, the server's flags and logs);
nothing asserts how fast anything happens.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, NamedTuple

import orjson
import picows
import pytest
import uvloop
from kit import example_raw

from perpbot.config import Config, parse_config
from perpbot.feeds.registry import get_feed
from perpbot.feeds.spec import BBO, ParserContext
from perpbot.sim.faults import MarketFaultKind
from perpbot.sim.server import DemoMarket, VenueServer, serve_market

#: generous deadline for a loaded 2-core machine; nothing asserts how fast things happen
DEADLINE_S = 15.0
#: the schedule starts this long after the market: time for the client to connect and see quotes
AT_S = 1.0


def config(venues: tuple[str, ...], faults: list[dict[str, Any]]) -> Config:
    raw = example_raw()
    raw["venues"] = {v: raw["venues"][v] for v in venues}
    raw["demo"]["venues"] = {v: raw["demo"]["venues"][v] for v in venues}
    raw["demo"]["faults"] = faults
    return parse_config(raw)


class Seen(NamedTuple):
    payload: bytes
    binary: bool
    quotes: tuple[BBO, ...] | None  # None: the venue's parser refused the frame
    during: bool  # the watched server flag was set when the frame arrived


class Recorder(picows.WSListener):
    """Every frame received, with what the venue's own parser made of it."""

    def __init__(self, venue: str, cfg: Config, flag: Callable[[], bool] = lambda: False) -> None:
        super().__init__()
        vc = cfg.venues[venue]
        self.spec = get_feed(vc.feed)
        self.parse = self.spec.make_parser(ParserContext(
            {vc.symbols[s]: c for s, c in vc.contract_sizes.items()}))
        self.symbols = list(vc.symbols.values())
        self.flag = flag
        self.seen: list[Seen] = []
        self.close_code: picows.WSCloseCode | None = None
        self.changed = asyncio.Event()
        self.transport: picows.WSTransport | None = None

    def on_ws_connected(self, transport: picows.WSTransport) -> None:
        self.transport = transport
        for frame in self.spec.subscribe(self.symbols):
            transport.send(picows.WSMsgType.TEXT, frame)

    def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
        mt = frame.msg_type
        if mt == picows.WSMsgType.CLOSE:
            self.close_code = frame.get_close_code()
            transport.disconnect()
        elif mt in (picows.WSMsgType.TEXT, picows.WSMsgType.BINARY):
            payload = frame.get_payload_as_bytes()
            binary = mt == picows.WSMsgType.BINARY
            try:
                quotes: tuple[BBO, ...] | None = tuple(self.parse(payload, binary))
            except Exception:
                quotes = None
            self.seen.append(Seen(payload, binary, quotes, self.flag()))
        self.changed.set()

    def on_ws_disconnected(self, transport: picows.WSTransport) -> None:
        self.changed.set()

    async def until(self, what: Callable[[], bool], deadline_s: float = DEADLINE_S) -> None:
        """Wait (bounded) until `what()` holds, checking after every frame or disconnect."""
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline_s
        while not what():
            left = end - loop.time()
            assert left > 0, "timed out waiting"
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), min(left, 0.05))
            except TimeoutError:
                pass

    @property
    def quotes(self) -> list[BBO]:
        return [q for s in self.seen if s.quotes for q in s.quotes]

    @property
    def closed(self) -> bool:
        return self.transport is not None and self.transport.is_disconnected


async def connect(market: DemoMarket, venue: str, flag: Callable[[], bool] = lambda: False) -> Recorder:
    tr, rec = await picows.ws_connect(lambda: Recorder(venue, market.cfg, flag), market.urls[venue])
    assert isinstance(rec, Recorder)
    return rec


async def until(what: Callable[[], bool], deadline_s: float = DEADLINE_S) -> None:
    """Wait (bounded) until `what()` holds, polling."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    while not what():
        assert loop.time() < end, "timed out waiting"
        await asyncio.sleep(0.01)


def logged(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage().startswith(text)]


def in_force(server: VenueServer, kind: MarketFaultKind) -> Callable[[], bool]:
    return lambda: any(f.kind is kind for f in server.faults)


def newer_than(s: Seen, record: logging.LogRecord) -> bool:
    """The frame carries a quote stamped after the log line (so it was sent after it)."""
    return bool(s.quotes) and s.quotes[0].ts_exchange_ns > record.created * 1e9  # type: ignore[index]


@pytest.fixture(autouse=True)
def _warnings(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="perpbot.sim")


def test_drop_closes_every_connection_and_clients_reconnect(caplog: pytest.LogCaptureFixture) -> None:
    cfg = config(("binanceusdm", "bybit"), [{"at_s": AT_S, "venue": "binanceusdm", "kind": "drop"}])

    async def scenario() -> None:
        async with await serve_market(cfg) as market:
            a = await connect(market, "binanceusdm")
            b = await connect(market, "binanceusdm")
            other = await connect(market, "bybit")
            await a.until(lambda: len(a.quotes) > 0)
            await a.until(lambda: a.closed)
            await b.until(lambda: b.closed)
            assert a.close_code == b.close_code == picows.WSCloseCode.SERVICE_RESTART
            assert not other.closed  # only the faulted venue restarted
            again = await connect(market, "binanceusdm")  # at once
            await again.until(lambda: len(again.quotes) > 0)
            assert logged(caplog, "fault drop on binanceusdm started")
            assert logged(caplog, "fault drop on binanceusdm ended")
            assert market.error() is None

    uvloop.run(scenario())


def test_stall_sends_nothing_then_resumes(caplog: pytest.LogCaptureFixture) -> None:
    cfg = config(("binanceusdm", "okx"), [{"at_s": AT_S, "venue": "binanceusdm", "kind": "stall", "for_s": 2}])

    async def scenario() -> None:
        async with await serve_market(cfg) as market:
            server = market.venues["binanceusdm"]
            c = await connect(market, "binanceusdm", lambda: server.stalled)
            await c.until(lambda: len(c.quotes) > 0)
            await until(lambda: server.stalled)
            assert c.transport is not None
            # a request during the stall is never answered (dropped, not delayed)
            c.transport.send(picows.WSMsgType.TEXT, b'{"method":"LIST_SUBSCRIPTIONS","id":77}')
            await until(lambda: not server.stalled)
            c.transport.send(picows.WSMsgType.TEXT, b'{"method":"LIST_SUBSCRIPTIONS","id":78}')
            await c.until(lambda: any(b'"id":78' in s.payload for s in c.seen))
            assert not any(b'"id":77' in s.payload for s in c.seen)
            (started,) = logged(caplog, "fault stall on binanceusdm started")
            assert logged(caplog, "fault stall on binanceusdm ended")
            # what arrived while the server stalled was in flight before: stamped before the start
            start_ms = started.created * 1000
            for s in c.seen:
                if s.during:
                    assert orjson.loads(s.payload)["data"]["T"] <= start_ms + 1
            n_before_end = sum(1 for s in c.seen if not s.during)
            await c.until(lambda: len(c.quotes) > n_before_end + 5)  # quotes flow again
            assert not c.closed

    uvloop.run(scenario())


@pytest.mark.parametrize("venue", ["binanceusdm", "paradex"])
def test_garbage_mixes_malformed_frames_with_quotes_then_stops(venue: str,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    cfg = config(("binanceusdm", "paradex"), [{"at_s": AT_S, "venue": venue, "kind": "garbage", "for_s": 1.5}])

    async def scenario() -> None:
        async with await serve_market(cfg) as market:
            server = market.venues[venue]
            c = await connect(market, venue, in_force(server, MarketFaultKind.GARBAGE))
            await c.until(lambda: len(c.quotes) > 0)
            assert all(s.quotes is not None for s in c.seen)  # nothing malformed before
            await c.until(lambda: sum(1 for s in c.seen if s.quotes is None) >= 8)
            bad = [s for s in c.seen if s.quotes is None]
            assert all(s.during for s in bad)
            if venue == "paradex":
                assert any(s.binary for s in bad) and any(not s.binary for s in bad)
            assert any(s.during and s.quotes for s in c.seen)  # the normal quotes keep flowing
            await until(lambda: logged(caplog, f"fault garbage on {venue} ended") != [])
            (ended,) = logged(caplog, f"fault garbage on {venue} ended")
            # then normal: everything after the first quote stamped after the end parses
            await c.until(lambda: sum(1 for s in c.seen if newer_than(s, ended)) >= 10)
            first = next(i for i, s in enumerate(c.seen) if newer_than(s, ended))
            assert all(s.quotes is not None for s in c.seen[first:])
            assert not c.closed

    uvloop.run(scenario())


def test_crossed_quotes_one_symbol_then_normal(caplog: pytest.LogCaptureFixture) -> None:
    cfg = config(("binanceusdm", "okx"), [
        {"at_s": AT_S, "venue": "binanceusdm", "kind": "crossed", "for_s": 1.5, "symbol": "BTC-PERP"}])

    def bids_asks(c: Recorder, symbol: str, after_ms: float = 0.0) -> list[tuple[float, float]]:
        """(bid, ask) of every frame for the symbol stamped after `after_ms`, read off the raw JSON."""
        out = []
        for s in c.seen:
            d = orjson.loads(s.payload).get("data")
            if isinstance(d, dict) and d.get("s") == symbol and d["T"] > after_ms:
                out.append((float(d["b"]), float(d["a"])))
        return out

    async def scenario() -> None:
        async with await serve_market(cfg) as market:
            c = await connect(market, "binanceusdm")
            await c.until(lambda: any(b > a for b, a in bids_asks(c, "BTCUSDT")))
            assert all(b < a for b, a in bids_asks(c, "ETHUSDT"))
            assert all(b < a for b, a in bids_asks(c, "SOLUSDT"))
            # the feed's parser refuses them as crossed
            assert any(s.quotes is None and b'BTCUSDT' in s.payload for s in c.seen)
            await until(lambda: logged(caplog, "fault crossed on binanceusdm ended") != [])
            (ended,) = logged(caplog, "fault crossed on binanceusdm ended")
            end_ms = ended.created * 1000
            await c.until(lambda: len(bids_asks(c, "BTCUSDT", end_ms)) >= 5)
            assert all(b < a for b, a in bids_asks(c, "BTCUSDT", end_ms))  # then normal
            assert logged(caplog, "fault crossed on binanceusdm started: demo.faults[0], BTC-PERP, for 1.5 s")

    uvloop.run(scenario())


@pytest.mark.parametrize(("venue", "symbol"), [("binanceusdm", "BTCUSDT"), ("bybit", "BTCUSDT")])
def test_stale_repeats_the_same_old_quote_then_moves_on(venue: str, symbol: str,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    cfg = config(("binanceusdm", "bybit"), [
        {"at_s": AT_S, "venue": venue, "kind": "stale", "for_s": 2, "symbol": "BTC-PERP"}])

    async def scenario() -> None:
        async with await serve_market(cfg) as market:
            server = market.venues[venue]
            c = await connect(market, venue, lambda: any(server._stale))

            def frames(sym: str) -> list[Seen]:
                return [s for s in c.seen if s.quotes and s.quotes[0].symbol == sym]

            def repeats() -> int:
                """Length of the longest run of identical consecutive payloads for the symbol."""
                best = run = 0
                prev = None
                for s in frames(symbol):
                    run = run + 1 if s.payload == prev else 1
                    prev = s.payload
                    best = max(best, run)
                return best

            await c.until(lambda: repeats() >= 4)
            stale = [s for s in frames(symbol) if s.during]
            frozen = stale[-1].quotes
            assert frozen is not None
            first = next(i for i, s in enumerate(stale) if s.quotes == frozen)
            assert first <= 2  # at most frames in flight when it started
            assert all(s.quotes == frozen for s in stale[first:])  # same prices, same exchange timestamp
            during_eth = [s.payload for s in c.seen if s.during and s.quotes and s.quotes[0].symbol == "ETHUSDT"]
            assert len(set(during_eth)) == len(during_eth)  # the other symbols move on
            await until(lambda: logged(caplog, f"fault stale on {venue} ended") != [])
            (ended,) = logged(caplog, f"fault stale on {venue} ended")
            await c.until(lambda: sum(1 for s in frames(symbol) if newer_than(s, ended)) >= 3)
            later = frames(symbol)
            later = later[next(i for i, s in enumerate(later) if newer_than(s, ended)):]
            assert all(s.quotes != frozen for s in later)  # then it moves on
            assert all(s.quotes is not None for s in c.seen)  # the parser never lost its book

    uvloop.run(scenario())


def test_refuse_drops_then_refuses_handshakes_then_accepts(caplog: pytest.LogCaptureFixture) -> None:
    cfg = config(("binanceusdm", "okx"), [{"at_s": AT_S, "venue": "binanceusdm", "kind": "refuse", "for_s": 2}])

    async def scenario() -> None:
        async with await serve_market(cfg) as market:
            server = market.venues["binanceusdm"]
            c = await connect(market, "binanceusdm")
            await c.until(lambda: c.closed)
            assert c.close_code == picows.WSCloseCode.SERVICE_RESTART
            failures = 0
            accepted_while_refusing = 0
            loop = asyncio.get_running_loop()
            end = loop.time() + DEADLINE_S
            while True:
                assert loop.time() < end, "never accepted again"
                refusing = server.refusing
                try:
                    tr, rec = await picows.ws_connect(lambda: Recorder("binanceusdm", cfg), market.urls["binanceusdm"])
                except picows.WSError:
                    failures += 1
                    assert refusing or server.refusing  # a refusal happens only in the window
                    await asyncio.sleep(0.05)
                    continue
                if refusing and server.refusing:
                    accepted_while_refusing += 1
                break
            assert failures > 0 and server.refused >= failures
            assert accepted_while_refusing == 0
            assert isinstance(rec, Recorder)
            await rec.until(lambda: len(rec.quotes) > 0)
            assert logged(caplog, "fault refuse on binanceusdm started")
            assert logged(caplog, "fault refuse on binanceusdm ended")
            tr.disconnect()

    uvloop.run(scenario())
