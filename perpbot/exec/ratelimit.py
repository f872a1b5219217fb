"""The rate-limit budget of each venue, shared by everything that calls it.

Every venue publishes limits as "at most N per window": N requests (or request
weight) per window, and usually a tighter N order placements per window.
`RateBudget` keeps one sliding window per published limit and says whether one
more call fits in all of them at once.

Calls have a priority. An ENTRY (an order that opens a new position) may use at
most `100 - headroom_pct` percent of every window; an EXIT (a hedge, unwind,
close, cancel, or a fetch needed to settle an order) may use all of it. The
headroom is therefore always left for exits: however many entries are tried,
a hedge still finds room.

    budget = RateBudget(VENUE_LIMITS["okx"], headroom_pct=20)
    if budget.try_acquire(Priority.ENTRY, orders=1):        # a new position: skip it if no room
        ...
    if await budget.acquire(Priority.EXIT, orders=1, timeout_s=0.5):  # a hedge: wait for room
        ...

A call counts `requests` against every "requests" window (1 by default; a venue
that weighs its endpoints can be charged the weight) and `orders` against every
"orders" window (1 for an order placement or amendment, 0 for reads and
cancels). All windows or none: a refused call counts nowhere.

The window arithmetic is pure and reads an injectable monotonic clock
(`perpbot.clock.now_ns` by default); only `acquire` sleeps.
"""

from __future__ import annotations

import asyncio
import enum
import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Literal

from perpbot import clock as _clock
from perpbot.config import ccxt_id_of
from perpbot.errors import ConfigError

if TYPE_CHECKING:
    from perpbot.config import Config

