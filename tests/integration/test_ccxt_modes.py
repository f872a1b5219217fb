"""Modes readonly and live: which venues `make_venues` builds, what readonly lets through, what the
config and the launcher refuse.

Readonly venues run against a loopback HTTP server answering ccxt's real
(signed, dummy-keyed) requests with the recorded replies of the ccxt project's
fixtures (tests/data/ccxt-static/; a Binance funding-rate reply is built from
the documented /fapi/v1/premiumIndex format and says so). The server records
every request and counts any that reaches an order endpoint as a violation:
the create / cancel / edit endpoints the recorded request files name for
Binance USDⓈ-M, OKX, Bybit and Hyperliquid, any non-GET request to a path
naming orders, and Hyperliquid's action endpoint (/exchange). A self-test
shows an unwrapped live venue's orders and cancels are caught for all four.

The launcher runs as a real `perpbot-launch` process with a temporary live
config: refused without --confirm-live, refused with it when a credential
variable is unset or empty, with no segment, run directory or process left and
no secret value in its output.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from aiohttp import web
from kit import DATA, example_raw, make_config, segments
from loopback_http import LoopbackHttp, loopback_urls

from perpbot.config import parse_config
from perpbot.errors import ConfigError, PerpBotError
from perpbot.exec.venues.base import OrderRequest, OrderStatus, OrderType, Side
from perpbot.exec.venues.ccxt_venue import QUIRKS, CcxtVenue
from perpbot.exec.venues.paper import PaperVenue
from perpbot.exec.venues.registry import READONLY_REASON, ReadOnlyVenue, live_start_refusal, make_venues

FIXTURES = DATA / "ccxt-static"
MARKETS: dict[str, list[dict[str, Any]]] = json.loads((FIXTURES / "markets.json").read_text())
#: our ccxt id -> the fixture files' venue name
FILES = {"binanceusdm": "binance", "okx": "okx", "bybit": "bybit", "hyperliquid": "hyperliquid"}
#: unified methods that place, change or cancel orders
ORDER_METHODS = ("createOrder", "createOrders", "editOrder", "cancelOrder", "cancelOrders", "cancelAllOrders")
#: dummy credentials (ccxt signs with them; nothing checks the signatures)
ENV = {"T_KEY": "k" * 64, "T_SECRET": "s" * 64, "T_OKX_KEY": "k" * 64, "T_OKX_SECRET": "s" * 64,
       "T_OKX_PASSPHRASE": "passphrase", "T_WALLET": "0x" + "22" * 20, "T_PRIVATE": "0x" + "11" * 32}


def _load(kind: str, name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{kind}-{name}.json").read_text())  # type: ignore[no-any-return]


def _order_endpoints() -> set[tuple[str, str]]:
    """(HTTP method, path) of every recorded order-writing request of the four venues."""
    out: set[tuple[str, str]] = set()
    for name in [*FILES.values(), "binanceusdm"]:
        for method in ORDER_METHODS:
            for case in _load("request", name)["methods"].get(method, []):
                out.add((str(case.get("method") or "POST").upper(), urlsplit(case["url"]).path))
    return out


ORDER_ENDPOINTS = _order_endpoints()


def is_order_endpoint(method: str, path: str) -> bool:
    return ((method, path) in ORDER_ENDPOINTS or path == "/exchange"
            or (method != "GET" and "order" in path.lower()))


def test_the_order_endpoints_are_known() -> None:
    for need in [("POST", "/fapi/v1/order"), ("DELETE", "/fapi/v1/order"), ("DELETE", "/fapi/v1/batchOrders"),
                 ("POST", "/api/v5/trade/batch-orders"), ("POST", "/api/v5/trade/cancel-order"),
                 ("POST", "/v5/order/create"), ("POST", "/v5/order/cancel"), ("POST", "/exchange")]:
        assert is_order_endpoint(*need), need
    # reads share paths with orders on Binance (GET /fapi/v1/order is fetchOrder): not flagged
    for read in [("GET", "/fapi/v1/order"), ("GET", "/fapi/v3/account"), ("GET", "/api/v5/trade/order"),
                 ("GET", "/v5/position/list"), ("POST", "/info")]:
        assert not is_order_endpoint(*read), read


class Guard(LoopbackHttp):
    """Loopback venue API: answers with the current reply, records every request, and refuses (HTTP
    500) and remembers any that reaches an order endpoint."""

    def __init__(self) -> None:
        self.reply: Any = {}
        self.requests: list[tuple[str, str]] = []
        self.violations: list[tuple[str, str, str]] = []
        super().__init__()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.text()
        self.requests.append((request.method, request.path))
        if is_order_endpoint(request.method, request.path):
            self.violations.append((request.method, request.path, body[:200]))
            return web.Response(status=500, text='{"error": "order endpoint"}', content_type="application/json")
        reply = self.reply
        return web.Response(text=reply if isinstance(reply, str) else json.dumps(reply),
                            content_type="application/json")


def _point_at(venue: CcxtVenue, base: str) -> None:
    venue.exchange = venue._make_exchange()
    venue.exchange.urls["api"] = loopback_urls(venue.exchange.urls["api"], base)


# --------------------------------------------------------------------------- config of the four venues

#: venue -> (board symbol, venue symbol, recorded fetchBalance case, recorded fetchPositions case)
VENUES = {
    "binanceusdm": ("BTC-PERP", "BTCUSDT", 1, 1),
    "okx": ("LTC-PERP", "LTC-USDT-SWAP", 3, 0),
    "bybit": ("LTC-PERP", "LTCUSDT", 0, 0),
    "hyperliquid": ("SOL-PERP", "SOL/USDC:USDC", 2, 1),
}
KEYS = {"binanceusdm": ("T_KEY", "T_SECRET"), "okx": ("T_OKX_KEY", "T_OKX_SECRET"),
        "bybit": ("T_KEY", "T_SECRET"), "hyperliquid": ("T_WALLET", "T_PRIVATE")}


def _raw(mode: str, tmp: Path) -> dict[str, Any]:
    raw = example_raw()
    raw["mode"] = mode
    raw["symbols"] = {"BTC-PERP": {"lot_size": "0.001", "tick_size": "0.1"},
                      "LTC-PERP": {"lot_size": "0.001", "tick_size": "0.01"},
                      "SOL-PERP": {"lot_size": "0.01", "tick_size": "0.001"}}
    raw["venues"] = {}
    for vid, (board, vsym, _, _) in VENUES.items():
        markets_file = tmp / f"markets-{vid}.json"
        markets = {m["symbol"]: m for m in MARKETS[vid]}
        if vid == "binanceusdm":  # what exchangeInfo lists per symbol; ccxt checks order types against it
            markets = {s: {**m, "info": {"orderTypes": ["LIMIT", "MARKET"], "timeInForce": ["GTC", "IOC", "GTX"]}}
                       for s, m in markets.items()}
        markets_file.write_text(json.dumps(markets))
        key, secret = KEYS[vid]
        raw["venues"][vid] = {"feed": vid, "taker_fee_bps": 5.0, "symbols": {board: vsym},
                              "ccxt_markets_file": str(markets_file), "api_key_env": key, "api_secret_env": secret}
    return raw


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    yield


# --------------------------------------------------------------------------- readonly against the guard


def _case(vid: str, method: str, index: int) -> Any:
    return _load("response", FILES[vid])["methods"][method][index]["httpResponse"]


#: Binance USDⓈ-M /fapi/v1/premiumIndex as its documentation shows it (no recording has one)
PREMIUM_INDEX = {"symbol": "BTCUSDT", "markPrice": "11793.63104562", "indexPrice": "11781.80495970",
                 "estimatedSettlePrice": "11781.16138815", "lastFundingRate": "0.00038246",
                 "interestRate": "0.00010000", "nextFundingTime": 1597392000000, "time": 1597370495002}


def test_readonly_reads_and_never_orders(tmp_path: Path, env: None) -> None:
    cfg = parse_config(_raw("readonly", tmp_path))

    async def run() -> dict[str, Any]:
        guard = Guard()
        await guard.start()
        out: dict[str, Any] = {}
        with segments(cfg) as (board, _):
            made = make_venues(cfg, board)
            venues = [v for v in made if isinstance(v, ReadOnlyVenue)]
            try:
                assert len(venues) == len(made) == len(VENUES)
                for v in venues:
                    assert isinstance(v.inner, CcxtVenue)
                    _point_at(v.inner, guard.base)
                    await v.connect()
                for v in venues:
                    board_sym, _, bal_case, pos_case = VENUES[v.name]
                    guard.reply = _case(v.name, "fetchBalance", bal_case)
                    out[f"{v.name}.balances"] = await v.balances()
                    guard.reply = _case(v.name, "fetchPositions", pos_case)
                    out[f"{v.name}.positions"] = await v.positions()
                    refusals = [await v.place_order(OrderRequest(f"ro{i}", board_sym, Side.BUY,
                                                                 Decimal("0.01"), Decimal("100.0"), kind))
                                for i, kind in enumerate(OrderType)]
                    refusals.append(await v.place_order(OrderRequest("rom", board_sym, Side.SELL, Decimal("0.01"),
                                                                     None, reduce_only=True)))
                    out[f"{v.name}.refusals"] = refusals
                    out[f"{v.name}.cancel"] = await v.cancel_order("ro0", board_sym)
                    out[f"{v.name}.refused"] = v.refused
                by = {v.name: v for v in venues}
                guard.reply = _case("binanceusdm", "fetchMyTrades", 1)
                out["binanceusdm.my_trades"] = await by["binanceusdm"].my_trades()
                guard.reply = PREMIUM_INDEX
                out["binanceusdm.funding"] = await by["binanceusdm"].funding_rate("BTC-PERP")
                guard.reply = _load("response", "okx")["methods"]["fetchTime"][0]["httpResponse"]
                out["okx.time"] = await by["okx"].server_time_ms()
                guard.reply = _load("response", "bybit")["methods"]["fetchFundingHistory"][0]["httpResponse"]
                out["bybit.funding_payments"] = await by["bybit"].funding_payments()
                guard.reply = _case("hyperliquid", "fetchOpenOrders", 1)
                out["hyperliquid.open_orders"] = await by["hyperliquid"].open_orders()
                guard.reply = _case("hyperliquid", "fetchMyTrades", 1)
                out["hyperliquid.my_trades"] = await by["hyperliquid"].my_trades("SOL-PERP")
                # ccxt's own account set-up before a first order (builder-fee approval, referrer), which
                # it also runs from load_markets once keys are set: nothing of it may leave readonly
                guard.reply = "default"
                hl = by["hyperliquid"].inner
                assert isinstance(hl, CcxtVenue)
                await hl.exchange.initialize_client()
            finally:
                for v in venues:
                    await v.close()
                await guard.stop()
        out["requests"] = guard.requests
        out["violations"] = guard.violations
        return out

    out = asyncio.run(run())
    assert out["violations"] == [], out["violations"]  # zero order requests reached the venue
    assert not any(is_order_endpoint(m, p) for m, p in out["requests"])
    assert out["binanceusdm.balances"]["USDT"].total > 0
    assert set(out["okx.balances"]) >= {"USDT", "BTC"} and "USDT" in out["bybit.balances"]
    assert "USDC" in out["hyperliquid.balances"]
    assert out["binanceusdm.positions"]["BTC-PERP"].qty == Decimal("0.009")
    assert out["okx.positions"]["LTC-PERP"].qty == Decimal("0.001")  # 1 contract of 0.001 LTC
    assert out["bybit.positions"]["LTC-PERP"].qty == Decimal("1.2")
    assert out["hyperliquid.positions"]["SOL-PERP"].qty == Decimal("3.34")
    for vid in VENUES:
        refusals = out[f"{vid}.refusals"]
        assert len(refusals) == 4 and out[f"{vid}.refused"] == 4
        for r in refusals:
            assert r.status is OrderStatus.REJECTED and r.reason == READONLY_REASON and r.fills == ()
        assert out[f"{vid}.cancel"] is False
    assert [f.fill_id for f in out["binanceusdm.my_trades"]] == ["binanceusdm:272536245"]
    fr = out["binanceusdm.funding"]
    assert (fr.rate, fr.interval_ms, fr.next_funding_ms) == (Decimal("0.00038246"), 8 * 3_600_000, 1597392000000)
    assert out["okx.time"] == 1712250348676
    assert out["bybit.funding_payments"] and {p.symbol for p in out["bybit.funding_payments"]} == {"LTC-PERP"}
    assert [o.symbol for o in out["hyperliquid.open_orders"]] == ["SOL-PERP"]
    assert out["hyperliquid.my_trades"][0].client_order_id == "0x1234567890abcdef1234567890abcdef"
    assert ("POST", "/info") in out["requests"]  # hyperliquid's set-up asked, but only read


def test_the_guard_catches_orders_of_all_four_venues(tmp_path: Path, env: None) -> None:
    """Without the readonly wrapper every venue's order and cancel reach an order endpoint, and the
    guard records them: the readonly test's zero is a real zero."""
    cfg = parse_config(_raw("live", tmp_path))

    async def run() -> dict[str, tuple[int, int]]:
        guard = Guard()
        await guard.start()
        caught: dict[str, tuple[int, int]] = {}
        with segments(cfg) as (board, _):
            venues = make_venues(cfg, board)
            try:
                for v in venues:
                    assert isinstance(v, CcxtVenue) and not isinstance(v, ReadOnlyVenue)
                    v._confirm_attempts = 0
                    _point_at(v, guard.base)
                    if v.name == "bybit":  # what ccxt otherwise asks /v5/user/query-api first
                        v.exchange.options.update(enableUnifiedMargin=False, enableUnifiedAccount=True)
                    await v.connect()
                    board_sym = VENUES[v.name][0]
                    before = len(guard.violations)
                    m = v.markets()[board_sym]
                    try:  # the guard's refusal comes back as a rejection or an unknown outcome
                        res = await v.place_order(OrderRequest("g1", board_sym, Side.BUY, m.lot_size * 10,
                                                               m.tick_size * 1000))
                        assert res.status is OrderStatus.REJECTED, res
                    except PerpBotError:
                        pass
                    placed = len(guard.violations) - before
                    before = len(guard.violations)
                    try:
                        await v.cancel_order("g1", board_sym)
                    except PerpBotError:
                        pass
                    caught[v.name] = (placed, len(guard.violations) - before)
            finally:
                for v in venues:
                    await v.close()
                await guard.stop()
        return caught

    caught = asyncio.run(run())
    assert set(caught) == set(VENUES)
    for vid, (placed, cancelled) in caught.items():
        assert placed >= 1 and cancelled >= 1, (vid, placed, cancelled)


