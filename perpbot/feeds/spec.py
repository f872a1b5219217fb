"""What a venue feed module declares, and the result type of its parser.

A venue is one module in `perpbot/feeds/` exporting `SPEC: FeedSpec`; the
registry finds every such module by itself.

required
    name            registry name, e.g. "binanceusdm" (also the module name)
    public_url      the venue's real market-data URL (paper/readonly/live modes)
    demo_path       path of this protocol on the demo market's server
    subscribe       venue symbols -> text frames to send after connecting ([] if the URL subscribes)
    make_parser     ParserContext -> a fresh parser (one per connection: parsers may keep state)
optional
    connections     (base URL, venue symbols) -> [(url, symbols on that connection)]; default one
                    connection carrying every symbol. Venues that subscribe by URL (Extended)
                    open one connection per market.
    ping            application-level keepalive (None: protocol ping frames only, auto-ponged)
    extra_headers   handshake headers (e.g. a User-Agent)
    binary          True if market data arrives in binary frames (Paradex SBE)

Parsers are pure apart from their own book state: one raw frame in, zero or
more `BBO` out; control frames (acks, greetings) give []; anything malformed
raises `ParseError` with a short kind; a sequence gap or crossed book that
needs a fresh snapshot raises `ResyncRequired` (the feed reconnects and
resubscribes). Strings become floats, milliseconds nanoseconds, contracts
base units, inside the parser and nowhere else.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, NamedTuple, Protocol

import orjson


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


class ResyncRequired(ParseError):
    """The parser's book can no longer be trusted (sequence gap, crossed book): resubscribe."""


class Parser(Protocol):
    def __call__(self, frame: bytes, binary: bool = False) -> list[BBO]: ...


@dataclass(frozen=True)
class ParserContext:
    """What a parser may need to know about the symbols it is given."""

    #: venue symbol -> base units per contract (absent: 1.0). OKX ctVal, Gate quanto_multiplier.
    contract_sizes: Mapping[str, float] = field(default_factory=dict)

    def contract_size(self, venue_symbol: str) -> float:
        return self.contract_sizes.get(venue_symbol, 1.0)


@dataclass(frozen=True)
class PingRule:
    """An application-level ping the client must send, and how to recognise the answer."""

    interval_s: float
    payload: Callable[[], bytes]  # sent as a text frame (may carry a timestamp)
    is_pong: Callable[[bytes], bool]  # True for the venue's reply; it is then not parsed


def one_connection(base_url: str, symbols: Sequence[str]) -> list[tuple[str, list[str]]]:
    """The common case: every symbol on one connection to the base URL."""
    return [(base_url, list(symbols))]


@dataclass(frozen=True)
class FeedSpec:
    name: str
    public_url: str
    demo_path: str
    subscribe: Callable[[Sequence[str]], list[bytes]]
    make_parser: Callable[[ParserContext], Parser]
    connections: Callable[[str, Sequence[str]], list[tuple[str, list[str]]]] = one_connection
    ping: PingRule | None = None
    extra_headers: Mapping[str, str] = field(default_factory=dict)
    binary: bool = False


def contract_scale(contract_size: float) -> tuple[float, str, int]:
    """How to turn contracts into base units exactly: (size, exponent suffix, decimal places).

    The suffix is `e<k>` when the size is exactly 10**k (OKX ctVal 0.01 -> `e-2`), else "".
    """
    sign, digits, exponent = Decimal(repr(contract_size)).normalize().as_tuple()
    if not isinstance(exponent, int):  # nan/inf: the config refuses them; multiply and let check_quote judge
        return contract_size, "", 0
    return contract_size, f"e{exponent}" if digits == (1,) and not sign else "", max(0, -exponent)


def base_size(raw: object, contract_size: float, suffix: str, contract_dp: int) -> float:
    """A size in contracts as sent (decimal string or integer) -> base units, as the nearest float to the exact decimal.

    contracts x contract size is an exact decimal, but the binary product is often an
    ulp off (421.93 x 0.01 = 4.2193000000000005). For a power-of-ten size the
    shift is done in the text (`"421.93e-2"`), so float() rounds once; any other
    size is multiplied and rounded to the decimal places the product has.
    """
    if suffix:
        if type(raw) is str:
            return float(raw + suffix)
        if type(raw) is int:
            return float(f"{raw}{suffix}")
    x = float(raw) * contract_size  # type: ignore[arg-type]  # TypeError/ValueError are the caller's ParseError
    if type(raw) is str:
        dot = raw.find(".")
        return round(x, contract_dp + (len(raw) - dot - 1 if dot >= 0 else 0))
    if type(raw) is int:
        return round(x, contract_dp)
    return x


def json_object(frame: bytes, binary: bool = False) -> dict[str, Any]:
    """A text frame's JSON object, or ParseError naming why not (binary, not JSON, not an object)."""
    if binary:
        raise ParseError("unexpected_binary", f"{len(frame)} bytes")
    try:
        msg = orjson.loads(frame)
    except orjson.JSONDecodeError:
        raise ParseError("not_json", bytes(frame[:60]).decode(errors="replace")) from None
    if type(msg) is not dict:
        raise ParseError("unexpected_shape", "top level is not an object")
    return msg


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


#: epoch milliseconds past this (year 2286) are garbage and would overflow int64 nanoseconds
MAX_EPOCH_MS = 10**13


def ms_to_ns(ts: object) -> int:
    """Epoch milliseconds (int or numeric string, as venues send them) -> ns; ParseError if implausible."""
    if type(ts) is str and ts.isdigit():
        ts = int(ts)
    if type(ts) is not int or not 0 < ts < MAX_EPOCH_MS:
        raise ParseError("bad_timestamp", repr(ts)[:30])
    return ts * 1_000_000
