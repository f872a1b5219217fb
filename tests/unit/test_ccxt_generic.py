"""The generic ccxt.pro feed's pure parts: feed selection, unit conversion, the conflation sweep, URLs.

Conversions run on ccxt's own parsed results of recorded live frames
(`tests/data/ccxt/ws-parsed.json`) with the contract sizes ccxt's market
fixtures hold (`contract-markets.json`).
"""

from __future__ import annotations

import importlib
import math
from typing import Any

import orjson
import pytest
from kit import DATA

from perpbot.feeds import ccxt_generic
from perpbot.feeds.ccxt_generic import (
    CcxtFeedError,
    MarketUnits,
    binance_ws_base,
    ccxt_exchange_ids,
    choose_method,
    describe,
    fresh_updates,
    is_ccxt_feed,
    load_markets_file,
    make_exchange,
    market_units,
    order_book_to_bbo,
    point_ws_url,
    ticker_to_bbo,
)
from perpbot.feeds.registry import FEEDS
from perpbot.feeds.spec import BBO, ParseError

CCXT = DATA / "ccxt"
PARSED: dict[str, Any] = orjson.loads((CCXT / "ws-parsed.json").read_bytes())
MARKETS: dict[str, Any] = orjson.loads((CCXT / "contract-markets.json").read_bytes())

OKX_BTC = market_units(MARKETS["okx"]["BTC/USDT:USDT"])
GATE_BTC = market_units(MARKETS["gate"]["BTC/USDT:USDT"])
COINM_BTC = market_units(MARKETS["binance"]["BTC/USD:BTC"])
HL_BTC = market_units(MARKETS["hyperliquid"]["BTC/USDC:USDC"])


# -- selecting the feed ---------------------------------------------------------------


def test_ccxt_prefix_selects_the_feed_and_returns_the_id() -> None:
    assert is_ccxt_feed("ccxt:binanceusdm") == "binanceusdm"
    assert is_ccxt_feed("ccxt:lighter") == "lighter"
    assert is_ccxt_feed("binanceusdm") is None  # a native feed
    assert is_ccxt_feed("okx") is None


@pytest.mark.parametrize("name", ["ccxt:gateio", "ccxt:dydxv4", "ccxt:", "ccxt:Binanceusdm"])
def test_unknown_ccxt_id_is_refused_with_a_hint(name: str) -> None:
    with pytest.raises(ValueError, match=r"ccxt\.pro has no exchange") as e:
        is_ccxt_feed(name)
    if name == "ccxt:gateio":
        assert "ccxt:gate" in str(e.value)  # venues-notes: gateio is not an id in 4.5.90


def test_exchange_ids_are_ccxt_pros_list_without_importing_it() -> None:
    import ccxt.pro

    assert ccxt_exchange_ids() == frozenset(ccxt.pro.exchanges)
    for venue in ("lighter", "grvt", "backpack", "aster", "dydx", "binanceusdm", "okx", "gate"):
        assert venue in ccxt_exchange_ids()


def test_it_is_not_a_venue_module_and_says_it_is_slower() -> None:
    mod = importlib.import_module("perpbot.feeds.ccxt_generic")
    assert not hasattr(mod, "SPEC")  # the registry treats modules with SPEC as native venues
    assert "ccxt_generic" not in FEEDS
    assert describe() == "ccxt.pro generic feed (slower than native)"


# -- units ----------------------------------------------------------------------------


def test_contract_sizes_come_from_ccxt_markets() -> None:
    assert market_units(MARKETS["okx"]["BTC/USDT:USDT"]) == MarketUnits(0.01)  # ctVal
    assert market_units(MARKETS["gate"]["BTC/USDT:USDT"]) == MarketUnits(0.0001)  # quanto_multiplier
    assert market_units(MARKETS["binance"]["BTC/USD:BTC"]) == MarketUnits(100.0, inverse=True)  # USD/contract
    assert market_units(MARKETS["hyperliquid"]["BTC/USDC:USDC"]) == MarketUnits(1.0)
    assert market_units(MARKETS["binance"]["BTC/USDT"]) == MarketUnits()  # spot: base units
    assert market_units(None) == MarketUnits()


