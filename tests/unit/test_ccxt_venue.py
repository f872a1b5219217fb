"""Pure conversions of the ccxt venue: units, rounding, client ids, statuses, errors."""

from __future__ import annotations

import asyncio
from decimal import Decimal as D
from typing import Any

import ccxt
import pytest

from perpbot.errors import FatalError, RejectedError, RetryableError
from perpbot.exec.venues.base import OrderRequest, OrderStatus, Side
from perpbot.exec.venues.ccxt_venue import (
    QUIRKS,
    CcxtVenue,
    client_order_id_problem,
    contract_size,
    credentials_from_env,
    dec,
    error_class,
    lookup_params,
    market_from_ccxt,
    order_params,
    order_status,
    to_base,
    to_contracts,
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
