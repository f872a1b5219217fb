"""The ccxt venue without I/O: units, rounding, client ids, statuses, errors, fees, funding,
credentials, the clock offset, and order types against a scripted exchange object."""

from __future__ import annotations

import asyncio
from decimal import Decimal as D
from typing import Any

import ccxt
import pytest

from perpbot.config import ccxt_id_of
from perpbot.errors import FatalError, RejectedError, RetryableError
from perpbot.exec.venues.base import OrderRequest, OrderResult, OrderStatus, OrderType, Side
from perpbot.exec.venues.ccxt_venue import (
    CREDENTIAL_CONFIG_KEYS,
    HOUR_MS,
    QUIRKS,
    CcxtVenue,
    client_order_id_problem,
    contract_size,
    credential_env_names,
    credentials_from_env,
    dec,
    error_class,
    funding_from_ccxt,
    interval_ms,
    lookup_params,
    market_from_ccxt,
    order_params,
    order_status,
    passphrase_env_name,
    to_base,
    to_contracts,
    trade_fee,
    venue_client_order_id,
)

SEED = {"binanceusdm", "okx", "bybit", "bitget", "gate", "hyperliquid", "paradex", "extended"}
OKX_BTC: dict[str, Any] = {
    "id": "BTC-USDT-SWAP", "symbol": "BTC/USDT:USDT", "base": "BTC", "quote": "USDT", "settle": "USDT",
    "type": "swap", "spot": False, "swap": True, "contract": True, "linear": True, "inverse": False,
    "contractSize": 0.01, "precision": {"amount": 0.01, "price": 0.1},
    "limits": {"amount": {"min": 0.01}, "cost": {"min": None}, "price": {}, "leverage": {}}, "info": {},
}


def test_one_quirks_row_per_seed_venue() -> None:
    assert set(QUIRKS) == SEED


def test_contracts_and_base_units() -> None:
    assert contract_size(OKX_BTC) == D("0.01")
    assert contract_size({"contractSize": None}) == 1
    assert to_contracts(D("0.05"), D("0.01")) == 5
    assert to_base(D(5), D("0.01")) == D("0.05")
    assert to_base(D(3), D("0.0001")) == D("0.0003")  # Gate BTC_USDT quanto_multiplier


def test_dec_keeps_the_written_value() -> None:
    assert dec(0.1) == D("0.1") and dec(None) == 0 and dec("25.585") == D("25.585") and dec(3) == 3


def test_market_grid_is_in_base_units() -> None:
    m = market_from_ccxt("BTC-PERP", OKX_BTC)
    assert (m.tick_size, m.lot_size, m.min_notional_usd) == (D("0.1"), D("0.0001"), D(0))


def test_client_ids_per_venue() -> None:
    assert order_params("binanceusdm", client_order_id="d1a")["newClientOrderId"] == "d1a"
    assert order_params("okx", client_order_id="d1a")["clOrdId"] == "d1a"
    assert order_params("bybit", client_order_id="d1a")["orderLinkId"] == "d1a"
    assert order_params("bitget", client_order_id="d1a")["clientOid"] == "d1a"
    assert order_params("gate", client_order_id="d1a")["text"] == "t-d1a"
    assert venue_client_order_id("gate", "t-d1a") == "t-d1a"  # never prefixed twice
    cloid = order_params("hyperliquid", client_order_id="d1a")["clientOrderId"]
    assert cloid == venue_client_order_id("hyperliquid", "d1a")  # deterministic: a retry reuses it
    assert len(cloid) == 34 and cloid.startswith("0x")
    assert lookup_params("binanceusdm", "d1a") == {"origClientOrderId": "d1a"}
    assert lookup_params("gate", "d1a") == {"text": "t-d1a"}


