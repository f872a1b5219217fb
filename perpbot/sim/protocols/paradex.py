"""Paradex on the demo market: JSON-RPC text control frames, SBE binary `bbo` data frames.

The client connects to `/v1?sbeSchemaId=1&sbeSchemaVersion=N`. Paradex answers
an unsupported schema or version with HTTP 400 at the handshake; a protocol
here cannot fail a handshake, so `route` returns None for it (no, or a
malformed, negotiation too, since JSON public payloads ended on 21 Sep 2026):
the server then answers the connection but never sends it data, and the
feed's silence watchdog reconnects. Versions 0 to 2 are accepted (paradex-py
0.8.2: "nightly, testnet and prod all serve 1:2"; the docs page lists 0 and 1).

Requests are one channel each, answered as Paradex documents::

    {"jsonrpc":"2.0","method":"subscribe","params":{"channel":"bbo.BTC-USD-PERP"},"id":1}
    {"jsonrpc":"2.0","result":{"channel":"bbo.BTC-USD-PERP"},"id":1}

Errors use the documented JSON-RPC shape and codes (-32700 parse error,
-32600 invalid request, -32601 "method does not exist", -32602 invalid
parameters). Which code Paradex gives an unknown market and a repeated
subscribe (documented only as "an error") is a guess: -32602 with the
channel in `data`, and 100 ("Method error"). The real acks also carry
usIn/usOut/usDiff timings; they are left out (the protocol keeps no clock).

Each quote change is one BboEvent (template 2) built with `struct`, field
layout from the official schema `paradex_1_0.xml` (tradeparadex/paradex-py):
ts (µs), seq, bid price/size, ask price/size as int64 mantissas with exponent
-8, then the market as a varString8. The same frame goes to a new subscriber as
its snapshot. `book_event` and `heartbeat_event` build the other two
templates the feed reads, for tests.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import ClassVar
from urllib.parse import parse_qs

import orjson

from perpbot.sim.market import SimQuote
from perpbot.sim.protocol import Frame, Instrument, Session, SimProtocol

SCHEMA_ID = 1
#: the version stamped on every data frame (what the feed negotiates)
SCHEMA_VERSION = 2
#: sbeSchemaVersion values a connection may ask for
ACCEPTED_VERSIONS = frozenset({0, 1, 2})
_ACCEPTED_QUERY = [[str(v)] for v in sorted(ACCEPTED_VERSIONS)]

NULL = -(2**63)
_INT64_MAX = 2**63 - 1
_SCALE = 100_000_000

_HEADER = struct.Struct("<HHHH")
_BBO = struct.Struct("<HHHHqqqqqq")
_BOOK_HEAD = struct.Struct("<qqB")
_GROUP = struct.Struct("<HH")
_LEVEL = struct.Struct("<qq")
_HEARTBEAT = struct.Struct("<HHHHqq")


def mantissa(value: float | None) -> int:
    """A price or size as Paradex's int64 with exponent -8 (None -> the null sentinel).

    Rounding value * 1e8 gives the exact mantissa of any number with at most
    8 decimals below about 9e7, so the parser's mantissa / 1e8 is that number again.
    """
    if value is None:
        return NULL
    m = round(value * _SCALE)
    if not NULL < m <= _INT64_MAX:
        raise ValueError(f"{value} does not fit Paradex's int64 fixed point")
    return m


def _market(symbol: str) -> bytes:
    raw = symbol.encode()
    if not 0 < len(raw) < 256:
        raise ValueError(f"market {symbol!r} does not fit a varString8")
    return bytes((len(raw),)) + raw


def bbo_event(market: str, bid: float | None, bid_size: float | None, ask: float | None,
              ask_size: float | None, ts_us: int, seq: int, version: int = SCHEMA_VERSION) -> bytes:
    """A BboEvent frame (template 2); a None side is sent as null, as for an empty book side."""
    return _BBO.pack(_BBO.size - 8, 2, SCHEMA_ID, version, ts_us, seq, mantissa(bid), mantissa(bid_size),
                     mantissa(ask), mantissa(ask_size)) + _market(market)


def book_event(market: str, bids: Sequence[tuple[float, float]], asks: Sequence[tuple[float, float]],
               ts_us: int, seq: int, *, snapshot: bool = True, version: int = SCHEMA_VERSION) -> bytes:
    """A BookEvent frame (template 3, 89-byte block) with the interactive and API best fields null."""
    block = _BOOK_HEAD.pack(ts_us, seq, 0 if snapshot else 1) + struct.pack("<9q", *([NULL] * 9))
    out = [_HEADER.pack(len(block), 3, SCHEMA_ID, version), block]
    for levels in (bids, asks):
        out.append(_GROUP.pack(_LEVEL.size, len(levels)))
        out.extend(_LEVEL.pack(mantissa(p), mantissa(s)) for p, s in levels)
    out.append(_market(market))
    return b"".join(out)


def heartbeat_event(ts_us: int, seq: int, version: int = SCHEMA_VERSION) -> bytes:
    """A HeartbeatEvent frame (template 40), which Paradex sends on idle connections."""
    return _HEARTBEAT.pack(16, 40, SCHEMA_ID, version, ts_us, seq)


def result(request_id: object, channel: str) -> bytes:
    """The ack of a subscribe or unsubscribe."""
    return orjson.dumps({"jsonrpc": "2.0", "result": {"channel": channel}, "id": request_id})


def error(request_id: object, code: int, message: str, data: str | None = None) -> bytes:
    """A JSON-RPC error reply, e.g. `{"jsonrpc":"2.0","error":{"code":-32601,"message":..},"id":4}`."""
    err: dict[str, object] = {"code": code, "message": message}
    if data is not None:
        err["data"] = data
    return orjson.dumps({"jsonrpc": "2.0", "error": err, "id": request_id})


class ParadexProtocol(SimProtocol):
    """Paradex's public websocket: JSON-RPC subscribe/unsubscribe, SBE BboEvent pushes."""

    name: ClassVar[str] = "paradex"
    binary_data: ClassVar[bool] = True

    def topic(self, symbol: str) -> str:
        return f"bbo.{symbol}"

    def route(self, path: str) -> list[str] | None:
        """[] for the demo path with a served SBE negotiation, None for anything else."""
        route, _, query = path.partition("?")
        if route.rstrip("/") != self.demo_path.partition("?")[0].rstrip("/"):
            return None
        q = parse_qs(query)
        schema, version = q.get("sbeSchemaId", []), q.get("sbeSchemaVersion", [])
        # compared as text: a served version is a plain decimal, anything else is a 400
        if schema != [str(SCHEMA_ID)] or version not in _ACCEPTED_QUERY:
            return None
        return []

    def on_message(self, payload: bytes, binary: bool, session: Session) -> list[Frame]:
        if binary:
            return [Frame(error(None, -32600, "Invalid request", "requests are JSON-RPC text frames"))]
        try:
            msg = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return [Frame(error(None, -32700, "Parse error"))]
        if type(msg) is not dict:
            return [Frame(error(None, -32600, "Invalid request"))]
        rid = msg.get("id")
        if rid is not None and type(rid) not in (int, str):
            rid = None
        method = msg.get("method")
        if type(method) is not str or msg.get("jsonrpc") != "2.0":
            return [Frame(error(rid, -32600, "Invalid request"))]
        if method not in ("subscribe", "unsubscribe"):
            return [Frame(error(rid, -32601, "method does not exist"))]
        params = msg.get("params")
        channel = params.get("channel") if type(params) is dict else None
        if type(channel) is not str:
            return [Frame(error(rid, -32602, "Invalid parameters"))]
        if method == "subscribe":
            if not session.known(channel):
                return [Frame(error(rid, -32602, "Invalid parameters", f"unknown channel {channel}"))]
            if channel in session.topics:
                return [Frame(error(rid, 100, "Method error", f"already subscribed to {channel}"))]
            session.topics.add(channel)
        else:
            if channel not in session.topics:
                return [Frame(error(rid, 100, "Method error", f"not subscribed to {channel}"))]
            session.topics.discard(channel)
        return [Frame(result(rid, channel))]

    def snapshot(self, inst: Instrument, q: SimQuote, update_id: int, ts_ms: int) -> Frame | None:
        """The current BboEvent on subscribe (unsure whether Paradex sends one; a new subscriber
        here does not stay blank until the next change)."""
        return self.quote(inst, q, update_id, ts_ms)

    def quote(self, inst: Instrument, q: SimQuote, update_id: int, ts_ms: int) -> Frame:
        """One BboEvent: sizes in contracts where the instrument has a contract size."""
        cs = inst.contract_size
        return Frame(bbo_event(inst.symbol, q.bid, q.bid_size / cs, q.ask, q.ask_size / cs,
                               ts_ms * 1000, update_id), binary=True)


PROTOCOL = ParadexProtocol
