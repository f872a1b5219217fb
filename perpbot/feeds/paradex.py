"""Paradex perps: `bbo.<market>` as SBE binary frames, JSON-RPC text for the control plane.

Since 21 September 2026 Paradex serves public channel payloads only as SBE
(Simple Binary Encoding), negotiated in the connect URL
(`?sbeSchemaId=1&sbeSchemaVersion=N`; an unsupported pair is an HTTP 400 at the
handshake). Subscribe requests, their acks and errors stay JSON-RPC text::

    -> {"jsonrpc":"2.0","method":"subscribe","params":{"channel":"bbo.BTC-USD-PERP"},"id":1}
    <- {"jsonrpc":"2.0","result":{"channel":"bbo.BTC-USD-PERP"},"usIn":..,"usDiff":..,"id":1}
    <- {"jsonrpc":"2.0","error":{"code":-32602,"message":"Invalid parameters"},"id":1}

Data frames are little-endian SBE: an 8-byte header (blockLength, templateId,
schemaId, version: uint16 each), the message's fixed block of `blockLength`
bytes, then repeating groups (uint16 entry length, uint16 count) and var
strings (uint8 length, UTF-8). A BboEvent (template 2) for BTC-USD-PERP, bid
63659.6 x 0.03139, ask 63676.7 x 0.0002, ts 1786614474487123 µs, seq 7613251297::

    30 00 02 00 01 00 02 00                            header: block 48, template 2, schema 1, version 2
    53 35 1a 99 ea 58 06 00                            ts        int64 µs
    e1 fe c8 c5 01 00 00 00                            seq       int64
    00 d2 c8 30 ca 05 00 00   b8 e5 2f 00 00 00 00 00  bidPrice, bidSize  int64 mantissa, exponent -8
    80 59 b5 96 ca 05 00 00   20 4e 00 00 00 00 00 00  askPrice, askSize  (INT64_MIN = no such side)
    0c 42 54 43 2d 55 53 44 2d 50 45 52 50             market    varString8 "BTC-USD-PERP"

What is confirmed and from where:

- BboEvent, BookEvent (template 3), HeartbeatEvent (40) layouts, INT64_MIN as
  null, the fixed -8 exponent and µs timestamps: the official schema
  `paradex_py/api/sbe/paradex_1_0.xml` in tradeparadex/paradex-py (the file
  docs.paradex.trade's "Binary Encoding (SBE)" page links), versions 1:1 and
  1:2, and that SDK's generated decoder (`codec.py`, struct "<qqqqqq" for the
  BboEvent block). BookEvent as ccxt 4.5.90's `parse_sbe_message` reads it
  (89-byte block; groups of price/size; market string last).
- The version asked for: 2. paradex-py 0.8.2 (2026-10) negotiates 1:2 and says
  "nightly, testnet and prod all serve 1:2"; the docs page still says "0 or 1,
  use 1"; ccxt 4.5.90 asks for 3, which no official source lists as served (a
  version above the server's cap is a 400, not a downgrade). BboEvent and
  BookEvent are identical in 1:0 to 1:2; the parser reads the block length
  from every header and accepts header versions 0 to 3.
- JSON `bbo` fields (market, bid, bid_size, ask, ask_size, last_updated_at in
  ms, seq_no): the venue's asyncapi `ResponsesBBOResp` and REST GET /bbo. The
  JSON `subscription` envelope is documented; a captured JSON bbo push is not
  (the legacy path is kept for environments that still serve JSON).
- JSON `order_book` snapshots: captured frames in ccxt's test fixtures.

Choices made here: a side with no orders (null in SBE, absent from a
snapshot) cannot become a quote and raises ParseError("one_sided_book"); RPI
liquidity (`best_ask_interactive`, BookEvent's interactive fields) is not
tradable by API orders and is ignored. Order-book deltas raise
ParseError("book_delta"): only the bbo channel is subscribed, and a snapshot
channel needs no book state, so the parser is stateless. Heartbeats
(template 40, sent on idle connections) and the reserved binary ack (41)
give []. Keepalive is protocol ping/pong (picows answers it): no
application ping. Sizes are base units (no contract multiplier).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence

import orjson

from perpbot.feeds.spec import BBO, FeedSpec, ParseError, Parser, ParserContext, check_quote, ms_to_ns

#: the schema identity this feed asks for and decodes
SCHEMA_ID = 1
SCHEMA_VERSION = 2
#: header versions whose BboEvent/BookEvent layouts this parser knows (1:0 to 1:3)
MAX_DECODED_VERSION = 3

BBO_TEMPLATE = 2
BOOK_TEMPLATE = 3
HEARTBEAT_TEMPLATE = 40
SUBSCRIBED_TEMPLATE = 41
#: templates of the schema that carry nothing this feed subscribes to, named for error messages
OTHER_TEMPLATES = {
    1: "TradeEvent", 4: "MarketSummaryEvent", 5: "FundingDataEvent", 6: "FundingRateComparisonEvent",
    20: "OrderEvent", 21: "FillEvent", 22: "PositionEvent", 23: "AccountEvent",
}

BBO_BLOCK_LENGTH = 48
#: BookEvent fields read here (ts, seq, pkgType) end at byte 17 of its 89-byte block
BOOK_MIN_BLOCK_LENGTH = 17
LEVEL_LENGTH = 16
NULL = -(2**63)
SNAPSHOT, DELTA = 0, 1
#: epoch microseconds past this (year 2286) are garbage
MAX_EPOCH_US = 10**16

_SCALE = 100_000_000.0  # mantissas carry a fixed exponent of -8; dividing keeps on-grid values exact
_HEADER = struct.Struct("<HHHH")
_BBO_BLOCK = struct.Struct("<qqqqqq")
# header skipped, then the 48-byte BboEvent block: one call for the hot path
_BBO_FRAME = struct.Struct("<8xqqqqqq")
_BBO_MARKET_AT = _BBO_FRAME.size
_BOOK_HEAD = struct.Struct("<qqB")
_GROUP = struct.Struct("<HH")
_LEVEL = struct.Struct("<qq")
#: exact header bytes of a BboEvent with the 48-byte block, any decodable version: the hot path
_BBO_HEADERS = frozenset(_HEADER.pack(BBO_BLOCK_LENGTH, BBO_TEMPLATE, SCHEMA_ID, v)
                         for v in range(MAX_DECODED_VERSION + 1))
_SCHEMA_ID_BYTES = SCHEMA_ID.to_bytes(2, "little")
_SILENT_TEMPLATES = frozenset({HEARTBEAT_TEMPLATE, SUBSCRIBED_TEMPLATE})

_Sizes = Mapping[str, float]


def subscribe(symbols: Sequence[str]) -> list[bytes]:
    """One JSON-RPC subscribe request per market, for its `bbo.<market>` channel."""
    # one channel per request (Paradex's params carry a single channel); no per-message limit is
    # documented, only 20 new connections per second per IP
    return [
        orjson.dumps({"jsonrpc": "2.0", "method": "subscribe", "params": {"channel": f"bbo.{s}"}, "id": i})
        for i, s in enumerate(symbols, 1)
    ]


# -- SBE -----------------------------------------------------------------------------------


def _market(frame: bytes, pos: int) -> str:
    """The varString8 at `pos`: the message's market symbol."""
    if pos >= len(frame):
        raise ParseError("sbe_truncated", f"market string at byte {pos}, frame is {len(frame)} bytes")
    end = pos + 1 + frame[pos]
    if end > len(frame):
        raise ParseError("sbe_truncated", f"market string ends at byte {end}, frame is {len(frame)} bytes")
    if end == pos + 1:
        raise ParseError("bad_symbol", "empty market")
    try:
        return frame[pos + 1:end].decode()
    except UnicodeDecodeError:
        raise ParseError("bad_symbol", repr(frame[pos + 1:end])[:40]) from None