def test_client_id_rules() -> None:
    assert client_order_id_problem("okx", "d1a") == ""
    assert "okx" in client_order_id_problem("okx", "d-1-a")  # OKX: letters and digits only
    assert client_order_id_problem("binanceusdm", "x" * 37) != ""
    assert client_order_id_problem("gate", "x" * 29) != ""
    assert client_order_id_problem("hyperliquid", "anything-at-all") == ""  # hashed


def test_order_params_flags() -> None:
    p = order_params("bybit", client_order_id="a", reduce_only=True, ioc=True)
    assert p == {"orderLinkId": "a", "reduceOnly": True, "timeInForce": "IOC"}
    assert order_params("okx", client_order_id="a", ioc=False, post_only=True)["postOnly"] is True
    with pytest.raises(ValueError):
        order_params("okx", client_order_id="a", ioc=True, post_only=True)


@pytest.mark.parametrize(("state", "filled", "want"), [
    ("closed", 5, OrderStatus.FILLED),
    ("canceled", 2, OrderStatus.PARTIAL),
    ("expired", 0, OrderStatus.EXPIRED),
    ("canceled", 0, OrderStatus.EXPIRED),
    ("rejected", 0, OrderStatus.REJECTED),
    ("open", 2, None),
    (None, 5, OrderStatus.FILLED),  # Hyperliquid's filled IOC carries no state
    (None, 2, None),
])
def test_status_mapping(state: str | None, filled: float, want: OrderStatus | None) -> None:
    assert order_status({"status": state, "filled": filled}, D(5)) is want


@pytest.mark.parametrize(("exc", "want"), [
    (ccxt.InsufficientFunds, RejectedError), (ccxt.InvalidOrder, RejectedError),
    (ccxt.BadSymbol, RejectedError), (ccxt.OrderNotFound, RejectedError),
    (ccxt.NetworkError, RetryableError), (ccxt.RequestTimeout, RetryableError),
    (ccxt.DDoSProtection, RetryableError), (ccxt.RateLimitExceeded, RetryableError),
    (ccxt.BadResponse, RetryableError), (ccxt.ExchangeNotAvailable, RetryableError),
    (ccxt.AuthenticationError, FatalError), (ccxt.PermissionDenied, FatalError),
    (ccxt.AccountSuspended, FatalError), (RuntimeError, RetryableError),
])
def test_error_mapping(exc: type[BaseException], want: type[Exception]) -> None:
    assert error_class(exc("x")) is want


def test_credentials_come_from_named_variables() -> None:
    env = {"OKX_K": "k", "OKX_S": "s", "OKX_P": "p"}
    names = {"apiKey": "OKX_K", "secret": "OKX_S", "password": "OKX_P"}
    assert credentials_from_env("okx", names, env) == {"apiKey": "k", "secret": "s", "password": "p"}
    with pytest.raises(FatalError, match=r"password \(\$OKX_P\)") as err:
        credentials_from_env("okx", names, {"OKX_K": "k", "OKX_S": "s"})
    assert "k" not in str(err.value).split(":")[-1].replace("okx", "")


class FakeExchange:
    """Just enough of a ccxt exchange for place_order's local checks (no I/O)."""

    def __init__(self) -> None:
        self.markets = {"BTC/USDT:USDT": OKX_BTC}
        self.markets_by_id = {"BTC-USDT-SWAP": [OKX_BTC]}
        self.sent: list[tuple[Any, ...]] = []

    def set_markets(self, markets: Any) -> None:
        pass

    def market(self, symbol: str) -> dict[str, Any]:
        return self.markets[symbol]

    def amount_to_precision(self, symbol: str, amount: str) -> str:
        return str(D(amount).quantize(D("0.01"), rounding="ROUND_DOWN").normalize())

    def price_to_precision(self, symbol: str, price: str) -> str:
        return str(D(price).quantize(D("0.1")))

    async def create_order(self, *args: Any) -> dict[str, Any]:
        self.sent.append(args)
        return {"id": "1", "symbol": args[0], "status": "closed", "amount": args[3], "filled": args[3],
                "average": 60000.0, "fee": {"cost": 0.3, "currency": "USDT"}}


