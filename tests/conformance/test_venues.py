"""The conformance suite every venue module must pass.

Parametrised over the feed registry, so a venue added to `perpbot/feeds/`
is tested here without anyone listing it, and fails CI until it passes:

- spec complete: URLs, demo path, subscribe frames, parser factory, ping rule, a
  simulator protocol and a unit-test module of its own;
- symbol round trip: venue symbol -> subscription -> simulator topic -> pushed
  frame -> parsed BBO -> the same venue symbol -> the board symbol;
- parse: every frame the venue's simulator produces (greeting, acks, pongs,
  errors, snapshot, quotes) is handled, quotes to exactly the quoted numbers in
  base units (contract sizes applied);
- fuzz: 10,000 mutations of those frames never raise anything but ParseError
  and never yield an invalid quote;
- live loopback session: the real feed process against the venue's simulator
  receives a scripted sequence of quotes into the board, every one, in order,
  with its stamps; then the server drops the connection, the feed marks the
  venue DOWN, reconnects, resubscribes, and the next quotes arrive.
"""

from __future__ import annotations

import asyncio
import math
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from kit import ROOT, example_raw, segments, unique_run_id

from perpbot.config import Config, parse_config
from perpbot.feeds.registry import FEEDS
from perpbot.feeds.spec import BBO, ParseError, ParserContext
from perpbot.runctx import CONFIG_COPY, write_run_file
from perpbot.shm.layout import FeedState, ProcState
from perpbot.sim.market import MarketModel, SimQuote
from perpbot.sim.protocol import Frame, Instrument, Session, SimProtocol
from perpbot.sim.protocols import get_protocol
from perpbot.sim.server import DemoMarket

VENUES = sorted(FEEDS)

#: board symbol -> (venue symbol, contract size) per feed protocol. A new venue adds its row.
VENUE_SYMBOLS: dict[str, dict[str, tuple[str, float]]] = {
    "binanceusdm": {"BTC-PERP": ("BTCUSDT", 1.0), "ETH-PERP": ("ETHUSDT", 1.0)},
    "okx": {"BTC-PERP": ("BTC-USDT-SWAP", 0.01), "ETH-PERP": ("ETH-USDT-SWAP", 0.1)},
    "bybit": {"BTC-PERP": ("BTCUSDT", 1.0), "ETH-PERP": ("ETHUSDT", 1.0)},
    "bitget": {"BTC-PERP": ("BTCUSDT", 1.0), "ETH-PERP": ("ETHUSDT", 1.0)},
    "gate": {"BTC-PERP": ("BTC_USDT", 0.0001), "ETH-PERP": ("ETH_USDT", 0.01)},
    "hyperliquid": {"BTC-PERP": ("BTC", 1.0), "ETH-PERP": ("ETH", 1.0)},
    "paradex": {"BTC-PERP": ("BTC-USD-PERP", 1.0), "ETH-PERP": ("ETH-USD-PERP", 1.0)},
    "extended": {"BTC-PERP": ("BTC-USD", 1.0), "ETH-PERP": ("ETH-USD", 1.0)},
}
SCRIPTED = 40  # quotes per symbol per phase of the live session
DEADLINE_S = 30.0
T0_MS = 1_790_000_000_000


def venue_config(feed: str) -> Config:
    """Two symbols on the venue under test, plus a Binance venue (a run needs two)."""
    if feed not in VENUE_SYMBOLS:
        pytest.fail(f"venue {feed!r} has no row in VENUE_SYMBOLS (tests/conformance/test_venues.py)")
    raw = example_raw()
    syms = VENUE_SYMBOLS[feed]
    raw["symbols"] = {s: raw["symbols"][s] for s in syms}
    raw["demo"]["prices"] = {s: raw["demo"]["prices"][s] for s in syms}
    raw["demo"]["venues"] = {}
    raw["venues"] = {
        "under_test": {
            "feed": feed, "taker_fee_bps": 5.0,
            "symbols": {b: v for b, (v, _) in syms.items()},
            "contract_sizes": {b: c for b, (_, c) in syms.items() if c != 1.0},
        },
        "other": {"feed": "binanceusdm", "taker_fee_bps": 5.0,
                  "symbols": {"BTC-PERP": "BTCUSDT", "ETH-PERP": "ETHUSDT"}},
    }
    raw["feed"].update(reconnect_initial_ms=50, reconnect_max_ms=200, heartbeat_ms=50)
    return parse_config(raw)


def instruments(cfg: Config, proto: SimProtocol) -> dict[str, Instrument]:
    model = MarketModel(cfg)
    vc = cfg.venues["under_test"]
    return {
        board: Instrument(vsym, proto.topic(vsym), model.price_decimals(board), model.size_decimals(board),
                          vc.contract_sizes.get(board, 1.0))
        for board, vsym in vc.symbols.items()
    }


