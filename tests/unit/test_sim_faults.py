"""Scheduled faults: the pure schedule, the driver's order of events, malformed frames,
config validation of `demo.faults` and `paper.drift`, and the paper venue booking drift."""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import orjson
import pytest
from kit import example_raw, segments

from perpbot.config import MARKET_FAULT_KINDS, Config, parse_config
from perpbot.errors import ConfigError
from perpbot.exec.venues.paper import PaperVenue
from perpbot.feeds import binanceusdm, paradex
from perpbot.feeds.spec import ParseError, ParserContext
from perpbot.shm import QuoteBoard
from perpbot.shm.board import BoardWriter
from perpbot.sim.faults import (
    GARBAGE_VARIANTS,
    MarketFaultKind,
    ScheduledFault,
    active_at,
    boundaries,
    garbage_frame,
    run_schedule,
    schedule_from_config,
    transitions,
)
from perpbot.sim.protocol import Frame
from perpbot.sim.protocols.paradex import bbo_event


def config(faults: list[dict[str, Any]] | None = None, drift: list[dict[str, Any]] | None = None) -> Config:
    raw = example_raw()
    if faults is not None:
        raw["demo"]["faults"] = faults
    if drift is not None:
        raw.setdefault("paper", {})["drift"] = drift
    return parse_config(raw)


def fault(index: int, at_s: float, kind: str, for_s: float = 0.0, venue: str = "okx",
          symbol: str | None = None) -> ScheduledFault:
    return ScheduledFault(index, at_s, venue, MarketFaultKind(kind), for_s, symbol)


# -- the schedule ---------------------------------------------------------------------------------


def test_the_kinds_are_the_configs() -> None:
    assert tuple(k.value for k in MarketFaultKind) == MARKET_FAULT_KINDS
    assert not MarketFaultKind.DROP.lasts
    assert all(k.lasts for k in MarketFaultKind if k is not MarketFaultKind.DROP)
    assert {k for k in MarketFaultKind if k.per_symbol} == {
        MarketFaultKind.GARBAGE, MarketFaultKind.CROSSED, MarketFaultKind.STALE}


def test_schedule_from_config_sorts_by_start_ties_in_config_order() -> None:
    cfg = config([
        {"at_s": 5, "venue": "okx", "kind": "stall", "for_s": 2},
        {"at_s": 1, "venue": "bybit", "kind": "drop"},
        {"at_s": 5, "venue": "gate", "kind": "crossed", "for_s": 1, "symbol": "BTC-PERP"},
    ])
    sched = schedule_from_config(cfg)
    assert [(f.index, f.venue, f.kind) for f in sched] == [
        (1, "bybit", MarketFaultKind.DROP), (0, "okx", MarketFaultKind.STALL), (2, "gate", MarketFaultKind.CROSSED)]
    assert sched[2].symbol == "BTC-PERP"
    assert sched[1].end_s == 7 and sched[0].end_s == 1
    assert schedule_from_config(config()) == ()


def test_active_at_is_a_half_open_window_and_drops_are_never_in_force() -> None:
    stall = fault(0, 1.0, "stall", 2.0)
    crossed = fault(1, 2.0, "crossed", 0.5, symbol="BTC-PERP")
    drop = fault(2, 2.0, "drop")
    sched = (stall, crossed, drop)
    assert active_at(sched, 0.999) == ()
    assert active_at(sched, 1.0) == (stall,)
    assert active_at(sched, 2.0) == (stall, crossed)
    assert active_at(sched, 2.5) == (stall,)
    assert active_at(sched, 3.0) == ()
    assert boundaries(sched) == [1.0, 2.0, 2.5, 3.0]


def test_transitions_replayed_in_order_give_what_is_active() -> None:
    sched = (fault(0, 0.0, "garbage", 1.0), fault(1, 1.0, "stale", 1.0), fault(2, 1.0, "drop"),
             fault(3, 1.5, "refuse", 0.5), fault(4, 2.0, "stall", 1.0, venue="gate"))
    active: list[ScheduledFault] = []
    for t in boundaries(sched):
        ending, starting = transitions(sched, t)
        for f in ending:
            if f.kind.lasts:
                active.remove(f)
        active.extend(f for f in starting if f.kind.lasts)
        assert sorted(active, key=lambda f: f.index) == list(active_at(sched, t))
    assert transitions(sched, 1.0) == ([sched[0], sched[2]], [sched[1], sched[2]])
    assert active == []


class Target:
    def __init__(self, name: str, calls: list[tuple[str, str, int]]) -> None:
        self.name = name
        self.calls = calls

    def start_fault(self, f: ScheduledFault) -> None:
        self.calls.append(("start", self.name, f.index))

    def end_fault(self, f: ScheduledFault) -> None:
        self.calls.append(("end", self.name, f.index))