def test_place_order_converts_to_contracts_and_back() -> None:
    ex = FakeExchange()
    venue = CcxtVenue("okx", "okx", {"BTC-PERP": "BTC-USDT-SWAP"}, exchange=ex)

    async def run() -> None:
        await venue.connect()
        assert venue.markets()["BTC-PERP"].lot_size == D("0.0001")
        res = await venue.place_order(OrderRequest("d1a", "BTC-PERP", Side.BUY, D("0.05"), D("60000.0")))
        assert ex.sent[-1][:5] == ("BTC/USDT:USDT", "limit", "buy", 5.0, 60000.0)
        assert ex.sent[-1][5] == {"clOrdId": "d1a", "timeInForce": "IOC"}
        assert res.status is OrderStatus.FILLED and res.filled_qty == D("0.05") and res.fee == D("0.3")
        off = await venue.place_order(OrderRequest("d2a", "BTC-PERP", Side.BUY, D("0.00005"), D("60000.0")))
        assert off.status is OrderStatus.REJECTED and "grid" in off.reason
        bad = await venue.place_order(OrderRequest("d-3", "BTC-PERP", Side.BUY, D("0.05"), D("60000.0")))
        assert bad.status is OrderStatus.REJECTED and "client order id" in bad.reason
        assert len(ex.sent) == 1  # refusals never reach the venue

    asyncio.run(run())


# --------------------------------------------------------------------------- the extended interface


def test_market_carries_contract_size_and_fees() -> None:
    m = market_from_ccxt("BTC-PERP", {**OKX_BTC, "taker": 0.0005, "maker": 0.0002})
    assert (m.contract_size, m.taker_fee, m.maker_fee) == (D("0.01"), D("0.0005"), D("0.0002"))
    plain = market_from_ccxt("BTC-PERP", {**OKX_BTC, "contractSize": None})
    assert (plain.contract_size, plain.taker_fee, plain.maker_fee) == (1, 0, 0)


@pytest.mark.parametrize(("interval", "want"), [
    ("8h", 8 * HOUR_MS), ("1h", HOUR_MS), ("4h", 4 * HOUR_MS), ("30m", 1_800_000), ("1d", 24 * HOUR_MS),
    (None, None), ("", None), ("eight hours", None), (8, None),
])
def test_funding_interval(interval: Any, want: int | None) -> None:
    assert interval_ms(interval) == want


def test_funding_rate_interval_falls_back_to_the_venue_default() -> None:
    given = funding_from_ccxt("BTC-PERP", {"fundingRate": 0.0001, "interval": "4h",
                                           "fundingTimestamp": 1730736000000}, 8 * HOUR_MS)
    assert (given.rate, given.interval_ms, given.next_funding_ms) == (D("0.0001"), 4 * HOUR_MS, 1730736000000)
    none = funding_from_ccxt("BTC-PERP", {"fundingRate": -0.00002, "interval": None}, 8 * HOUR_MS)
    assert (none.rate, none.interval_ms, none.next_funding_ms) == (D("-0.00002"), 8 * HOUR_MS, 0)
    assert QUIRKS["hyperliquid"].funding_interval_ms == HOUR_MS
    assert QUIRKS["extended"].funding_interval_ms == HOUR_MS
    assert {i for i, q in QUIRKS.items() if q.funding_interval_ms == 8 * HOUR_MS} == SEED - {"hyperliquid", "extended"}


