"""Generic feed for any ccxt venue, through ccxt.pro's own websocket client.

For venues without a native feed module here (Lighter, GRVT, Backpack,
Aster, dYdX, ...). A venue selects it with `feed: "ccxt:<ccxt id>"` and maps
board symbols to ccxt unified symbols::

    venues:
      aster:
        feed: "ccxt:aster"
        symbols: {BTC-PERP: "BTC/USDT:USDT", ETH-PERP: "ETH/USDT:USDT"}

It is deliberately not a venue module: it exports no `SPEC`, so the feed
registry skips it, and the feed process dispatches `ccxt:` feeds to
`run_ccxt_feed` instead of `run_feed`. It writes the same board row, the same
three stamps and the same status counters as a native feed, and marks its
status record `kind = FeedKind.CCXT`.

What it reads: `watch_bids_asks(symbols)` where the exchange has it
(`exchange.has["watchBidsAsks"]`), else one `watch_order_book(symbol)` per
symbol, of which only the top level is used. One update, as ccxt hands it
over (Binance USDⓈ-M)::

    {"BTC/USDT:USDT": {"symbol": "BTC/USDT:USDT", "timestamp": 1786541241006,
     "bid": 60000.1, "bidVolume": 0.812, "ask": 60000.2, "askVolume": 1.09, "info": {...}}}

Stamps:

- `ts_exchange_ns`: the ticker's or book's `timestamp` (epoch ms) in ns, or 0
  when the venue gives none (Binance spot bookTicker has no time field).
- `ts_recv_ns`: the moment ccxt handed us the update. That is LATER than the
  socket read: by then aiohttp has read and unmasked the frame, ccxt has
  decoded the JSON, run its handler, built a unified dict and resolved a
  future, and the event loop has woken this task. A native feed stamps in
  picows' frame callback, before it even parses. This is why this feed is
  slower than a native one, and why its FEED_RECV_TO_WRITE histogram looks
  fast: the expensive part happens before the stamp.
- `ts_write_ns`: stamped by the board writer.

Conflation: ccxt resolves one future per wake-up; updates that arrive before
this task awaits again only land in ccxt's cache (`exchange.bidsasks`). After
every wake-up the cache is swept and every subscribed symbol whose cached
dict changed is written, so the board always ends at the latest quote.

Sizes: for contract markets ccxt gives amounts in contracts (OKX, Gate:
`market["contractSize"]` base units per contract), so they are converted to
base units here; a venue's `contract_sizes` in the config overrides the
market's. Inverse contracts (`contractSize` in quote currency) become base
units at the side's own price.

Reconnects: ccxt.pro reconnects when the next `watch_*` call finds its
connection gone. Every exception from a `watch_*` call is counted, marks the
row DOWN at once, and is retried after a jittered backoff; a connection that
stays silent longer than `feed.silent_reconnect_ms` is marked STALE and
dropped. Set-up problems that retrying cannot fix (unknown symbol, no
supported watch method) raise `CcxtFeedError`.
"""

from __future__ import annotations

import asyncio
import difflib
import importlib.util
import logging
import math
import os
import random
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NoReturn

import orjson

from perpbot.clock import now_ns
from perpbot.events import EventType
from perpbot.feeds.spec import BBO, MAX_EPOCH_MS, ParseError, check_quote
from perpbot.metrics import LocalHistogram
from perpbot.shm.layout import FeedCounter, FeedKind, FeedState, Hop, ProcState, Role

if TYPE_CHECKING:
    from perpbot.bus import EventPublisher
    from perpbot.config import Config
    from perpbot.runctx import RunContext
    from perpbot.shm.board import BoardWriter
    from perpbot.shm.status import StatusBoard

# Nothing here imports `perpbot.feeds.process` (or ccxt) at module level: the
# feed registry imports every module in this package while it is itself being
# imported, and process.py imports the registry, so a top-level import would be
# circular; ccxt.pro takes about a second to import and only a ccxt venue needs it.

log = logging.getLogger("perpbot.feed")

#: a venue's `feed` value that selects this module: "ccxt:<ccxt id>"
CCXT_FEED_PREFIX = "ccxt:"
#: what this feed is, for logs, status displays and `describe()`
DESCRIPTION = "ccxt.pro generic feed (slower than native)"

WatchMethod = Literal["auto", "bids_asks", "order_book"]


class CcxtFeedError(Exception):
    """A set-up problem that retrying cannot fix: unknown exchange or symbol, no usable watch method."""


def describe() -> str:
    """One line saying what this feed is; the status monitor shows it beside `FeedKind.CCXT`."""
    return DESCRIPTION


# -- selecting the feed ---------------------------------------------------------------