def test_config_contract_size_overrides_the_market_and_a_missing_one_means_one() -> None:
    assert market_units(MARKETS["okx"]["BTC/USDT:USDT"], override=0.001) == MarketUnits(0.001)
    assert market_units({"symbol": "X/USD:USD", "contract": True, "contractSize": None}) == MarketUnits(1.0)
    with pytest.raises(ValueError, match="contractSize"):
        market_units({"symbol": "X/USD:USD", "contract": True, "contractSize": 0})


def test_inverse_contracts_become_base_units_at_their_own_price() -> None:
    ticker = {"bid": 60000.0, "ask": 60010.0, "bidVolume": 3, "askVolume": 6, "timestamp": 1_786_541_241_006}
    q = ticker_to_bbo("BTC/USD:BTC", ticker, COINM_BTC)
    assert q is not None
    assert q.bid_size == pytest.approx(3 * 100 / 60000.0)
    assert q.ask_size == pytest.approx(6 * 100 / 60010.0)


# -- order books (top level only) --------------------------------------------------------------


def test_okx_swap_book_in_contracts_becomes_base_units() -> None:
    book = PARSED["okx_book_swap"]["parsed"]  # bids [63921.4, 421.93 contracts], asks [63921.5, 790.41]
    q = order_book_to_bbo("BTC/USDT:USDT", book, OKX_BTC)
    assert q is not None
    assert (q.symbol, q.bid, q.ask, q.ts_exchange_ns) == ("BTC/USDT:USDT", 63921.4, 63921.5, 1_786_541_241_006_000_000)
    assert q.bid_size == pytest.approx(4.2193) and q.ask_size == pytest.approx(7.9041)  # BTC, not contracts


def test_gate_swap_book_in_contracts_becomes_base_units() -> None:
    book = PARSED["gate_book_swap"]["parsed"]  # bids [64013, 22258 contracts], asks [64013.1, 44970]
    q = order_book_to_bbo("BTC/USDT:USDT", book, GATE_BTC)
    assert q is not None
    assert (q.bid, q.ask) == (64013.0, 64013.1)
    assert q.bid_size == pytest.approx(2.2258) and q.ask_size == pytest.approx(4.497)
    assert q.ts_exchange_ns == book["timestamp"] * 1_000_000


def test_hyperliquid_book_is_already_in_base_units() -> None:
    book = PARSED["hyperliquid_book_swap"]["parsed"]
    q = order_book_to_bbo("BTC/USDC:USDC", book, HL_BTC)
    assert q == BBO("BTC/USDC:USDC", 64094.0, 64095.0, 12.29409, 2.37411, 1_786_539_643_751 * 1_000_000)


def test_a_one_sided_book_writes_nothing() -> None:
    book = dict(PARSED["hyperliquid_book_swap"]["parsed"])
    assert order_book_to_bbo("BTC/USDC:USDC", {**book, "bids": []}, HL_BTC) is None
    assert order_book_to_bbo("BTC/USDC:USDC", {**book, "asks": []}, HL_BTC) is None
    assert order_book_to_bbo("BTC/USDC:USDC", {"timestamp": 1}, HL_BTC) is None
    assert order_book_to_bbo("BTC/USDC:USDC", {**book, "bids": [[None, 1.0]]}, HL_BTC) is None


def test_a_malformed_book_level_is_a_parse_error() -> None:
    with pytest.raises(ParseError) as e:
        order_book_to_bbo("X", {"bids": [[1.0]], "asks": [[2.0, 1.0]]}, HL_BTC)
    assert e.value.kind == "unexpected_shape"


# -- tickers / bids-asks -----------------------------------------------------------------


def test_bids_asks_without_exchange_time_get_zero() -> None:
    (ticker,) = PARSED["binance_bidsasks_spot"]["parsed"].values()  # Binance spot bookTicker has no time
    assert ticker["timestamp"] is None
    q = ticker_to_bbo("BTC/USDT", ticker, market_units(MARKETS["binance"]["BTC/USDT"]))
    assert q == BBO("BTC/USDT", 63704.0, 63704.01, 4.77471, 11.33198, 0)