RateKind = Literal["requests", "orders"]
#: the kinds of limit a venue publishes
RATE_KINDS: tuple[str, ...] = ("requests", "orders")
#: the headroom kept for exits when the config does not say
DEFAULT_HEADROOM_PCT = 20.0
#: the largest headroom accepted: entries keep at least a tenth of every window
MAX_HEADROOM_PCT = 90.0


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most `limit` requests (or orders) in any `window_ms` milliseconds."""

    limit: int
    window_ms: int
    kind: RateKind

    def __post_init__(self) -> None:
        for name in ("limit", "window_ms"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive whole number, got {value!r}")
        if self.kind not in RATE_KINDS:
            raise ValueError(f"kind must be one of {', '.join(RATE_KINDS)}, got {self.kind!r}")


def _req(limit: int, window_ms: int) -> RateLimit:
    return RateLimit(limit, window_ms, "requests")


def _ord(limit: int, window_ms: int) -> RateLimit:
    return RateLimit(limit, window_ms, "orders")


#: The published default (lowest tier) limits of each venue, by ccxt id. Where a venue limits each
#: endpoint (or instrument) separately, the row applies the strictest relevant figure to the whole
#: venue, which is conservative. `venues.<name>.rate_limits` in the config replaces a row.
VENUE_LIMITS: dict[str, tuple[RateLimit, ...]] = {
    "binanceusdm": (
        # 2,400 request weight per minute per IP; orders 1,200 per minute and 300 per 10 s per account
        # (Binance FAQ "Rate Limits on Binance Futures",
        #  https://www.binance.com/en/support/faq/rate-limits-on-binance-futures-281596e222414cdd9051664ea621cdc3)
        _req(2400, 60_000),
        _ord(300, 10_000),
        _ord(1200, 60_000),
    ),
    "okx": (
        # POST /api/v5/trade/order: 60 requests per 2 s per user and instrument
        # (https://www.okx.com/docs-v5/en/#order-book-trading-trade-post-place-order); applied per venue.
        # Reads: the strictest common private and market-data limit is 20 (market data) and 10 (balance,
        # positions) per 2 s per endpoint; 20 per 2 s over all endpoints (ccxt okx rateLimit 110 ms)
        _req(20, 2_000),
        _ord(60, 2_000),
    ),
    "bybit": (
        # 600 requests per 5 s per IP; POST /v5/order/create 10 per s per UID for linear contracts
        # (https://bybit-exchange.github.io/docs/v5/rate-limit)
        _req(600, 5_000),
        _ord(10, 1_000),
    ),
    "bitget": (
        # place-order 10 requests per s per UID
        # (https://www.bitget.com/api-doc/contract/trade/Place-Order); other private endpoints 10-20 per s
        # per UID; 20 per s over all endpoints (ccxt bitget rateLimit 50 ms)
        _req(20, 1_000),
        _ord(10, 1_000),
    ),
    "gate": (
        # 200 requests per 10 s per endpoint for public and private endpoints (Gate announcement "Latest
        # Announcement on API Rate Limit Adjustments", effective 2024-01-22; ccxt gate rateLimit 50 ms,
        # "200 requests per 10 second"); futures order placement is charged 0.4 of that by ccxt gate,
        # i.e. 50 per s. Gate throttles an account whose fill ratio is low to 10-20 placements per 10 s
        # (announcement of 2024-09-29): set rate_limits in the config if that applies.
        _req(200, 10_000),
        _ord(50, 1_000),
    ),
    "hyperliquid": (
        # REST requests share 1,200 weight per minute per IP; an exchange action weighs 1, info requests
        # 2 (orderStatus, clearinghouseState, l2Book) or 20 (most others): charge the weight as `requests`
        # (https://hyperliquid.gitbook.io/hyperliquid-docs/for-developers/api/rate-limits). Orders are
        # limited per address by traded volume, not by a window.
        _req(1200, 60_000),
    ),
    "paradex": (
        # POST/DELETE/PUT /orders: 800 per s or 17,250 per minute per account; GET: 120 per s or 600 per
        # minute per account; all private calls also 1,500 per minute per IP. 600 per minute is applied to
        # every call (https://docs.paradex.trade/api/general-information/rate-limits/api)
        _req(600, 60_000),
        _ord(800, 1_000),
        _ord(17_250, 60_000),
    ),
    "extended": (
        # 1,000 requests per minute per IP over all endpoints (Extended API documentation, "Rate Limits",
        # https://api.docs.extended.exchange/#rate-limits; ccxt extended rateLimit 600 ms)
        _req(1000, 60_000),
    ),
}

#: Venues without a row: a conservative 10 requests and 5 orders per second.
DEFAULT_LIMITS: tuple[RateLimit, ...] = (_req(10, 1_000), _ord(5, 1_000))


class Priority(enum.Enum):
    #: opens a new position: may use only `100 - headroom_pct` percent of each window
    ENTRY = "entry"
    #: hedges, unwinds, closes, cancels and the fetches that settle an order: may use every window fully
    EXIT = "exit"


@dataclass(frozen=True, slots=True)
class WindowUsage:
    """One window as `RateBudget.usage()` reports it."""

    kind: RateKind
    limit: int
    window_ms: int
    #: counted in the window now
    used: int
    #: how much of the window an entry may use
    entry_limit: int

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "limit": self.limit, "window_ms": self.window_ms, "used": self.used,
                "entry_limit": self.entry_limit}


class _Window:
    """Stamps of what one limit counted, oldest first, and their running total."""

    __slots__ = ("entry_limit", "rate", "stamps", "used", "window_ns")

    def __init__(self, rate: RateLimit, headroom: Fraction) -> None:
        self.rate = rate
        self.window_ns = rate.window_ms * 1_000_000
        self.entry_limit = math.floor(rate.limit * (100 - headroom) / 100)
        self.stamps: deque[tuple[int, int]] = deque()  # (stamp_ns, amount)
        self.used = 0

    def expire(self, now_ns: int) -> None:
        """Drop what left the window: a stamp counts while `now - stamp < window`."""
        stamps = self.stamps
        while stamps and now_ns - stamps[0][0] >= self.window_ns:
            self.used -= stamps.popleft()[1]

    def cap(self, priority: Priority) -> int:
        return self.rate.limit if priority is Priority.EXIT else self.entry_limit

    def wait_ns(self, amount: int, cap: int, now_ns: int) -> int | None:
        """How long until `amount` more fits under `cap` (0: now), None if it never can."""
        if amount > cap:
            return None
        excess = self.used + amount - cap
        if excess <= 0:
            return 0
        for stamp, counted in self.stamps:
            excess -= counted
            if excess <= 0:
                return stamp + self.window_ns - now_ns
        return None  # unreachable while `used` is the sum of the stamps


class RateBudget:
    """Sliding windows for one venue's limits, with headroom kept for exits.

    `headroom_pct` (0 to 90) of every window is out of reach of entries; the
    share entries may use is rounded down, so the reserve is at least one call
    in every window whenever the headroom is above 0.
    """

    def __init__(self, limits: Iterable[RateLimit], headroom_pct: float = DEFAULT_HEADROOM_PCT,
                 clock: _clock.Clock = _clock.now_ns) -> None:
        if isinstance(headroom_pct, bool) or not 0 <= headroom_pct <= MAX_HEADROOM_PCT:
            raise ValueError(f"headroom_pct must be 0..{MAX_HEADROOM_PCT:g}, got {headroom_pct!r}")
        self.limits: tuple[RateLimit, ...] = tuple(limits)
        if not self.limits:
            raise ValueError("a budget needs at least one limit")
        self.headroom_pct = float(headroom_pct)
        self._clock = clock
        headroom = Fraction(str(headroom_pct))
        self._windows = [_Window(rate, headroom) for rate in self.limits]

    def _amounts(self, orders: int, requests: int) -> list[int]:
        for name, value in (("orders", orders), ("requests", requests)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a whole number >= 0, got {value!r}")
        return [orders if w.rate.kind == "orders" else requests for w in self._windows]

    def _wait_ns(self, priority: Priority, amounts: Sequence[int], now_ns: int) -> int | None:
        longest = 0
        for w, amount in zip(self._windows, amounts):
            if not amount:
                continue
            w.expire(now_ns)
            wait = w.wait_ns(amount, w.cap(priority), now_ns)
            if wait is None:
                return None
            longest = max(longest, wait)
        return longest

    def try_acquire(self, priority: Priority, *, orders: int = 0, requests: int = 1) -> bool:
        """Count the call in every window if it fits in all of them now; otherwise count nothing."""
        amounts = self._amounts(orders, requests)
        now = self._clock()
        if self._wait_ns(priority, amounts, now) != 0:
            return False
        for w, amount in zip(self._windows, amounts):
            if amount:
                w.stamps.append((now, amount))
                w.used += amount
        return True

    def wait_ms(self, priority: Priority, *, orders: int = 0, requests: int = 1) -> float | None:
        """Milliseconds until the call would fit (0.0: now), assuming nothing else is counted meanwhile;
        None when it never can (more than the priority may ever use of some window)."""
        wait = self._wait_ns(priority, self._amounts(orders, requests), self._clock())
        return None if wait is None else wait / 1e6

    async def acquire(self, priority: Priority, *, orders: int = 0, requests: int = 1,
                      timeout_s: float) -> bool:
        """Count the call as soon as it fits, waiting up to `timeout_s`; False if it cannot fit in time.

        Returns False at once when the wait needed is longer than the time left, or the call can never
        fit. Nothing leaves a window early, so waiting longer would not help. The budget's clock must
        advance while the event loop sleeps (the default monotonic clock does).
        """
        amounts = self._amounts(orders, requests)
        deadline = self._clock() + max(0, round(timeout_s * 1e9))
        while True:
            if self.try_acquire(priority, orders=orders, requests=requests):
                return True
            now = self._clock()
            wait = self._wait_ns(priority, amounts, now)
            if wait is None or now + wait > deadline:
                return False
            # the oldest stamp in the way leaves its window after `wait`; 1 ms at least keeps a
            # coarse event-loop clock from spinning
            await asyncio.sleep(max(wait, 1_000_000) / 1e9)

    def usage(self) -> tuple[WindowUsage, ...]:
        """Each window's current count, for status and the monitor."""
        now = self._clock()
        out = []
        for w in self._windows:
            w.expire(now)
            out.append(WindowUsage(w.rate.kind, w.rate.limit, w.rate.window_ms, w.used, w.entry_limit))
        return tuple(out)

    def __repr__(self) -> str:
        windows = ", ".join(f"{u.used}/{u.limit} {u.kind} per {u.window_ms} ms" for u in self.usage())
        return f"RateBudget({windows}, headroom {self.headroom_pct:g}%)"


