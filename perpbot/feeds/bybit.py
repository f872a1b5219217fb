"""Bybit v5 linear perpetuals: `orderbook.1.<SYMBOL>` (level 1, snapshot + delta) on /v5/public/linear.

Sample (real frame from the ccxt project's test fixtures; spot `orderbook.1`
has the same layout as linear)::

    {"topic":"orderbook.1.BTCUSDT","ts":1786613159749,"type":"snapshot",
     "data":{"s":"BTCUSDT","b":[["63705.3","2.045546"]],"a":[["63705.4","2.334566"]],
     "u":72212457,"seq":112603120278},"cts":1786613159748}

Sizes are base units (linear contract size 1). The exchange stamp is `cts`
(matching-engine time, ms), `ts` (push time) when `cts` is absent; ccxt uses
`ts`, venues.yaml and Bybit's docs name `cts` as the engine time.

The book is snapshot + delta (bybit-exchange.github.io/docs/v5/websocket/public/orderbook):
a snapshot replaces the symbol's state; a delta lists changed levels per side,
size "0" deleting one, and may carry one side only (seen live: an empty `b`).
At level 1 the server holds one level per side, so a delta's non-zero level
*is* the new top and a changed top comes as its deletion plus the new level.
A side left empty means "no quote yet": nothing is emitted until both exist.
`u` grows by exactly 1 per delta; a snapshot may carry any `u` (re-pushed
with the same `u` after 3 s without change, `u=1` after a service restart).
A gap, a delta before any snapshot, or a crossed result raises `ResyncRequired`.
Deeper topics (`orderbook.50`) parse too, for recorded data: their snapshot
top is exact and a delta keeps the top unless it deletes it, when the next
level is unknown here and a resync is the only honest answer.

Control frames: subscribe ack and pong carry `"success":true` (pong:
`"ret_msg":"pong"`, or `"op":"pong"` in the newer shape); a failure carries
`"success":false` and the reason in `ret_msg`, e.g.
`"error:handler not found,topic:orderbook.1.XYZ"`. Bybit documents 10 args
per subscribe request for spot and a character budget for linear; batching
by 10 satisfies both. Without data or a ping the server drops a connection
after 10 minutes; Bybit recommends `{"op":"ping"}` every 20 s.
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson

from perpbot.feeds.spec import (
    BBO,
    FeedSpec,
    ParseError,
    Parser,
    ParserContext,
    PingRule,
    ResyncRequired,
    check_quote,
    json_object,
    ms_to_ns,
)

#: topics per subscribe request (Bybit's documented spot limit, well inside the linear budget)
SUBSCRIBE_BATCH = 10
#: Bybit's recommended heartbeat
PING_INTERVAL_S = 20.0

_LEVEL1_PREFIX = "orderbook.1."
_INF = float("inf")
_EMPTY = 0.0  # a side's price when it has no level (prices are positive)


def topic(symbol: str) -> str:
    """`BTCUSDT` -> `orderbook.1.BTCUSDT`."""
    return f"{_LEVEL1_PREFIX}{symbol}"


def subscribe(symbols: Sequence[str]) -> list[bytes]:
    """One `{"op":"subscribe"}` request per `SUBSCRIBE_BATCH` symbols."""
    syms = list(symbols)
    return [
        orjson.dumps({"op": "subscribe", "args": [topic(s) for s in syms[i:i + SUBSCRIBE_BATCH]],
                      "req_id": f"bbo{i // SUBSCRIBE_BATCH + 1}"})
        for i in range(0, len(syms), SUBSCRIBE_BATCH)
    ]


def _ping_payload() -> bytes:
    return b'{"op":"ping"}'


def is_pong(payload: bytes) -> bool:
    """True for `{"success":true,"ret_msg":"pong",...}` and `{"op":"pong",...}`."""
    # replies are short; a data frame never holds the quoted word
    return len(payload) < 512 and b'"pong"' in payload


def _level_error(px: float, sz: float) -> ParseError:
    if px != px or sz != sz or px == _INF or sz == _INF:
        return ParseError("non_finite", f"level {px} x {sz}")
    if px <= 0.0:
        return ParseError("non_positive_price", f"level {px} x {sz}")
    return ParseError("negative_size", f"level {px} x {sz}")


def _level(lvl: object) -> tuple[float, float]:
    """One `["price","size"]` pair as floats; ParseError unless price > 0 and size >= 0, finite."""
    if type(lvl) is not list or len(lvl) < 2:
        raise ParseError("bad_level", repr(lvl)[:40])
    px = float(lvl[0])
    sz = float(lvl[1])
    if not (0.0 < px < _INF and 0.0 <= sz < _INF):
        raise _level_error(px, sz)
    return px, sz


def _snapshot_top(levels: list[object]) -> tuple[float, float]:
    # snapshots are sorted best first
    if not levels:
        return _EMPTY, 0.0
    px, sz = _level(levels[0])
    return (px, sz) if sz > 0.0 else (_EMPTY, 0.0)


def _delta_level1(levels: list[object], px: float, sz: float) -> tuple[float, float]:
    """Apply a level-1 delta side: a non-zero level is the new top; deleting the top empties the side."""
    for lvl in levels:
        p, s = _level(lvl)
        if s != 0.0:
            px, sz = p, s
        elif p == px:
            px, sz = _EMPTY, 0.0
    return px, sz


def _delta_deep(levels: list[object], px: float, sz: float, bids: bool) -> tuple[float, float]:
    """Apply a deeper book's delta side to its top; deleting the top leaves the next level unknown."""
    for lvl in levels:
        p, s = _level(lvl)
        if p == px:
            if s == 0.0:
                raise ResyncRequired("top_removed", f"top {p} deleted; the level below is not tracked")
            sz = s
        elif s != 0.0 and (px == _EMPTY or (p > px if bids else p < px)):
            px, sz = p, s
    return px, sz