# --------------------------------------------------------------------------- make_venues and the config


def test_make_venues_by_mode(tmp_path: Path) -> None:
    demo = make_config()
    with segments(demo) as (board, _):
        assert all(type(v) is PaperVenue for v in make_venues(demo, board))
    for mode in ("readonly", "live"):
        cfg = parse_config(_raw(mode, tmp_path))
        with segments(cfg) as (board, _):
            venues = make_venues(cfg, board)
        assert [v.name for v in venues] == list(cfg.venue_names)
        inner = [v.inner if isinstance(v, ReadOnlyVenue) else v for v in venues]
        assert all(isinstance(v, CcxtVenue) for v in inner)
        assert all(isinstance(v, ReadOnlyVenue) for v in venues) is (mode == "readonly")
        for v in inner:
            assert isinstance(v, CcxtVenue)
            assert v.ccxt_id == v.name and v.read_only is (mode == "readonly") and v.exchange is None
        okx = next(v for v in inner if isinstance(v, CcxtVenue) and v.ccxt_id == "okx")
        assert okx._credential_envs == {"apiKey": "T_OKX_KEY", "secret": "T_OKX_SECRET",
                                        "password": "T_OKX_PASSPHRASE"}
        hl = next(v for v in inner if isinstance(v, CcxtVenue) and v.ccxt_id == "hyperliquid")
        assert hl._credential_envs == {"walletAddress": "T_WALLET", "privateKey": "T_PRIVATE"}
        # read-only sessions claim ccxt's builder approval done, so ccxt never sends it
        assert hl._options.get("approvedBuilderFee") is (True if mode == "readonly" else None)
        assert hl._options["builderFee"] is False and hl._options["refSet"] is True