# -- configuration ------------------------------------------------------------------------------


def limits_for(feed: str, ccxt_id: str | None = None) -> tuple[RateLimit, ...]:
    """The published limits of a venue (its `ccxt_id`, else the one its feed speaks to), or
    `DEFAULT_LIMITS` for one without a row."""
    return VENUE_LIMITS.get(ccxt_id_of(ccxt_id, feed), DEFAULT_LIMITS)


def parse_rate_limits(entries: Sequence[Any], path: str) -> tuple[RateLimit, ...]:
    """`venues.<name>.rate_limits` entries (mappings or objects with limit, window_ms and kind) as
    `RateLimit`s; a ConfigError names the first wrong key, e.g. `$.venues.okx.rate_limits[1].kind`."""
    if not entries:
        raise ConfigError(path, "at least one {limit, window_ms, kind} entry; leave the key out for the "
                                "venue's published limits")
    out = []
    for i, entry in enumerate(entries):
        at = f"{path}[{i}]"
        get = entry.get if isinstance(entry, Mapping) else lambda key, e=entry: getattr(e, key, None)
        numbers: list[int] = []
        for key in ("limit", "window_ms"):
            value = get(key)
            if value is None:
                raise ConfigError(f"{at}.{key}", "required key is missing (a positive whole number)")
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{at}.{key}", f"must be a positive whole number, got {value!r}")
            numbers.append(value)
        kind = get("kind")
        if kind is None:
            raise ConfigError(f"{at}.kind", f"required key is missing; allowed values: {', '.join(RATE_KINDS)}")
        if kind not in RATE_KINDS:
            raise ConfigError(f"{at}.kind", f"got {kind!r}; allowed values: {', '.join(RATE_KINDS)}")
        out.append(RateLimit(numbers[0], numbers[1], kind))
    return tuple(out)