@lru_cache(maxsize=1)
def ccxt_exchange_ids() -> frozenset[str]:
    """Every exchange id ccxt.pro has a websocket class for (the same set as `ccxt.pro.exchanges`).

    Read from the installed package's `ccxt/pro/<id>.py` files rather than by
    importing `ccxt.pro`, which takes about a second: config validation calls
    this and must stay fast.
    """
    spec = importlib.util.find_spec("ccxt")
    if spec is None or spec.origin is None:
        return frozenset()
    pro = Path(spec.origin).parent / "pro"
    return frozenset(p.stem for p in pro.glob("*.py") if not p.stem.startswith("_"))


def is_ccxt_feed(name: str) -> str | None:
    """The ccxt exchange id if `name` selects this feed (`"ccxt:aster"` -> `"aster"`), else None.

    Raises ValueError, naming close ids, when `name` has the `ccxt:` prefix but
    ccxt.pro has no such exchange: config validation turns it into a ConfigError.
    """
    if not name.startswith(CCXT_FEED_PREFIX):
        return None
    ccxt_id = name[len(CCXT_FEED_PREFIX):]
    ids = ccxt_exchange_ids()
    if ccxt_id not in ids:
        close = difflib.get_close_matches(ccxt_id, sorted(ids), n=3)
        hint = f"; did you mean {', '.join(CCXT_FEED_PREFIX + c for c in close)}?" if close else ""
        raise ValueError(f"ccxt.pro has no exchange {ccxt_id!r} (ccxt ids are lower case, e.g. "
                         f"ccxt:binanceusdm, ccxt:gate){hint}")
    return ccxt_id


# -- pure conversion: ccxt unified structures -> BBO in base units ------------------------------


@dataclass(frozen=True, slots=True)
class MarketUnits:
    """How one market's ccxt amounts become base units."""

    #: base units per contract (linear) or quote units per contract (inverse); 1.0 for spot
    contract_size: float = 1.0
    #: inverse contracts are worth `contract_size` in quote currency: base = amount * size / price
    inverse: bool = False

    def base(self, amount: float, price: float) -> float:
        """`amount` (ccxt's unit: contracts for contract markets) in base units at `price`."""
        if self.inverse:
            return amount * self.contract_size / price
        return amount * self.contract_size


def market_units(market: Mapping[str, Any] | None, override: float | None = None) -> MarketUnits:
    """The units of a ccxt market dict; `override` (the config's contract size) wins over the market's.

    A market that is not a contract (spot) trades in base units. A contract
    market without a `contractSize` is taken as 1 contract = 1 base unit,
    which is what ccxt means for the perp DEXes (Hyperliquid, dYdX, Paradex).
    For an inverse market the size (market's or override) is in quote
    currency per contract, as ccxt has it (Binance COIN-M: 100 USD).
    """
    inverse = bool(market and market.get("inverse"))
    if override is not None:
        return MarketUnits(float(override), inverse)
    if not market or not market.get("contract"):
        return MarketUnits()
    size = market.get("contractSize")
    if size is None:
        return MarketUnits(1.0, inverse)
    size = float(size)
    if not (math.isfinite(size) and size > 0):
        raise ValueError(f"market {market.get('symbol')!r} has contractSize {size!r}")
    return MarketUnits(size, inverse)


def _ts_ns(ts: object) -> int:
    """ccxt's `timestamp` (epoch ms, int; None when the venue sends none) -> ns; 0 means unknown."""
    if ts is None:
        return 0
    if type(ts) is float and ts.is_integer():
        ts = int(ts)
    if type(ts) is int:
        if 0 < ts < MAX_EPOCH_MS:
            return ts * 1_000_000
    elif type(ts) is float and math.isfinite(ts) and 0 < ts < MAX_EPOCH_MS:
        return round(ts * 1_000_000)
    raise ParseError("bad_timestamp", repr(ts)[:30])


def _bbo(symbol: str, bid: object, ask: object, bid_amount: object, ask_amount: object, ts: object,
         units: MarketUnits) -> BBO:
    try:
        b = float(bid)  # type: ignore[arg-type]
        a = float(ask)  # type: ignore[arg-type]
        bq = float(bid_amount)  # type: ignore[arg-type]
        aq = float(ask_amount)  # type: ignore[arg-type]
    except (TypeError, ValueError) as e:
        raise ParseError("bad_number", str(e)[:60]) from None
    if b > 0 and a > 0:  # check_quote refuses non-positive prices below; never divide by them
        bq = units.base(bq, b)
        aq = units.base(aq, a)
    check_quote(b, a, bq, aq)
    return BBO(symbol, b, a, bq, aq, _ts_ns(ts))


