"""The demo market on real loopback sockets, in-process and as its own process."""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import orjson
import picows
import pytest
import uvloop
from kit import EXAMPLE_CONFIG, ROOT, example_raw, make_config, segments, unique_run_id

from perpbot.config import Config, load_config, parse_config
from perpbot.feeds import binanceusdm
from perpbot.feeds.registry import get_feed
from perpbot.feeds.spec import BBO, ParseError
from perpbot.runctx import CONFIG_COPY, write_run_file
from perpbot.shm.layout import ProcState, Role
from perpbot.sim.market import SimQuote
from perpbot.sim.process import MARKET_FILE, read_market_file
from perpbot.sim.protocol import Frame, Instrument, Session
from perpbot.sim.protocols.binanceusdm import BinanceUsdmProtocol
from perpbot.sim.server import DemoMarket, MarketCounter, VenueServer, serve_market

#: generous deadlines for a loaded 2-core machine; nothing asserts how fast things happen
DEADLINE_S = 10.0
T_MS = 1_700_000_000_000

Runner = Callable[[Coroutine[Any, Any, Any]], Any]
BINANCE_VENUES = ("binanceusdm", "okx", "bybit", "bitget")


def binance_config(**sections: dict[str, Any]) -> Config:
    """Four venues that all speak Binance USDⓈ-M: these tests read the frames of one protocol."""
    raw = example_raw()
    raw["venues"] = {
        v: {**raw["venues"][v], "feed": "binanceusdm", "contract_sizes": {},
            "symbols": {"BTC-PERP": "BTCUSDT", "ETH-PERP": "ETHUSDT", "SOL-PERP": "SOLUSDT"}}
        for v in BINANCE_VENUES
    }
    raw["demo"]["venues"] = {v: raw["demo"]["venues"][v] for v in BINANCE_VENUES}
    for name, values in sections.items():
        raw[name].update(values)
    return parse_config(raw)


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Runner:
    """Run a coroutine to completion under each event loop the project supports."""
    if request.param == "uvloop":
        return uvloop.run
    return asyncio.run