def test_the_driver_starts_and_ends_each_fault_at_its_time_and_logs_it(caplog: pytest.LogCaptureFixture) -> None:
    sched = (fault(0, 1.0, "stall", 2.0), fault(1, 3.0, "drop", venue="gate"),
             fault(2, 3.0, "crossed", 1.0, symbol="ETH-PERP"))
    now = [10_000_000_000]
    calls: list[tuple[str, str, int]] = []
    sleeps: list[float] = []

    async def sleep(s: float) -> None:
        sleeps.append(round(s, 6))
        now[0] += round(s * 1e9)

    targets = {"okx": Target("okx", calls), "gate": Target("gate", calls)}
    with caplog.at_level(logging.WARNING, logger="perpbot.sim"):
        asyncio.run(run_schedule(sched, targets, start_ns=now[0], clock=lambda: now[0], sleep=sleep))
    assert sleeps == [1.0, 2.0, 1.0]
    assert calls == [("start", "okx", 0), ("end", "okx", 0), ("start", "gate", 1), ("end", "gate", 1),
                     ("start", "okx", 2), ("end", "okx", 2)]
    assert [r.getMessage() for r in caplog.records] == [
        "fault stall on okx started: demo.faults[0], for 2 s",
        "fault stall on okx ended: demo.faults[0]",
        "fault drop on gate started: demo.faults[1]",
        "fault drop on gate ended: demo.faults[1]",
        "fault crossed on okx started: demo.faults[2], ETH-PERP, for 1 s",
        "fault crossed on okx ended: demo.faults[2]",
    ]
    assert all(r.levelno == logging.WARNING for r in caplog.records)


def test_the_driver_applies_boundaries_already_past_at_once_in_order() -> None:
    sched = (fault(0, 0.0, "stall", 0.1), fault(1, 0.05, "refuse", 0.1))
    calls: list[tuple[str, str, int]] = []

    async def never(s: float) -> None:
        raise AssertionError("no boundary is in the future")

    asyncio.run(run_schedule(sched, {"okx": Target("okx", calls)}, start_ns=0, clock=lambda: 10**9, sleep=never))
    assert calls == [("start", "okx", 0), ("start", "okx", 1), ("end", "okx", 0), ("end", "okx", 1)]


# -- malformed frames -------------------------------------------------------------------------------

BINANCE_FRAME = Frame(
    b'{"stream":"btcusdt@bookTicker","data":{"e":"bookTicker","u":17,"s":"BTCUSDT","b":"60000.1",'
    b'"B":"0.812","a":"60000.2","A":"1.090","T":1786541241006,"E":1786541241006}}')


def test_garbage_text_frames_are_all_refused_by_the_parser() -> None:
    assert binanceusdm.parse(BINANCE_FRAME.payload)  # the good frame parses
    seen = set()
    for n in range(2 * GARBAGE_VARIANTS):
        bad = garbage_frame(BINANCE_FRAME, n)
        assert not bad.binary
        assert bad.payload != BINANCE_FRAME.payload
        seen.add(bad.payload)
        with pytest.raises(ParseError):
            binanceusdm.parse(bad.payload)
    assert len(seen) == GARBAGE_VARIANTS
    wrong = orjson.loads(garbage_frame(BINANCE_FRAME, 2).payload)
    assert wrong["stream"] == "btcusdt@bookTicker" and wrong["data"]["s"] == "BTCUSDT"
    assert wrong["data"]["b"] == {"value": "60000.1"} and wrong["data"]["u"] == "17?"


def test_garbage_binary_frames_are_refused_by_the_paradex_parser() -> None:
    good = Frame(bbo_event("BTC-USD-PERP", 60000.1, 0.5, 60000.2, 0.7, 1_786_541_241_006_000, 5), True)
    parse = paradex.SPEC.make_parser(ParserContext())
    assert parse(good.payload, True)
    kinds = []
    for n in range(GARBAGE_VARIANTS):
        bad = garbage_frame(good, n)
        kinds.append(bad.binary)
        with pytest.raises(ParseError):
            parse(bad.payload, bad.binary)
    assert kinds == [True, True, True, False]  # and one invalid JSON text frame
    assert struct.unpack_from("<HH", garbage_frame(good, 1).payload)[1] == 0x7A7A
    assert struct.unpack_from("<H", garbage_frame(good, 2).payload)[0] == 0xFFFF


# -- config -------------------------------------------------------------------------------------------