def ticker_to_bbo(symbol: str, ticker: Mapping[str, Any], units: MarketUnits) -> BBO | None:
    """A ccxt ticker / bids-asks dict -> BBO in base units; None when a side is missing.

    A side is missing when its price or its amount is None (ccxt's tickers
    channel often has no sizes, Gate's futures ticker no bid/ask at all):
    nothing can be traded on it, so nothing is written. Garbage (non-numeric,
    non-finite, crossed, negative) raises ParseError, as a native parser does.
    """
    bid = ticker.get("bid")
    ask = ticker.get("ask")
    bid_amount = ticker.get("bidVolume")
    ask_amount = ticker.get("askVolume")
    if bid is None or ask is None or bid_amount is None or ask_amount is None:
        return None
    return _bbo(symbol, bid, ask, bid_amount, ask_amount, ticker.get("timestamp"), units)


def order_book_to_bbo(symbol: str, book: Mapping[str, Any], units: MarketUnits) -> BBO | None:
    """The top level of a ccxt order book (`bids`/`asks` as [price, amount, ...]) -> BBO; None if one-sided."""
    bids = book.get("bids")
    asks = book.get("asks")
    if not bids or not asks:
        return None
    try:
        bid, bid_amount = bids[0][0], bids[0][1]
        ask, ask_amount = asks[0][0], asks[0][1]
    except (TypeError, IndexError, KeyError):
        raise ParseError("unexpected_shape", "book level is not [price, amount]") from None
    if bid is None or ask is None or bid_amount is None or ask_amount is None:
        return None
    return _bbo(symbol, bid, ask, bid_amount, ask_amount, book.get("timestamp"), units)


def fresh_updates(returned: Mapping[str, Any], cache: Mapping[str, Any] | None,
                  seen: dict[str, object]) -> list[tuple[str, Mapping[str, Any]]]:
    """The subscribed symbols whose latest ccxt dict has not been handled yet, each once.

    `returned` is what `watch_bids_asks` resolved with; `cache` is ccxt's
    `exchange.bidsasks`, which also holds updates that arrived while we were
    not waiting (ccxt resolves one future per wake-up and drops the rest).
    `seen` maps every subscribed symbol to the dict last handled for it and
    is updated in place. ccxt stores a new dict per update and resolves with
    that same dict, so identity tells new from handled; the cache, when it has
    the symbol, is preferred because it is never older than `returned`.
    """
    out: list[tuple[str, Mapping[str, Any]]] = []
    for sym, prev in seen.items():
        cur = cache.get(sym) if cache else None
        if cur is None:
            cur = returned.get(sym)
            if cur is None:
                continue
        if cur is prev:
            continue
        seen[sym] = cur
        out.append((sym, cur))
    return out


def load_markets_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Markets for `exchange.set_markets` from a JSON file (unified symbol -> ccxt market dict).

    Loopback modes have no venue REST API to load markets from, so the
    markets come from a file recorded from ccxt (see tests/data/ccxt/).
    """
    data = orjson.loads(Path(path).read_bytes())
    if type(data) is not dict or not all(type(m) is dict and m.get("symbol") == s for s, m in data.items()):
        raise CcxtFeedError(f"{path}: expected an object of unified symbol -> ccxt market with that symbol")
    return data


# -- pointing ccxt at another websocket URL (loopback market, proxies) --------------------------


def binance_ws_base(url: str) -> str:
    """The value for ccxt's `urls["api"]["ws"]["linear"]` that makes its Binance classes reach `url`.

    ccxt 4.5 builds a public stream URL as `<base minus "/ws">/public/ws/<n>`
    from a base ending in `/ws` (that is how it reaches
    `wss://fstream.binance.com/public/ws/0`), and as `<base>/<n>` from any
    other base, `n` being its stream index. So:

    - `.../public/ws` (the routed raw-stream path) -> `.../ws`, ccxt puts `/public` back;
    - `.../ws` -> itself;
    - any other fixed route, such as the demo market's `/public/stream` ->
      `<url>?ccxt_stream=`, so that ccxt's `/<n>` lands in a query value the
      server ignores and the path stays the route.
    """
    route, sep, query = url.partition("?")
    if route.endswith("/public/ws") and not sep:
        return route[: -len("/public/ws")] + "/ws"
    if route.endswith("/ws") and not sep:
        return url
    return f"{url}{'&' if sep else '?'}ccxt_stream="


def _point_binance(exchange: Any, url: str) -> None:
    base = binance_ws_base(url)
    ws = exchange.urls["api"]["ws"]
    for key in ("linear", "inverse", "spot", "margin"):
        ws[key] = base


#: ccxt id -> how to point that exchange's public market-data websocket at a given URL
WS_URL_RULES: dict[str, Callable[[Any, str], None]] = {
    "binance": _point_binance,
    "binanceusdm": _point_binance,
    "binancecoinm": _point_binance,
}


def point_ws_url(exchange: Any, url: str) -> None:
    """Make a ccxt.pro exchange's public market data come from `url` instead of the venue."""
    rule = WS_URL_RULES.get(exchange.id)
    if rule is None:
        raise CcxtFeedError(
            f"ccxt:{exchange.id}: no rule to point its websocket at {url} (known: {', '.join(sorted(WS_URL_RULES))});"
            " leave the venue's `url` unset and use mode paper to reach the venue itself")
    rule(exchange, url)