def scripted_quotes(cfg: Config, board: str, n: int, offset: int = 0) -> list[SimQuote]:
    """n distinct on-grid quotes around the symbol's demo price."""
    sym = cfg.symbols[board]
    tick, lot = float(sym.tick_size), float(sym.lot_size)
    base = round(cfg.demo.prices[board] / tick) * tick
    out = []
    for i in range(offset, offset + n):
        bid = base + (i % 17) * tick
        out.append(SimQuote(round(bid, 10), round(bid + (1 + i % 3) * tick, 10),
                            round((10 + i) * lot * 100, 10), round((20 + i) * lot * 100, 10)))
    return out


def parse_all(parser: Any, frames: list[Frame]) -> list[BBO]:
    out: list[BBO] = []
    for f in frames:
        out.extend(parser(f.payload, True) if f.binary else parser(f.payload))
    return out


# -- spec -------------------------------------------------------------------------------


@pytest.mark.parametrize("feed", VENUES)
def test_spec_is_complete(feed: str) -> None:
    spec = FEEDS[feed]
    assert spec.public_url.startswith("wss://"), spec.public_url
    assert spec.demo_path.startswith("/")
    vsyms = [v for v, _ in VENUE_SYMBOLS[feed].values()]
    frames = spec.subscribe(vsyms)
    assert isinstance(frames, list) and all(isinstance(f, bytes) for f in frames)
    conns = spec.connections("ws://127.0.0.1:1" + spec.demo_path, vsyms)
    assert sorted(s for _, syms in conns for s in syms) == sorted(vsyms), "every symbol on exactly one connection"
    if not frames:
        assert all(any(s in url for s in syms) for url, syms in conns), "no subscribe frame: the URL must subscribe"
    if spec.ping is not None:
        assert 0 < spec.ping.interval_s <= 60
        assert isinstance(spec.ping.payload(), bytes)
    assert callable(spec.make_parser(ParserContext()))
    assert get_protocol(feed).name == feed, "every venue needs a simulator protocol in perpbot/sim/protocols/"
    assert (ROOT / "tests" / "unit" / f"test_feed_{feed}.py").exists(), "every venue needs its own parser tests"
    doc = sys.modules[f"perpbot.feeds.{feed}"].__doc__ or ""
    assert "{" in doc, "the module docstring shows one real sample frame"


# -- symbol round trip and parse of everything the simulator says ------------------------


def simulator_frames(cfg: Config, feed: str) -> tuple[SimProtocol, dict[str, Instrument], list[Frame], list[Frame]]:
    """(protocol, instruments, control frames, data frames) for a full subscribe-and-quote exchange."""
    spec = FEEDS[feed]
    proto = get_protocol(feed)(spec.demo_path)
    insts = instruments(cfg, proto)
    topics = {i.topic for i in insts.values()}
    control: list[Frame] = list(proto.greeting())
    for url, _syms in spec.connections("ws://127.0.0.1:1" + spec.demo_path, [i.symbol for i in insts.values()]):
        session = Session(known=lambda t: t in topics)
        named = proto.route(url.split("127.0.0.1:1", 1)[1])
        assert named is not None, f"the simulator does not route {url}"
        session.topics.update(named)
        for f in spec.subscribe(_syms):
            control.extend(proto.on_message(f, False, session))
        if spec.ping is not None:
            control.extend(proto.on_message(spec.ping.payload(), False, session))
        assert {insts[b].topic for b in insts if insts[b].symbol in _syms} <= session.topics, \
            "after subscribing, the session holds every topic"
    data: list[Frame] = []
    for board, inst in insts.items():
        qs = scripted_quotes(cfg, board, 5)
        snap = proto.snapshot(inst, qs[0], 1, T0_MS)
        if snap is not None:
            data.append(snap)
        data.extend(proto.quote(inst, q, i + 2, T0_MS + i) for i, q in enumerate(qs[1:]))
    return proto, insts, control, data


