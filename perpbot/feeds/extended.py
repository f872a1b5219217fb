"""Extended (ex-X10, Starknet) perps: the `orderbooks/<market>?depth=1` stream, one connection per market.

Sample (the venue's documented stream frame, as quoted in ccxt's
`handle_order_book` and built by the x10 python SDK's own tests)::

    {"ts":1701563440000,"type":"SNAPSHOT","data":{"m":"BTC-USD",
     "b":[{"p":"25670","q":"0.1"}],"a":[{"p":"25770","q":"0.1"}]},"seq":1}

There is no subscribe message: the market and `?depth=1` go in the URL under
`wss://api.starknet.extended.exchange/stream.extended.exchange/v1/orderbooks`
(the SDK's `stream_url` plus `/orderbooks/<market>?depth=<n>`), and the
handshake must carry a User-Agent or the venue's WAF refuses it (the SDK
and ccxt both send one). Keepalive is the server's protocol ping (every ~15 s
per a third-party client), which picows answers; no application ping is
documented. Markets look like
`BTC-USD`; sizes are base units; `ts` is epoch ms.

Book semantics this parser relies on (x10 python SDK `x10/models/orderbook.py`
and `x10/perpetual/orderbook.py`, ccxt `pro/extended.py`):

- SNAPSHOT: `b` and `a` sorted best first with absolute sizes `q`; an empty
  list is an empty side. With depth=1 the venue sends one level per side and
  only SNAPSHOTs (the venue notes; a third-party client quoting the docs:
  "depth=1 is always snapshot best bid/ask").
- DELTA (defined for the full book; handled here should one arrive at depth 1):
  a side whose list is empty is unchanged (both keys are required, as in the
  SDK's model); each level is the new top of its side.
  Its size is `c` (absolute, which ccxt prefers when present) or else the SDK's
  rule: `q` is a change added to the size already at that price, a new price
  starts at `q`, and a level that reaches 0 (or carries `q` "0") is removed.
  A removed top leaves that side unknown until a later frame names it; nothing
  is emitted meanwhile, and the other side is kept.
- `seq` counts the connection's messages. A SNAPSHOT is self-contained and
  restarts the count; a DELTA must carry the previous `seq` + 1, otherwise
  (or before any SNAPSHOT) the book is lost and `ResyncRequired` is raised, as
  ccxt does. A crossed resulting book also raises `ResyncRequired`.
- An error frame carries `error` (a string in the SDK's stream model, an
  object `{"code":..,"message":..}` in the REST envelope ccxt also checks).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from perpbot import __version__
from perpbot.feeds.spec import (
    BBO,
    FeedSpec,
    ParseError,
    Parser,
    ParserContext,
    ResyncRequired,
    check_quote,
    ms_to_ns,
)

_loads = orjson.loads
_JSONDecodeError = orjson.JSONDecodeError
_INF = float("inf")


def subscribe(symbols: Sequence[str]) -> list[bytes]:
    """Nothing to send: the URL names the market."""
    return []


def connections(base_url: str, symbols: Sequence[str]) -> list[tuple[str, list[str]]]:
    """One connection per market: `<base>/<market>?depth=1` (best bid and ask only)."""
    base = base_url.rstrip("/")
    return [(f"{base}/{m}?depth=1", [m]) for m in symbols]


def _level(lv: Any) -> tuple[float, float | None, float]:
    """(price, absolute size or None, q) of one `{"p":..,"q":..[,"c":..]}` level; ParseError if unusable."""
    try:
        p = float(lv["p"])
        c = lv.get("c")
        q = float(lv["q"]) if c is None else 0.0
        size = None if c is None else float(c)
    except KeyError as e:
        raise ParseError("missing_field", str(e)) from None
    except (TypeError, ValueError, OverflowError, AttributeError) as e:
        raise ParseError("bad_value", str(e)[:60]) from None
    if not 0.0 < p < _INF:
        raise ParseError("bad_price", repr(p))
    return p, size, q


def _snapshot_top(bids: Any, asks: Any) -> tuple[float, float, float, float]:
    """(bid, bid size, ask, ask size) of a SNAPSHOT's best levels; 0.0 and 0.0 for an empty side."""
    if type(bids) is not list or type(asks) is not list:
        raise ParseError("unexpected_shape", "book side is not a list")
    try:
        if bids:
            lv = bids[0]
            bid = float(lv["p"])
            bsz = float(lv["q"])
        else:
            bid = bsz = 0.0
        if asks:
            lv = asks[0]
            ask = float(lv["p"])
            asz = float(lv["q"])
        else:
            ask = asz = 0.0
    except KeyError as e:
        raise ParseError("missing_field", str(e)) from None
    except (TypeError, ValueError, OverflowError) as e:
        raise ParseError("bad_value", str(e)[:60]) from None
    if (bids and not 0.0 < bid < _INF) or (asks and not 0.0 < ask < _INF):
        raise ParseError("bad_price", f"{bid!r} / {ask!r}")
    if not (0.0 <= bsz < _INF and 0.0 <= asz < _INF):
        raise ParseError("bad_size", f"{bsz!r} / {asz!r}")
    return bid, bsz, ask, asz


