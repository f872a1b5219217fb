"""Config: every wrong key, type or value names its path and what is allowed."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from kit import EXAMPLE_CONFIG, example_raw

from perpbot.config import load_config, parse_config
from perpbot.errors import ConfigError


def test_example_config_loads_frozen_and_typed() -> None:
    cfg = load_config(EXAMPLE_CONFIG)
    assert cfg.mode == "demo"
    assert cfg.venue_names == ("binanceusdm", "okx", "bybit", "bitget", "gate", "hyperliquid", "paradex", "extended")
    assert cfg.venues["okx"].contract_sizes["BTC-PERP"] == 0.01
    assert cfg.symbols["BTC-PERP"].lot_size == Decimal("0.001")
    with pytest.raises(AttributeError):
        cfg.scanner.poll = "spin"  # type: ignore[misc]


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(raw: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = raw
        for p in parents:
            node = node[p]
        node[last] = value
    return mutate


def _drop(path: str) -> Callable[[dict[str, Any]], None]:
    def mutate(raw: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = raw
        for p in parents:
            node = node[p]
        del node[last]
    return mutate


@pytest.mark.parametrize(
    "mutate, path, words",
    [
        (_set("scanner.poll", "fast"), "$.scanner.poll", "allowed values: spin, hybrid, sleep"),
        (_set("scanner.bogus", 1), "$.scanner.bogus", "unknown key; allowed keys: core, poll"),
        (_set("bogus", 1), "$.bogus", "unknown key"),
        (_set("mode", "live"), "$.venues.binanceusdm.api_key_env", "mode live trades with binanceusdm"),
        (_set("mode", "moon"), "$.mode", "allowed values: demo, replay, paper, readonly, live"),
        (_set("venues.okx.feed", "okx_v9"), "$.venues.okx.feed", "allowed: binanceusdm, bitget, bybit"),
        (_set("venues.okx.feed", "ccxt:gateio"), "$.venues.okx.feed", "ccxt:gate"),
        (_set("venues.okx.feed", "ccxt:aster"), "$.venues.okx.feed", "use mode paper"),
        (_set("venues.okx.ccxt_markets_file", "m.json"), "$.venues.okx.ccxt_markets_file", "only for a ccxt"),
        (_set("venues.okx.contract_sizes", {"DOGE-PERP": 1}), "$.venues.okx.contract_sizes.DOGE-PERP",
         "not one of this venue's symbols"),
        (_set("venues.okx.taker_fee_bps", "five"), "$.venues.okx.taker_fee_bps", "Expected `float`"),
        (_set("venues.okx.taker_fee_bps", -1), "$.venues.okx.taker_fee_bps", ">= 0"),
        (_drop("venues.okx.taker_fee_bps"), "$.venues.okx.taker_fee_bps", "required key is missing"),
        (_set("venues.okx.symbols.DOGE-PERP", "DOGEUSDT"), "$.venues.okx.symbols.DOGE-PERP", "unknown symbol"),
        (_set("venues.okx.api_key_env", "abc123secret"), "$.venues.okx.api_key_env", "NAME of an environment"),
        (_set("venues.okx.url", "http://x"), "$.venues.okx.url", "ws://"),
        (_set("symbols.BTC-PERP.lot_size", "abc"), "$.symbols.BTC-PERP.lot_size", "decimal"),
        (_set("symbols.BTC-PERP.tick_size", "0"), "$.symbols.BTC-PERP.tick_size", "positive"),
        (_set("scanner.core", 4096), "$.scanner.core", "cores 0.."),
        (_set("scanner.stale_after_ms", 0), "$.scanner.stale_after_ms", ">= 1"),
        (_set("feed.reconnect_max_ms", 1), "$.feed.reconnect_max_ms", ">= $.feed.reconnect_initial_ms"),
        (_set("exec.trade_notional_usd", 10**9), "$.exec.trade_notional_usd", "max_notional_per_trade_usd"),
        (_drop("demo.prices.ETH-PERP"), "$.demo.prices.ETH-PERP", "starting price"),
        (_set("demo.venues.kraken", {}), "$.demo.venues.kraken", "unknown venue"),
        (_set("demo.venues.okx.update_hz", 0), "$.demo.venues.okx.update_hz", "> 0"),
        (_set("venues", {"okx": example_raw()["venues"]["okx"]}), "$.venues", "at least two venues"),
        (_set("run.control_tcp", "tcp://0.0.0.0:7700"), "$.run.curve_server_secret_env", "needs CURVE"),
        (_set("run.control_tcp", "0.0.0.0:7700"), "$.run.control_tcp", "tcp://HOST:PORT"),
        (_set("run.curve_client_public_keys", ["short"]), "$.run.curve_client_public_keys[0]", "40 Z85"),
    ],
)
def test_errors_name_the_key_path(mutate: Callable[[dict[str, Any]], None], path: str, words: str) -> None:
    raw = example_raw()
    mutate(raw)
    with pytest.raises(ConfigError) as ei:
        parse_config(raw)
    assert ei.value.path == path, str(ei.value)
    assert words in str(ei.value)


def test_unreadable_and_non_yaml_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("venues: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- a list")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_config(bad)


def test_a_ccxt_venue_is_accepted_in_paper_mode() -> None:
    raw = example_raw()
    raw["mode"] = "paper"
    raw["venues"]["aster"] = {"feed": "ccxt:aster", "taker_fee_bps": 4.0,
                              "symbols": {"BTC-PERP": "BTC/USDT:USDT"}}
    cfg = parse_config(raw)
    assert cfg.venues["aster"].feed == "ccxt:aster"


def test_the_configuration_reference_is_generated_from_the_schema() -> None:
    import subprocess
    import sys

    from kit import ROOT

    r = subprocess.run([sys.executable, str(ROOT / "tools" / "config_reference.py"), "--check"],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    text = (ROOT / "docs" / "CONFIG.md").read_text()
    for key in ("scanner.poll", "venues.<name>.contract_sizes", "risk.max_open_trades", "demo.venues.<name>.update_hz"):
        assert f"`{key}`" in text