@pytest.mark.parametrize("feed", VENUES)
def test_symbol_round_trip_and_simulator_frames_parse_exactly(feed: str) -> None:
    cfg = venue_config(feed)
    spec = FEEDS[feed]
    vc = cfg.venues["under_test"]
    proto, insts, control, data = simulator_frames(cfg, feed)
    ctx = ParserContext({vc.symbols[b]: c for b, c in vc.contract_sizes.items()})
    parser = spec.make_parser(ctx)
    pongs = [f for f in control if spec.ping is not None and not f.binary and spec.ping.is_pong(f.payload)]
    assert parse_all(parser, [f for f in control if f not in pongs]) == [], "control frames carry no quotes"
    got = parse_all(parser, data)
    by_symbol = {inst.symbol: board for board, inst in insts.items()}
    expected: list[tuple[str, SimQuote]] = []
    for board, inst in insts.items():
        qs = scripted_quotes(cfg, board, 5)
        has_snapshot = proto.snapshot(inst, qs[0], 1, T0_MS) is not None
        expected.extend((inst.symbol, q) for q in (qs if has_snapshot else qs[1:]))
    assert len(got) == len(expected)
    for bbo, (vsym, q) in zip(got, expected, strict=True):
        assert bbo.symbol == vsym and by_symbol[bbo.symbol] in cfg.symbols
        assert (bbo.bid, bbo.ask) == pytest.approx((q.bid, q.ask), rel=1e-12)
        assert (bbo.bid_size, bbo.ask_size) == pytest.approx((q.bid_size, q.ask_size), rel=1e-9)
        assert bbo.ts_exchange_ns > 0


# -- fuzz ----------------------------------------------------------------------------------


def _mutations(rng: random.Random, frame: bytes) -> bytes:
    kind = rng.randrange(8)
    if kind == 0:
        return frame[: rng.randrange(len(frame) + 1)]
    b = bytearray(frame)
    if kind == 1 and b:
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        return bytes(b)
    if kind == 2:
        return frame.replace(b'"', b"", rng.randint(1, 3))
    if kind == 3:
        for tok in (b"NaN", b"Infinity", b"-1", b"1e400", b"null", b"[]", b"{}", b'"x"', b"-0.0",
                    b"99999999999999999999999"):
            if rng.random() < 0.3:
                digits = [i for i, c in enumerate(b) if 48 <= c <= 57]
                if digits:
                    i = rng.choice(digits)
                    b[i:i + 1] = tok
        return bytes(b)
    if kind == 4:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(64)))
    if kind == 5:
        return frame + frame[: rng.randrange(len(frame) + 1)]
    if kind == 6:
        i, j = sorted(rng.randrange(len(frame) + 1) for _ in range(2))
        return frame[:i] + frame[j:]
    return frame.replace(b"0", b"9", rng.randint(1, 5))


@pytest.mark.parametrize("feed", VENUES)
def test_fuzzed_frames_raise_only_parse_errors_and_yield_only_valid_quotes(feed: str) -> None:
    cfg = venue_config(feed)
    spec = FEEDS[feed]
    _, _, control, data = simulator_frames(cfg, feed)
    seeds = control + data
    rng = random.Random(f"fuzz-{feed}")
    parser = spec.make_parser(ParserContext({"BTC-USDT-SWAP": 0.01, "BTC_USDT": 0.0001}))
    accepted = 0
    for i in range(10_000):
        src = seeds[i % len(seeds)]
        frame = _mutations(rng, src.payload)
        binary = src.binary if rng.random() < 0.9 else not src.binary
        try:
            out = parser(frame, True) if binary else parser(frame)
        except ParseError:
            continue
        for q in out:
            accepted += 1
            assert all(math.isfinite(x) for x in (q.bid, q.ask, q.bid_size, q.ask_size)), q
            assert q.bid > 0 and q.ask > 0 and q.bid <= q.ask and q.bid_size >= 0 and q.ask_size >= 0, q
            assert isinstance(q.symbol, str) and 0 < q.ts_exchange_ns < 2**63
    assert accepted > 0, "the fuzzer never produced a frame the parser accepts: mutations too blunt"


# -- the real feed process against the venue's simulator ----------------------------------