FAULT_ERRORS = [
    ({"at_s": 1, "venue": "nope", "kind": "drop"}, "$.demo.faults[0].venue", "allowed: binanceusdm, okx"),
    ({"at_s": 1, "venue": "okx", "kind": "explode"}, "$.demo.faults[0].kind",
     "allowed: drop, stall, garbage, crossed, stale, refuse"),
    ({"at_s": -1, "venue": "okx", "kind": "drop"}, "$.demo.faults[0].at_s", ">= 0"),
    ({"at_s": 1, "venue": "okx", "kind": "stall", "for_s": -2}, "$.demo.faults[0].for_s", ">= 0"),
    ({"at_s": 1, "venue": "okx", "kind": "stall"}, "$.demo.faults[0].for_s", "must be > 0"),
    ({"at_s": 1, "venue": "okx", "kind": "drop", "for_s": 3}, "$.demo.faults[0].for_s", "instantaneous"),
    ({"at_s": float("inf"), "venue": "okx", "kind": "drop"}, "$.demo.faults[0].at_s", "finite"),
    ({"at_s": 1, "venue": "okx", "kind": "refuse", "for_s": 1, "symbol": "BTC-PERP"}, "$.demo.faults[0].symbol",
     "garbage, crossed, stale"),
    ({"at_s": 1, "venue": "okx", "kind": "crossed", "for_s": 1, "symbol": "DOGE-PERP"},
     "$.demo.faults[0].symbol", "allowed: BTC-PERP, ETH-PERP, SOL-PERP"),
    ({"at_s": 1, "venue": "okx", "kind": "drop", "when": 3}, "$.demo.faults[0].when", "unknown key"),
    ({"venue": "okx", "kind": "drop"}, "$.demo.faults[0].at_s", "required"),
]


@pytest.mark.parametrize(("entry", "path", "words"), FAULT_ERRORS)
def test_bad_demo_faults_name_the_entry_and_what_is_allowed(entry: dict[str, Any], path: str, words: str) -> None:
    with pytest.raises(ConfigError) as ei:
        config([entry])
    assert ei.value.path == path
    assert words in ei.value.problem


def test_the_second_bad_entry_is_named_by_its_index() -> None:
    with pytest.raises(ConfigError) as ei:
        config([{"at_s": 1, "venue": "okx", "kind": "drop"}, {"at_s": 1, "venue": "okx", "kind": "bad"}])
    assert ei.value.path == "$.demo.faults[1].kind"


DRIFT_ERRORS = [
    ({"at_s": 1, "venue": "nope", "symbol": "BTC-PERP", "qty": "0.01"}, "$.paper.drift[0].venue", "allowed:"),
    ({"at_s": 1, "venue": "okx", "symbol": "DOGE-PERP", "qty": "0.01"}, "$.paper.drift[0].symbol", "allowed:"),
    ({"at_s": -1, "venue": "okx", "symbol": "BTC-PERP", "qty": "0.01"}, "$.paper.drift[0].at_s", ">= 0"),
    ({"at_s": 1, "venue": "okx", "symbol": "BTC-PERP", "qty": "0.0005"}, "$.paper.drift[0].qty", "lots (0.001)"),
    ({"at_s": 1, "venue": "okx", "symbol": "BTC-PERP", "qty": 0}, "$.paper.drift[0].qty", "non-zero"),
    ({"at_s": 1, "venue": "okx", "symbol": "BTC-PERP"}, "$.paper.drift[0].qty", "required"),
]


@pytest.mark.parametrize(("entry", "path", "words"), DRIFT_ERRORS)
def test_bad_paper_drift_names_the_entry(entry: dict[str, Any], path: str, words: str) -> None:
    with pytest.raises(ConfigError) as ei:
        config(drift=[entry])
    assert ei.value.path == path
    assert words in ei.value.problem


def test_good_schedules_load() -> None:
    cfg = config([{"at_s": 0, "venue": "paradex", "kind": "garbage", "for_s": 0.5},
                  {"at_s": 2.5, "venue": "okx", "kind": "stale", "for_s": 1, "symbol": "ETH-PERP"}],
                 [{"at_s": 3, "venue": "bybit", "symbol": "SOL-PERP", "qty": -1.5}])
    assert cfg.demo.faults[1].symbol == "ETH-PERP" and cfg.demo.faults[0].for_s == 0.5
    assert cfg.paper.drift[0].qty == D("-1.5")
    assert config().demo.faults == () and config().paper.drift == ()


# -- paper drift --------------------------------------------------------------------------------------

T0 = 1_786_000_000_000


class Wall:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> int:
        return self.t


@pytest.fixture
def board() -> Iterator[tuple[QuoteBoard, BoardWriter]]:
    cfg = config()
    with ExitStack() as stack:
        b, _status = stack.enter_context(segments(cfg))
        w = b.writer(cfg.venue_names.index("okx"))
        stack.callback(w.release)
        yield b, w


