"""The ccxt venue: one `Venue` over `ccxt.async_support` for the eight seed venues.

One `CcxtVenue` per configured venue wraps one ccxt exchange object. Every
venue difference this module knows about lives in `QUIRKS` (one row per ccxt
id); everything else is ccxt's unified API:

    Venue method          ccxt call
    connect()             load_markets()        (or markets preset with set_markets)
    place_order()         create_order()        then fetch_order() until terminal (IOC)
                                                or resting (LIMIT, POST_ONLY)
    cancel_order()        cancel_order()        by client order id
    fetch_order()         fetch_order()         by client order id
    open_orders()         fetch_open_orders()
    positions()           fetch_positions()
    balances()            fetch_balance()
    my_trades()           fetch_my_trades()     per traded symbol
    funding_rate()        fetch_funding_rate()  (Extended: fetch_ticker, see QUIRKS)
    funding_payments()    fetch_funding_history() per traded symbol, where ccxt has it
    server_time_ms()      fetch_time()          (else the Date header of a public reply)
    set_clock_offset_ms() options['timeDifference'], which ccxt subtracts from its clock
                          when it stamps signed requests (see `VenueQuirks.time_difference`)

Order types: IOC is a limit order with the venue's immediate-or-cancel flag
(a market order when the price is None) and `place_order` waits for its
terminal state. LIMIT (good till cancelled) and POST_ONLY (ccxt's unified
`postOnly: True`, which ccxt turns into Binance GTX, OKX post_only, Bybit
PostOnly, Gate poc, Hyperliquid Alo, ...) return OPEN as soon as the venue
says the order rests; its fills arrive with its terminal state through
`fetch_order`. A post-only order the venue cancels at once because it would
have taken liquidity is REJECTED.

Conversions happen here and nowhere else (STYLE.md, "convert at the
boundary"):

- Quantities at our interface are base units; ccxt amounts are contracts for
  venues that trade contracts (OKX, Gate: `market['contractSize']`), so
  `amount = qty / contractSize` going out and `qty = amount * contractSize`
  coming back. For the other venues contractSize is 1.
- ccxt numbers are floats; they become `Decimal` through their shortest repr.
- Fees of our trades are in the quote asset: a fee charged in the base asset
  is converted at the trade's price; one in a third asset (BNB) is refused
  loudly rather than booked wrong.
- Funding payments are positive when received (Bybit's ccxt amount is a fee,
  positive when paid, and is negated: `VenueQuirks.funding_paid_positive`).
- Amount and price go through ccxt's `amount_to_precision` /
  `price_to_precision` before sending. The caller already put them on the
  grid (sizing.py); if the venue's rounding would change the value the order
  is refused locally instead of silently trading a different size or price.
- Client order ids are the caller's (deterministic per decision), passed in
  the venue's own parameter (`QUIRKS[...].coid_param`), so resending the same
  request can never create a second order: the venue refuses the duplicate,
  and `place_order` then returns the first order's state.

Errors: ccxt's exception classes map onto perpbot.errors (`error_class`):
authentication and permission problems are fatal; network trouble, timeouts,
rate limits and unreadable replies are retryable (the outcome is unknown);
every other venue refusal is a rejection. `place_order` turns a rejection into
a REJECTED result and raises `RetryableError` only when the outcome is unknown
(the engine then asks `fetch_order` by client order id).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from email.utils import parsedate_to_datetime
from typing import Any

import ccxt.async_support as ccxt_async
from ccxt.base import errors as ccxt_errors

from perpbot.clock import now_ns
from perpbot.errors import FatalError, PerpBotError, RejectedError, RetryableError
from perpbot.exec.venues.base import (
    Balance,
    Fill,
    FundingPayment,
    FundingRate,
    Market,
    OpenOrder,
    OrderRequest,
    OrderResult,
    OrderStatus,
    OrderType,
    Side,
    Venue,
    VenuePosition,
)

_ZERO = Decimal(0)
_ONE = Decimal(1)
HOUR_MS = 3_600_000

#: ccxt order states after which nothing more can fill
TERMINAL_STATES = frozenset({"closed", "canceled", "cancelled", "expired", "rejected"})

#: keys of a ccxt balance structure that are not currency codes
_BALANCE_META = frozenset({"info", "free", "used", "total", "timestamp", "datetime", "debt"})


# --------------------------------------------------------------------------- quirks


@dataclass(frozen=True, slots=True)
class VenueQuirks:
    """What differs between venues beyond ccxt's unified API."""

    #: create_order parameter carrying our client order id
    coid_param: str
    #: fetch_order / cancel_order parameter naming an order by client order id
    coid_lookup_param: str
    #: what the venue accepts as a client order id (after `coid_prefix` / hashing)
    coid_pattern: str
    #: added in front of our id when the venue requires it (Gate: "t-")
    coid_prefix: str = ""
    #: the venue wants a 128-bit hex id (Hyperliquid `cloid`): ours is hashed into one
    coid_hex128: bool = False
    #: how the venue spells reduce-only in ccxt params
    reduce_only_param: str = "reduceOnly"
    #: params making a limit order immediate-or-cancel
    ioc_params: Mapping[str, Any] = field(default_factory=lambda: {"timeInForce": "IOC"})
    #: params making a limit order post-only (maker only)
    post_only_params: Mapping[str, Any] = field(default_factory=lambda: {"postOnly": True})
    #: extra params for fetch_order (Bybit insists on an acknowledgement flag)
    fetch_order_params: Mapping[str, Any] = field(default_factory=dict)
    #: a market order needs a reference price (Hyperliquid sends market orders as
    #: IOC limits with a slippage bound computed from it)
    market_needs_price: bool = False
    #: ccxt credential fields the venue needs for private calls
    credentials: tuple[str, ...] = ("apiKey", "secret")
    #: ccxt options set on construction (the unified symbols we trade are swaps)
    options: Mapping[str, Any] = field(default_factory=lambda: {"defaultType": "swap"})
    #: ccxt options added for a read-only session, so that ccxt itself sends no account action
    readonly_options: Mapping[str, Any] = field(default_factory=dict)
    #: funding interval when ccxt's funding rate has no `interval`
    funding_interval_ms: int = 8 * HOUR_MS
    #: ccxt's funding-history `amount` is a fee (positive = paid) rather than a balance change
    funding_paid_positive: bool = False
    #: ccxt has no funding-rate call: (rate key, next-funding epoch-ms key) in fetch_ticker's `info`
    funding_from_ticker: tuple[str, str] | None = None
    #: ccxt's nonce is `milliseconds() - options['timeDifference']` for this venue, so signed
    #: requests carry the venue's time once `set_clock_offset_ms` has run; False where ccxt stamps
    #: with the local clock whatever the option says
    time_difference: bool = True
    #: key of a trade's raw `info` holding the order's client order id ("" when it has none)
    trade_coid_key: str = ""
    #: only trades whose raw `info` has these values are ours to report (Bybit lists funding
    #: settlements among executions)
    trade_filter: Mapping[str, str] = field(default_factory=dict)