async def _until(what: str, cond: Callable[[], bool], proc: subprocess.Popen[bytes]) -> None:
    end = time.monotonic() + DEADLINE_S
    while not cond():
        if proc.poll() is not None:
            out = proc.stdout.read().decode() if proc.stdout else ""
            pytest.fail(f"feed exited ({proc.returncode}) while waiting for {what}:\n{out}")
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("feed", VENUES)
def test_live_session_against_the_simulator(feed: str, tmp_path: Path) -> None:
    cfg = venue_config(feed)
    run_dir = Path(tempfile.mkdtemp(prefix="pbc"))
    run_id = unique_run_id()
    raw = _raw_of(cfg)
    proto = get_protocol(feed)(FEEDS[feed].demo_path)
    inst = next(iter(instruments(cfg, proto).values()))
    # a snapshot protocol sends an image on subscription: wait for it before counting writes
    has_snapshot = proto.snapshot(inst, scripted_quotes(cfg, "BTC-PERP", 1)[0], 1, T0_MS) is not None

    async def scenario() -> None:
        market = DemoMarket(cfg)  # servers only: the model does not tick, the test scripts every quote
        server = market.venues["under_test"]
        url = await server.start("127.0.0.1")
        (run_dir / CONFIG_COPY).write_text(yaml.safe_dump(raw, sort_keys=False))
        write_run_file(run_dir, run_id, tmp_path, {"under_test": url, "other": url})
        with segments(cfg, run_id) as (board, status):
            proc = subprocess.Popen(
                [sys.executable, "-m", "perpbot.feeds.process", "--run-dir", str(run_dir), "--slot", "1",
                 "--venue", "under_test"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            try:
                syms = list(cfg.venues["under_test"].symbols)
                n_syms = len(syms)
                await _until("connected", lambda: status.feed_state(0) == FeedState.CONNECTED, proc)
                await _until("subscribed", lambda: _subscribed(server, n_syms), proc)
                if has_snapshot:
                    await _until("snapshots", lambda: all(_seq(board, s) > 0 for s in range(n_syms)), proc)
                seq0 = [_seq(board, s) for s in range(n_syms)]
                t0_ms = int(time.time() * 1000) + 60_000
                await _publish_and_check(cfg, server, board, proc, seq0, offset=0, t0_ms=t0_ms)

                # the server drops every connection: DOWN at once, then back, resubscribed
                reconnects = int(status.feeds[0]["reconnects"])
                seq_pre = [_seq(board, s) for s in range(n_syms)]
                for c in server.clients:
                    assert c.transport is not None
                    c.transport.disconnect()
                await _until("reconnected", lambda: int(status.feeds[0]["reconnects"]) > reconnects
                             and status.feed_state(0) == FeedState.CONNECTED, proc)
                await _until("resubscribed", lambda: _subscribed(server, n_syms), proc)
                if has_snapshot:
                    await _until("fresh snapshots", lambda: all(
                        _seq(board, s) > seq_pre[s] for s in range(n_syms)), proc)
                seq1 = [_seq(board, s) for s in range(n_syms)]
                await _publish_and_check(cfg, server, board, proc, seq1, offset=SCRIPTED, t0_ms=t0_ms)
                assert int(status.feeds[0]["parse_errors"]) == 0

                proc.send_signal(signal.SIGTERM)
                out, _ = await asyncio.get_running_loop().run_in_executor(None, proc.communicate, None)
                assert proc.returncode == 0, out.decode()
                assert status.procs[1]["state"] == ProcState.STOPPED
                assert status.feed_state(0) == FeedState.DOWN
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                await market.close()

    try:
        asyncio.run(scenario())
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def _raw_of(cfg: Config) -> dict[str, Any]:
    import msgspec

    return msgspec.to_builtins(cfg)  # type: ignore[no-any-return]


def _seq(board: Any, s: int) -> int:
    q = board.read(0, s)
    return 0 if q is None else q.seq


def _subscribed(server: Any, n_syms: int) -> bool:
    return sum(len(subs) for subs in server._subs) >= n_syms


async def _publish_and_check(cfg: Config, server: Any, board: Any, proc: subprocess.Popen[bytes],
                             seq_before: list[int], offset: int, t0_ms: int) -> None:
    syms = list(cfg.venues["under_test"].symbols)
    scripted = {b: scripted_quotes(cfg, b, SCRIPTED, offset) for b in syms}
    # venue times after the subscription snapshot's (stamped now by the demo market): a quote
    # stamped before the last one written, or repeating it, is a replay the feed does not write
    for i in range(SCRIPTED):
        for si, b in enumerate(syms):
            server.publish(si, scripted[b][i], t0_ms + offset + i + 1)
        if i % 10 == 9:
            await asyncio.sleep(0)  # let the server flush
    for si, b in enumerate(syms):
        last = scripted[b][-1]

        def arrived(si: int = si, last: SimQuote = last) -> bool:
            q = board.read(0, si)
            return q is not None and q.bid == pytest.approx(last.bid) and q.ask == pytest.approx(last.ask) \
                and q.ts_exchange_ns == (t0_ms + offset + SCRIPTED) * 1_000_000

        await _until(f"the last scripted quote of {b}", arrived, proc)
        q = board.read(0, si)
        assert q is not None
        writes = (q.seq - seq_before[si]) // 2
        # every scripted quote written exactly once, in order (the last one is the last written)
        assert writes == SCRIPTED, (b, writes)
        assert (q.bid_size, q.ask_size) == pytest.approx((last.bid_size, last.ask_size), rel=1e-9)
        assert 0 < q.ts_recv_ns <= q.ts_write_ns