def make_exchange(ccxt_id: str, *, markets: Mapping[str, Any] | None = None, ws_url: str | None = None,
                  options: Mapping[str, Any] | None = None) -> Any:
    """A ccxt.pro exchange for market data only: new updates only, markets preset if given, URL pointed."""
    import ccxt.pro

    if ccxt_id not in ccxt.pro.exchanges:
        raise CcxtFeedError(f"ccxt.pro has no exchange {ccxt_id!r}")
    exchange = getattr(ccxt.pro, ccxt_id)({"enableRateLimit": True, "newUpdates": True, **(options or {})})
    if markets is not None:
        # with markets set, ccxt's load_markets() returns them and never calls the venue
        exchange.set_markets(dict(markets))
    if ws_url is not None:
        point_ws_url(exchange, ws_url)
    return exchange


# -- the feed ----------------------------------------------------------------------------


class WatchClosed(Exception):
    """ccxt cancelled the future we were awaiting: it closed the connection under us."""


@dataclass(frozen=True, slots=True)
class CcxtFeedStatistics:
    """A snapshot of one ccxt feed's counters (the status segment holds the same numbers)."""

    updates: int  # dicts handed over by ccxt (after the conflation sweep)
    quotes: int  # written to the board
    parse_errors: int
    one_sided: int  # updates with a missing side: nothing written
    watch_errors: int  # exceptions from watch_* (each one marks the row DOWN and retries)
    reconnects: int
    silent_reconnects: int