def test_trade_fee_in_the_quote_asset() -> None:
    market = {"base": "BTC", "quote": "USDT", "settle": "USDT"}
    assert trade_fee({"price": 60000.0, "fee": {"cost": 0.3, "currency": "USDT"}}, market) == D("0.3")
    # `fees` wins over `fee` (ccxt lists the same fee in both)
    both = {"price": 60000.0, "fee": {"cost": 0.3, "currency": "USDT"},
            "fees": [{"cost": 0.3, "currency": "USDT"}]}
    assert trade_fee(both, market) == D("0.3")
    assert trade_fee({"price": 60000.0, "fee": {"cost": 0.00001, "currency": "BTC"}}, market) == D("0.6")
    assert trade_fee({"price": 60000.0, "fee": {"cost": -0.1, "currency": "USDT"}}, market) == D("-0.1")
    assert trade_fee({"price": 60000.0, "fee": None}, market) == 0
    with pytest.raises(ValueError, match="BNB"):
        trade_fee({"id": "7", "price": 60000.0, "fee": {"cost": 0.001, "currency": "BNB"}}, market)


def test_credential_variables_from_the_two_config_keys() -> None:
    assert credential_env_names("binanceusdm", "B_KEY", "B_SECRET") == {"apiKey": "B_KEY", "secret": "B_SECRET"}
    assert credential_env_names("okx", "OKX_API_KEY", "OKX_API_SECRET") == {
        "apiKey": "OKX_API_KEY", "secret": "OKX_API_SECRET", "password": "OKX_API_PASSPHRASE"}
    assert passphrase_env_name("BITGET_TOKEN") == "BITGET_TOKEN_PASSPHRASE"
    assert credential_env_names("hyperliquid", "HL_WALLET", "HL_PRIVATE") == {
        "walletAddress": "HL_WALLET", "privateKey": "HL_PRIVATE"}
    assert credential_env_names("extended", "X_KEY", None) == {"apiKey": "X_KEY"}
    assert credential_env_names("okx", None, None) == {}
    for q in QUIRKS.values():  # every field any venue needs has a config key
        assert set(q.credentials) <= set(CREDENTIAL_CONFIG_KEYS)


def test_ccxt_id_of_a_configured_venue() -> None:
    assert ccxt_id_of(None, "okx") == "okx"
    assert ccxt_id_of(None, "ccxt:gate") == "gate"
    assert ccxt_id_of("binanceusdm", "ccxt:binance") == "binanceusdm"


#: the venues whose ccxt nonce subtracts options['timeDifference'] (read from ccxt's source)
HONOURS_TIME_DIFFERENCE = {"binanceusdm", "okx", "bybit", "bitget", "gate"}


@pytest.mark.parametrize("ccxt_id", sorted(SEED))
def test_clock_offset_reaches_ccxt_nonce(ccxt_id: str) -> None:
    offset = 3_600_000  # the venue's clock an hour ahead of ours: unmistakable
    assert QUIRKS[ccxt_id].time_difference is (ccxt_id in HONOURS_TIME_DIFFERENCE)

    async def run() -> None:
        before = CcxtVenue(ccxt_id, ccxt_id, {})
        before.set_clock_offset_ms(offset)  # before the ccxt object exists: passed at construction
        before.exchange = before._make_exchange()
        after = CcxtVenue(ccxt_id, ccxt_id, {})
        after.exchange = after._make_exchange()
        plain = after.exchange.nonce()
        after.set_clock_offset_ms(offset)  # on the live object
        try:
            for v in (before, after):
                assert v.exchange.options["timeDifference"] == -offset
                assert v.honours_clock_offset is QUIRKS[ccxt_id].time_difference
                n = v.exchange.nonce()
                if v.honours_clock_offset:
                    assert abs(n - (v.exchange.milliseconds() + offset)) < 2000
                else:
                    assert abs(n - plain) < 2000  # local clock (in the venue's nonce unit)
        finally:
            await before.close()
            await after.close()

    asyncio.run(run())