#: one row per ccxt id; the id sets are checked in tests
QUIRKS: dict[str, VenueQuirks] = {
    # Binance: newClientOrderId matches ^[.A-Z:/a-z0-9_-]{1,36}$; lookups use origClientOrderId;
    # its trade list carries no client order id
    "binanceusdm": VenueQuirks(
        coid_param="newClientOrderId", coid_lookup_param="origClientOrderId",
        coid_pattern=r"[.A-Z:/a-z0-9_-]{1,36}"),
    # OKX: clOrdId is 1-32 letters and digits; a passphrase is needed
    "okx": VenueQuirks(
        coid_param="clOrdId", coid_lookup_param="clOrdId", coid_pattern=r"[A-Za-z0-9]{1,32}",
        credentials=("apiKey", "secret", "password"), trade_coid_key="clOrdId"),
    # Bybit: orderLinkId up to 36 of [A-Za-z0-9_-]; fetchOrder wants `acknowledged`; its execution
    # list (fetchMyTrades) also holds funding settlements (execType Funding), and its funding
    # history amount is ccxt's `execFee`, positive when paid
    "bybit": VenueQuirks(
        coid_param="orderLinkId", coid_lookup_param="orderLinkId", coid_pattern=r"[A-Za-z0-9_-]{1,36}",
        fetch_order_params={"acknowledged": True}, funding_paid_positive=True,
        trade_coid_key="orderLinkId", trade_filter={"execType": "Trade"}),
    # Bitget: clientOid; passphrase needed
    "bitget": VenueQuirks(
        coid_param="clientOid", coid_lookup_param="clientOid", coid_pattern=r"[A-Za-z0-9_-]{1,50}",
        credentials=("apiKey", "secret", "password"), trade_coid_key="clientOid"),
    # Gate: `text` must start with "t-" and hold at most 28 more of [0-9A-Za-z_.-]
    "gate": VenueQuirks(
        coid_param="text", coid_lookup_param="text", coid_pattern=r"t-[A-Za-z0-9_.-]{1,28}",
        coid_prefix="t-", trade_coid_key="text"),
    # Hyperliquid: cloid is 0x + 32 hex digits; wallet address + private key; funding every hour;
    # ccxt stamps its actions with the local clock (the venue accepts nonces within a day).
    # ccxt's defaults would charge every order a 1 bp builder fee for ccxt (`builderFee`) and set
    # ccxt as the account's referrer (`refSet`); with builderFee off ccxt still approves its builder
    # once, at 0 %, on the first private call (also from load_markets), so a read-only session
    # claims that approval done and sends nothing to /exchange
    "hyperliquid": VenueQuirks(
        coid_param="clientOrderId", coid_lookup_param="clientOrderId", coid_pattern=r"0x[0-9a-f]{32}",
        coid_hex128=True, market_needs_price=True, credentials=("walletAddress", "privateKey"),
        funding_interval_ms=HOUR_MS, time_difference=False, trade_coid_key="cloid",
        options={"defaultType": "swap", "builderFee": False, "refSet": True},
        readonly_options={"approvedBuilderFee": True}),
    # Paradex: client_id free text; wallet address + private key (StarkNet); ccxt stamps its
    # signed requests with the local clock
    "paradex": VenueQuirks(
        coid_param="clientOrderId", coid_lookup_param="clientOrderId", coid_pattern=r"[A-Za-z0-9_.:-]{1,64}",
        credentials=("walletAddress", "privateKey"), time_difference=False, trade_coid_key="client_id"),
    # Extended: externalId; API key + Stark private key; ccxt has no funding-rate call, but its
    # ticker's raw marketStats carry `fundingRate` and the next funding time (epoch ms) under the
    # name `nextFundingRate`, one hour apart (hourly funding); ccxt stamps with the local clock;
    # ccxt's default adds a 1 bp builder fee for ccxt to every order (`builderFee`)
    "extended": VenueQuirks(
        coid_param="clientOrderId", coid_lookup_param="clientOrderId", coid_pattern=r"[A-Za-z0-9_.:-]{1,64}",
        credentials=("apiKey", "privateKey"), funding_interval_ms=HOUR_MS,
        funding_from_ticker=("fundingRate", "nextFundingRate"), time_difference=False,
        options={"defaultType": "swap", "builderFee": False}),
}


