"""What one simulated venue protocol must provide to the demo market's servers.

A protocol is one module in `perpbot/sim/protocols/` named like its feed
(`perpbot/feeds/<name>.py`) exporting `PROTOCOL`: a `SimProtocol` subclass.
The server makes one instance per simulated venue, so an instance may keep
per-venue state (e.g. the last quote per symbol to encode Bybit deltas); it
keeps no per-connection state beyond the `Session` it is handed.

The server owns sockets, subscriptions bookkeeping, flow control and the
market model; the protocol owns every byte on the wire:

    route(path)            the URL the client connected to -> topics it names, or None for
                           a wrong path (the connection is answered but never gets data)
    greeting()             frames sent right after the handshake (Hyperliquid's text hello)
    on_message(...)        one client frame -> reply frames; updates `session.topics`
                           (subscribe, unsubscribe), answers application pings, and
                           replies with the venue's own error for a bad request or an
                           unknown symbol (`session.known(topic)` tells which topics exist)
    snapshot(...)          the first frame a new subscriber gets for a topic (None: wait
                           for the next change), for snapshot+delta protocols
    quote(...)             one quote change as the frame every subscriber receives
    binary_data            True when data frames are binary (Paradex SBE)

All methods are pure apart from the instance's own state; frames are bytes
and a `Frame` says whether it goes out as text or binary.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from functools import lru_cache
from typing import ClassVar, NamedTuple

from perpbot.sim.market import SimQuote


def decimal_text(value: float, dp: int, trim: bool = False) -> str:
    """A number with `dp` decimals; `trim` drops trailing zeros as some venues print (`63921.5`)."""
    text = f"{value:.{dp}f}"
    if trim and "." in text:
        return text.rstrip("0").rstrip(".")
    return text


def contracts_text(size: float, size_dp: int, contract_size: float, trim: bool = False) -> str:
    """A base-unit size (on its lot grid) as the exact decimal number of contracts (0.812 BTC at 0.01 -> `81.2`)."""
    if contract_size == 1.0:
        return decimal_text(size, size_dp, trim)
    return f"{(Decimal(f'{size:.{size_dp}f}') / Decimal(repr(contract_size))).normalize():f}"


@lru_cache(maxsize=64)
def wire_decimals(size_dp: int, contract_size: float) -> int:
    """Decimals that write any lot-grid size divided by `contract_size` exactly (powers of ten)."""
    if contract_size == 1.0:
        return size_dp
    e = round(math.log10(contract_size))
    if math.isclose(10.0**e, contract_size, rel_tol=1e-12):
        return max(0, size_dp + e)
    return size_dp + 10  # not a power of ten: as close as a float string gets


class Frame(NamedTuple):
    payload: bytes
    binary: bool = False


@dataclass(frozen=True, slots=True)
class Instrument:
    """What a protocol needs to know about one venue symbol."""

    symbol: str  # the venue's own symbol, e.g. "BTCUSDT"
    topic: str  # the stream/channel key clients subscribe to
    price_dp: int  # decimals printed for prices
    size_dp: int  # decimals printed for sizes
    contract_size: float = 1.0  # base units per contract: sizes on the wire are quote sizes / this


@dataclass(slots=True)
class Session:
    """One client connection as the protocol sees it."""

    topics: set[str] = field(default_factory=set)
    #: topic -> True if the venue lists it (for "unknown symbol" errors)
    known: Callable[[str], bool] = lambda topic: False
    #: free-form per-connection state a protocol may keep (e.g. a request counter)
    state: dict[str, object] = field(default_factory=dict)


class SimProtocol:
    """Base class: override what the protocol needs. See the module docstring."""

    name: ClassVar[str]
    binary_data: ClassVar[bool] = False

    def __init__(self, demo_path: str) -> None:
        self.demo_path = demo_path

    def topic(self, symbol: str) -> str:
        """The subscription key for a venue symbol (what `route`/`on_message` put in topics)."""
        raise NotImplementedError

    def route(self, path: str) -> list[str] | None:
        """Topics named by the URL (often []), or None when the path is not this protocol's route."""
        route = path.partition("?")[0]
        return [] if route.rstrip("/") == self.demo_path.rstrip("/") else None

    def greeting(self) -> list[Frame]:
        return []

    def on_message(self, payload: bytes, binary: bool, session: Session) -> list[Frame]:
        raise NotImplementedError

    def snapshot(self, inst: Instrument, q: SimQuote, update_id: int, ts_ms: int) -> Frame | None:
        return None

    def quote(self, inst: Instrument, q: SimQuote, update_id: int, ts_ms: int) -> Frame:
        raise NotImplementedError
