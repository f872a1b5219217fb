"""Replay mode's config: the recording must be readable and spoken by a venue; which venue serves it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kit import DATA, example_raw

from perpbot.config import AVAILABLE_MODES, parse_config
from perpbot.errors import ConfigError
from perpbot.feeds import binanceusdm
from perpbot.record import RecordedConnection, RecordedFrame, opened_line
from perpbot.sim.protocols.binanceusdm import BinanceUsdmProtocol
from perpbot.sim.replay import feed_matches, recorded_topics, recording_feeds, replay_venue

BINANCE = DATA / "recorded" / "BINANCE_FUTURES.ws.1.0"


def replay_raw(**replay: Any) -> dict[str, Any]:
    raw = example_raw()
    raw["mode"] = "replay"
    raw["replay"] = {"file": str(BINANCE), **replay}
    return raw


def test_replay_is_an_available_mode() -> None:
    assert "replay" in AVAILABLE_MODES
    cfg = parse_config(replay_raw(speed=4))
    assert cfg.mode == "replay"
    assert cfg.replay is not None
    assert (cfg.replay.file, cfg.replay.speed, cfg.replay.as_fast_as_possible) == (str(BINANCE), 4.0, False)
    with pytest.raises(AttributeError):
        cfg.replay.speed = 2.0  # type: ignore[misc]


def test_the_first_venue_whose_feed_speaks_the_recording_serves_it() -> None:
    url = "wss://fstream.binance.com/stream?streams=btcusdt@bookTicker"
    raw = replay_raw()
    raw["venues"] = {"binance2": {**raw["venues"]["binanceusdm"]}, **raw["venues"]}
    cfg = parse_config(raw)
    assert replay_venue(cfg, url) == "binance2"  # two venues speak binanceusdm: config order decides
    assert replay_venue(cfg, "wss://ws.okx.com:8443/ws/v5/public") == "okx"
    assert replay_venue(cfg, "wss://example.org/feed") is None
    raw["replay"]["venue"] = "binanceusdm"
    assert replay_venue(parse_config(raw), url) == "binanceusdm"
    raw["replay"]["venue"] = "okx"
    with pytest.raises(ConfigError):
        parse_config(raw)


@pytest.mark.parametrize(
    ("url", "feeds"),
    [
        ("wss://fstream.binance.com/stream?streams=x@bookTicker", {"binanceusdm"}),
        ("wss://ws.okx.com:8443/ws/v5/public", {"okx"}),
        ("wss://fx-ws.gateio.ws/v4/ws/usdt", {"gate"}),
        # recordings of the demo market: the longest demo path they lie under
        ("ws://127.0.0.1:40123/public/stream", {"binanceusdm"}),
        ("ws://127.0.0.1:40123/ws/v5/public", {"okx"}),
        ("ws://127.0.0.1:40123/ws", {"hyperliquid"}),
        ("ws://127.0.0.1:40123/stream.extended.exchange/v1/orderbooks/BTC-USD?depth=1", {"extended"}),
        ("ws://127.0.0.1:40123/v1?sbeSchemaId=1&sbeSchemaVersion=0", {"paradex"}),
        ("ws://127.0.0.1:40123/elsewhere", set()),
        ("wss://example.org/ws/v5/public/x", {"okx"}),
    ],
)
def test_which_feeds_a_recording_speaks(url: str, feeds: set[str]) -> None:
    assert recording_feeds(url) == feeds
    assert feed_matches(binanceusdm.SPEC, url) is ("binanceusdm" in feeds)


def _recording(tmp_path: Path, first_line: str) -> str:
    p = tmp_path / "r.ws"
    p.write_text(first_line + "\n")
    return str(p)


@pytest.mark.parametrize(
    ("replay", "path", "words"),
    [
        (None, "$.replay.file", "replay mode needs a recording"),
        ({"file": "no/such/recording.ws"}, "$.replay.file", "cannot read recording"),
        ({"file": "NOT_A_RECORDING"}, "$.replay.file", "is not a recording"),
        ({"file": "ELSEWHERE"}, "$.replay.file", "no venue's feed matches the recording of wss://example.org"),
        ({"file": str(BINANCE), "venue": "kraken"}, "$.replay.venue", "unknown venue; allowed: binanceusdm"),
        ({"file": str(BINANCE), "speed": 0}, "$.replay.speed", "> 0"),
        ({"file": str(BINANCE), "pace": 1}, "$.replay.pace", "unknown key"),
        ({"speed": 2}, "$.replay.file", "required key is missing"),
    ],
)
def test_replay_errors_name_the_key(tmp_path: Path, replay: dict[str, Any] | None, path: str, words: str) -> None:
    raw = example_raw()
    raw["mode"] = "replay"
    if replay is not None:
        if replay.get("file") == "NOT_A_RECORDING":
            replay["file"] = _recording(tmp_path, '{"a": 1}')
        elif replay.get("file") == "ELSEWHERE":
            replay["file"] = _recording(tmp_path, opened_line("wss://example.org/feed", 1.0))
        raw["replay"] = replay
    with pytest.raises(ConfigError) as ei:
        parse_config(raw)
    assert ei.value.path == path, str(ei.value)
    assert words in str(ei.value)


def test_a_chosen_venue_must_speak_the_recording() -> None:
    raw = replay_raw(venue="okx")
    with pytest.raises(ConfigError) as ei:
        parse_config(raw)
    assert ei.value.path == "$.replay.venue"
    assert "does not match the recording" in str(ei.value)


def test_other_modes_do_not_read_the_recording() -> None:
    raw = example_raw()
    raw["replay"] = {"file": "no/such/recording.ws"}
    assert parse_config(raw).mode == "demo"


def test_recorded_topics_come_from_the_url_and_the_sent_requests() -> None:
    proto = BinanceUsdmProtocol(binanceusdm.SPEC.demo_path)
    by_url = RecordedConnection("wss://fstream.binance.com/stream?streams=SUSHIUSDT@bookTicker/sushiusdt@aggTrade", 1.0)
    assert recorded_topics(proto, by_url) == {"sushiusdt@bookTicker", "sushiusdt@aggTrade"}
    sub = b'{"method":"SUBSCRIBE","params":["btcusdt@bookTicker","ethusdt@bookTicker"],"id":1}'
    unsub = b'{"method":"UNSUBSCRIBE","params":["ethusdt@bookTicker"],"id":2}'
    by_request = RecordedConnection("ws://127.0.0.1:1/public/stream", 1.0,
                                    [RecordedFrame(1.1, sub), RecordedFrame(1.2, unsub)])
    assert recorded_topics(proto, by_request) == {"btcusdt@bookTicker"}
    assert recorded_topics(proto, RecordedConnection("wss://fstream.binance.com/ws", 1.0)) == frozenset()