def quirks(ccxt_id: str) -> VenueQuirks:
    """The quirks row of a ccxt id; ValueError for an id not among the eight (a config mistake)."""
    try:
        return QUIRKS[ccxt_id]
    except KeyError:
        raise ValueError(f"no ccxt venue {ccxt_id!r}; allowed: {', '.join(sorted(QUIRKS))}") from None


# --------------------------------------------------------------------------- pure conversions


def dec(x: Any) -> Decimal:
    """A ccxt number (float, int, numeric string or None) as a Decimal; None is 0."""
    if x is None:
        return _ZERO
    if isinstance(x, Decimal):
        return x
    try:
        # repr gives the shortest string that round-trips, so 0.1 stays 0.1
        return Decimal(repr(x)) if isinstance(x, float) else Decimal(str(x))
    except InvalidOperation:
        raise ValueError(f"not a number: {x!r}") from None


def contract_size(market: Mapping[str, Any]) -> Decimal:
    """Base units per ccxt amount unit: contractSize for contracts, 1 otherwise."""
    cs = market.get("contractSize")
    return dec(cs) if cs else _ONE


def to_contracts(qty: Decimal, size: Decimal) -> Decimal:
    """Base units -> the venue's amount unit (contracts of `size` base units each)."""
    return qty / size


def to_base(amount: Decimal, size: Decimal) -> Decimal:
    """The venue's amount (contracts of `size` base units) -> base units."""
    return amount * size


def venue_client_order_id(ccxt_id: str, client_order_id: str) -> str:
    """Our client order id as the venue must receive it (deterministic: same in, same out).

    Gate wants a "t-" prefix; Hyperliquid wants a 128-bit hex cloid, so ours is
    hashed (sha256, first 16 bytes): a resend of the same decision hashes to the
    same cloid, which is what makes the resend safe.
    """
    q = quirks(ccxt_id)
    if q.coid_hex128:
        if re.fullmatch(q.coid_pattern, client_order_id):
            return client_order_id
        return "0x" + hashlib.sha256(client_order_id.encode()).hexdigest()[:32]
    if q.coid_prefix and not client_order_id.startswith(q.coid_prefix):
        return q.coid_prefix + client_order_id
    return client_order_id


def client_order_id_problem(ccxt_id: str, client_order_id: str) -> str:
    """Why the venue would refuse this client order id; "" when it is acceptable."""
    q = quirks(ccxt_id)
    vid = venue_client_order_id(ccxt_id, client_order_id)
    if re.fullmatch(q.coid_pattern, vid):
        return ""
    return f"client order id {vid!r} does not match {ccxt_id}'s rule {q.coid_pattern}"


def order_params(ccxt_id: str, *, client_order_id: str, reduce_only: bool = False,
                 ioc: bool = True, post_only: bool = False) -> dict[str, Any]:
    """The ccxt `params` of create_order for one order on `ccxt_id`."""
    if ioc and post_only:
        raise ValueError("an order cannot be both IOC and post-only")
    q = quirks(ccxt_id)
    params: dict[str, Any] = {q.coid_param: venue_client_order_id(ccxt_id, client_order_id)}
    if reduce_only:
        params[q.reduce_only_param] = True
    if ioc:
        params.update(q.ioc_params)
    if post_only:
        params.update(q.post_only_params)
    return params


def lookup_params(ccxt_id: str, client_order_id: str) -> dict[str, Any]:
    """The ccxt `params` naming an order by our client order id (fetch_order, cancel_order)."""
    q = quirks(ccxt_id)
    return {q.coid_lookup_param: venue_client_order_id(ccxt_id, client_order_id)}


def market_from_ccxt(symbol: str, market: Mapping[str, Any]) -> Market:
    """Our grid (base units) and fees from a ccxt market in TICK_SIZE precision mode.

    The lot is one amount step times the contract size; the min notional is
    ccxt's `limits.cost.min`, or 0 when the venue publishes none. The fees are
    ccxt's `taker` / `maker` fractions (the venue's base tier as ccxt knows it,
    not necessarily the account's).
    """
    precision = market.get("precision") or {}
    limits = market.get("limits") or {}
    tick, step = precision.get("price"), precision.get("amount")
    if not tick or not step:
        raise ValueError(f"market {market.get('symbol')!r} has no price/amount precision")
    min_cost = (limits.get("cost") or {}).get("min")
    size = contract_size(market)
    return Market(symbol=symbol, tick_size=dec(tick), lot_size=dec(step) * size,
                  min_notional_usd=dec(min_cost), contract_size=size,
                  taker_fee=dec(market.get("taker")), maker_fee=dec(market.get("maker")))


_INTERVAL = re.compile(r"(\d+)\s*([mhd])")
_INTERVAL_MS = {"m": 60_000, "h": HOUR_MS, "d": 24 * HOUR_MS}


def interval_ms(interval: Any) -> int | None:
    """ccxt's funding `interval` ("8h", "1h", "30m") in milliseconds; None when absent or unreadable."""
    m = _INTERVAL.fullmatch(interval.strip()) if isinstance(interval, str) else None
    return int(m.group(1)) * _INTERVAL_MS[m.group(2)] if m else None