class ScriptedExchange(FakeExchange):
    """FakeExchange whose create_order and fetch_order answer with the given states."""

    def __init__(self, created: dict[str, Any], fetched: list[dict[str, Any]] | None = None) -> None:
        super().__init__()
        self.created = created
        self.fetched = list(fetched or [])
        self.fetches = 0

    async def create_order(self, *args: Any) -> dict[str, Any]:
        self.sent.append(args)
        return {"id": "9", "symbol": args[0], "side": args[2], "amount": args[3], **self.created}

    async def fetch_order(self, *args: Any) -> dict[str, Any]:
        self.fetches += 1
        return {"id": "9", "symbol": "BTC/USDT:USDT", "side": "buy", "amount": 5.0, **self.fetched.pop(0)}


def _place(ex: FakeExchange, req: OrderRequest) -> OrderResult:
    venue = CcxtVenue("okx", "okx", {"BTC-PERP": "BTC-USDT-SWAP"}, exchange=ex, confirm_delay_s=0)

    async def run() -> OrderResult:
        await venue.connect()
        return await venue.place_order(req)

    return asyncio.run(run())


def test_post_only_rests_and_returns_open() -> None:
    ex = ScriptedExchange({"status": "open", "filled": 0.0})
    res = _place(ex, OrderRequest("p1", "BTC-PERP", Side.BUY, D("0.05"), D("60000.0"), OrderType.POST_ONLY))
    assert res.status is OrderStatus.OPEN and not res.status.terminal and res.fills == ()
    assert res.venue_order_id == "9"
    assert ex.sent[-1][1] == "limit" and ex.sent[-1][5] == {"clOrdId": "p1", "postOnly": True}


def test_limit_is_gtc_and_waits_only_until_it_rests() -> None:
    # OKX answers a new order with its ids only: one lookup tells it rests (part filled)
    ex = ScriptedExchange({"status": None}, [{"status": "open", "filled": 2.0}])
    res = _place(ex, OrderRequest("l1", "BTC-PERP", Side.BUY, D("0.05"), D("60000.0"), OrderType.LIMIT))
    assert res.status is OrderStatus.OPEN and ex.fetches == 1
    assert ex.sent[-1][5] == {"clOrdId": "l1"}  # no timeInForce: the venue's default, GTC


def test_limit_that_fills_at_once_is_terminal() -> None:
    ex = ScriptedExchange({"status": "closed", "filled": 5.0, "average": 60000.0})
    res = _place(ex, OrderRequest("l2", "BTC-PERP", Side.BUY, D("0.05"), D("60000.0"), OrderType.LIMIT))
    assert res.status is OrderStatus.FILLED and res.filled_qty == D("0.05")


def test_post_only_cancelled_at_once_is_rejected() -> None:
    ex = ScriptedExchange({"status": None}, [{"status": "canceled", "filled": 0.0}])
    res = _place(ex, OrderRequest("p2", "BTC-PERP", Side.BUY, D("0.05"), D("60000.0"), OrderType.POST_ONLY))
    assert res.status is OrderStatus.REJECTED and "would have taken liquidity" in res.reason


def test_ioc_still_waits_until_terminal() -> None:
    ex = ScriptedExchange({"status": "open", "filled": 0.0},
                          [{"status": "open", "filled": 1.0}, {"status": "canceled", "filled": 1.0}])
    res = _place(ex, OrderRequest("i1", "BTC-PERP", Side.BUY, D("0.05"), D("60000.0")))
    assert res.status is OrderStatus.PARTIAL and res.filled_qty == D("0.01") and ex.fetches == 2
    assert ex.sent[-1][5] == {"clOrdId": "i1", "timeInForce": "IOC"}


@pytest.mark.parametrize("kind", [OrderType.LIMIT, OrderType.POST_ONLY])
def test_resting_orders_need_a_price(kind: OrderType) -> None:
    ex = ScriptedExchange({"status": "open"})
    res = _place(ex, OrderRequest("n1", "BTC-PERP", Side.BUY, D("0.05"), None, kind))
    assert res.status is OrderStatus.REJECTED and "limit price" in res.reason and not ex.sent