def _delta_side(levels: object, price: float, size: float) -> tuple[float, float]:
    """Apply a DELTA side's levels to one side's top (price 0.0: unknown)."""
    if type(levels) is not list:
        raise ParseError("unexpected_shape", "book side is not a list")
    for lv in levels:
        p, absolute, q = _level(lv)
        if absolute is not None:
            s = absolute
        elif q == 0.0:
            s = 0.0
        else:
            s = size + q if p == price else q
        if not -_INF < s < _INF:
            raise ParseError("bad_size", repr(s))
        if s > 0.0:
            price, size = p, s
        elif p == price:
            price, size = 0.0, 0.0  # the top is gone; its successor comes in a later level or frame
    return price, size


class ExtendedParser:
    """One connection's parser: the top of each market's book and the message sequence."""

    __slots__ = ("_books", "_seq", "_sizes")

    def __init__(self, ctx: ParserContext) -> None:
        self._sizes = ctx.contract_sizes
        #: market -> (bid, bid size, ask, ask size); a price of 0.0 marks an unknown side
        self._books: dict[str, tuple[float, float, float, float]] = {}
        self._seq: int | None = None

    def __call__(self, frame: bytes, binary: bool = False) -> list[BBO]:
        if binary:
            raise ParseError("unexpected_binary", f"{len(frame)} bytes")
        try:
            msg = _loads(frame)
        except _JSONDecodeError:
            raise ParseError("not_json", frame[:60].decode(errors="replace")) from None
        if type(msg) is not dict:
            raise ParseError("unexpected_shape", "top level is not an object")
        kind = msg.get("type")
        if kind != "SNAPSHOT" and kind != "DELTA":
            return self._other(msg)
        try:
            data = msg["data"]
            market = data["m"]
            bids = data["b"]
            asks = data["a"]
            seq = msg["seq"]
            ts = msg["ts"]
        except KeyError as e:
            raise ParseError("missing_field", str(e)) from None
        except TypeError:
            raise ParseError("unexpected_shape", "data is not an object") from None
        if type(market) is not str:
            raise ParseError("bad_field", "m")
        if type(seq) is not int:
            raise ParseError("bad_field", "seq")
        ts_ns = ms_to_ns(ts)
        if kind == "SNAPSHOT":
            bid, bsz, ask, asz = _snapshot_top(bids, asks)
        else:
            last = self._seq
            book = self._books.get(market)
            if last is None or book is None:
                raise ResyncRequired("no_snapshot", f"DELTA {seq} before a SNAPSHOT of {market}")
            if seq != last + 1:
                self._seq = None  # every later DELTA is suspect until a fresh SNAPSHOT
                raise ResyncRequired("seq_gap", f"{last} -> {seq}")
            bid, bsz = _delta_side(bids, book[0], book[1])
            ask, asz = _delta_side(asks, book[2], book[3])
        if bid and ask and bid > ask:
            self._seq = None
            self._books.pop(market, None)
            raise ResyncRequired("crossed_book", f"bid {bid} > ask {ask}")
        # commit only a frame that parsed whole: a malformed one leaves seq behind, so the next DELTA resyncs
        self._books[market] = (bid, bsz, ask, asz)
        self._seq = seq
        if not bid or not ask:
            return []  # one side unknown or empty
        if self._sizes:
            cs = self._sizes.get(market, 1.0)
            bsz *= cs
            asz *= cs
        check_quote(bid, ask, bsz, asz)
        return [BBO(market, bid, ask, bsz, asz, ts_ns)]

    @staticmethod
    def _other(msg: dict[str, object]) -> list[BBO]:
        """A frame that is not a book message: an error reply raises; other types are skipped."""
        err = msg.get("error")
        if err is not None:
            raise ParseError("error_reply", str(err)[:80])
        if "type" in msg or "seq" in msg:
            return []  # another stream type on this connection (the SDK maps these to UNKNOWN)
        raise ParseError("unexpected_shape", "no message type")


def make_parser(ctx: ParserContext) -> Parser:
    """A fresh parser per connection: the book and the sequence never outlive it."""
    return ExtendedParser(ctx)


SPEC = FeedSpec(
    name="extended",
    public_url="wss://api.starknet.extended.exchange/stream.extended.exchange/v1/orderbooks",
    demo_path="/stream.extended.exchange/v1/orderbooks",
    subscribe=subscribe,
    make_parser=make_parser,
    connections=connections,
    # the venue's WAF refuses a handshake without one (403/404 reported by third-party clients)
    extra_headers={"User-Agent": f"perpbot/{__version__}"},
)
