"""Replay mode: recorded frames through the loopback servers, in-process and as the real processes.

The process test runs the market process in replay mode (as fast as
possible) and the real feed process against it, and checks that the board
holds exactly what the Binance recording says: its last bookTicker per
symbol, from exactly as many quotes as it has bookTicker frames.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import picows
import pytest
import uvloop
import yaml
from kit import DATA, ROOT, example_raw, segments, unique_run_id

from perpbot.config import Config, parse_config
from perpbot.record import RecordedConnection, RecordedFrame, read_recording
from perpbot.runctx import CONFIG_COPY, write_run_file
from perpbot.shm.layout import FeedState, MarketCounter, ProcState
from perpbot.sim.process import read_market_file
from perpbot.sim.replay import ReplayMarket, serve_replay

RECORDING = DATA / "recorded" / "BINANCE_FUTURES.ws.1.0"
COINS = ("SUSHI", "AKRO", "KEEP", "CTK")
DEADLINE_S = 60.0


def replay_raw(**replay: Any) -> dict[str, Any]:
    """Board symbols for the recording's four coins on two Binance venues; the first serves it."""
    raw = example_raw()
    raw["mode"] = "replay"
    raw["symbols"] = {f"{c}-PERP": {"lot_size": "1", "tick_size": "0.00001"} for c in COINS}
    raw["venues"] = {
        "binanceusdm": {"feed": "binanceusdm", "taker_fee_bps": 5.0,
                        "symbols": {f"{c}-PERP": f"{c}USDT" for c in COINS}},
        "bybit": {"feed": "binanceusdm", "taker_fee_bps": 5.5, "symbols": {"SUSHI-PERP": "SUSHIUSDT"}},
    }
    raw["demo"] = {}
    raw["feed"].update(heartbeat_ms=50)
    raw["replay"] = {"file": str(RECORDING), **replay}
    return raw


def recorded_book_tickers() -> list[dict[str, Any]]:
    (conn,) = read_recording(RECORDING)
    out = []
    for f in conn.received:
        data = orjson.loads(f.payload)["data"]
        if data["e"] == "bookTicker":
            out.append(data)
    return out


