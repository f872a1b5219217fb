"""Which venue implementation serves which mode, and the factory the process uses.

    mode       venue objects
    demo       PaperVenue (fills against the board)
    replay     PaperVenue
    paper      PaperVenue
    readonly   ReadOnlyVenue(CcxtVenue): every read reaches the venue, no order ever does
    live       CcxtVenue: real orders

A ccxt venue's exchange is `VenueConfig.ccxt_id`, by default the native feed's
name (the feeds are named after their ccxt ids) or the `<id>` of a
`ccxt:<id>` feed. Its credentials are read at connect, each field from the
environment variable the config names (`ccxt_venue.credential_env_names`) when
it is set and non-empty, else from the key file `run.keys_file` (decrypted once
per process with $PERPBOT_KEYS_PASSPHRASE, perpbot/keys.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from perpbot.clock import now_ns
from perpbot.config import Config, VenueConfig, ccxt_id_of
from perpbot.errors import ConfigError
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
    Venue,
    VenuePosition,
)
from perpbot.exec.venues.paper import PaperVenue
from perpbot.shm.board import QuoteBoard

if TYPE_CHECKING:
    from perpbot.exec.venues.ccxt_venue import CcxtVenue

#: modes whose orders go to the paper venue (DESIGN.md, modes)
PAPER_MODES = ("demo", "replay", "paper")
#: modes whose venues are real, through ccxt
CCXT_MODES = ("readonly", "live")
#: the reason every order refused in readonly mode carries
READONLY_REASON = "readonly mode: no orders are sent"


def venue_ccxt_id(v: VenueConfig) -> str:
    """The ccxt exchange id of a configured venue: `ccxt_id`, else the feed's (`ccxt:<id>` or the
    native feed's name, which is its ccxt id)."""
    return ccxt_id_of(v.ccxt_id, v.feed)


def venue_credential_envs(v: VenueConfig) -> dict[str, str]:
    """ccxt credential field -> environment variable NAME for one configured venue."""
    from perpbot.exec.venues.ccxt_venue import credential_env_names

    return credential_env_names(venue_ccxt_id(v), v.api_key_env, v.api_secret_env)


def live_start_refusal(cfg: Config, *, confirmed: bool,
                       environ: Mapping[str, str] | None = None) -> str | None:
    """Why a live run must not start, or None: no confirmation, a key file (`run.keys_file`) that
    does not decrypt, or a credential of a venue in neither its environment variable (unset or
    empty) nor the key file (named, never its value)."""
    if cfg.mode != "live":
        return None
    if not confirmed:
        return (f"mode live trades real money on {', '.join(cfg.venue_names)}: real orders, real "
                "funds at risk. Start it again with --confirm-live to confirm; use mode readonly to "
                "watch the venues without trading, or paper to trade on paper")
    from perpbot.exec.venues.ccxt_venue import quirks
    from perpbot.keys import KeyFileError, stored_credentials

    env = os.environ if environ is None else environ
    try:
        stored = stored_credentials(cfg, env)
    except KeyFileError as e:
        return f"mode live reads credentials from the key file (run.keys_file), but: {e}"
    missing = []
    for vname, v in cfg.venues.items():
        names, held = venue_credential_envs(v), stored.get(vname, {})
        for field in quirks(venue_ccxt_id(v)).credentials:
            name = names.get(field)
            if not (name and env.get(name)) and not held.get(field):
                missing.append(f"${name} (venue {vname}, {field})" if name else f"venue {vname}'s {field}")
    if not missing:
        return None
    if cfg.run.keys_file is None:
        return ("mode live needs every venue's credentials, but these environment variables are "
                f"unset or empty: {', '.join(missing)}")
    return ("mode live needs every venue's credentials, but these are neither set in the environment nor "
            f"held by the key file {cfg.run.keys_file}: {', '.join(missing)}")


def make_ccxt_venue(name: str, v: VenueConfig, *, read_only: bool = False,
                    clock: Callable[[], int] = now_ns, stored: Mapping[str, str] | None = None) -> CcxtVenue:
    """The ccxt venue of one configured venue (no I/O: markets load at connect, from the venue or
    from `ccxt_markets_file`); `read_only` for the venue a `ReadOnlyVenue` wraps; `stored`: its
    credential fields from the key file."""
    from perpbot.exec.venues.ccxt_venue import CcxtVenue

    markets: dict[str, Any] | None = None
    if v.ccxt_markets_file:
        from perpbot.feeds.ccxt_generic import CcxtFeedError, load_markets_file

        try:
            markets = load_markets_file(v.ccxt_markets_file)
        except (OSError, CcxtFeedError) as e:
            raise ConfigError(f"$.venues.{name}.ccxt_markets_file", str(e)) from None
    envs = venue_credential_envs(v)
    return CcxtVenue(name, venue_ccxt_id(v), v.symbols, credential_envs=envs or None,
                     stored_credentials=stored, markets=markets, read_only=read_only, clock=clock)