def drift_venue(board: QuoteBoard, wall: Callable[[], int], drift: list[dict[str, Any]],
                ledger: Path | None = None) -> PaperVenue:
    cfg = config(drift=drift)
    return PaperVenue("okx", cfg.venue_names.index("okx"), cfg, board, wall_ms=wall, ledger_path=ledger)


def positions(v: PaperVenue) -> dict[str, D]:
    return {s: p.qty for s, p in asyncio.run(v.positions()).items()}


DRIFT = [{"at_s": 2, "venue": "okx", "symbol": "BTC-PERP", "qty": "-0.015"},
         {"at_s": 1, "venue": "okx", "symbol": "ETH-PERP", "qty": "0.1"},
         {"at_s": 1, "venue": "bybit", "symbol": "BTC-PERP", "qty": "1"}]


def test_scheduled_drift_is_booked_by_the_venues_calls_at_its_time(
        board: tuple[QuoteBoard, BoardWriter], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    b, w = board
    w.write(0, 60000.0, 60000.2, 1.0, 1.0, 1, 1)
    w.write(1, 3000.0, 3000.02, 1.0, 1.0, 1, 1)
    wall = Wall()
    v = drift_venue(b, wall, DRIFT, tmp_path / "okx.jsonl")
    wall.t += 5_000  # not connected yet: the clock has not started
    asyncio.run(v.connect())
    with caplog.at_level(logging.WARNING):
        assert positions(v) == {}
        wall.t += 999
        assert positions(v) == {}
        wall.t += 1
        assert positions(v) == {"ETH-PERP": D("0.1")}
        wall.t += 1_000
        assert positions(v) == {"ETH-PERP": D("0.1"), "BTC-PERP": D("-0.015")}
    fills = {f.client_order_id: f for f in v.ledger}
    assert set(fills) == {"external-okx-drift-0", "external-okx-drift-1"}  # bybit's entry is bybit's
    assert fills["external-okx-drift-0"].price == D("60000.1")  # the mid
    lines = [r.getMessage() for r in caplog.records if "scheduled drift" in r.getMessage()]
    assert lines == [
        "paper venue okx: scheduled drift paper.drift[1] booked: external buy 0.1 ETH-PERP at 3000.01, "
        "position now 0.1",
        "paper venue okx: scheduled drift paper.drift[0] booked: external sell 0.015 BTC-PERP at 60000.1, "
        "position now -0.015",
    ]
    asyncio.run(v.close())
    # the account remembers: a venue reloaded from the ledger does not book them again
    again = drift_venue(b, wall, DRIFT, tmp_path / "okx.jsonl")
    asyncio.run(again.connect())
    wall.t += 10_000
    assert positions(again) == {"ETH-PERP": D("0.1"), "BTC-PERP": D("-0.015")}
    assert len(again.ledger) == 2
    asyncio.run(again.close())


def test_drift_without_a_quote_waits_for_one(board: tuple[QuoteBoard, BoardWriter],
                                             caplog: pytest.LogCaptureFixture) -> None:
    b, w = board
    wall = Wall()
    v = drift_venue(b, wall, DRIFT[:1])
    asyncio.run(v.connect())
    wall.t += 2_000
    with caplog.at_level(logging.WARNING):
        assert positions(v) == {}
        wall.t += 50
        assert positions(v) == {}
        wall.t += 100
        assert positions(v) == {}
        w.write(0, 60000.0, 60000.2, 1.0, 1.0, 1, 1)
        assert positions(v) == {}  # tried again DRIFT_RETRY_MS after the last try
        wall.t += 100
        assert positions(v) == {"BTC-PERP": D("-0.015")}
    waits = [r for r in caplog.records if "waits" in r.getMessage()]
    assert len(waits) == 1 and "no quote for BTC-PERP" in waits[0].getMessage()
    asyncio.run(v.close())


def test_drift_is_booked_by_the_background_task(board: tuple[QuoteBoard, BoardWriter]) -> None:
    b, w = board
    w.write(0, 60000.0, 60000.2, 1.0, 1.0, 1, 1)
    v = drift_venue(b, lambda: __import__("time").time_ns() // 1_000_000,
                    [{"at_s": 0.2, "venue": "okx", "symbol": "BTC-PERP", "qty": "0.002"}])

    async def scenario() -> None:
        await v.connect()
        for _ in range(200):  # bounded: 10 s
            if v.ledger:
                break
            await asyncio.sleep(0.05)
        await v.close()

    asyncio.run(scenario())
    assert [(f.client_order_id, f.qty) for f in v.ledger] == [("external-okx-drift-0", D("0.002"))]