def validate_rate_limits(cfg: Config) -> None:
    """Check every venue's `rate_limits` and `$.exec.hedge_headroom_pct`; raises ConfigError."""
    for name, venue in cfg.venues.items():
        if venue.rate_limits is not None:
            parse_rate_limits(venue.rate_limits, f"$.venues.{name}.rate_limits")
    headroom = cfg.exec.hedge_headroom_pct
    if not 0 <= headroom <= MAX_HEADROOM_PCT:
        raise ConfigError("$.exec.hedge_headroom_pct", f"must be 0..{MAX_HEADROOM_PCT:g}, got {headroom}")


def budgets_from_config(cfg: Config, clock: _clock.Clock = _clock.now_ns) -> dict[str, RateBudget]:
    """One budget per configured venue: its published limits (`VENUE_LIMITS` row of the ccxt id its
    feed names) unless `venues.<name>.rate_limits` replaces them, with `$.exec.hedge_headroom_pct`."""
    validate_rate_limits(cfg)
    budgets = {}
    for name, venue in cfg.venues.items():
        if venue.rate_limits is not None:
            limits = parse_rate_limits(venue.rate_limits, f"$.venues.{name}.rate_limits")
        else:
            limits = limits_for(venue.feed, venue.ccxt_id)
        budgets[name] = RateBudget(limits, cfg.exec.hedge_headroom_pct, clock=clock)
    return budgets