def _reply(msg: dict[str, object]) -> list[BBO]:
    """A frame without a topic: ack, pong or error."""
    success = msg.get("success")
    if success is True or msg.get("op") == "pong" or "pong" in msg:
        return []
    if success is False:
        raise ParseError("error_reply", str(msg.get("ret_msg"))[:120])
    raise ParseError("unexpected_shape", "neither a topic nor a reply")


def make_parser(ctx: ParserContext) -> Parser:
    """A fresh parser with its own book state (one per connection)."""
    #: symbol -> [u, bid, bid_size, ask, ask_size, contract_size]; sizes in contracts
    books: dict[str, list[float]] = {}
    contract_size = ctx.contract_size

    def parse(frame: bytes, binary: bool = False) -> list[BBO]:
        msg = json_object(frame, binary)
        tp = msg.get("topic")
        if tp is None:
            return _reply(msg)
        if type(tp) is not str:
            raise ParseError("bad_field", "topic")
        if not tp.startswith("orderbook."):
            return []  # tickers, trades, ... sharing the connection
        try:
            kind = msg["type"]
            data = msg["data"]
            sym = data["s"]
            u = data["u"]
            bids = data["b"]
            asks = data["a"]
            ts = msg.get("cts") or msg["ts"]
        except KeyError as e:
            raise ParseError("missing_field", str(e)) from None
        except TypeError:
            raise ParseError("unexpected_shape", "data is not an object") from None
        if type(sym) is not str:
            raise ParseError("bad_field", "symbol")
        if type(u) is not int:
            raise ParseError("bad_field", f"u {u!r}"[:40])
        if type(bids) is not list or type(asks) is not list:
            raise ParseError("bad_field", "b/a are not lists")
        ts_ns = ms_to_ns(ts)
        try:
            if kind == "snapshot":
                book = None
                bp, bs = _snapshot_top(bids)
                ap, az = _snapshot_top(asks)
            elif kind == "delta":
                book = books.get(sym)
                if book is None:
                    raise ResyncRequired("delta_before_snapshot", sym)
                if u != book[0] + 1:
                    del books[sym]
                    raise ResyncRequired("sequence_gap", f"{sym}: u {int(book[0])} -> {u}")
                if tp.startswith(_LEVEL1_PREFIX):
                    bp, bs = _delta_level1(bids, book[1], book[2]) if bids else (book[1], book[2])
                    ap, az = _delta_level1(asks, book[3], book[4]) if asks else (book[3], book[4])
                else:
                    bp, bs = _delta_deep(bids, book[1], book[2], True)
                    ap, az = _delta_deep(asks, book[3], book[4], False)
            else:
                raise ParseError("bad_field", f"type {kind!r}"[:40])
        except ResyncRequired:
            books.pop(sym, None)
            raise
        except ParseError:  # a ValueError too: keep its kind
            raise
        except (TypeError, ValueError, OverflowError) as e:
            raise ParseError("bad_number", str(e)[:60]) from None
        cs = book[5] if book is not None else contract_size(sym)
        out: list[BBO] = []
        if bp != _EMPTY and ap != _EMPTY:
            if bp > ap:
                books.pop(sym, None)
                raise ResyncRequired("crossed_book", f"{sym}: bid {bp} > ask {ap}")
            bid_size = bs * cs
            ask_size = az * cs
            check_quote(bp, ap, bid_size, ask_size)
            out.append(BBO(sym, bp, ap, bid_size, ask_size, ts_ns))
        # commit only a frame that parsed whole: a bad delta leaves u behind, so the next one resyncs
        if book is None:
            books[sym] = [u, bp, bs, ap, az, cs]
        else:
            book[0] = u
            book[1] = bp
            book[2] = bs
            book[3] = ap
            book[4] = az
        return out

    return parse


SPEC = FeedSpec(
    name="bybit",
    public_url="wss://stream.bybit.com/v5/public/linear",
    demo_path="/v5/public/linear",
    subscribe=subscribe,
    make_parser=make_parser,
    ping=PingRule(interval_s=PING_INTERVAL_S, payload=_ping_payload, is_pong=is_pong),
)