class CcxtVenueFeed:
    """One venue fed by ccxt.pro: its board row, counters and state; `watch` runs one session."""

    def __init__(self, cfg: Config, venue: str, venue_idx: int, writer: BoardWriter, status: StatusBoard,
                 publisher: EventPublisher | None) -> None:
        vcfg = cfg.venues[venue]
        self.cfg = cfg
        self.venue = venue
        self.venue_idx = venue_idx
        self.writer = writer
        self.status = status
        self.publisher = publisher
        symbol_index = {s: i for i, s in enumerate(cfg.symbol_names)}
        #: ccxt unified symbols, in config order
        self.venue_symbols: list[str] = list(vcfg.symbols.values())
        #: unified symbol -> (board index, board name)
        self.sym_map = {vs: (symbol_index[bs], bs) for bs, vs in vcfg.symbols.items()}
        self._size_overrides = {vcfg.symbols[bs]: size for bs, size in vcfg.contract_sizes.items()}
        #: unified symbol -> units; filled from the exchange's markets by `prepare`
        self.units: dict[str, MarketUnits] = {s: MarketUnits() for s in self.venue_symbols}
        self.state = FeedState.DOWN
        self.hist = LocalHistogram()
        self.last_write_ns = [0] * len(cfg.symbol_names)
        self.updates = 0
        self.quotes = 0
        self.parse_errors = 0
        self.one_sided = 0
        self.watch_errors = 0
        self.reconnects = 0
        self.silent_reconnects = 0
        self.last_recv_ns = 0
        #: when the current session started watching (0: not watching); the silence watchdog counts from it
        self.watching_since_ns = 0
        #: the current session delivered at least one update (then the backoff starts over)
        self.got_data = False
        self._error_kinds: set[str] = set()
        self._quote_interval_ns = cfg.feed.quote_event_interval_ms * 1_000_000
        self._last_event_ns = [0] * len(cfg.symbol_names)

    # -- state and counters -------------------------------------------------------------

    def set_state(self, state: FeedState) -> None:
        """Publish the feed state at once (the scanner ignores a row that is not CONNECTED)."""
        if state == self.state:
            return
        self.state = state
        self.status.feeds[self.venue_idx]["connections_up"] = 1 if state == FeedState.CONNECTED else 0
        self.status.set_feed_state(self.venue_idx, state)

    def statistics(self) -> CcxtFeedStatistics:
        return CcxtFeedStatistics(self.updates, self.quotes, self.parse_errors, self.one_sided,
                                  self.watch_errors, self.reconnects, self.silent_reconnects)

    def stale_symbols(self, now: int) -> int:
        limit = self.cfg.feed.symbol_stale_ms * 1_000_000
        return sum(1 for idx, _ in self.sym_map.values() if now - self.last_write_ns[idx] > limit)

    def flush(self, slot: int) -> None:
        """Counters to the status segment (the heartbeat calls this; never per update)."""
        rec = self.status.feeds[self.venue_idx]
        rec["frames"] = self.updates
        rec["quotes"] = self.quotes
        rec["parse_errors"] = self.parse_errors
        rec["unknown_symbols"] = 0  # ccxt is asked for our symbols only
        rec["reconnects"] = self.reconnects
        rec["last_recv_ns"] = self.last_recv_ns
        rec["stale_symbols"] = self.stale_symbols(now_ns())
        if self.hist.dirty:
            self.status.add_histogram(Hop.FEED_RECV_TO_WRITE, self.hist.drain())
        counters = [0] * len(FeedCounter)
        counters[FeedCounter.FRAMES] = self.updates
        counters[FeedCounter.QUOTES] = self.quotes
        counters[FeedCounter.PARSE_ERRORS] = self.parse_errors
        counters[FeedCounter.RECONNECTS] = self.reconnects
        self.status.heartbeat(slot, counters)

    def _first_of_kind(self, kind: str) -> bool:
        if kind in self._error_kinds:
            return False
        self._error_kinds.add(kind)
        return True

    def watch_failed(self, exc: BaseException) -> str:
        """Count a failed watch session and say why, for the retry log line."""
        self.watch_errors += 1
        text = str(exc).strip()
        return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__

    # -- the hot path ---------------------------------------------------------------------

    def handle(self, symbol: str, update: Mapping[str, Any], convert: Callable[..., BBO | None],
               t_recv: int) -> None:
        """Convert one ccxt update and write it to the board with its three stamps."""
        self.updates += 1
        self.last_recv_ns = t_recv
        if not self.got_data:
            self.got_data = True
            self.set_state(FeedState.CONNECTED)
            log.info("%s: receiving from ccxt.pro (%d symbols)", self.venue, len(self.venue_symbols))
        try:
            q = convert(symbol, update, self.units[symbol])
        except ParseError as e:
            self._bad_update(e.kind, str(e), update)
            return
        except Exception as e:
            self._bad_update(f"converter_bug_{type(e).__name__}", repr(e), update)
            return
        if q is None:
            self.one_sided += 1
            return
        idx, board_sym = self.sym_map[symbol]
        ts_write = self.writer.write(idx, q.bid, q.ask, q.bid_size, q.ask_size, q.ts_exchange_ns, t_recv)
        self.quotes += 1
        self.last_write_ns[idx] = ts_write
        self.hist.add(ts_write - t_recv)
        if (self.publisher is not None and self._quote_interval_ns
                and ts_write - self._last_event_ns[idx] >= self._quote_interval_ns):
            self._last_event_ns[idx] = ts_write
            self.publisher.publish(EventType.QUOTE_UPDATED, {
                "symbol": board_sym, "bid": q.bid, "ask": q.ask, "bid_size": q.bid_size,
                "ask_size": q.ask_size, "exchange": self.venue, "ts": q.ts_exchange_ns,
                "ts_recv_ns": t_recv, "ts_write_ns": ts_write,
            })

    def _bad_update(self, kind: str, detail: str, update: Mapping[str, Any]) -> None:
        self.parse_errors += 1
        if self._first_of_kind(kind):
            shown = {k: update.get(k) for k in ("symbol", "timestamp", "bid", "bidVolume", "ask", "askVolume")}
            log.warning("%s: bad update (%s), first of its kind: %r", self.venue, detail, shown)

    # -- one session: markets, then watch until an exception ----------------------------------

    async def prepare(self, exchange: Any) -> None:
        """Load markets (a no-op when preset) and check every configured symbol against them."""
        await exchange.load_markets()
        markets: Mapping[str, Any] = exchange.markets or {}
        missing = [s for s in self.venue_symbols if s not in markets]
        if missing:
            hints = []
            for s in missing:
                close = difflib.get_close_matches(s, list(markets), n=3)
                hints.append(f"{s!r}" + (f" (close: {', '.join(close)})" if close else ""))
            raise CcxtFeedError(f"{self.venue}: ccxt:{exchange.id} has no market {', '.join(hints)}; "
                                "symbols are ccxt unified symbols such as BTC/USDT:USDT")
        for s in self.venue_symbols:
            self.units[s] = market_units(markets[s], self._size_overrides.get(s))

    async def watch(self, exchange: Any, method: WatchMethod, book_limit: int | None) -> None:
        """Run one session until ccxt raises (or this task is cancelled)."""
        await self.prepare(exchange)
        self.watching_since_ns = now_ns()
        if choose_method(exchange, method) == "bids_asks":
            await self._watch_bids_asks(exchange)
        else:
            async with asyncio.TaskGroup() as tg:
                for s in self.venue_symbols:
                    tg.create_task(self._watch_book(exchange, s, book_limit), name=f"book-{self.venue}-{s}")

    async def _watch_bids_asks(self, exchange: Any) -> None:
        symbols = self.venue_symbols
        # what ccxt cached before this session is old news (it survives a reconnect): never
        # write it with a fresh receive stamp, only what this session brings
        cache = getattr(exchange, "bidsasks", None) or {}
        seen: dict[str, object] = {s: cache.get(s) for s in symbols}
        handle = self.handle
        while True:
            try:
                returned = await exchange.watch_bids_asks(symbols)
            except asyncio.CancelledError:
                _reraise_unless_closed_by_ccxt()
            t_recv = now_ns()
            for sym, update in fresh_updates(returned, getattr(exchange, "bidsasks", None), seen):
                handle(sym, update, ticker_to_bbo, t_recv)

    async def _watch_book(self, exchange: Any, symbol: str, limit: int | None) -> None:
        handle = self.handle
        while True:
            try:
                book = await exchange.watch_order_book(symbol, limit)
            except asyncio.CancelledError:
                _reraise_unless_closed_by_ccxt()
            # one book per symbol, updated in place: what we read now is its latest state
            handle(symbol, book, order_book_to_bbo, now_ns())