def test_bids_asks_with_exchange_time_and_unknown_fields_ignored() -> None:
    (ticker,) = PARSED["bybit_bidsasks_spot"]["parsed"].values()
    assert "info" in ticker and "vwap" in ticker  # plenty of fields the feed does not read
    q = ticker_to_bbo("BTC/USDT", ticker, MarketUnits())
    assert q == BBO("BTC/USDT", 63705.3, 63705.4, 2.045546, 2.334566, 1_786_613_159_749 * 1_000_000)


def test_a_ticker_without_bid_and_ask_writes_nothing() -> None:
    ticker = PARSED["gate_ticker_swap"]["parsed"]  # Gate's futures.tickers carries no book at all
    assert ticker["bid"] is None and ticker["last"] is not None
    assert ticker_to_bbo("BTC/USDT:USDT", ticker, GATE_BTC) is None


@pytest.mark.parametrize("missing", ["bid", "ask", "bidVolume", "askVolume"])
def test_any_missing_price_or_size_writes_nothing(missing: str) -> None:
    ticker = {"bid": 1.0, "ask": 2.0, "bidVolume": 3.0, "askVolume": 4.0, "timestamp": 1_700_000_000_000}
    assert ticker_to_bbo("X", ticker, MarketUnits()) is not None
    assert ticker_to_bbo("X", {**ticker, missing: None}, MarketUnits()) is None
    del ticker[missing]
    assert ticker_to_bbo("X", ticker, MarketUnits()) is None


@pytest.mark.parametrize(("change", "kind"), [
    ({"bid": 2.5}, "crossed_book"),
    ({"bid": "abc"}, "bad_number"),
    ({"ask": math.nan}, "non_finite"),
    ({"bid": 0.0}, "non_positive_price"),
    ({"askVolume": -1.0}, "negative_size"),
    ({"timestamp": "1700000000000"}, "bad_timestamp"),
    ({"timestamp": 10**14}, "bad_timestamp"),
    ({"timestamp": True}, "bad_timestamp"),
])
def test_garbage_is_a_parse_error_with_a_kind(change: dict[str, Any], kind: str) -> None:
    ticker = {"bid": 1.0, "ask": 2.0, "bidVolume": 3.0, "askVolume": 4.0, "timestamp": 1_700_000_000_000, **change}
    with pytest.raises(ParseError) as e:
        ticker_to_bbo("X", ticker, OKX_BTC)
    assert e.value.kind == kind


def test_timestamps_are_ms_to_ns_and_strings_become_floats() -> None:
    ticker = {"bid": "1.5", "ask": "2", "bidVolume": "3", "askVolume": 4, "timestamp": 1_700_000_000_123.0}
    q = ticker_to_bbo("X", ticker, MarketUnits())
    assert q == BBO("X", 1.5, 2.0, 3.0, 4.0, 1_700_000_000_123_000_000)


# -- the conflation sweep -------------------------------------------------------------------


def test_sweep_writes_updates_ccxt_cached_while_we_were_not_waiting() -> None:
    seen: dict[str, object] = dict.fromkeys(["BTC/USDT:USDT", "ETH/USDT:USDT"])
    btc1, btc2, eth1 = {"bid": 1}, {"bid": 2}, {"bid": 3}
    # woken with btc1, but btc2 and eth1 landed in the cache before we looked
    out = fresh_updates({"BTC/USDT:USDT": btc1}, {"BTC/USDT:USDT": btc2, "ETH/USDT:USDT": eth1}, seen)
    assert out == [("BTC/USDT:USDT", btc2), ("ETH/USDT:USDT", eth1)]  # latest only, each once
    assert fresh_updates({"BTC/USDT:USDT": btc1}, {"BTC/USDT:USDT": btc2, "ETH/USDT:USDT": eth1}, seen) == []
    btc3 = {"bid": 1}  # equal values, new update: still written (it refreshes the receive stamp)
    assert fresh_updates({"BTC/USDT:USDT": btc3}, {"BTC/USDT:USDT": btc3, "ETH/USDT:USDT": eth1}, seen) == [
        ("BTC/USDT:USDT", btc3)]