def _quote(sym: str, ts_us: int, bp: int, bs: int, ap: int, asz: int, sizes: _Sizes) -> BBO:
    """Mantissas and µs -> a checked quote in base units and ns."""
    if bp == NULL or ap == NULL:
        raise ParseError("one_sided_book", f"{sym}: {'bid' if bp == NULL else 'ask'} side empty")
    if bs == NULL or asz == NULL:
        raise ParseError("null_size", sym)
    cs = sizes.get(sym, 1.0) if sizes else 1.0
    bid = bp / _SCALE
    ask = ap / _SCALE
    bid_size = bs / _SCALE * cs
    ask_size = asz / _SCALE * cs
    check_quote(bid, ask, bid_size, ask_size)
    if not 0 < ts_us < MAX_EPOCH_US:
        raise ParseError("bad_timestamp", str(ts_us))
    return BBO(sym, bid, ask, bid_size, ask_size, ts_us * 1000)


def _bbo_fast(frame: bytes, sizes: _Sizes) -> list[BBO]:
    """A BboEvent whose header says block 48: the whole block in one unpack."""
    try:
        ts, _seq, bp, bs, ap, asz = _BBO_FRAME.unpack_from(frame)
    except struct.error:
        raise ParseError("sbe_truncated", f"BboEvent of {len(frame)} bytes") from None
    return [_quote(_market(frame, _BBO_MARKET_AT), ts, bp, bs, ap, asz, sizes)]