class Client(picows.WSListener):
    """Queues every frame as (binary, payload)."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: asyncio.Queue[tuple[bool, bytes]] = asyncio.Queue()

    def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
        if frame.msg_type in (picows.WSMsgType.TEXT, picows.WSMsgType.BINARY):
            self.frames.put_nowait((frame.msg_type == picows.WSMsgType.BINARY, frame.get_payload_as_bytes()))
        elif frame.msg_type == picows.WSMsgType.CLOSE:
            transport.disconnect()

    def drain(self) -> list[tuple[bool, bytes]]:
        return [self.frames.get_nowait() for _ in range(self.frames.qsize())]


async def connect(url: str) -> tuple[picows.WSTransport, Client]:
    tr, cl = await picows.ws_connect(Client, url)
    assert isinstance(cl, Client)
    return tr, cl


def subscribe(tr: picows.WSTransport, *streams: str) -> None:
    tr.send(picows.WSMsgType.TEXT, orjson.dumps({"method": "SUBSCRIBE", "params": list(streams), "id": 1}))


async def until(cond: Callable[[], bool]) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


# -- in-process ------------------------------------------------------------------------------


def test_the_whole_recording_reaches_a_subscriber_byte_for_byte() -> None:
    async def scenario() -> None:
        cfg = parse_config(replay_raw(as_fast_as_possible=True))
        async with await serve_replay(cfg) as market:
            assert market.venue == "binanceusdm"
            await asyncio.sleep(0.05)
            assert market.frames_replayed == 0  # nobody subscribed yet: the replay waits
            tr, cl = await connect(market.urls["binanceusdm"])
            wrong_tr, wrong = await connect(market.urls["binanceusdm"].replace("/public/stream", "/ws"))
            other_tr, other = await connect(market.urls["binanceusdm"])
            subscribe(wrong_tr, "sushiusdt@bookTicker")
            subscribe(other_tr, "btcusdt@bookTicker")  # not in the recording
            subscribe(tr, *(f"{c.lower()}usdt@bookTicker" for c in COINS))
            await asyncio.wait_for(market.wait_finished(), DEADLINE_S)
            (conn,) = read_recording(RECORDING)
            await until(lambda: cl.frames.qsize() >= 1 + len(conn.received))
            got = cl.drain()
            assert got[0] == (False, b'{"result":null,"id":1}')  # the protocol's own ack
            assert got[1:] == [(f.binary, f.payload) for f in conn.received]
            # a wrong path and a client of other topics get their ack and nothing else
            assert wrong.drain() == [(False, b'{"result":null,"id":1}')]
            assert other.drain() == [(False, b'{"result":null,"id":1}')]
            st = market.statistics()
            assert st.quote_updates == market.frames_replayed == market.frames_total == 1535
            for t in (tr, wrong_tr, other_tr):
                t.disconnect()

    uvloop.run(scenario())


def _synthetic(cfg: Config) -> list[RecordedConnection]:
    """Two recorded connections on the demo path: BTC frames 0.1 s apart, ETH ones in between, one binary."""
    url = "ws://127.0.0.1:1/public/stream"
    btc = RecordedConnection(url + "?streams=btcusdt@bookTicker", 100.0,
                             received=[RecordedFrame(100.0 + 0.1 * i, f'{{"btc":{i}}}'.encode()) for i in range(5)])
    sub = b'{"method":"SUBSCRIBE","params":["ethusdt@bookTicker"],"id":1}'
    eth = RecordedConnection(url, 100.0, sent=[RecordedFrame(100.0, sub)],
                             received=[RecordedFrame(100.05 + 0.1 * i, f'{{"eth":{i}}}'.encode()) for i in range(4)]
                             + [RecordedFrame(100.45, b"\x00\x01", True)])
    return [btc, eth]


def test_each_recorded_connection_goes_to_its_topics_subscribers_at_the_recorded_pace() -> None:
    async def scenario() -> None:
        raw = replay_raw(speed=2.0)
        raw["symbols"]["BTC-PERP"] = {"lot_size": "0.001", "tick_size": "0.1"}
        raw["symbols"]["ETH-PERP"] = {"lot_size": "0.01", "tick_size": "0.01"}
        raw["venues"]["bybit"]["symbols"].update({"BTC-PERP": "BTCUSDT", "ETH-PERP": "ETHUSDT"})
        raw["replay"]["venue"] = "bybit"
        cfg = parse_config(raw)
        market = ReplayMarket(cfg, _synthetic(cfg))
        await market.start()
        try:
            assert market.venue == "bybit"
            btc_tr, btc = await connect(market.urls["bybit"] + "?streams=btcusdt@bookTicker")
            eth_tr, eth = await connect(market.urls["bybit"])
            subscribe(eth_tr, "ethusdt@bookTicker")
            await asyncio.wait_for(market.wait_finished(), DEADLINE_S)
            await until(lambda: btc.frames.qsize() >= 5 and eth.frames.qsize() >= 6)
            assert btc.drain() == [(False, f'{{"btc":{i}}}'.encode()) for i in range(5)]
            assert eth.drain() == [(False, b'{"result":null,"id":1}')] + [
                (False, f'{{"eth":{i}}}'.encode()) for i in range(4)] + [(True, b"\x00\x01")]
            btc_tr.disconnect()
            eth_tr.disconnect()
        finally:
            await market.close()

    t0 = time.monotonic()
    uvloop.run(scenario())
    # 0.45 s recorded at x2: never faster than that (early by at most a timer tick per frame)
    assert time.monotonic() - t0 >= 0.45 / 2 - 0.01


def test_a_paused_client_holds_the_replay_and_loses_nothing() -> None:
    async def scenario() -> None:
        cfg = parse_config(replay_raw(as_fast_as_possible=True))
        async with await serve_replay(cfg) as market:
            server = market.venues["binanceusdm"]
            tr, cl = await connect(market.urls["binanceusdm"])
            await until(lambda: len(server.clients) == 1)
            (client,) = server.clients
            client.pause_writing()  # as the transport does over its high watermark
            subscribe(tr, "sushiusdt@bookTicker")  # the replay starts, and waits for the client at once
            await until(lambda: client.topics == {"sushiusdt@bookTicker"})
            for _ in range(10):
                await asyncio.sleep(0.01)
                assert market.frames_replayed == 0 and not market.finished
            client.resume_writing()
            await asyncio.wait_for(market.wait_finished(), DEADLINE_S)
            await until(lambda: cl.frames.qsize() >= 1 + market.frames_total)
            assert len(cl.drain()) == 1 + market.frames_total  # the ack and every recorded frame
            assert market.statistics().frames_conflated == 0
            tr.disconnect()

    uvloop.run(scenario())


# -- the real market and feed processes ------------------------------------------------------


@pytest.fixture
def run_dir() -> Iterator[Path]:
    # ipc:// paths are limited to ~107 bytes: keep the run directory short
    d = Path(tempfile.mkdtemp(prefix="pbr"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _start(module: str, run_dir: Path, slot: int, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", module, "--run-dir", str(run_dir), "--slot", str(slot), *extra],
        cwd=ROOT, stdin=subprocess.DEVNULL, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
    )


def _wait_for(what: str, cond: Callable[[], bool], procs: list[tuple[subprocess.Popen[bytes], Path]]) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not cond():
        for proc, log in procs:
            if proc.poll() is not None:
                pytest.fail(f"{log.stem} exited ({proc.returncode}) before {what}:\n{log.read_text()}")
        if time.monotonic() > deadline:
            logs = "\n".join(log.read_text() for _, log in procs)
            pytest.fail(f"timed out waiting for {what}:\n{logs}")
        time.sleep(0.02)  # polling interval, not a wait for something to happen


@pytest.mark.slow
def test_replay_fills_the_board_with_exactly_the_recorded_book_tickers(run_dir: Path, tmp_path: Path) -> None:
    raw = replay_raw(as_fast_as_possible=True)
    raw["feed"]["silent_reconnect_ms"] = 60_000  # the replay ends in silence: no reconnect (and re-ack) meanwhile
    cfg = parse_config(raw)
    run_id = unique_run_id()
    (run_dir / CONFIG_COPY).write_text(yaml.safe_dump(raw, sort_keys=False))
    write_run_file(run_dir, run_id, tmp_path, {})
    tickers = recorded_book_tickers()
    assert len(tickers) == 613
    last = {t["s"]: t for t in tickers}
    procs: list[tuple[subprocess.Popen[bytes], Path]] = []
    with segments(cfg, run_id) as (board, status):
        try:
            market_log = tmp_path / "market.log"
            procs.append((_start("perpbot.sim.process", run_dir, 1, market_log), market_log))
            _wait_for("the market RUNNING", lambda: status.procs[1]["state"] == ProcState.RUNNING, procs)
            urls = read_market_file(run_dir)
            assert urls is not None
            write_run_file(run_dir, run_id, tmp_path, urls)  # what the launcher does
            feed_log = tmp_path / "feed.log"
            procs.append((_start("perpbot.feeds.process", run_dir, 2, feed_log, "--venue", "binanceusdm"),
                          feed_log))

            def feed(counter: str) -> int:
                return int(status.feeds[0][counter])  # no view on the segment outlives the call

            _wait_for("the whole recording replayed",
                      lambda: status.procs[1]["counters"][MarketCounter.QUOTE_UPDATES] == 1535, procs)
            _wait_for("every recorded bookTicker on the board", lambda: feed("quotes") >= len(tickers), procs)
            assert status.feed_state(0) == FeedState.CONNECTED
            assert feed("quotes") == len(tickers)
            assert feed("parse_errors") == 0 and feed("unknown_symbols") == 0
            assert feed("frames") == 1 + 1535  # the ack, then every recorded frame
            for si, board_sym in enumerate(cfg.symbol_names):
                t = last[cfg.venues["binanceusdm"].symbols[board_sym]]
                q = board.read(0, si)
                assert q is not None, board_sym
                assert (q.bid, q.ask, q.bid_size, q.ask_size) == (
                    float(t["b"]), float(t["a"]), float(t["B"]), float(t["A"])), board_sym
                assert q.ts_exchange_ns == t["T"] * 1_000_000
                assert q.seq // 2 == sum(1 for x in tickers if x["s"] == t["s"])  # one write per frame
            for proc, log in reversed(procs):
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(timeout=DEADLINE_S) == 0, log.read_text()
            # INFO lines go to the process's JSON log in the run's data directory
            assert "replay finished: 1535 frames" in (tmp_path / "market.jsonl").read_text()
        finally:
            for proc, _ in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()


@pytest.mark.slow
def test_the_launcher_runs_a_replay(run_dir: Path, tmp_path: Path) -> None:
    raw = replay_raw(as_fast_as_possible=True)
    raw["run"].update(run_root=str(run_dir), data_dir=str(tmp_path / "data"))
    raw["feed"]["silent_reconnect_ms"] = 60_000
    cfg_path = tmp_path / "replay.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    log = tmp_path / "launch.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "perpbot.launch", "--config", str(cfg_path), "--duration", "3"],
        cwd=ROOT, stdin=subprocess.DEVNULL, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
    )
    try:
        assert proc.wait(timeout=DEADLINE_S) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    (summary,) = (tmp_path / "data").glob("*/summary.json")
    feeds = orjson.loads(summary.read_bytes())["feeds"]
    assert feeds["binanceusdm"]["quotes"] == 613, log.read_text()
    assert feeds["bybit"]["quotes"] == 0  # its server answers but has nothing to replay
    assert "replay finished: 1535 frames" in (summary.parent / "market.jsonl").read_text()