class ReadOnlyVenue(Venue):
    """A real venue whose reads go through and whose orders never leave the process.

    `place_order` returns REJECTED with `READONLY_REASON` and `cancel_order`
    returns False without calling the venue; everything else is the wrapped
    venue's. `refused` counts the orders refused.
    """

    def __init__(self, inner: Venue, *, clock: Callable[[], int] = now_ns) -> None:
        self.inner = inner
        self.name = inner.name
        self.refused = 0
        self._clock = clock

    async def connect(self) -> None:
        await self.inner.connect()

    async def close(self) -> None:
        await self.inner.close()

    async def place_order(self, req: OrderRequest) -> OrderResult:
        self.refused += 1
        ts = self._clock()
        return OrderResult(req.client_order_id, self.name, req.symbol, req.side, req.qty,
                           OrderStatus.REJECTED, ts_accepted_ns=ts, ts_done_ns=ts, reason=READONLY_REASON)

    async def cancel_order(self, client_order_id: str, symbol: str) -> bool:
        return False

    async def fetch_order(self, client_order_id: str, symbol: str) -> OrderResult | OpenOrder | None:
        return await self.inner.fetch_order(client_order_id, symbol)

    async def open_orders(self, symbol: str | None = None) -> list[OpenOrder]:
        return await self.inner.open_orders(symbol)

    async def positions(self) -> dict[str, VenuePosition]:
        return await self.inner.positions()

    async def balances(self) -> dict[str, Balance]:
        return await self.inner.balances()

    async def my_trades(self, symbol: str | None = None, since_ms: int | None = None) -> list[Fill]:
        return await self.inner.my_trades(symbol, since_ms)

    async def funding_rate(self, symbol: str) -> FundingRate:
        return await self.inner.funding_rate(symbol)

    async def funding_payments(self, since_ms: int | None = None) -> list[FundingPayment]:
        return await self.inner.funding_payments(since_ms)

    async def server_time_ms(self) -> int:
        return await self.inner.server_time_ms()

    def set_clock_offset_ms(self, offset_ms: int) -> None:
        """Passed on to the wrapped venue where it has one (reads are signed too)."""
        setter = getattr(self.inner, "set_clock_offset_ms", None)
        if setter is not None:
            setter(offset_ms)

    def markets(self) -> dict[str, Market]:
        return self.inner.markets()


def make_venues(cfg: Config, board: QuoteBoard, *, clock: Callable[[], int] = now_ns,
                ledger_dir: Path | None = None) -> list[Venue]:
    """One venue object per configured venue, in board order (list index = board venue index).

    `ledger_dir`: where paper venues keep their account records (`<venue>.jsonl`), so they
    outlive the process like a real venue's account; None keeps them in memory only.
    """
    if cfg.mode in PAPER_MODES:
        if ledger_dir is not None:
            ledger_dir.mkdir(parents=True, exist_ok=True)
        return [PaperVenue(name, i, cfg, board, clock=clock,
                           ledger_path=None if ledger_dir is None else ledger_dir / f"{name}.jsonl")
                for i, name in enumerate(cfg.venue_names)]
    if cfg.mode in CCXT_MODES:
        from perpbot.keys import stored_credentials

        stored = stored_credentials(cfg)  # decrypted once, here; {} without run.keys_file
    if cfg.mode == "readonly":
        return [ReadOnlyVenue(make_ccxt_venue(name, v, read_only=True, clock=clock, stored=stored.get(name)),
                              clock=clock)
                for name, v in cfg.venues.items()]
    if cfg.mode == "live":
        return [make_ccxt_venue(name, v, clock=clock, stored=stored.get(name)) for name, v in cfg.venues.items()]
    raise ConfigError("$.mode", f"mode {cfg.mode!r} has no trading venue; "
                      f"allowed: {', '.join(PAPER_MODES + CCXT_MODES)}")
