"""Hyperliquid as the demo market speaks it: the `bbo` channel on `/ws`.

Wire behaviour (what `perpbot.feeds.hyperliquid` expects, from the venue's
docs, its python SDK, ccxt and recorded frames):

- Right after the handshake: the bare text `Websocket connection established.`
- Requests, one coin each: `{"method":"subscribe","subscription":{"type":"bbo","coin":"BTC"}}`,
  `unsubscribe` likewise. Ack:
  `{"channel":"subscriptionResponse","data":{"method":"subscribe","subscription":{"type":"bbo","coin":"BTC"}}}`.
- `{"method":"ping"}` -> `{"channel":"pong"}`.
- Errors are `{"channel":"error","data":"<sentence>"}`:
  `Error parsing JSON into valid websocket request: <request>` for anything
  that is not a request (text quoted by ccxt), `Already subscribed: {...}`
  for a repeat (recorded by third-party clients), `Already unsubscribed: {...}`
  and `Invalid subscription {...}` for a coin the venue does not list (both
  unsure: not seen in a recording).
- Other subscription types (`l2Book`, `trades`...) are acked and stay silent:
  the demo market only quotes top of book.
- Data: one `bbo` frame per quote change, and one on subscription with the
  current quote (the venue does so for `l2Book`; for `bbo` unsure).

Sizes are base units on Hyperliquid; a configured contract size is honoured
anyway (wire size = base size / contract size) so the encoder and the parser
agree on any instrument.
"""

from __future__ import annotations

from typing import Any

import orjson

from perpbot.sim.market import SimQuote
from perpbot.sim.protocol import Frame, Instrument, Session, SimProtocol, wire_decimals

GREETING = b"Websocket connection established."
PONG = b'{"channel":"pong"}'


def error(sentence: str) -> Frame:
    """The venue's error reply, e.g. `{"channel":"error","data":"Already subscribed: {...}"}`."""
    return Frame(orjson.dumps({"channel": "error", "data": sentence}))


def ack(method: str, subscription: dict[str, str]) -> Frame:
    """`{"channel":"subscriptionResponse","data":{"method":...,"subscription":{...}}}`."""
    return Frame(orjson.dumps({"channel": "subscriptionResponse",
                               "data": {"method": method, "subscription": subscription}}))


class HyperliquidProtocol(SimProtocol):
    """`bbo` pushes with Hyperliquid's greeting, acks, errors and app-level pong."""

    name = "hyperliquid"

    def topic(self, symbol: str) -> str:
        """`BTC` -> `bbo:BTC` (one subscription per coin and type)."""
        return f"bbo:{symbol}"

    def greeting(self) -> list[Frame]:
        return [Frame(GREETING)]

    def on_message(self, payload: bytes, binary: bool, session: Session) -> list[Frame]:
        """Answer one client frame: subscribe, unsubscribe or ping."""
        try:
            msg: Any = orjson.loads(payload)
        except orjson.JSONDecodeError:
            msg = None
        method = msg.get("method") if type(msg) is dict else None
        if method == "ping":
            return [Frame(PONG)]
        sub = msg.get("subscription") if method in ("subscribe", "unsubscribe") else None
        if (type(sub) is not dict or type(sub.get("type")) is not str
                or type(sub.get("coin")) is not str):
            text = payload.decode(errors="replace")
            return [error(f"Error parsing JSON into valid websocket request: {text}")]
        # the venue echoes its own rendering of the subscription, not the client's bytes
        norm = {"type": sub["type"], "coin": sub["coin"]}
        key = f"{norm['type']}:{norm['coin']}"
        shown = orjson.dumps(norm).decode()
        if method == "subscribe":
            verb = "subscribe"
            if key in session.topics:
                return [error(f"Already subscribed: {shown}")]
            if norm["type"] == "bbo" and not session.known(key):
                return [error(f"Invalid subscription {shown}")]
            session.topics.add(key)
        else:
            verb = "unsubscribe"
            if key not in session.topics:
                return [error(f"Already unsubscribed: {shown}")]
            session.topics.discard(key)
        return [ack(verb, norm)]

    def snapshot(self, inst: Instrument, q: SimQuote, update_id: int, ts_ms: int) -> Frame | None:
        """The current top of book, sent when a subscription starts."""
        return self.quote(inst, q, update_id, ts_ms)

    def quote(self, inst: Instrument, q: SimQuote, update_id: int, ts_ms: int) -> Frame:
        """A `bbo` frame, e.g.

        {"channel":"bbo","data":{"coin":"BTC","time":1786541241006,
         "bbo":[{"px":"60000.1","sz":"0.812","n":2},{"px":"60000.2","sz":"1.090","n":3}]}}
        """
        p = inst.price_dp
        cs = inst.contract_size
        s = wire_decimals(inst.size_dp, cs)
        # order counts are not modelled: a small deterministic number per side
        nb = 1 + update_id % 5
        na = 1 + update_id % 3
        return Frame((
            f'{{"channel":"bbo","data":{{"coin":"{inst.symbol}","time":{ts_ms},"bbo":['
            f'{{"px":"{q.bid:.{p}f}","sz":"{q.bid_size / cs:.{s}f}","n":{nb}}},'
            f'{{"px":"{q.ask:.{p}f}","sz":"{q.ask_size / cs:.{s}f}","n":{na}}}]}}}}'
        ).encode())


PROTOCOL = HyperliquidProtocol
