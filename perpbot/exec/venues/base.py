"""The one trading-venue interface, and the value types that cross it.

Every venue implementation (the paper venue now, ccxt later) subclasses `Venue`
and implements all of its abstract methods:

required
    name            the config's venue name (`cfg.venues` key)
    connect()       open sessions, load markets; idempotent
    close()         release sessions
    place_order()   one order -> its terminal `OrderResult`, or OPEN if it rests
    cancel_order()  cancel a resting order by client order id
    fetch_order()   an order's state by client order id (terminal, resting, unknown)
    open_orders()   orders still resting on the venue
    positions()     net position per board symbol
    balances()      balance per asset
    my_trades()     our fills, newest last
    funding_rate()  the current funding rate and interval of a symbol
    server_time_ms() the venue's clock (for the clock offset)
    markets()       tick, lot, min notional, contract size and fees per board
                    symbol (synchronous, after connect)

Symbols at this interface are board names (`BTC-PERP`); an implementation maps
them to its own. Quantities are base units and every amount is a `Decimal`,
already on the market's lot and tick grid when it reaches `place_order`.

`place_order` never raises for a refusal: a refused order is a result with
status REJECTED and a reason. It raises only when the outcome is unknown
(connection lost mid-request), which the caller must treat as a fault.
"""

from __future__ import annotations

import abc
import enum
from dataclasses import dataclass, field
from decimal import Decimal


class Side(str, enum.Enum):
    BUY = "buy"
    SELL = "sell"

    @property
    def sign(self) -> int:
        """+1 for a buy, -1 for a sell: the sign of its effect on a position."""
        return 1 if self is Side.BUY else -1

    @property
    def opposite(self) -> Side:
        return Side.SELL if self is Side.BUY else Side.BUY


class OrderType(str, enum.Enum):
    #: taker, immediate-or-cancel: fills what it can at once, the rest is cancelled
    #: (with `price` None: a market order)
    IOC = "ioc"
    #: maker limit: rests on the book; refused (REJECTED) if it would take liquidity
    POST_ONLY = "post_only"
    #: good-till-cancelled limit: takes what crosses, rests the rest
    LIMIT = "limit"


class OrderStatus(str, enum.Enum):
    OPEN = "open"  # resting on the book (not terminal): follow it with fetch_order
    FILLED = "filled"  # the whole quantity filled
    PARTIAL = "partial"  # part filled, the rest cancelled (IOC, or a resting order cancelled)
    EXPIRED = "expired"  # accepted, nothing filled (IOC not marketable, or cancelled while resting)
    REJECTED = "rejected"  # refused by the venue; nothing filled

    @property
    def terminal(self) -> bool:
        """True once nothing more can fill."""
        return self is not OrderStatus.OPEN


@dataclass(frozen=True, slots=True)
class OrderRequest:
    """One order as the engine decided it."""

    client_order_id: str
    symbol: str  # board symbol name
    side: Side
    qty: Decimal  # base units, on the lot grid
    #: IOC limit price on the tick grid; None is a market order (used to get out)
    price: Decimal | None
    order_type: OrderType = OrderType.IOC
    #: only ever reduce the venue's net position (the venue refuses or trims otherwise)
    reduce_only: bool = False


@dataclass(frozen=True, slots=True)
class Fill:
    fill_id: str  # unique across runs (derived from the client order id)
    client_order_id: str
    venue: str
    symbol: str
    side: Side
    qty: Decimal
    price: Decimal
    fee: Decimal  # in the quote asset (USD), positive = paid
    ts_ns: int  # monotonic stamp (perpbot.clock.now_ns) when the fill was known


@dataclass(frozen=True, slots=True)
class FundingPayment:
    """Funding the venue booked on one of our positions."""

    payment_id: str  # unique per venue
    venue: str
    symbol: str
    amount: Decimal  # in the quote asset (USD), positive = received, negative = paid
    ts_ms: int  # epoch ms of the payment