def funding_from_ccxt(symbol: str, rate: Mapping[str, Any], default_interval_ms: int) -> FundingRate:
    """Our funding rate from a ccxt funding-rate structure.

    The interval is ccxt's `interval` when it gives one, else the venue's
    default (`VenueQuirks.funding_interval_ms`); the next payment is
    `fundingTimestamp` (the time the current rate is paid), 0 when unknown.
    """
    next_ms = rate.get("fundingTimestamp") or rate.get("nextFundingTimestamp") or 0
    return FundingRate(symbol=symbol, rate=dec(rate.get("fundingRate")),
                       interval_ms=interval_ms(rate.get("interval")) or default_interval_ms,
                       next_funding_ms=int(next_ms))


_USD = frozenset({"USD", "USDT", "USDC"})


def trade_fee(trade: Mapping[str, Any], market: Mapping[str, Any]) -> Decimal:
    """The fee of one ccxt trade in the quote asset (positive = paid).

    ccxt's fee cost is positive when paid on every seed venue. A fee in the
    quote or settle asset counts as is (USD stablecoins at par); one in the
    base asset is converted at the trade's price; one in any other asset
    raises ValueError (it cannot be expressed in the quote asset here).
    """
    fees = trade.get("fees") or ([trade["fee"]] if trade.get("fee") else [])
    quote_like = {market.get("quote"), market.get("settle"), None, ""} | _USD
    total = _ZERO
    for f in fees:
        if not f:
            continue
        cost, currency = dec(f.get("cost")), f.get("currency")
        if not cost:
            continue
        if currency in quote_like:
            total += cost
        elif currency == market.get("base"):
            total += cost * dec(trade.get("price"))
        else:
            raise ValueError(f"trade {trade.get('id')!r} paid its fee in {currency}, "
                             f"not in {market.get('quote')} or {market.get('base')}")
    return total


def order_status(order: Mapping[str, Any], requested_amount: Decimal) -> OrderStatus | None:
    """Our terminal status of a ccxt order (amounts in the venue's unit); None while it may still fill."""
    state = order.get("status")
    filled = dec(order.get("filled"))
    if state == "rejected":
        return OrderStatus.REJECTED
    if state not in TERMINAL_STATES:
        # Hyperliquid answers a filled IOC with its fill but no state: fully filled is final
        if state is None and requested_amount > 0 and filled >= requested_amount:
            return OrderStatus.FILLED
        return None
    if filled > 0 and filled >= requested_amount:
        return OrderStatus.FILLED
    if filled > 0:
        return OrderStatus.PARTIAL
    return OrderStatus.EXPIRED


def order_fee(order: Mapping[str, Any]) -> Decimal:
    """The fee paid on a ccxt order (positive = paid), summed over `fees` when given."""
    fees = order.get("fees") or ([order["fee"]] if order.get("fee") else [])
    return sum((dec(f.get("cost")) for f in fees if f), _ZERO)


_FATAL = (ccxt_errors.AuthenticationError,)  # includes PermissionDenied, AccountSuspended
_RETRYABLE = (ccxt_errors.OperationFailed,)  # NetworkError, RequestTimeout, DDoSProtection, BadResponse


def error_class(exc: BaseException) -> type[PerpBotError]:
    """Which of our errors a ccxt exception is.

    Fatal: the keys are wrong or lack permission (no retry will help).
    Retryable: the request may or may not have reached the venue (network,
    timeouts, rate limits, maintenance, a reply ccxt could not read).
    Rejected: the venue read the request and refused it (funds, order rules,
    bad symbol, not supported, ...). Anything else is treated as retryable,
    because an unknown failure leaves the order's fate unknown.
    """
    if isinstance(exc, _FATAL):
        return FatalError
    if isinstance(exc, _RETRYABLE):
        return RetryableError
    if isinstance(exc, ccxt_errors.ExchangeError):
        return RejectedError
    return RetryableError


def map_error(exc: BaseException, what: str) -> PerpBotError:
    """`exc` as our error, its message prefixed with what we were doing."""
    return error_class(exc)(f"{what}: {type(exc).__name__}: {exc}")


# --------------------------------------------------------------------------- credentials

#: which venue config key names the environment variable of each ccxt credential field
#: (the passphrase's variable is derived from the key's: `passphrase_env_name`)
CREDENTIAL_CONFIG_KEYS: dict[str, str] = {
    "apiKey": "api_key_env", "walletAddress": "api_key_env", "password": "api_key_env",
    "secret": "api_secret_env", "privateKey": "api_secret_env",
}


def passphrase_env_name(api_key_env: str) -> str:
    """The variable holding an OKX / Bitget key's passphrase: the key's name with _KEY replaced by
    _PASSPHRASE (OKX_API_KEY -> OKX_API_PASSPHRASE), or _PASSPHRASE appended."""
    stem = api_key_env[:-len("_KEY")] if api_key_env.endswith("_KEY") else api_key_env
    return stem + "_PASSPHRASE"


def credential_env_names(ccxt_id: str, api_key_env: str | None,
                         api_secret_env: str | None) -> dict[str, str]:
    """ccxt credential field -> environment variable NAME, for the fields `ccxt_id` needs.

    apiKey / walletAddress come from `api_key_env`, secret / privateKey from
    `api_secret_env`, the passphrase (OKX, Bitget) from `passphrase_env_name`.
    Fields whose config key is unset are left out (`credentials_from_env`
    then names them as missing).
    """
    keys = {"api_key_env": api_key_env, "api_secret_env": api_secret_env}
    out: dict[str, str] = {}
    for f in quirks(ccxt_id).credentials:
        name = keys[CREDENTIAL_CONFIG_KEYS[f]]
        if name:
            out[f] = passphrase_env_name(name) if f == "password" else name
    return out