def _bbo(frame: bytes, block: int, sizes: _Sizes) -> list[BBO]:
    if block < BBO_BLOCK_LENGTH:
        raise ParseError("sbe_block_length", f"BboEvent block {block} < {BBO_BLOCK_LENGTH}")
    ts, _seq, bp, bs, ap, asz = _BBO_BLOCK.unpack_from(frame, 8)
    return [_quote(_market(frame, 8 + block), ts, bp, bs, ap, asz, sizes)]


def _best_level(frame: bytes, pos: int, bids: bool) -> tuple[int, int | None, int]:
    """Read one level group at `pos`: (position after it, best price or None if empty, its size)."""
    if pos + 4 > len(frame):
        raise ParseError("sbe_truncated", f"group header at byte {pos}, frame is {len(frame)} bytes")
    entry, count = _GROUP.unpack_from(frame, pos)
    pos += 4
    if entry < LEVEL_LENGTH:
        raise ParseError("sbe_group", f"level entry of {entry} bytes < {LEVEL_LENGTH}")
    end = pos + count * entry
    if end > len(frame):
        raise ParseError("sbe_truncated", f"{count} levels end at byte {end}, frame is {len(frame)} bytes")
    best: int | None = None
    best_size = 0
    # snapshots are sorted best first, but the level count is small: take the extreme, not the first
    for at in range(pos, end, entry):
        price, size = _LEVEL.unpack_from(frame, at)
        if best is None or (price > best if bids else price < best):
            best, best_size = price, size
    return end, best, best_size


def _book(frame: bytes, block: int, sizes: _Sizes) -> list[BBO]:
    if block < BOOK_MIN_BLOCK_LENGTH:
        raise ParseError("sbe_block_length", f"BookEvent block {block} < {BOOK_MIN_BLOCK_LENGTH}")
    ts, _seq, pkg = _BOOK_HEAD.unpack_from(frame, 8)
    if pkg != SNAPSHOT:
        if pkg == DELTA:
            raise ParseError("book_delta", "order_book deltas need a local book; subscribe to bbo")
        raise ParseError("sbe_pkg_type", str(pkg))
    pos, bp, bs = _best_level(frame, 8 + block, True)
    pos, ap, asz = _best_level(frame, pos, False)
    sym = _market(frame, pos)
    return [_quote(sym, ts, NULL if bp is None else bp, bs, NULL if ap is None else ap, asz, sizes)]


def parse_sbe(frame: bytes, sizes: _Sizes) -> list[BBO]:
    """One binary frame -> quotes; ParseError naming what is wrong with it."""
    n = len(frame)
    if n < 8:
        raise ParseError("sbe_truncated", f"{n} bytes, the header needs 8")
    block, template, schema, version = _HEADER.unpack_from(frame)
    if schema != SCHEMA_ID:
        raise ParseError("sbe_schema", f"schemaId {schema}, expected {SCHEMA_ID}")
    if version > MAX_DECODED_VERSION:
        raise ParseError("sbe_version", f"schema 1:{version}, decoder knows 1:0 to 1:{MAX_DECODED_VERSION}")
    if n < 8 + block:
        raise ParseError("sbe_truncated", f"block of {block} bytes, frame is {n} bytes")
    if template == BBO_TEMPLATE:
        return _bbo(frame, block, sizes)
    if template == BOOK_TEMPLATE:
        return _book(frame, block, sizes)
    if template in _SILENT_TEMPLATES:
        return []
    raise ParseError("sbe_template", f"templateId {template} ({OTHER_TEMPLATES.get(template, 'unknown')})")


# -- JSON (control plane, and the legacy JSON payloads) ----------------------------------------


def _num(x: object) -> float:
    t = type(x)
    if t is str or t is float or t is int:
        try:
            return float(x)  # type: ignore[arg-type]
        except (ValueError, OverflowError):
            pass
    raise ParseError("bad_number", repr(x)[:30])