class Client(picows.WSListener):
    """A test client that queues every text frame it receives."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: asyncio.Queue[bytes] = asyncio.Queue()

    def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
        if frame.msg_type == picows.WSMsgType.TEXT:
            self.frames.put_nowait(frame.get_payload_as_bytes())
        elif frame.msg_type == picows.WSMsgType.CLOSE:
            transport.disconnect()

    async def next(self) -> bytes:
        return await asyncio.wait_for(self.frames.get(), DEADLINE_S)

    async def next_control(self) -> dict[str, Any]:
        """The next frame that is not market data (skipping data already in flight)."""
        while True:
            msg: dict[str, Any] = orjson.loads(await self.next())
            if "stream" not in msg:
                return msg

    async def quotes(self, n: int) -> list[BBO]:
        out: list[BBO] = []
        while len(out) < n:
            raw = await self.next()
            if b'"stream"' in raw:
                out.extend(binanceusdm.parse(raw))
        return out


async def connect(url: str) -> tuple[picows.WSTransport, Client]:
    tr, cl = await picows.ws_connect(Client, url)
    assert isinstance(cl, Client)
    return tr, cl


def send_json(tr: picows.WSTransport, msg: dict[str, Any]) -> None:
    tr.send(picows.WSMsgType.TEXT, orjson.dumps(msg))


def test_urls_name_each_venue_on_its_own_port_and_path(run: Runner) -> None:
    async def scenario() -> None:
        cfg = make_config()  # the example: every venue in its own protocol
        async with await serve_market(cfg) as market:
            urls = market.urls
            assert set(urls) == set(cfg.venue_names)
            ports = set()
            for venue, url in urls.items():
                host_port, _, path = url.removeprefix("ws://").partition("/")
                assert host_port.startswith("127.0.0.1:")
                assert "/" + path == get_feed(cfg.venues[venue].feed).demo_path
                assert market.venues[venue].proto.name == cfg.venues[venue].feed
                ports.add(host_port)
            assert len(ports) == len(urls)

    run(scenario())


def test_streams_in_the_url(run: Runner) -> None:
    async def scenario() -> None:
        async with await serve_market(binance_config()) as market:
            tr, cl = await connect(market.urls["okx"] + "?streams=btcusdt@bookTicker")
            raws = [await cl.next() for _ in range(10)]
            update_ids = []
            for raw in raws:
                (bbo,) = binanceusdm.parse(raw)
                assert bbo.symbol == "BTCUSDT"
                assert bbo.bid < bbo.ask
                update_ids.append(orjson.loads(raw)["data"]["u"])
            assert update_ids == sorted(set(update_ids))
            tr.disconnect()

    run(scenario())


def test_subscribe_and_unsubscribe_frames(run: Runner) -> None:
    async def scenario() -> None:
        async with await serve_market(binance_config()) as market:
            tr, cl = await connect(market.urls["bybit"])
            streams = ["ethusdt@bookTicker", "solusdt@bookTicker"]
            send_json(tr, {"method": "SUBSCRIBE", "params": streams, "id": 7})
            # nothing was subscribed before, so the ack is the very first frame
            assert orjson.loads(await cl.next()) == {"result": None, "id": 7}
            seen: set[str] = set()
            for _ in range(200):
                (bbo,) = binanceusdm.parse(await cl.next())
                assert bbo.symbol in {"ETHUSDT", "SOLUSDT"}
                seen.add(bbo.symbol)
                if len(seen) == 2:
                    break
            assert seen == {"ETHUSDT", "SOLUSDT"}

            send_json(tr, {"method": "UNSUBSCRIBE", "params": ["ethusdt@bookTicker"], "id": 8})
            assert await cl.next_control() == {"result": None, "id": 8}
            assert {q.symbol for q in await cl.quotes(10)} == {"SOLUSDT"}

            send_json(tr, {"method": "LIST_SUBSCRIPTIONS", "id": 9})
            assert await cl.next_control() == {"result": ["solusdt@bookTicker"], "id": 9}
            tr.disconnect()

    run(scenario())


def test_the_feeds_own_subscribe_frames_work(run: Runner) -> None:
    async def scenario() -> None:
        cfg = binance_config()
        async with await serve_market(cfg) as market:
            tr, cl = await connect(market.urls["bitget"])
            for frame in binanceusdm.SPEC.subscribe(list(cfg.venues["bitget"].symbols.values())):
                tr.send(picows.WSMsgType.TEXT, frame)
            assert binanceusdm.parse(await cl.next()) == []  # the ack
            symbols = {q.symbol for q in await cl.quotes(60)}
            assert symbols == {"BTCUSDT", "ETHUSDT", "SOLUSDT"}
            tr.disconnect()

    run(scenario())


def test_invalid_requests_get_error_replies(run: Runner) -> None:
    async def scenario() -> None:
        async with await serve_market(binance_config()) as market:
            tr, cl = await connect(market.urls["binanceusdm"])
            tr.send(picows.WSMsgType.TEXT, b"hello")
            raw = await cl.next()
            assert orjson.loads(raw)["error"]["code"] == 3
            with pytest.raises(ParseError) as ei:
                binanceusdm.parse(raw)
            assert ei.value.kind == "error_reply"
            send_json(tr, {"method": "SUBSCRIB", "params": ["btcusdt@bookTicker"], "id": 3})
            reply = orjson.loads(await cl.next())
            assert reply["error"]["code"] == 2 and reply["id"] == 3
            # the connection survives bad requests
            send_json(tr, {"method": "SUBSCRIBE", "params": ["btcusdt@bookTicker"], "id": 4})
            assert orjson.loads(await cl.next()) == {"result": None, "id": 4}
            assert {q.symbol for q in await cl.quotes(3)} == {"BTCUSDT"}
            tr.disconnect()

    run(scenario())


def test_wrong_path_is_accepted_but_silent(run: Runner) -> None:
    async def scenario() -> None:
        async with await serve_market(binance_config()) as market:
            base = market.urls["okx"].removesuffix(binanceusdm.SPEC.demo_path)
            bad_tr, bad = await connect(base + "/ws?streams=btcusdt@bookTicker")
            send_json(bad_tr, {"method": "SUBSCRIBE", "params": ["btcusdt@bookTicker"], "id": 1})
            good_tr, good = await connect(market.urls["okx"] + "?streams=btcusdt@bookTicker")
            # the window: as long as the good client takes to get several quotes
            await good.quotes(5)
            got = [orjson.loads(bad.frames.get_nowait()) for _ in range(bad.frames.qsize())]
            # acked, as the real venue does, and nothing else
            assert got == [{"result": None, "id": 1}]
            bad_tr.disconnect()
            good_tr.disconnect()

    run(scenario())


def test_a_paused_client_is_conflated_and_does_not_hold_up_others(run: Runner) -> None:
    async def scenario() -> None:
        async with await serve_market(binance_config()) as market:
            url = market.urls["binanceusdm"]
            slow_tr, slow = await connect(url + "?streams=btcusdt@bookTicker/ethusdt@bookTicker")
            fast_tr, fast = await connect(url + "?streams=btcusdt@bookTicker")
            await fast.quotes(1)
            (server_slow,) = [c for c in market.venues["binanceusdm"].clients if len(c.topics) == 2]
            # what the transport does when the socket buffer passes its high watermark
            server_slow.pause_writing()
            before = market.statistics().frames_conflated
            await fast.quotes(20)
            assert market.statistics().frames_conflated > before
            assert 1 <= len(server_slow.pending) <= 2  # only the latest frame per symbol is kept
            while not slow.frames.empty():
                slow.frames.get_nowait()
            latest = {orjson.loads(f.payload)["data"]["u"] for f in server_slow.pending.values()}
            server_slow.resume_writing()
            assert not server_slow.pending
            # the conflated frames are flushed on resume (after any sent before the pause)
            flushed: set[int] = set()
            for _ in range(10):
                flushed.add(orjson.loads(await slow.next())["data"]["u"])
                if latest <= flushed:
                    break
            assert latest <= flushed
            slow_tr.disconnect()
            fast_tr.disconnect()

    run(scenario())


def test_statistics_count_clients_frames_and_dislocations(run: Runner) -> None:
    async def scenario() -> DemoMarket:
        market = await serve_market(binance_config(demo={"dislocations_per_s": 20.0}))
        try:
            tr, cl = await connect(market.urls["okx"] + "?streams=solusdt@bookTicker")
            await cl.quotes(5)
            st = market.statistics()
            assert st.clients == 1 and st.connections == 1
            assert st.frames_sent >= 5
            assert st.quote_updates >= st.frames_sent
            counters = market.counters()
            assert counters[MarketCounter.CLIENTS] == 1
            assert counters[MarketCounter.FRAMES_SENT] >= 5
            tr.disconnect()
            await tr.wait_disconnected()
            deadline = time.monotonic() + DEADLINE_S
            while market.statistics().clients:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
            while market.statistics().dislocations_started == 0:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
            assert market.error() is None
        finally:
            await market.close()
        return market

    market = run(scenario())
    assert market.statistics().clients == 0


# -- the market as its own process ----------------------------------------------------------


async def _first_quote(url: str) -> BBO:
    tr, cl = await connect(url)
    try:
        (bbo,) = await cl.quotes(1)
        return bbo
    finally:
        tr.disconnect()


def _wait_for(
    cond: Callable[[], bool], proc: subprocess.Popen[bytes], log: Path, what: str
) -> None:
    deadline = time.monotonic() + 30.0
    while not cond():
        if proc.poll() is not None:
            pytest.fail(f"market exited with {proc.returncode} before {what}:\n{log.read_text()}")
        if time.monotonic() > deadline:
            pytest.fail(f"market not {what} in time:\n{log.read_text()}")
        time.sleep(0.02)  # polling interval, not a wait for something to happen


@pytest.mark.slow
def test_market_process_handshake_serve_and_stop(tmp_path: Path) -> None:
    cfg = load_config(EXAMPLE_CONFIG)
    run_id = unique_run_id()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_run_file(run_dir, run_id, tmp_path / "data", {})
    shutil.copy(EXAMPLE_CONFIG, run_dir / CONFIG_COPY)
    slot = 3
    log = tmp_path / "market.log"
    with segments(cfg, run_id) as (_board, status), open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "perpbot.sim.process",
             "--run-dir", str(run_dir), "--slot", str(slot)],
            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        )
        try:
            _wait_for(lambda: status.procs[slot]["state"] == ProcState.RUNNING, proc, log,
                      "RUNNING")
            # market.json is written before RUNNING is set, so it must be there now, whole
            urls = read_market_file(run_dir)
            assert urls is not None and set(urls) == set(cfg.venue_names)
            assert not (run_dir / (MARKET_FILE + ".tmp")).exists()
            rec = status.procs[slot]
            assert rec["pid"] == proc.pid and rec["name"] == b"market"
            assert rec["role"] == Role.MARKET
            del rec  # views on the segment must be gone before it is closed

            bbo = asyncio.run(_first_quote(urls["binanceusdm"] + "?streams=ethusdt@bookTicker"))
            assert bbo.symbol == "ETHUSDT"
            _wait_for(
                lambda: status.procs[slot]["counters"][MarketCounter.FRAMES_SENT] >= 1,
                proc, log, "heartbeating its counters",
            )

            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0, log.read_text()
            assert status.procs[slot]["state"] == ProcState.STOPPED
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


# -- the SimProtocol hooks, with a toy protocol and scripted quotes -------------------------


class Toy(BinanceUsdmProtocol):
    """Binance's topics and requests, plus a greeting, snapshots, binary requests and binary data."""

    def greeting(self) -> list[Frame]:
        return [Frame(b'{"hello":"toy"}')]

    def on_message(self, payload: bytes, binary: bool, session: Session) -> list[Frame]:
        if binary:
            return [Frame(b"echo:" + payload, binary=True)]
        if payload == b"known?":
            asked = ["btcusdt@bookTicker", "dogeusdt@bookTicker"]
            return [Frame(orjson.dumps({t: session.known(t) for t in asked}))]
        return super().on_message(payload, binary, session)

    def snapshot(self, inst: Instrument, q: SimQuote, update_id: int, ts_ms: int) -> Frame | None:
        return Frame(orjson.dumps({"snapshot": inst.topic, "u": update_id, "b": q.bid}))

    def quote(self, inst: Instrument, q: SimQuote, update_id: int, ts_ms: int) -> Frame:
        return Frame(orjson.dumps({"delta": inst.topic, "u": update_id, "b": q.bid}), binary=True)