def _reraise_unless_closed_by_ccxt() -> NoReturn:
    """Called in an `except CancelledError`: re-raise a real cancellation, turn ccxt's into WatchClosed.

    ccxt's `Client.close()` cancels the futures its watchers await, so a
    CancelledError reaches us when ccxt drops a connection even though nobody
    cancelled this task; `Task.cancelling()` tells the two apart.
    """
    task = asyncio.current_task()
    if task is None or task.cancelling():
        raise
    raise WatchClosed("ccxt closed the connection") from None


def choose_method(exchange: Any, method: WatchMethod = "auto") -> Literal["bids_asks", "order_book"]:
    """`bids_asks` where the exchange has watchBidsAsks, else `order_book`; CcxtFeedError if neither."""
    has = exchange.has
    if method == "auto":
        if has.get("watchBidsAsks"):
            return "bids_asks"
        if has.get("watchOrderBook"):
            return "order_book"
        raise CcxtFeedError(f"ccxt:{exchange.id} has neither watchBidsAsks nor watchOrderBook")
    wanted = "watchBidsAsks" if method == "bids_asks" else "watchOrderBook"
    if not has.get(wanted):
        raise CcxtFeedError(f"ccxt:{exchange.id} has no {wanted}")
    return method


def _fatal_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that no retry will fix: stop the feed (FAULTED) instead of backing off forever."""
    from ccxt.base.errors import (
        ArgumentsRequired,
        AuthenticationError,
        BadSymbol,
        NotSupported,
        PermissionDenied,
    )

    return CcxtFeedError, ArgumentsRequired, AuthenticationError, BadSymbol, NotSupported, PermissionDenied


def feed_ws_url(ctx: RunContext, venue: str) -> str | None:
    """Where the feed connects: the config's `url`, the loopback market in demo/replay, else ccxt's own URL."""
    from perpbot.feeds.process import LOOPBACK_MODES

    vcfg = ctx.cfg.venues[venue]
    if vcfg.url:
        return vcfg.url
    if ctx.cfg.mode in LOOPBACK_MODES:
        url = ctx.urls.get(venue)
        if url is None:
            raise CcxtFeedError(f"{venue}: mode {ctx.cfg.mode} but the loopback market serves no URL for it")
        return url
    return None


async def run_ccxt_feed(ctx: RunContext, venue: str, stop: asyncio.Event, *,
                        markets: Mapping[str, Any] | None = None, method: WatchMethod = "auto",
                        book_limit: int | None = None, exchange_options: Mapping[str, Any] | None = None) -> None:
    """Watch one ccxt venue and write its quotes to the board until `stop` is set.

    The same lifecycle as `perpbot.feeds.process.run_feed`: attach the board
    and status segments, register the process, CONNECTING -> CONNECTED ->
    DOWN transitions, counters flushed on the heartbeat, jittered backoff on
    failure, and on `stop` the row marked DOWN before the exchange is closed.

    markets
        ccxt markets (unified symbol -> market dict) to preset, so that
        `load_markets` never calls the venue; required in demo/replay modes,
        which have no venue REST API (see `load_markets_file`).
    method
        `auto` (watchBidsAsks where the exchange has it, else watchOrderBook),
        or force one of them.
    book_limit
        depth asked of `watch_order_book`; None lets ccxt choose, because the
        allowed values differ per venue (Bybit accepts 1, 50, 200, 1000 only).
    exchange_options
        extra ccxt constructor options (e.g. `{"options": {...}}`).
    """
    from perpbot.bus import EventPublisher
    from perpbot.feeds.process import LOOPBACK_MODES
    from perpbot.shm import QuoteBoard, StatusBoard

    cfg = ctx.cfg
    vcfg = cfg.venues[venue]
    ccxt_id = is_ccxt_feed(vcfg.feed)
    if ccxt_id is None:
        raise CcxtFeedError(f"{venue}: feed {vcfg.feed!r} is not {CCXT_FEED_PREFIX}<ccxt id>")
    ws_url = feed_ws_url(ctx, venue)
    if markets is None and cfg.mode in LOOPBACK_MODES:
        raise CcxtFeedError(f"{venue}: mode {cfg.mode} has no venue REST API to load ccxt markets from; "
                            "pass `markets` (see load_markets_file)")
    import zmq

    venue_idx = cfg.venue_names.index(venue)
    board = QuoteBoard.attach(ctx.board_name, cfg.venue_names, cfg.symbol_names)
    status = StatusBoard.attach(ctx.status_name, cfg.venue_names, cfg.symbol_names)
    zctx = zmq.Context()
    publisher = EventPublisher(zctx, ctx.endpoints, f"feed-{venue}")
    writer = board.writer(venue_idx)
    feed = CcxtVenueFeed(cfg, venue, venue_idx, writer, status, publisher)
    status.register_proc(ctx.slot, f"feed-{venue}", Role.FEED, os.getpid())
    status.feeds[venue_idx]["kind"] = FeedKind.CCXT
    feed.set_state(FeedState.CONNECTING)
    exchange: Any = None
    final_state = ProcState.STOPPED
    hb_task = asyncio.create_task(_heartbeat(ctx, feed, stop), name=f"heartbeat-{venue}")
    try:
        exchange = make_exchange(ccxt_id, markets=markets, ws_url=ws_url, options=exchange_options)
        log.info("%s: %s, ccxt %s id %s, %d symbols, %s", venue, DESCRIPTION, _ccxt_version(), ccxt_id,
                 len(feed.venue_symbols), f"websocket pointed at {ws_url}" if ws_url else "venue's own websocket")
        status.set_proc_state(ctx.slot, ProcState.RUNNING)
        await _sessions(ctx, feed, exchange, stop, method, book_limit)
    except BaseException as e:
        if not isinstance(e, asyncio.CancelledError):
            final_state = ProcState.FAULTED
            log.error("%s: ccxt feed stopped: %s", venue, e)
        raise
    finally:
        hb_task.cancel()
        try:
            await hb_task
        except asyncio.CancelledError:
            pass
        # the row is unusable from now on: say so before the (slow) close
        feed.set_state(FeedState.DOWN)
        feed.flush(ctx.slot)
        if exchange is not None:
            try:
                await drop_ws_clients(exchange)
                await exchange.close()  # the HTTP session and connector
            except Exception as e:
                log.warning("%s: closing ccxt exchange: %r", venue, e)
        status.set_proc_state(ctx.slot, final_state)
        writer.release()
        del feed, writer
        publisher.close()
        zctx.term()
        board.close()
        status.close()


def _ccxt_version() -> str:
    import ccxt

    return str(getattr(ccxt, "__version__", "?"))


async def _sessions(ctx: RunContext, feed: CcxtVenueFeed, exchange: Any, stop: asyncio.Event,
                    method: WatchMethod, book_limit: int | None) -> None:
    """Run watch sessions until `stop`: each failure marks DOWN, backs off with jitter, retries."""
    from perpbot.feeds.process import backoff_delays

    fcfg = ctx.cfg.feed
    fatal = _fatal_errors()
    rng = random.Random()

    def fresh_delays() -> Iterator[float]:
        return backoff_delays(fcfg.reconnect_initial_ms, fcfg.reconnect_max_ms, rng)

    delays = fresh_delays()
    first = True
    while not stop.is_set():
        if not first:
            feed.reconnects += 1
        first = False
        feed.set_state(FeedState.CONNECTING)
        feed.got_data = False
        feed.watching_since_ns = 0
        why = await _one_session(ctx, feed, exchange, stop, method, book_limit, fatal)
        feed.watching_since_ns = 0
        if why is None:  # stop was set
            return
        feed.set_state(FeedState.DOWN)
        if feed.got_data:
            delays = fresh_delays()
        await drop_ws_clients(exchange)
        delay = next(delays)
        log.warning("%s: %s; retry in %.0f ms", feed.venue, why, delay * 1000)
        try:
            await asyncio.wait_for(stop.wait(), delay)
        except TimeoutError:
            pass


async def _one_session(ctx: RunContext, feed: CcxtVenueFeed, exchange: Any, stop: asyncio.Event,
                       method: WatchMethod, book_limit: int | None,
                       fatal: tuple[type[BaseException], ...]) -> str | None:
    """One watch session; returns why it ended (None: `stop`), raises what retrying cannot fix."""
    fcfg = ctx.cfg.feed
    silent_ns = fcfg.silent_reconnect_ms * 1_000_000
    check_s = min(fcfg.heartbeat_ms, fcfg.silent_reconnect_ms) / 1000.0
    session = asyncio.create_task(feed.watch(exchange, method, book_limit), name=f"ccxt-{feed.venue}")
    stop_wait = asyncio.create_task(stop.wait())
    try:
        while True:
            done, _ = await asyncio.wait({session, stop_wait}, timeout=check_s,
                                         return_when=asyncio.FIRST_COMPLETED)
            if stop_wait in done:
                return None
            if session in done:
                if session.cancelled():
                    return "ccxt cancelled the watch"
                exc = _unwrap(session.exception())
                if exc is None:
                    return "watch ended"
                if isinstance(exc, fatal):
                    raise exc
                return f"watch failed ({feed.watch_failed(exc)})"
            since = feed.watching_since_ns
            t = now_ns()
            if since and t - max(since, feed.last_recv_ns) > silent_ns:
                # open but silent (e.g. a wrong routed path fails silently): drop and reconnect
                feed.set_state(FeedState.STALE)
                feed.silent_reconnects += 1
                return f"silent for {fcfg.silent_reconnect_ms} ms, reconnecting"
    finally:
        stop_wait.cancel()
        session.cancel()
        await asyncio.gather(session, stop_wait, return_exceptions=True)


async def drop_ws_clients(exchange: Any, timeout_s: float = 2.0) -> None:
    """Forget ccxt's websocket clients so that the next watch dials afresh, and close them.

    ccxt reuses a client whose connection future is done; it forgets one only
    when the server closes it. A client we give up on (silent, failed) is
    therefore detached first, then closed with a time limit: closing waits for
    the peer's close frame, which a dead peer never sends.
    """
    clients = dict(getattr(exchange, "clients", None) or {})
    exchange.clients = {}
    for c in clients.values():
        # ccxt's on_close forgets "the client for this URL" unless the closing one carries an
        # error, and by then that may be the new client: mark the old ones (as ccxt itself does
        # when it abandons a book it cannot resync)
        if getattr(c, "error", None) is None:
            c.error = WatchClosed("dropped by the feed")
    closes = [asyncio.ensure_future(c.close()) for c in clients.values()]
    if not closes:
        return
    done, pending = await asyncio.wait(closes, timeout=timeout_s)
    for t in pending:
        t.cancel()
    for t in done:
        if not t.cancelled() and t.exception() is not None:
            log.debug("closing a ccxt client: %r", t.exception())


def _unwrap(exc: BaseException | None) -> BaseException | None:
    """The first real exception inside (nested) exception groups from the per-symbol TaskGroup."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


async def _heartbeat(ctx: RunContext, feed: CcxtVenueFeed, stop: asyncio.Event) -> None:
    period = ctx.cfg.feed.heartbeat_ms / 1000.0
    last_event = 0
    while not stop.is_set():
        await asyncio.sleep(period)
        feed.flush(ctx.slot)
        t = now_ns()
        if feed.publisher is not None and t - last_event > 1_000_000_000:
            last_event = t
            feed.publisher.heartbeat("connected" if feed.state == FeedState.CONNECTED else "down")


__all__ = (
    "CCXT_FEED_PREFIX",
    "DESCRIPTION",
    "WS_URL_RULES",
    "CcxtFeedError",
    "CcxtFeedStatistics",
    "CcxtVenueFeed",
    "MarketUnits",
    "binance_ws_base",
    "ccxt_exchange_ids",
    "choose_method",
    "describe",
    "drop_ws_clients",
    "feed_ws_url",
    "fresh_updates",
    "is_ccxt_feed",
    "load_markets_file",
    "make_exchange",
    "market_units",
    "order_book_to_bbo",
    "point_ws_url",
    "run_ccxt_feed",
    "ticker_to_bbo",
)
