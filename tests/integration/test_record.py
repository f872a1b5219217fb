"""perpbot-record against the demo market on loopback: the file reads back to frames the feed accepts."""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

import orjson
import pytest
import uvloop
import yaml
from kit import ROOT, example_raw, make_config

from perpbot.config import Config
from perpbot.feeds import binanceusdm
from perpbot.feeds.registry import get_feed
from perpbot.feeds.spec import BBO, ParserContext
from perpbot.record import RecordedConnection, read_recording, record
from perpbot.sim.server import serve_market

DEADLINE_S = 60.0


def parse_all(conn: RecordedConnection, feed: str = "binanceusdm", cfg: Config | None = None,
              venue: str = "") -> list[BBO]:
    """Every received frame through a fresh parser of the feed (pongs aside): a ParseError fails the test."""
    spec = get_feed(feed)
    ctx = ParserContext()
    if cfg is not None:
        vc = cfg.venues[venue]
        ctx = ParserContext({vc.symbols[b]: size for b, size in vc.contract_sizes.items()})
    parse = spec.make_parser(ctx)
    out: list[BBO] = []
    for f in conn.received:
        if spec.ping is not None and not f.binary and spec.ping.is_pong(f.payload):
            continue
        out.extend(parse(f.payload, True) if f.binary else parse(f.payload))
    return out


def test_record_the_demo_market_in_process(tmp_path: Path) -> None:
    out = tmp_path / "binance.ws"

    async def scenario() -> None:
        async with await serve_market(make_config()) as market:
            url = market.urls["binanceusdm"]
            st = await record(binanceusdm.SPEC, url, ["BTCUSDT", "ETHUSDT"], out, seconds=1.0)
        assert (st.connections, st.frames_sent, st.dropped) == (1, 1, 0)
        assert st.frames_received > 10
        (conn,) = read_recording(out)
        assert conn.url == url
        assert [f.payload for f in conn.sent] == binanceusdm.subscribe(["BTCUSDT", "ETHUSDT"])
        assert len(conn.received) == st.frames_received
        assert orjson.loads(conn.received[0].payload) == {"result": None, "id": 1}  # the ack comes first
        quotes = parse_all(conn)
        assert len(quotes) == st.frames_received - 1
        assert {q.symbol for q in quotes} == {"BTCUSDT", "ETHUSDT"}
        assert conn.opened <= conn.sent[0].t <= conn.received[0].t
        assert [f.t for f in conn.received] == sorted(f.t for f in conn.received)

    uvloop.run(scenario())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["binance.ws"]  # the part files are gone


@pytest.mark.parametrize("venue", example_raw()["venues"])
def test_every_demo_venue_records_in_its_own_protocol(venue: str, tmp_path: Path) -> None:
    """Whatever the protocol (pings, greetings, snapshots, binary SBE, a connection per market)."""
    cfg = make_config()
    vc = cfg.venues[venue]
    spec = get_feed(vc.feed)
    out = tmp_path / f"{venue}.ws"
    urls: list[str] = []

    async def scenario() -> None:
        async with await serve_market(cfg) as market:
            urls.extend(url for url, _ in spec.connections(market.urls[venue], list(vc.symbols.values())))
            await record(spec, market.urls[venue], list(vc.symbols.values()), out, seconds=1.0)

    uvloop.run(scenario())
    conns = read_recording(out)
    assert [c.url for c in conns] == urls  # one section per connection, in the feed's order
    symbols: set[str] = set()
    for c in conns:
        symbols |= {q.symbol for q in parse_all(c, vc.feed, cfg, venue)}
    assert symbols == set(vc.symbols.values())
    assert any(f.binary for c in conns for f in c.received) is spec.binary


def _one_per_symbol(base_url: str, symbols: Sequence[str]) -> list[tuple[str, list[str]]]:
    return [(base_url, [s]) for s in symbols]


def test_several_connections_become_sections_in_order(tmp_path: Path) -> None:
    out = tmp_path / "split.ws"
    spec = dataclasses.replace(binanceusdm.SPEC, connections=_one_per_symbol)

    async def scenario() -> None:
        async with await serve_market(make_config()) as market:
            await record(spec, market.urls["binanceusdm"], ["SOLUSDT", "BTCUSDT"], out, seconds=1.0)

    uvloop.run(scenario())
    sol, btc = read_recording(out)
    assert {q.symbol for q in parse_all(sol)} == {"SOLUSDT"}
    assert {q.symbol for q in parse_all(btc)} == {"BTCUSDT"}


def test_the_command_records_a_venue_of_the_config(tmp_path: Path) -> None:
    raw = example_raw()
    cfg_path = tmp_path / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    out = tmp_path / "cmd.ws"

    async def scenario() -> tuple[int, str, str]:
        async with await serve_market(make_config()) as market:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "perpbot.record", "--config", str(cfg_path), "--venue", "bitget",
                "--symbols", "ETH-PERP,SOL-PERP", "--out", str(out), "--seconds", "1",
                "--url", market.urls["bitget"], cwd=ROOT,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )
            try:
                stdout, stderr = await asyncio.wait_for(proc.communicate(), DEADLINE_S)
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            assert proc.returncode is not None
            return proc.returncode, stdout.decode(), stderr.decode()

    rc, stdout, stderr = uvloop.run(scenario())
    assert rc == 0, stderr
    assert "recorded" in stdout and str(out) in stdout
    (conn,) = read_recording(out)
    assert {q.symbol for q in parse_all(conn, "bitget", make_config(), "bitget")} == {"ETHUSDT", "SOLUSDT"}


def test_the_command_refuses_unknown_venues_and_symbols(tmp_path: Path) -> None:
    from perpbot.record import main

    cfg_path = tmp_path / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(example_raw()))
    common = ["--config", str(cfg_path), "--out", str(tmp_path / "x.ws")]
    assert main([*common, "--venue", "kraken", "--symbols", "BTC-PERP"]) == 2
    assert main([*common, "--venue", "okx", "--symbols", "DOGE-PERP"]) == 2
    assert main([*common, "--venue", "okx", "--symbols", "BTC-PERP", "--seconds", "0"]) == 2
    assert main(["--config", str(tmp_path / "missing.yaml"), "--out", "x", "--venue", "okx",
                 "--symbols", "BTC-PERP"]) == 2
    assert not (tmp_path / "x.ws").exists()


def test_a_refused_connection_leaves_no_file(tmp_path: Path) -> None:
    out = tmp_path / "none.ws"

    async def scenario() -> None:
        async with await serve_market(make_config()) as market:
            url = market.urls["binanceusdm"]
        # the market is closed now: nothing listens on its port
        with pytest.raises(OSError):
            await record(binanceusdm.SPEC, url, ["BTCUSDT"], out, seconds=1.0)

    uvloop.run(scenario())
    assert list(tmp_path.iterdir()) == []
