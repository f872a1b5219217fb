"""What a venue feed module declares, and the result type of its parser.

A venue is one module in `perpbot/feeds/` exporting `SPEC: FeedSpec`:

required
    name            registry name, e.g. "binanceusdm"
    public_url      the venue's real market-data URL (paper/readonly/live modes)
    demo_path       path on the built-in demo market's server for this protocol
    subscribe       venue symbols -> text frames to send after connecting
    make_parser     per-symbol contract sizes -> parse(frame) -> list[BBO]
optional
    ping            application-level keepalive (None: protocol pings only)
    extra_headers   handshake headers (e.g. a User-Agent)

Parsers are pure: one raw frame in, zero or more `BBO` out; control frames
(acks, pongs) give []; anything malformed raises `ParseError` with a short
reason. Strings become floats, milliseconds nanoseconds, contracts base units,
inside the parser and nowhere else.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple


class BBO(NamedTuple):
    symbol: str  # the venue's own symbol; the feed maps it to a board index
    bid: float
    ask: float
    bid_size: float  # base units
    ask_size: float  # base units
    ts_exchange_ns: int  # venue's epoch time


class ParseError(ValueError):
    """A frame that cannot be turned into valid quotes. `kind` groups them for counting."""

    def __init__(self, kind: str, detail: str = "") -> None:
        self.kind = kind
        super().__init__(f"{kind}: {detail}" if detail else kind)


Parser = Callable[[bytes], list[BBO]]


@dataclass(frozen=True)
class PingRule:
    interval_s: float
    payload: bytes  # sent as a text frame
    pong: bytes  # prefix of the text reply that answers it


@dataclass(frozen=True)
class FeedSpec:
    name: str
    public_url: str
    demo_path: str
    subscribe: Callable[[Sequence[str]], list[bytes]]
    make_parser: Callable[[Mapping[str, float]], Parser]
    ping: PingRule | None = None
    extra_headers: Mapping[str, str] = field(default_factory=dict)


def check_quote(bid: float, ask: float, bid_size: float, ask_size: float) -> None:
    """Raise ParseError unless the quote is finite, positive and not crossed."""
    if not (math.isfinite(bid) and math.isfinite(ask) and math.isfinite(bid_size) and math.isfinite(ask_size)):
        raise ParseError("non_finite")
    if bid <= 0 or ask <= 0:
        raise ParseError("non_positive_price")
    if bid_size < 0 or ask_size < 0:
        raise ParseError("negative_size")
    if bid > ask:
        raise ParseError("crossed_book", f"bid {bid} > ask {ask}")