class RawClient(picows.WSListener):
    """Queues every text or binary frame as (binary, payload)."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: asyncio.Queue[tuple[bool, bytes]] = asyncio.Queue()

    def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
        if frame.msg_type in (picows.WSMsgType.TEXT, picows.WSMsgType.BINARY):
            self.frames.put_nowait((frame.msg_type == picows.WSMsgType.BINARY, frame.get_payload_as_bytes()))
        elif frame.msg_type == picows.WSMsgType.CLOSE:
            transport.disconnect()

    async def next(self) -> tuple[bool, Any]:
        binary, raw = await asyncio.wait_for(self.frames.get(), DEADLINE_S)
        return binary, (raw if raw.startswith(b"echo:") else orjson.loads(raw))


async def toy_venue(cfg: Any) -> tuple[DemoMarket, VenueServer]:
    """A market whose `okx` venue speaks `Toy`, bound but not ticking: the test publishes every quote."""
    market = DemoMarket(cfg)
    vs = market.venues["okx"]
    vs.proto = Toy(vs.spec.demo_path)
    await vs.start("127.0.0.1")
    return market, vs


async def _until(cond: Callable[[], bool]) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not cond():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.005)


def test_a_symbol_unsafe_in_a_frame_is_refused() -> None:
    raw = example_raw()
    raw["venues"]["okx"]["symbols"]["BTC-PERP"] = 'BTC"USDT'
    with pytest.raises(ValueError, match="cannot send"):
        DemoMarket(parse_config(raw))


def test_greeting_then_snapshot_then_binary_data(run: Runner) -> None:
    async def scenario() -> None:
        market, vs = await toy_venue(binance_config())
        try:
            btc0 = market.model.quote("okx", "BTC-PERP")
            tr, cl = await picows.ws_connect(RawClient, vs.url + "?streams=btcusdt@bookTicker")
            assert isinstance(cl, RawClient)
            assert await cl.next() == (False, {"hello": "toy"})
            # the URL's topic gets its image at once: the model's quote, before any change
            assert await cl.next() == (False, {"snapshot": "btcusdt@bookTicker", "u": 0, "b": btc0.bid})
            vs.publish(0, SimQuote(100.0, 100.5, 1.0, 1.0), T_MS)
            assert await cl.next() == (True, {"delta": "btcusdt@bookTicker", "u": 1, "b": 100.0})

            # nobody has ETH yet: encoded (the protocol sees every change) but sent to no-one
            vs.publish(1, SimQuote(50.0, 50.5, 1.0, 1.0), T_MS + 1)
            send_json(tr, {"method": "SUBSCRIBE", "params": ["ethusdt@bookTicker"], "id": 2})
            # the ack, then the image of the last published quote, then data: all in order
            assert await cl.next() == (False, {"result": None, "id": 2})
            assert await cl.next() == (False, {"snapshot": "ethusdt@bookTicker", "u": 1, "b": 50.0})
            vs.publish(1, SimQuote(51.0, 51.5, 1.0, 1.0), T_MS + 2)
            assert await cl.next() == (True, {"delta": "ethusdt@bookTicker", "u": 2, "b": 51.0})

            # binary requests reach on_message as binary; replies go back as the Frame says
            tr.send(picows.WSMsgType.BINARY, b"\x01\x02")
            assert await cl.next() == (True, b"echo:\x01\x02")
            # the session knows which topics this venue lists
            tr.send(picows.WSMsgType.TEXT, b"known?")
            assert await cl.next() == (False, {"btcusdt@bookTicker": True, "dogeusdt@bookTicker": False})
            assert cl.frames.empty()
            tr.disconnect()
        finally:
            await market.close()

    run(scenario())


def test_wrong_path_gets_the_greeting_and_replies_but_no_snapshot_or_data(run: Runner) -> None:
    async def scenario() -> None:
        market, vs = await toy_venue(binance_config())
        try:
            base = vs.url.removesuffix(vs.spec.demo_path)
            tr, cl = await picows.ws_connect(RawClient, base + "/elsewhere?streams=btcusdt@bookTicker")
            assert isinstance(cl, RawClient)
            assert await cl.next() == (False, {"hello": "toy"})
            send_json(tr, {"method": "SUBSCRIBE", "params": ["ethusdt@bookTicker"], "id": 1})
            assert await cl.next() == (False, {"result": None, "id": 1})
            vs.publish(0, SimQuote(100.0, 100.5, 1.0, 1.0), T_MS)
            vs.publish(1, SimQuote(50.0, 50.5, 1.0, 1.0), T_MS)
            tr.send(picows.WSMsgType.BINARY, b"x")  # a round trip: anything sent before it has arrived
            assert await cl.next() == (True, b"echo:x")
            assert cl.frames.empty()
            tr.disconnect()
        finally:
            await market.close()

    run(scenario())


def test_a_conflated_symbol_is_resent_as_a_snapshot(run: Runner) -> None:
    async def scenario() -> None:
        market, vs = await toy_venue(binance_config())
        try:
            tr, cl = await picows.ws_connect(RawClient, vs.url + "?streams=btcusdt@bookTicker/ethusdt@bookTicker")
            assert isinstance(cl, RawClient)
            await _until(lambda: len(vs.clients) == 1)
            (server_side,) = vs.clients
            for _ in range(3):  # greeting and two snapshots
                await cl.next()
            server_side.pause_writing()
            vs.publish(0, SimQuote(100.0, 100.5, 1.0, 1.0), T_MS)
            vs.publish(0, SimQuote(101.0, 101.5, 1.0, 1.0), T_MS + 1)  # replaces the first: a delta lost
            vs.publish(1, SimQuote(50.0, 50.5, 1.0, 1.0), T_MS + 2)  # only one: kept as it is
            assert market.statistics().frames_conflated == 1
            server_side.resume_writing()
            # in pending order: BTC's image (its delta was lost), then ETH's one delta as it was
            assert await cl.next() == (False, {"snapshot": "btcusdt@bookTicker", "u": 2, "b": 101.0})
            assert await cl.next() == (True, {"delta": "ethusdt@bookTicker", "u": 1, "b": 50.0})
            tr.disconnect()
        finally:
            await market.close()

    run(scenario())