def credentials_from_env(ccxt_id: str, env_names: Mapping[str, str],
                         environ: Mapping[str, str] | None = None, *,
                         stored: Mapping[str, str] | None = None) -> dict[str, str]:
    """ccxt credential fields read from the environment variables NAMED in `env_names`.

    `env_names` maps a ccxt field (apiKey, secret, password, walletAddress,
    privateKey) to an environment variable name. `stored` holds the venue's
    fields from the key file (perpbot/keys.py): a field whose variable is set
    and non-empty comes from the environment, else from `stored`. Raises
    FatalError naming the missing fields and variables (never their values)
    when one the venue needs is in neither.
    """
    env = os.environ if environ is None else environ
    creds = {f: env[n] for f, n in env_names.items() if env.get(n)}
    needed = quirks(ccxt_id).credentials
    for f, value in (stored or {}).items():
        if f in needed and f not in creds and value:
            creds[f] = value
    missing = [f"{f} (${env_names[f]})" if f in env_names else f for f in needed if f not in creds]
    if missing:
        where = "the environment" if stored is None else "the environment and the key file"
        raise FatalError(f"{ccxt_id}: credentials missing from {where}: {', '.join(missing)}")
    return creds


# --------------------------------------------------------------------------- the venue


class CcxtVenue(Venue):
    """A real venue through one ccxt async exchange object.

    `symbols` maps board symbols to the venue's symbols: a ccxt unified symbol
    (`BTC/USDT:USDT`) or the venue's market id (`BTCUSDT`, resolved to the swap
    market at connect). `credential_envs` maps ccxt credential fields to
    environment variable NAMES; `stored_credentials` holds the venue's fields read from the key
    file, which a set variable overrides; both None means public calls only (markets). `markets`
    presets ccxt markets (unified symbol -> ccxt market) so `connect` makes no
    request for them. `read_only` adds the venue's `readonly_options` (ccxt
    sends no account action of its own). `exchange` injects a ready ccxt object
    (tests).
    """

    def __init__(self, name: str, ccxt_id: str, symbols: Mapping[str, str], *,
                 credential_envs: Mapping[str, str] | None = None,
                 stored_credentials: Mapping[str, str] | None = None,
                 options: Mapping[str, Any] | None = None,
                 markets: Mapping[str, Mapping[str, Any]] | None = None,
                 read_only: bool = False,
                 exchange: Any = None,
                 clock: Callable[[], int] = now_ns,
                 confirm_attempts: int = 5, confirm_delay_s: float = 0.2) -> None:
        self.name = name
        self.ccxt_id = ccxt_id
        self.quirks = quirks(ccxt_id)
        self._symbols = dict(symbols)
        self._credential_envs = dict(credential_envs) if credential_envs is not None else None
        self._stored_credentials = dict(stored_credentials) if stored_credentials is not None else None
        self.read_only = read_only
        self._options = {**self.quirks.options, **(self.quirks.readonly_options if read_only else {}),
                         **(options or {})}
        self._preset_markets = markets
        self._clock = clock
        self._confirm_attempts = confirm_attempts
        self._confirm_delay_s = confirm_delay_s
        self.exchange: Any = exchange
        self._unified: dict[str, str] = {}  # board symbol -> ccxt unified symbol
        self._board: dict[str, str] = {}  # ccxt unified symbol -> board symbol
        self._markets: dict[str, Market] = {}
        #: venue clock minus local clock, ms (`set_clock_offset_ms`)
        self.clock_offset_ms = 0

    # ---- lifecycle

    def _make_exchange(self) -> Any:
        config: dict[str, Any] = {"enableRateLimit": True, "options": dict(self._options)}
        if self._credential_envs is not None or self._stored_credentials is not None:
            config.update(credentials_from_env(self.ccxt_id, self._credential_envs or {},
                                               stored=self._stored_credentials))
        return getattr(ccxt_async, self.ccxt_id)(config)

    async def connect(self) -> None:
        """Create the ccxt object (once) and load markets; a second call does nothing."""
        if self._markets:
            return
        if self.exchange is None:
            self.exchange = self._make_exchange()
        try:
            if self._preset_markets is not None:
                self.exchange.set_markets(list(self._preset_markets.values()))
            elif not self.exchange.markets:
                await self.exchange.load_markets()
        except Exception as exc:
            raise map_error(exc, f"{self.name}: load markets") from exc
        unified, board, markets = {}, {}, {}
        for sym, venue_sym in self._symbols.items():
            m = self._resolve(venue_sym)
            unified[sym], board[m["symbol"]] = m["symbol"], sym
            markets[sym] = market_from_ccxt(sym, m)
        self._unified, self._board, self._markets = unified, board, markets

    def _resolve(self, venue_symbol: str) -> Mapping[str, Any]:
        ex = self.exchange
        if venue_symbol in ex.markets:
            return ex.markets[venue_symbol]  # type: ignore[no-any-return]
        # a venue id may name a spot and a swap market alike: the swap is the one we trade
        candidates = ex.markets_by_id.get(venue_symbol) or []
        for m in candidates:
            if m.get("swap"):
                return m  # type: ignore[no-any-return]
        if candidates:
            return candidates[0]  # type: ignore[no-any-return]
        raise FatalError(f"{self.name}: {self.ccxt_id} has no market {venue_symbol!r}")

    async def close(self) -> None:
        if self.exchange is not None:
            await self.exchange.close()

    def markets(self) -> dict[str, Market]:
        return dict(self._markets)

    def set_clock_offset_ms(self, offset_ms: int) -> None:
        """Stamp signed requests with the venue's time: `offset_ms` is venue clock minus local clock.

        ccxt keeps the opposite sign in `options['timeDifference']` (local minus
        venue) and its nonce is `milliseconds() - timeDifference` for Binance
        USDⓈ-M, OKX, Bybit, Bitget and Gate, whose signed requests then carry
        venue time. Hyperliquid, Paradex and Extended stamp with the local clock
        whatever the option says (`VenueQuirks.time_difference` is False): the
        offset is kept but changes nothing there.
        """
        self.clock_offset_ms = int(offset_ms)
        self._options["timeDifference"] = -self.clock_offset_ms
        if self.exchange is not None:
            self.exchange.options["timeDifference"] = -self.clock_offset_ms

    @property
    def honours_clock_offset(self) -> bool:
        """True when `set_clock_offset_ms` changes the time this venue's signed requests carry."""
        return self.quirks.time_difference

    def unified_symbol(self, symbol: str) -> str:
        """The ccxt unified symbol of a board symbol."""
        return self._unified[symbol]

    def board_symbol(self, unified: str) -> str:
        """The board symbol of a ccxt unified symbol; the unified symbol itself if we do not trade it."""
        return self._board.get(unified, unified)

    async def call(self, method: str, *args: Any) -> Any:
        """One ccxt unified call (snake_case name), its errors mapped to ours."""
        try:
            return await getattr(self.exchange, method)(*args)
        except Exception as exc:
            raise map_error(exc, f"{self.name}: {method}") from exc

    # ---- orders

    async def place_order(self, req: OrderRequest) -> OrderResult:
        ts = self._clock()
        unified = self._unified.get(req.symbol)
        if unified is None:
            return self._refuse(req, ts, f"{self.name} does not trade {req.symbol}")
        problem = client_order_id_problem(self.ccxt_id, req.client_order_id)
        if problem:
            return self._refuse(req, ts, problem)
        kind = req.order_type
        if req.price is None and kind is not OrderType.IOC:
            return self._refuse(req, ts, f"a {kind.value} order needs a limit price")
        if req.price is None and self.quirks.market_needs_price:
            return self._refuse(req, ts, f"{self.ccxt_id} market orders need a reference price")
        market = self.exchange.market(unified)
        size = contract_size(market)
        try:
            amount_s, price_s = self.to_precision(unified, to_contracts(req.qty, size), req.price)
        except ccxt_errors.BaseError as exc:
            return self._refuse(req, ts, f"{type(exc).__name__}: {exc}")
        if Decimal(amount_s) != to_contracts(req.qty, size) or Decimal(amount_s) <= 0:
            return self._refuse(req, ts, f"quantity {req.qty} is not on {self.name}'s grid "
                                         f"({amount_s} x {size})")
        if price_s is not None and Decimal(price_s) != req.price:
            return self._refuse(req, ts, f"price {req.price} is not on {self.name}'s tick ({price_s})")
        params = order_params(self.ccxt_id, client_order_id=req.client_order_id,
                              reduce_only=req.reduce_only,
                              ioc=kind is OrderType.IOC and price_s is not None,
                              post_only=kind is OrderType.POST_ONLY)
        try:
            order = await self.exchange.create_order(
                unified, "limit" if price_s is not None else "market", req.side.value,
                float(amount_s), None if price_s is None else float(price_s), params)
        except ccxt_errors.DuplicateOrderId:
            # the first attempt reached the venue: its state is the answer, never a second order
            found = await self.fetch_order(req.client_order_id, req.symbol)
            if isinstance(found, OrderResult):
                return found
            raise RetryableError(f"{self.name}: {req.client_order_id} is a duplicate still in flight") from None
        except Exception as exc:
            err = map_error(exc, f"{self.name}: create_order {req.client_order_id}")
            if isinstance(err, RejectedError):
                return self._refuse(req, ts, str(err))
            raise err from exc
        accepted = self._clock()
        for attempt in range(self._confirm_attempts + 1):
            status = order_status(order, Decimal(amount_s))
            if status is not None:
                res = self.order_result(order, req.client_order_id, req.symbol, req.side,
                                        req.qty, ts_accepted_ns=accepted)
                if kind is OrderType.POST_ONLY and res.status is OrderStatus.EXPIRED:
                    # cancelled at once with nothing filled: the venue's answer to a post-only
                    # order that would have taken liquidity
                    return dataclasses.replace(res, status=OrderStatus.REJECTED, reason=(
                        f"post-only order {order.get('status')} by the venue at once "
                        "(it would have taken liquidity)"))
                return res
            if kind is not OrderType.IOC and order.get("status") == "open":
                # resting: its fills arrive with its terminal state (fetch_order)
                return OrderResult(req.client_order_id, self.name, req.symbol, req.side, req.qty,
                                   OrderStatus.OPEN, venue_order_id=str(order.get("id") or ""),
                                   ts_accepted_ns=accepted)
            if attempt == self._confirm_attempts:
                break
            if attempt:
                await asyncio.sleep(self._confirm_delay_s)
            try:
                order = await self.call("fetch_order", order.get("id") or "", unified,
                                        {**self.quirks.fetch_order_params,
                                         **lookup_params(self.ccxt_id, req.client_order_id)})
            except RejectedError as exc:
                # the order was accepted: a refused lookup leaves its outcome unknown, not rejected
                raise RetryableError(str(exc)) from exc
        what = "not terminal" if kind is OrderType.IOC else "neither resting nor terminal"
        raise RetryableError(f"{self.name}: {req.client_order_id} {what} after "
                             f"{self._confirm_attempts} checks (state {order.get('status')!r})")

    def to_precision(self, unified: str, amount: Decimal, price: Decimal | None) -> tuple[str, str | None]:
        """Amount (venue units) and price as the strings ccxt's market precision makes of them."""
        amount_s = self.exchange.amount_to_precision(unified, str(amount))
        price_s = None if price is None else self.exchange.price_to_precision(unified, str(price))
        return str(amount_s), None if price_s is None else str(price_s)

    def order_result(self, order: Mapping[str, Any], client_order_id: str, symbol: str, side: Side,
                     qty: Decimal, *, ts_accepted_ns: int = 0) -> OrderResult:
        """Our terminal result of a terminal ccxt order (quantities back in base units)."""
        size = self._size(order.get("symbol"))
        amount = dec(order.get("amount")) or to_contracts(qty, size)
        status = order_status(order, amount) or OrderStatus.EXPIRED
        filled = to_base(dec(order.get("filled")), size)
        done = self._clock()
        fills: tuple[Fill, ...] = ()
        if filled > 0 and status is not OrderStatus.REJECTED:
            price = dec(order.get("average")) or dec(order.get("price"))
            # one aggregate fill: its id derives from the client order id, stable across runs
            fills = (Fill(f"{client_order_id}-1", client_order_id, self.name, symbol, side, filled,
                          price, order_fee(order), done),)
        reason = ""
        if status is OrderStatus.PARTIAL:
            reason = f"{order.get('status')} after {filled} of {qty}"
        elif status is OrderStatus.EXPIRED:
            reason = f"{order.get('status')} with nothing filled"
        elif status is OrderStatus.REJECTED:
            reason = "rejected by the venue"
        return OrderResult(client_order_id, self.name, symbol, side, qty, status, fills,
                           str(order.get("id") or ""), ts_accepted_ns, done, reason)

    def open_order(self, order: Mapping[str, Any]) -> OpenOrder:
        """Our view of a resting ccxt order (quantities in base units)."""
        size = self._size(order.get("symbol"))
        price = order.get("price")
        return OpenOrder(
            client_order_id=str(order.get("clientOrderId") or ""),
            symbol=self.board_symbol(str(order.get("symbol"))),
            side=Side(order["side"]),
            qty=to_base(dec(order.get("amount")), size),
            filled_qty=to_base(dec(order.get("filled")), size),
            price=None if price is None else dec(price),
        )

    def _size(self, unified: str | None) -> Decimal:
        markets = self.exchange.markets or {}
        m = markets.get(unified) if unified else None
        return contract_size(m) if m else _ONE

    def _refuse(self, req: OrderRequest, ts: int, reason: str) -> OrderResult:
        return OrderResult(req.client_order_id, self.name, req.symbol, req.side, req.qty,
                           OrderStatus.REJECTED, ts_accepted_ns=ts, ts_done_ns=ts, reason=reason)

    async def fetch_order(self, client_order_id: str, symbol: str) -> OrderResult | OpenOrder | None:
        """An order's state by client order id: terminal result, still resting, or None if unknown."""
        unified = self.unified_symbol(symbol)
        params = {**self.quirks.fetch_order_params, **lookup_params(self.ccxt_id, client_order_id)}
        try:
            order = await self.exchange.fetch_order("", unified, params)
        except ccxt_errors.OrderNotFound:
            return None
        except Exception as exc:
            raise map_error(exc, f"{self.name}: fetch_order {client_order_id}") from exc
        size = self._size(unified)
        if order_status(order, dec(order.get("amount"))) is None:
            return self.open_order(order)
        side = Side(order["side"])
        return self.order_result(order, client_order_id, symbol, side,
                                 to_base(dec(order.get("amount")), size))

    async def cancel_order(self, client_order_id: str, symbol: str) -> bool:
        unified = self.unified_symbol(symbol)
        try:
            await self.exchange.cancel_order("", unified, lookup_params(self.ccxt_id, client_order_id))
        except ccxt_errors.OrderNotFound:
            return False
        except Exception as exc:
            raise map_error(exc, f"{self.name}: cancel_order {client_order_id}") from exc
        return True

    async def open_orders(self, symbol: str | None = None) -> list[OpenOrder]:
        unified = None if symbol is None else self.unified_symbol(symbol)
        orders = await self.call("fetch_open_orders", unified)
        return [self.open_order(o) for o in orders]

    # ---- account

    def position(self, pos: Mapping[str, Any]) -> VenuePosition:
        """Our signed base-unit position from a ccxt position."""
        size = dec(pos.get("contractSize")) or self._size(pos.get("symbol"))
        qty = to_base(dec(pos.get("contracts")), size)
        if pos.get("side") == "short":
            qty = -abs(qty)
        return VenuePosition(symbol=self.board_symbol(str(pos.get("symbol"))), qty=qty,
                             avg_price=dec(pos.get("entryPrice")), realized_pnl=dec(pos.get("realizedPnl")))

    async def positions(self) -> dict[str, VenuePosition]:
        symbols = list(self._unified.values()) or None
        raw = await self.call("fetch_positions", symbols)
        out: dict[str, VenuePosition] = {}
        for p in raw:
            vp = self.position(p)
            if vp.qty:
                out[vp.symbol] = vp
        return out

    @staticmethod
    def balances_from_ccxt(balance: Mapping[str, Any]) -> dict[str, Balance]:
        """Our balances from a ccxt balance structure (every currency it lists)."""
        out: dict[str, Balance] = {}
        for code, entry in balance.items():
            if code in _BALANCE_META or not isinstance(entry, Mapping):
                continue
            out[code] = Balance(asset=code, free=dec(entry.get("free")), locked=dec(entry.get("used")),
                                total=dec(entry.get("total")))
        return out

    async def balances(self) -> dict[str, Balance]:
        return self.balances_from_ccxt(await self.call("fetch_balance"))

    # ---- trades, funding, time

    def fill(self, trade: Mapping[str, Any]) -> Fill:
        """Our fill (base units, fee in quote) from one ccxt trade of ours.

        `fill_id` is the venue's trade id behind our venue name (unique per
        venue, stable across runs); `client_order_id` is the order's id as the
        venue holds it (Gate without "t-"; Hyperliquid: the cloid our id hashes
        to), "" where the venue's trade list has none (Binance).
        """
        unified = str(trade.get("symbol"))
        market = (self.exchange.markets or {}).get(unified) or {}
        size = contract_size(market) if market else _ONE
        price = dec(trade.get("price"))
        try:
            fee = trade_fee(trade, market)
        except ValueError as exc:
            raise RejectedError(f"{self.name}: {exc}") from None
        info = trade.get("info") or {}
        coid = str(info.get(self.quirks.trade_coid_key) or "") if self.quirks.trade_coid_key else ""
        if self.quirks.coid_prefix and coid.startswith(self.quirks.coid_prefix):
            coid = coid[len(self.quirks.coid_prefix):]
        return Fill(fill_id=f"{self.name}:{trade.get('id')}", client_order_id=coid, venue=self.name,
                    symbol=self.board_symbol(unified), side=Side(trade["side"]),
                    qty=to_base(dec(trade.get("amount")), size), price=price, fee=fee,
                    ts_ns=self._clock())

    def _ours(self, trade: Mapping[str, Any]) -> bool:
        info = trade.get("info") or {}
        return trade.get("symbol") in self._board and all(
            str(info.get(k)) == v for k, v in self.quirks.trade_filter.items())

    async def my_trades(self, symbol: str | None = None, since_ms: int | None = None) -> list[Fill]:
        """Our fills, oldest first, since epoch ms `since_ms`: one ccxt call per traded symbol
        (several venues require a symbol), trades of other markets and non-trades left out."""
        symbols = list(self._unified) if symbol is None else [symbol]
        raw: list[Mapping[str, Any]] = []
        for sym in symbols:
            raw.extend(await self.call("fetch_my_trades", self.unified_symbol(sym), since_ms))
        raw = [t for t in raw if self._ours(t)
               and (since_ms is None or int(t.get("timestamp") or 0) >= since_ms)]
        raw.sort(key=lambda t: (int(t.get("timestamp") or 0), str(t.get("id"))))
        return [self.fill(t) for t in raw]

    async def funding_rate(self, symbol: str) -> FundingRate:
        unified = self.unified_symbol(symbol)
        from_ticker = self.quirks.funding_from_ticker
        if from_ticker is not None:
            info = (await self.call("fetch_ticker", unified)).get("info") or {}
            rate_key, next_key = from_ticker
            return FundingRate(symbol=symbol, rate=dec(info.get(rate_key)),
                               interval_ms=self.quirks.funding_interval_ms,
                               next_funding_ms=int(dec(info.get(next_key))))
        raw = await self.call("fetch_funding_rate", unified)
        return funding_from_ccxt(symbol, raw, self.quirks.funding_interval_ms)

    def funding_payment(self, entry: Mapping[str, Any]) -> FundingPayment:
        """Our funding payment (positive = received) from one ccxt funding-history entry."""
        amount = dec(entry.get("amount"))
        if self.quirks.funding_paid_positive:
            amount = -amount
        symbol = self.board_symbol(str(entry.get("symbol")))
        ts_ms = int(entry.get("timestamp") or 0)
        # Gate's entries have no id: one payment per symbol and funding time is unique anyway
        payment_id = str(entry.get("id") or f"{symbol}:{ts_ms}")
        return FundingPayment(payment_id=payment_id, venue=self.name, symbol=symbol,
                              amount=amount, ts_ms=ts_ms)

    async def funding_payments(self, since_ms: int | None = None) -> list[FundingPayment]:
        """Funding booked on our symbols since epoch ms `since_ms`, oldest first; [] where ccxt
        has no funding history for the venue."""
        if not self.exchange.has.get("fetchFundingHistory"):
            return []
        out: list[FundingPayment] = []
        for unified in self._unified.values():
            try:
                rows = await self.exchange.fetch_funding_history(unified, since_ms)
            except ccxt_errors.NotSupported:
                return []
            except Exception as exc:
                raise map_error(exc, f"{self.name}: fetch_funding_history") from exc
            out.extend(self.funding_payment(r) for r in rows
                       if since_ms is None or int(r.get("timestamp") or 0) >= since_ms)
        out.sort(key=lambda p: (p.ts_ms, p.payment_id))
        return out

    async def server_time_ms(self) -> int:
        """The venue's clock: ccxt's fetch_time, or for a venue without one (Extended) the HTTP
        Date header of a public reply (whole seconds)."""
        if self.exchange.has.get("fetchTime"):
            return int(await self.call("fetch_time"))
        symbols = list(self._unified.values())
        if not symbols:
            raise RejectedError(f"{self.name}: {self.ccxt_id} has no time call and no market to ask")
        await self.call("fetch_ticker", symbols[0])
        headers = self.exchange.last_response_headers or {}
        date = next((v for k, v in headers.items() if k.lower() == "date"), None)
        if not date:
            raise RetryableError(f"{self.name}: {self.ccxt_id}'s reply carried no Date header")
        return int(parsedate_to_datetime(date).timestamp() * 1000)