def test_sweep_without_a_cache_uses_what_watch_returned_and_ignores_other_symbols() -> None:
    seen: dict[str, object] = dict.fromkeys(["BTC/USDT:USDT"])
    t = {"bid": 1}
    assert fresh_updates({"BTC/USDT:USDT": t, "DOGE/USDT:USDT": {}}, None, seen) == [("BTC/USDT:USDT", t)]
    assert fresh_updates({"BTC/USDT:USDT": t}, {}, seen) == []


# -- method choice, markets, URLs -------------------------------------------------------------


class _Has:
    def __init__(self, **has: Any) -> None:
        self.id = "x"
        self.has = has


def test_bids_asks_where_the_exchange_has_it_else_order_book() -> None:
    assert choose_method(_Has(watchBidsAsks=True, watchOrderBook=True)) == "bids_asks"
    assert choose_method(_Has(watchBidsAsks=None, watchOrderBook=True)) == "order_book"
    assert choose_method(_Has(watchBidsAsks=True, watchOrderBook=True), "order_book") == "order_book"
    with pytest.raises(CcxtFeedError, match="neither"):
        choose_method(_Has(watchBidsAsks=False, watchOrderBook=None))
    with pytest.raises(CcxtFeedError, match="no watchBidsAsks"):
        choose_method(_Has(watchOrderBook=True), "bids_asks")


def test_markets_file_loads_and_a_wrong_one_is_refused(tmp_path: Any) -> None:
    markets = load_markets_file(CCXT / "binanceusdm-markets.json")
    assert set(markets) == {"BTC/USDT:USDT", "ETH/USDT:USDT"}
    assert markets["BTC/USDT:USDT"]["id"] == "BTCUSDT" and markets["BTC/USDT:USDT"]["linear"] is True
    bad = tmp_path / "bad.json"
    bad.write_text('{"BTC/USDT:USDT": {"symbol": "ETH/USDT:USDT"}}')
    with pytest.raises(CcxtFeedError):
        load_markets_file(bad)


@pytest.mark.parametrize(("url", "base"), [
    ("ws://127.0.0.1:4000/public/ws", "ws://127.0.0.1:4000/ws"),
    ("wss://fstream.binance.com/ws", "wss://fstream.binance.com/ws"),
    ("ws://127.0.0.1:4000/public/stream", "ws://127.0.0.1:4000/public/stream?ccxt_stream="),
    ("ws://127.0.0.1:4000/public/stream?x=1", "ws://127.0.0.1:4000/public/stream?x=1&ccxt_stream="),
])
def test_binance_ws_base(url: str, base: str) -> None:
    assert binance_ws_base(url) == base


def test_ccxt_binanceusdm_reaches_the_url_it_is_pointed_at() -> None:
    markets = load_markets_file(CCXT / "binanceusdm-markets.json")
    ex = make_exchange("binanceusdm", markets=markets, ws_url="ws://127.0.0.1:4000/public/stream")
    # ccxt's own URL building for the bookTicker stream: get_ws_url(type, category) + "/" + stream index
    assert ex.get_ws_url("linear", "public") + "/0" == "ws://127.0.0.1:4000/public/stream?ccxt_stream=/0"
    point_ws_url(ex, "ws://127.0.0.1:4000/public/ws")
    assert ex.get_ws_url("linear", "public") + "/0" == "ws://127.0.0.1:4000/public/ws/0"
    assert ex.markets["BTC/USDT:USDT"]["id"] == "BTCUSDT"  # preset: load_markets will not call the venue


def test_no_url_rule_for_other_exchanges_is_a_clear_error() -> None:
    ex = make_exchange("gate")
    with pytest.raises(CcxtFeedError, match="no rule to point"):
        point_ws_url(ex, "ws://127.0.0.1:4000/x")
    assert "binanceusdm" in ccxt_generic.WS_URL_RULES