def test_ccxt_id_from_a_ccxt_feed_or_the_key(tmp_path: Path) -> None:
    raw = _raw("live", tmp_path)
    raw["venues"]["bybit"]["feed"] = "ccxt:bybit"
    raw["venues"]["binanceusdm"]["feed"] = "ccxt:binance"
    raw["venues"]["binanceusdm"]["ccxt_id"] = "binanceusdm"
    cfg = parse_config(raw)
    with segments(cfg) as (board, _):
        ids = {v.name: v.ccxt_id for v in make_venues(cfg, board) if isinstance(v, CcxtVenue)}
    assert ids == {"binanceusdm": "binanceusdm", "okx": "okx", "bybit": "bybit", "hyperliquid": "hyperliquid"}


def _config_error(raw: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as err:
        parse_config(raw)
    return err.value


def test_config_accepts_readonly_and_live(tmp_path: Path) -> None:
    assert parse_config(_raw("readonly", tmp_path)).mode == "readonly"
    assert parse_config(_raw("live", tmp_path)).mode == "live"
    raw = _raw("readonly", tmp_path)
    for v in raw["venues"].values():  # readonly reads without keys too (public calls only)
        v.pop("api_key_env")
        v.pop("api_secret_env")
    assert parse_config(raw).mode == "readonly"


def test_config_refuses_a_venue_without_a_ccxt_trading_id(tmp_path: Path) -> None:
    raw = _raw("readonly", tmp_path)
    raw["venues"]["okx"]["ccxt_id"] = "okex5"
    e = _config_error(raw)
    assert e.path == "$.venues.okx.ccxt_id" and "allowed: " + ", ".join(sorted(QUIRKS)) in e.problem
    raw = _raw("live", tmp_path)
    raw["venues"]["bybit"]["feed"] = "ccxt:aster"  # ccxt.pro knows it, we do not trade it
    e = _config_error(raw)
    assert e.path == "$.venues.bybit.ccxt_id" and "'aster'" in e.problem and "hyperliquid" in e.problem
    raw = example_raw()  # an explicit ccxt_id is checked in every mode
    raw["venues"]["okx"]["ccxt_id"] = "nope"
    assert _config_error(raw).path == "$.venues.okx.ccxt_id"


@pytest.mark.parametrize(("venue", "drop"), [("binanceusdm", "api_key_env"), ("okx", "api_secret_env"),
                                             ("hyperliquid", "api_key_env")])
def test_live_needs_every_credential_variable_named(tmp_path: Path, venue: str, drop: str) -> None:
    raw = _raw("live", tmp_path)
    raw["venues"][venue].pop(drop)
    e = _config_error(raw)
    assert e.path == f"$.venues.{venue}.{drop}" and "live" in e.problem


def test_demo_and_replay_still_refuse_ccxt_feeds() -> None:
    raw = example_raw()
    raw["venues"]["okx"]["feed"] = "ccxt:okx"
    e = _config_error(raw)
    assert e.path == "$.venues.okx.feed" and "use mode paper" in e.problem


def test_markets_file_for_native_feeds_only_in_ccxt_modes(tmp_path: Path) -> None:
    raw = _raw("paper", tmp_path)
    assert _config_error(raw).path.endswith(".ccxt_markets_file")
    assert parse_config(_raw("readonly", tmp_path)).venues["okx"].ccxt_markets_file


def test_live_refusal_reasons(tmp_path: Path) -> None:
    cfg = parse_config(_raw("live", tmp_path))
    assert "--confirm-live" in (live_start_refusal(cfg, confirmed=False, environ=ENV) or "")
    assert live_start_refusal(cfg, confirmed=True, environ=ENV) is None
    why = live_start_refusal(cfg, confirmed=True, environ={**ENV, "T_OKX_PASSPHRASE": ""}) or ""
    assert "$T_OKX_PASSPHRASE" in why and "passphrase" not in why.replace("T_OKX_PASSPHRASE", "")
    assert live_start_refusal(parse_config(_raw("readonly", tmp_path)), confirmed=False, environ={}) is None


# --------------------------------------------------------------------------- the launcher


SECRET = "SENTINEL-7f3a9c-do-not-print"


def _launch(tmp: Path, extra_args: list[str], env_updates: dict[str, str | None]) -> tuple[int, str, int]:
    """Run perpbot-launch on a live config; (exit code, stdout + stderr, its pid)."""
    raw = _raw("live", tmp)
    raw["run"] = {"run_root": str(tmp / "run"), "data_dir": str(tmp / "data"), "duration_s": 5}
    cfg_path = tmp / "live.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    env = {**os.environ, **ENV}
    for k, v in env_updates.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    exe = Path(sys.executable).with_name("perpbot-launch")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "perpbot.launch"]
    proc = subprocess.Popen([*cmd, "--config", str(cfg_path), *extra_args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return proc.returncode, out + err, proc.pid


def _assert_nothing_started(tmp: Path, pid: int) -> None:
    shm = Path("/dev/shm")
    if shm.is_dir():
        assert not [p.name for p in shm.iterdir() if f"-{pid}-" in p.name and p.name.startswith("perpbot-")]
    assert not (tmp / "run").exists() or not any((tmp / "run").iterdir())
    assert not (tmp / "data").exists()
    mine = str(tmp)
    for proc_dir in Path("/proc").iterdir():
        if not proc_dir.name.isdigit():
            continue
        try:
            cmdline = (proc_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        assert mine not in cmdline, f"process {proc_dir.name} left running: {cmdline}"


def test_launcher_refuses_live_without_confirmation(tmp_path: Path) -> None:
    rc, out, pid = _launch(tmp_path, [], {"T_SECRET": SECRET, "T_OKX_PASSPHRASE": SECRET})
    assert rc == 2, out
    assert "real money" in out and "--confirm-live" in out
    assert SECRET not in out
    _assert_nothing_started(tmp_path, pid)


def test_launcher_refuses_live_with_a_credential_unset(tmp_path: Path) -> None:
    rc, out, pid = _launch(tmp_path, ["--confirm-live"], {"T_KEY": SECRET, "T_SECRET": None})
    assert rc == 2, out
    assert "$T_SECRET" in out and "binanceusdm" in out and "bybit" in out
    assert "$T_KEY" not in out  # set: not named
    assert SECRET not in out
    _assert_nothing_started(tmp_path, pid)


def test_launcher_refuses_live_with_a_credential_empty(tmp_path: Path) -> None:
    rc, out, pid = _launch(tmp_path, ["--confirm-live"], {"T_OKX_PASSPHRASE": "", "T_OKX_SECRET": SECRET})
    assert rc == 2, out
    assert "$T_OKX_PASSPHRASE" in out and "okx" in out
    assert SECRET not in out and "s" * 64 not in out and "k" * 64 not in out
    _assert_nothing_started(tmp_path, pid)
