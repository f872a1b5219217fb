"""Configuration: loaded once at start-up into frozen, typed objects.

Every wrong key, type or value raises `ConfigError` naming the key path
(`$.scanner.poll`) and what is allowed. Unknown keys are errors. Secrets are
never literal: a venue names the environment variables that hold them.
"""

from __future__ import annotations

import math
import os
import re
import typing
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import yaml

from perpbot.alerts import AlertsConfig, validate_alerts
from perpbot.errors import ConfigError

PosFloat = Annotated[float, msgspec.Meta(gt=0)]
NonNegFloat = Annotated[float, msgspec.Meta(ge=0)]
PosInt = Annotated[int, msgspec.Meta(ge=1)]
NonNegInt = Annotated[int, msgspec.Meta(ge=0)]
Bps = Annotated[float, msgspec.Meta(ge=0, le=1000)]

Mode = Literal["demo", "replay", "paper", "readonly", "live"]
EntryMode = Literal["taker", "maker_first"]
MakerVenue = Literal["slower", "buy", "sell"]
#: Modes whose whole path exists in this build; the others are refused at start-up.
AVAILABLE_MODES: tuple[str, ...] = ("demo", "paper", "replay", "readonly", "live")
PollPolicy = Literal["spin", "hybrid", "sleep"]

_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")
_SYMBOL_NAME = re.compile(r"^[A-Z0-9]+-PERP$")