def _json_quote(sym: object, bid: object, bs: object, ask: object, asz: object, ts: object,
                sizes: _Sizes) -> BBO:
    if type(sym) is not str or not sym:
        raise ParseError("bad_field", "market")
    if bid is None or ask is None:
        raise ParseError("one_sided_book", f"{sym}: {'bid' if bid is None else 'ask'} side empty")
    cs = sizes.get(sym, 1.0) if sizes else 1.0
    b, a = _num(bid), _num(ask)
    bsz, asz_f = _num(bs) * cs, _num(asz) * cs
    check_quote(b, a, bsz, asz_f)
    return BBO(sym, b, a, bsz, asz_f, ms_to_ns(ts))


def _json_bbo(data: dict[str, object], sizes: _Sizes) -> BBO:
    try:
        return _json_quote(data["market"], data["bid"], data["bid_size"], data["ask"], data["ask_size"],
                           data["last_updated_at"], sizes)
    except KeyError as e:
        raise ParseError("missing_field", str(e)) from None


def _json_book(data: dict[str, object], sizes: _Sizes) -> BBO:
    try:
        kind = data["update_type"]
        inserts = data["inserts"]
        sym, ts = data["market"], data["last_updated_at"]
    except KeyError as e:
        raise ParseError("missing_field", str(e)) from None
    if kind != "s":
        raise ParseError("book_delta" if kind == "d" else "bad_field", f"update_type {kind!r}"[:40])
    if type(inserts) is not list:
        raise ParseError("bad_field", "inserts")
    best_bid = best_ask = None
    bid_size: object = None
    ask_size: object = None
    for level in inserts:
        try:
            side = level["side"]
            price = _num(level["price"])
            size = level["size"]
        except (KeyError, TypeError) as e:
            raise ParseError("bad_field", f"level {e}"[:60]) from None
        if side == "BUY":
            if best_bid is None or price > best_bid:
                best_bid, bid_size = price, size
        elif side == "SELL":
            if best_ask is None or price < best_ask:
                best_ask, ask_size = price, size
        else:
            raise ParseError("bad_field", f"side {side!r}"[:40])
    return _json_quote(sym, best_bid, bid_size, best_ask, ask_size, ts, sizes)


def parse_json(frame: bytes, sizes: _Sizes) -> list[BBO]:
    """One text frame -> quotes ([] for acks); ParseError for error replies and anything malformed."""
    try:
        msg = orjson.loads(frame)
    except orjson.JSONDecodeError:
        raise ParseError("not_json", frame[:60].decode(errors="replace")) from None
    if type(msg) is not dict:
        raise ParseError("unexpected_shape", "top level is not an object")
    params = msg.get("params")
    if params is None:
        if "error" in msg:
            raise ParseError("error_reply", str(msg["error"])[:80])
        if "result" in msg:
            return []  # subscribe/unsubscribe ack
        raise ParseError("unexpected_shape", "no params, result or error")
    if msg.get("method") != "subscription" or type(params) is not dict:
        raise ParseError("unexpected_shape", f"method {msg.get('method')!r}"[:60])
    channel = params.get("channel")
    data = params.get("data")
    if type(channel) is not str or type(data) is not dict:
        raise ParseError("unexpected_shape", "params without channel and data")
    if channel.startswith("bbo."):
        return [_json_bbo(data, sizes)]
    if channel.startswith("order_book."):
        return [_json_book(data, sizes)]
    raise ParseError("unexpected_channel", channel[:60])


# -- the parser -----------------------------------------------------------------------------------


def make_parser(ctx: ParserContext) -> Parser:
    """A stateless parser for one connection: SBE binary frames and JSON-RPC text frames."""
    sizes = ctx.contract_sizes
    bbo_headers = _BBO_HEADERS

    def parse(frame: bytes, binary: bool = False) -> list[BBO]:
        if frame[:8] in bbo_headers:
            return _bbo_fast(frame, sizes)
        # frames are dispatched on their bytes as well as the flag, so a caller that does not
        # pass `binary` still decodes SBE: JSON text never carries schema id 1 as bytes 4-5
        if binary or (frame[:1] != b"{" and frame[4:6] == _SCHEMA_ID_BYTES):
            return parse_sbe(frame, sizes)
        return parse_json(frame, sizes)

    return parse


SPEC = FeedSpec(
    name="paradex",
    public_url=f"wss://ws.api.prod.paradex.trade/v1?sbeSchemaId={SCHEMA_ID}&sbeSchemaVersion={SCHEMA_VERSION}",
    # the negotiation is part of the route: the demo market refuses a connection without it
    demo_path=f"/v1?sbeSchemaId={SCHEMA_ID}&sbeSchemaVersion={SCHEMA_VERSION}",
    subscribe=subscribe,
    make_parser=make_parser,
    binary=True,
)