@dataclass(frozen=True, slots=True)
class OrderResult:
    """The terminal state of an order."""

    client_order_id: str
    venue: str
    symbol: str
    side: Side
    qty: Decimal  # requested
    status: OrderStatus
    fills: tuple[Fill, ...] = ()
    venue_order_id: str = ""
    ts_accepted_ns: int = 0  # when the venue took the order
    ts_done_ns: int = 0  # when it reached its terminal state
    reason: str = ""  # why it was rejected or trimmed; "" otherwise

    @property
    def filled_qty(self) -> Decimal:
        return sum((f.qty for f in self.fills), Decimal(0))

    @property
    def fee(self) -> Decimal:
        return sum((f.fee for f in self.fills), Decimal(0))

    @property
    def avg_price(self) -> Decimal | None:
        """Quantity-weighted fill price; None when nothing filled."""
        q = self.filled_qty
        if not q:
            return None
        return sum((f.qty * f.price for f in self.fills), Decimal(0)) / q


@dataclass(frozen=True, slots=True)
class Market:
    """A symbol's trading grid and fees on one venue (sizes in base units)."""

    symbol: str
    tick_size: Decimal
    lot_size: Decimal
    min_notional_usd: Decimal
    #: base units per venue contract (1 where the venue trades base units)
    contract_size: Decimal = Decimal(1)
    #: fee fractions of notional (0.0005 = 5 bps), positive = paid
    taker_fee: Decimal = Decimal(0)
    maker_fee: Decimal = Decimal(0)


@dataclass(frozen=True, slots=True)
class FundingRate:
    """A perpetual's funding: `rate` per interval, paid by longs to shorts when positive."""

    symbol: str
    rate: Decimal
    interval_ms: int  # 8 h on most venues, 1 h on Hyperliquid and others
    next_funding_ms: int  # epoch ms of the next payment, 0 when unknown


@dataclass(frozen=True, slots=True)
class OpenOrder:
    client_order_id: str
    symbol: str
    side: Side
    qty: Decimal
    filled_qty: Decimal
    price: Decimal | None


@dataclass(frozen=True, slots=True)
class VenuePosition:
    symbol: str
    qty: Decimal  # signed: long > 0, short < 0
    avg_price: Decimal
    realized_pnl: Decimal  # fees included


@dataclass(frozen=True, slots=True)
class Balance:
    asset: str
    free: Decimal
    locked: Decimal
    total: Decimal
    extra: dict[str, Decimal] = field(default_factory=dict)


class Venue(abc.ABC):
    """A trading venue. See the module docstring for the contract."""

    name: str

    @abc.abstractmethod
    async def connect(self) -> None:
        """Open sessions and load markets; calling it twice is harmless."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release sessions. Orders already placed are unaffected."""

    @abc.abstractmethod
    async def place_order(self, req: OrderRequest) -> OrderResult:
        """Send one order and return its terminal result (IOC orders finish at once)."""

    @abc.abstractmethod
    async def cancel_order(self, client_order_id: str, symbol: str) -> bool:
        """Cancel a resting order; False when no such order is resting."""

    @abc.abstractmethod
    async def fetch_order(self, client_order_id: str, symbol: str) -> OrderResult | OpenOrder | None:
        """An order by client order id: its terminal result, still resting, or None if the venue never
        got it. Recovery and cancel/fill races are settled by asking this, never by assuming."""

    @abc.abstractmethod
    async def open_orders(self, symbol: str | None = None) -> list[OpenOrder]:
        """Orders resting on the venue (all symbols when `symbol` is None)."""

    @abc.abstractmethod
    async def positions(self) -> dict[str, VenuePosition]:
        """Non-zero net positions per board symbol."""

    @abc.abstractmethod
    async def balances(self) -> dict[str, Balance]:
        """Balances per asset."""

    @abc.abstractmethod
    async def my_trades(self, symbol: str | None = None, since_ms: int | None = None) -> list[Fill]:
        """Our fills (all symbols when `symbol` is None), oldest first, since epoch ms `since_ms`."""

    @abc.abstractmethod
    async def funding_rate(self, symbol: str) -> FundingRate:
        """The symbol's current funding rate and interval."""

    async def funding_payments(self, since_ms: int | None = None) -> list[FundingPayment]:
        """Funding booked on our positions since epoch ms `since_ms`, oldest first.

        Where the venue reports it; the default is a venue that does not.
        """
        return []

    @abc.abstractmethod
    async def server_time_ms(self) -> int:
        """The venue's clock, epoch milliseconds."""

    @abc.abstractmethod
    def markets(self) -> dict[str, Market]:
        """Trading grid per board symbol this venue trades."""