class _Frozen(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class SymbolConfig(_Frozen, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A board symbol (unified name such as `BTC-PERP`) and its trading grid."""

    #: order sizes are whole multiples of this, in base units (a decimal string, e.g. "0.001")
    lot_size: Decimal
    #: order prices are whole multiples of this (a decimal string, e.g. "0.1")
    tick_size: Decimal
    #: the smallest order notional accepted, USD
    min_notional_usd: NonNegFloat = 5.0


class RateLimitConfig(_Frozen, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """At most `limit` requests (or orders) in any `window_ms` milliseconds.

    The values are checked by perpbot.exec.ratelimit.validate_rate_limits, whose
    errors name the entry (`$.venues.<name>.rate_limits[<i>].<key>`).
    """

    #: how many, a positive whole number
    limit: Any = None
    #: the sliding window, ms, a positive whole number
    window_ms: Any = None
    #: requests (every call, or its weight) or orders (order placements and amendments)
    kind: Any = None


def ccxt_id_of(ccxt_id: str | None, feed: str) -> str:
    """A configured venue's ccxt id: `ccxt_id` when set, else its feed's (`ccxt:<id>`, or the native
    feed's name, which is its ccxt id)."""
    if ccxt_id:
        return ccxt_id
    return feed.split(":", 1)[1] if feed.startswith("ccxt:") else feed


class VenueConfig(_Frozen, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One venue: which feed protocol it speaks, its fees and its symbol names."""

    #: websocket protocol: a module in perpbot/feeds (e.g. binanceusdm, okx) or ccxt:<ccxt id>
    feed: str
    #: board symbol -> the venue's own symbol, e.g. {"BTC-PERP": "BTCUSDT"}
    symbols: dict[str, str]
    #: taker fee, bps of notional (the scanner's edge is net of both legs' taker fees)
    taker_fee_bps: Bps
    #: maker fee, bps of notional
    maker_fee_bps: Bps = 0.0
    #: base units per contract for venues that quote sizes in contracts (OKX ctVal, Gate
    #: quanto_multiplier), by board symbol; absent symbols are 1.0
    contract_sizes: dict[str, PosFloat] = {}
    #: websocket URL override; None means the feed spec's public URL (or the demo market's)
    url: str | None = None
    #: ccxt feeds, and the ccxt trading venues of modes readonly and live: markets (unified symbol ->
    #: ccxt market) preset from this JSON file instead of loading them from the venue at start-up
    ccxt_markets_file: str | None = None
    #: modes readonly and live: the ccxt exchange id that trades this venue; None: the native feed's
    #: name (feeds are named after their ccxt ids) or the <id> of a ccxt:<id> feed
    ccxt_id: str | None = None
    #: NAME of the environment variable holding the API key (never the key itself)
    api_key_env: str | None = None
    #: NAME of the environment variable holding the API secret (never the secret itself)
    api_secret_env: str | None = None
    #: this venue's rate limits, replacing the published ones built in for its feed's exchange
    #: (perpbot/exec/ratelimit.py): a list of {limit, window_ms, kind}, each "at most `limit` in any
    #: `window_ms` ms" of kind requests (every call, or its weight) or orders (placements and
    #: amendments), limit and window_ms positive whole numbers; null keeps the built-in ones
    rate_limits: list[RateLimitConfig] | None = None


class RunConfig(_Frozen, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Where a run keeps its sockets, journal and logs, and how long it lasts."""

    #: directory for per-run sockets; None: $XDG_RUNTIME_DIR/perpbot or /tmp/perpbot-<uid>
    run_root: str | None = None
    #: directory for per-run journals and logs
    data_dir: str = "perpbot-data"
    #: stop after this many seconds; None runs until Ctrl-C, SIGTERM or `perpbot-ctl`
    duration_s: PosFloat | None = None
    #: how long a child may take to report ready
    start_timeout_s: PosFloat = 20.0
    #: also accept control commands on this TCP endpoint (e.g. tcp://0.0.0.0:7700); needs CURVE keys
    control_tcp: str | None = None
    #: NAME of the environment variable holding the control server's CURVE secret key (Z85)
    curve_server_secret_env: str | None = None
    #: CURVE public keys (Z85) of the clients allowed on control_tcp
    curve_client_public_keys: list[str] = []
    #: modes readonly and live: encrypted key file (`perpbot keys add`; ~ is the home directory) the
    #: venues' credentials are read from at start, with its passphrase in $PERPBOT_KEYS_PASSPHRASE; a
    #: credential whose environment variable (api_key_env, api_secret_env) is set and non-empty comes
    #: from the environment instead; None: the environment only
    keys_file: str | None = None


class FeedConfig(_Frozen, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Every feed process: reconnects, watchdogs, heartbeat."""

    #: first reconnect delay; doubled per failure with jitter
    reconnect_initial_ms: PosInt = 100
    #: reconnect delay cap
    reconnect_max_ms: PosInt = 5000
    #: reconnect when a connection has been silent this long
    silent_reconnect_ms: PosInt = 5000
    #: a subscribed symbol without an update this long is counted stale (the scanner
    #: separately ignores quotes older than $.scanner.stale_after_ms)
    symbol_stale_ms: PosInt = 10000
    #: how often counters and the heartbeat reach the status segment
    heartbeat_ms: PosInt = 200
    #: at most one QUOTE_UPDATED event per symbol per interval; 0 disables them
    quote_event_interval_ms: NonNegInt = 250


class ScannerConfig(_Frozen, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The scanner: polling policy, pinning, and what counts as an opportunity."""

    #: CPU core to pin the scanner's main thread to; None leaves it unpinned
    core: NonNegInt | None = None
    #: spin (a dedicated core), hybrid (spin, then short sleeps when idle) or sleep
    poll: PollPolicy = "hybrid"
    #: hybrid: keep spinning this long after the last change before sleeping
    spin_us: NonNegInt = 2000
    #: hybrid and sleep: length of one sleep step
    sleep_us: PosInt = 200
    #: a quote older than this (by its receive stamp) is ignored
    stale_after_ms: PosInt = 1000
    #: minimum edge, net of both taker fees, to report an opportunity
    min_edge_bps: NonNegFloat = 1.0
    #: the top of book on both sides must hold at least this much notional
    min_notional_usd: NonNegFloat = 100.0
    #: the same (symbol, buy venue, sell venue) is reported at most once per interval
    repeat_interval_ms: NonNegInt = 100


class ExecConfig(_Frozen, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The exec process: trade size and when to close."""

    #: notional to open per opportunity (capped by the book and by risk)
    trade_notional_usd: PosFloat = 1000.0
    #: an opportunity older than this when exec reads it is dropped, never traded
    max_opportunity_age_ms: PosInt = 100
    #: close both legs when the round trip's net PnL reaches this many bps of notional
    take_profit_bps: float = 0.0
    #: close both legs after this long regardless
    max_hold_ms: PosInt = 2000
    #: how often open trades are checked against the board
    check_interval_ms: PosInt = 5
    #: taker: both legs taker IOC at once; maker_first: a post-only order on one venue
    #: (`maker_venue`), then the other leg taker once it fills, taker-taker if it does not
    entry_mode: EntryMode = "taker"
    #: maker_first: which venue rests the maker leg; `slower` is the one with the slower
    #: measured order round trip (its quote is the one more likely to have moved)
    maker_venue: MakerVenue = "slower"
    #: maker_first: how long the maker leg may rest before it is cancelled
    maker_timeout_ms: PosInt = 200
    #: a taker order still resting this long after it was sent is cancelled
    order_timeout_ms: PosInt = 1000
    #: sends of one order when its outcome is unknown (same client order id every time)
    retry_attempts: PosInt = 3
    #: wait before the 2nd send; doubles for each further one
    retry_backoff_ms: PosFloat = 20.0
    #: first interval at which a resting order is asked for its state; doubles after each ask
    order_poll_ms: PosFloat = 2.0
    #: the longest interval between two asks about a resting order
    max_order_poll_ms: PosFloat = 100.0
    #: a leg that filled less than its partner must be hedged or unwound within this
    legging_deadline_ms: PosInt = 2000
    #: hedge a leg that filled nothing on the next-best venue when its own venue fails
    hedge_next_best_venue: bool = True
    #: add the funding both legs expect to pay or receive over `max_hold_ms` to the entry edge
    funding_aware: bool = True
    #: how often funding rates and booked funding payments are read from the venues
    funding_refresh_s: PosFloat = 60.0
    #: how often positions are compared with what the venues report (a mismatch pauses the symbol)
    reconcile_interval_ms: PosInt = 5000
    #: percent of every venue rate-limit window new entries may not use, kept for hedges, unwinds,
    #: closes and cancels (0..90)
    hedge_headroom_pct: Annotated[float, msgspec.Meta(ge=0, le=90)] = 20.0
    #: how often each venue's clock offset is measured again
    clock_sync_interval_s: PosFloat = 60.0
    #: warn when a venue's clock is further than this from ours (signed requests carry our timestamp,
    #: and venues refuse ones outside their receive window, about 5 s)
    max_clock_offset_ms: PosInt = 1000


class RiskConfig(_Frozen, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Limits every order is checked against; `perpbot-ctl reload-risk` re-reads this section."""

    #: the largest notional one trade may open, USD
    max_notional_per_trade_usd: PosFloat = 5000.0
    #: absolute position per venue and symbol after the order, USD notional at the board mid (at
    #: the order's price where the board has none); checked for opening and hedging orders
    max_position_notional_usd: PosFloat = 20000.0
    #: at most this many trades open at once
    max_open_trades: PosInt = 4
    #: realized loss (after fees) since 00:00 UTC in this run's journal at which no new position is
    #: opened and trading turns REDUCE_ONLY (closing continues); None: no daily limit
    max_daily_loss_usd: PosFloat | None = None
    #: sum over all venues and symbols of the absolute position x board mid after the orders, USD;
    #: opening and hedging orders that would exceed it are refused (exits never are)
    max_gross_exposure_usd: PosFloat = 100000.0
    #: per venue: sum over its symbols of the absolute position x board mid after the orders, USD;
    #: at least max_position_notional_usd and at most max_gross_exposure_usd
    max_venue_notional_usd: PosFloat = 50000.0
    #: per venue: our resting orders plus the orders of the decision being checked
    max_open_orders_per_venue: PosInt = 20
    #: per venue: free margin left after an opening order's margin (notional / leverage) must stay
    #: at or above this, USD; unknown free margin refuses openings on that venue
    min_margin_headroom_usd: NonNegFloat = 0.0
    #: per symbol: the absolute net position summed over venues x board mid after an opening
    #: decision, USD
    max_symbol_net_exposure_usd: PosFloat = 5000.0
    #: an opening or hedging order's limit price (or, for a market order, the quote it was priced
    #: from) must be within this many bps of its venue's board mid; exits are never band-checked
    price_band_bps: Annotated[float, msgspec.Meta(gt=0, le=1000)] = 50.0

    def __post_init__(self) -> None:
        if self.max_venue_notional_usd < self.max_position_notional_usd:
            raise ValueError(
                f"max_venue_notional_usd ({self.max_venue_notional_usd:g}) must be >= "
                f"max_position_notional_usd ({self.max_position_notional_usd:g})"
            )
        if self.max_gross_exposure_usd < self.max_venue_notional_usd:
            raise ValueError(
                f"max_gross_exposure_usd ({self.max_gross_exposure_usd:g}) must be >= "
                f"max_venue_notional_usd ({self.max_venue_notional_usd:g})"
            )


class DemoVenueConfig(_Frozen, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One simulated venue of the demo market."""

    #: the venue's constant offset from the common fair price
    basis_bps: float = 0.0
    #: the venue's own noise around fair + basis
    noise_bps: NonNegFloat = 0.3
    #: quote updates per second per symbol
    update_hz: PosFloat = 50.0
    #: half the quoted spread
    half_spread_bps: PosFloat = 0.5
    #: notional quoted at the top of book, USD (sizes vary around it)
    top_size_usd: PosFloat = 50000.0


#: what a scheduled market fault ($.demo.faults[].kind) may be
MARKET_FAULT_KINDS: tuple[str, ...] = ("drop", "stall", "garbage", "crossed", "stale", "refuse")
#: the kinds that last `for_s` (a drop is instantaneous)
MARKET_FAULT_DURATION_KINDS: tuple[str, ...] = ("stall", "garbage", "crossed", "stale", "refuse")
#: the kinds that may name one `symbol`
MARKET_FAULT_SYMBOL_KINDS: tuple[str, ...] = ("garbage", "crossed", "stale")


class MarketFaultConfig(_Frozen, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One scheduled fault of a demo market venue's server (carried out by perpbot/sim/faults.py)."""

    #: when it starts, seconds after the demo market starts serving
    at_s: NonNegFloat
    #: the venue whose server misbehaves (a key of $.venues)
    venue: str
    #: drop (close every connection), stall (send nothing), garbage (malformed frames among the
    #: quotes), crossed (bid > ask), stale (the same old quote again and again), refuse (drop, then
    #: refuse every new connection)
    kind: str
    #: how long it lasts, seconds: > 0 for every kind but drop, which is instantaneous (0)
    for_s: NonNegFloat = 0.0
    #: garbage, crossed and stale only: just this board symbol's quotes; None: all of the venue's
    symbol: str | None = None


class DemoConfig(_Frozen, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The built-in demo market (seeded, reproducible)."""

    #: seed of the price model: the same seed gives the same market
    seed: int = 7
    #: address the simulated venues listen on
    host: str = "127.0.0.1"
    #: starting fair price per board symbol
    prices: dict[str, PosFloat] = {}
    #: random-walk volatility of the fair price, bps per sqrt(second)
    volatility_bps: NonNegFloat = 20.0
    #: expected dislocations per second across the whole market
    dislocations_per_s: NonNegFloat = 2.0
    #: size of a jump dislocation
    dislocation_bps: NonNegFloat = 25.0
    #: shortest dislocation
    dislocation_min_ms: PosInt = 50
    #: longest dislocation
    dislocation_max_ms: PosInt = 400
    venues: dict[str, DemoVenueConfig] = {}
    #: scheduled faults of the venues' servers, each {at_s, venue, kind, for_s, symbol}
    faults: tuple[MarketFaultConfig, ...] = ()


class ReplayConfig(_Frozen, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Replay mode: a recording (`perpbot-record`'s format) played through the loopback servers.

    One venue serves the recording: `venue`, or by default the first venue in
    config order whose feed speaks it. A recording is a feed's when its URL has
    the host of the feed's public URL or, for a recording of the demo market,
    lies under the feed's demo path (the longest such path wins). The other
    venues' servers run too, but send no data.
    """

    #: the recording; a relative path is taken from the working directory of perpbot-launch
    file: str
    #: 1.0 plays at the recorded pace, 10.0 ten times faster
    speed: PosFloat = 1.0
    #: ignore `speed`: send each frame as soon as the subscribers take it
    as_fast_as_possible: bool = False
    #: the venue that serves the recording; None: the first whose feed matches it
    venue: str | None = None


#: a probability, 0..1
Probability = Annotated[float, msgspec.Meta(ge=0, le=1)]
#: funding intervals venues use, hours
FundingIntervalH = Literal[1, 4, 8]
#: funding per interval, bps of notional (bounded to catch a rate typed as a percentage)
FundingBps = Annotated[float, msgspec.Meta(ge=-1000, le=1000)]


class PaperVenueOverride(_Frozen, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One paper venue's own simulation settings; an absent key keeps the `paper` section's value."""

    #: round trip delay of every call to this venue, ms; None: $.paper.latency_ms
    latency_ms: NonNegFloat | None = None
    #: share of this venue's orders refused at random; None: $.paper.reject_rate
    reject_rate: Probability | None = None
    #: this venue's funding per interval, bps; None: $.paper.funding_rate_bps
    funding_rate_bps: FundingBps | None = None
    #: this venue's funding interval, hours; None: $.paper.funding_interval_h
    funding_interval_h: FundingIntervalH | None = None


class PaperDriftConfig(_Frozen, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One scheduled position drift: a paper venue books a fill the client did not send."""

    #: when, seconds after the exec process started its paper venues
    at_s: NonNegFloat
    #: the paper venue that books it (a key of $.venues)
    venue: str
    #: the board symbol (one of that venue's symbols)
    symbol: str
    #: signed base quantity, a whole number of lots: > 0 the account bought, < 0 it sold
    qty: Decimal


class PaperConfig(_Frozen, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The simulated venue every order goes to in demo, replay and paper mode.

    The defaults are an ideal venue: no latency, no faults, no slippage, fills at
    the top of book. Fault rates are drawn from a generator seeded with `seed` and
    the venue's name, so a run with the same orders sees the same faults.
    """

    #: round trip delay of every venue call (order, cancel, fetch), ms: half before the venue
    #: acts on the request, half before the answer arrives
    latency_ms: NonNegFloat = 0.0
    #: a uniformly random extra delay of up to this much per call, ms
    latency_jitter_ms: NonNegFloat = 0.0
    #: size-based slippage: a taker fill's price is worse than the top of book by this many bps
    #: per 10,000 USD of the fill's notional (never beyond the order's limit)
    slippage_bps_per_10k_usd: NonNegFloat = 0.0
    #: share of orders refused (REJECTED)
    reject_rate: Probability = 0.0
    #: share of orders that fill only a random fraction of their quantity
    partial_fill_rate: Probability = 0.0
    #: share of orders accepted but never filled (they stay open until cancelled)
    never_fill_rate: Probability = 0.0
    #: share of orders whose answer times out (half of them executed by the venue regardless)
    timeout_rate: Probability = 0.0
    #: share of orders that rest unfilled and then fill completely when their cancel arrives
    late_fill_rate: Probability = 0.0
    #: seed of the random faults and latency jitter
    seed: int = 1
    #: starting balance of every paper venue, USD
    initial_balance_usd: NonNegFloat = 100000.0
    #: margin locked = (absolute position notional at the mark + resting orders' notional) / leverage
    leverage: PosFloat = 5.0
    #: funding per interval, bps of position notional at the mark; positive: longs pay shorts
    funding_rate_bps: FundingBps = 0.0
    #: hours between funding payments (at whole multiples of the interval in epoch time)
    funding_interval_h: FundingIntervalH = 8
    #: added to the venue's clock (server_time_ms), ms; positive: the venue is ahead
    server_time_skew_ms: int = 0
    #: how often resting orders are matched against the board while any rest, ms
    rest_poll_ms: PosFloat = 1.0
    #: per-venue overrides, by venue name (a key of $.venues)
    venues: dict[str, PaperVenueOverride] = {}
    #: scheduled position drifts (liquidations, auto-deleverages), each {at_s, venue, symbol, qty},
    #: booked at the mark (board mid) once per venue account
    drift: tuple[PaperDriftConfig, ...] = ()


class CapitalConfig(_Frozen, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Capital pools: how each venue's equity is split, and the leverage that sets a leg's margin."""

    #: percent of each venue's equity for the volume pool (hedged volume generation)
    volume_pct: NonNegFloat = 0.0
    #: percent of each venue's equity for the arbitrage pool (the trades the scanner finds)
    arbitrage_pct: NonNegFloat = 80.0
    #: percent of each venue's equity kept as the reserve, never reserved for a trade; the three
    #: percentages sum to exactly 100
    reserve_pct: NonNegFloat = 20.0
    #: margin a leg needs = its notional / leverage
    leverage: PosFloat = 5.0
    #: leverage per venue (a $.venues key), overriding `leverage` there
    leverage_per_venue: dict[str, PosFloat] = {}
    #: how often venue balances are fetched (they are also fetched after fills)
    snapshot_interval_ms: PosInt = 5000
    #: a venue's balance request is abandoned after this long; its last equity is kept, flagged stale
    balance_timeout_ms: PosInt = 2000
    #: assets whose `total` counts 1:1 as USD equity (stablecoins); other assets are ignored
    quote_assets: tuple[str, ...] = ("USD", "USDT", "USDC")


def _validate_capital(cfg: Config) -> None:
    """The pools split all of the equity, exactly; leverage overrides name known venues."""
    c = cfg.capital
    # compared as decimals of the values as written, so 33.3 + 33.3 + 33.4 is exactly 100
    pcts = [Decimal(str(p)) for p in (c.volume_pct, c.arbitrage_pct, c.reserve_pct)]
    if sum(pcts) != 100:
        raise ConfigError("$.capital", "volume_pct + arbitrage_pct + reserve_pct must sum to exactly 100; got "
                                       f"{pcts[0]} + {pcts[1]} + {pcts[2]} = {sum(pcts)}")
    if not Decimal(str(c.leverage)).is_finite():
        raise ConfigError("$.capital.leverage", "must be a finite positive number")
    for vname, lev in c.leverage_per_venue.items():
        if vname not in cfg.venues:
            raise ConfigError(f"$.capital.leverage_per_venue.{vname}",
                              f"unknown venue; allowed: {', '.join(cfg.venues)}")
        if not Decimal(str(lev)).is_finite():
            raise ConfigError(f"$.capital.leverage_per_venue.{vname}", "must be a finite positive number")
    if not c.quote_assets:
        raise ConfigError("$.capital.quote_assets", "at least one asset is needed to count equity")
    for i, asset in enumerate(c.quote_assets):
        if not re.match(r"^[A-Z0-9]{2,12}$", asset):
            raise ConfigError(f"$.capital.quote_assets[{i}]", f"asset codes are 2-12 of A-Z, 0-9; got {asset!r}")


class Config(_Frozen, frozen=True, forbid_unknown_fields=True, kw_only=True):
    symbols: dict[str, SymbolConfig]
    venues: dict[str, VenueConfig]
    #: demo (built-in market), replay (a recording), paper (real feeds, paper fills), readonly (real
    #: feeds and account reads, no order sent), live (real orders; perpbot-launch needs --confirm-live)
    mode: Mode = "demo"
    run: RunConfig = RunConfig()
    feed: FeedConfig = FeedConfig()
    scanner: ScannerConfig = ScannerConfig()
    exec: ExecConfig = ExecConfig()
    risk: RiskConfig = RiskConfig()
    demo: DemoConfig = DemoConfig()
    #: required in replay mode
    replay: ReplayConfig | None = None
    #: where alerts go (log, webhook, terminal bell) and how floods are held back
    alerts: AlertsConfig = AlertsConfig()
    #: capital pools per venue (volume, arbitrage, reserve) and the leverage margin is computed with
    capital: CapitalConfig = CapitalConfig()
    #: the simulated venue (latency, faults, funding, margin) behind demo, replay and paper mode
    paper: PaperConfig = PaperConfig()

    @property
    def venue_names(self) -> tuple[str, ...]:
        return tuple(self.venues)

    @property
    def symbol_names(self) -> tuple[str, ...]:
        return tuple(self.symbols)


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read, type-check and validate a YAML config file."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError("$", f"cannot read config file {p}: {e.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError("$", f"{p} is not valid YAML: {e}") from None
    return parse_config(raw)


def parse_config(raw: Any) -> Config:
    """Turn already-parsed YAML into a validated `Config`."""
    if not isinstance(raw, dict):
        raise ConfigError("$", "expected a mapping at the top level")
    try:
        cfg = msgspec.convert(raw, Config, strict=False)
    except msgspec.ValidationError as e:
        raise _explain(str(e), raw) from None
    _validate(cfg)
    return cfg


def _explain(msg: str, raw: Any) -> ConfigError:
    """Rewrite a msgspec message so it names the key path and what is allowed."""
    m = re.search(r" - at `(\$[^`]*)`$", msg)
    path = _name_dict_keys(m.group(1), raw) if m else "$"
    problem = msg[: m.start()] if m else msg
    typ = _type_at(path)
    unknown = re.match(r"Object contains unknown field `([^`]+)`", problem)
    if unknown:
        fields = _fields_of(typ)
        path = f"{path}.{unknown.group(1)}"
        problem = "unknown key" + (f"; allowed keys: {', '.join(fields)}" if fields else "")
    elif problem.startswith("Object missing required field"):
        field = re.search(r"`([^`]+)`", problem)
        if field:
            path = f"{path}.{field.group(1)}"
        problem = "required key is missing"
    else:
        allowed = _literal_values(typ)
        if allowed:
            problem += f"; allowed values: {', '.join(allowed)}"
    return ConfigError(path, problem)


def _name_dict_keys(path: str, raw: Any) -> str:
    """msgspec writes `[...]` for a mapping key; find which key's value fails and name it."""
    out = "$"
    typ: Any = Config
    node = raw
    for part in re.findall(r"\.[^.\[]+|\[[^\]]*\]", path):
        typ = _unwrap(typ)
        if part == "[...]" and isinstance(node, dict) and typing.get_origin(typ) is dict:
            vtyp = typing.get_args(typ)[1]
            bad = next((k for k, v in node.items() if not _converts(v, vtyp)), None)
            if bad is None:
                return path
            out += f".{bad}"
            node, typ = node[bad], vtyp
        elif part.startswith(".") and isinstance(typ, type) and issubclass(typ, msgspec.Struct):
            key = part[1:]
            out += part
            node = node.get(key) if isinstance(node, dict) else None
            typ = typing.get_type_hints(typ, include_extras=True).get(key)
        else:
            return out + path[len(out):] if path.startswith(out) else path
    return out


def _converts(value: Any, typ: Any) -> bool:
    try:
        msgspec.convert(value, typ, strict=False)
    except msgspec.ValidationError:
        return False
    return True


def _type_at(path: str) -> Any:
    """Walk the Config type along a `$.a.b[0]` path; None where it cannot follow."""
    typ: Any = Config
    for part in re.findall(r"\.([^.\[]+)|\[[^\]]*\]", path):
        typ = _unwrap(typ)
        if typing.get_origin(typ) is dict and part and not (
            isinstance(typ, type) and issubclass(typ, msgspec.Struct)
        ):
            typ = typing.get_args(typ)[1]  # a named mapping key
            continue
        if isinstance(typ, type) and issubclass(typ, msgspec.Struct):
            hints = typing.get_type_hints(typ, include_extras=True)
            typ = hints.get(part) if part else None
        elif typing.get_origin(typ) is dict:
            typ = typing.get_args(typ)[1]
        else:
            return None
    return _unwrap(typ)


def _unwrap(typ: Any) -> Any:
    while True:
        origin = typing.get_origin(typ)
        if origin is Annotated:
            typ = typing.get_args(typ)[0]
        elif origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
            args = [a for a in typing.get_args(typ) if a is not type(None)]
            if len(args) != 1:
                return typ
            typ = args[0]
        else:
            return typ


def _fields_of(typ: Any) -> tuple[str, ...]:
    if isinstance(typ, type) and issubclass(typ, msgspec.Struct):
        return typ.__struct_fields__
    return ()


def _literal_values(typ: Any) -> tuple[str, ...]:
    if typing.get_origin(typ) is Literal:
        return tuple(str(v) for v in typing.get_args(typ))
    return ()


def _validate(cfg: Config) -> None:
    """Cross-field checks msgspec cannot express."""
    from perpbot.exec.ratelimit import validate_rate_limits
    from perpbot.feeds.ccxt_generic import is_ccxt_feed
    from perpbot.feeds.registry import FEEDS

    if cfg.mode not in AVAILABLE_MODES:
        raise ConfigError(
            "$.mode",
            f"mode {cfg.mode!r} is not available in this build; allowed: {', '.join(AVAILABLE_MODES)}",
        )
    if not cfg.symbols:
        raise ConfigError("$.symbols", "at least one symbol is required")
    if len(cfg.venues) < 2:
        raise ConfigError("$.venues", "at least two venues are required to arbitrage")
    for name, s in cfg.symbols.items():
        if not _SYMBOL_NAME.match(name):
            raise ConfigError(f"$.symbols.{name}", "symbol names look like BTC-PERP (upper case, -PERP)")
        for key in ("lot_size", "tick_size"):
            step: Decimal = getattr(s, key)
            if not step.is_finite() or step <= 0:
                raise ConfigError(f"$.symbols.{name}.{key}", f"must be a positive number, got {step}")
    for vname, v in cfg.venues.items():
        base = f"$.venues.{vname}"
        if not re.match(r"^[a-z0-9_]{1,15}$", vname):
            raise ConfigError(base, "venue names are 1-15 characters of a-z, 0-9 and _")
        try:
            ccxt_id = is_ccxt_feed(v.feed)
        except ValueError as e:
            raise ConfigError(f"{base}.feed", str(e)) from None
        if ccxt_id is None and v.feed not in FEEDS:
            raise ConfigError(f"{base}.feed",
                              f"unknown feed {v.feed!r}; allowed: {', '.join(sorted(FEEDS))}, or ccxt:<ccxt id>")
        if ccxt_id is not None and cfg.mode in ("demo", "replay"):
            raise ConfigError(f"{base}.feed", f"a ccxt.pro feed reads a real venue; mode {cfg.mode!r} serves only "
                              f"native protocols ({', '.join(sorted(FEEDS))}); use mode paper")
        if v.ccxt_markets_file is not None and ccxt_id is None and cfg.mode not in ("readonly", "live"):
            raise ConfigError(f"{base}.ccxt_markets_file", "only for a ccxt:<id> feed, or modes readonly and live")
        if v.ccxt_id is not None or cfg.mode in ("readonly", "live"):
            _validate_ccxt_venue(cfg, vname, v)
        if not v.symbols:
            raise ConfigError(f"{base}.symbols", "at least one symbol is required")
        for sym in v.symbols:
            if sym not in cfg.symbols:
                raise ConfigError(
                    f"{base}.symbols.{sym}",
                    f"unknown symbol; allowed (from $.symbols): {', '.join(cfg.symbols)}",
                )
        for sym in v.contract_sizes:
            if sym not in v.symbols:
                raise ConfigError(
                    f"{base}.contract_sizes.{sym}",
                    f"not one of this venue's symbols; allowed: {', '.join(v.symbols)}",
                )
        for key in ("api_key_env", "api_secret_env"):
            env = getattr(v, key)
            if env is not None and not _ENV_NAME.match(env):
                raise ConfigError(
                    f"{base}.{key}",
                    "must be the NAME of an environment variable (A-Z, 0-9, _), never the secret itself",
                )
        if v.url is not None and not re.match(r"^wss?://", v.url):
            raise ConfigError(f"{base}.url", "must start with ws:// or wss://")
    validate_alerts(cfg.alerts)
    validate_rate_limits(cfg)
    _validate_capital(cfg)
    _validate_fault_schedules(cfg)
    if cfg.run.control_tcp is not None:
        if not re.match(r"^tcp://[^:]+:\d+$", cfg.run.control_tcp):
            raise ConfigError("$.run.control_tcp", "must look like tcp://HOST:PORT")
        if cfg.run.curve_server_secret_env is None or not _ENV_NAME.match(cfg.run.curve_server_secret_env):
            raise ConfigError("$.run.curve_server_secret_env",
                              "a tcp:// control endpoint needs CURVE: the NAME of the variable holding the "
                              "server's secret key")
        if not cfg.run.curve_client_public_keys:
            raise ConfigError("$.run.curve_client_public_keys", "a tcp:// control endpoint needs at least one "
                              "allowed client public key")
    if cfg.run.keys_file is not None and not cfg.run.keys_file.strip():
        raise ConfigError("$.run.keys_file", "must be the path of a key file (`perpbot keys add`), or null")
    for i, key in enumerate(cfg.run.curve_client_public_keys):
        if len(key) != 40:
            raise ConfigError(f"$.run.curve_client_public_keys[{i}]", "a CURVE public key is 40 Z85 characters")
    if cfg.scanner.core is not None:
        ncpu = os.cpu_count() or 1
        if cfg.scanner.core >= ncpu:
            raise ConfigError("$.scanner.core", f"this machine has cores 0..{ncpu - 1}; got {cfg.scanner.core}")
    if cfg.feed.reconnect_max_ms < cfg.feed.reconnect_initial_ms:
        raise ConfigError("$.feed.reconnect_max_ms", "must be >= $.feed.reconnect_initial_ms")
    if cfg.risk.max_notional_per_trade_usd < cfg.exec.trade_notional_usd:
        raise ConfigError(
            "$.exec.trade_notional_usd", "must not exceed $.risk.max_notional_per_trade_usd"
        )
    if cfg.mode == "demo":
        for sym in cfg.symbols:
            if sym not in cfg.demo.prices:
                raise ConfigError(f"$.demo.prices.{sym}", "demo mode needs a starting price for every symbol")
        for vname in cfg.demo.venues:
            if vname not in cfg.venues:
                raise ConfigError(
                    f"$.demo.venues.{vname}", f"unknown venue; allowed: {', '.join(cfg.venues)}"
                )
        if cfg.demo.dislocation_max_ms < cfg.demo.dislocation_min_ms:
            raise ConfigError("$.demo.dislocation_max_ms", "must be >= $.demo.dislocation_min_ms")
    for vname in cfg.paper.venues:
        if vname not in cfg.venues:
            raise ConfigError(f"$.paper.venues.{vname}", f"unknown venue; allowed: {', '.join(cfg.venues)}")
    if cfg.replay is not None and cfg.replay.venue is not None and cfg.replay.venue not in cfg.venues:
        raise ConfigError("$.replay.venue", f"unknown venue; allowed: {', '.join(cfg.venues)}")
    if cfg.mode == "replay":
        _validate_replay(cfg)


def _validate_fault_schedules(cfg: Config) -> None:
    """$.demo.faults and $.paper.drift name configured venues and symbols, with finite times."""
    venues = ", ".join(cfg.venues)
    for i, f in enumerate(cfg.demo.faults):
        base = f"$.demo.faults[{i}]"
        if f.venue not in cfg.venues:
            raise ConfigError(f"{base}.venue", f"unknown venue {f.venue!r}; allowed: {venues}")
        if f.kind not in MARKET_FAULT_KINDS:
            raise ConfigError(f"{base}.kind", f"unknown kind {f.kind!r}; allowed: {', '.join(MARKET_FAULT_KINDS)}")
        for key in ("at_s", "for_s"):
            if not math.isfinite(getattr(f, key)):
                raise ConfigError(f"{base}.{key}", "must be a finite number of seconds >= 0")
        if f.kind in MARKET_FAULT_DURATION_KINDS and f.for_s <= 0:
            raise ConfigError(f"{base}.for_s", f"a {f.kind} lasts for_s seconds: must be > 0")
        if f.kind not in MARKET_FAULT_DURATION_KINDS and f.for_s:
            raise ConfigError(f"{base}.for_s", f"a {f.kind} is instantaneous: leave for_s out (0)")
        if f.symbol is not None:
            if f.kind not in MARKET_FAULT_SYMBOL_KINDS:
                raise ConfigError(f"{base}.symbol", f"a {f.kind} hits the whole venue; symbol applies only to "
                                                    f"{', '.join(MARKET_FAULT_SYMBOL_KINDS)}")
            if f.symbol not in cfg.venues[f.venue].symbols:
                raise ConfigError(f"{base}.symbol", f"{f.venue} does not list {f.symbol!r}; allowed: "
                                                    f"{', '.join(cfg.venues[f.venue].symbols)}")
    for i, d in enumerate(cfg.paper.drift):
        base = f"$.paper.drift[{i}]"
        if d.venue not in cfg.venues:
            raise ConfigError(f"{base}.venue", f"unknown venue {d.venue!r}; allowed: {venues}")
        if not math.isfinite(d.at_s):
            raise ConfigError(f"{base}.at_s", "must be a finite number of seconds >= 0")
        if d.symbol not in cfg.venues[d.venue].symbols:
            raise ConfigError(f"{base}.symbol", f"{d.venue} does not list {d.symbol!r}; allowed: "
                                                f"{', '.join(cfg.venues[d.venue].symbols)}")
        lot = cfg.symbols[d.symbol].lot_size
        if not d.qty.is_finite() or not d.qty or d.qty % lot:
            raise ConfigError(f"{base}.qty", f"must be a non-zero whole number of lots ({lot}), signed; got {d.qty}")


def _validate_ccxt_venue(cfg: Config, vname: str, v: VenueConfig) -> None:
    """The venue maps to a ccxt id we trade through; in live mode its credential variables are named."""
    # imported here: ccxt is only needed when a venue trades through it
    from perpbot.exec.venues.ccxt_venue import CREDENTIAL_CONFIG_KEYS, QUIRKS

    base = f"$.venues.{vname}"
    ccxt_id = ccxt_id_of(v.ccxt_id, v.feed)
    if ccxt_id not in QUIRKS:
        how = "" if v.ccxt_id is not None else f" (taken from feed {v.feed!r}; set ccxt_id)"
        raise ConfigError(f"{base}.ccxt_id", f"no ccxt trading venue {ccxt_id!r}{how}; "
                                             f"allowed: {', '.join(sorted(QUIRKS))}")
    if cfg.mode != "live" or cfg.run.keys_file is not None:
        return  # with a key file, what the environment lacks may be in it: checked before a live start
    for field in QUIRKS[ccxt_id].credentials:
        key = CREDENTIAL_CONFIG_KEYS[field]
        if getattr(v, key) is None:
            raise ConfigError(f"{base}.{key}", f"mode live trades with {ccxt_id} credentials: name the "
                                               f"environment variable holding its {field}")


def _validate_replay(cfg: Config) -> None:
    """Replay mode needs a readable recording and a venue whose feed speaks it."""
    # imported here: the recording format and the servers are only needed in replay mode
    from perpbot.record import RecordingError, recording_url
    from perpbot.sim.replay import replay_venue

    if cfg.replay is None:
        raise ConfigError("$.replay.file", "replay mode needs a recording to play: set $.replay.file")
    path = cfg.replay.file
    try:
        url = recording_url(path)
    except OSError as e:
        raise ConfigError("$.replay.file", f"cannot read recording {path}: {e.strerror or e}") from None
    except RecordingError as e:
        raise ConfigError("$.replay.file", f"{path} is not a recording: {e}") from None
    if replay_venue(cfg, url) is not None:
        return
    if cfg.replay.venue is not None:
        feed = cfg.venues[cfg.replay.venue].feed
        raise ConfigError("$.replay.venue", f"speaks feed {feed!r}, which does not match the recording of {url}")
    feeds = sorted({v.feed for v in cfg.venues.values()})
    raise ConfigError("$.replay.file", f"no venue's feed matches the recording of {url}; "
                                       f"the venues speak: {', '.join(feeds)}")
